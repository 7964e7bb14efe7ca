"""The pure endpoint model and nftables rendering: parsing, MAC rule, allocation, overlaps."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from underlay.endpoints_model import (
    HOST_VETH_PATTERN,
    BridgeNetwork,
    EndpointConflict,
    EndpointsConfig,
    EndpointSpec,
    EndpointSpecError,
    ListeningSocket,
    Mode,
    PortClaim,
    PortMapping,
    State,
    allocate_address,
    bridge_ifname,
    claims_overlap,
    host_veth_name,
    mac_for_address,
    parse_port_claim,
    parse_port_mapping,
    record_from_json,
    record_to_json,
    resolve,
    socket_holding,
)
from underlay.nat_table import render_table, replace_transaction

CONFIG = EndpointsConfig(state_dir=Path("/nonexistent"),
                         bridges=(BridgeNetwork(subnet="172.29.0.0/29"),))


def test_port_syntax() -> None:
    assert parse_port_mapping("8080:80") == PortMapping(8080, 80, "tcp")
    assert parse_port_mapping("10.0.0.1:53:5353/udp") == PortMapping(53, 5353, "udp", "10.0.0.1")
    assert parse_port_claim("80") == PortClaim("tcp", "0.0.0.0", 80)
    assert parse_port_claim("[::1]:53/udp") == PortClaim("udp", "::1", 53)
    assert str(parse_port_claim("[::]:53/udp")) == "[::]:53/udp"
    for bad, message in [("80:0", "port '0'"), ("8080:80/sctp", "protocol 'sctp'"),
                         ("x:1:2", "'x' is not an IP"), ("1:2:3:4", "HOSTPORT:PORT")]:
        with pytest.raises(EndpointSpecError, match=message):
            parse_port_mapping(bad)


def test_mac_rule() -> None:
    assert mac_for_address("172.17.0.2/16") == "02:42:ac:11:00:02"
    v6 = mac_for_address("fd00::2/64")
    assert v6.startswith("02:") and v6 == mac_for_address("fd00::2/128")
    assert v6 != mac_for_address("fd00::3/64")
    assert HOST_VETH_PATTERN.match(host_veth_name("web")) and len(host_veth_name("web")) == 14


@given(st.ip_addresses(v=6))
def test_v6_macs_are_unicast_and_locally_administered(ip: object) -> None:
    first = int(mac_for_address(f"{ip}/64")[:2], 16)
    assert first & 0b11 == 0b10


def test_allocation_skips_gateway_and_taken_and_runs_out() -> None:
    net = CONFIG.bridges[0]
    assert allocate_address(net, set()) == "172.29.0.2/29"
    assert allocate_address(net, {"172.29.0.2/29", "172.29.0.3/29"}) == "172.29.0.4/29"
    full = {f"172.29.0.{i}/29" for i in range(2, 7)}
    with pytest.raises(EndpointConflict, match="no free address"):
        allocate_address(net, full)


def test_overlaps() -> None:
    tcp80 = PortClaim("tcp", "0.0.0.0", 80)
    assert claims_overlap(PortClaim("tcp", "10.0.0.1", 80), tcp80)
    assert not claims_overlap(PortClaim("udp", "10.0.0.1", 80), tcp80)
    assert not claims_overlap(PortClaim("tcp", "10.0.0.1", 80), PortClaim("tcp", "10.0.0.2", 80))
    assert claims_overlap(PortClaim("tcp", "10.0.0.1", 80), PortClaim("tcp", "::", 80))
    assert not claims_overlap(PortClaim("tcp", "10.0.0.1", 80), PortClaim("tcp", "::", 80),
                              b_v6only=True)
    sockets = [ListeningSocket("tcp", "::", 80, 1, v6only=True),
               ListeningSocket("tcp", "127.0.0.1", 80, 2)]
    assert socket_holding(PortClaim("tcp", "10.0.0.1", 80), sockets) is None
    held = socket_holding(PortClaim("tcp", "0.0.0.0", 80), sockets)
    assert held is not None and held.inode == 2


def test_a_bridge_network_of_its_own_dual_stack_survives_the_record_round_trip() -> None:
    net = BridgeNetwork(name="front", ifname=bridge_ifname("front"), subnet="172.30.1.0/24",
                        gateway_mode="internal", subnet6="fd17:4::/64")
    spec = EndpointSpec("f1", Mode.BRIDGE, network="front", bridge_network=net)
    record = resolve(spec, CONFIG, [])
    assert record.addresses == ("172.30.1.2/24", "fd17:4::2/64")
    assert (record.bridge, record.gateway) == (net.ifname, "172.30.1.1")
    assert record_from_json(record_to_json(record)) == record  # a restart finds its network
    second = resolve(EndpointSpec("f2", Mode.BRIDGE, network="front", bridge_network=net,
                                  addresses=("fd17:4::9/64",)), CONFIG, [record])
    assert second.addresses == ("172.30.1.3/24", "fd17:4::9/64")  # IPv4 added before it
    with pytest.raises(EndpointConflict, match="fd17:4::2/64"):
        resolve(EndpointSpec("f4", Mode.BRIDGE, network="front", bridge_network=net,
                             addresses=("fd17:4::2/64",)), CONFIG, [record])
    with pytest.raises(EndpointSpecError, match="fd99::1/64"):
        resolve(EndpointSpec("f3", Mode.BRIDGE, network="front", bridge_network=net,
                             addresses=("fd99::1/64",)), CONFIG, [record])
    with pytest.raises(EndpointSpecError, match="bridge_network"):
        resolve(EndpointSpec("o", Mode.OVERLAY, bridge="vxbr1", addresses=("10.0.0.2/24",),
                             bridge_network=net), CONFIG, [])


def test_resolve_and_json_round_trip() -> None:
    spec = EndpointSpec("web", Mode.BRIDGE, publish=(parse_port_mapping("8080:80"),))
    record = resolve(spec, CONFIG, [])
    assert (record.state, record.addresses, record.gateway) == (
        State.CREATING, ("172.29.0.2/29",), "172.29.0.1")
    assert record.netns == "vxep-web" and record.bridge == "vxlocal0"
    assert record_from_json(record_to_json(record)) == record
    second = resolve(EndpointSpec("db", Mode.BRIDGE), CONFIG, [record])
    assert second.addresses == ("172.29.0.3/29",)
    with pytest.raises(EndpointConflict, match="held by endpoint 'web'"):
        resolve(EndpointSpec("db", Mode.BRIDGE, addresses=("172.29.0.2/29",)), CONFIG, [record])


def test_nat_table_text() -> None:
    nat = BridgeNetwork()
    routed = BridgeNetwork(name="r", ifname="vxr0", subnet="172.30.0.0/24",
                           gateway_mode="routed")
    config = EndpointsConfig(state_dir=Path("/x"), bridges=(nat, routed))
    web = resolve(EndpointSpec("web", Mode.BRIDGE, publish=(
        parse_port_mapping("10.0.0.1:8080:80"), parse_port_mapping("53:53/udp"))), config, [])
    svc = resolve(EndpointSpec("svc", Mode.BRIDGE, network="r"), config, [web])
    text = render_table("vxmesh", config.bridges, [web, svc])
    assert 'ip daddr 10.0.0.1 tcp dport 8080 dnat to 172.29.0.2:80 comment "web"' in text
    assert "udp dport 53 dnat to 172.29.0.2:53" in text
    assert 'ip saddr 172.29.0.0/16 oifname != "vxlocal0" masquerade' in text
    assert 'ip saddr 172.30.0.0/24 oifname != "vxr0"' not in text  # routed: no MASQUERADE
    assert 'oifname "vxlocal0" drop' in text and 'oifname "vxr0" drop' not in text
    assert text == render_table("vxmesh", config.bridges, [svc, web])  # order-independent
    assert replace_transaction("vxmesh", config.bridges, []) == (
        "table ip vxmesh\ndelete table ip vxmesh\n"
        "table ip6 vxmesh\ndelete table ip6 vxmesh\n")  # both families go when unused
    assert "flush" not in replace_transaction("vxmesh", config.bridges, [web])


ports_st = st.integers(min_value=1, max_value=65535)
protos = st.sampled_from(["tcp", "udp"])


@given(ports_st, ports_st, protos, st.one_of(st.none(), st.ip_addresses(v=4).map(str)))
def test_port_mapping_text_round_trips(host_port: int, port: int, proto: str,
                                       host_ip: str | None) -> None:
    mapping = PortMapping(host_port, port, proto, host_ip)
    assert parse_port_mapping(str(mapping)) == mapping


@given(ports_st, protos, st.ip_addresses().map(str))
def test_port_claim_text_round_trips(port: int, proto: str, address: str) -> None:
    claim = PortClaim(proto, address, port)
    assert parse_port_claim(str(claim)) == claim


@given(st.lists(st.tuples(ports_st, ports_st), max_size=4), st.integers(2, 6))
def test_bridge_records_survive_json(pairs: list[tuple[int, int]], host: int) -> None:
    spec = EndpointSpec("app", Mode.BRIDGE, addresses=(f"172.29.0.{host}/29",),
                        publish=tuple(PortMapping(a, b) for a, b in pairs))
    record = resolve(spec, CONFIG, [])
    assert record_from_json(record_to_json(record)) == record
