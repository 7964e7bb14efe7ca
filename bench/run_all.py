"""Run every benchmark in bench/ and write bench/RESULTS.md.

Usage: bench/run_all.py [--gossip-sizes 5,10,20] [--loss-window 20] [--scale-nodes ...]
                        [--scale-cold-start N:S,...] [--only gossip_vs_serf,scale]
                        [--out bench/RESULTS.md]

Each benchmark runs as its own process with --json; its last output line is its JSON
object and the lines before it are its table. RESULTS.md gets the date, the machine (nproc,
kernel, CPU model, memory), /proc/loadavg before and after each benchmark (the machine is
shared, so timings carry that noise), every table, every ratio to a baseline found in the JSON,
and the options used. A benchmark that is missing or fails is listed as such, with the tail of
its error output; the others still run.

May import: the standard library only (benchmarks are run as subprocesses).
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
# Keys naming a ratio to a baseline: `ratio`, `ratio_min`, `ratio_to_host`, `speedup`, ...
RATIO_KEY = re.compile(r"(^|_)(ratio|speedup)(_|$)", re.IGNORECASE)


@dataclass(frozen=True)
class BenchRun:
    """The outcome of one benchmark process."""

    name: str
    argv: list[str]
    table: str
    result: dict[str, object] | None
    error: str | None
    wall_s: float
    load_before: str
    load_after: str


def machine_description() -> dict[str, str]:
    model = "unknown"
    for row in Path("/proc/cpuinfo").read_text().splitlines():
        if row.startswith("model name"):
            model = row.split(":", 1)[1].strip()
            break
    mem_kb = next(int(row.split()[1]) for row in Path("/proc/meminfo").read_text().splitlines()
                  if row.startswith("MemTotal:"))
    return {"nproc": str(os.cpu_count()), "kernel": platform.release(), "cpu": model,
            "memory": f"{mem_kb / 1e6:.1f} GB", "python": platform.python_version()}


def load() -> str:
    return Path("/proc/loadavg").read_text().strip()


def run_bench(name: str, args: Sequence[str], timeout: float) -> BenchRun:
    script = BENCH / f"{name}.py"
    argv = [sys.executable, str(script), *args, "--json"]
    before = load()
    started = time.monotonic()
    if not script.exists():
        return BenchRun(name, argv, "", None, f"{script.name} does not exist (not landed)",
                        0.0, before, before)
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, cwd=BENCH.parent)
    errors: collections.deque[str] = collections.deque(maxlen=15)

    def relay_progress() -> None:  # the bench's stderr is its progress: show it, keep a tail
        assert process.stderr is not None
        for line in process.stderr:
            print(f"  {name}: {line.rstrip()}", file=sys.stderr, flush=True)
            errors.append(line.rstrip())

    output: list[str] = []

    def collect_output() -> None:
        assert process.stdout is not None
        output.append(process.stdout.read())

    readers = [threading.Thread(target=relay_progress, daemon=True),
               threading.Thread(target=collect_output, daemon=True)]
    for reader in readers:
        reader.start()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.terminate()  # the bench cleans its lab up on SIGTERM
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        return BenchRun(name, argv, "", None, f"timed out after {timeout:g} s",
                        time.monotonic() - started, before, load())
    for reader in readers:
        reader.join(timeout=5)
    wall = time.monotonic() - started
    lines = "".join(output).rstrip("\n").splitlines()
    result: dict[str, object] | None = None
    error: str | None = None
    if lines:
        try:
            parsed = json.loads(lines[-1])
            result = parsed if isinstance(parsed, dict) else {"value": parsed}
            lines = lines[:-1]
        except json.JSONDecodeError:
            error = "last output line is not JSON"
    if process.returncode != 0:
        tail = "\n".join(errors)
        error = f"exit status {process.returncode}\n{tail}"
    elif result is None and error is None:
        error = "no output"
    return BenchRun(name, argv, "\n".join(lines).strip(), result, error, wall, before, load())


def ratios(value: object, path: str = "") -> Iterator[tuple[str, object]]:
    """Every entry of a benchmark's JSON whose key names a ratio to a baseline."""
    if isinstance(value, dict):
        for key, inner in value.items():
            where = f"{path}.{key}" if path else str(key)
            if RATIO_KEY.search(str(key)) and not isinstance(inner, dict | list):
                yield where, inner
            else:
                yield from ratios(inner, where)
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            label = inner.get("n", index) if isinstance(inner, dict) else index
            yield from ratios(inner, f"{path}[{label}]")


def gossip_ratio_rows(result: dict[str, object]) -> list[str]:
    """vxmesh/serf for every metric and size of gossip_vs_serf's JSON."""
    rows = result.get("rows")
    out: list[str] = []
    if not isinstance(rows, list):
        return out
    for row in rows:
        serf, vx = row.get("serf"), row.get("vxmesh")
        if not isinstance(serf, dict) or not isinstance(vx, dict):
            continue
        for metric, s in serf.items():
            v = vx.get(metric)
            if isinstance(s, int | float) and isinstance(v, int | float) and s:
                out.append(f"- N={row.get('n')} {metric}: vxmesh/serf = {v / s:.2f}")
    return out


