"""bench/restart.py's summary: the JSON keys the issue asks for, worst repeat of each."""

from __future__ import annotations

from tests.bench.loading import bench_module


def test_summary_takes_the_worst_repeat_per_configuration_and_fault() -> None:
    bench = bench_module("restart")
    m = bench.Measurement
    runs = [m("vxmesh", "sigterm_restart", 0, 0.0, 900, 1.2),
            m("vxmesh", "kill_30s", 2, 0.02, 7000, 33.0),
            m("vxmesh", "dead_host", 0, 0.0, 0, 4.1),
            m("baseline", "sigterm_restart", 170, 1.7, 900, 1.3),
            m("baseline", "kill_30s", 1500, 15.0, 7000, 33.0),
            m("baseline", "dead_host", 0, 0.0, 0, 3.9),
            m("vxmesh", "kill_30s", 0, 0.0, 7000, 33.0),
            m("vxmesh", "kill_120s", 0, 0.0, 25000, 123.0)]
    summary = bench.summarize(runs, 30.0, 120.0)
    assert summary["lost_sigterm_restart"] == 0
    assert summary["lost_kill_30s"] == 2
    assert summary["lost_kill_120s"] == 0
    assert summary["lost_baseline_kill_30s"] == 1500
    assert summary["lost_baseline_sigterm_restart"] == 170
    assert summary["withdraw_dead_host_s"] == 4.1
    assert summary["withdraw_dead_host_baseline_s"] == 3.9
    assert len(summary["runs"]) == 8
    assert "kill_120s" in bench.format_table(runs)
