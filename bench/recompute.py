"""Desired-state work on the trio loop: incremental (the agent's pipeline) versus the full
recompute it replaced, same run.

Usage: bench/recompute.py [--endpoints N] [--changes 1000] [--joins 20] [--seed 1] [--json]

A neighbor table (`overlay.table.NeighborTable`, the real one) holding N endpoints of 1,000
owners in 10 networks (each owner has endpoints in every network), the agent's pipeline
(`agent.runtime.pipeline.Pipeline` over `IncrementalDesired`) built from it, handing its
changes to a real `Reconciler` (whose apply pass, the kernel's part, is not run here). Timed on
the loop, each from the table's input to the reconciler holding the result:
- one endpoint change: an owner moves one endpoint to a new MAC (`table.merge` of the newer
  record, its event, the pipeline's settle and hand-over), `--changes` times;
- one owner failure: the table withdraws the owner's endpoints (N / 1,000 of them) and the
  pipeline is told the member is gone, `--changes` times (each owner fails, then returns
  untimed);
- one network join: a network of N / 10 endpoints becomes one this node takes part in
  (`--joins` times, leaving it again untimed): total time, and the longest slice the loop
  was held for (the pipeline works at most `SLICE_SECONDS` between two checkpoints);
- the start-up build (a resync of everything), total and longest hold of the loop, measured
  by a task that does nothing but checkpoint (what a gossip timer would wait);
- the baseline: the full recompute (`compute_desired` from a snapshot of the table and the
  members, then `Reconciler.set_desired`), as the agent did after every change, five times.

Targets at N = 100,000: change p99 <= 5 ms, owner failure p99 <= 20 ms; a gossip timer is
never held more than 10 ms. Prints a table; with --json the last line is one JSON object with
`endpoints`, `change_ms_p50`, `change_ms_p99`, `owner_fail_ms_p50`, `owner_fail_ms_p99`,
`join_ms_p50`, `join_ms_p99`, `join_hold_ms_max`, `build_ms`, `build_hold_ms_max`,
`loop_hold_ms_max` (the longest the loop went without a checkpoint in any of them) and
`full_recompute_ms` (median), all wall time on the loop, and each also as this thread's CPU
time (`..._cpu_ms...`: the same without preemption by other processes on a shared machine).
A trio instrument (`StepTimes`) also times every task step, from one checkpoint to the next
(exactly how long any other task, a gossip timer, waited behind it), and keeps the longest of
each phase with its minor page faults (fresh memory touched: a table growing):
`build_step_ms_max`, `change_step_ms_max`, `owner_fail_step_ms_max`, `join_step_ms_max`
(`..._step_cpu_ms_max`: the longest by CPU time, `..._step_faults`: that step's faults),
`step_ms_max` and `step_cpu_ms_max` over all four (target 10) and
`full_recompute_step_ms` (the baseline's one step).
A timer task runs beside all of it, due `TIMER_PERIOD_S` after each wake as a gossip timer
re-arms: how late each wake ran, by phase (`<phase>_timer_wakes`, `_timer_late_ms_p99`,
`_timer_late_ms_max`, `_timer_late_over_10ms`, `_timer_steps_behind_max`: the most other
task steps that ran between its deadline and its wake, `_timer_behind_cpu_ms_max`: the most
CPU such steps took before one wake: the delay without preemption) and over the incremental
phases (`timer_late_ms_max`, `timer_late_ms_p99`, `timer_late_over_10ms`,
`timer_steps_behind_max`, `timer_wakes`, `timer_behind_cpu_ms_max`; target: never later than
10 ms).

May import: the standard library, trio, overlay.*, agent.runtime.pipeline.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import trio  # noqa: E402

from agent.runtime.pipeline import SLICE_SECONDS, DesiredInputs, Pipeline  # noqa: E402
from overlay.desired import (  # noqa: E402
    AliveMember,
    EndpointEntry,
    NetworkSpec,
    UnderlayView,
    compute_desired,
)
from overlay.reconciler import Reconciler  # noqa: E402
from overlay.table import Entry, NeighborTable  # noqa: E402
from underlay.records import FdbRecord, LinkRecord, NeighborRecord, VxlanSpec, Write  # noqa: E402

OWNERS = 1000
TIMER_PERIOD_S = 0.001  # the timer beside the work wakes this long after its last wake
PHASES = ("build", "change", "owner_fail", "join")  # the incremental work, timed step by step
NETWORKS = 10
NODE = "bench-self"
UNDERLAY = UnderlayView("10.0.0.1", 1500)


class NotApplied:
    """The reconciler's kernel port in this bench: its apply pass (kernel work, measured by
    bench/netlink_rate.py) is never run here, so no method is ever called."""

    def _never(self) -> Any:
        raise RuntimeError("bench/recompute.py never runs an apply pass")

    async def dump_links(self) -> list[LinkRecord]:
        return self._never()

    async def dump_fdb(self) -> list[FdbRecord]:
        return self._never()

    async def dump_neighbors(self) -> list[NeighborRecord]:
        return self._never()

    async def send_writes(self, writes: list[Write]) -> list[int]:
        return self._never()

    async def ensure_bridge(self, name: str, mtu: int, mac: str, *addresses: str) -> int:
        return self._never()

    async def create_vxlan(self, spec: VxlanSpec) -> int:
        return self._never()

    async def tune_vxlan(self, index: int, spec: VxlanSpec) -> None:
        self._never()

    async def attach(self, name: str, master: str, mtu: int) -> None:
        self._never()

    async def delete_link(self, index: int) -> None:
        self._never()


def owner_name(o: int) -> str:
    return f"h{o:04d}"


def owner_vtep(o: int) -> str:
    return f"10.{1 + o // 250}.{o % 250}.2"


def mac_of(i: int, generation: int = 0) -> str:
    return f"02:{generation & 255:02x}:{(i >> 24) & 255:02x}:{(i >> 16) & 255:02x}:" \
           f"{(i >> 8) & 255:02x}:{i & 255:02x}"


def ip_of(i: int) -> str:
    return f"10.{100 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}"


class Fixture:
    """The table, the members and the small inputs the pipeline reads."""

    def __init__(self, endpoints: int) -> None:
        self.table = NeighborTable(NODE, UNDERLAY.address)
        self.now = 0.0
        self.networks = {f"net{k}": NetworkSpec(f"net{k}", 100 + k) for k in range(NETWORKS)}
        self.joined = set(self.networks)
        for name in self.networks:
            self.table.join_network(name, self.now)
        self.members = {owner_name(o): (owner_vtep(o), None) for o in range(OWNERS)}
        for o in range(OWNERS):
            self.table.member_alive(owner_name(o), (owner_vtep(o), 7946), self.now)
        self.versions: dict[int, int] = {}
        self.generation: dict[int, int] = {}
        for i in range(endpoints):
            self.write(i)
        while self.table.next_event() is not None:
            pass
        self.endpoints = endpoints

    def network_of(self, i: int) -> str:
        return f"net{(i // OWNERS) % NETWORKS}"

    def write(self, i: int) -> None:
        """Owner of endpoint `i` writes it (again, with a new MAC) and we merge it."""
        o = i % OWNERS
        version = self.versions.get(i, 0) + 1
        self.versions[i] = version
        generation = self.generation.get(i, 0)
        record = Entry(self.network_of(i), ip_of(i), mac_of(i, generation), owner_name(o),
                       owner_vtep(o), version, changed_at=1.0)
        self.table.merge(record, self.now)

    def inputs(self) -> DesiredInputs:
        return DesiredInputs(tuple(self.networks[n] for n in sorted(self.joined)), ())

    def drain(self, pipeline: Pipeline) -> None:
        while (event := self.table.next_event()) is not None:
            pipeline.table_changed(event)

    def full_recompute(self, reconciler: Reconciler) -> int:
        """What the agent did after every change before: snapshot, recompute, hand over."""
        endpoints = tuple(EndpointEntry(e.network, e.owner, e.mac, (e.ip,))
                          for e in self.table.endpoints())
        members = tuple(AliveMember(name, vtep) for name, (vtep, _) in self.members.items())
        state = compute_desired(self.inputs().networks, members, endpoints, (), UNDERLAY, NODE)
        reconciler.set_desired(state)
        return len(state.fdb)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Clocks:
    """Wall time and this thread's CPU time since `start()`: on a shared machine the wall
    time also holds whatever other processes took the core away (preemption); CPU time is
    the work itself."""

    def start(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.thread_time()

    def ms(self) -> tuple[float, float]:
        return ((time.perf_counter() - self.wall) * 1000, (time.thread_time() - self.cpu) * 1000)


@dataclass(frozen=True)
class Step:
    """One task step of the trio loop: how long it held the loop (wall and this thread's CPU
    ms) and the minor page faults taken in it (fresh memory touched, e.g. a table resized)."""

    wall_ms: float = 0.0
    cpu_ms: float = 0.0
    faults: int = 0
    task: str = ""


class StepTimes(trio.abc.Instrument):
    """A trio instrument timing every task step: the longest one of each phase (`phase` is
    set by the bench as it goes). A task step runs from one checkpoint to the next, so its
    duration is exactly how long every other task (a gossip timer) waited behind it."""

    def __init__(self) -> None:
        self.phase = "fill"
        self.longest: dict[str, Step] = {}  # by wall time
        self.longest_cpu: dict[str, Step] = {}  # by CPU time (without preemption)
        self._start: tuple[float, float, int] | None = None
        # The timer beside the work (`timer`): its task, its deadline (perf_counter seconds,
        # None while it runs) and the steps of other tasks that ran since that deadline.
        self.timer_task: trio.lowlevel.Task | None = None
        self.timer_due: float | None = None
        self.behind = 0
        self.behind_cpu_ms = 0.0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self._start = (time.perf_counter(), time.thread_time(),
                       resource.getrusage(resource.RUSAGE_THREAD).ru_minflt)

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if self._start is None:
            return  # the step that installed us: its start was not seen
        wall, cpu, faults = self._start
        self._start = None
        step = Step((time.perf_counter() - wall) * 1000, (time.thread_time() - cpu) * 1000,
                    resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - faults, task.name)
        if step.wall_ms > self.longest.get(self.phase, Step()).wall_ms:
            self.longest[self.phase] = step
        if step.cpu_ms > self.longest_cpu.get(self.phase, Step()).cpu_ms:
            self.longest_cpu[self.phase] = step
        if self.timer_due is not None and task is not self.timer_task \
                and time.perf_counter() > self.timer_due:
            self.behind += 1  # the timer is due and this step ran before it
            self.behind_cpu_ms += step.cpu_ms


@dataclass(frozen=True)
class Late:
    """One wake of the timer: how late it ran (wall ms), and the other task steps that ran
    after its deadline before it did (how many, and their CPU ms: the step in progress at the
    deadline counts whole)."""

    wall_ms: float
    steps: int
    steps_cpu_ms: float


async def timer(steps: StepTimes, late: dict[str, list[Late]], period: float) -> None:
    """A periodic timer beside the work, as the gossip core's probe and gossip timers run
    (a deadline `period` after its last wake): each wake's lateness, by phase."""
    steps.timer_task = trio.lowlevel.current_task()
    while True:
        steps.timer_due, steps.behind, steps.behind_cpu_ms = time.perf_counter() + period, 0, 0.0
        await trio.sleep(period)
        woke = time.perf_counter()
        late.setdefault(steps.phase, []).append(
            Late((woke - steps.timer_due) * 1000, steps.behind, steps.behind_cpu_ms))


