"""The data-plane reconciler: makes one namespace's kernel hold the desired VXLAN state.

Owns `Reconciler` (Calico Felix's vxlanfdb + deltatracker are the model) and the trio
service `run_dataplane`.

Rules:
- Handing over desired state touches only the desired side of the delta trackers and wakes
  the service; nothing touches the kernel outside `apply()`. `update_desired(changes)` (what
  `overlay.desired.IncrementalDesired` hands over) costs O(changes); `set_desired(state)`, a
  whole state, O(state). Devices are installed at the start of the next pass.
- `apply()`: (1) when a resync is flagged (at start, periodically, after a surprising
  failure) re-read links, FDB and neighbor entries from full kernel dumps and make that the
  kernel view; (2) bring devices to the desired shape (bridges, vxlan devices, bridge ports);
  A change of a network's local ports alone (an endpoint made or removed here) is not a
  device pass: only the new ports are attached (a port that went needs nothing), so an
  endpoint costs its own port, not a dump of every link and a look at every port;
  (3) write pending updates, then pending deletions, all in one ordered batch (neighbor
  entries before FDB entries, as flannel does, so the kernel never needs to ARP across the
  tunnel). A key whose write failed stays pending and is retried by the next apply; a bad
  entry never blocks the others.
- Every kind of entry (FDB, flood, neighbor) goes through one table of `EntryKind`s (its
  delta tracker, its desired values, its update and delete writes); devices are the pass's
  step (2), done one by one because they are not batched netlink writes.
- Waiting on a pass: `wait_applied()` returns when a pass that started after the call has
  finished; the `on_applied` hook sees every pass (metrics observe its duration). Nobody
  polls `statistics()` for that.
- Ownership: a device is ours when its name follows overlay.desired's scheme (`vxbr<VNI>`,
  `vxtun<VNI>`); an FDB entry is ours when it sits on one of our vxlan devices with NTF_SELF
  and NUD_PERMANENT; a neighbor entry when it sits on one of our vxlan devices with
  NUD_PERMANENT. Nothing else is ever changed or deleted.
- Never delete before the first full sync: the kernel view only fills from a dump.
- Restart: a new reconciler dumps what the previous run left and adopts it (nothing is
  flushed, an unchanged entry is not rewritten, so running traffic does not notice).
  A device of ours in the wrong shape (a crash mid-creation, a changed VNI/port) is deleted and
  re-created instead of failing with "file exists".
- Logging: the first failure of an apply plus the count (the same failure repeating is
  warned about once a minute); "back in sync" once after failures.

May import: trio, the standard library, overlay.*, underlay.* (via `KernelPort`).
"""

from __future__ import annotations

import errno as errno_codes
import logging
import time
from collections import Counter
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, Generic, Protocol, TypeVar

import trio

from overlay.delta import DeltaTracker
from overlay.desired import (
    DesiredChanges,
    DesiredNetwork,
    DesiredState,
    FdbKey,
    FloodKey,
    NeighborKey,
    owned_device,
)
from underlay.errors import KernelError, UnderlayError
from underlay.records import (
    NTF_MASTER,
    NTF_SELF,
    NUD_PERMANENT,
    ZERO_MAC,
    FdbRecord,
    FdbWrite,
    LinkRecord,
    NeighborRecord,
    NeighborWrite,
    VxlanSpec,
    Write,
    WriteAction,
    vxlan_matches,
)

log = logging.getLogger("vxmesh.dataplane")

#: Seconds between two warnings about the same repeating failure.
FAILURE_LOG_INTERVAL = 60.0

#: Failures worth a fresh look at the kernel: our belief about it was wrong.
_SURPRISES = {errno_codes.ENOENT, errno_codes.ENODEV, errno_codes.EEXIST, errno_codes.EINVAL}


