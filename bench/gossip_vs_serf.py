"""Gossip benchmark: HashiCorp serf against vxmesh on the same namespace lab, side by side.

Usage: bench/gossip_vs_serf.py [--sizes 5,10,20,40] [--loss-window 60] [--json]

For each size N a lab of N namespace hosts on one bridge (bench/netns_bench.py) runs, in turn,
N serf agents (LAN profile) and N vxmesh nodes (LAN preset), and measures for each system:
- join_s: from starting the last node until every node (it included) lists all N;
- dissemination_s: median over repeats of the time from publishing one update on h1 until
  the slowest node has it (serf: a user event; vxmesh: see `VXMESH_SYSTEMS`);
- false_positives: failure events about live nodes, summed over observers, during the loss
  window at 10% input packet loss (nftables, a table of our own in each namespace);
- cpu_pct, rss_mb: idle CPU (percent of one core over the idle window) and RSS per agent;
- detect_first_s / detect_all_s: from a kill -9 of one node until the first / every other
  node declares it failed.
Events are read from each agent's output, time-stamped on arrival (serf's own log lines;
vxmesh's event lines). Prints a table with the vxmesh/serf ratio and whether each target is
met; with --json the last line is `{"rows": [{"n", "serf": {...}, "vxmesh": {...}}]}`.

May import: bench/netns_bench.py and the standard library (the agents run as processes).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from netns_bench import (
    ROOT,
    AgentProcess,
    BenchLab,
    LabHost,
    cleanup_on_sigterm,
    machine_load,
    measure_idle,
)

METRICS = ("join_s", "detect_first_s", "detect_all_s", "dissemination_s", "false_positives",
           "cpu_pct", "rss_mb")
LOSS_PERCENT = 10
GOSSIP_PORT = 7946


@dataclass(frozen=True)
class Observed:
    """What one line of an agent's output says: `joined`/`failed` a member, or `update` key."""

    kind: str
    subject: str


class GossipSystem(Protocol):
    """One system under test: how to start an agent, read its events, publish an update."""

    name: str
    dissemination_via: str

    def start(self, lab: BenchLab, host: LabHost, seed: LabHost | None) -> AgentProcess: ...

    def parse(self, text: str) -> Observed | None: ...

    def publish_update(self, lab: BenchLab, host: LabHost, key: str) -> None: ...


class SerfSystem:
    """HashiCorp serf (Debian package), LAN profile, RPC on loopback inside each namespace."""

    name = "serf"
    dissemination_via = "serf user event"
    _patterns: tuple[tuple[str, re.Pattern[str]], ...] = (
        ("joined", re.compile(r"serf: EventMemberJoin: (\S+) ")),
        ("failed", re.compile(r"serf: EventMemberFailed: (\S+) ")),
        ("update", re.compile(r"agent: Received event: user-event: (\S+)")),
    )

    def start(self, lab: BenchLab, host: LabHost, seed: LabHost | None) -> AgentProcess:
        argv = ["serf", "agent", "-profile=lan", "-node", host.name,
                "-bind", f"{host.addr}:{GOSSIP_PORT}", "-rpc-addr", "127.0.0.1:7373"]
        if seed is not None:
            argv += ["-join", f"{seed.addr}:{GOSSIP_PORT}"]
        return lab.spawn(host, argv)

    def parse(self, text: str) -> Observed | None:
        for kind, pattern in self._patterns:
            found = pattern.search(text)
            if found:
                return Observed(kind, found.group(1))
        return None

    def publish_update(self, lab: BenchLab, host: LabHost, key: str) -> None:
        subprocess.run(["ip", "netns", "exec", host.netns, "serf", "event",
                        "-rpc-addr=127.0.0.1:7373", "-coalesce=false", key, "bench"],
                       check=True, capture_output=True, timeout=10)


class GossipDriverSystem:
    """vxmesh's gossip stack: one `bench/gossip_node_runner.py` per namespace (the agent's
    GossipLink: gossip/node.py driver, LAN preset, neighbor table as delegate). An update is
    one endpoint record published on h1; it arrives when it is visible in a node's table."""

    name = "vxmesh"
    dissemination_via = "neighbor-table endpoint record visible in every node's table"
    _runner = Path(__file__).resolve().parent / "gossip_node_runner.py"
    _pattern = re.compile(r"^event (joined|failed|update) (\S+)")

    def __init__(self) -> None:
        self._key_of_ip: dict[str, str] = {}

    def start(self, lab: BenchLab, host: LabHost, seed: LabHost | None) -> AgentProcess:
        argv = [sys.executable, "-u", str(self._runner), "--name", host.name,
                "--bind", f"{host.addr}:{GOSSIP_PORT}"]
        if seed is not None:
            argv += ["--join", f"{seed.addr}:{GOSSIP_PORT}"]
        return lab.spawn(host, argv, cwd=ROOT)

    def parse(self, text: str) -> Observed | None:
        found = self._pattern.search(text)
        if found is None:
            return None
        kind, subject = found.group(1), found.group(2)
        if kind == "update":
            subject = self._key_of_ip.get(subject, subject)
        return Observed(kind, subject)

    def publish_update(self, lab: BenchLab, host: LabHost, key: str) -> None:
        """Publish an endpoint with a fresh IP (10.200.0.0/16) standing for `key`."""
        count = len(self._key_of_ip) + 1
        ip = f"10.200.{count >> 8 & 255}.{count & 255}"
        self._key_of_ip[ip] = key
        agent = next(a for a in lab.agents if a.host == host and a.alive())
        agent.send_line(f"update {ip}")