async def held_loop(work: Callable[[], Any]) -> tuple[float, float, float, float]:
    """Run `await work()` beside a task that only checkpoints (as a gossip timer would wait):
    (total wall ms, total CPU ms, longest hold of the loop in wall ms, in CPU ms)."""
    longest_wall = longest_cpu = 0.0
    done = False

    async def checkpoints() -> None:
        nonlocal longest_wall, longest_cpu
        gap = Clocks()
        gap.start()
        while not done:
            await trio.sleep(0)
            wall, cpu = gap.ms()
            longest_wall, longest_cpu = max(longest_wall, wall), max(longest_cpu, cpu)
            gap.start()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(checkpoints)
        await trio.sleep(0)
        total = Clocks()
        total.start()
        await work()
        wall, cpu = total.ms()
        done = True
    return wall, cpu, longest_wall, longest_cpu


async def measure(endpoints: int, changes: int, joins: int, seed: int,
                  progress: Callable[[str], None]) -> dict[str, Any]:
    rng = random.Random(seed)
    progress(f"filling a table of {endpoints} endpoints ...")
    fixture = Fixture(endpoints)
    # Filled before any pipeline exists; in the agent the table fills through the pipeline,
    # which freezes long-lived objects as they grow (Pipeline._freeze_after_growth).
    gc.freeze()
    reconciler = Reconciler(NotApplied())
    pipeline = Pipeline(reconciler, fixture.inputs, node=NODE, underlay=UNDERLAY,
                        endpoints=fixture.table.endpoints,
                        members=lambda: dict(fixture.members))
    steps = StepTimes()
    trio.lowlevel.add_instrument(steps)
    late: dict[str, list[Late]] = {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(timer, steps, late, TIMER_PERIOD_S)
        result = await phases(fixture, pipeline, reconciler, steps, changes, joins, rng,
                              progress)
        nursery.cancel_scope.cancel()
    trio.lowlevel.remove_instrument(steps)
    return {**result, **timer_figures(late)}


def timer_figures(late: dict[str, list[Late]]) -> dict[str, Any]:
    """The timer's lateness by phase: wakes, p99 and max wall ms, wakes later than 10 ms,
    the most other task steps it waited behind and the most CPU ms they took (what the loop's
    other work delayed it by, without preemption by other processes)."""
    figures: dict[str, Any] = {}
    for phase in (*PHASES, "full_recompute"):
        wakes = late.get(phase, [])
        if not wakes:
            continue
        walls = [w.wall_ms for w in wakes]
        figures |= {f"{phase}_timer_wakes": len(wakes),
                    f"{phase}_timer_late_ms_p99": round(percentile(walls, 0.99), 3),
                    f"{phase}_timer_late_ms_max": round(max(walls), 3),
                    f"{phase}_timer_late_over_10ms": sum(1 for w in walls if w > 10.0),
                    f"{phase}_timer_steps_behind_max": max(w.steps for w in wakes),
                    f"{phase}_timer_behind_cpu_ms_max": round(max(w.steps_cpu_ms
                                                                  for w in wakes), 3)}
    incremental = [w for phase in PHASES for w in late.get(phase, [])]
    walls = [w.wall_ms for w in incremental]
    figures |= {"timer_period_ms": TIMER_PERIOD_S * 1000,
                "timer_wakes": len(incremental),
                "timer_late_ms_p99": round(percentile(walls, 0.99), 3) if walls else None,
                "timer_late_ms_max": round(max(walls), 3) if walls else None,
                "timer_late_over_10ms": sum(1 for w in walls if w > 10.0),
                "timer_steps_behind_max": max((w.steps for w in incremental), default=0),
                "timer_behind_cpu_ms_max": round(max((w.steps_cpu_ms for w in incremental),
                                                         default=0.0), 3)}
    return figures


async def phases(fixture: Fixture, pipeline: Pipeline, reconciler: Reconciler,
                 steps: StepTimes, changes: int, joins: int, rng: random.Random,
                 progress: Callable[[str], None]) -> dict[str, Any]:
    """The timed phases, one after the other (the timer runs beside them)."""
    endpoints = fixture.endpoints
    progress("start-up build ...")
    await trio.sleep(0)
    steps.phase = "build"
    build = await held_loop(pipeline.build)
    await trio.sleep(0)
    steps.phase = "untimed"  # the bench's own copy of the whole state
    fdb_entries = len(pipeline.desired.fdb)
    clocks = Clocks()

    progress(f"{changes} endpoint changes ...")
    await trio.sleep(0)
    steps.phase = "change"
    change_ms: list[tuple[float, float]] = []
    for _ in range(changes):
        i = rng.randrange(endpoints)
        fixture.generation[i] = fixture.generation.get(i, 0) + 1
        await trio.sleep(0)  # a task step ends here: the instrument times each change alone
        clocks.start()
        fixture.write(i)
        fixture.drain(pipeline)
        await pipeline.settle()
        change_ms.append(clocks.ms())

    progress(f"{changes} owner failures ...")
    await trio.sleep(0)
    steps.phase = "owner_fail"
    fail_ms: list[tuple[float, float]] = []
    for n in range(changes):
        o = n % OWNERS
        name = owner_name(o)
        fixture.now += 1.0
        await trio.sleep(0)
        clocks.start()
        fixture.table.member_failed(name, fixture.now)
        fixture.drain(pipeline)
        pipeline.member_changed(name, None)
        await pipeline.settle()
        fail_ms.append(clocks.ms())
        await trio.sleep(0)  # the owner's return below is untimed: its own task step
        steps.phase = "untimed"
        fixture.table.member_alive(name, (owner_vtep(o), 7946), fixture.now)  # back: untimed
        fixture.drain(pipeline)
        pipeline.member_changed(name, owner_vtep(o))
        await pipeline.settle()
        await trio.sleep(0)
        steps.phase = "owner_fail"

    progress(f"{joins} network joins ...")
    await trio.sleep(0)
    join_ms: list[tuple[float, float]] = []
    join_hold = (0.0, 0.0)
    for n in range(joins):
        name = f"net{n % NETWORKS}"
        steps.phase = "untimed"
        fixture.joined.discard(name)  # leave it (untimed) ...
        pipeline.mark_dirty()
        await pipeline.settle()
        await trio.sleep(0)
        steps.phase = "join"
        fixture.joined.add(name)  # ... and join it again
        pipeline.mark_dirty()
        wall, cpu, hold_wall, hold_cpu = await held_loop(pipeline.settle)
        join_ms.append((wall, cpu))
        join_hold = (max(join_hold[0], hold_wall), max(join_hold[1], hold_cpu))
    await trio.sleep(0)
    steps.phase = "untimed"
    assert len(pipeline.desired.fdb) == fdb_entries, "the incremental state drifted"

    progress("full recomputes ...")
    await trio.sleep(0)
    steps.phase = "full_recompute"
    full_ms: list[tuple[float, float]] = []
    for _ in range(5):
        await trio.sleep(0)
        clocks.start()
        full_fdb = fixture.full_recompute(reconciler)
        full_ms.append(clocks.ms())
    await trio.sleep(0)
    assert full_fdb == fdb_entries, (full_fdb, fdb_entries)

    def p50(rows: list[tuple[float, float]], column: int = 0) -> float:
        return statistics.median(row[column] for row in rows)

    def p99(rows: list[tuple[float, float]], column: int = 0) -> float:
        return percentile([row[column] for row in rows], 0.99)

    incremental = [steps.longest.get(phase, Step()) for phase in PHASES]
    incremental_cpu = [steps.longest_cpu.get(phase, Step()) for phase in PHASES]
    worst = max(incremental, key=lambda step: step.wall_ms)
    worst_cpu = max(incremental_cpu, key=lambda step: step.cpu_ms)
    return {
        "endpoints": endpoints,
        "owners": OWNERS,
        "networks": NETWORKS,
        "changes": changes,
        "joins": joins,
        "slice_ms": SLICE_SECONDS * 1000,
        "change_ms_p50": p50(change_ms),
        "change_ms_p99": p99(change_ms),
        "change_cpu_ms_p50": p50(change_ms, 1),
        "change_cpu_ms_p99": p99(change_ms, 1),
        "owner_fail_ms_p50": p50(fail_ms),
        "owner_fail_ms_p99": p99(fail_ms),
        "owner_fail_cpu_ms_p50": p50(fail_ms, 1),
        "owner_fail_cpu_ms_p99": p99(fail_ms, 1),
        "join_ms_p50": p50(join_ms),
        "join_ms_p99": p99(join_ms),
        "join_cpu_ms_p50": p50(join_ms, 1),
        "join_cpu_ms_p99": p99(join_ms, 1),
        "join_hold_ms_max": join_hold[0],
        "join_hold_cpu_ms_max": join_hold[1],
        "build_ms": build[0],
        "build_cpu_ms": build[1],
        "build_hold_ms_max": build[2],
        "build_hold_cpu_ms_max": build[3],
        # The longest the loop went without a checkpoint: the join and build holds, and a
        # change or owner failure as a whole (each shorter than a slice, so never split).
        "loop_hold_ms_max": max(join_hold[0], build[2], *(row[0] for row in change_ms),
                                *(row[0] for row in fail_ms)),
        "loop_hold_cpu_ms_max": max(join_hold[1], build[3], *(row[1] for row in change_ms),
                                    *(row[1] for row in fail_ms)),
        # The instrument's figures: the longest task step of each phase, and of them all.
        **{f"{phase}_step_ms_max": round(step.wall_ms, 3)
           for phase, step in zip(PHASES, incremental, strict=True)},
        **{f"{phase}_step_cpu_ms_max": round(step.cpu_ms, 3)
           for phase, step in zip(PHASES, incremental_cpu, strict=True)},
        **{f"{phase}_step_faults": step.faults
           for phase, step in zip(PHASES, incremental_cpu, strict=True)},
        "step_ms_max": round(worst.wall_ms, 3),
        "step_cpu_ms_max": round(worst_cpu.cpu_ms, 3),
        "full_recompute_step_ms": round(steps.longest.get("full_recompute", Step()).wall_ms, 3),
        "full_recompute_ms": p50(full_ms),
        "full_recompute_cpu_ms": p50(full_ms, 1),
        "full_recompute_ms_min": min(row[0] for row in full_ms),
        "full_recompute_ms_max": max(row[0] for row in full_ms),
    }


def table(result: dict[str, Any]) -> str:
    n = result["endpoints"]
    full = result["full_recompute_ms"]
    rows = [
        ("one endpoint change", "change", "<= 5"),
        (f"one owner failure ({n // OWNERS} endpoints)", "owner_fail", "<= 20"),
        (f"one network join ({n // NETWORKS} endpoints, total)", "join", ""),
    ]
    lines = [f"desired state on the loop: {n} endpoints, {OWNERS} owners, {NETWORKS} "
             f"networks; {result['changes']} changes, {result['joins']} joins; "
             f"slices of {result['slice_ms']:.0f} ms",
             f"{'what':42} {'p50 ms':>8} {'p99 ms':>8} {'target':>7} {'cpu p50':>8} "
             f"{'cpu p99':>8} {'full/p99':>9}"]
    for what, key, target in rows:
        lines.append(f"{what:42} {result[key + '_ms_p50']:8.3f} {result[key + '_ms_p99']:8.3f} "
                     f"{target:>7} {result[key + '_cpu_ms_p50']:8.3f} "
                     f"{result[key + '_cpu_ms_p99']:8.3f} "
                     f"{full / result[key + '_ms_p99']:8.0f}x")
    lines += [
        f"{'network join: longest hold of the loop':42} {result['join_hold_ms_max']:8.3f} "
        f"{'':8} {'<= 10':>7} {'':8} {result['join_hold_cpu_ms_max']:8.3f}",
        f"{'start-up build (resync), total':42} {result['build_ms']:8.1f} {'':8} {'':7} "
        f"{result['build_cpu_ms']:8.1f}",
        f"{'start-up build: longest hold of the loop':42} {result['build_hold_ms_max']:8.3f} "
        f"{'':8} {'<= 10':>7} {'':8} {result['build_hold_cpu_ms_max']:8.3f}",
        f"{'longest hold of the loop, any of the above':42} {result['loop_hold_ms_max']:8.3f} "
        f"{'':8} {'<= 10':>7} {'':8} {result['loop_hold_cpu_ms_max']:8.3f}",
        "longest task step (trio instrument): by wall ms; by CPU ms, with the minor page "
        "faults of that step",
        *(f"  {phase:40} {result[phase + '_step_ms_max']:8.3f} {'':8} {'<= 10':>7} "
          f"{'':8} {result[phase + '_step_cpu_ms_max']:8.3f}   "
          f"{result[phase + '_step_faults']} faults" for phase in PHASES),
        f"  {'any of them (step_ms_max)':40} {result['step_ms_max']:8.3f} {'':8} {'<= 10':>7} "
        f"{'':8} {result['step_cpu_ms_max']:8.3f}",
        f"  {'baseline: one full recompute':40} {result['full_recompute_step_ms']:8.3f}",
        f"a timer beside the work, due {result['timer_period_ms']:g} ms after each wake: how "
        "late it ran (wall ms), wakes later than 10 ms, most task steps it waited behind and "
        "most CPU ms they took",
        f"  {'phase':24} {'wakes':>7} {'p99 ms':>8} {'max ms':>8} {'>10 ms':>7} "
        f"{'steps':>7} {'their cpu':>9}",
        *(f"  {phase:24} {result[phase + '_timer_wakes']:7d} "
          f"{result[phase + '_timer_late_ms_p99']:8.3f} "
          f"{result[phase + '_timer_late_ms_max']:8.3f} "
          f"{result[phase + '_timer_late_over_10ms']:7d} "
          f"{result[phase + '_timer_steps_behind_max']:7d} "
          f"{result[phase + '_timer_behind_cpu_ms_max']:9.3f}"
          for phase in (*PHASES, "full_recompute") if phase + "_timer_wakes" in result),
        f"  {'incremental, all phases':24} {result['timer_wakes']:7d} "
        f"{result['timer_late_ms_p99'] or 0:8.3f} {result['timer_late_ms_max'] or 0:8.3f} "
        f"{result['timer_late_over_10ms']:7d} {result['timer_steps_behind_max']:7d} "
        f"{result['timer_behind_cpu_ms_max']:9.3f}",
        f"{'baseline: full recompute + hand-over':42} {full:8.1f} {'':8} {'':7} "
        f"{result['full_recompute_cpu_ms']:8.1f}   (wall min "
        f"{result['full_recompute_ms_min']:.1f}, max {result['full_recompute_ms_max']:.1f};"
        f" the agent ran one per change)",
        "wall: time on the loop; cpu: this thread's CPU time (the same minus preemption by "
        "other processes)",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoints", type=int, default=100_000)
    parser.add_argument("--changes", type=int, default=1000)
    parser.add_argument("--joins", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    args = parser.parse_args(argv)
    if args.endpoints < OWNERS * NETWORKS or args.changes < 1 or args.joins < 1:
        parser.error(f"--endpoints must be >= {OWNERS * NETWORKS}; --changes and --joins >= 1")

    def progress(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    result = trio.run(measure, args.endpoints, args.changes, args.joins, args.seed, progress)
    print(table(result))
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
