"""The pipeline: changes in, desired-state changes out, to the reconciler.

Owns: the incremental desired state (`overlay.desired.IncrementalDesired`, pure) fed change by
change, and the hand-over of what changed to the reconciler (`Reconciler.update_desired`).
Inputs arrive as:
- `table_changed(event)`: every neighbor-table event (the gossip link's callback); an
  endpoint's change costs O(1) here and O(that endpoint) when settled;
- `member_changed(name, vtep | None, tunnel)`: a member's VTEP (and WireGuard tunnel address)
  as gossip decoded it, once per change (None: its endpoints are no longer reachable); costs
  O(that owner's endpoints);
- `mark_dirty()`: the small inputs (`DesiredInputs`: networks taken part in, local
  endpoints, our WireGuard tunnel address) changed; they are read whole at the next settle,
  and a network whose devices change costs O(that network's endpoints).
At start (before `run` reports started) desired state is built from full snapshots of the
table and the members (a resync: `IncrementalDesired.begin_resync`), fed in slices.

It also times endpoint propagation: from the owner's change (the wall-clock `changed_at` its
record carries) to the first apply pass after which this host's kernel holds it:
`wall_clock()` at that pass minus `changed_at`. Owner and this host have different clocks: a
value below zero is clock skew, which the `observe_propagation` callback receives as is
(`AgentMetrics.observe_propagation` clamps it to 0 and counts it). A record without
`changed_at` (an older peer) is timed on this host's monotonic clock from its arrival here.

Rules:
- The callbacks never block and never queue: a change marks endpoints dirty (a set), so a
  burst of a thousand events on one endpoint costs one settle of it. Gossip never waits on the
  kernel.
- Work on the trio loop is bounded: settling and the start-up feed run in slices of at most
  `slice_seconds` (checked every `STEP` endpoints) with two checkpoints between slices
  (`_between_slices`), so a gossip timer or packet that became due during a slice runs
  before the next slice: it waits for at most the one slice that was running; each slice's
  changes are handed over at once. A settle round runs at most once per
  `min_interval`; the reconciler throttles its own applies.

May import: trio, overlay (desired, reconciler, table), the standard library.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import trio

from overlay.desired import (
    DesiredNetwork,
    DesiredState,
    EndpointEntry,
    IncrementalDesired,
    LocalEndpoint,
    NetworkSpec,
    UnderlayAddressing,
)
from overlay.reconciler import Reconciler
from overlay.table import EndpointChanged, Entry, TableEvent

log = logging.getLogger(__name__)

#: Seconds of desired-state work between two checkpoints of the trio loop (gossip timers are
#: to be held up by at most 10 ms).
SLICE_SECONDS = 0.002
#: Endpoints settled (or fed at start) between two looks at the clock.
STEP = 32
#: Endpoints fed or settled between two freezes of long-lived objects (`gc.freeze`, O(1)).
FREEZE_EVERY = 1000


@dataclass(frozen=True)
class DesiredInputs:
    """The small inputs of desired state, read whole after `mark_dirty()` (the composition
    root supplies them: `agent.runtime.compose.desired_inputs`)."""

    networks: tuple[NetworkSpec, ...]
    local_endpoints: tuple[LocalEndpoint, ...]
    tunnel: str | None = None  # our WireGuard tunnel address while the interface is up


@dataclass(frozen=True)
class _Pending:
    """An endpoint waiting for the kernel: the owner's wall time, our monotonic arrival."""

    changed_at: float | None
    arrived: float


@dataclass(frozen=True)
class PipelineStatistics:
    """Counters of the pipeline (metrics and status read them)."""

    marks: int
    handovers: int  # slices whose changes went to the reconciler
    last_slice_seconds: float
    endpoints: int
    dirty: int
    problems: tuple[str, ...]
    pending_propagations: int
    propagations_observed: int


def endpoint_entry(entry: Entry) -> EndpointEntry:
    """A neighbor-table entry as desired state's input."""
    return EndpointEntry(entry.network, entry.owner, entry.mac, (entry.ip,))


