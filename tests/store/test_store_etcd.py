"""The etcd store against a real etcd server (the `local_etcd` fixture): the issue's proof."""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio

from agent.lab.etcd_local import LocalEtcd
from agent.store.errors import (
    NetworkConflict,
    NetworkInUse,
    NetworkNotFound,
    StoreError,
    StoreUnavailable,
)
from agent.store.etcd_client import EtcdClient, EtcdEndpoint, TxnResult
from agent.store.ipam import reserved_addresses
from agent.store.schema import (
    BLOCKS,
    IPAddress,
    Network,
    Node,
    block_key,
    decode_block,
    network_key,
    node_key,
    prefix_end,
    validate_network,
    validate_policy,
)
from agent.store.service import AddressPool, Store
from tests.polling import wait_until
from tests.store.etcd_reads import compact, inspect_network, list_networks

pytestmark = pytest.mark.etcd


def connect(server: LocalEtcd, seed: int = 0, **kwargs: float) -> Store:
    host, port = server.endpoint
    return Store.connect(host, port, rng=random.Random(seed), backoff_max=0.5, **kwargs)


async def stored_allocations(store: Store) -> list[tuple[IPAddress, str, str]]:
    """(address, handle, host) of every allocation etcd holds, all networks."""
    kvs, _ = await store.call(store.client.range, BLOCKS, prefix_end(BLOCKS))
    rows = []
    for kv in kvs:
        block = decode_block(kv.key, kv.value)
        rows += [(a, h, block.host) for a, h in block.allocations.items()]
    return rows


async def test_same_vni_from_eight_clients_exactly_one_wins(local_etcd: LocalEtcd) -> None:
    stores = [connect(local_etcd, i) for i in range(8)]
    wins: list[Network] = []
    conflicts: list[NetworkConflict] = []

    async def create(i: int) -> None:
        net = validate_network(name=f"net{i}", subnet=f"10.{i}.0.0/16", vni=4242)
        try:
            wins.append(await stores[i].create_network(net))
        except NetworkConflict as exc:
            conflicts.append(exc)

    async with trio.open_nursery() as nursery:
        for i in range(8):
            nursery.start_soon(create, i)
    assert len(wins) == 1
    assert len(conflicts) == 7
    assert all(c.field == "vni" and c.holder == wins[0].name for c in conflicts)
    assert [n.name for n in await list_networks(stores[0])] == [wins[0].name]
    for store in stores:
        store.close()


async def test_overlapping_subnets_and_names_are_refused(local_etcd: LocalEtcd) -> None:
    store = connect(local_etcd)
    a = await store.create_network(validate_network(name="a", subnet="10.1.0.0/16"))
    assert a.vni == 4096
    b = await store.create_network(validate_network(name="b", subnet="fd00:1::/64"))
    assert b.vni == 4097
    refused = [
        (validate_network(name="a", subnet="10.9.0.0/16"), "name"),
        (validate_network(name="c", subnet="10.1.128.0/24"), "subnet"),
        (validate_network(name="c", subnet="10.0.0.0/8"), "subnet"),
        (validate_network(name="c", subnet="10.1.0.0/16"), "subnet"),
        (validate_network(name="c", subnet="fd00:1:0:0:8000::/80"), "subnet"),
        (validate_network(name="c", subnet="10.2.0.0/16", vni=4096), "vni"),
    ]
    for net, which in refused:
        with pytest.raises(NetworkConflict) as info:
            await store.create_network(net)
        assert info.value.field == which
    # Concurrent overlapping creates under different names: exactly one wins.
    results: list[str] = []

    async def create(i: int) -> None:
        try:
            await store.create_network(validate_network(name=f"o{i}", subnet=f"10.3.{i}.0/24"))
            results.append("won")
        except NetworkConflict:
            results.append("lost")

    async def create_big() -> None:
        try:
            await store.create_network(validate_network(name="big", subnet="10.3.0.0/16"))
            results.append("big")
        except NetworkConflict:
            results.append("big lost")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(create_big)
        for i in range(4):
            nursery.start_soon(create, i)
    assert results.count("big") + results.count("won") >= 1
    assert not ("big" in results and "won" in results)
    store.close()


