"""Network policy cost: throughput and latency with 0, 100 and 1,000 policies, and the time from
an endpoint's creation to its enforcement.

Usage: flock /work/bench.lock bench/policy.py [--seconds 3] [--rounds 5] [--creates 20] [--json]

Throughput and latency: a client and a server namespace, each on a veth into a bridge in a
middle namespace with bridge netfilter on (as on an agent's host). In the middle, the table
`underlay.policy_table` plans for N policies (N = 0: no table; N = 1 shows what any table
costs, conntrack included, apart from the number of rules) and 10,000 selected endpoints
spread over them, loaded with one `nft -f`; the server is selected by the last policy and the
client allowed by it, so a new flow walks every allow rule before its accept. Measured:
iperf3 TCP (1 stream, `--seconds`, the client pinned to CPU 0 and the server to CPU 1 with
iperf3 -A when there are two CPUs), and the mean round trip of 200 pings at 10 ms. Rounds are
interleaved and bracketed by baselines: 0, 1, 100, 1000, 0, 1, ..., 0 (`--rounds` of
them, at least 5 to judge). Each round's loss is paired with its own baseline, the mean of the
0 before and the 0 after it: loss_N(r) = 1 - gbps_N(r) / baseline(r). `loss_N` is the median
over rounds, with the spread (min, max) beside it; `noise` is the median relative difference
between consecutive baselines (what the machine alone moves). The 5% target at 1,000 policies
is "met" when loss_1000 <= 0.05, and the verdict is judgeable only when noise is below 0.05
and there are at least 5 rounds.

Enforcement: a real two-host lab (`agent.lab.hosts.Lab`), one ingress policy selecting
app=x; `--creates` endpoints labelled app=x are created one after the other on h2; for each,
the time from the create request to its address in h2's selected set (polled every 10 ms),
and the part of it after the create request answered (the endpoint's creation itself is the
rest). `enforce_s_p99` is the largest of them when there are fewer than 100.

JSON last line: `loss_1`, `loss_100`, `loss_1000` (fractions), their `_spread`, `noise`,
`judgeable`, `target_met`, `enforce_s_p99`, and the per-N figures.
Rules: everything runs in namespaces this script creates and deletes (even on failure);
processes it starts are stopped by pid. Run under `flock /work/bench.lock`.
May import: agent.lab, underlay, the standard library.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import itertools
import json
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from agent.lab.hosts import Lab
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

COUNTS = (0, 1, 100, 1000)
"""1: the fixed cost of any policy (br_netfilter hooks and conntrack), apart from the rules'."""
SELECTED = 10_000
NETWORK = "bench"
SERVER, CLIENT = "10.208.0.2", "10.208.0.3"
TARGET_LOSS = 0.05


def _run(argv: list[str], *, input_text: str | None = None, timeout: float = 60) -> str:
    return subprocess.run(argv, input=input_text, text=True, capture_output=True, check=True,
                          timeout=timeout).stdout


def _in(ns: str, argv: list[str], **kwargs: object) -> str:
    return _run(ip_netns_exec(ns, argv), **kwargs)  # type: ignore[arg-type]


@contextlib.contextmanager
def namespaces(tag: str) -> Iterator[tuple[str, str, str]]:
    """(client, middle, server) namespaces; deleted on exit."""
    names = tuple(f"{tag}{role}" for role in ("c", "m", "s"))
    client, middle, server = names
    try:
        for ns in names:
            _run(["ip", "netns", "add", ns])
        _in(middle, ["ip", "link", "add", "br0", "type", "bridge"])
        _in(middle, ["ip", "link", "set", "br0", "up"])
        for ns, ip in ((client, CLIENT), (server, SERVER)):
            _in(middle, ["ip", "link", "add", "p" + ns[-1], "type", "veth", "peer", "name",
                         "eth0", "netns", ns])
            _in(middle, ["ip", "link", "set", "p" + ns[-1], "master", "br0", "up"])
            _in(ns, ["ip", "addr", "add", f"{ip}/16", "dev", "eth0"])
            _in(ns, ["ip", "link", "set", "eth0", "up"])
            _in(ns, ["ip", "link", "set", "lo", "up"])
        for name in ("bridge-nf-call-iptables", "bridge-nf-call-ip6tables"):
            _in(middle, ["sysctl", "-qw", f"net.bridge.{name}=1"])
        yield client, middle, server
    finally:
        for ns in names:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def policy_script(count: int) -> str:
    """The table for `count` policies and SELECTED endpoints (server last-selected)."""
    rules = [PolicyRule(f"p{i}", NETWORK, False, ("app", f"s{i}"), (("app", f"c{i}"),))
             for i in range(count)]
    endpoints = [PolicyEndpoint(NETWORK, str(ipaddress.ip_address("10.209.0.0") + i),
                                (("app", f"s{i % count}"),), True) for i in range(SELECTED)]
    endpoints += [PolicyEndpoint(NETWORK, SERVER, (("app", f"s{count - 1}"),), True),
                  PolicyEndpoint(NETWORK, CLIENT, (("app", f"c{count - 1}"),), False)]
    script = policy_transaction(None, plan_policy(rules, endpoints))
    assert script is not None
    return script


def _pinning() -> list[str]:
    """iperf3's CPU affinity: client on CPU 0, server on CPU 1 (none on one CPU)."""
    return ["-A", "0,1"] if (os.cpu_count() or 1) >= 2 else []


