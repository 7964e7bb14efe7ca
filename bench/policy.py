"""Network policy cost: throughput, CPU and latency with 1, 100 and 1,000 policies against the
agent's own no-policy state, and the time from an endpoint's creation to its enforcement.

Usage: flock /work/bench.lock bench/policy.py [--seconds 1] [--rounds 30] [--creates 30] [--json]

The baseline is what an agent's host already runs with an overlay network and no policy, not
an empty namespace: bridge netfilter is on (`net.bridge.bridge-nf-call-iptables` is 1 in every
namespace once br_netfilter is loaded, and Docker loads it), and the agent's `ip vxmesh` table
(egress MASQUERADE, the overlay's isolation in a forward chain; `underlay.nat_table` renders
it here for the bench's bridge, as `underlay.endpoints` does for a real one) registers the NAT
and filter hooks and conntrack, so bridged packets between the network's endpoints are already
tracked. Policy adds the `inet vxmesh_policy` table on top of that.

Variants, each in a namespace triple of its own (a client and a server namespace, each on a
veth into a bridge in a middle one; switching variant between runs costs nothing); the rounds
are split into as many blocks as there are variants, and before each block every variant's
rule set moves to the next triple (a triple's own speed is then shared by all variants):
- `agent`: the agent's no-policy rule set: THE BASELINE;
- `control`: the same rule set in other namespaces (an A/A check: its "loss" is the method's
  own noise, and its 95% interval is the `noise` the verdict is judged against);
- `none`: no table at all (what the agent's own table costs, for reference);
- `1`, `100`, `1000`: the agent's table plus the policy table `underlay.policy_table` plans for
  N policies and 10,000 selected endpoints spread over them (the server is selected by the last
  policy and the client allowed by it, so a new flow walks every allow rule before its accept;
  N = 1 is what any policy table costs apart from the number of rules);
- `1000u`: the same 1,000 policies, the server selected by none of them (a new flow of
  traffic no policy is about leaves the policy chain after one set lookup).

Measured per run: iperf3 TCP (1 stream, `--seconds`, the client pinned to CPU 0 and the server
to CPU 1 with iperf3 -A when there are two CPUs), iperf3's own CPU time of client and server
(getrusage: softirq work done in their context is charged to them on this kernel's tick
accounting) per GB received, which other jobs on the shared machine move far less than
throughput, the mean round trip of 50 pings at 5 ms, and the median time of 200 TCP handshakes,
a new connection each (`pathbench.py --connect-client`, pinned like iperf3: a new flow's first
packet is the one that walks the policy rules; every later packet is accepted by the first
rule, `ct state established,related accept`). Order: the baseline between every two runs
(agent X agent Y agent ...), the others rotated every round. Each run of a variant is paired
with the mean of the two baseline runs around it: loss(run) = 1 - gbps / baseline, and the
extra CPU per GB and extra connect time the same way. Per variant: the median over rounds,
its 95% bootstrap interval (2,000 resamples, seeded) and the min - max. The 5% target at 1,000
policies is met when loss_1000 <= 0.05; the verdict is judgeable when the noise (half the width
of the control's interval) is below 0.05 and loss_1000's interval lies wholly on one side of
0.05.

Enforcement: a real two-host lab (`agent.lab.hosts.Lab`), one ingress policy selecting
app=x; `--creates` endpoints labelled app=x are created one after the other on h2; for each,
the time from the create request to its address in h2's selected set (polled every 10 ms),
and the part of it after the create request answered (the endpoint's creation itself is the
rest). `enforce_s_p99` is the largest of them when there are fewer than 100.

JSON last line: `loss_100`, `loss_1000` (fractions), `enforce_s_p99`; also `loss_1`,
`loss_none`, `loss_control`, each `_ci95` and `_spread`, `cpu_extra_*` and `connect_extra_*`
(fractions of the baseline's CPU per GB and connect time), `noise`, `judgeable`, `target_met`,
load averages, and per variant.
Rules: everything runs in namespaces this script creates and deletes (even on failure);
processes it starts are stopped by pid. Run under `flock /work/bench.lock`.
May import: agent.lab, underlay, bench/pathbench.py, the standard library.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import itertools
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from pathbench import CLIENT_CPU, SERVER_CPU, Servers, loadavg, pinned, rotated

from agent.lab.hosts import Lab
from underlay.endpoints_model import EndpointsConfig
from underlay.nat_table import OverlayEgress, replace_transaction
from underlay.netns_exec import ip_netns_exec
from underlay.policy_table import (
    FAMILY,
    TABLE,
    PolicyEndpoint,
    PolicyRule,
    plan_policy,
    policy_transaction,
    removal_transaction,
)

BASELINE = "agent"
CONTROL = "control"
POLICY_COUNTS = (1, 100, 1000)
UNSELECTED = "1000u"
"""1,000 policies, the server selected by none of them (traffic no policy is about)."""
VARIANTS = (BASELINE, CONTROL, "none", *(str(n) for n in POLICY_COUNTS), UNSELECTED)
SELECTED = 10_000
NETWORK = "bench"
SUBNET = "10.208.0.0/16"
SERVER, CLIENT = "10.208.0.2", "10.208.0.3"
TARGET_LOSS = 0.05
RESAMPLES = 2000
CONNECT_PORT = 7021
CONNECTS = 200
PROBE = Path(__file__).resolve().with_name("pathbench.py")
"""The connection probe (`--connect-server` / `--connect-client`)."""


def _run(argv: list[str], *, input_text: str | None = None, timeout: float = 60) -> str:
    return subprocess.run(argv, input=input_text, text=True, capture_output=True, check=True,
                          timeout=timeout).stdout


def _in(ns: str, argv: list[str], **kwargs: object) -> str:
    return _run(ip_netns_exec(ns, argv), **kwargs)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Triple:
    """One variant's namespaces: traffic goes client -> bridge in middle -> server."""

    client: str
    middle: str
    server: str