async def test_delete_needs_force_with_endpoints(local_etcd: LocalEtcd) -> None:
    store = connect(local_etcd)
    net = await store.create_network(validate_network(name="n", subnet="10.1.0.0/24"))
    pool = await store.open_address_pool("n", "h1")
    address = await pool.allocate("ep1")
    await pool.flush()
    info = await inspect_network(store, "n")
    assert info.endpoints == 1
    with pytest.raises(NetworkInUse, match="1 endpoint"):
        await store.delete_network("n")
    pool.release(address)
    await pool.flush()
    await store.delete_network("n")
    with pytest.raises(NetworkNotFound):
        await inspect_network(store, "n")
    # Name, VNI and subnet are free again.
    again = await store.create_network(validate_network(name="n", subnet="10.1.0.0/24"))
    assert again.vni == net.vni
    pool = await store.open_address_pool("n", "h1")
    await pool.allocate("ep1")
    await pool.flush()
    await store.delete_network("n", force=True)
    assert await stored_allocations(store) == []
    # A pool of the deleted network finds out at its next write.
    pool.allocate_nowait("ep2")
    with pytest.raises(NetworkNotFound):
        await pool.flush()
    store.close()


@dataclass
class Pause:
    after: int
    resume: trio.Event = field(default_factory=trio.Event)
    arrived: int = 0


async def run_allocators(
    pools: list[AddressPool], per_pool: int, *, pause: Pause | None = None
) -> dict[str, IPAddress]:
    """Allocate `per_pool` handles from every pool concurrently, retrying while etcd is away.

    With `pause`, every allocator stops after `pause.after` handles until `pause.resume` is set.
    """
    done: dict[str, IPAddress] = {}

    async def allocator(pool: AddressPool) -> None:
        backoff = pool.store.new_backoff()
        for i in range(per_pool):
            handle = f"{pool.host}-ep{i}"
            while True:
                try:
                    done[handle] = await pool.allocate(handle)
                    backoff.reset()
                    break
                except StoreUnavailable:
                    await trio.sleep(backoff.next_delay())
            if pause is not None and i + 1 == pause.after:
                pause.arrived += 1
                await pause.resume.wait()
            await trio.lowlevel.checkpoint()

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for pool in pools:
                nursery.start_soon(allocator, pool)
    return done


async def flush_all(pools: list[AddressPool]) -> None:
    with trio.fail_after(30):
        for pool in pools:
            while True:
                try:
                    await pool.flush()
                    break
                except StoreUnavailable:
                    await trio.sleep(0.1)


def assert_unique_and_complete(
    done: dict[str, IPAddress], stored: list[tuple[IPAddress, str, str]], network: Network
) -> None:
    addresses = [a for a, _, _ in stored]
    assert len(addresses) == len(set(addresses)), "an address was handed out twice"
    assert {h: a for a, h, _ in stored} == done, "etcd and the allocators disagree"
    assert not set(addresses) & reserved_addresses(network)
    assert all(a in network.subnet for a in addresses)


async def test_eight_allocators_times_500(local_etcd: LocalEtcd) -> None:
    admin = connect(local_etcd)
    network = await admin.create_network(validate_network(name="n", subnet="10.8.0.0/19"))
    stores = [connect(local_etcd, seed) for seed in range(8)]
    pools = [await s.open_address_pool("n", f"host{i}") for i, s in enumerate(stores)]
    done = await run_allocators(pools, 500)
    await flush_all(pools)
    assert len(done) == 4000
    assert_unique_and_complete(done, await stored_allocations(admin), network)
    info = await inspect_network(admin, "n")
    assert info.endpoints == 4000
    hosts_by_block = {b.cidr: b.host for b in info.blocks}
    assert all(hosts_by_block[ipaddress.ip_network(f"{a}/26", strict=False)] for a in done.values())
    # A restarted agent re-reads its blocks and hands out nothing twice.
    again = await connect(local_etcd, 99).open_address_pool("n", "host0")
    assert again.allocations() == pools[0].allocations()
    assert await again.allocate("host0-ep7") == done["host0-ep7"]
    fresh = await again.allocate("host0-new")
    assert fresh not in done.values()
    for store in [admin, *stores]:
        store.close()


