"""Gossip at scale: the simulator at growing N, vxmesh's LAN preset against memberlist's.

Usage: bench/scale.py [--nodes 100,300,1000,3000,10000] [--cold-start 1000:1,3000:3]
                      [--duration SECONDS] [--cold-duration SECONDS] [--seed 1] [--json]
(`--nodes ""`: cold starts only.)

For each N, `gossip.sim.run_scenario` runs the real `Swim` state machines on a seeded fake
network, once with vxmesh's `lan` preset and once with the `memberlist` preset (memberlist's
LAN defaults, the baseline serf and Docker use), and measures in simulated seconds:
- converged_s: `join` scenario, N/100 nodes join a formed cluster; until every node sees all;
- detect_first_s / detect_all_s: `fail` scenario, one node crashes at t = 5 s;
- bytes_per_node_s: traffic per node per second over the `fail` run, and its two parts:
  UDP gossip (SWIM: constant per member) and TCP push-pull (full state, grows with N);
- wall_s: wall time of both scenarios for that profile (the 10,000-node point takes minutes);
- rss_mb: the process's peak resident memory so far (the simulated nodes share one member
  directory, see gossip.members; at 10,000 nodes 10^8 member views).
Cold starts (`--cold-start N:S,...`): N nodes, of which S seeds are up and know each other,
the N - S others all started at t = 1 s through the S seeds; cold_converged_s = until every
node sees every node (the `join` scenario with N - S joiners), for both profiles, over
`--cold-duration` simulated seconds (default 30). A cold start is O(N^2) work (each node learns
every member: 10^8 at 10,000); what push-pulls teach about third parties is not re-broadcast
beyond a bound (`gossip.swim.PULLED_NEWS_ROOM`), so its memory is the views' own.
Prints a table with the lan/memberlist ratio, writes a PNG plot of the three metrics against
N (log x axis, with a c*log10(N) reference so logarithmic growth can be seen) to
bench/out/scale.png; with --json the last line is one object {"rows": [...], "plot": path}.

May import: gossip.sim, matplotlib (Agg backend), the standard library.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from gossip.sim import run_scenario

OUT = Path(__file__).resolve().parent / "out"
PROFILES = ("lan", "memberlist")
METRICS = ("converged_s", "detect_first_s", "detect_all_s", "bytes_per_node_s",
           "udp_bytes_per_node_s", "push_pull_bytes_per_node_s", "wall_s", "rss_mb")


def measure(nodes: int, profile: str, seed: int, duration: float | None) -> dict[str, object]:
    """One profile at one size: join and fail scenarios, merged into one row."""
    started = time.perf_counter()
    join = run_scenario("join", nodes, seed, profile=profile, duration=duration)
    fail = run_scenario("fail", nodes, seed, profile=profile, duration=duration)
    return {
        "converged_s": join.converged_s,
        "detect_first_s": fail.detect_first_s,
        "detect_all_s": fail.detect_all_s,
        "bytes_per_node_s": fail.bytes_per_node_s,
        "udp_bytes_per_node_s": fail.udp_bytes_per_node_s,
        "push_pull_bytes_per_node_s": fail.push_pull_bytes_per_node_s,
        "false_positives": fail.false_positives,
        "simulated_s": fail.duration_s,
        "wall_s": time.perf_counter() - started,
        "rss_mb": _peak_rss_mb(),
        "notes": join.notes + fail.notes,
    }


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_cold_start(nodes: int, seeds: int, profile: str, seed: int,
                       duration: float = 30.0) -> dict[str, object]:
    """N - S nodes started at once through S seeds; until everyone sees everyone."""
    started = time.perf_counter()
    join = run_scenario("join", nodes, seed, profile=profile, duration=duration,
                        joiners=nodes - seeds)
    return {"cold_converged_s": join.converged_s, "bytes_per_node_s": join.bytes_per_node_s,
            "push_pull_bytes_per_node_s": join.push_pull_bytes_per_node_s,
            "wall_s": time.perf_counter() - started, "rss_mb": _peak_rss_mb(),
            "notes": join.notes}


def render_cold_table(rows: Sequence[dict[str, object]]) -> str:
    lines = ["| N | seeds | metric | vxmesh lan | memberlist | lan/memberlist |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        lan, base = row["lan"], row["memberlist"]
        assert isinstance(lan, dict) and isinstance(base, dict)
        for metric in ("cold_converged_s", "bytes_per_node_s", "wall_s", "rss_mb"):
            ours, theirs = lan.get(metric), base.get(metric)
            lines.append(f"| {row['n']} | {row['seeds']} | {metric} | {_fmt(ours)} | "
                         f"{_fmt(theirs)} | {_ratio(ours, theirs)} |")
    return "\n".join(lines)


def _cold_starts(text: str) -> list[tuple[int, int]]:
    """`N:S,...` -> [(N, S)]; raises ValueError naming the bad item."""
    pairs = []
    for item in filter(None, text.split(",")):
        n, _, seeds = item.partition(":")
        pair = (int(n), int(seeds or 1))
        if not 1 <= pair[1] < pair[0] or pair[0] < 4:
            raise ValueError(item)
        pairs.append(pair)
    return pairs


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def _ratio(lan: object, base: object) -> str:
    if isinstance(lan, int | float) and isinstance(base, int | float) and base:
        return f"{lan / base:.2f}x"
    return "-"


def render_table(rows: Sequence[dict[str, object]]) -> str:
    lines = ["| N | metric | vxmesh lan | memberlist | lan/memberlist |", "|---|---|---|---|---|"]
    for row in rows:
        lan, base = row["lan"], row["memberlist"]
        assert isinstance(lan, dict) and isinstance(base, dict)
        for metric in METRICS:
            ours, theirs = lan.get(metric), base.get(metric)
            lines.append(f"| {row['n']} | {metric} | {_fmt(ours)} | {_fmt(theirs)} | "
                         f"{_ratio(ours, theirs)} |")
    return "\n".join(lines)


def plot(rows: Sequence[dict[str, object]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [int(str(row["n"])) for row in rows]
    panels = (("converged_s", "join convergence (s)"),
              ("detect_all_s", "kill detected by all (s)"),
              ("bytes_per_node_s", "bytes per node per second (all)"),
              ("udp_bytes_per_node_s", "UDP gossip bytes per node per second"))
    figure, axes = plt.subplots(1, len(panels), figsize=(18, 4.2))
    for axis, (metric, title) in zip(axes, panels, strict=True):
        for profile, style in zip(PROFILES, ("o-", "s--"), strict=True):
            values = []
            for row in rows:
                inner = row[profile]
                assert isinstance(inner, dict)
                value = inner.get(metric)
                values.append(float(value) if isinstance(value, int | float) else math.nan)
            axis.plot(sizes, values, style, label="vxmesh lan" if profile == "lan" else profile)
            if profile == "lan" and not math.isnan(values[0]) and values[0] > 0:
                scale = values[0] / math.log10(sizes[0])
                axis.plot(sizes, [scale * math.log10(n) for n in sizes], ":", color="grey",
                          label="c*log10(N) through the first point")
        axis.set_xscale("log")
        axis.set_xlabel("nodes N")
        axis.set_title(title)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle("gossip.sim: vxmesh LAN preset vs memberlist LAN defaults")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", default="100,300,1000,3000,10000",
                        help="comma-separated cluster sizes (each >= 4)")
    parser.add_argument("--cold-start", default="1000:1,3000:3",
                        help="comma-separated N:S cold starts (N nodes at once through S "
                             "seeds); empty for none")
    parser.add_argument("--cold-duration", type=float, default=30.0,
                        help="simulated seconds of each cold start (default 30)")
    parser.add_argument("--duration", type=float, default=None,
                        help="simulated seconds per scenario (default: the simulator's, "
                             "30 s for join and 60 s for fail)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--plot", type=Path, default=OUT / "scale.png",
                        help="where the PNG goes (default bench/out/scale.png)")
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    args = parser.parse_args(argv)
    try:
        sizes = [int(s) for s in filter(None, args.nodes.split(","))]
    except ValueError:
        parser.error(f"--nodes {args.nodes!r}: expected comma-separated integers")
    try:
        cold = _cold_starts(args.cold_start)
    except ValueError as exc:
        parser.error(f"--cold-start {args.cold_start!r}: {exc} is not N:S with N >= 4 and "
                     "1 <= S < N")
    if any(n < 4 for n in sizes):
        parser.error(f"--nodes {args.nodes!r}: every size must be at least 4")
    if args.cold_duration <= 0:
        parser.error(f"--cold-duration {args.cold_duration}: must be > 0")
    if args.duration is not None and args.duration < 20:
        parser.error(f"--duration {args.duration}: at least 20 simulated seconds are needed "
                     "(the crash is at 5 s and detection takes several seconds)")
    started = time.perf_counter()
    rows: list[dict[str, object]] = []
    for n in sizes:
        row: dict[str, object] = {"n": n}
        for profile in PROFILES:
            row[profile] = measure(n, profile, args.seed, args.duration)
            print(f"scale: n={n} {profile}: {row[profile]}", file=sys.stderr, flush=True)
        rows.append(row)
    cold_rows: list[dict[str, object]] = []
    for n, seeds in cold:
        cold_row: dict[str, object] = {"n": n, "seeds": seeds}
        for profile in PROFILES:
            cold_row[profile] = measure_cold_start(n, seeds, profile, args.seed,
                                                   args.cold_duration)
            print(f"scale: cold start n={n} seeds={seeds} {profile}: {cold_row[profile]}",
                  file=sys.stderr, flush=True)
        cold_rows.append(cold_row)
    if rows:
        plot(rows, args.plot)
        print(render_table(rows))
    if cold_rows:
        print("\ncold starts (simulated seconds from the start of every node):")
        print(render_cold_table(cold_rows))
    plotted = str(args.plot) if rows else None
    print(f"\nsimulated seconds per scenario: {args.duration or 'simulator default'}; seed "
          f"{args.seed}; plot: {plotted or 'none'}; wall {time.perf_counter() - started:.0f} s")
    if args.json:
        print(json.dumps({"rows": rows, "cold_starts": cold_rows, "plot": plotted,
                          "seed": args.seed,
                          "duration_s": args.duration,
                          "wall_s": round(time.perf_counter() - started, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