def _build(tag: str) -> Triple:
    triple = Triple(*(f"{tag}{role}" for role in ("c", "m", "s")))
    for ns in (triple.client, triple.middle, triple.server):
        _run(["ip", "netns", "add", ns])
    _in(triple.middle, ["ip", "link", "add", "br0", "type", "bridge"])
    _in(triple.middle, ["ip", "link", "set", "br0", "up"])
    for ns, ip in ((triple.client, CLIENT), (triple.server, SERVER)):
        _in(triple.middle, ["ip", "link", "add", "p" + ns[-1], "type", "veth", "peer", "name",
                            "eth0", "netns", ns])
        _in(triple.middle, ["ip", "link", "set", "p" + ns[-1], "master", "br0", "up"])
        _in(ns, ["ip", "addr", "add", f"{ip}/16", "dev", "eth0"])
        _in(ns, ["ip", "link", "set", "eth0", "up"])
        _in(ns, ["ip", "link", "set", "lo", "up"])
    for name in ("bridge-nf-call-iptables", "bridge-nf-call-ip6tables"):  # as on an agent host
        _in(triple.middle, ["sysctl", "-qw", f"net.bridge.{name}=1"])
    return triple


@contextlib.contextmanager
def namespaces(tag: str, count: int) -> Iterator[list[Triple]]:
    """`count` namespace triples; all deleted on exit."""
    made: list[str] = []
    try:
        triples = []
        for index in range(count):
            made += [f"{tag}{index}{role}" for role in ("c", "m", "s")]
            triples.append(_build(f"{tag}{index}"))
        yield triples
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def agent_script() -> str:
    """The agent's rule set for a host with one overlay network (the bench's bridge) and no
    policy, rendered by the code the agent runs (`underlay.endpoints` applies the same)."""
    config = EndpointsConfig(state_dir=Path("/nonexistent"))
    return replace_transaction(config.nft_table, config.bridges, [],
                               (OverlayEgress(NETWORK, "br0", SUBNET),))