async def test_ipv6_network_two_hosts(local_etcd: LocalEtcd) -> None:
    admin = connect(local_etcd)
    network = await admin.create_network(validate_network(name="six", subnet="fd00:6::/64"))
    stores = [connect(local_etcd, seed) for seed in (1, 2)]
    pools = [await s.open_address_pool("six", f"v6host{i}") for i, s in enumerate(stores)]
    done = await run_allocators(pools, 150)
    await flush_all(pools)
    assert_unique_and_complete(done, await stored_allocations(admin), network)
    assert all(b.cidr.prefixlen == 122 for b in (await inspect_network(admin, "six")).blocks)
    for store in [admin, *stores]:
        store.close()


async def test_dual_stack_network_two_pools_per_host(local_etcd: LocalEtcd) -> None:
    """A network with a subnet6 has an IPv6 pool beside its IPv4 one, blocks of both under
    one prefix: neither pool takes the other's blocks for damaged ones, no address is handed
    out twice across hosts, an endpoint holding one of each counts once, and the network's
    IPv6 subnet is guarded like its IPv4 one."""
    admin = connect(local_etcd)
    network = await admin.create_network(validate_network(
        name="dual", subnet="10.9.0.0/24", subnet6="fd00:9::/64"))
    stores = [connect(local_etcd, seed) for seed in (3, 4)]
    pools4 = [await s.open_address_pool("dual", f"h{i}") for i, s in enumerate(stores)]
    pools6 = [await s.open_address_pool("dual", f"h{i}", version=6)
              for i, s in enumerate(stores)]
    done4 = await run_allocators(pools4, 70)
    done6 = await run_allocators(pools6, 70)
    await flush_all([*pools4, *pools6])
    stored = await stored_allocations(admin)
    assert_unique_and_complete(done4, [r for r in stored if r[0].version == 4], network)
    assert_unique_and_complete(done6, [r for r in stored if r[0].version == 6],
                               network.ipv6_view())
    assert all(a.version == 6 and a != ipaddress.ip_address("fd00:9::1")
               for a in done6.values())
    reopened = await connect(local_etcd, 9).open_address_pool("dual", "h0", version=6)
    assert reopened.allocations() == pools6[0].allocations()
    assert all(s.statistics().rejected_values == 0 for s in [*stores, reopened.store])
    with pytest.raises(NetworkInUse) as in_use:
        await admin.delete_network("dual")
    assert in_use.value.endpoints == 140  # one per handle, not one per address
    with pytest.raises(NetworkConflict) as clash:
        await admin.create_network(validate_network(
            name="clash", subnet="10.10.0.0/24", subnet6="fd00:9::/80"))
    assert clash.value.field == "subnet6"
    await admin.delete_network("dual", force=True)
    assert not await stored_allocations(admin)
    for store in [admin, *stores, reopened.store]:
        store.close()