class KernelPort(Protocol):
    """What the reconciler needs from a namespace's kernel (`underlay.netlink_ops.NetlinkKernel`
    in production, an in-memory fake in unit tests)."""

    async def dump_links(self) -> list[LinkRecord]: ...

    async def dump_fdb(self) -> list[FdbRecord]: ...

    async def dump_neighbors(self) -> list[NeighborRecord]: ...

    async def send_writes(self, writes: list[Write]) -> list[int]: ...

    async def ensure_bridge(self, name: str, mtu: int, mac: str, *addresses: str) -> int: ...

    async def create_vxlan(self, spec: VxlanSpec) -> int: ...

    async def tune_vxlan(self, index: int, spec: VxlanSpec) -> None: ...

    async def attach(self, name: str, master: str, mtu: int) -> None: ...

    async def delete_link(self, index: int) -> None: ...


@dataclass(frozen=True)
class ReconcilerStatistics:
    """Counters for metrics and status. Entry counts are what the kernel is believed to hold."""

    networks: int
    fdb_entries: int
    flood_entries: int
    neighbor_entries: int
    pending_updates: int
    pending_deletions: int
    ops_by_result: Mapping[str, int] = field(default_factory=dict)
    applies: int = 0
    resyncs: int = 0
    last_apply_seconds: float = 0.0
    last_resync_seconds: float = 0.0
    in_sync: bool = False


@dataclass(frozen=True)
class AppliedPass:
    """One finished apply pass, as `wait_applied()` and the `on_applied` hook report it."""

    number: int  # 1 for the first pass of this reconciler
    seconds: float  # how long the pass took
    in_sync: bool  # the kernel matched the desired state at its end


def _result_name(code: int) -> str:
    return "ok" if code == 0 else errno_codes.errorcode.get(code, str(code))


class _OnDevice(Hashable, Protocol):
    """A key of a kernel entry: which of our vxlan devices holds it."""

    @property
    def device(self) -> str: ...


KeyT = TypeVar("KeyT", bound=_OnDevice)
ValueT = TypeVar("ValueT")


@dataclass(frozen=True)
class EntryKind(Generic[KeyT, ValueT]):
    """One kind of kernel entry the reconciler keeps: its delta tracker, where its desired
    values come from, and how one update or one deletion is written."""

    name: str
    tracker: DeltaTracker[KeyT, ValueT]
    desired: Callable[[DesiredState], Mapping[KeyT, ValueT]]
    changes: Callable[[DesiredChanges], Mapping[KeyT, ValueT | None]]
    update: Callable[[int, KeyT, ValueT], Write]
    delete: Callable[[int, KeyT, ValueT], Write]


def _entry_kinds(fdb: DeltaTracker[FdbKey, str], flood: DeltaTracker[FloodKey, bool],
                 neighbors: DeltaTracker[NeighborKey, str]) -> tuple[EntryKind[Any, Any], ...]:
    """The table of entry kinds, in update order: neighbor entries before FDB entries
    (flannel's order: the kernel never needs to ARP across the tunnel), flood entries last.
    Deletions run in the reverse order."""
    neighbor_kind: EntryKind[NeighborKey, str] = EntryKind(
        "neighbor", neighbors, lambda state: state.neighbors, lambda changes: changes.neighbors,
        lambda index, key, mac: NeighborWrite(WriteAction.REPLACE, index, key.ip, mac),
        lambda index, key, _mac: NeighborWrite(WriteAction.DELETE, index, key.ip, None))
    fdb_kind: EntryKind[FdbKey, str] = EntryKind(
        "fdb", fdb, lambda state: state.fdb, lambda changes: changes.fdb,
        lambda index, key, dst: FdbWrite(WriteAction.REPLACE, index, key.mac, dst),
        lambda index, key, dst: FdbWrite(WriteAction.DELETE, index, key.mac, dst))
    flood_kind: EntryKind[FloodKey, bool] = EntryKind(
        "flood", flood, lambda state: dict.fromkeys(state.flood, True),
        lambda changes: changes.flood,
        lambda index, key, _on: FdbWrite(WriteAction.APPEND, index, ZERO_MAC, key.dst),
        lambda index, key, _on: FdbWrite(WriteAction.DELETE, index, ZERO_MAC, key.dst))
    return (neighbor_kind, fdb_kind, flood_kind)


