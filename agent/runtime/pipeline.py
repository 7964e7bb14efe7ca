"""The pipeline: changes in, newest desired state out, to the reconciler.

Owns: the dirty flag the other components raise (gossip membership events, neighbor-table
changes, store watch updates, local endpoint changes), the recompute of desired state
(`overlay.desired.compute_desired`, pure) and the hand-over to the reconciler
(`Reconciler.set_desired`, which keeps only the newest). It also times endpoint propagation:
from the owner's change (the wall-clock `changed_at` its record carries) to the first apply
pass after which this host's kernel holds it: `wall_clock()` at that pass minus `changed_at`.
Owner and this host have different clocks: a value below zero is clock skew, which the
`observe_propagation` callback receives as is (`AgentMetrics.observe_propagation` clamps it to
0 and counts it). A record without `changed_at` (an older peer) is timed on this host's
monotonic clock from its arrival here.

Rules:
- `mark_dirty()` never blocks and never queues: a burst of a thousand gossip events costs one
  recompute. Gossip therefore never waits on the kernel.
- The recompute runs at most once per `min_interval`; the reconciler throttles its own applies.
- Inputs are read at recompute time through `DesiredInputs` (a function the composition root
  supplies, `agent.runtime.compose.desired_inputs`), so the pipeline always sees one
  consistent, current snapshot.

May import: trio, overlay (desired, reconciler, table), the standard library.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import trio

from overlay.desired import (
    AliveMember,
    DesiredState,
    EndpointEntry,
    LocalEndpoint,
    NetworkSpec,
    UnderlayAddressing,
    compute_desired,
)
from overlay.reconciler import Reconciler
from overlay.table import EndpointChanged

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DesiredInputs:
    """One consistent snapshot of everything desired state is computed from."""

    networks: tuple[NetworkSpec, ...]
    members: tuple[AliveMember, ...]
    endpoints: tuple[EndpointEntry, ...]
    local_endpoints: tuple[LocalEndpoint, ...]
    underlay: UnderlayAddressing
    node: str
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
    recomputes: int
    last_compute_seconds: float
    problems: tuple[str, ...]
    pending_propagations: int
    propagations_observed: int


class Pipeline:
    """Recomputes desired state when something changed and hands it to the reconciler."""

    def __init__(self, reconciler: Reconciler, inputs: Callable[[], DesiredInputs], *,
                 observe_propagation: Callable[[float], None] = lambda seconds: None,
                 min_interval: float = 0.005,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.reconciler = reconciler
        self._inputs = inputs
        self._observe = observe_propagation
        self._min_interval = min_interval
        self._clock = clock
        self._wall_clock = wall_clock
        self._dirty = trio.Event()
        self._marks = 0
        self._recomputes = 0
        self._last_compute = 0.0
        self._problems: tuple[str, ...] = ()
        self._reported_problems: set[str] = set()
        self._pending: dict[tuple[str, str], _Pending] = {}
        self._has_pending = trio.Event()
        self._observed = 0
        self._newest: DesiredState | None = None
        self.computed = trio.Event()

    # -- from any component (cheap, never blocks) -----------------------------------------

    def mark_dirty(self) -> None:
        """Something desired state depends on changed; recompute soon."""
        self._marks += 1
        self._dirty.set()

    def endpoint_arrived(self, network: str, ip: str, changed_at: float | None = None) -> None:
        """An endpoint (network, ip) became visible here; time it until the kernel has it.

        `changed_at` is the owner's wall-clock time of the change (`Entry.changed_at`), if known.
        A newer change of a pending endpoint restarts its timing.
        """
        self._pending[(network, ip)] = _Pending(changed_at, self._clock())
        self._has_pending.set()
        self.mark_dirty()

    @property
    def desired(self) -> DesiredState | None:
        """The last desired state handed to the reconciler."""
        return self._newest

    def statistics(self) -> PipelineStatistics:
        return PipelineStatistics(
            marks=self._marks, recomputes=self._recomputes,
            last_compute_seconds=self._last_compute, problems=self._problems,
            pending_propagations=len(self._pending),
            propagations_observed=self._observed)

    # -- the service ----------------------------------------------------------------------

    def recompute(self) -> DesiredState:
        """Compute desired state from the current inputs and hand it over (synchronous)."""
        started = self._clock()
        snap = self._inputs()
        state = compute_desired(snap.networks, snap.members, snap.endpoints,
                                snap.local_endpoints, snap.underlay, snap.node, snap.tunnel)
        self._newest = state
        self.reconciler.set_desired(state)
        self._recomputes += 1
        self._last_compute = self._clock() - started
        self._problems = state.problems
        for problem in set(state.problems) - self._reported_problems:
            log.warning("desired state: %s", problem)
        self._reported_problems = set(state.problems)
        self.computed.set()
        self.computed = trio.Event()
        return state

    async def run(self, *, task_status: trio.TaskStatus[Pipeline] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Recompute on every mark (coalesced) until cancelled; first compute before started."""
        self.recompute()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._time_propagation)
            task_status.started(self)
            while True:
                await self._dirty.wait()
                self._dirty = trio.Event()
                self.recompute()
                await trio.sleep(self._min_interval)

    async def _time_propagation(self) -> None:
        """After each apply pass that leaves the kernel in sync, observe what was pending."""
        while True:
            if not self._pending:
                self._has_pending = trio.Event()
                await self._has_pending.wait()
            applied = await self.reconciler.wait_applied()  # only passes from now count
            if not self._pending or not applied.in_sync or self._dirty.is_set():
                continue
            now, wall = self._clock(), self._wall_clock()
            for pending in self._pending.values():
                if pending.changed_at is not None:
                    self._observe(wall - pending.changed_at)  # below 0: skew, see the docstring
                else:
                    self._observe(max(0.0, now - pending.arrived))
                self._observed += 1
            self._pending.clear()


def moves_kernel_entry(event: EndpointChanged) -> bool:
    """True if the change is one the kernel must apply: not merely a newer version of the same
    (owner, MAC, VTEP), as an owner's restart or refutation re-issues (nothing to time then)."""
    previous, current = event.previous, event.current
    return previous is None or current is None or \
        (previous.owner, previous.mac, previous.vtep) != (current.owner, current.mac, current.vtep)

