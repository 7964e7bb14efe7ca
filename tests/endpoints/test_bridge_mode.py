"""Bridge mode on a real kernel: NAT and routed gateways, published ports, hairpin, isolation,
and foreign nftables tables left exactly as they were."""

from __future__ import annotations

import pytest

from agent.lab.namespaces import run
from tests.endpoints.conftest import Site, nsenter
from underlay import nft
from underlay.endpoints_model import (
    BridgeNetwork,
    EndpointConflict,
    EndpointSpec,
    Mode,
    parse_port_mapping,
)

pytestmark = pytest.mark.kernel

FOREIGN = """table inet foreign {
  chain input { type filter hook input priority 10; policy accept; tcp dport 9 counter drop; }
  chain nat { type nat hook postrouting priority 50; policy accept; }
}
"""


async def test_bridge_nat_matrix_published_ports_and_hairpin(site: Site) -> None:
    nft.apply_script(site.h1, FOREIGN)
    foreign_before = run(["nft", "list", "table", "inet", "foreign"], netns=site.h1).stdout
    h1 = site.service(site.config(site.h1, "a"))
    h2 = site.service(site.config(site.h2, "b"))
    await h1.start()
    await h2.start()
    web = await h1.create(EndpointSpec(
        "web", Mode.BRIDGE, publish=(parse_port_mapping("8080:80/tcp"),
                                     parse_port_mapping("5353:53/udp"))))
    peer = await h1.create(EndpointSpec("peer", Mode.BRIDGE))
    remote = await h2.create(EndpointSpec("remote", Mode.BRIDGE))
    assert remote.addresses == ("172.29.0.2/24",)  # h2 has its own bridge and subnet
    assert web.addresses == ("172.29.0.2/24",) and peer.addresses == ("172.29.0.3/24",)
    assert web.mac == "02:42:ac:1d:00:02" and web.gateway == "172.29.0.1"
    looked = await h1.inspect("web")
    assert looked.mac == web.mac and "172.29.0.2/24" in looked.addresses and looked.up
    assert looked.ports == ("8080:80/tcp", "5353:53/udp")

    site.serve(h1.exec_argv("web", []), "tcp", "0.0.0.0", 80)
    site.serve(h1.exec_argv("web", []), "udp", "0.0.0.0", 53)
    site.serve(nsenter(site.out), "tcp", "0.0.0.0", 7000)
    site.serve(h1.exec_argv("peer", []), "tcp", "0.0.0.0", 81)
    h1_ns, h2_ns, out_ns = nsenter(site.h1), nsenter(site.h2), nsenter(site.out)
    # Published port: from another host, from its endpoint, from the outside (all DNAT).
    assert site.reach(h2_ns, "tcp", "10.0.0.1", 8080) == "10.0.0.2"
    assert site.reach(h2_ns, "udp", "10.0.0.1", 5353) == "10.0.0.2"
    assert site.reach(h2.exec_argv("remote", []), "tcp", "10.0.0.1", 8080) == "10.0.0.2"
    assert site.reach(out_ns, "tcp", "10.0.0.1", 8080) == "10.0.0.254"
    # Hairpin: the host itself (its own address and loopback), and an endpoint of the bridge.
    assert site.reach(h1_ns, "tcp", "10.0.0.1", 8080) == "10.0.0.1"
    assert site.reach(h1_ns, "tcp", "127.0.0.1", 8080) is not None
    assert site.reach(h1.exec_argv("peer", []), "tcp", "10.0.0.1", 8080) == "172.29.0.1"
    assert site.reach(h1.exec_argv("web", []), "tcp", "10.0.0.1", 8080) == "172.29.0.1"
    # Same bridge, directly; the host reaches its endpoints directly.
    assert site.reach(h1.exec_argv("web", []), "tcp", "172.29.0.3", 81) == "172.29.0.2"
    assert site.reach(h1_ns, "tcp", "172.29.0.2", 80) == "172.29.0.1"
    # Outbound MASQUERADE: the outside sees the host's address, and answers get back.
    assert site.reach(h1.exec_argv("web", []), "tcp", "10.99.0.1", 7000) == "10.0.0.1"
    assert site.reach(h2.exec_argv("remote", []), "tcp", "10.99.0.1", 7000) == "10.0.0.2"
    # Must not: unpublished ports, and the private address even with a route to it.
    assert site.reach(h2_ns, "tcp", "10.0.0.1", 8081) is None
    run(["ip", "route", "add", "172.29.0.0/24", "via", "10.0.0.1"], netns=site.out)
    assert site.reach(out_ns, "tcp", "172.29.0.2", 80) is None
    # Endpoints on h2's own bridge (same subnet, other host) are not h1's endpoints.
    assert site.reach(h2.exec_argv("remote", []), "tcp", "172.29.0.2", 80) is None

    # A published port already held is refused, naming the holder, and nothing changes.
    with pytest.raises(EndpointConflict, match="endpoint 'web'"):
        await h1.create(EndpointSpec("web2", Mode.BRIDGE,
                                     publish=(parse_port_mapping("8080:8080/tcp"),)))
    assert [r.name for r in h1.records()] == ["peer", "web"]

    ours = run(["nft", "list", "table", "ip", "vxmesh"], netns=site.h1).stdout
    assert "dnat to 172.29.0.2:80" in ours
    assert await h1.delete("web") is True
    assert await h1.delete("web") is False
    assert site.reach(h2_ns, "tcp", "10.0.0.1", 8080) is None
    assert "dnat to" not in run(["nft", "list", "table", "ip", "vxmesh"], netns=site.h1).stdout
    assert await h1.delete("peer") is True
    assert "ip vxmesh" not in nft.list_tables(site.h1)
    assert run(["nft", "list", "table", "inet", "foreign"],
               netns=site.h1).stdout == foreign_before
    statistics = h1.statistics()
    assert statistics.created == 2 and statistics.deleted == 2 and statistics.refused == 1


async def test_bridge_routed_gateway_mode_keeps_source_addresses(site: Site) -> None:
    routed = (BridgeNetwork(name="routed", ifname="vxrouted0", subnet="172.30.0.0/24",
                            gateway_mode="routed"),)
    h1 = site.service(site.config(site.h1, "a", bridges=routed))
    await h1.start()
    rec = await h1.create(EndpointSpec("svc", Mode.BRIDGE, network="routed"))
    assert rec.network == "routed" and rec.bridge == "vxrouted0"
    site.serve(h1.exec_argv("svc", []), "tcp", "0.0.0.0", 80)
    run(["ip", "route", "add", "172.30.0.0/24", "via", "10.0.0.1"], netns=site.h2)
    assert site.reach(nsenter(site.h2), "tcp", "172.30.0.2", 80) == "10.0.0.2"
    # No MASQUERADE: the outside has no route back to 172.30.0.0/24, so nothing returns.
    site.serve(nsenter(site.out), "tcp", "0.0.0.0", 7000)
    assert site.reach(h1.exec_argv("svc", []), "tcp", "10.99.0.1", 7000) is None