async def test_etcd_killed_and_restarted_mid_run(local_etcd: LocalEtcd) -> None:
    admin = connect(local_etcd)
    network = await admin.create_network(
        validate_network(name="n", subnet="10.9.0.0/18", block_prefix=27)
    )
    stores = [connect(local_etcd, seed, timeout=1.0) for seed in range(4)]
    watcher = stores[0]
    pools = [await s.open_address_pool("n", f"host{i}") for i, s in enumerate(stores)]
    per_pool = 400
    total = per_pool * len(pools)
    pause = Pause(after=per_pool // 3)
    observed: dict[str, int] = {}

    async def chaos() -> None:
        await wait_until(lambda: pause.arrived == len(pools),
                         "pause.arrived == len(pools)", interval=0.05)
        await trio.to_thread.run_sync(local_etcd.kill)
        before = sum(p.statistics().allocated for p in pools)
        pause.resume.set()
        # Allocations go on from held blocks; claims fail fast and the stores turn degraded.
        await wait_until(lambda: all(s.statistics().degraded for s in stores),
                         "all(s.statistics().degraded for s in stores)", interval=0.05)
        observed["degraded"] = True
        observed["allocated_while_down"] = sum(p.statistics().allocated for p in pools) - before
        await trio.to_thread.run_sync(local_etcd.start)

    async with trio.open_nursery() as nursery:
        view = await nursery.start(watcher.run_network_watch)
        for store in stores:
            await nursery.start(store.run_health_probe)
        for pool in pools:
            await nursery.start(pool.run_flusher)
        await wait_until(lambda: "n" in view.networks, "'n' in view.networks", interval=0.05)
        nursery.start_soon(chaos)
        done = await run_allocators(pools, per_pool, pause=pause)
        assert observed.get("degraded")
        assert observed["allocated_while_down"] > 0
        await wait_until(lambda: not any(s.statistics().degraded for s in stores),
                         "not any(s.statistics().degraded for s in stores)", interval=0.05)
        # The watch resumes from its revision and sees what happens after the restart.
        await admin.create_network(validate_network(name="after", subnet="10.200.0.0/16"))
        await wait_until(lambda: "after" in view.networks,
                         "'after' in view.networks", interval=0.05)
        stats = watcher.statistics()
        assert stats.watch_resumes >= 1
        assert stats.watch_relists == 0
        nursery.cancel_scope.cancel()
    await flush_all(pools)
    assert len(done) == total
    assert_unique_and_complete(
        done, [r for r in await stored_allocations(admin) if r[2].startswith("host")], network
    )
    for store in [admin, *stores]:
        store.close()


async def test_watch_relists_after_compaction(local_etcd: LocalEtcd) -> None:
    store = connect(local_etcd)
    other = connect(local_etcd, 1)
    await other.create_network(validate_network(name="a", subnet="10.1.0.0/16"))
    await other.create_network(validate_network(name="b", subnet="10.2.0.0/16"))
    async with trio.open_nursery() as nursery:
        view = await nursery.start(store.run_network_watch)
        await wait_until(lambda: set(view.networks) == {"a", "b"},
                         "set(view.networks) == {'a', 'b'}", interval=0.05)
        nursery.cancel_scope.cancel()
    seen = view.revision
    # While the watch is away: changes, then history compacted past its revision.
    await other.create_network(validate_network(name="c", subnet="10.3.0.0/16"))
    await other.delete_network("a")
    revision = await other.call(other.client.status)
    await compact(other, revision)
    assert revision > seen
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run_network_watch)
        await wait_until(lambda: set(view.networks) == {"b", "c"},
                         "set(view.networks) == {'b', 'c'}", interval=0.05)
        assert store.statistics().watch_relists == 1
        await other.create_network(validate_network(name="d", subnet="10.4.0.0/16"))
        await wait_until(lambda: set(view.networks) == {"b", "c", "d"},
                         "set(view.networks) == {'b', 'c', 'd'}", interval=0.05)
        nursery.cancel_scope.cancel()
    store.close()
    other.close()


async def test_policy_watch_relists_after_compaction(local_etcd: LocalEtcd) -> None:
    store = connect(local_etcd)
    other = connect(local_etcd, 1)
    await other.create_network(validate_network(name="n", subnet="10.1.0.0/16"))

    async def create(name: str) -> None:
        await other.create_policy(validate_policy(name=name, network="n", direction="ingress",
                                                  select="app=db", allow=["app=web"]))

    await create("a")
    view = store.policy_view
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run_policy_watch)
        await wait_until(lambda: set(view.policies) == {"a"}, "policy a watched")
        nursery.cancel_scope.cancel()
    seen = view.version
    # While the watch is away: changes, then history compacted past its revision.
    await create("b")
    await other.delete_policy("a")
    await compact(other, await other.call(other.client.status))
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run_policy_watch)
        assert await store.wait_policies_changed(seen) > seen
        await wait_until(lambda: set(view.policies) == {"b"}, "the re-listing")
        assert store.statistics().watch_relists == 1
        await create("c")
        await wait_until(lambda: set(view.policies) == {"b", "c"}, "policy c watched")
        nursery.cancel_scope.cancel()
    store.close()
    other.close()