def policy_script(count: int, *, server_selected: bool = True) -> str:
    """The policy table for `count` policies and SELECTED endpoints (the server selected by
    the last policy and the client allowed by it, or, not `server_selected`, neither)."""
    rules = [PolicyRule(f"p{i}", NETWORK, False, ("app", f"s{i}"), (("app", f"c{i}"),))
             for i in range(count)]
    endpoints = [PolicyEndpoint(NETWORK, str(ipaddress.ip_address("10.209.0.0") + i),
                                (("app", f"s{i % count}"),), True) for i in range(SELECTED)]
    last = count - 1 if server_selected else "none"
    endpoints += [PolicyEndpoint(NETWORK, SERVER, (("app", f"s{last}"),), True),
                  PolicyEndpoint(NETWORK, CLIENT, (("app", f"c{last}"),), False)]
    script = policy_transaction(None, plan_policy(rules, endpoints))
    assert script is not None
    return script


def variant_scripts(variant: str) -> list[str]:
    """The nft scripts the middle namespace of `variant` is loaded with, in order."""
    if variant == "none":
        return []
    if variant in (BASELINE, CONTROL):
        return [agent_script()]
    if variant == UNSELECTED:
        return [agent_script(), policy_script(1000, server_selected=False)]
    return [agent_script(), policy_script(int(variant))]


def _pinning() -> list[str]:
    """iperf3's CPU affinity: client on CPU 0, server on CPU 1 (none on one CPU)."""
    return ["-A", "0,1"] if (os.cpu_count() or 1) >= 2 else []


@dataclass(frozen=True)
class Run:
    """One measurement: Gbit/s received, iperf3's CPU seconds (client + server) per GB
    received, mean ping ms, median microseconds of a new TCP connection's handshake."""

    gbps: float
    cpu_s_per_gb: float
    ping_ms: float
    connect_us: float


def measure(triple: Triple, seconds: int) -> Run:
    deadline = time.monotonic() + 10
    while True:  # the server may not listen yet: retry a refused connection
        answer = json.loads(subprocess.run(
            ip_netns_exec(triple.client, ["iperf3", "-c", SERVER, "-p", "5201", "-t",
                                          str(seconds), *_pinning(), "-J"]),
            capture_output=True, text=True, timeout=seconds + 30, check=False).stdout)
        if "error" not in answer:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"iperf3: {answer['error']}")
        time.sleep(0.1)
    received = answer["end"]["sum_received"]
    cpu = answer["end"]["cpu_utilization_percent"]
    gigabytes = received["bytes"] / 1e9
    cpu_seconds = (cpu["host_total"] + cpu["remote_total"]) / 100 * received["seconds"]
    ping = _in(triple.client, ["ping", "-n", "-q", "-c", "50", "-i", "0.005", SERVER],
               timeout=60)
    found = re.search(r"= [\d.]+/([\d.]+)/", ping)
    connect = _in(triple.client, pinned(CLIENT_CPU, [
        sys.executable, str(PROBE), "--connect-client", SERVER, str(CONNECT_PORT),
        str(CONNECTS)]), timeout=60)
    return Run(received["bits_per_second"] / 1e9, cpu_seconds / gigabytes,
               float(found.group(1)) if found else float("nan"),
               float(connect.strip().splitlines()[-1]))


def schedule(others: Sequence[str], rounds: range) -> list[str]:
    """The measuring order of `rounds`: the baseline before every other run and once more at
    the end, the others rotated by one every round (so a load burst does not always hit the
    same one)."""
    order: list[str] = []
    for round_number in rounds:
        for variant in rotated(others, round_number):
            order += [BASELINE, variant]
    return [*order, BASELINE]


