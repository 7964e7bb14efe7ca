"""bench/policy.py: the measuring order, the pairing with the baselines around each run, the
estimates and the verdict (pure), and the variants' rule sets in real namespaces: the agent's
no-policy rule set already tracks bridged flows (which is why it is the baseline), none does
not, and a policy variant lets the bench's client reach its server (one run's figures)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType

import pytest

from tests.bench.loading import bench_module
from underlay.netns_exec import ip_netns_exec


def _policy_bench() -> ModuleType:
    sys.modules.setdefault("pathbench", bench_module("pathbench"))  # its `from pathbench import`
    return bench_module("policy")


def test_the_baseline_brackets_every_run_and_the_others_rotate() -> None:
    pb = _policy_bench()
    order = pb.schedule(["x", "y", "z"], range(2))
    assert order == ["agent", "x", "agent", "y", "agent", "z",
                     "agent", "y", "agent", "z", "agent", "x", "agent"]
    assert pb.schedule(["x", "y", "z"], range(2, 3)) == ["agent", "z", "agent", "x", "agent",
                                                         "y", "agent"]


def test_blocks_move_every_variant_through_every_triple() -> None:
    pb = _policy_bench()
    assert len(pb.VARIANTS) == 7
    assert pb.blocks(16) == [range(0, 2), range(2, 4), range(4, 6), range(6, 9), range(9, 11),
                             range(11, 13), range(13, 16)]
    assert pb.blocks(2) == [range(0, 1), range(1, 2)]
    places = [pb.assignment(block) for block in range(len(pb.VARIANTS))]
    for where in places:  # one variant per triple in every block
        assert sorted(where.values()) == list(range(len(pb.VARIANTS)))
    for variant in pb.VARIANTS:  # and every variant in every triple once
        assert sorted(where[variant] for where in places) == list(range(len(pb.VARIANTS)))


def test_each_run_is_paired_with_the_baselines_around_it_so_a_drift_cancels() -> None:
    pb = _policy_bench()
    order = [*pb.schedule(["x", "y"], range(2)), *pb.schedule(["x", "y"], range(2, 3))]
    # the machine slows down steadily; x costs 10 % at every moment, y nothing
    moment = [10.0 - 0.5 * i for i in range(len(order))]
    values = [m * (0.9 if v == "x" else 1.0) for m, v in zip(moment, order, strict=True)]
    changes = pb.paired_changes(order, values)
    assert set(changes) == {"x", "y"} and len(changes["x"]) == 3  # across a block's edge
    assert all(abs(c + 0.1) < 1e-9 for c in changes["x"])
    assert all(abs(c) < 1e-9 for c in changes["y"])
    with pytest.raises(ValueError, match="between two baseline runs"):
        pb.paired_changes(["agent", "x", "y", "agent"], [1.0, 1.0, 1.0, 1.0])


def test_estimates_and_the_verdict() -> None:
    pb = _policy_bench()
    rng = random.Random(1)
    estimate = pb.Estimate.of([-0.02, -0.01, 0.0, 0.01, 0.5], rng)
    assert estimate.median == 0.0 and (estimate.low, estimate.high) == (-0.02, 0.5)
    assert estimate.low <= estimate.low95 <= estimate.median <= estimate.high95 <= estimate.high
    loss = estimate.negated()
    assert (loss.median, loss.low, loss.high) == (0.0, -0.5, 0.02)
    assert loss.low95 == -estimate.high95
    narrow = pb.Estimate(0.01, 0.0, 0.02, -0.1, 0.1)
    wide = pb.Estimate(0.01, -0.08, 0.09, -0.3, 0.3)
    assert pb.verdict(narrow, narrow, 30) == (True, True, pytest.approx(0.01))
    assert pb.verdict(wide, narrow, 30)[:2] == (True, False)  # the interval straddles 5 %
    assert pb.verdict(narrow, wide, 30)[:2] == (True, False)  # the control is too noisy
    assert pb.verdict(narrow, narrow, 5)[:2] == (True, False)  # too few rounds
    high = pb.Estimate(0.2, 0.15, 0.25, 0.0, 0.4)
    assert pb.verdict(high, narrow, 30)[:2] == (False, True)  # missed, and clearly so


def _tracked(ns: str, address: str) -> bool:
    """Whether conntrack in `ns` holds a flow from `address`."""
    listing = subprocess.run(ip_netns_exec(ns, ["cat", "/proc/net/nf_conntrack"]),
                             capture_output=True, text=True, timeout=10, check=False).stdout
    return f"src={address} " in listing


@pytest.mark.kernel
def test_the_variants_rule_sets_in_real_namespaces() -> None:
    pb = _policy_bench()
    with pb.namespaces(f"tb21{os.getpid() % 1000}", 3) as listed:
        triples = dict(zip(["1", "agent", "none"], listed, strict=True))
        for variant, triple in triples.items():  # "1" first, so moving it away is tested too
            pb._load(triple.middle, variant)
        triples = dict(zip(["agent", "none", "1"], listed, strict=True))
        for variant, triple in triples.items():
            pb._load(triple.middle, variant)
            pb._in(triple.client, ["ping", "-n", "-q", "-c", "2", "-W", "2", pb.SERVER])
        tables = {v: pb._in(t.middle, ["nft", "list", "tables"]) for v, t in triples.items()}
        assert "table ip vxmesh" in tables["agent"] and "vxmesh_policy" not in tables["agent"]
        assert tables["none"].strip() == ""
        assert "table ip vxmesh" in tables["1"] and "table inet vxmesh_policy" in tables["1"]
        # the agent's own table (no policy) already sends the bridged flow through conntrack
        assert _tracked(triples["agent"].middle, pb.CLIENT)
        assert not _tracked(triples["none"].middle, pb.CLIENT)
        assert _tracked(triples["1"].middle, pb.CLIENT)
        # a run through the policy variant: throughput, CPU, ping and new connections
        with tempfile.TemporaryDirectory(prefix="vxmesh-test-policy-bench-") as logs:
            servers = pb.Servers(Path(logs))
            try:
                pb.start_servers(servers, triples["1"])
                run = pb.measure(triples["1"], 1)
            finally:
                servers.stop()
        assert run.gbps > 0 and run.cpu_s_per_gb > 0 and run.ping_ms > 0 and run.connect_us > 0
    left = pb._run(["ip", "netns", "list"])
    assert f"tb21{os.getpid() % 1000}" not in left
