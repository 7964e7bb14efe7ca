"""Overlay endpoints whose sandbox is the caller's: a namespace given by path (CNI) and a veth
peer handed back in the host namespace (Docker's Join), on a real kernel."""

from __future__ import annotations

import pytest

from agent.lab.namespaces import run
from tests.endpoints.conftest import Site, nsenter
from tests.endpoints.test_namespaced_modes import _vxlan
from tests.polling import wait_until
from underlay import links
from underlay.endpoints_model import EndpointSpec, EndpointSpecError, Mode

pytestmark = pytest.mark.kernel


async def test_an_existing_namespace_gets_the_interface_and_outlives_the_endpoint(
        site: Site) -> None:
    _vxlan(site.h1, "10.0.0.1", "10.0.0.2")
    _vxlan(site.h2, "10.0.0.2", "10.0.0.1")
    h1 = site.service(site.config(site.h1, "a"))
    h2 = site.service(site.config(site.h2, "b"))
    await h1.start()
    await h2.start()
    container = site.lab.ns("c1")  # made by "the runtime", not by the endpoint service
    path = f"/var/run/netns/{container}"
    with pytest.raises(EndpointSpecError, match="netns_path='/var/run/netns/nope'"):
        await h1.create(EndpointSpec("c1", Mode.OVERLAY, network="blue", bridge="vxbr42",
                                     addresses=("10.42.0.1/24",), netns_path="/var/run/netns/nope"))
    rec = await h1.create(EndpointSpec("c1", Mode.OVERLAY, network="blue", bridge="vxbr42",
                                       addresses=("10.42.0.1/24",), ifname="net1",
                                       netns_path=path))
    assert (rec.netns, rec.sandbox, rec.ifname) == (None, path, "net1")
    shown = run(["ip", "-o", "addr", "show", "dev", "net1"], netns=container).stdout
    assert "10.42.0.1/24" in shown
    assert (await h1.inspect("c1")).mtu == 1450
    await h2.create(EndpointSpec("o2", Mode.OVERLAY, network="blue", bridge="vxbr42",
                                 addresses=("10.42.0.2/24",)))
    site.serve(h2.exec_argv("o2", []), "tcp", "0.0.0.0", 80)
    assert site.reach(nsenter(container), "tcp", "10.42.0.2", 80) == "10.42.0.1"
    assert await h1.delete("c1") is True
    assert links.netns_exists(container)  # the caller's namespace stays
    assert "net1" not in run(["ip", "-o", "link"], netns=container).stdout


async def test_a_handed_back_peer_waits_in_the_host_namespace_and_a_gone_sandbox_is_collected(
        site: Site) -> None:
    _vxlan(site.h1, "10.0.0.1", "10.0.0.2")
    config = site.config(site.h1, "a")
    h1 = site.service(config)
    await h1.start()
    rec = await h1.create(EndpointSpec("d1", Mode.OVERLAY, network="blue", bridge="vxbr42",
                                       addresses=("10.42.0.5/24",), hand_back=True))
    assert rec.netns is None and rec.handed_back is not None
    peer = run(["ip", "-o", "link", "show", "dev", rec.handed_back], netns=site.h1).stdout
    assert "mtu 1450" in peer and "02:42:0a:2a:00:05" in peer
    # The runtime moves the peer into its container's namespace (as Docker does) ...
    container = site.lab.ns("d1")
    run(["ip", "link", "set", rec.handed_back, "netns", container, "name", "eth0"],
        netns=site.h1)
    h1.close()
    again = site.service(config)
    assert (await again.start()).sandbox_gone == ()  # still there: kept as it is
    assert [r.name for r in again.records()] == ["d1"]
    # ... and removes the container while the agent is down: the next start collects it.
    again.close()
    links.delete_netns(container)
    host_ifname = rec.host_ifname or ""
    # The kernel destroys a dead namespace's veths in background: wait until the pair is gone.
    await wait_until(lambda: run(["ip", "link", "show", "dev", host_ifname], netns=site.h1,
                                 check=False).returncode != 0,
                     "the host veth to go with the container's namespace")
    third = site.service(config)
    assert (await third.start()).sandbox_gone == ("d1",)
    assert third.records() == []
