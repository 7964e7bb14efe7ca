"""Key schema, network validation, record decoding and the network view (pure)."""

from __future__ import annotations

import ipaddress
import json

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from agent.store.errors import InvalidNetwork
from agent.store.network_view import (
    KeyChange,
    NetworkAdded,
    NetworkChanged,
    NetworkRemoved,
    NetworkView,
)
from agent.store.schema import (
    Block,
    MalformedRecord,
    Node,
    block_key,
    check_block,
    decode_block,
    decode_network,
    decode_node,
    encode,
    network_key,
    node_key,
    subnet_inner_range,
    subnet_key,
    subnet_outer_keys,
    validate_network,
)


@pytest.mark.parametrize(
    ("kwargs", "field", "value"),
    [
        ({"name": "bad name", "subnet": "10.0.0.0/24"}, "name", "bad name"),
        ({"name": "", "subnet": "10.0.0.0/24"}, "name", ""),
        ({"name": "n", "subnet": "10.0.0.1/24"}, "subnet", "10.0.0.1/24"),
        ({"name": "n", "subnet": "10.0.0.0/30"}, "subnet", "10.0.0.0/30"),
        ({"name": "n", "subnet": "fd00::/32"}, "subnet", "fd00::/32"),
        ({"name": "n", "subnet": 42}, "subnet", 42),
        ({"name": "n", "subnet": "10.0.0.0/24", "vni": 0}, "vni", 0),
        ({"name": "n", "subnet": "10.0.0.0/24", "vni": 16_777_216}, "vni", 16_777_216),
        ({"name": "n", "subnet": "10.0.0.0/24", "vni": True}, "vni", True),
        ({"name": "n", "subnet": "10.0.0.0/24", "mtu": 100}, "mtu", 100),
        ({"name": "n", "subnet": "10.0.0.0/24", "gateway": "10.0.1.1"}, "gateway", "10.0.1.1"),
        ({"name": "n", "subnet": "10.0.0.0/24", "gateway": "10.0.0.255"}, "gateway", "10.0.0.255"),
        ({"name": "n", "subnet": "10.0.0.0/24", "mode": "host"}, "mode", "host"),
        (
            {"name": "n", "subnet": "10.0.0.0/24", "mode": "macvlan", "options": {"x": "1"}},
            "options.x",
            "1",
        ),
        (
            {
                "name": "n",
                "subnet": "10.0.0.0/24",
                "mode": "ipvlan",
                "options": {"ipvlan_mode": "l9"},
            },
            "options.ipvlan_mode",
            "l9",
        ),
        ({"name": "n", "subnet": "10.0.0.0/24", "block_prefix": 8}, "block_prefix", 8),
        ({"name": "n", "subnet": "10.0.0.0/24", "options": {"parent": "eth0"}}, "parent",
         "eth0"),
        ({"name": "n", "subnet": "10.0.0.0/24", "mode": "macvlan",
          "options": {"parent": "eth0.4095"}}, "parent", "eth0.4095"),
        ({"name": "n", "subnet": "10.0.0.0/24", "mode": "macvlan",
          "options": {"parent": "eth0.0"}}, "parent", "eth0.0"),
        ({"name": "n", "subnet": "10.0.0.0/24", "mode": "macvlan",
          "options": {"parent": "a-very-long-name.30"}}, "parent", "a-very-long-name.30"),
        ({"name": "n", "subnet": "10.0.0.0/24", "ip_range": "10.0.1.0/28"}, "ip_range",
         "10.0.1.0/28"),
        ({"name": "n", "subnet": "10.0.0.0/24", "ip_range": "fd00::/120"}, "ip_range",
         "fd00::/120"),
        ({"name": "n", "subnet": "10.0.0.0/24", "subnet6": "10.1.0.0/24"}, "subnet6",
         "10.1.0.0/24"),
        ({"name": "n", "subnet": "fd00::/64", "subnet6": "fd01::/64"}, "subnet6",
         "fd01::/64"),
        ({"name": "n", "subnet": "10.0.0.0/24", "internal": "yes"}, "internal", "yes"),
    ],
)
def test_invalid_network_names_field_and_value(kwargs: dict, field: str, value: object) -> None:
    with pytest.raises(InvalidNetwork) as info:
        validate_network(**kwargs)
    assert info.value.field == field
    assert info.value.value == value
    assert field in str(info.value)


def test_valid_network_defaults_and_roundtrip() -> None:
    net = validate_network(name="blue", subnet="10.5.0.0/16", vni=77, mtu=1450)
    assert str(net.gateway) == "10.5.0.1"
    assert net.block_prefix == 26
    assert decode_network(network_key("blue"), encode(net)) == net
    small = validate_network(name="s", subnet="10.6.0.0/29", vni=3)
    assert small.block_prefix == 29
    mac = validate_network(
        name="m", subnet="fd00:2::/64", vni=5, mode="macvlan", options={"parent": "eth0"}
    )
    assert decode_network(network_key("m"), encode(mac)) == mac