@pytest.mark.slow
async def test_lease_expiry_removes_node_record(local_etcd: LocalEtcd) -> None:
    store = connect(local_etcd)
    node = Node("h1", ipaddress.ip_address("10.0.0.1"), ("10.0.0.1", 7946), "0.1.0")
    await store.register_node(node, ttl=1)
    assert await store.list_nodes() == [node]
    assert await store.gossip_seeds() == [("10.0.0.1", 7946)]
    assert await store.gossip_seeds(exclude="h1") == []

    async def gone() -> bool:
        return await store.list_nodes() == []

    await wait_until(gone, "the node record gone", 10, interval=0.05)
    # The registration service keeps a short lease alive well past its TTL ...
    node2 = Node("h2", ipaddress.ip_address("10.0.0.2"), ("10.0.0.2", 7946), "0.1.0")
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: store.run_node_registration(node2, ttl=2, task_status=task_status)
        )
        await wait_until(lambda: store.statistics().node_registered,
                         "store.statistics().node_registered", interval=0.05)
        first = await store.call(store.client.range, node_key("h2"))
        # Past the TTL (refreshes every 2/3 s): only the keepalives hold the record.
        await wait_until(lambda: store.statistics().node_lease_refreshes >= 5,
                         "store.statistics().node_lease_refreshes >= 5", interval=0.05)
        assert await store.list_nodes() == [node2]
        again = await store.call(store.client.range, node_key("h2"))
        assert again[0][0].lease == first[0][0].lease
        # A lease lost behind its back (expired during an outage, revoked): registered again.
        await store.call(store.client.lease_revoke, first[0][0].lease)

        async def registered_again() -> bool:
            kvs, _ = await store.call(store.client.range, node_key("h2"))
            return bool(kvs) and kvs[0].lease != first[0][0].lease

        await wait_until(registered_again, "the node registered again", interval=0.05)
        nursery.cancel_scope.cancel()
    # ... and revokes it on a graceful stop.
    assert await store.list_nodes() == []
    store.close()


async def test_reclaim_blocks_of_departed_host(local_etcd: LocalEtcd) -> None:
    store = connect(local_etcd)
    await store.create_network(validate_network(name="n", subnet="10.1.0.0/24"))
    node = Node("gone", ipaddress.ip_address("10.0.0.9"), ("10.0.0.9", 7946), "0.1.0")
    lease = await store.register_node(node, ttl=30)
    pool = await store.open_address_pool("n", "gone")
    await pool.allocate("ep")
    await pool.flush()
    with pytest.raises(StoreError, match="still registered"):
        await store.reclaim_host_blocks("gone")
    await store.call(store.client.lease_revoke, lease)
    assert await store.reclaim_host_blocks("gone") == 1
    assert (await inspect_network(store, "n")).blocks == ()
    assert await store.reclaim_host_blocks("gone") == 0
    store.close()


async def test_block_reclaimer_frees_departed_hosts_after_grace(local_etcd: LocalEtcd) -> None:
    store = connect(local_etcd)
    await store.create_network(validate_network(name="n", subnet="10.1.0.0/24"))
    alive = Node("alive", ipaddress.ip_address("10.0.0.1"), ("10.0.0.1", 7946), "0.1.0")
    await store.register_node(alive, ttl=30)
    # "gossiping" lost its registry record (an etcd outage, say) but gossip sees it alive:
    # its running endpoints keep their addresses.
    for host in ("alive", "departed", "gossiping"):
        pool = await store.open_address_pool("n", host)
        await pool.allocate(f"{host}-ep")
        await pool.flush()
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: store.run_block_reclaimer(
                grace=0.3, interval=0.05, alive=lambda: {"gossiping"}, task_status=task_status
            )
        )

        async def hosts() -> set[str]:
            return {b.host for b in (await inspect_network(store, "n")).blocks}

        await wait_until(lambda: _equals(hosts(), {"alive", "gossiping"}),
                         "only the departed host's blocks reclaimed", interval=0.05)
        nursery.cancel_scope.cancel()
    store.close()


async def _equals(value: Awaitable[object], expected: object) -> bool:
    return await value == expected


