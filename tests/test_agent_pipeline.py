"""agent.runtime.pipeline: changes are settled in bounded slices and handed over as deltas,
bursts coalesce, members' changes reach their owners' endpoints, the start-up build reads full
snapshots, and propagation is timed from the owner's change until the reconciler's kernel
holds it and lands in the real metrics histogram (real Reconciler, in-memory kernel)."""

from __future__ import annotations

from dataclasses import replace

import trio
import trio.testing

from agent.runtime.metrics import AgentMetrics, MetricsSnapshot
from agent.runtime.pipeline import STEP, DesiredInputs, Pipeline, moves_kernel_entry
from overlay.desired import DesiredChanges, NetworkSpec, UnderlayView
from overlay.reconciler import Reconciler, run_dataplane
from overlay.table import EndpointChanged, Entry
from tests.dataplane.fake_kernel import FakeKernel
from tests.polling import wait_until

UNDERLAY = UnderlayView(address="10.0.0.1", mtu=1500)


class Inputs:
    """The small inputs, and the snapshots the start-up build reads."""

    def __init__(self) -> None:
        self.networks: tuple[NetworkSpec, ...] = (NetworkSpec("blue", 4097),)
        self.table: dict[tuple[str, str], Entry] = {}
        self.members: dict[str, tuple[str, str | None]] = {"h2": ("10.0.0.2", None),
                                                          "h3": ("10.0.0.3", None)}
        self.reads = 0

    def __call__(self) -> DesiredInputs:
        self.reads += 1
        return DesiredInputs(networks=self.networks, local_endpoints=())

    def pipeline(self, reconciler: Reconciler, **options: object) -> Pipeline:
        return Pipeline(reconciler, self, node="h1", underlay=UNDERLAY,
                        endpoints=lambda: list(self.table.values()),
                        members=lambda: dict(self.members), clock=trio.current_time,
                        **options)  # type: ignore[arg-type]

    def put(self, pipeline: Pipeline, entry: Entry) -> None:
        previous = self.table.get((entry.network, entry.ip))
        self.table[(entry.network, entry.ip)] = entry
        pipeline.table_changed(EndpointChanged(entry.network, entry.ip, previous, entry))


def entry(i: int, owner: str = "h2", *, mac: str | None = None,
          changed_at: float | None = None) -> Entry:
    vtep = {"h2": "10.0.0.2", "h3": "10.0.0.3"}[owner]
    return Entry("blue", f"10.1.{i // 256}.{i % 256}",
                 mac or f"02:42:0a:01:{i // 256:02x}:{i % 256:02x}", owner, vtep, i + 1,
                 changed_at=changed_at)


async def wait_settled(reconciler: Reconciler, pipeline: Pipeline) -> None:
    await wait_until(lambda: reconciler.in_sync() and pipeline.statistics().dirty == 0
                     and pipeline.statistics().pending_propagations == 0,
                     "the changes applied and timed", 5, interval=0.01)


async def test_burst_of_changes_is_settled_in_few_handovers_and_newest_wins(
        autojump_clock: trio.testing.MockClock) -> None:
    kernel = FakeKernel()
    reconciler = Reconciler(kernel, clock=trio.current_time)
    inputs = Inputs()
    observed: list[float] = []
    pipeline = inputs.pipeline(reconciler, observe_propagation=observed.append)
    async with trio.open_nursery() as nursery:
        await nursery.start(pipeline.run)
        await nursery.start(run_dataplane, reconciler)
        for i in range(1000):
            inputs.put(pipeline, entry(i))
            # one endpoint changing its MAC a thousand times: only the newest counts
            inputs.put(pipeline, entry(2000, mac=f"02:42:0a:02:{i // 256:02x}:{i % 256:02x}"))
        await wait_settled(reconciler, pipeline)
        stats = pipeline.statistics()
        assert stats.handovers <= 3  # the start-up build, then the coalesced burst
        assert stats.endpoints == 1001
        neighbors = pipeline.desired.neighbors
        assert len(neighbors) == 1001
        assert set(kernel.neighbors_of("vxtun4097")) == {k.ip for k in neighbors}
        assert kernel.neighbors_of("vxtun4097")["10.1.7.208"][0] == "02:42:0a:02:03:e7"
        assert len(observed) == 1001 and all(0 <= s < 1 for s in observed)
        nursery.cancel_scope.cancel()