def blocks(rounds: int) -> list[range]:
    """The rounds split into at most len(VARIANTS) blocks of (nearly) equal size."""
    count = min(rounds, len(VARIANTS))
    edges = [rounds * b // count for b in range(count + 1)]
    return [range(start, end) for start, end in itertools.pairwise(edges)]


def assignment(block: int) -> dict[str, int]:
    """The namespace triple (by index) holding each variant during `block`: every variant moves
    to the next triple each block, so what one triple is faster or slower at by itself (where
    its devices' memory landed, say) is shared by all variants instead of biasing one."""
    return {variant: (i + block) % len(VARIANTS) for i, variant in enumerate(VARIANTS)}


def paired_changes(order: Sequence[str], values: Sequence[float]) -> dict[str, list[float]]:
    """Per variant, each run's value relative to the mean of the baseline runs just before and
    after it, minus 1 (values[i] was measured for order[i]; every other run has a baseline on
    both sides)."""
    changes: dict[str, list[float]] = {}
    for i, variant in enumerate(order):
        if variant == BASELINE:
            continue
        neighbours = order[i - 1:i + 2:2] if 0 < i < len(order) - 1 else []
        if neighbours != [BASELINE, BASELINE]:
            raise ValueError(f"run {i} ({variant}) is not between two baseline runs")
        baseline = (values[i - 1] + values[i + 1]) / 2
        changes.setdefault(variant, []).append(values[i] / baseline - 1)
    return changes


@dataclass(frozen=True)
class Estimate:
    """The median of some values with its 95% bootstrap interval and the min - max."""

    median: float
    low95: float
    high95: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float], rng: random.Random) -> Estimate:
        medians = sorted(statistics.median(rng.choices(values, k=len(values)))
                         for _ in range(RESAMPLES))
        return cls(statistics.median(values), medians[int(0.025 * RESAMPLES)],
                   medians[int(0.975 * RESAMPLES) - 1], min(values), max(values))

    def negated(self) -> Estimate:
        """The same figures for -values (a throughput change as a loss)."""
        return Estimate(-self.median, -self.high95, -self.low95, -self.high, -self.low)

    @property
    def half_width(self) -> float:
        return (self.high95 - self.low95) / 2

    def json(self) -> dict[str, object]:
        return {"median": round(self.median, 4),
                "ci95": [round(self.low95, 4), round(self.high95, 4)],
                "spread": [round(self.low, 4), round(self.high, 4)]}

    def text(self) -> str:
        return (f"{self.median:+.3f} [{self.low95:+.3f}, {self.high95:+.3f}] "
                f"({self.low:+.3f} - {self.high:+.3f})")


def verdict(loss_1000: Estimate, control: Estimate, rounds: int) -> tuple[bool, bool, float]:
    """(target met, judgeable, noise): noise is half the width of the control's interval."""
    noise = control.half_width
    decided = loss_1000.high95 <= TARGET_LOSS or loss_1000.low95 > TARGET_LOSS
    return loss_1000.median <= TARGET_LOSS, noise < TARGET_LOSS and decided and rounds >= 10, noise


@dataclass(frozen=True)
class Throughput:
    """Every run in measuring order, and the load averages around them."""

    order: list[str]
    runs: list[Run]
    load_before: str
    load_after: str

    def of(self, variant: str) -> list[Run]:
        return [run for name, run in zip(self.order, self.runs, strict=True) if name == variant]

    def changes(self, field: str) -> dict[str, list[float]]:
        return paired_changes(self.order, [getattr(run, field) for run in self.runs])


def _load(middle: str, variant: str) -> None:
    """Take `middle` from whatever it holds to `variant`'s rule set (clearing both tables
    first, with the scripts the agent itself uses to remove them)."""
    config = EndpointsConfig(state_dir=Path("/nonexistent"))
    clear = replace_transaction(config.nft_table, config.bridges, [], ()) + removal_transaction()
    for script in [clear, *variant_scripts(variant)]:
        _in(middle, ["nft", "-f", "-"], input_text=script, timeout=120)


