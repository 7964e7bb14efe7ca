"""The etcd store of an agent: networks and VNIs, IPAM blocks, the node registry, watches.

Owns every read and write under `/vxmesh/v1/` (the key schema is in agent.store.schema). Rules:
- trio shell over a blocking client: every etcd call runs in a worker thread
  (`trio.to_thread.run_sync`), never on the event loop.
- Uniqueness is decided by etcd in ONE transaction per write (network create, block claim,
  network delete, block reclaim), never by read-then-write.
- etcd away: a call fails fast with `StoreUnavailable` (the gRPC deadline bounds it); the store
  turns `degraded` (see `statistics()`), and the services (`run_health_probe`,
  `run_network_watch`, `run_policy_watch`, `run_node_registration`, `AddressPool.run_flusher`)
  retry with exponential backoff and jitter from the injected `random.Random`, so the agent
  reconverges by itself when etcd returns. Address pools keep allocating from held blocks meanwhile.
- Malformed values under our prefix are skipped, logged once per key, and counted.
- Blocks of a host that left for good (unregistered for longer than a grace period) are
  reclaimed by `run_block_reclaimer`, or at once by `reclaim_host_blocks`.
- A chosen address (`AddressPool.allocate_address`) outside the held blocks is claimed with its
  free block, or recorded in another host's block, in one transaction compared on the block's
  create/mod revision; the pool remembers such foreign addresses (and, after a restart,
  recognises entries whose handle starts with "<host>/") and releases them the same way.
Imports: trio, agent.store.etcd_client, agent.store.schema, agent.store.ipam,
agent.store.network_view, agent.store.backoff, agent.store.errors.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import random
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import trio

from agent.store.backoff import Backoff
from agent.store.errors import (
    AddressExhausted,
    AddressTaken,
    InvalidAddress,
    NetworkConflict,
    NetworkInUse,
    NetworkNotFound,
    PolicyExists,
    PolicyNotFound,
    StoreError,
    StoreUnavailable,
)
from agent.store.etcd_client import (
    Compare,
    Delete,
    EtcdClient,
    EtcdEndpoint,
    Get,
    KeyValue,
    LeaseNotFound,
    Op,
    Put,
    RevisionCompacted,
    TxnResult,
    WatchBatch,
)
from agent.store.ipam import (
    DepartureClock,
    HostBlocks,
    PendingFlush,
    block_of,
    check_chosen,
    choose_free_block,
    record_in_block,
)
from agent.store.network_view import KeyChange, NetworkView, PolicyView, RecordView
from agent.store.schema import (
    BLOCKS,
    NODES,
    POLICIES,
    VNI_AUTO_FIRST,
    VNIS,
    Block,
    IPAddress,
    IPNetwork,
    MalformedRecord,
    Network,
    Node,
    Policy,
    block_cidr_from_key,
    block_key,
    blocks_prefix,
    check_block,
    decode_block,
    decode_network,
    decode_node,
    decode_policy,
    encode,
    network_key,
    node_key,
    policy_key,
    prefix_end,
    subnet_inner_range,
    subnet_key,
    subnet_outer_keys,
    vni_key,
)
from underlay.records import VNI_MAX

__all__ = [
    "AddressPool",
    "PoolStatistics",
    "Store",
    "StoreStatistics",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_MALFORMED_KEYS_REMEMBERED = 10_000
CREATE_ATTEMPTS = 8
"""Network create retries, only when an allocated VNI was taken by a concurrent create."""
COMMIT_ATTEMPTS = 16
"""Block claim/flush retries after a compare failed (another host claimed the candidate)."""
DELETE_ATTEMPTS = 8


@dataclass(frozen=True)
class StoreStatistics:
    degraded: bool
    round_trips: int
    failed_calls: int
    malformed_records: int
    """Distinct keys under our prefix that did not decode (each logged once)."""
    rejected_values: int
    """Keys whose current value is refused now (bad JSON, or fails validation): networks keep
    their last good copy (policies too), blocks are left alone. Zero when etcd holds only good
    values."""
    watch_relists: int
    """Full re-lists because etcd had compacted past a watch's revision (networks, policies)."""
    watch_resumes: int
    """Watches (networks, policies) re-opened from their last revision after etcd went away."""
    watch_revision: int
    """The network watch's."""
    node_registered: bool
    node_lease_refreshes: int
    last_error: str
    member: str = ""
    """The URL of the etcd member calls go to first."""
    members_down: int = 0
    """Configured members currently avoided (not answering, or without a leader)."""
    failovers: int = 0
    """Times a member was left for another."""


@dataclass(frozen=True)
class PoolStatistics:
    network: str
    host: str
    blocks: int
    allocated: int
    free: int
    dirty_blocks: int
    claims: int
    flushes: int
    lost_blocks: int
    foreign: int = 0
    """Chosen addresses this host holds in other hosts' blocks."""
    lost_addresses: int = 0
    """Unflushed local allocations given up because another host recorded them first."""


@dataclass
class _Watch:
    """One watched prefix: its view, what waits on it, and how its watch fared."""

    what: str
    view: RecordView[Any]
    relists: int = 0
    resumes: int = 0
    broken: bool = False
    """The watch failed after a listing: the next batch etcd answers is a resume."""
    published_version: int = 0
    changed: trio.Event = dataclasses.field(default_factory=trio.Event)

    async def wait_changed(self, seen_version: int) -> int:
        while self.view.version == seen_version:
            await self.changed.wait()
        return self.view.version


