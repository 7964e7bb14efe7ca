"""Allocating a chosen address (`--ip`): pure rules, then against a real etcd (`local_etcd`)."""

from __future__ import annotations

import ipaddress

import pytest
import trio

from agent.lab.etcd_local import LocalEtcd
from agent.store.errors import AddressTaken, InvalidAddress
from agent.store.ipam import HostBlocks, check_chosen, record_in_block
from agent.store.schema import Block, IPAddress, block_key, decode_block, validate_network
from agent.store.service import AddressPool, Store
from tests.store.test_store_etcd import connect, stored_allocations

NET = validate_network(name="n", subnet="10.1.0.0/24", block_prefix=26)


def ip(text: str) -> IPAddress:
    return ipaddress.ip_address(text)


# -- pure --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("10.2.0.5", "outside network n's subnet 10.1.0.0/24"),
        ("fd00::5", "outside network n's subnet"),
        ("10.1.0.1", "the gateway of network n"),
        ("10.1.0.0", "the network address"),
        ("10.1.0.255", "the broadcast address"),
        ("10.1.0.x", "not an IP address"),
    ],
)
def test_check_chosen_names_field_and_value(value: str, reason: str) -> None:
    with pytest.raises(InvalidAddress, match=f"ip='{value}': {reason}"):
        check_chosen(NET, value)


def test_record_in_block_names_the_holder() -> None:
    block = Block("n", ipaddress.ip_network("10.1.0.64/26"), "h2", {ip("10.1.0.70"): "h2/web"})
    updated = record_in_block(block, ip("10.1.0.71"), "h1/db")
    assert updated.allocations == {ip("10.1.0.70"): "h2/web", ip("10.1.0.71"): "h1/db"}
    assert block.allocations == {ip("10.1.0.70"): "h2/web"}  # unchanged input
    with pytest.raises(AddressTaken, match=r"ip='10\.1\.0\.70' is allocated to 'h2/web'"):
        record_in_block(block, ip("10.1.0.70"), "h1/db")


def test_held_block_chosen_and_next_free_never_collide() -> None:
    hb = HostBlocks(NET, "h1")
    hb.adopt(Block("n", ipaddress.ip_network("10.1.0.0/26"), "h1", {}), 1)
    assert hb.allocate_chosen("a", ip("10.1.0.2")) == ip("10.1.0.2")
    assert hb.allocate_chosen("a", ip("10.1.0.2")) == ip("10.1.0.2")  # idempotent
    with pytest.raises(AddressTaken, match="allocated to 'a'"):
        hb.allocate_chosen("b", ip("10.1.0.2"))
    assert hb.allocate_chosen("c", ip("10.1.0.100")) is None  # not in a held block
    got = {hb.allocate(f"e{i}") for i in range(60)}
    assert ip("10.1.0.2") not in got and None not in got


def test_adopt_keeps_foreign_entries_and_our_unflushed_changes() -> None:
    cidr = ipaddress.ip_network("10.1.0.0/26")
    hb = HostBlocks(NET, "h1")
    hb.adopt(Block("n", cidr, "h1", {ip("10.1.0.2"): "h1/a"}), 1)
    hb.release(ip("10.1.0.2"))  # unflushed release
    local = hb.allocate("h1/b")  # unflushed allocation
    assert local is not None
    # etcd: our old entry, plus h2's chosen address recorded in our block.
    stored = Block("n", cidr, "h1", {ip("10.1.0.2"): "h1/a", ip("10.1.0.9"): "h2/x"})
    assert hb.adopt(stored, 5) == []
    assert hb.blocks[cidr].allocations == {ip("10.1.0.9"): "h2/x", local: "h1/b"}
    assert hb.pending_flushes()[0].expected_mod_revision == 5
    # h2 recorded the very address we handed out locally, before our flush: theirs.
    lost = hb.allocate("h1/c")
    assert lost is not None
    stored = Block("n", cidr, "h1", {ip("10.1.0.9"): "h2/x", lost: "h2/y"})
    assert hb.adopt(stored, 6) == ["h1/c"]
    assert "h1/c" not in hb.handles and hb.blocks[cidr].allocations[lost] == "h2/y"


# -- against etcd ------------------------------------------------------------------------------


async def two_pools(local_etcd: LocalEtcd) -> tuple[Store, AddressPool, AddressPool]:
    store = connect(local_etcd)
    await store.create_network(NET)
    h1 = await store.open_address_pool("n", "h1")
    h2 = await store.open_address_pool("n", "h2")
    await h1.claim_block()
    await h2.claim_block()
    return store, h1, h2


def held_cidr(pool: AddressPool) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    (cidr,) = pool._blocks.blocks
    return cidr


