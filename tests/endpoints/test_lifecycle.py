"""Idempotent create/delete, refusals that change nothing, and crash recovery at restart."""

from __future__ import annotations

import json

import pytest

from agent.lab.namespaces import run
from tests.endpoints.conftest import Site
from underlay import links
from underlay.endpoints_model import (
    EndpointConflict,
    EndpointError,
    EndpointNotFound,
    EndpointSpec,
    EndpointSpecError,
    Mode,
    host_veth_name,
    parse_port_mapping,
)
from underlay.errors import KernelError
from underlay.kernel import NetlinkThread

pytestmark = pytest.mark.kernel


class SimulatedCrash(BaseException):
    """Stands for the agent dying: not an Exception, so no rollback code runs."""


def _host_links(netns: str) -> list[str]:
    nl = NetlinkThread(netns)
    try:
        return [i.name for i in nl.call_blocking(lambda ipr: links.list_links(ipr, prefix="vxep"))]
    finally:
        nl.close()


async def test_create_and_delete_are_idempotent_and_refusals_change_nothing(site: Site) -> None:
    config = site.config(site.h1, "a")
    h1 = site.service(config)
    await h1.start()
    spec = EndpointSpec("app", Mode.BRIDGE, publish=(parse_port_mapping("8080:80"),))
    first = await h1.create(spec)
    again = await h1.create(spec)
    assert first == again and h1.statistics().created == 1
    with pytest.raises(EndpointConflict, match=r"publish=\(\).*exists with publish="):
        await h1.create(EndpointSpec("app", Mode.BRIDGE))
    state_files = sorted(p.name for p in (config.state_dir / "endpoints").glob("*.json"))
    for bad, field in [
        (EndpointSpec("Bad Name", Mode.NONE), "name='Bad Name'"),
        (EndpointSpec("x", "nat"), "mode='nat'"),  # type: ignore[arg-type]
        (EndpointSpec("x", Mode.BRIDGE, addresses=("10.1.0.5/24",)), "addresses='10.1.0.5/24'"),
        (EndpointSpec("x", Mode.BRIDGE, addresses=("172.29.0.2/24",)), "addresses="),
        (EndpointSpec("x", Mode.NONE, mtu=1400), "mtu=1400"),
        (EndpointSpec("x", Mode.OVERLAY, bridge="vxbr7"), "addresses=()"),
        (EndpointSpec("x", Mode.MACVLAN, addresses=("10.0.0.9/24",), mac="01:00:5e:00:00:01"),
         "mac='01:00:5e:00:00:01'"),
        (EndpointSpec("x", Mode.BRIDGE, network="nope"), "network='nope'"),
    ]:
        with pytest.raises((EndpointSpecError, EndpointConflict), match=field.replace("(", r"\(")
                           .replace(")", r"\)")):
            await h1.create(bad)
    assert [r.name for r in h1.records()] == ["app"]
    assert sorted(p.name for p in (config.state_dir / "endpoints").glob("*.json")) == state_files
    assert links.list_netns(prefix=config.netns_prefix) == [f"{config.netns_prefix}app"]
    with pytest.raises(EndpointNotFound, match="name='ghost'"):
        await h1.inspect("ghost")
    assert await h1.delete("app") is True
    assert await h1.delete("app") is False
    assert links.list_netns(prefix=config.netns_prefix) == []
    assert _host_links(site.h1) == []


async def test_crash_mid_create_is_collected_at_restart(site: Site) -> None:
    config = site.config(site.h1, "a")
    first_run = site.service(config)
    await first_run.start()
    keeper = await first_run.create(EndpointSpec("keeper", Mode.BRIDGE,
                                                 publish=(parse_port_mapping("9090:90"),)))

    def crash_after_nat(name: str, step: str) -> None:
        if name == "victim" and step == "nat":
            raise SimulatedCrash(step)

    first_run.close()  # the first process ends (releases its state lock)
    crashing = site.service(config, on_step=crash_after_nat)
    await crashing.start()
    with pytest.raises(SimulatedCrash):
        await crashing.create(EndpointSpec("victim", Mode.BRIDGE,
                                           publish=(parse_port_mapping("8080:80"),)))
    crashing.close()
    # The crash left: a record in state "creating", a namespace, a veth and a DNAT rule.
    record = json.loads((config.state_dir / "endpoints" / "victim.json").read_text())
    assert record["state"] == "creating"
    assert f"{config.netns_prefix}victim" in links.list_netns(prefix=config.netns_prefix)
    assert host_veth_name("victim") in _host_links(site.h1)
    assert "dnat to 172.29.0.3:80" in run(["nft", "list", "table", "ip", "vxmesh"],
                                          netns=site.h1).stdout
    # Plus an orphan namespace and veth no record knows (e.g. a crash before the record).
    links.create_netns(f"{config.netns_prefix}stray")
    run(["ip", "link", "add", host_veth_name("stray"), "type", "veth", "peer", "name", "x0"],
        netns=site.h1)

    restarted = site.service(config)
    report = await restarted.start()
    assert report.rolled_back == ("victim",)
    assert report.orphan_namespaces == (f"{config.netns_prefix}stray",)
    assert report.orphan_links == (host_veth_name("stray"),)
    assert report.reensured == ("keeper",) and report.failed == ()
    assert links.list_netns(prefix=config.netns_prefix) == [f"{config.netns_prefix}keeper"]
    assert _host_links(site.h1) == [host_veth_name("keeper")]
    table = run(["nft", "list", "table", "ip", "vxmesh"], netns=site.h1).stdout
    assert "dnat to 172.29.0.2:90" in table and "172.29.0.3" not in table
    assert [r.name for r in restarted.records()] == ["keeper"]
    assert restarted.get("keeper") == keeper
    assert restarted.statistics().orphans_collected == 3


async def test_a_second_agent_on_the_same_state_is_refused(site: Site) -> None:
    config = site.config(site.h1, "a")
    site.service(config)
    with pytest.raises(EndpointError, match="another agent holds"):
        site.service(config)


async def test_a_kernel_failure_mid_create_rolls_back_everything(site: Site) -> None:
    config = site.config(site.h1, "a")
    h1 = site.service(config)
    await h1.start()
    # The kernel refuses a macvlan larger than its parent (eth0: 1500) after the namespace
    # exists: the error names the step, and the namespace and record are gone again.
    with pytest.raises(KernelError, match="macvlan"):
        await h1.create(EndpointSpec("big", Mode.MACVLAN, addresses=("10.0.0.30/24",),
                                     mtu=9000))
    assert h1.records() == [] and links.list_netns(prefix=config.netns_prefix) == []
    assert list((config.state_dir / "endpoints").glob("*.json")) == []
    assert h1.statistics().failed_creates == 1