class Pipeline:
    """Keeps desired state up to date change by change and hands the changes over."""

    def __init__(self, reconciler: Reconciler, inputs: Callable[[], DesiredInputs], *,
                 node: str, underlay: UnderlayAddressing,
                 endpoints: Callable[[], Iterable[Entry]],
                 members: Callable[[], Mapping[str, tuple[str, str | None]]],
                 observe_propagation: Callable[[float], None] = lambda seconds: None,
                 min_interval: float = 0.005, slice_seconds: float = SLICE_SECONDS,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:
        """`endpoints` and `members` give full snapshots (the table's visible entries; member
        name -> (VTEP, tunnel address or None)) for the build at start."""
        self.reconciler = reconciler
        self._inputs = inputs
        self._endpoints = endpoints
        self._members = members
        self._observe = observe_propagation
        self._min_interval = min_interval
        self._slice = slice_seconds
        self._clock = clock
        self._wall_clock = wall_clock
        self._node = node
        self._state: IncrementalDesired[tuple[str, str]] = IncrementalDesired(node, underlay)
        self._wake = trio.Event()
        self._inputs_dirty = True
        self._marks = 0
        self._handovers = 0
        self._last_slice = 0.0
        self._problems: tuple[str, ...] = ()
        self._problems_version = -1
        self._pending: dict[tuple[str, str], _Pending] = {}
        self._has_pending = trio.Event()
        self._observed = 0
        self._frozen_at = 0

    # -- from any component (cheap, never blocks) -----------------------------------------

    def mark_dirty(self) -> None:
        """The networks taken part in or the local endpoints changed; read them soon."""
        self._marks += 1
        self._inputs_dirty = True
        self._wake.set()

    def table_changed(self, event: TableEvent) -> None:
        """A neighbor-table event. A remote endpoint that moves a kernel entry is timed until
        the kernel has it (a newer change of a pending endpoint restarts its timing)."""
        if not isinstance(event, EndpointChanged):
            return  # which node takes part in which network: not an input of desired state
        key = (event.network, event.ip)
        current = event.current
        if current is None:
            self._state.remove_endpoint(key)
            self._pending.pop(key, None)
        else:
            self._state.put_endpoint(key, endpoint_entry(current))
            if current.owner != self._node and moves_kernel_entry(event):
                self._pending[key] = _Pending(current.changed_at, self._clock())
                self._has_pending.set()
        self._wake.set()

    def member_changed(self, name: str, vtep: str | None, tunnel: str | None = None) -> None:
        """Member `name` forwards to `vtep` now (None: its endpoints are unreachable), through
        its WireGuard `tunnel` address on encrypted networks."""
        self._state.set_member(name, vtep, tunnel)
        self._wake.set()

    @property
    def desired(self) -> DesiredState:
        """A copy of the current desired state (O(size): the fdb report)."""
        return self._state.state()

    def desired_networks(self) -> Mapping[str, DesiredNetwork]:
        """The devices desired now, by vxlan name (O(networks))."""
        return self._state.devices()

    def statistics(self) -> PipelineStatistics:
        state = self._state.statistics()
        return PipelineStatistics(
            marks=self._marks, handovers=self._handovers, last_slice_seconds=self._last_slice,
            endpoints=state.endpoints, dirty=state.dirty, problems=self._problems,
            pending_propagations=len(self._pending), propagations_observed=self._observed)

    # -- the service ----------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[Pipeline] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Build desired state from full snapshots, then settle changes until cancelled."""
        await self.build()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._time_propagation)
            task_status.started(self)
            while True:
                await self._wake.wait()
                await self.settle()
                await trio.sleep(self._min_interval)

    async def build(self) -> None:
        """Feed full snapshots (a resync: changes arriving meanwhile are newer), then settle.
        `run` does this first; call it directly only when not running the service."""
        state = self._state
        state.begin_resync()
        started = self._clock()
        for count, (name, (vtep, tunnel)) in enumerate(self._members().items(), 1):
            state.resync_member(name, vtep, tunnel)
            if count % STEP == 0 and self._clock() - started >= self._slice:
                await _between_slices()
                started = self._clock()
        for count, entry in enumerate(self._endpoints(), 1):
            state.resync_endpoint((entry.network, entry.ip), endpoint_entry(entry))
            if count % STEP == 0 and self._clock() - started >= self._slice:
                self._freeze_after_growth()
                await _between_slices()
                started = self._clock()
        state.end_resync()
        await self.settle()

    async def settle(self) -> None:
        """Settle every dirty endpoint, a slice at a time, handing each slice's changes over
        (`run` does this after every change; call it directly only when not running it)."""
        self._wake = trio.Event()
        state = self._state
        if self._inputs_dirty:
            self._inputs_dirty = False
            inputs = self._inputs()
            state.set_networks(inputs.networks)
            state.set_local_endpoints(inputs.local_endpoints)
            state.set_tunnel(inputs.tunnel)
        while True:
            started = self._clock()
            handed = False
            while True:
                remaining = state.step(STEP)
                changes = state.take_changes()
                if len(changes):
                    self.reconciler.update_desired(changes)
                    handed = True
                if not remaining or self._clock() - started >= self._slice:
                    break
            self._handovers += handed
            self._report_problems()
            self._freeze_after_growth()
            self._last_slice = self._clock() - started
            if not remaining:
                return
            await _between_slices()

    def _freeze_after_growth(self) -> None:
        """Move long-lived objects out of the cyclic collector's reach (`gc.freeze`) once
        FREEZE_EVERY endpoints were fed or settled since the last time: a full collection
        otherwise scans every object the table and desired state hold, holding the loop for
        about 100 ms at 20,000 endpoints. Frozen objects are still freed by reference counting
        (table records and claims hold no cycles)."""
        stats = self._state.statistics()
        work = stats.endpoints + stats.settled
        if work >= self._frozen_at + FREEZE_EVERY:
            gc.freeze()
            self._frozen_at = work

    def _report_problems(self) -> None:
        if self._state.problems_version == self._problems_version:
            return
        self._problems_version = self._state.problems_version
        problems = self._state.problems()
        for problem in set(problems) - set(self._problems):
            log.warning("desired state: %s", problem)
        self._problems = problems

    async def _time_propagation(self) -> None:
        """After each apply pass that leaves the kernel in sync, observe what was pending."""
        while True:
            if not self._pending:
                self._has_pending = trio.Event()
                await self._has_pending.wait()
            applied = await self.reconciler.wait_applied()  # only passes from now count
            if not self._pending or not applied.in_sync or self._wake.is_set() \
                    or self._state.dirty:
                continue
            now, wall = self._clock(), self._wall_clock()
            for pending in self._pending.values():
                if pending.changed_at is not None:
                    self._observe(wall - pending.changed_at)  # below 0: skew, see the docstring
                else:
                    self._observe(max(0.0, now - pending.arrived))
                self._observed += 1
            self._pending.clear()


async def _between_slices() -> None:
    """Let every task that became runnable during a slice run before the next slice.

    Trio runs the tasks made runnable in one pass of its loop as one batch, reversed half the
    time: a timer whose deadline passed during our slice (or a task a packet woke) lands in
    the same batch as our return from a single checkpoint and may come after it, waiting for
    the slice in progress and then the whole next one. The second checkpoint puts the next
    slice in the batch after: such a task waits for at most the slice that was running."""
    await trio.sleep(0)
    await trio.sleep(0)


def moves_kernel_entry(event: EndpointChanged) -> bool:
    """True if the change is one the kernel must apply: not merely a newer version of the same
    (owner, MAC, VTEP), as an owner's restart or refutation re-issues (nothing to time then)."""
    previous, current = event.previous, event.current
    return previous is None or current is None or \
        (previous.owner, previous.mac, previous.vtep) != (current.owner, current.mac, current.vtep)

