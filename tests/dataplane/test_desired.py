"""Desired state: devices, MTU rules, stable MACs, remote-only entries, problems named."""

from __future__ import annotations

from overlay.desired import (
    AliveMember,
    EndpointEntry,
    FdbKey,
    FloodKey,
    LocalEndpoint,
    NeighborKey,
    NetworkSpec,
    UnderlayView,
    bridge_name,
    compute_desired,
    owned_device,
    stable_mac,
    vtep_mac,
    vxlan_name,
)

V4 = UnderlayView("10.0.0.1", 1500)
V6 = UnderlayView("fd00::1", 1500)
MEMBERS = [AliveMember("h1", "10.0.0.1"), AliveMember("h2", "10.0.0.2")]


def test_mtu_minus_50_on_ipv4_minus_70_on_ipv6_overridable() -> None:
    nets = [NetworkSpec("a", 10), NetworkSpec("b", 11, mtu=1400)]
    v4 = compute_desired(nets, [], [], [], V4, "h1")
    v6 = compute_desired(nets, [], [], [], V6, "h1")
    assert {n.network: n.mtu for n in v4.networks.values()} == {"a": 1450, "b": 1400}
    assert {n.network: n.mtu for n in v6.networks.values()} == {"a": 1430, "b": 1400}
    jumbo = compute_desired(nets, [], [], [], UnderlayView("10.0.0.1", 9000), "h1")
    assert jumbo.networks["vxtun10"].mtu == 8950


def test_the_bridge_carries_the_networks_gateway() -> None:
    state = compute_desired([NetworkSpec("a", 10, gateway="10.9.0.1/16"), NetworkSpec("b", 11)],
                            [], [], [], V4, "h1")
    assert state.networks["vxtun10"].gateway == "10.9.0.1/16"
    assert state.networks["vxtun11"].gateway is None


def test_device_names_and_stable_macs() -> None:
    state = compute_desired([NetworkSpec("a", 16_777_215, port=8472)], [], [], [], V4, "h1")
    (net,) = state.networks.values()
    assert (net.bridge, net.vxlan) == ("vxbr16777215", "vxtun16777215")
    assert len(net.vxlan) <= 15 and net.port == 8472 and net.local == "10.0.0.1"
    assert net.vxlan_mac == vtep_mac("h1") == vtep_mac("h1")
    assert vtep_mac("h1") != vtep_mac("h2")
    first = int(net.vxlan_mac.split(":")[0], 16)
    assert first & 0x02 and not first & 0x01  # locally administered unicast
    assert net.bridge_mac == stable_mac("vxmesh-bridge", "h1", "16777215")
    assert owned_device(bridge_name(7)) == ("bridge", 7)
    assert owned_device(vxlan_name(7)) == ("vxlan", 7)
    for foreign in ("vxlan0", "vxtunnel", "vxbr", "vxbr007", "docker0", "vxtun0",
                    "vxtun99999999"):
        assert owned_device(foreign) is None, foreign


def test_remote_endpoints_only_alive_members_and_flood_per_vtep() -> None:
    eps = [
        EndpointEntry("a", "h1", "02:00:00:00:00:01", ("10.1.0.1",)),   # ours: skipped
        EndpointEntry("a", "h2", "02:00:00:00:00:02", ("10.1.0.2", "FD10::2")),
        EndpointEntry("a", "h2", "02:00:00:00:00:22", ("10.1.0.22",)),
        EndpointEntry("a", "h3", "02:00:00:00:00:03", ("10.1.0.3",)),   # h3 not alive
        EndpointEntry("zz", "h2", "02:00:00:00:00:04", ("10.9.0.3",)),  # unknown network
    ]
    state = compute_desired([NetworkSpec("a", 10)], MEMBERS, eps,
                            [LocalEndpoint("a", "vxe0")], V4, "h1")
    assert state.fdb == {FdbKey("vxtun10", "02:00:00:00:00:02"): "10.0.0.2",
                         FdbKey("vxtun10", "02:00:00:00:00:22"): "10.0.0.2"}
    assert state.flood == frozenset({FloodKey("vxtun10", "10.0.0.2")})
    assert state.neighbors == {
        NeighborKey("vxtun10", "10.1.0.2"): "02:00:00:00:00:02",
        NeighborKey("vxtun10", "fd10::2"): "02:00:00:00:00:02",
        NeighborKey("vxtun10", "10.1.0.22"): "02:00:00:00:00:22",
    }
    assert state.networks["vxtun10"].ports == frozenset({"vxe0"})
    assert state.problems == ()


def test_bad_input_is_skipped_and_named() -> None:
    nets = [NetworkSpec("bad-vni", 0), NetworkSpec("big-mtu", 12, mtu=1480),
            NetworkSpec("ok", 13), NetworkSpec("zdup", 13), NetworkSpec("port", 14, port=0),
            NetworkSpec("small-mtu", 15, mtu=1279)]
    eps = [EndpointEntry("ok", "h2", "not-a-mac", ("10.1.0.2",)),
           EndpointEntry("ok", "h2", "02:00:00:00:00:02", ("10.1.0.300",)),
           EndpointEntry("ok", "h2", "02:00:00:00:00:03", ("10.1.0.3",))]
    members = [*MEMBERS, AliveMember("h6", "fd00::6"), AliveMember("hx", "bogus")]
    state = compute_desired(nets, members, eps, [], V4, "h1")
    # An MTU too big for this host's underlay is clamped (never a reason to cut a network off).
    assert set(state.networks) == {"vxtun12", "vxtun13"}
    assert state.networks["vxtun12"].mtu == 1450
    text = "\n".join(state.problems)
    for needle in ("vni=0", "mtu=1480", "mtu=1279", "'zdup'", "port=0", "not-a-mac", "10.1.0.300",
                   "'h6'", "vtep='bogus'"):
        assert needle in text, needle
    assert state.neighbors == {NeighborKey("vxtun13", "10.1.0.3"): "02:00:00:00:00:03"}


def test_conflicting_claims_resolve_deterministically() -> None:
    members = [*MEMBERS, AliveMember("h3", "10.0.0.3")]
    eps = [EndpointEntry("a", "h3", "02:00:00:00:00:09", ("10.1.0.5",)),
           EndpointEntry("a", "h2", "02:00:00:00:00:08", ("10.1.0.5",))]
    one = compute_desired([NetworkSpec("a", 10)], members, eps, [], V4, "h1")
    two = compute_desired([NetworkSpec("a", 10)], members, list(reversed(eps)), [], V4, "h1")
    assert one == two
    assert one.neighbors[NeighborKey("vxtun10", "10.1.0.5")] == "02:00:00:00:00:08"
    assert any("claimed by two MACs" in p for p in one.problems)
