"""Memory per (view, suspect or failed member) pair at the height of a 50/50 partition.

Usage: bench/partition_memory.py [--nodes 300] [--at 16] [--seed 1] [--top 8] [--json]

Runs the partition scenario's set-up of `gossip.sim` (lan preset, the same seeded 50/50 cut at
t = 5 s) under tracemalloc, and compares the traced memory just before the cut with the
memory at `--at` simulated seconds: the growth divided by the pairs (views times the members
each holds as suspect or failed) is what one pair costs (the bounded memos of decoded packets
and chunks emptied before both snapshots); the allocation sites that grew most are listed.
A 10,000-node cut holds 5 * 10^7 such pairs at once. The figures are from the simulator's
seeded run, so they do not depend on the machine's load (the wall time does).
Prints a table, then one JSON object as the last line with `--json`.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import tracemalloc

from gossip.config import SwimConfig
from gossip.sim import Simulation
from gossip.swim import MemberState

_CUT_AT = 5.0


def measure(nodes: int, at: float, seed: int, top: int) -> dict[str, object]:
    """Traced bytes before the cut and at `at`, the pairs, the sites that grew most."""
    started = time.perf_counter()
    tracemalloc.start()
    sim = Simulation(nodes, seed=seed, config=SwimConfig.lan())
    sim.run_until(_CUT_AT)
    # The cut of `gossip.sim.run_scenario("partition", ...)`: the same draws.
    rng = random.Random(f"scenario:{seed}")
    order = list(range(nodes))
    rng.shuffle(order)
    groups = [0] * nodes
    for i in order[: nodes // 2]:
        groups[i] = 1
    # The memos of decoded packets and chunks are bounded whatever the cluster's size (at 300
    # nodes they would outweigh the pairs): emptied before each snapshot.
    sim.directory.forget_decoded()
    before_bytes, _ = tracemalloc.get_traced_memory()
    before = tracemalloc.take_snapshot()
    sim.partition(groups)
    sim.run_until(at)
    sim.directory.forget_decoded()
    after_bytes, _ = tracemalloc.get_traced_memory()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    pairs = {MemberState.SUSPECT: 0, MemberState.DEAD: 0}
    for node in sim.nodes:
        swim = node.swim
        assert swim is not None
        for member in swim.members():
            if member.state in pairs:
                pairs[member.state] += 1
    total_pairs = sum(pairs.values())
    growth = after_bytes - before_bytes
    sites = [(str(stat.traceback[0]), stat.size_diff)
             for stat in after.compare_to(before, "lineno")[:top]]
    return {"nodes": nodes, "at_s": at, "seed": seed, "pairs": total_pairs,
            "suspect_pairs": pairs[MemberState.SUSPECT], "failed_pairs": pairs[MemberState.DEAD],
            "traced_before_mb": before_bytes / 1e6, "traced_at_mb": after_bytes / 1e6,
            "growth_bytes_per_pair": growth / max(1, total_pairs),
            "traced_bytes_per_pair": after_bytes / max(1, total_pairs),
            "top_sites": sites, "wall_s": time.perf_counter() - started}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/partition_memory.py",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=300)
    parser.add_argument("--at", type=float, default=16.0,
                        help="simulated seconds at which to measure (the cut is at 5 s)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--top", type=int, default=8, help="allocation sites to list")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.nodes < 4:
        parser.error(f"--nodes: need at least 4, got {args.nodes}")
    if args.at <= _CUT_AT:
        parser.error(f"--at: must be after the cut at {_CUT_AT} s, got {args.at}")
    result = measure(args.nodes, args.at, args.seed, args.top)
    print(f"partition of {args.nodes} nodes at {args.at} s (cut at {_CUT_AT} s, seed "
          f"{args.seed}): {result['pairs']:,} pairs ({result['suspect_pairs']:,} suspect, "
          f"{result['failed_pairs']:,} failed)")
    print(f"{'traced before the cut (MB)':<34}{result['traced_before_mb']:>12.1f}")
    print(f"{'traced at the height (MB)':<34}{result['traced_at_mb']:>12.1f}")
    print(f"{'growth per pair (bytes)':<34}{result['growth_bytes_per_pair']:>12.0f}")
    print(f"{'traced per pair (bytes)':<34}{result['traced_bytes_per_pair']:>12.0f}")
    for site, size in result["top_sites"]:  # type: ignore[attr-defined]
        print(f"  {size / 1e6:>8.2f} MB  {site}")
    if args.json:
        print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