def start_servers(servers: Servers, triple: Triple) -> None:
    """The iperf3 server and the connection probe's server in `triple`'s server namespace."""
    servers.start(ip_netns_exec(triple.server, ["iperf3", "-s", "-p", "5201", "--forceflush"]),
                  "Server listening")
    servers.start(ip_netns_exec(triple.server, pinned(SERVER_CPU, [
        sys.executable, str(PROBE), "--connect-server", str(CONNECT_PORT)])), "ready")


def throughput(seconds: int, rounds: int) -> Throughput:
    """`rounds` rounds in blocks; before each block the variants move to other triples."""
    others = [v for v in VARIANTS if v != BASELINE]
    order: list[str] = []
    runs: list[Run] = []
    with (namespaces(f"bp21{os.getpid() % 1000}", len(VARIANTS)) as triples,
          tempfile.TemporaryDirectory(prefix="vxmesh-bench-policy-") as logs):
        servers = Servers(Path(logs))
        try:
            for triple in triples:
                start_servers(servers, triple)
            for triple in triples:  # warm-up (neighbours, caches): not counted
                measure(triple, 1)
            before = loadavg()
            for block, block_rounds in enumerate(blocks(rounds)):
                where = assignment(block)
                for variant, index in where.items():
                    _load(triples[index].middle, variant)
                block_order = schedule(others, block_rounds)
                runs += [measure(triples[where[variant]], seconds) for variant in block_order]
                order += block_order
            after = loadavg()
        finally:
            servers.stop()
    return Throughput(order, runs, before, after)


def _table(ns: str) -> str:
    """Our policy table in `ns` as nft lists it ("" while it does not exist)."""
    return subprocess.run(ip_netns_exec(ns, ["nft", "list", "table", FAMILY, TABLE]),
                          capture_output=True, text=True, timeout=10, check=False).stdout


def _holds(ns: str, address: str) -> bool:
    return address in _table(ns)


def enforcement(creates: int) -> list[tuple[float, float]]:
    """(seconds from each endpoint's create request to its address in the owner's set, seconds
    the create request itself took)."""
    directory = Path(tempfile.mkdtemp(prefix="vxmesh-bench-policy-"))
    lab = Lab(directory, prefix=f"q21{os.getpid() % 1000}")
    times: list[tuple[float, float]] = []
    try:
        state = lab.up(2)
        h1, h2 = state.hosts
        lab.client(h1).request("POST", "/v1/networks", {"name": NETWORK,
                                                         "subnet": "10.210.0.0/16"})
        lab.client(h1).request("POST", "/v1/policies", {"name": "x-in", "network": NETWORK,
                                                         "select": "app=x",
                                                         "allow": ["app=y"]})
        lab.wait_for(lambda: bool(_table(h2.netns)),
                     "h2 to enforce the policy", 10)
        for i in range(creates):
            started = time.monotonic()
            record = lab.client(h2).request("POST", "/v1/endpoints", {
                "name": f"x{i}", "network": NETWORK, "labels": {"app": "x"}})
            created = time.monotonic() - started
            lab.wait_for(partial(_holds, h2.netns, str(record["ip"])), f"x{i} enforced", 10,
                         interval=0.01)
            times.append((time.monotonic() - started, created))
    finally:
        lab.down()
        shutil.rmtree(directory, ignore_errors=True)
    return times