@pytest.mark.etcd
async def test_chosen_in_own_block_then_free_block(local_etcd: LocalEtcd) -> None:
    store, h1, h2 = await two_pools(local_etcd)
    own = held_cidr(h1)
    mine = own.network_address + 10
    if mine == NET.gateway:
        mine += 1
    assert await h1.allocate_address("h1/a", str(mine)) == mine
    # a free block: claimed with the address in it, in one transaction
    taken = {held_cidr(h1), held_cidr(h2)}
    free = next(c for c in NET.subnet.subnets(new_prefix=26) if c not in taken)
    chosen = free.network_address + 5
    claims = h1.statistics().claims
    assert await h1.allocate_address("h1/b", chosen) == chosen
    assert h1.statistics().claims == claims + 1
    kvs, _ = await store.call(store.client.range, block_key("n", free))
    assert decode_block(kvs[0].key, kvs[0].value) == Block("n", free, "h1", {chosen: "h1/b"})
    rows = set(await stored_allocations(store))
    assert {(mine, "h1/a", "h1"), (chosen, "h1/b", "h1")} <= rows
    # releasing a chosen address frees it in etcd
    h1.release(chosen)
    h1.release(mine)
    await h1.flush()
    assert await stored_allocations(store) == []
    store.close()


@pytest.mark.etcd
async def test_chosen_in_other_hosts_block_then_both_allocate(local_etcd: LocalEtcd) -> None:
    store, h1, h2 = await two_pools(local_etcd)
    theirs = held_cidr(h2)
    # h2 handed out two addresses locally and has not flushed them yet
    early = [h2.allocate_nowait(f"h2/early{i}") for i in range(2)]
    assert None not in early
    # h1 chooses h2's next free address and one more: recorded in h2's block in etcd
    chosen = [a for a in theirs.hosts() if a not in early and a != NET.gateway][:2]
    for i, address in enumerate(chosen):
        assert await h1.allocate_address(f"h1/c{i}", address) == address
    assert h1.statistics().foreign == 2
    with pytest.raises(AddressTaken, match=f"ip='{chosen[0]}' is allocated to 'h1/c0'"):
        await h2.allocate_address("h2/x", chosen[0])
    # both hosts now allocate next-free addresses concurrently, each confirming in etcd
    got: dict[str, IPAddress] = {}

    async def allocate(pool: AddressPool, n: int) -> None:
        for i in range(n):
            handle = f"{pool.host}/ep{i}"
            await pool.allocate(handle)
            got[handle] = await pool.confirm(handle)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(allocate, h1, 40)
            nursery.start_soon(allocate, h2, 40)
    await h1.flush()
    await h2.flush()
    rows = await stored_allocations(store)
    addresses = [a for a, _, _ in rows]
    assert len(addresses) == len(set(addresses)) == 2 + 2 + 80
    assert {(a, f"h1/c{i}", "h2") for i, a in enumerate(chosen)} <= set(rows)
    assert not set(chosen) & set(got.values())
    assert set(early) <= set(addresses)
    # h2 kept our entries when it flushed over its block; release frees them in h2's block
    h1.release(chosen[0])
    await h1.flush()
    assert chosen[0] not in [a for a, _, _ in await stored_allocations(store)]
    assert await h2.allocate_address("h2/x", chosen[0]) == chosen[0]
    # a restarted h1 recognises its remaining foreign entry by its handle
    again = await store.open_address_pool("n", "h1")
    assert again.allocations()["h1/c1"] == chosen[1]
    store.close()


@pytest.mark.etcd
async def test_lost_local_address_is_given_up_and_reallocated(local_etcd: LocalEtcd) -> None:
    store, h1, h2 = await two_pools(local_etcd)
    local = h2.allocate_nowait("h2/a")  # not flushed: etcd does not know it yet
    assert local is not None
    assert await h1.allocate_address("h1/c", local) == local
    confirmed = await h2.confirm("h2/a")
    assert confirmed != local
    assert h2.statistics().lost_addresses == 1
    rows = await stored_allocations(store)
    assert (local, "h1/c", "h2") in rows and (confirmed, "h2/a", "h2") in rows
    store.close()


@pytest.mark.etcd
async def test_bad_chosen_addresses_change_nothing(local_etcd: LocalEtcd) -> None:
    store, h1, _ = await two_pools(local_etcd)
    first = await h1.allocate("h1/a")
    await h1.flush()
    before = await stored_allocations(store)
    revision = (await store.txn([], [])).revision
    with pytest.raises(AddressTaken, match=f"ip='{first}' is allocated to 'h1/a'"):
        await h1.allocate_address("h1/b", first)
    with pytest.raises(InvalidAddress, match=r"ip='10\.1\.0\.1': the gateway"):
        await h1.allocate_address("h1/b", "10.1.0.1")
    with pytest.raises(InvalidAddress, match=r"ip='10\.9\.0\.1': outside network n's subnet"):
        await h1.allocate_address("h1/b", "10.9.0.1")
    with pytest.raises(InvalidAddress, match="h1/a already holds"):
        await h1.allocate_address("h1/a", "10.1.0.200")
    assert await stored_allocations(store) == before
    assert (await store.txn([], [])).revision == revision
    assert "h1/b" not in h1.allocations()
    store.close()
