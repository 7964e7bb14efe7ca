"""agent.runtime.pipeline: bursts coalesce, only the newest desired state is handed over,
propagation is timed from the owner's change until the reconciler's kernel holds it and lands
in the real metrics histogram (real Reconciler, in-memory kernel)."""

from __future__ import annotations

from dataclasses import replace

import trio
import trio.testing

from agent.runtime.metrics import AgentMetrics, MetricsSnapshot
from agent.runtime.pipeline import DesiredInputs, Pipeline, moves_kernel_entry
from overlay.desired import AliveMember, EndpointEntry, NetworkSpec, UnderlayView
from overlay.reconciler import Reconciler, run_dataplane
from overlay.table import EndpointChanged, Entry
from tests.dataplane.fake_kernel import FakeKernel
from tests.polling import wait_until

UNDERLAY = UnderlayView(address="10.0.0.1", mtu=1500)


class Inputs:
    def __init__(self) -> None:
        self.endpoints: list[EndpointEntry] = []
        self.reads = 0

    def __call__(self) -> DesiredInputs:
        self.reads += 1
        return DesiredInputs(
            networks=(NetworkSpec("blue", 4097),),
            members=(AliveMember("h1", "10.0.0.1"), AliveMember("h2", "10.0.0.2")),
            endpoints=tuple(self.endpoints), local_endpoints=(), underlay=UNDERLAY, node="h1")


async def test_burst_of_marks_costs_few_recomputes_and_newest_wins(
        autojump_clock: trio.testing.MockClock) -> None:
    kernel = FakeKernel()
    reconciler = Reconciler(kernel, clock=trio.current_time)
    inputs = Inputs()
    observed: list[float] = []
    pipeline = Pipeline(reconciler, inputs, observe_propagation=observed.append,
                        clock=trio.current_time)
    async with trio.open_nursery() as nursery:
        await nursery.start(pipeline.run)
        await nursery.start(run_dataplane, reconciler)
        for i in range(1000):
            inputs.endpoints = [EndpointEntry("blue", "h2", f"02:42:0a:01:{i // 256:02x}:"
                                              f"{i % 256:02x}", (f"10.1.{i // 256}.{i % 256}",))]
            pipeline.endpoint_arrived("blue", f"10.1.{i // 256}.{i % 256}")
        await wait_until(lambda: reconciler.in_sync()
                         and pipeline.statistics().pending_propagations == 0,
                         "the burst applied and timed", 5, interval=0.01)
        stats = pipeline.statistics()
        assert stats.marks == 1000
        assert stats.recomputes <= 3  # the first compute, then the coalesced burst
        assert pipeline.desired is not None
        assert [k.ip for k in pipeline.desired.neighbors] == ["10.1.3.231"]
        assert set(kernel.neighbors_of("vxtun4097")) == {"10.1.3.231"}
        assert len(observed) == 1000 and all(0 <= s < 1 for s in observed)
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
    pipeline = Pipeline(reconciler, inputs, observe_propagation=metrics.observe_propagation,
                        clock=trio.current_time, wall_clock=lambda: epoch + trio.current_time())

    def sample(name: str, **labels: str) -> float:
        value = metrics.registry.get_sample_value(name, labels)
        assert value is not None, name
        return value

    async def arrive(ip: str, mac: str, changed_at: float | None) -> None:
        inputs.endpoints.append(EndpointEntry("blue", "h2", mac, (ip,)))
        pipeline.endpoint_arrived("blue", ip, changed_at)
        await wait_until(lambda: reconciler.in_sync()
                         and pipeline.statistics().pending_propagations == 0,
                         f"{ip} applied and timed", 5, interval=0.001)
        assert ip in kernel.neighbors_of("vxtun4097")

    async with trio.open_nursery() as nursery:
        await nursery.start(pipeline.run)
        await nursery.start(run_dataplane, reconciler)
        # the owner changed it 2 s ago (its gossip took that long): ~2 s, not the ms since receipt
        started = epoch + trio.current_time()
        await arrive("10.1.0.2", "02:42:0a:01:00:02", started - 2.0)
        kernel_wall = epoch + trio.current_time()
        assert sample("vxmesh_endpoint_propagation_seconds_count") == 1
        total = sample("vxmesh_endpoint_propagation_seconds_sum")
        assert 2.0 <= total <= kernel_wall - started + 2.0
        assert sample("vxmesh_endpoint_propagation_seconds_bucket", le="1.0") == 0
        assert sample("vxmesh_endpoint_propagation_seconds_bucket", le="2.5") == 1
        assert sample("vxmesh_endpoint_propagation_clock_skew_total") == 0
        # the owner's clock runs 30 s ahead of ours: observed as 0 and counted as skew
        await arrive("10.1.0.3", "02:42:0a:01:00:03", epoch + trio.current_time() + 30.0)
        assert sample("vxmesh_endpoint_propagation_seconds_count") == 2
        assert sample("vxmesh_endpoint_propagation_seconds_sum") == total
        assert sample("vxmesh_endpoint_propagation_clock_skew_total") == 1
        # a record of an older peer (no change time): timed from its arrival on this host
        await arrive("10.1.0.4", "02:42:0a:01:00:04", None)
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
