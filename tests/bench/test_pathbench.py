"""bench/pathbench.py's pure parts: the interleaving order, medians with spreads, paired ratios
(the probe itself runs in tests/dataplane/test_bench.py, inside namespaces)."""

from __future__ import annotations

from tests.bench.loading import bench_module


def test_every_round_measures_everything_once_in_a_rotated_order() -> None:
    pb = bench_module("pathbench")
    orders = [pb.rotated(["a", "b", "c"], r) for r in range(4)]
    assert orders == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]
    assert pb.rotated([], 3) == []
    # a pair swaps places every round: A B, B A, ...
    assert [pb.rotated(["x", "y"], r) for r in range(3)] == [["x", "y"], ["y", "x"], ["x", "y"]]


def test_spread_is_median_min_max_and_ratios_are_taken_round_by_round() -> None:
    pb = bench_module("pathbench")
    spread = pb.Spread.of([3.0, 1.0, 2.0, 10.0, 4.0])
    assert (spread.median, spread.low, spread.high) == (3.0, 1.0, 10.0)
    assert spread.text(1) == "3.0 (1.0-10.0)" and spread.json() == [1.0, 10.0]
    # round 2 was slow for both (load from elsewhere): its ratio is still 0.5
    overlay = pb.Samples(gbps_p1=[5.0, 1.0, 4.0], rr_us=[40.0, 200.0, 44.0])
    host = pb.Samples(gbps_p1=[10.0, 2.0, 5.0], rr_us=[30.0, 160.0, 40.0])
    ratio = pb.paired_ratio(overlay, host, "gbps_p1")
    assert (ratio.median, ratio.low, ratio.high) == (0.5, 0.5, 0.8)
    assert pb.paired_ratio(overlay, host, "rr_us").median == 1.25
    figures = pb.figures_json(overlay)
    assert figures["gbps_p1"] == 4.0 and figures["gbps_p1_spread"] == [1.0, 5.0]
    assert "gbps_p4" not in figures  # not measured: left out, not zero