def _added_ports(before: Mapping[str, DesiredNetwork], after: Mapping[str, DesiredNetwork]
                 ) -> list[tuple[DesiredNetwork, str]] | None:
    """The ports to attach when `after` differs from `before` in networks' ports alone (each
    with its network); None when anything else changed (a device pass is due)."""
    if before.keys() != after.keys():
        return None
    added: list[tuple[DesiredNetwork, str]] = []
    for name, network in after.items():
        old = before[name]
        if network == old:
            continue
        if replace(old, ports=network.ports) != network:
            return None
        added.extend((network, port) for port in sorted(network.ports - old.ports))
    return added


def _failure_code(exc: UnderlayError) -> int:
    """The errno a failed device operation is counted under (-1: none known)."""
    return exc.errno if isinstance(exc, KernelError) and exc.errno else -1


def _spec(network: DesiredNetwork, udp_csum: bool) -> VxlanSpec:
    return VxlanSpec(name=network.vxlan, vni=network.vni, port=network.port,
                     local=network.local, mtu=network.mtu, mac=network.vxlan_mac,
                     udp_csum=udp_csum)


class Reconciler:
    """Desired VXLAN state in, kernel writes out; see the module docstring for the rules."""

    def __init__(self, kernel: KernelPort, *,
                 clock: Callable[[], float] = time.perf_counter,
                 on_applied: Callable[[AppliedPass], None] | None = None,
                 udp_csum: bool = True) -> None:
        """`on_applied` is called (from trio, synchronously) after every pass. `udp_csum`:
        the vxlan devices send outer UDP checksums (`[dataplane] vxlan_udp_csum`)."""
        self.kernel = kernel
        self._udp_csum = udp_csum
        self._clock = clock
        self._on_applied = on_applied
        self._last_pass = AppliedPass(0, 0.0, False)
        self._applied = trio.Event()
        self._newest_networks: Mapping[str, DesiredNetwork] | None = None
        self._networks: Mapping[str, DesiredNetwork] = {}
        self._fdb: DeltaTracker[FdbKey, str] = DeltaTracker()
        self._flood: DeltaTracker[FloodKey, bool] = DeltaTracker()
        self._neighbors: DeltaTracker[NeighborKey, str] = DeltaTracker()
        self._kinds = _entry_kinds(self._fdb, self._flood, self._neighbors)
        self._ifindex: dict[str, int] = {}
        self._links: list[LinkRecord] | None = None
        self._resync_needed = True
        self._devices_dirty = True
        self._new_ports: list[tuple[DesiredNetwork, str]] = []
        self._ops: Counter[str] = Counter()
        self._applies = 0
        self._resyncs = 0
        self._last_apply = 0.0
        self._last_resync = 0.0
        self._in_sync = False
        self._failing = False
        self._last_failure = ""
        self._last_failure_logged = 0.0
        self._wakeup = trio.Event()
        self._applying = trio.Lock()

    # -- cheap, from the pipeline --------------------------------------------------------

    def set_desired(self, state: DesiredState) -> None:
        """Hand over a whole desired state (replaces any not yet applied). Call from trio.

        Not in sync from now until a pass has applied it (a pass running meanwhile still works
        on the previous state: what it leaves is not what is wanted now)."""
        self._newest_networks = state.networks
        for kind in self._kinds:
            kind.tracker.replace_desired(kind.desired(state))
        self._in_sync = False
        self._wakeup.set()

    def update_desired(self, changes: DesiredChanges) -> None:
        """Hand over what changed in desired state (value None: no longer desired)."""
        if changes.networks is not None:
            self._newest_networks = changes.networks
        for kind in self._kinds:
            tracker = kind.tracker
            for key, value in kind.changes(changes).items():
                if value is None:
                    tracker.delete_desired(key)
                else:
                    tracker.set_desired(key, value)
        if len(changes):
            self._in_sync = False  # until a pass has looked
            self._wakeup.set()

    def request_resync(self) -> None:
        """Re-read the kernel at the next apply (periodic repair of drift)."""
        self._resync_needed = True
        self._wakeup.set()

    async def wait_dirty(self) -> None:
        """Return when there is something to apply (new desired state or a resync)."""
        await self._wakeup.wait()

    def in_sync(self) -> bool:
        return self._in_sync

    async def wait_applied(self) -> AppliedPass:
        """Return when a pass that started after this call has finished; its report."""
        started_before = self._applies
        while self._last_pass.number <= started_before:
            await self._applied.wait()
        return self._last_pass

    def statistics(self) -> ReconcilerStatistics:
        return ReconcilerStatistics(
            networks=len(self._networks),
            fdb_entries=len(self._fdb.kernel()),
            flood_entries=len(self._flood.kernel()),
            neighbor_entries=len(self._neighbors.kernel()),
            pending_updates=sum(len(k.tracker.pending_updates()) for k in self._kinds),
            pending_deletions=sum(len(k.tracker.pending_deletions()) for k in self._kinds),
            ops_by_result=dict(self._ops),
            applies=self._applies,
            resyncs=self._resyncs,
            last_apply_seconds=self._last_apply,
            last_resync_seconds=self._last_resync,
            in_sync=self._in_sync,
        )

    # -- the apply pass ------------------------------------------------------------------

    async def apply(self) -> bool:
        """One reconciliation pass; returns True when the kernel now matches desired state.

        Passes never overlap: a second caller waits for the running one to finish.
        """
        async with self._applying:
            in_sync = await self._apply()
            self._last_pass = AppliedPass(self._applies, self._last_apply, in_sync)
            self._applied.set()
            self._applied = trio.Event()
            if self._on_applied is not None:
                self._on_applied(self._last_pass)
            return in_sync

    async def _apply(self) -> bool:
        started = self._clock()
        self._applies += 1
        self._wakeup = trio.Event()
        failures: list[str] = []
        total = 0
        networks, self._newest_networks = self._newest_networks, None
        if networks is not None and networks != self._networks:
            added = None if self._devices_dirty else _added_ports(self._networks, networks)
            if added is None:
                self._devices_dirty = True
            else:
                self._new_ports.extend(added)
            self._networks = dict(networks)
        try:
            if self._resync_needed:
                await self._resync()
            if self._devices_dirty:
                self._new_ports.clear()  # the device pass attaches every port
                total += await self._apply_devices(failures)
            elif self._new_ports:
                total += await self._attach_new_ports(failures)
            total += await self._apply_entries(failures)
        except (KernelError, UnderlayError, OSError) as exc:
            # A dump or a whole batch failed: keep everything dirty, look again next time.
            self._resync_needed = True
            failures.append(f"kernel access failed: {exc}")
            total += 1
        self._in_sync = (not failures and not self._resync_needed and not self._devices_dirty
                         and self._newest_networks is None
                         and all(k.tracker.in_sync() for k in self._kinds))
        self._last_apply = self._clock() - started
        if failures:
            # The same failure repeating (a retry every second) is logged once a minute.
            now = self._clock()
            repeated = (failures[0] == self._last_failure
                        and now - self._last_failure_logged < FAILURE_LOG_INTERVAL)
            log.log(logging.DEBUG if repeated else logging.WARNING,
                    "dataplane: %d of %d operations failed; first: %s",
                    len(failures), total, failures[0])
            if not repeated:
                self._last_failure, self._last_failure_logged = failures[0], now
            self._failing = True
        elif self._in_sync and self._failing:
            log.info("dataplane: back in sync")
            self._failing = False
            self._last_failure = ""
        return self._in_sync

    async def _resync(self) -> None:
        started = self._clock()
        links = await self.kernel.dump_links()
        fdb = await self.kernel.dump_fdb()
        neighbors = await self.kernel.dump_neighbors()
        ours = {
            link.index: link.name for link in links
            if link.kind == "vxlan" and (owned_device(link.name) or ("", 0))[0] == "vxlan"
        }
        found: dict[str, dict[Any, Any]] = {kind.name: {} for kind in self._kinds}
        for record in fdb:
            device = ours.get(record.ifindex)
            if (device is None or not record.flags & NTF_SELF or record.flags & NTF_MASTER
                    or not record.state & NUD_PERMANENT or record.dst is None):
                continue
            if record.mac == ZERO_MAC:
                found["flood"][FloodKey(device, record.dst)] = True
            else:
                found["fdb"][FdbKey(device, record.mac)] = record.dst
        for neighbor in neighbors:
            device = ours.get(neighbor.ifindex)
            if device is None or not neighbor.state & NUD_PERMANENT or neighbor.mac is None:
                continue
            found["neighbor"][NeighborKey(device, neighbor.ip)] = neighbor.mac
        for kind in self._kinds:
            kind.tracker.replace_kernel(found[kind.name])
        self._links = links
        self._ifindex = {name: index for index, name in ours.items()}
        self._resync_needed = False
        self._devices_dirty = True
        self._resyncs += 1
        self._last_resync = self._clock() - started

    def _forget_device(self, device: str) -> None:
        """Entries on `device` vanished with it (deleted or re-created)."""
        for kind in self._kinds:
            kind.tracker.forget_kernel([k for k in kind.tracker.kernel() if k.device == device])
        self._ifindex.pop(device, None)

    def _count(self, code: int) -> None:
        self._ops[_result_name(code)] += 1

    async def _apply_devices(self, failures: list[str]) -> int:
        links = self._links if self._links is not None else await self.kernel.dump_links()
        self._links = None  # ifindexes are read fresh on every device pass
        by_name = {link.name: link for link in links}
        bridges = {n.bridge for n in self._networks.values()}
        operations = 0
        failed_before = len(failures)
        # Our devices that are no longer wanted: vxlan devices first, then bridges.
        stale = [
            link for link in links
            if (owned := owned_device(link.name)) is not None
            and ((owned[0] == "vxlan" and link.name not in self._networks)
                 or (owned[0] == "bridge" and link.name not in bridges))
        ]
        stale.sort(key=lambda link: (owned_device(link.name) or ("", 0))[0] != "vxlan")
        for link in stale:
            operations += 1
            try:
                await self.kernel.delete_link(link.index)
                self._count(0)
                self._forget_device(link.name)
                del by_name[link.name]
            except (KernelError, UnderlayError) as exc:
                self._count(_failure_code(exc))
                failures.append(f"delete {link.name}: {exc}")
        for name in sorted(self._networks):
            network = self._networks[name]
            operations += 1
            try:
                await self._ensure_network(network, by_name)
                self._count(0)
            except (KernelError, UnderlayError) as exc:
                self._count(_failure_code(exc))
                failures.append(f"network {network.network} ({network.vxlan}): {exc}")
        self._devices_dirty = len(failures) > failed_before
        return operations

    async def _attach_new_ports(self, failures: list[str]) -> int:
        """Only ports joined a network: attach those. Any failure (a port already gone, the
        bridge missing) leaves it to a whole device pass, which looks at the kernel first."""
        ports, self._new_ports = self._new_ports, []
        for network, port in ports:
            try:
                await self.kernel.attach(port, network.bridge, network.mtu)
                self._count(0)
            except (KernelError, UnderlayError) as exc:
                code = _failure_code(exc)
                self._count(code)
                self._devices_dirty = True
                if code != errno_codes.ENODEV:
                    failures.append(f"attach {port} to {network.bridge}: {exc}")
        return len(ports)

    async def _ensure_network(self, network: DesiredNetwork,
                              by_name: dict[str, LinkRecord]) -> None:
        bridge = by_name.get(network.bridge)
        if bridge is not None and bridge.kind != "bridge":
            await self.kernel.delete_link(bridge.index)  # our name, wrong kind: an orphan
        await self.kernel.ensure_bridge(network.bridge, network.mtu, network.bridge_mac,
                                        *(a for a in (network.gateway, network.gateway6) if a))
        spec = _spec(network, self._udp_csum)
        vxlan = by_name.get(network.vxlan)
        if vxlan is not None and not vxlan_matches(vxlan, spec):
            await self.kernel.delete_link(vxlan.index)
            self._forget_device(network.vxlan)
            vxlan = None
        if vxlan is None:
            self._forget_device(network.vxlan)
            try:
                index = await self.kernel.create_vxlan(spec)
            except KernelError as exc:
                if exc.errno != errno_codes.EEXIST:
                    raise
                holders = [link.name for link in by_name.values()
                           if link.vxlan is not None and link.vxlan.vni == network.vni
                           and link.vxlan.port == network.port]
                raise KernelError(f"VNI {network.vni} port {network.port} is held by "
                                  f"{', '.join(holders) or 'another device'}, not ours",
                                  errno_codes.EEXIST) from exc
        else:
            index = vxlan.index
            found = vxlan.vxlan
            if (vxlan.mtu != spec.mtu or (vxlan.mac or "") != spec.mac
                    or found is None or found.learning != spec.learning):
                await self.kernel.tune_vxlan(index, spec)
        await self.kernel.attach(network.vxlan, network.bridge, network.mtu)
        for port in sorted(network.ports):
            if port in by_name:
                await self.kernel.attach(port, network.bridge, network.mtu)
        self._ifindex[network.vxlan] = index

    async def _apply_entries(self, failures: list[str]) -> int:
        """Every kind's pending updates (in table order), then its deletions (in reverse), as
        one ordered batch. A key whose device is not there yet waits; a deletion whose device
        is gone went with it."""
        writes: list[Write] = []
        done: list[Callable[[], None]] = []
        waiting = 0
        for kind in self._kinds:
            for key, value in list(kind.tracker.pending_updates().items()):
                if (index := self._ifindex.get(key.device)) is None:
                    waiting += 1
                    continue
                writes.append(kind.update(index, key, value))
                done.append(partial(kind.tracker.set_kernel, key, value))
        for kind in reversed(self._kinds):
            for key in kind.tracker.pending_deletions():
                if (index := self._ifindex.get(key.device)) is None:
                    kind.tracker.delete_kernel(key)
                    continue
                writes.append(kind.delete(index, key, kind.tracker.kernel()[key]))
                done.append(partial(kind.tracker.delete_kernel, key))
        if waiting:
            failures.append(f"{waiting} entries wait for their device")
        if not writes:
            return waiting
        results = await self.kernel.send_writes(writes)
        for write, code, commit in zip(writes, results, done, strict=True):
            self._count(code)
            if code == 0:
                commit()
                continue
            failures.append(f"{_describe(write)}: {errno_codes.errorcode.get(code, code)}")
            if code in _SURPRISES:
                self._resync_needed = True
        return len(writes) + waiting