class Store:
    """Async access to etcd for one agent. Build with `Store.connect(host, port, rng=...)`."""

    def __init__(
        self,
        client: EtcdClient,
        *,
        rng: random.Random,
        backoff_initial: float = 0.1,
        backoff_max: float = 5.0,
    ) -> None:
        self.client = client
        self.rng = rng
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.network_view = NetworkView()
        self.policy_view = PolicyView()
        self._network_watch = _Watch("network", self.network_view)
        self._policy_watch = _Watch("policy", self.policy_view)
        self._degraded = False
        self._degraded_event = trio.Event()
        self._failed_calls = 0
        self._last_error = ""
        self._malformed_keys: set[str] = set()
        self._node_registered = False
        self._node_record: Node | None = None  # the record run_node_registration keeps
        self._node_lease: int | None = None
        self._lease_refreshes = 0
        self._rejected_blocks: set[str] = set()

    @classmethod
    def connect(
        cls, host: str, port: int, *, rng: random.Random, timeout: float = 2.0, **kwargs: Any
    ) -> Store:
        """A store on one plain etcd member at host:port; connecting is lazy (never blocks).

        The agent builds its store from the [store] configuration (`agent.store.connect`).
        """
        return cls(EtcdClient([EtcdEndpoint(host, port)], timeout=timeout), rng=rng, **kwargs)

    def close(self) -> None:
        self.client.close()

    def statistics(self) -> StoreStatistics:
        return StoreStatistics(
            degraded=self._degraded,
            round_trips=self.client.round_trips,
            failed_calls=self._failed_calls,
            malformed_records=len(self._malformed_keys),
            rejected_values=len(self.network_view.rejected) + len(self.policy_view.rejected)
            + len(self._rejected_blocks),
            watch_relists=self._network_watch.relists + self._policy_watch.relists,
            watch_resumes=self._network_watch.resumes + self._policy_watch.resumes,
            watch_revision=self.network_view.revision,
            node_registered=self._node_registered,
            node_lease_refreshes=self._lease_refreshes,
            last_error=self._last_error,
            member=self.client.current_member().url,
            members_down=len(self.client.down_members()),
            failovers=self.client.failovers,
        )

    def new_backoff(self) -> Backoff:
        return Backoff(self.rng, self.backoff_initial, self.backoff_max)

    # -- calling etcd ------------------------------------------------------------------------

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run one blocking client call in a worker thread; track degraded/healthy."""
        try:
            result = await trio.to_thread.run_sync(fn, *args, abandon_on_cancel=True)
        except StoreUnavailable as exc:
            self._mark_unavailable(exc)
            raise
        self._mark_available()
        return result

    async def txn(
        self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult:
        return await self.call(self.client.txn, compares, success, failure)

    def _mark_unavailable(self, exc: StoreError) -> None:
        self._failed_calls += 1
        self._last_error = str(exc)
        if not self._degraded:
            log.warning("etcd store degraded: %s", exc)
            self._degraded = True
            self._degraded_event.set()

    def _mark_available(self) -> None:
        if self._degraded:
            log.info("etcd store back in service")
            self._degraded = False
            self._degraded_event = trio.Event()

    def note_malformed(self, exc: MalformedRecord) -> None:
        """Skip a malformed record: log it the first time its key is seen, count the key."""
        if exc.key in self._malformed_keys:
            return
        if len(self._malformed_keys) < MAX_MALFORMED_KEYS_REMEMBERED:
            self._malformed_keys.add(exc.key)
        log.warning("skipping malformed etcd record %s", exc)

    def _decoded(self, kvs: Iterable[KeyValue], decode: Callable[[str, bytes], T]) -> list[T]:
        records: list[T] = []
        for kv in kvs:
            try:
                records.append(decode(kv.key, kv.value))
            except MalformedRecord as exc:
                self.note_malformed(exc)
        return records

    async def run_health_probe(
        self,
        *,
        member_interval: float = 1.0,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """While degraded, probe etcd with backoff until it answers (then the store is healthy);
        every `member_interval` s, ask the members left by failover whether they are back (no
        call while every member is in use; with one member there is none to fail over to, so
        only degradation wakes this loop)."""
        task_status.started()
        interval = member_interval if len(self.client.endpoints) > 1 else math.inf
        while True:
            with trio.move_on_after(interval):
                await self._degraded_event.wait()
            if self.client.down_members() and not self._degraded:
                await trio.to_thread.run_sync(self.client.probe_down_members,
                                              abandon_on_cancel=True)
            backoff = self.new_backoff()
            while self._degraded:
                await trio.sleep(backoff.next_delay())
                try:
                    await self.call(self.client.status)
                except StoreError:
                    continue

    # -- networks ----------------------------------------------------------------------------

    async def create_network(self, network: Network) -> Network:
        """Store a validated network (vni 0: allocate one); refuses name/VNI/subnet clashes.

        The name, the VNI guard and every subnet guard are compared and written in one
        transaction; on a clash the same transaction reads who holds what, so the error names
        the holder.
        """
        for _ in range(CREATE_ATTEMPTS):
            candidate = network
            if network.vni == 0:
                candidate = dataclasses.replace(network, vni=await self._free_vni())
            name = candidate.name
            compares = [
                Compare(network_key(name), "create", "=", 0),
                Compare(vni_key(candidate.vni), "create", "=", 0),
            ]
            success: list[Op] = [
                Put(network_key(name), encode(candidate)),
                Put(vni_key(candidate.vni), name.encode()),
            ]
            failure: list[Op] = [Get(network_key(name)), Get(vni_key(candidate.vni))]
            for subnet in _subnets_of(candidate):
                inner_start, inner_end = subnet_inner_range(subnet)
                outer = subnet_outer_keys(subnet)
                compares += [Compare(inner_start, "create", "=", 0, range_end=inner_end),
                             *(Compare(key, "create", "=", 0) for key in outer)]
                success.append(Put(subnet_key(subnet), name.encode()))
                failure += [Get(inner_start, inner_end), *(Get(key) for key in outer)]
            result = await self.txn(compares, success, failure)
            if result.succeeded:
                return candidate
            name_kvs = result.ranges[0]
            if name_kvs and name_kvs[0].value == encode(candidate):
                return candidate  # our own write: a failover retried it after a lost reply
            conflict = _conflict(candidate, result.ranges)
            if conflict.field == "vni" and network.vni == 0:
                continue  # a concurrent create took the VNI we picked: pick again
            raise conflict
        raise StoreError(f"network {network.name}: no free VNI after {CREATE_ATTEMPTS} attempts")

    async def _free_vni(self) -> int:
        kvs, _ = await self.call(self.client.range, VNIS, prefix_end(VNIS), True)
        used = set()
        for kv in kvs:
            suffix = kv.key[len(VNIS) :]
            if suffix.isdigit():
                used.add(int(suffix))
        for vni in itertools.chain(range(VNI_AUTO_FIRST, VNI_MAX + 1), range(1, VNI_AUTO_FIRST)):
            if vni not in used:
                return vni
        raise StoreError("every VNI is taken")

    async def _network_and_blocks(self, name: str) -> tuple[KeyValue, list[KeyValue], int]:
        """The network's record, its blocks' records and the revision, in one round trip."""
        prefix = blocks_prefix(name)
        result = await self.txn([], [Get(network_key(name)), Get(prefix, prefix_end(prefix))])
        network_kvs, block_kvs = result.ranges
        if not network_kvs:
            raise NetworkNotFound(name)
        return network_kvs[0], block_kvs, result.revision

    async def delete_network(self, name: str, *, force: bool = False) -> None:
        """Delete a network, its guards and its blocks; refuses while it has endpoints.

        The transaction compares that the network and its blocks are exactly as read when the
        endpoints were counted, so an endpoint registered in between makes it retry.
        """
        for _ in range(DELETE_ATTEMPTS):
            network_kv, block_kvs, revision = await self._network_and_blocks(name)
            blocks = [block for _, block in self.blocks_with_keys(block_kvs)]
            # An endpoint with an IPv4 and an IPv6 address holds one handle in both pools.
            endpoints = len({h for b in blocks for h in b.allocations.values()})
            if endpoints and not force:
                raise NetworkInUse(name, endpoints)
            try:
                network: Network | None = decode_network(network_kv.key, network_kv.value)
            except MalformedRecord as exc:
                self.note_malformed(exc)
                network = None
            prefix = blocks_prefix(name)
            compares = [Compare(network_kv.key, "mod", "=", network_kv.mod_revision)]
            if not force:
                compares.append(Compare(prefix, "mod", "<", revision + 1, prefix_end(prefix)))
            ops: list[Op] = [Delete(network_kv.key), Delete(prefix, prefix_end(prefix))]
            if network is not None:
                ops += [Delete(vni_key(network.vni)),
                        *(Delete(subnet_key(subnet)) for subnet in _subnets_of(network))]
            result = await self.txn(compares, ops)
            if result.succeeded:
                return
        raise StoreError(f"network {name}: kept changing during delete; try again")

    # -- network policies --------------------------------------------------------------------

    async def create_policy(self, policy: Policy) -> Policy:
        """Store a validated policy; refused when its network does not exist (NetworkNotFound)
        or the name is taken (PolicyExists), decided in one transaction."""
        key = policy_key(policy.name)
        result = await self.txn(
            [Compare(network_key(policy.network), "create", ">", 0),
             Compare(key, "create", "=", 0)],
            [Put(key, encode(policy))],
            [Get(network_key(policy.network), keys_only=True), Get(key)])
        if result.succeeded:
            return policy
        network_kvs, policy_kvs = result.ranges
        if not network_kvs:
            raise NetworkNotFound(policy.network)
        if policy_kvs and policy_kvs[0].value == encode(policy):
            return policy  # our own write: a failover retried it after a lost reply
        raise PolicyExists(policy.name)

    async def delete_policy(self, name: str) -> None:
        key = policy_key(name)
        result = await self.txn([Compare(key, "create", ">", 0)], [Delete(key)])
        if not result.succeeded:
            raise PolicyNotFound(name)

    async def list_policies(self) -> list[Policy]:
        """Every stored policy (malformed ones logged, counted and skipped)."""
        kvs, _ = await self.call(self.client.range, POLICIES, prefix_end(POLICIES))
        return self._decoded(kvs, decode_policy)

    # -- watches: networks and policies ----------------------------------------------------

    async def run_network_watch(
        self, *, task_status: trio.TaskStatus[NetworkView] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Keep `network_view` equal to etcd (see `_run_watch`)."""
        task_status.started(self.network_view)
        await self._run_watch(self._network_watch)

    async def run_policy_watch(
        self, *, task_status: trio.TaskStatus[PolicyView] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Keep `policy_view` equal to etcd (see `_run_watch`)."""
        task_status.started(self.policy_view)
        await self._run_watch(self._policy_watch)

    async def _run_watch(self, watch: _Watch) -> None:
        """List the prefix, then watch from the listed revision. A broken watch resumes from
        `revision + 1` (on another member when its member failed); when etcd compacted past
        it, re-list. Callers start it at once (with the view) so an agent starts while etcd is
        down; between changes it makes no round trip."""
        view = watch.view
        backoff = self.new_backoff()
        listed = view.revision > 0  # a restarted service resumes where the last one stopped
        while True:
            try:
                if not listed:
                    kvs, revision = await self.call(
                        self.client.range, view.prefix, prefix_end(view.prefix)
                    )
                    view.replace([(kv.key, kv.value) for kv in kvs], revision)
                    self._publish(watch)
                    listed = True
                    backoff.reset()
                await self._follow_watch(watch, backoff)
            except RevisionCompacted as exc:
                log.info("%s watch: %s; re-listing", watch.what, exc)
                watch.relists += 1
                listed = False
            except StoreUnavailable:
                watch.broken = listed
                await trio.sleep(backoff.next_delay())
            except StoreError as exc:
                log.warning("%s watch: %s; retrying", watch.what, exc)
                await trio.sleep(backoff.next_delay())

    async def _follow_watch(self, watch: _Watch, backoff: Backoff) -> None:
        prefix = watch.view.prefix
        stream = await trio.to_thread.run_sync(
            self.client.watch, prefix, prefix_end(prefix), watch.view.revision + 1
        )
        token = trio.lowlevel.current_trio_token()

        def apply(batch: WatchBatch) -> None:
            backoff.reset()
            self._mark_available()
            if watch.broken:  # etcd answered a watch re-opened at our revision
                watch.broken = False
                watch.resumes += 1
            watch.view.apply([KeyChange(k, v, r) for k, v, r in batch.changes])
            self._publish(watch)

        def pump() -> None:
            for batch in stream:
                try:
                    trio.from_thread.run_sync(apply, batch, trio_token=token)
                except (trio.RunFinishedError, trio.Cancelled):
                    return

        try:
            await trio.to_thread.run_sync(pump, abandon_on_cancel=True)
        except StoreUnavailable as exc:
            self._mark_unavailable(exc)
            raise
        finally:
            stream.cancel()

    def _publish(self, watch: _Watch) -> None:
        """Log and count malformed records the view met; wake waiters if it changed."""
        for exc in watch.view.malformed:
            self.note_malformed(exc)
        watch.view.malformed.clear()
        if watch.view.version != watch.published_version:
            watch.published_version = watch.view.version
            watch.changed.set()
            watch.changed = trio.Event()

    async def wait_networks_changed(self, seen_version: int) -> int:
        """Wait until the network view's version differs from `seen_version`; return it."""
        return await self._network_watch.wait_changed(seen_version)

    async def wait_policies_changed(self, seen_version: int) -> int:
        """Wait until the policy view's version differs from `seen_version`; return it."""
        return await self._policy_watch.wait_changed(seen_version)

    # -- node registry -----------------------------------------------------------------------

    async def register_node(self, node: Node, ttl: int) -> int:
        """Grant a lease of `ttl` seconds and put the node record under it; the lease id."""
        lease = await self.call(self.client.lease_grant, ttl)
        await self.txn([], [Put(node_key(node.name), encode(node), lease)])
        return lease

    async def update_node(self, node: Node) -> None:
        """Our node record changed (a WireGuard key rotation): `run_node_registration` keeps
        this one from now on, and it is written at once under the held lease (if none is held
        yet, the registration writes it). StoreError when etcd refuses."""
        self._node_record = node
        if self._node_lease is not None:
            await self.txn([], [Put(node_key(node.name), encode(node), self._node_lease)])

    async def list_nodes(self) -> list[Node]:
        kvs, _ = await self.call(self.client.range, NODES, prefix_end(NODES))
        return self._decoded(kvs, decode_node)

    async def public_keys(self) -> dict[str, bytes]:
        """Registered nodes' Ed25519 public keys (nodes that sign), by name: one range read."""
        return {n.name: n.public_key for n in await self.list_nodes() if n.public_key}

    async def gossip_seeds(self, *, exclude: str | None = None) -> list[tuple[str, int]]:
        """Gossip addresses of the registered nodes (but `exclude`), for joining."""
        return [n.gossip for n in await self.list_nodes() if n.name != exclude]

    async def run_node_registration(
        self,
        node: Node,
        *,
        ttl: int = 10,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Keep the node record alive: refresh its lease every ttl/3 s, re-register if lost.

        Started at once (etcd may be down). On cancellation the lease is revoked (graceful
        leave: the record disappears now rather than after the TTL), shielded, within 2 s.
        """
        task_status.started()
        backoff = self.new_backoff()
        lease: int | None = None
        self._node_record = node
        try:
            while True:
                try:
                    if lease is None:
                        lease = await self.register_node(self._node_record or node, ttl)
                        self._node_lease = lease
                        self._node_registered = True
                    if await self.call(self.client.lease_keepalive, lease) <= 0:
                        raise LeaseNotFound(f"lease {lease:x} expired")
                    self._lease_refreshes += 1
                    backoff.reset()
                    await trio.sleep(ttl / 3)
                except LeaseNotFound:
                    log.warning("node %s: lease lost, registering again", node.name)
                    lease = self._node_lease = None
                    self._node_registered = False
                except StoreUnavailable:
                    await trio.sleep(backoff.next_delay())
                except StoreError as exc:
                    log.warning("node %s: registration failed: %s; retrying", node.name, exc)
                    await trio.sleep(backoff.next_delay())
        finally:
            self._node_registered = False
            self._node_lease = None
            if lease is not None:
                with trio.move_on_after(2) as scope:
                    scope.shield = True
                    try:
                        await self.call(self.client.lease_revoke, lease)
                    except StoreError as exc:
                        log.warning("node %s: could not revoke lease: %s", node.name, exc)

    # -- IPAM --------------------------------------------------------------------------------

    async def open_address_pool(self, network_name: str, host: str, *,
                                version: int = 4) -> AddressPool:
        """The pool of `host` in a network, with the blocks etcd says it already holds;
        `version` 6: the pool of the network's IPv6 subnet (`Network.ipv6_view`)."""
        network_kv, block_kvs, _ = await self._network_and_blocks(network_name)
        network = decode_network(network_kv.key, network_kv.value)
        if version == 6:
            if network.subnet6 is None:
                raise InvalidAddress("ip6", network_name, "the network has no IPv6 subnet")
            network = network.ipv6_view()
        pool = AddressPool(self, network, network_kv.create_revision, host)
        pool.resync(block_kvs)
        return pool

    async def reclaim_host_blocks(self, host: str) -> int:
        """Free every block of a host that left for good (its node record is gone).

        One transaction: compares that the node is still unregistered and that each block is
        unchanged, then deletes them. Returns how many blocks were freed.
        """
        for _ in range(DELETE_ATTEMPTS):
            result = await self.txn([], [Get(node_key(host)), Get(BLOCKS, prefix_end(BLOCKS))])
            node_kvs, block_kvs = result.ranges
            if node_kvs:
                raise StoreError(f"host {host} is still registered; it has not left")
            mine = [kv for kv, b in self.blocks_with_keys(block_kvs) if b.host == host]
            if not mine:
                return 0
            compares = [Compare(node_key(host), "create", "=", 0)]
            compares += [Compare(kv.key, "mod", "=", kv.mod_revision) for kv in mine]
            done = await self.txn(compares, [Delete(kv.key) for kv in mine])
            if done.succeeded:
                log.info("reclaimed %d blocks of departed host %s", len(mine), host)
                return len(mine)
        raise StoreError(f"host {host}: blocks kept changing during reclaim")

    async def run_block_reclaimer(
        self,
        *,
        grace: float = 3600.0,
        interval: float = 60.0,
        alive: Callable[[], Collection[str]] = tuple,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Reclaim the blocks of hosts gone for longer than `grace` seconds: unregistered AND
        not in `alive()` (the hosts gossip sees alive) at every pass meanwhile.

        Every agent may run it: the reclaim transaction compares every block it deletes, so
        concurrent reclaimers free each block once. An etcd outage only delays it.
        """
        task_status.started()
        clock = DepartureClock(grace)
        while True:
            try:
                result = await self.txn(
                    [], [Get(NODES, prefix_end(NODES)), Get(BLOCKS, prefix_end(BLOCKS))]
                )
                node_kvs, block_kvs = result.ranges
                registered = {node.name for node in self._decoded(node_kvs, decode_node)}
                # A node record that does not decode still says "registered".
                registered |= {kv.key[len(NODES) :] for kv in node_kvs}
                holders = {block.host for _, block in self.blocks_with_keys(block_kvs)}
                now = trio.current_time()
                for host in clock.observe(holders, registered, now, set(alive())):
                    await self.reclaim_host_blocks(host)
                    clock.forget(host)
            except StoreError as exc:
                log.info("block reclaimer: %s; next pass in %.0f s", exc, interval)
            await trio.sleep(interval)

    def blocks_with_keys(
        self, kvs: Iterable[KeyValue], network: Network | None = None
    ) -> list[tuple[KeyValue, Block]]:
        """The blocks that decode (and, given their `network`, fit it: block size, inside the
        subnet); the others are skipped, logged once and counted as rejected."""
        pairs = []
        for kv in kvs:
            if network is not None and _other_family(kv.key, network):
                continue  # the other address family's pool of the network holds it
            try:
                block = decode_block(kv.key, kv.value)
                if network is not None:
                    check_block(block, network, kv.key)
            except MalformedRecord as exc:
                self.note_malformed(exc)
                self._rejected_blocks.add(kv.key)
                continue
            self._rejected_blocks.discard(kv.key)
            pairs.append((kv, block))
        return pairs


def _other_family(key: str, network: Network) -> bool:
    """Whether block `key` names a block of the other address family than `network`'s subnet
    (a dual-stack network keeps both pools' blocks under one prefix)."""
    cidr = block_cidr_from_key(key)
    return cidr is not None and cidr.version != network.subnet.version


def _subnets_of(network: Network) -> tuple[IPNetwork, ...]:
    """The subnets a network holds a guard for: its subnet, and its subnet6 if any."""
    return (network.subnet,) if network.subnet6 is None else (network.subnet, network.subnet6)


def _conflict(network: Network, ranges: list[list[KeyValue]]) -> NetworkConflict:
    name_kvs, vni_kvs, *guards = ranges
    if name_kvs:
        return NetworkConflict("name", network.name, network.name)
    if vni_kvs:
        return NetworkConflict("vni", network.vni, vni_kvs[0].value.decode(errors="replace"))
    for subnet in _subnets_of(network):  # each subnet's inner range, then its outer keys
        count = 1 + len(subnet_outer_keys(subnet))
        mine, guards = guards[:count], guards[count:]
        for kvs in mine:
            if kvs:
                holder = kvs[0].value.decode(errors="replace")
                field = "subnet" if subnet == network.subnet else "subnet6"
                return NetworkConflict(field, str(subnet), holder)
    return NetworkConflict("name", network.name, "(a concurrent change)")


class AddressPool:
    """Addresses of one host in one network, handed out from the blocks it holds.

    `allocate` is local while a held block has room; only a claim (a new block) waits for etcd.
    Changes are written back by `flush()` (one transaction for every dirty block), which
    `run_flusher` calls periodically; it also claims the next block ahead of need.
    """

    def __init__(self, store: Store, network: Network, network_revision: int, host: str) -> None:
        self.store = store
        self.network = network
        self.host = host
        self._network_revision = network_revision
        self._blocks = HostBlocks(network, host)
        self._taken: set[IPNetwork] = set()
        self._unsure_claim: IPNetwork | None = None
        self._lock = trio.Lock()
        self._dirty = trio.Event()
        self._claims = 0
        self._flushes = 0
        self._lost_blocks = 0
        self._lost_addresses = 0
        self._foreign: dict[IPAddress, tuple[IPNetwork, str]] = {}
        self._foreign_releases: set[IPAddress] = set()

    def statistics(self) -> PoolStatistics:
        return PoolStatistics(
            network=self.network.name,
            host=self.host,
            blocks=len(self._blocks.blocks),
            allocated=self._blocks.allocated_count(),
            free=self._blocks.free_count(),
            dirty_blocks=sum(1 for b in self._blocks.blocks.values() if b.dirty),
            claims=self._claims,
            flushes=self._flushes,
            lost_blocks=self._lost_blocks,
            foreign=len(self._foreign),
            lost_addresses=self._lost_addresses,
        )

    def allocations(self) -> dict[str, IPAddress]:
        foreign = {handle: address for address, (_, handle) in self._foreign.items()}
        return {**self._blocks.handles, **foreign}

    def allocate_nowait(self, handle: str) -> IPAddress | None:
        """An address from held blocks, or None when they are full (no etcd call)."""
        address = self._blocks.allocate(handle)
        if address is not None:
            self._dirty.set()
        return address

    async def allocate(self, handle: str) -> IPAddress:
        """An address for `handle` (the same one again for a known handle).

        Claims a block when the held ones are full; that needs etcd (`StoreUnavailable`
        otherwise), and `AddressExhausted` when the subnet has no free block left.
        """
        address = self.allocate_nowait(handle)
        if address is not None:
            return address
        async with self._lock:
            while (address := self.allocate_nowait(handle)) is None:
                await self._commit(claim=True)
        return address

    async def confirm(self, handle: str) -> IPAddress:
        """Flush now and return `handle`'s address as etcd holds it.

        Another host may have recorded a chosen address in one of our blocks that we handed
        out locally before re-reading the block; then `handle` gets the next free address
        (bounded retries). etcd away: `StoreUnavailable` (the local address stays in use).
        """
        for _ in range(COMMIT_ATTEMPTS):
            await self.flush()
            address = self.allocations().get(handle)
            if address is not None:
                return address
            await self.allocate(handle)
        raise StoreError(f"network {self.network.name}: {handle} kept losing its address")

    async def allocate_address(self, handle: str, chosen: str | IPAddress) -> IPAddress:
        """Allocate the chosen address to `handle` (the same address again is a no-op).

        `InvalidAddress` (outside the subnet, network/gateway/broadcast address) and
        `AddressTaken` (naming the holder) change nothing. In a held block the address is
        allocated locally and confirmed by a flush (kept if etcd is away); in a free block the
        block is claimed with it, in another host's block it is recorded there, each in one
        transaction (`StoreUnavailable` if etcd is away).
        """
        field_name = "ip" if self.network.subnet.version == 4 else "ip6"
        address = check_chosen(self.network, chosen, field_name)
        refreshed = False
        async with self._lock:
            for _ in range(COMMIT_ATTEMPTS):
                known = self.allocations().get(handle)
                if known is not None and known != address:
                    raise InvalidAddress(field_name, str(address),
                                         f"{handle} already holds {known}")
                foreign = self._foreign.get(address)
                if foreign is not None:
                    if foreign[1] != handle:
                        raise AddressTaken(address, foreign[1])
                    self._foreign_releases.discard(address)
                    return address
                try:
                    local = self._blocks.allocate_chosen(handle, address)
                except AddressTaken as exc:
                    if refreshed:
                        raise
                    refreshed = True  # its holder may have released it since we read the block
                    try:
                        await self._refresh_block(address)
                    except StoreUnavailable:
                        raise exc from None
                    continue
                if local is not None:
                    self._dirty.set()
                    try:
                        if self._blocks.pending_flushes():
                            await self._commit(claim=False)
                    except StoreUnavailable:
                        return address  # degraded: our block, our address; flushed later
                    if self._blocks.handles.get(handle) == address:
                        return address
                    raise AddressTaken(address, self._blocks.holder_of(address))
                if await self._claim_or_record(handle, address):
                    return address
        raise StoreError(f"network {self.network.name}: ip={str(chosen)!r} kept changing")

    async def _refresh_block(self, address: IPAddress) -> None:
        """Re-read the held block containing `address` (another host may have changed it)."""
        key = block_key(self.network.name, block_of(self.network, address))
        (block_kvs,) = (await self.store.txn([], [Get(key)])).ranges
        for kv, block in self.store.blocks_with_keys(block_kvs, self.network):
            if block.host == self.host:
                self._adopt(block, kv.mod_revision)

    async def _claim_or_record(self, handle: str, address: IPAddress) -> bool:
        """One transaction putting `address` in its block in etcd; False: re-read and retry."""
        cidr = block_of(self.network, address)
        net_key = network_key(self.network.name)
        key = block_key(self.network.name, cidr)
        result = await self.store.txn([], [Get(net_key), Get(key)])
        network_kvs, block_kvs = result.ranges
        if not network_kvs or network_kvs[0].create_revision != self._network_revision:
            raise NetworkNotFound(self.network.name)
        compares = [Compare(net_key, "create", "=", self._network_revision)]
        if not block_kvs:  # a free block: claim it with the address in it (Calico affinity)
            block = Block(self.network.name, cidr, self.host, {address: handle})
            compares.append(Compare(key, "create", "=", 0))
            done = await self.store.txn(compares, [Put(key, encode(block))])
            if done.succeeded:
                self._adopt(block, done.revision)
                self._taken.add(cidr)
                self._claims += 1
            return False  # allocate_chosen finds it in a held block now (or re-read)
        kv = block_kvs[0]
        readable = self.store.blocks_with_keys(block_kvs, self.network)
        if not readable:
            raise StoreError(f"block {cidr} of network {self.network.name} is unreadable")
        stored = readable[0][1]
        self._taken.add(cidr)
        if stored.host == self.host:  # ours in etcd (a claim whose reply was lost): adopt it
            self._adopt(stored, kv.mod_revision)
            return False
        updated = record_in_block(stored, address, handle)
        compares.append(Compare(key, "mod", "=", kv.mod_revision))
        done = await self.store.txn(compares, [Put(key, encode(updated))])
        if done.succeeded:
            self._foreign[address] = (cidr, handle)
        return done.succeeded

    def release(self, address: IPAddress) -> str:
        """Return an address (locally at once; etcd learns it at the next flush)."""
        foreign = self._foreign.get(address)
        if foreign is not None:  # in another host's block: removed there by the next flush
            self._foreign_releases.add(address)
            self._dirty.set()
            return foreign[1]
        handle = self._blocks.release(address)
        self._dirty.set()
        return handle

    async def flush(self) -> None:
        """Write every dirty block in one transaction (nothing to do: no round trip)."""
        async with self._lock:
            for address in sorted(self._foreign_releases):
                await self._release_foreign(address)
            if self._blocks.pending_flushes():
                await self._commit(claim=False)

    async def _release_foreign(self, address: IPAddress) -> None:
        """Remove our entry from another host's block (compared on its mod revision)."""
        cidr, handle = self._foreign[address]
        key = block_key(self.network.name, cidr)
        for _ in range(COMMIT_ATTEMPTS):
            (block_kvs,) = (await self.store.txn([], [Get(key)])).ranges
            stored = self.store.blocks_with_keys(block_kvs, self.network)
            if not stored or stored[0][1].allocations.get(address) != handle:
                break  # already gone (its block was reclaimed, or released before)
            kv, block = stored[0]
            left = {a: h for a, h in block.allocations.items() if a != address}
            kept = Block(block.network, block.cidr, block.host, left)
            done = await self.store.txn(
                [Compare(key, "mod", "=", kv.mod_revision)], [Put(key, encode(kept))]
            )
            if done.succeeded:
                break
        else:
            raise StoreError(f"block {cidr}: kept changing while releasing {address}")
        self._foreign.pop(address, None)
        self._foreign_releases.discard(address)

    def _adopt(self, block: Block, mod_revision: int) -> None:
        for handle in self._blocks.adopt(block, mod_revision):
            self._lost_addresses += 1
            log.error(
                "network %s: %s lost its unflushed address in %s to another host's chosen address",
                self.network.name,
                handle,
                block.cidr,
            )

    async def claim_block(self) -> None:
        """Claim one more block now (normally done by `allocate` or the flusher)."""
        async with self._lock:
            await self._commit(claim=True)

    async def run_flusher(
        self,
        *,
        interval: float = 0.2,
        low_water: int = 8,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Flush dirty blocks at most every `interval` s; claim ahead below `low_water` free."""
        task_status.started()
        backoff = self.store.new_backoff()
        while True:
            await self._dirty.wait()
            await trio.sleep(interval)
            self._dirty = trio.Event()
            try:
                await self.flush()
                if self._blocks.free_count() < low_water:
                    await self.claim_block()
                backoff.reset()
            except AddressExhausted:
                pass
            except NetworkNotFound:
                log.warning(
                    "network %s is gone; its address pool stops flushing", self.network.name
                )
                return
            except StoreError as exc:
                if not isinstance(exc, StoreUnavailable):
                    log.warning("network %s: flush failed: %s; retrying", self.network.name, exc)
                self._dirty.set()
                await trio.sleep(backoff.next_delay())

    async def _commit(self, *, claim: bool) -> None:
        """One transaction: every dirty block (compare-and-swap) and, if `claim`, a new block."""
        store = self.store
        net_key = network_key(self.network.name)
        prefix = blocks_prefix(self.network.name)
        for _ in range(COMMIT_ATTEMPTS):
            pending = self._blocks.pending_flushes()
            new = self._unsure_claim
            if new is None and claim:
                new = choose_free_block(self.network, self._taken, store.rng)
            compares = [Compare(net_key, "create", "=", self._network_revision)]
            success: list[Op] = []
            if new is not None:
                compares.append(Compare(block_key(self.network.name, new), "create", "=", 0))
                empty = Block(self.network.name, new, self.host, {})
                success.append(Put(block_key(self.network.name, new), encode(empty)))
            for flush in pending:
                key = block_key(self.network.name, flush.block.cidr)
                compares.append(Compare(key, "mod", "=", flush.expected_mod_revision))
                success.append(Put(key, encode(flush.block)))
            failure = [Get(net_key), Get(prefix, prefix_end(prefix))]
            try:
                result = await store.txn(compares, success, failure)
            except StoreUnavailable:
                # The claim may have committed with only its reply lost: claim the same block
                # again next time, so a committed claim is found (and adopted), never leaked.
                self._unsure_claim = new
                raise
            self._unsure_claim = None
            if result.succeeded:
                self._committed(pending, new, result.revision)
                return
            network_kvs, block_kvs = result.ranges
            if not network_kvs or network_kvs[0].create_revision != self._network_revision:
                raise NetworkNotFound(self.network.name)
            self.resync(block_kvs)
            if claim and self._blocks.free_count() > 0:
                claim = False  # a lost reply had already claimed a block for us: use it
                if not self._blocks.pending_flushes():
                    return
        raise StoreError(f"network {self.network.name}: no block claimed after {COMMIT_ATTEMPTS}")

    def _committed(self, pending: list[PendingFlush], new: IPNetwork | None, revision: int) -> None:
        self._blocks.flushed(pending, revision)
        if pending:
            self._flushes += 1
        if new is not None:
            self._blocks.adopt(Block(self.network.name, new, self.host, {}), revision)
            self._taken.add(new)
            self._claims += 1

    def resync(self, block_kvs: Iterable[KeyValue]) -> None:
        """Learn the network's blocks as etcd has them: who holds what, our revisions."""
        block_kvs = [kv for kv in block_kvs if not _other_family(kv.key, self.network)]
        readable = self.store.blocks_with_keys(block_kvs, self.network)
        stored = {block.cidr: (kv, block) for kv, block in readable}
        # A malformed record still occupies its key: never try to claim that block.
        self._taken = {c for c in (block_cidr_from_key(kv.key) for kv in block_kvs) if c}
        self._taken |= set(stored)
        by_key = {kv.key: kv for kv in block_kvs}
        unreadable = by_key.keys() - {kv.key for kv, _ in readable}
        for cidr in list(self._blocks.blocks):
            entry = stored.get(cidr)
            key = block_key(self.network.name, cidr)
            if entry is None and key in unreadable:
                # Our block, overwritten with garbage: keep our copy, write it back.
                log.error("network %s: our block %s is unreadable in etcd; writing our copy back",
                          self.network.name, cidr)
                self._blocks.repair(cidr, by_key[key].mod_revision)
                self._dirty.set()
                continue
            if entry is None or entry[1].host != self.host:
                lost = self._blocks.drop(cidr)
                self._lost_blocks += 1
                log.error(
                    "network %s: block %s is no longer held by %s; %d addresses lost",
                    self.network.name,
                    cidr,
                    self.host,
                    len(lost),
                )
        foreign: dict[IPAddress, tuple[IPNetwork, str]] = {}
        for kv, block in stored.values():
            if block.host == self.host:
                self._adopt(block, kv.mod_revision)
                continue
            for address, handle in block.allocations.items():
                known = self._foreign.get(address)
                if handle.startswith(f"{self.host}/") or (known and known[1] == handle):
                    foreign[address] = (block.cidr, handle)
        self._foreign = foreign
        self._foreign_releases &= set(foreign)