def test_driver_fields_roundtrip_and_older_records_still_decode() -> None:
    net = validate_network(name="pub", subnet="192.168.1.0/24", vni=9, mode="macvlan",
                           gateway="192.168.1.254", ip_range="192.168.1.128/26",
                           subnet6="fd00:1::/64", internal=True,
                           options={"parent": "eth0.30"})
    assert (net.driver, net.parent, str(net.gateway6)) == ("macvlan", "eth0.30", "fd00:1::1")
    assert net.block_prefix == 28  # a small range still gives several hosts a block
    assert decode_network(network_key("pub"), encode(net)) == net
    older = {"name": "old", "vni": 10, "subnet": "10.7.0.0/16", "gateway": "10.7.0.1",
             "mtu": None, "mode": "overlay", "options": {}, "block_prefix": 26}
    decoded = decode_network(network_key("old"), json.dumps(older).encode())
    assert (decoded.subnet6, decoded.ip_range, decoded.internal) == (None, None, False)


def test_subnet_guard_keys_find_overlaps_both_ways() -> None:
    big = ipaddress.ip_network("10.1.0.0/16")
    inside = ipaddress.ip_network("10.1.4.0/24")
    outside = ipaddress.ip_network("10.2.0.0/24")
    start, end = subnet_inner_range(big)
    assert start <= subnet_key(inside) < end
    assert start <= subnet_key(big) < end
    assert not start <= subnet_key(outside) < end
    assert subnet_key(big) in subnet_outer_keys(inside)
    assert subnet_key(big) not in subnet_outer_keys(outside)
    last = ipaddress.ip_network("10.1.255.252/30")
    assert start <= subnet_key(last) < end
    v6 = ipaddress.ip_network("fd00:1::/64")
    assert len(subnet_outer_keys(v6)) == 64 - 48


def test_malformed_records_raise_only_malformed() -> None:
    key = network_key("x")
    for value in (
        b"\xff",
        b"[]",
        b"{}",
        json.dumps({"name": "y", "subnet": "10.0.0.0/24", "vni": 3}).encode(),
    ):
        with pytest.raises(MalformedRecord) as info:
            decode_network(key, value)
        assert info.value.key == key
    with pytest.raises(MalformedRecord):
        decode_node(node_key("n"), b'{"name": "n", "vtep": "nope", "gossip": ["a", 1]}')
    with pytest.raises(MalformedRecord):
        decode_block("/vxmesh/v1/blocks/a/x", b'{"allocations": 3}')
    node = Node("n", ipaddress.ip_address("10.0.0.1"), ("10.0.0.1", 7946), "0.1.0")
    assert decode_node(node_key("n"), encode(node)) == node
    cidr = ipaddress.ip_network("10.0.0.64/26")
    block = Block("a", cidr, "h", {ipaddress.ip_address("10.0.0.70"): "ep"})
    assert decode_block(block_key("a", cidr), encode(block)) == block


def test_network_view_replace_apply_and_malformed() -> None:
    a = validate_network(name="a", subnet="10.1.0.0/24", vni=1)
    b = validate_network(name="b", subnet="10.2.0.0/24", vni=2)
    view = NetworkView()
    events = view.replace([(network_key("a"), encode(a)), (network_key("bad"), b"{")], 10)
    assert events == [NetworkAdded(a)]
    assert [m.key for m in view.malformed] == [network_key("bad")]
    assert view.revision == 10
    assert view.listed
    assert view.version == 1
    a2 = validate_network(name="a", subnet="10.1.0.0/24", vni=1, mtu=1400)
    events = view.apply(
        [
            KeyChange(network_key("b"), encode(b), 11),
            KeyChange(network_key("a"), encode(a2), 12),
            KeyChange(network_key("b"), None, 13),
        ]
    )
    assert events == [NetworkAdded(b), NetworkChanged(a2), NetworkRemoved("b")]
    assert view.revision == 13
    assert view.replace([], 20) == [NetworkRemoved("a")]
    assert view.snapshot() == {}
    empty = NetworkView()
    assert empty.replace([], 3) == []
    assert (empty.listed, empty.version) == (True, 1)  # an empty first listing is news too


def _v4_subnets() -> st.SearchStrategy[ipaddress.IPv4Network]:
    return st.builds(
        lambda address, length: ipaddress.IPv4Network(f"{address}/{length}", strict=False),
        st.integers(10 << 24, (10 << 24) + (1 << 20)).map(
            ipaddress.IPv4Address
        ),  # overlaps are common
        st.integers(8, 29),
    )