def measure(client: str, server: str, seconds: float) -> tuple[float, float]:
    """(gbps, mean ping ms) from client to server."""
    iperf = subprocess.Popen(ip_netns_exec(server, ["iperf3", "-s", "-1", "-p", "5201"]),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        while True:  # the server may not listen yet: retry a refused connection
            answer = json.loads(subprocess.run(
                ip_netns_exec(client, ["iperf3", "-c", SERVER, "-p", "5201", "-t",
                                       str(seconds), *_pinning(), "-J"]),
                capture_output=True, text=True, timeout=seconds + 30, check=False).stdout)
            if "error" not in answer:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"iperf3: {answer['error']}")
            time.sleep(0.1)
        gbps = answer["end"]["sum_received"]["bits_per_second"] / 1e9
    finally:
        iperf.kill()
        iperf.wait(timeout=10)
    ping = _in(client, ["ping", "-n", "-q", "-c", "200", "-i", "0.01", SERVER], timeout=60)
    found = re.search(r"= [\d.]+/([\d.]+)/", ping)
    return gbps, float(found.group(1)) if found else float("nan")


@dataclass(frozen=True)
class Throughput:
    """Every run of every N in measuring order, and the figures paired with the baselines."""

    runs: dict[int, list[tuple[float, float]]]
    """N -> [(gbps, ping ms)] per round; N = 0 has one more (the closing baseline)."""

    def baseline(self, index: int) -> float:
        zeros = self.runs[0]
        return (zeros[index][0] + zeros[index + 1][0]) / 2

    def losses(self, count: int) -> list[float]:
        return [1 - gbps / self.baseline(i) for i, (gbps, _) in enumerate(self.runs[count])]

    def noise(self) -> float:
        zeros = [g for g, _ in self.runs[0]]
        return statistics.median(abs(b - a) / ((a + b) / 2) for a, b in itertools.pairwise(zeros))


def throughput(seconds: float, rounds: int) -> Throughput:
    """Interleaved rounds (0, 100, 1000) x `rounds`, then a closing 0."""
    runs: dict[int, list[tuple[float, float]]] = {n: [] for n in COUNTS}
    scripts = {n: policy_script(n) for n in COUNTS if n}
    order = [n for _ in range(rounds) for n in COUNTS] + [0]
    with namespaces(f"bp21{os.getpid() % 1000}") as (client, middle, server):
        for count in order:
            _in(middle, ["nft", "-f", "-"], input_text=removal_transaction())
            if count:
                _in(middle, ["nft", "-f", "-"], input_text=scripts[count], timeout=120)
            runs[count].append(measure(client, server, seconds))
        _in(middle, ["nft", "-f", "-"], input_text=removal_transaction())
    return Throughput(runs)


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
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--creates", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not 1 <= args.rounds <= 50 or not 1 <= args.seconds <= 60 or not 1 <= args.creates <= 1000:
        parser.error("--rounds 1-50, --seconds 1-60, --creates 1-1000")
    measured = throughput(args.seconds, args.rounds)
    pairs = enforcement(args.creates)
    times = sorted(total for total, _ in pairs)
    after = sorted(total - create for total, create in pairs)  # from the create's answer
    p99 = _p99(times)
    print("| policies | Gbit/s median | min - max | ping ms median | loss vs paired 0: median |"
          " min - max |")
    print("|---|---|---|---|---|---|")
    figures: dict[str, dict[str, object]] = {}
    for count in COUNTS:
        gbps = [g for g, _ in measured.runs[count]]
        ping = statistics.median(p for _, p in measured.runs[count])
        row: dict[str, object] = {"gbps": round(statistics.median(gbps), 3),
                                  "gbps_runs": [round(g, 3) for g in gbps],
                                  "ping_ms": round(ping, 4)}
        loss = "-"
        if count:
            losses = measured.losses(count)
            row |= {"loss": round(statistics.median(losses), 4),
                    "loss_spread": [round(min(losses), 4), round(max(losses), 4)],
                    "loss_runs": [round(x, 4) for x in losses]}
            loss = f"{row['loss']:.3f} | {min(losses):.3f} - {max(losses):.3f}"
        else:
            loss = "(baseline) | -"
        figures[str(count)] = row
        print(f"| {count} | {row['gbps']:.3f} | {min(gbps):.3f} - {max(gbps):.3f} | "
              f"{ping:.3f} | {loss} |")
    noise = measured.noise()
    loss_1000 = float(figures["1000"]["loss"])  # type: ignore[arg-type]
    judgeable = noise < TARGET_LOSS and args.rounds >= 5
    met = loss_1000 <= TARGET_LOSS
    print(f"baseline noise (median change between consecutive 0-policy runs): {noise:.3f}")
    print(f"target loss_1000 <= {TARGET_LOSS}: {'met' if met else 'missed'} "
          f"({loss_1000:.3f}); {'judgeable' if judgeable else 'NOT judgeable (noise or rounds)'}")
    print(f"enforcement: {len(times)} creates, median {statistics.median(times):.3f} s, "
          f"p99 {p99:.3f} s (target <= 1 s); of which after the create request answered: "
          f"median {statistics.median(after):.3f} s, p99 {_p99(after):.3f} s")
    report = {"loss_1": figures["1"]["loss"], "loss_100": figures["100"]["loss"],
              "loss_1000": loss_1000,
              "loss_100_spread": figures["100"]["loss_spread"],
              "loss_1000_spread": figures["1000"]["loss_spread"],
              "noise": round(noise, 4), "judgeable": judgeable, "target_met": met,
              "rounds": args.rounds, "pinned": bool(_pinning()),
              "enforce_s_p99": round(p99, 4), "enforce_s": [round(t, 4) for t in times],
              "enforce_after_create_s_p99": round(_p99(after), 4),
              "by_policies": figures, "selected_endpoints": SELECTED}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