async def test_malformed_keys_are_skipped_and_counted(local_etcd: LocalEtcd) -> None:
    store = connect(local_etcd)
    await store.create_network(validate_network(name="good", subnet="10.1.0.0/24"))
    put = store.client.txn
    from agent.store.etcd_client import Put

    await store.call(put, [], [Put(network_key("junk"), b"\x00not json")])
    await store.call(put, [], [Put(network_key("liar"), b'{"name": "other"}')])
    await store.call(put, [], [Put(node_key("n"), b"[1, 2]")])
    await store.call(put, [], [Put(BLOCKS + "good/garbage", b"{}")])
    assert [n.name for n in await list_networks(store)] == ["good"]
    assert [n.name for n in await list_networks(store)] == ["good"]
    assert store.statistics().malformed_records == 2  # counted once per key
    assert await store.list_nodes() == []
    squatted = ipaddress.ip_network("10.1.0.0/26")
    await store.call(put, [], [Put(block_key("good", squatted), b"not a block")])
    pool = await store.open_address_pool("good", "h1")
    addresses = [await pool.allocate(f"ep{i}") for i in range(150)]
    assert not any(a in squatted for a in addresses)  # a malformed block still holds its key
    assert store.statistics().malformed_records == 5
    async with trio.open_nursery() as nursery:
        view = await nursery.start(store.run_network_watch)
        await wait_until(lambda: "good" in view.networks, "'good' in view.networks", interval=0.05)
        await store.call(put, [], [Put(network_key("late"), b"{{{")])
        await store.create_network(validate_network(name="later", subnet="10.2.0.0/24"))
        await wait_until(lambda: "later" in view.networks,
                         "'later' in view.networks", interval=0.05)
        assert "late" not in view.networks
        assert store.statistics().malformed_records == 6
        nursery.cancel_scope.cancel()
    store.close()


async def test_etcd_down_fails_fast_then_reconverges(local_etcd: LocalEtcd) -> None:
    store = connect(local_etcd, timeout=1.0)
    await store.create_network(validate_network(name="n", subnet="10.1.0.0/24"))
    pool = await store.open_address_pool("n", "h1")
    await pool.allocate("ep0")
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run_health_probe)
        await trio.to_thread.run_sync(local_etcd.kill)
        with trio.fail_after(3):
            with pytest.raises(StoreUnavailable):
                await list_networks(store)
        assert store.statistics().degraded
        # Local allocation goes on while the held block has room.
        for i in range(1, 20):
            assert pool.allocate_nowait(f"ep{i}") is not None
        with trio.fail_after(3), pytest.raises(StoreUnavailable):
            await pool.flush()
        await trio.to_thread.run_sync(local_etcd.start)
        await wait_until(lambda: not store.statistics().degraded,
                         "not store.statistics().degraded", interval=0.05)
        nursery.cancel_scope.cancel()
    await pool.flush()
    assert (await inspect_network(store, "n")).endpoints == 20
    store.close()


class LosingClient(EtcdClient):
    """A real client whose next `lose` transactions commit but whose replies are lost."""

    lose = 0

    def txn(self, *args: Any, **kwargs: Any) -> TxnResult:
        result = super().txn(*args, **kwargs)
        if self.lose > 0 and result.succeeded:
            self.lose -= 1
            raise StoreUnavailable("reply lost (injected)")
        return result


async def test_lost_replies_neither_duplicate_nor_lose(local_etcd: LocalEtcd) -> None:
    host, port = local_etcd.endpoint
    client = LosingClient([EtcdEndpoint(host, port)])
    store = Store(client, rng=random.Random(5))
    network = await store.create_network(
        validate_network(name="n", subnet="10.1.0.0/24", block_prefix=28)
    )
    pool = await store.open_address_pool("n", "h1")
    done = {f"ep{i}": await pool.allocate(f"ep{i}") for i in range(10)}
    # A flush commits but its reply is lost: the next flush finds a newer revision of our own
    # block, adopts it and writes again.
    done["ep10"] = await pool.allocate("ep10")
    client.lose = 1
    with pytest.raises(StoreUnavailable):
        await pool.flush()
    await pool.flush()
    # A claim commits but its reply is lost: the retry finds the block already ours.
    i = len(done)
    while (address := pool.allocate_nowait(f"ep{i}")) is not None:
        done[f"ep{i}"] = address
        i += 1
    claims = pool.statistics().blocks
    client.lose = 1
    with pytest.raises(StoreUnavailable):
        await pool.allocate(f"ep{i}")
    done[f"ep{i}"] = await pool.allocate(f"ep{i}")
    assert pool.statistics().blocks == claims + 1
    for j in range(i + 1, 40):
        done[f"ep{j}"] = await pool.allocate(f"ep{j}")
    await pool.flush()
    assert_unique_and_complete(done, await stored_allocations(store), network)
    info = await inspect_network(store, "n")
    assert all(b.host == "h1" for b in info.blocks)
    assert sum(b.allocated for b in info.blocks) == 40
    assert pool.statistics().lost_blocks == 0
    assert len(info.blocks) == pool.statistics().blocks  # no claimed block left behind
    store.close()