SYSTEMS: dict[str, Callable[[], GossipSystem]] = {
    "serf": SerfSystem,
    "vxmesh": GossipDriverSystem,
}


@dataclass
class Measured:
    """One system at one size; None where the measurement timed out."""

    join_s: float | None = None
    detect_first_s: float | None = None
    detect_all_s: float | None = None
    dissemination_s: float | None = None
    false_positives: int | None = None
    cpu_pct: float | None = None
    rss_mb: float | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self, system: GossipSystem) -> dict[str, object]:
        row: dict[str, object] = {m: _round(getattr(self, m)) for m in METRICS}
        row["dissemination_via"] = system.dissemination_via
        row["notes"] = self.notes
        return row


def _round(value: float | int | None) -> float | int | None:
    return round(value, 4) if isinstance(value, float) else value


def _first(system: GossipSystem, agent: AgentProcess, kind: str, subject: str, since: float,
           deadline: float) -> float | None:
    def match(text: str) -> bool:
        return system.parse(text) == Observed(kind, subject)

    line = agent.wait_line(match, deadline, since)
    return None if line is None else line.at


def _converged(system: GossipSystem, agents: Sequence[AgentProcess], deadline: float,
               since: float = 0.0) -> float | None:
    """Time every agent has seen every other join (after `since`), or None at the deadline."""
    latest = since
    for agent in agents:
        for other in agents:
            if other is agent:
                continue
            at = _first(system, agent, "joined", other.host.name, since, deadline)
            if at is None:
                return None
            latest = max(latest, at)
    return latest


def _failures_between(system: GossipSystem, agents: Sequence[AgentProcess], start: float,
                      end: float) -> int:
    count = 0
    for agent in agents:
        for line in agent.lines():
            if start <= line.at <= end:
                seen = system.parse(line.text)
                count += seen is not None and seen.kind == "failed"
    return count


