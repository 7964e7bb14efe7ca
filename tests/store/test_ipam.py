"""IPAM arithmetic and a host's blocks (pure): reserved addresses, carving, allocate/release."""

from __future__ import annotations

import ipaddress
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.store.errors import AddressExhausted, AddressNotAllocated
from agent.store.ipam import (
    DepartureClock,
    HostBlocks,
    block_of,
    choose_free_block,
    iter_blocks,
    reserved_addresses,
    usable_in_block,
)
from agent.store.schema import Block, IPAddress, validate_network


def test_reserved_v4_and_v6() -> None:
    v4 = validate_network(name="a", subnet="10.1.0.0/24", vni=1)
    assert {str(a) for a in reserved_addresses(v4)} == {"10.1.0.0", "10.1.0.1", "10.1.0.255"}
    v6 = validate_network(name="b", subnet="fd00:1::/64", vni=2, gateway="fd00:1::fe")
    assert {str(a) for a in reserved_addresses(v6)} == {"fd00:1::", "fd00:1::fe"}


def test_blocks_carve_the_subnet() -> None:
    net = validate_network(name="a", subnet="10.1.0.0/24", vni=1)
    blocks = list(iter_blocks(net))
    assert [str(b) for b in blocks] == [f"10.1.0.{i}/26" for i in (0, 64, 128, 192)]
    assert usable_in_block(net, blocks[0]) == 62
    assert usable_in_block(net, blocks[3]) == 63
    assert block_of(net, ipaddress.ip_address("10.1.0.130")) == blocks[2]
    small = validate_network(name="s", subnet="10.2.0.0/29", vni=2)
    assert [str(b) for b in iter_blocks(small)] == ["10.2.0.0/29"]
    v6 = validate_network(name="v", subnet="fd00::/64", vni=3)
    first = next(iter(iter_blocks(v6)))
    assert str(first) == "fd00::/122"


def test_whole_subnet_allocates_every_address_but_the_reserved() -> None:
    net = validate_network(name="a", subnet="10.1.0.0/28", vni=1, block_prefix=30)
    hb = HostBlocks(net, "h1")
    rng = random.Random(1)
    got: list[IPAddress] = []
    for _ in range(64):  # 16 addresses and 4 blocks: far fewer turns than this
        address = hb.allocate(f"ep{len(got)}")
        if address is None:
            taken = set(hb.blocks)
            try:
                cidr = choose_free_block(net, taken, rng)
            except AddressExhausted:
                break
            hb.adopt(Block("a", cidr, "h1", {}), 1)
            continue
        got.append(address)
    else:
        pytest.fail("the subnet never ran out")
    assert len(got) == len(set(got)) == 16 - 3
    assert not set(got) & reserved_addresses(net)


def test_v6_block_allocation_skips_anycast_and_gateway() -> None:
    net = validate_network(name="v", subnet="fd00:1::/64", vni=3)
    hb = HostBlocks(net, "h1")
    hb.adopt(Block("v", next(iter(iter_blocks(net))), "h1", {}), 5)
    got = [hb.allocate(f"e{i}") for i in range(62)]
    assert None not in got
    assert hb.allocate("one-too-many") is None
    assert str(got[0]) == "fd00:1::2"


def test_an_ip_range_bounds_automatic_addresses_and_blocks() -> None:
    net = validate_network(name="r", subnet="10.1.0.0/24", vni=1, ip_range="10.1.0.64/26")
    assert [str(b) for b in iter_blocks(net)] == [f"10.1.0.{n}/28" for n in (64, 80, 96, 112)]
    hb = HostBlocks(net, "h1")
    hb.adopt(Block("r", ipaddress.ip_network("10.1.0.64/28"), "h1", {}), 3)
    handed = [hb.allocate(f"e{i}") for i in range(17)]
    assert [str(a) for a in handed[:16]] == [f"10.1.0.{n}" for n in range(64, 80)]
    assert handed[16] is None  # the block is used up: the next comes from another block