def _describe(write: Write) -> str:
    if isinstance(write, FdbWrite):
        return f"fdb {write.action.value} {write.mac} dst {write.dst} dev #{write.ifindex}"
    return f"neighbor {write.action.value} {write.ip} lladdr {write.mac} dev #{write.ifindex}"


async def run_dataplane(reconciler: Reconciler, *, resync_interval: float = 90.0,
                        retry_interval: float = 1.0, min_interval: float = 0.05,
                        task_status: trio.TaskStatus[Reconciler] = trio.TASK_STATUS_IGNORED
                        ) -> None:
    """Keep the kernel in line with the reconciler's desired state until cancelled.

    Applies once (with a full resync) before reporting started; then applies whenever new
    desired state arrives (at most once per `min_interval`, so bursts coalesce), retries
    failures every `retry_interval` and re-reads the kernel every `resync_interval` seconds.
    """
    reconciler.request_resync()
    await reconciler.apply()
    task_status.started(reconciler)
    next_resync = trio.current_time() + resync_interval
    while True:
        wait = next_resync - trio.current_time()
        if not reconciler.in_sync():
            wait = min(wait, retry_interval)
        with trio.move_on_after(max(wait, 0.0)):
            await reconciler.wait_dirty()
        if trio.current_time() >= next_resync:
            reconciler.request_resync()
            next_resync = trio.current_time() + resync_interval
        await reconciler.apply()
        await trio.sleep(min_interval)
