"""agent.pipeline: bursts coalesce, only the newest desired state is handed over, propagation
is timed until the reconciler's kernel holds it (real Reconciler, in-memory kernel)."""

from __future__ import annotations

import trio
import trio.testing

from agent.pipeline import DesiredInputs, Pipeline
from overlay.desired import AliveMember, EndpointEntry, NetworkSpec, UnderlayView
from overlay.reconciler import Reconciler, run_dataplane
from tests.dataplane.fake_kernel import FakeKernel

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
        with trio.fail_after(5):
            while not (reconciler.in_sync() and pipeline.statistics().pending_propagations == 0):
                await trio.sleep(0.01)
        stats = pipeline.statistics()
        assert stats.marks == 1000
        assert stats.recomputes <= 3  # the first compute, then the coalesced burst
        assert pipeline.desired is not None
        assert [k.ip for k in pipeline.desired.neighbors] == ["10.1.3.231"]
        assert set(kernel.neighbors_of("vxtun4097")) == {"10.1.3.231"}
        assert len(observed) == 1000 and all(0 <= s < 1 for s in observed)
        nursery.cancel_scope.cancel()