def test_release_reuse_and_known_handle() -> None:
    net = validate_network(name="a", subnet="10.1.0.0/24", vni=1)
    hb = HostBlocks(net, "h1")
    hb.adopt(Block("a", ipaddress.ip_network("10.1.0.64/26"), "h1", {}), 3)
    first = hb.allocate("x")
    assert hb.allocate("x") == first
    assert first is not None
    assert hb.release(first) == "x"
    with pytest.raises(AddressNotAllocated):
        hb.release(first)
    assert hb.allocated_count() == 0


def test_flush_generations_keep_later_changes_dirty() -> None:
    net = validate_network(name="a", subnet="10.1.0.0/24", vni=1)
    hb = HostBlocks(net, "h1")
    hb.adopt(Block("a", ipaddress.ip_network("10.1.0.0/26"), "h1", {}), 3)
    hb.allocate("a")
    pending = hb.pending_flushes()
    assert [p.expected_mod_revision for p in pending] == [3]
    hb.allocate("b")  # while the flush is in flight
    hb.flushed(pending, 9)
    again = hb.pending_flushes()
    assert len(again) == 1
    assert again[0].expected_mod_revision == 9
    assert len(again[0].block.allocations) == 2
    hb.flushed(again, 10)
    assert hb.pending_flushes() == []


def test_choose_free_block_spreads_and_exhausts() -> None:
    net = validate_network(name="a", subnet="10.1.0.0/24", vni=1)
    rng = random.Random(7)
    picks = {choose_free_block(net, set(), rng) for _ in range(50)}
    assert len(picks) > 1
    with pytest.raises(AddressExhausted):
        choose_free_block(net, set(iter_blocks(net)), rng)


def test_adopt_refuses_foreign_block() -> None:
    net = validate_network(name="a", subnet="10.1.0.0/24", vni=1)
    hb = HostBlocks(net, "h1")
    with pytest.raises(ValueError, match="h2"):
        hb.adopt(Block("a", ipaddress.ip_network("10.1.0.0/26"), "h2", {}), 1)


@settings(max_examples=200, deadline=None)
@given(ops=st.lists(st.tuples(st.booleans(), st.integers(0, 40)), max_size=200))
def test_allocate_release_never_duplicates(ops: list[tuple[bool, int]]) -> None:
    net = validate_network(name="a", subnet="10.1.0.0/26", vni=1, block_prefix=28)
    hb = HostBlocks(net, "h1")
    for cidr in list(iter_blocks(net))[:2]:
        hb.adopt(Block("a", cidr, "h1", {}), 1)
    for allocate, n in ops:
        handle = f"h{n}"
        if allocate:
            hb.allocate(handle)
        elif handle in hb.handles:
            hb.release(hb.handles[handle])
        addresses = list(hb.handles.values())
        assert len(addresses) == len(set(addresses))
        assert not set(addresses) & reserved_addresses(net)
        assert hb.free_count() + hb.allocated_count() == 16 + 16 - 2


def test_departure_clock_waits_out_the_grace_and_resets() -> None:
    clock = DepartureClock(grace=10.0)
    assert clock.observe({"a", "b"}, {"a"}, now=0.0) == []
    assert clock.observe({"a", "b"}, {"a"}, now=9.0) == []
    assert clock.observe({"a", "b"}, {"a", "b"}, now=9.5) == []  # b came back: clock resets
    assert clock.observe({"a", "b"}, {"a"}, now=12.0) == []
    assert clock.observe({"a", "b"}, {"a"}, now=22.0) == ["b"]
    clock.forget("b")
    assert clock.observe({"a"}, set(), now=23.0) == []
    assert clock.observe({"a"}, set(), now=33.0) == ["a"]


def test_departure_clock_never_counts_a_host_alive_in_gossip() -> None:
    clock = DepartureClock(grace=10.0)
    # "b" lost its registry record but gossips: never reclaimed, however long.
    for now in (0.0, 20.0, 40.0):
        assert clock.observe({"b"}, set(), now=now, alive={"b"}) == []
    assert clock.observe({"b"}, set(), now=41.0) == []  # silent from now on: the clock starts
    assert clock.observe({"b"}, set(), now=51.0) == ["b"]