def _p99(sorted_values: list[float]) -> float:
    """The 99th percentile (the largest when there are fewer than 100)."""
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(0.99 * len(sorted_values)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--creates", type=int, default=30)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not 1 <= args.rounds <= 100 or not 1 <= args.seconds <= 60 or not 1 <= args.creates <= 1000:
        parser.error("--rounds 1-100, --seconds 1-60, --creates 1-1000")
    measured = throughput(args.seconds, args.rounds)
    pairs = enforcement(args.creates)
    times = sorted(total for total, _ in pairs)
    after = sorted(total - create for total, create in pairs)  # from the create's answer
    p99 = _p99(times)
    rng = random.Random(21)
    losses = {v: Estimate.of(c, rng).negated() for v, c in measured.changes("gbps").items()}
    cpu_extra = {v: Estimate.of(c, rng) for v, c in measured.changes("cpu_s_per_gb").items()}
    connect_extra = {v: Estimate.of(c, rng)
                     for v, c in measured.changes("connect_us").items()}
    print(f"{args.rounds} rounds of {args.seconds} s; load average before {measured.load_before}"
          f", after {measured.load_after}")
    print("| variant | Gbit/s median (min - max) | CPU s/GB | ping ms | connect us | loss vs paired"
          " baseline: median [95%] (min - max) | extra CPU per GB: median [95%] (min - max) |"
          " extra connect time: median [95%] (min - max) |")
    print("|---|---|---|---|---|---|---|---|")
    figures: dict[str, dict[str, object]] = {}
    for variant in VARIANTS:
        runs = measured.of(variant)
        gbps = [r.gbps for r in runs]
        row: dict[str, object] = {
            "gbps": round(statistics.median(gbps), 3),
            "gbps_spread": [round(min(gbps), 3), round(max(gbps), 3)],
            "cpu_s_per_gb": round(statistics.median(r.cpu_s_per_gb for r in runs), 4),
            "ping_ms": round(statistics.median(r.ping_ms for r in runs), 4),
            "connect_us": round(statistics.median(r.connect_us for r in runs), 1)}
        paired = "(baseline) | - | -"
        if variant != BASELINE:
            row |= {"loss": losses[variant].json(), "cpu_extra": cpu_extra[variant].json(),
                    "connect_extra": connect_extra[variant].json()}
            paired = (f"{losses[variant].text()} | {cpu_extra[variant].text()} | "
                      f"{connect_extra[variant].text()}")
        figures[variant] = row
        print(f"| {variant} | {row['gbps']:.3f} ({min(gbps):.3f} - {max(gbps):.3f}) | "
              f"{row['cpu_s_per_gb']:.3f} | {row['ping_ms']:.3f} | {row['connect_us']:.1f} | "
              f"{paired} |")
    loss_1000 = losses["1000"]
    met, judgeable, noise = verdict(loss_1000, losses[CONTROL], args.rounds)
    print(f"noise (half the 95% interval of the control, the baseline against itself): "
          f"{noise:.3f}")
    print(f"target loss_1000 <= {TARGET_LOSS}: {'met' if met else 'missed'} "
          f"({loss_1000.median:.3f}, 95% {loss_1000.low95:.3f} - {loss_1000.high95:.3f}); "
          f"{'judgeable' if judgeable else 'NOT judgeable (noise, interval or rounds)'}")
    print(f"enforcement: {len(times)} creates, median {statistics.median(times):.3f} s, "
          f"p99 {p99:.3f} s (target <= 1 s); of which after the create request answered: "
          f"median {statistics.median(after):.3f} s, p99 {_p99(after):.3f} s")
    report: dict[str, object] = {}
    for variant, estimate in losses.items():
        report[f"loss_{variant}"] = round(estimate.median, 4)
        report[f"loss_{variant}_ci95"] = [round(estimate.low95, 4), round(estimate.high95, 4)]
        report[f"loss_{variant}_spread"] = [round(estimate.low, 4), round(estimate.high, 4)]
        report[f"cpu_extra_{variant}"] = round(cpu_extra[variant].median, 4)
        report[f"connect_extra_{variant}"] = round(connect_extra[variant].median, 4)
    report |= {"noise": round(noise, 4), "judgeable": judgeable, "target_met": met,
               "baseline": BASELINE, "rounds": args.rounds, "seconds": args.seconds,
               "pinned": bool(_pinning()), "load_before": measured.load_before,
               "load_after": measured.load_after,
               "enforce_s_p99": round(p99, 4), "enforce_s": [round(t, 4) for t in times],
               "enforce_after_create_s_p99": round(_p99(after), 4),
               "by_variant": figures, "selected_endpoints": SELECTED}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