@settings(max_examples=2000, deadline=None)
@given(a=_v4_subnets(), b=_v4_subnets())
def test_guard_keys_detect_exactly_the_overlaps(
    a: ipaddress.IPv4Network, b: ipaddress.IPv4Network
) -> None:
    """What the create transaction compares sees `b` exactly when `b` overlaps `a`."""
    start, end = subnet_inner_range(a)
    seen = start <= subnet_key(b) < end or subnet_key(b) in subnet_outer_keys(a)
    assert seen == a.overlaps(b)
    event("overlap" if seen else "disjoint")


def test_a_bad_value_keeps_the_last_good_copy_until_deleted() -> None:
    a = validate_network(name="a", subnet="10.1.0.0/24", vni=1, mtu=1400)
    view = NetworkView()
    view.replace([(network_key("a"), encode(a))], 5)
    typo = encode(a).replace(b'"overlay"', b'"overlya"')
    small_mtu = encode(a).replace(b'"mtu":1400', b'"mtu":1000')
    for bad in (typo, small_mtu, b"{"):
        assert view.apply([KeyChange(network_key("a"), bad, 6)]) == []
        assert view.networks == {"a": a} and view.rejected == {network_key("a")}
    assert view.replace([(network_key("a"), typo)], 7) == []  # a re-list keeps it too
    assert view.networks == {"a": a}
    assert view.apply([KeyChange(network_key("a"), encode(a), 8)]) == []
    assert view.rejected == set()
    assert view.apply([KeyChange(network_key("a"), None, 9)]) == [NetworkRemoved("a")]


def test_a_restarted_agent_keeps_its_cached_copy_of_a_network_now_bad_in_etcd() -> None:
    a = validate_network(name="a", subnet="10.1.0.0/24", vni=1)
    view = NetworkView()
    view.adopt_cached([a])
    assert view.replace([(network_key("a"), b"garbage")], 3) == []
    assert view.networks == {"a": a}
    assert view.replace([], 4) == [NetworkRemoved("a")]  # really deleted: gone


def test_one_mtu_range_for_api_schema_and_desired_state() -> None:
    from overlay.desired import MTU_MIN as DESIRED_MIN
    from underlay.records import MTU_MAX, MTU_MIN

    assert DESIRED_MIN == MTU_MIN == 1280
    validate_network(name="n", subnet="10.0.0.0/24", mtu=MTU_MIN)
    validate_network(name="n", subnet="10.0.0.0/24", mtu=MTU_MAX)
    for bad in (MTU_MIN - 1, MTU_MAX + 1):
        with pytest.raises(InvalidNetwork, match="mtu"):
            validate_network(name="n", subnet="10.0.0.0/24", mtu=bad)


@pytest.mark.parametrize(("cidr", "reason"), [
    ("10.1.0.0/24", "not a /28 block"),
    ("10.9.0.0/28", "outside subnet"),
])
def test_blocks_are_checked_against_their_network(cidr: str, reason: str) -> None:
    network = validate_network(name="n", subnet="10.1.0.0/24", block_prefix=28)
    block = Block("n", ipaddress.ip_network(cidr), "h1", {})
    check_block(Block("n", ipaddress.ip_network("10.1.0.16/28"), "h1", {}), network, "k")
    with pytest.raises(MalformedRecord, match=reason):
        check_block(block, network, block_key("n", block.cidr))


def test_node_record_carries_its_public_key_and_older_records_have_none() -> None:
    signed = Node("n", ipaddress.ip_address("10.0.0.1"), ("10.0.0.1", 7946), "0.1.0",
                  bytes(range(32)))
    assert decode_node(node_key("n"), encode(signed)) == signed
    older = b'{"name": "n", "vtep": "10.0.0.1", "gossip": ["10.0.0.1", 7946], "version": "0"}'
    assert decode_node(node_key("n"), older).public_key == b""
    with pytest.raises(MalformedRecord):
        decode_node(node_key("n"), older[:-1] + b', "public_key": "c2hvcnQ="}')


def test_node_record_carries_its_wireguard_key() -> None:
    node = Node("n", ipaddress.ip_address("10.0.0.1"), ("10.0.0.1", 7946), "0.1.0",
                wireguard_key=bytes(range(32, 64)))
    assert decode_node(node_key("n"), encode(node)) == node
    older = b'{"name": "n", "vtep": "10.0.0.1", "gossip": ["10.0.0.1", 7946], "version": "0"}'
    assert decode_node(node_key("n"), older).wireguard_key == b""
    with pytest.raises(MalformedRecord):
        decode_node(node_key("n"), older[:-1] + b', "wireguard_key": "c2hvcnQ="}')