def _all_alive_again(system: GossipSystem, agents: Sequence[AgentProcess],
                     timeout: float) -> bool:
    """Every observer's newest join/failed event about every member is a join (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        healthy = True
        for agent in agents:
            last: dict[str, str] = {}
            for line in agent.lines():
                seen = system.parse(line.text)
                if seen is not None and seen.kind in ("joined", "failed"):
                    last[seen.subject] = seen.kind
            healthy = healthy and all(v == "joined" for v in last.values())
        if healthy:
            return True
        time.sleep(0.5)
    return False


def measure(system: GossipSystem, lab: BenchLab, *, repeats: int, idle_window: float,
            loss_window: float, timeout: float, log: Callable[[str], None]) -> Measured:
    """Run every measurement of one system on `lab`; agents are stopped before returning."""
    result = Measured()
    hosts = lab.hosts
    seed = hosts[0]
    try:
        first = system.start(lab, seed, None)
        if _first(system, first, "joined", seed.name, 0.0, time.monotonic() + timeout) is None:
            result.notes.append(f"first agent did not start: {first.last_words()}")
            return result
        agents = [first] + [system.start(lab, host, seed) for host in hosts[1:-1]]
        if _converged(system, agents, time.monotonic() + timeout) is None:
            result.notes.append(f"{len(agents)} agents did not converge in {timeout} s")
            return result
        # Join of the last node.
        joined_from = time.monotonic()
        agents.append(system.start(lab, hosts[-1], seed))
        converged = _converged(system, agents, joined_from + timeout, since=0.0)
        if converged is None:
            result.notes.append("last node's join did not converge")
            return result
        result.join_s = converged - joined_from
        log(f"  {system.name} n={lab.n}: join {result.join_s:.3f} s")

        # Dissemination of one update to every node, median over repeats.
        samples = []
        for repeat in range(repeats):
            key = f"bench{repeat}x{lab.n}"
            published = time.monotonic()
            system.publish_update(lab, seed, key)
            arrivals = [_first(system, a, "update", key, published, published + timeout)
                        for a in agents]
            if None in arrivals:
                result.notes.append(f"update {key} did not reach every node")
                continue
            samples.append(max(a for a in arrivals if a is not None) - published)
            time.sleep(0.3)
        if samples:
            result.dissemination_s = statistics.median(samples)
            log(f"  {system.name} n={lab.n}: dissemination {samples}")

        idle = measure_idle(agents, idle_window)
        result.cpu_pct, result.rss_mb = idle.cpu_pct, idle.rss_mb
        log(f"  {system.name} n={lab.n}: idle {idle}")

        # False positives at 10% input loss.
        lab.set_input_loss(LOSS_PERCENT)
        loss_from = time.monotonic()
        time.sleep(loss_window)
        lab.clear_input_loss()
        result.false_positives = _failures_between(system, agents, loss_from,
                                                   time.monotonic())
        log(f"  {system.name} n={lab.n}: false positives {result.false_positives}")
        if result.false_positives and not _all_alive_again(system, agents, timeout):
            result.notes.append("membership did not heal after the loss window")

        # Detection of a kill -9.
        victim = agents[len(agents) // 2]
        killed_at = victim.kill9()
        survivors = [a for a in agents if a is not victim]
        detected = [_first(system, a, "failed", victim.host.name, killed_at,
                           killed_at + timeout) for a in survivors]
        seen = [d - killed_at for d in detected if d is not None]
        if seen:
            result.detect_first_s = min(seen)
        if len(seen) == len(survivors):
            result.detect_all_s = max(seen)
        else:
            result.notes.append(f"{len(survivors) - len(seen)} nodes never detected the kill")
        log(f"  {system.name} n={lab.n}: detect first {result.detect_first_s} "
            f"all {result.detect_all_s}")
        return result
    finally:
        for agent in lab.agents:
            agent.stop()
        lab.agents.clear()


# Target per metric: (limit as a multiple of serf's figure, "lower is better").
TARGETS: dict[str, float] = {
    "detect_first_s": 1.0, "detect_all_s": 1.0, "dissemination_s": 1.0,
    "false_positives": 1.0, "cpu_pct": 2.0, "rss_mb": 3.0,
}


def verdict(metric: str, serf: float | int | None, vxmesh: float | int | None) -> str:
    if metric not in TARGETS:
        return ""
    if serf is None or vxmesh is None:
        return "not measured"
    if metric == "false_positives":
        return "met" if vxmesh <= serf else "MISSED"
    return "met" if vxmesh <= TARGETS[metric] * serf else "MISSED"


def ratio(serf: float | int | None, vxmesh: float | int | None) -> str:
    if serf is None or vxmesh is None:
        return "-"
    if serf == 0:
        return "-" if vxmesh == 0 else "inf"
    return f"{vxmesh / serf:.2f}x"


def _fmt(value: float | int | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def render_table(rows: Sequence[dict[str, object]]) -> str:
    lines = ["| N | metric | serf | vxmesh | vxmesh/serf | target |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        serf = row.get("serf", {})
        vx = row.get("vxmesh", {})
        assert isinstance(serf, dict) and isinstance(vx, dict)
        for metric in METRICS:
            s, v = serf.get(metric), vx.get(metric)
            lines.append(f"| {row['n']} | {metric} | {_fmt(s)} | {_fmt(v)} | {ratio(s, v)} | "
                         f"{verdict(metric, s, v)} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="5,10,20,40",
                        help="comma-separated lab sizes N (default 5,10,20,40)")
    parser.add_argument("--systems", default="serf,vxmesh",
                        help=f"comma-separated, from {sorted(SYSTEMS)}")
    parser.add_argument("--loss-window", type=float, default=60.0,
                        help="seconds at 10%% input loss counting false positives (default 60)")
    parser.add_argument("--idle-window", type=float, default=10.0,
                        help="seconds over which idle CPU is measured (default 10)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="updates published per size; the median is reported (default 5)")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds to wait for any one event before giving up (default 60)")
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    args = parser.parse_args(argv)
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        parser.error(f"--sizes {args.sizes!r}: expected comma-separated integers")
    if any(n < 2 or n > 250 for n in sizes):
        parser.error(f"--sizes {args.sizes!r}: every size must be between 2 and 250")
    names = args.systems.split(",")
    unknown = [name for name in names if name not in SYSTEMS]
    if unknown:
        parser.error(f"--systems {args.systems!r}: unknown {unknown}")

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    rows: list[dict[str, object]] = []
    started = time.monotonic()
    load_before = machine_load()
    with cleanup_on_sigterm():
        for n in sizes:
            row: dict[str, object] = {"n": n}
            with BenchLab(n, "gvs") as lab:
                for name in names:
                    system = SYSTEMS[name]()
                    measured = measure(system, lab, repeats=args.repeats,
                                       idle_window=args.idle_window,
                                       loss_window=args.loss_window, timeout=args.timeout,
                                       log=log)
                    row[name] = measured.as_dict(system)
            rows.append(row)
    print(render_table(rows))
    for row in rows:
        for name in names:
            system_row = row[name]
            assert isinstance(system_row, dict)
            for note in system_row["notes"]:
                print(f"note: n={row['n']} {name}: {note}")
    print(f"\nloss window {args.loss_window:g} s at {LOSS_PERCENT}% input loss; idle window "
          f"{args.idle_window:g} s; {args.repeats} updates per size; load before "
          f"{load_before}, after {machine_load()}; wall {time.monotonic() - started:.0f} s")
    if args.json:
        print(json.dumps({"rows": rows, "loss_window_s": args.loss_window,
                          "idle_window_s": args.idle_window, "repeats": args.repeats,
                          "load_before": load_before, "load_after": machine_load()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