async def test_settling_runs_in_slices_each_handed_over(
        autojump_clock: trio.testing.MockClock) -> None:
    """The loop is held for one slice at a time: with no time budget a slice is `STEP`
    endpoints, so 1,000 changes are settled (and handed over) in ceil(1000 / STEP) slices."""
    reconciler = Reconciler(FakeKernel(), clock=trio.current_time)
    inputs = Inputs()
    pipeline = inputs.pipeline(reconciler, slice_seconds=0.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(pipeline.run)
        await nursery.start(run_dataplane, reconciler)
        before = pipeline.statistics().handovers
        for i in range(1000):
            inputs.put(pipeline, entry(i))
        await wait_settled(reconciler, pipeline)
        assert pipeline.statistics().handovers - before == -(-1000 // STEP)
        assert len(pipeline.desired.fdb) == 1000
        nursery.cancel_scope.cancel()


async def test_a_task_woken_during_a_slice_runs_before_the_next_slice(
        autojump_clock: trio.testing.MockClock) -> None:
    """A task made runnable during a slice (a gossip timer falling due, a packet's receiver)
    runs before the next slice, whatever order trio runs its batch in: it waits for the slice
    in progress only, never for two."""
    log: list[str] = []
    woken = trio.Event()

    class Recording(Reconciler):
        def update_desired(self, changes: DesiredChanges) -> None:
            log.append("slice")
            woken.set()
            super().update_desired(changes)

    async def timer() -> None:
        nonlocal woken
        while True:
            await woken.wait()
            woken = trio.Event()
            log.append("timer")

    reconciler = Recording(FakeKernel(), clock=trio.current_time)
    inputs = Inputs()
    pipeline = inputs.pipeline(reconciler, slice_seconds=0.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(pipeline.run)
        await nursery.start(run_dataplane, reconciler)
        nursery.start_soon(timer)
        await trio.sleep(1)
        log.clear()
        for i in range(2000):
            inputs.put(pipeline, entry(i))
        await wait_settled(reconciler, pipeline)
        slices = log.count("slice")
        assert slices == -(-2000 // STEP)  # 63 slices: each would lose a coin toss before
        assert log == ["slice", "timer"] * slices
        nursery.cancel_scope.cancel()


async def test_start_up_build_reads_snapshots_and_members_move_only_their_endpoints(
        autojump_clock: trio.testing.MockClock) -> None:
    kernel = FakeKernel()
    reconciler = Reconciler(kernel, clock=trio.current_time)
    inputs = Inputs()
    for i in range(10):
        inputs.table[("blue", entry(i).ip)] = entry(i, "h2" if i % 2 else "h3")
    pipeline = inputs.pipeline(reconciler)
    async with trio.open_nursery() as nursery:
        await nursery.start(pipeline.run)
        await nursery.start(run_dataplane, reconciler)
        assert len(kernel.neighbors_of("vxtun4097")) == 10
        settled = pipeline.statistics().handovers
        pipeline.member_changed("h3", None)  # h3 failed: its five endpoints go
        await wait_settled(reconciler, pipeline)
        assert sorted(kernel.neighbors_of("vxtun4097")) == sorted(
            entry(i).ip for i in range(1, 10, 2))
        assert pipeline.statistics().handovers == settled + 1
        pipeline.member_changed("h3", "10.0.0.3")  # back
        await wait_settled(reconciler, pipeline)
        assert len(kernel.neighbors_of("vxtun4097")) == 10
        inputs.networks = ()  # we left the network: its devices and entries go
        pipeline.mark_dirty()
        await wait_until(lambda: "vxtun4097" not in {link.name for link in kernel.links.values()},
                         "the network's devices gone", 5, interval=0.01)
        await wait_settled(reconciler, pipeline)
        assert pipeline.desired.fdb == {}
        nursery.cancel_scope.cancel()


async def test_propagation_is_timed_from_the_owners_change_time(
        autojump_clock: trio.testing.MockClock) -> None:
    """The histogram gets `this host's wall clock when the kernel holds it - changed_at`; an
    owner clock ahead of ours is observed as 0 and counted; an unstamped record is timed from its
    arrival here."""
    kernel = FakeKernel()
    reconciler = Reconciler(kernel, clock=trio.current_time)
    inputs = Inputs()
    metrics = AgentMetrics(MetricsSnapshot)
    epoch = 1_700_000_000.0
    pipeline = inputs.pipeline(reconciler, observe_propagation=metrics.observe_propagation,
                               wall_clock=lambda: epoch + trio.current_time())

    def sample(name: str, **labels: str) -> float:
        value = metrics.registry.get_sample_value(name, labels)
        assert value is not None, name
        return value

    async def arrive(i: int, changed_at: float | None) -> None:
        inputs.put(pipeline, entry(i, changed_at=changed_at))
        await wait_settled(reconciler, pipeline)
        assert entry(i).ip in kernel.neighbors_of("vxtun4097")

    async with trio.open_nursery() as nursery:
        await nursery.start(pipeline.run)
        await nursery.start(run_dataplane, reconciler)
        # the owner changed it 2 s ago (its gossip took that long): ~2 s, not the ms since receipt
        started = epoch + trio.current_time()
        await arrive(2, started - 2.0)
        kernel_wall = epoch + trio.current_time()
        assert sample("vxmesh_endpoint_propagation_seconds_count") == 1
        total = sample("vxmesh_endpoint_propagation_seconds_sum")
        assert 2.0 <= total <= kernel_wall - started + 2.0
        assert sample("vxmesh_endpoint_propagation_seconds_bucket", le="1.0") == 0
        assert sample("vxmesh_endpoint_propagation_seconds_bucket", le="2.5") == 1
        assert sample("vxmesh_endpoint_propagation_clock_skew_total") == 0
        # the owner's clock runs 30 s ahead of ours: observed as 0 and counted as skew
        await arrive(3, epoch + trio.current_time() + 30.0)
        assert sample("vxmesh_endpoint_propagation_seconds_count") == 2
        assert sample("vxmesh_endpoint_propagation_seconds_sum") == total
        assert sample("vxmesh_endpoint_propagation_clock_skew_total") == 1
        # a record of an older peer (no change time): timed from its arrival on this host
        await arrive(4, None)
        assert sample("vxmesh_endpoint_propagation_seconds_count") == 3
        assert sample("vxmesh_endpoint_propagation_seconds_bucket", le="1.0") == 2
        assert pipeline.statistics().propagations_observed == 3
        nursery.cancel_scope.cancel()


def test_only_changes_the_kernel_must_apply_are_timed() -> None:
    live = Entry("blue", "10.1.0.2", "02:42:0a:01:00:02", "h2", "10.0.0.2", 3, changed_at=5.0)
    reissued = replace(live, version=9, changed_at=9.0)  # the owner restarted or refuted
    moved = replace(reissued, mac="02:42:0a:01:00:09")
    assert moves_kernel_entry(EndpointChanged("blue", "10.1.0.2", None, live))
    assert not moves_kernel_entry(EndpointChanged("blue", "10.1.0.2", live, reissued))
    assert moves_kernel_entry(EndpointChanged("blue", "10.1.0.2", reissued, moved))
    assert moves_kernel_entry(EndpointChanged("blue", "10.1.0.2", moved, None))