def render(runs: Sequence[BenchRun], options: dict[str, str], out_dir: Path) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine = machine_description()
    out = ["# vxmesh benchmark results", "",
           f"Generated by `bench/run_all.py` on {now}.", "",
           "## Machine", "",
           "| nproc | kernel | CPU | memory | Python |", "|---|---|---|---|---|",
           f"| {machine['nproc']} | {machine['kernel']} | {machine['cpu']} | "
           f"{machine['memory']} | {machine['python']} |", "",
           "The machine is shared with other engineers running tests; /proc/loadavg is given "
           "before and after each benchmark so the noise can be judged.", "",
           "## Options", ""]
    out += [f"- {key}: {value}" for key, value in options.items()]
    for run in runs:
        out += ["", f"## {run.name}", "",
                f"`{' '.join(Path(a).name if a.endswith('.py') else a for a in run.argv[1:])}`"
                f": wall {run.wall_s:.0f} s; load before `{run.load_before}`, after "
                f"`{run.load_after}`", ""]
        if run.error:
            out += ["**Not measured / failed:**", "", "```", run.error, "```", ""]
        if run.table:
            out += [run.table, ""]
        plot = run.result.get("plot") if run.result is not None else None
        if isinstance(plot, str):
            shown = os.path.relpath(plot, out_dir)
            out += [f"Plot (bench/out is not committed; re-run to regenerate): ![{run.name}]"
                    f"({shown})", ""]
        if run.result is not None:
            found = gossip_ratio_rows(run.result) if run.name == "gossip_vs_serf" else [
                f"- {where}: {value}" for where, value in ratios(run.result)]
            if found:
                out += ["Ratios to the baseline (from the JSON):", "", *found, ""]
    return "\n".join(out).rstrip() + "\n"


ALL = ("gossip_vs_serf", "scale", "netlink_rate", "dataplane", "modes", "store", "docker")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(ALL), help=f"subset of {','.join(ALL)}")
    parser.add_argument("--gossip-sizes", default="5,10,20,40")
    parser.add_argument("--gossip-systems", default="serf,vxmesh,vxmesh-gossip",
                        help="gossip_vs_serf's --systems (default serf,vxmesh,vxmesh-gossip)")
    parser.add_argument("--loss-window", type=float, default=60.0,
                        help="gossip_vs_serf's 10%% loss window per size and system, seconds")
    parser.add_argument("--idle-window", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scale-nodes", default="100,300,1000,3000")
    parser.add_argument("--scale-duration", type=float, default=None,
                        help="simulated seconds per scale point (scale.py's default if unset)")
    parser.add_argument("--scale-cold-start", default=None,
                        help="scale.py's --cold-start N:S,... (its default if unset)")
    parser.add_argument("--timeout", type=float, default=1800.0,
                        help="seconds allowed per benchmark process (default 1800)")
    parser.add_argument("--out", type=Path, default=BENCH / "RESULTS.md")
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    args = parser.parse_args(argv)
    chosen = args.only.split(",")
    unknown = [name for name in chosen if name not in ALL]
    if unknown:
        parser.error(f"--only {args.only!r}: unknown {unknown}")
    bench_args: dict[str, list[str]] = {
        "gossip_vs_serf": ["--sizes", args.gossip_sizes, "--systems", args.gossip_systems,
                           "--loss-window", str(args.loss_window),
                           "--idle-window", str(args.idle_window),
                           "--repeats", str(args.repeats)],
        "scale": ["--nodes", args.scale_nodes] + (
            [] if args.scale_duration is None else ["--duration", str(args.scale_duration)]) + (
            [] if args.scale_cold_start is None else ["--cold-start", args.scale_cold_start]),
    }
    runs = []
    for name in chosen:
        print(f"run_all: {name} ...", file=sys.stderr, flush=True)
        run = run_bench(name, bench_args.get(name, []), args.timeout)
        print(f"run_all: {name} {'FAILED' if run.error else 'ok'} in {run.wall_s:.0f} s",
              file=sys.stderr, flush=True)
        runs.append(run)
    options = {
        "gossip_vs_serf": " ".join(bench_args["gossip_vs_serf"]),
        "scale": " ".join(bench_args["scale"]),
    }
    text = render(runs, options, args.out.resolve().parent)
    args.out.write_text(text)
    print(text)
    if args.json:
        print(json.dumps({"out": str(args.out), "benches": {
            run.name: {"ok": run.error is None, "wall_s": round(run.wall_s, 1),
                       "result": run.result} for run in runs}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
