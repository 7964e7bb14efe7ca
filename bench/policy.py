"""Network policy cost: throughput and latency with 0, 100 and 1,000 policies, and the time from
an endpoint's creation to its enforcement.

Usage: bench/policy.py [--seconds 3] [--rounds 2] [--creates 20] [--json]

Throughput and latency: a client and a server namespace, each on a veth into a bridge in a
middle namespace with bridge netfilter on (as on an agent's host). In the middle, the table
`underlay.policy_table` plans for N policies (N = 0: no table) and 10,000 selected endpoints
spread over them, loaded with one `nft -f`; the server is selected by the last policy and the
client allowed by it, so a new flow walks every allow rule before its accept. Measured:
iperf3 TCP (1 stream, `--seconds`), and the mean round trip of 200 pings at 10 ms. Rounds are
interleaved (0, 100, 1000, 0, 100, 1000, ...); the median per N counts. `loss_N` is
1 - gbps(N) / gbps(0) of the same run.

Enforcement: a real two-host lab (`agent.lab.hosts.Lab`), one ingress policy selecting
app=x; `--creates` endpoints labelled app=x are created one after the other on h2; for each,
the time from the create request to its address in h2's selected set (polled every 10 ms).
`enforce_s_p99` is the largest of them when there are fewer than 100.

JSON last line: `loss_100`, `loss_1000` (fractions), `enforce_s_p99`, and the per-N figures.
Rules: everything runs in namespaces this script creates and deletes (even on failure);
processes it starts are stopped by pid. Run under `flock /work/bench.lock`.
May import: agent.lab, underlay, the standard library.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
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

COUNTS = (0, 100, 1000)
SELECTED = 10_000
NETWORK = "bench"
SERVER, CLIENT = "10.208.0.2", "10.208.0.3"


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


def measure(client: str, server: str, seconds: float) -> tuple[float, float]:
    """(gbps, mean ping ms) from client to server."""
    iperf = subprocess.Popen(ip_netns_exec(server, ["iperf3", "-s", "-1", "-p", "5201"]),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        while True:  # the server may not listen yet: retry a refused connection
            answer = json.loads(subprocess.run(
                ip_netns_exec(client, ["iperf3", "-c", SERVER, "-p", "5201", "-t",
                                       str(seconds), "-J"]),
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


def throughput(seconds: float, rounds: int) -> dict[int, dict[str, float]]:
    results: dict[int, list[tuple[float, float]]] = {n: [] for n in COUNTS}
    scripts = {n: policy_script(n) for n in COUNTS if n}
    with namespaces(f"bp21{os.getpid() % 1000}") as (client, middle, server):
        for _ in range(rounds):
            for count in COUNTS:
                _in(middle, ["nft", "-f", "-"], input_text=removal_transaction())
                if count:
                    _in(middle, ["nft", "-f", "-"], input_text=scripts[count], timeout=120)
                results[count].append(measure(client, server, seconds))
        _in(middle, ["nft", "-f", "-"], input_text=removal_transaction())
    return {n: {"gbps": statistics.median(g for g, _ in runs),
                "ping_ms": statistics.median(p for _, p in runs),
                "gbps_runs": [round(g, 3) for g, _ in runs]}  # type: ignore[dict-item]
            for n, runs in results.items()}


def _table(ns: str) -> str:
    """Our policy table in `ns` as nft lists it ("" while it does not exist)."""
    return subprocess.run(ip_netns_exec(ns, ["nft", "list", "table", FAMILY, TABLE]),
                          capture_output=True, text=True, timeout=10, check=False).stdout


def _holds(ns: str, address: str) -> bool:
    return address in _table(ns)


def enforcement(creates: int) -> list[float]:
    """Seconds from each endpoint's create request to its address in the owner's set."""
    directory = Path(tempfile.mkdtemp(prefix="vxmesh-bench-policy-"))
    lab = Lab(directory, prefix=f"q21{os.getpid() % 1000}")
    times: list[float] = []
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
            lab.wait_for(partial(_holds, h2.netns, str(record["ip"])), f"x{i} enforced", 10,
                         interval=0.01)
            times.append(time.monotonic() - started)
    finally:
        lab.down()
        shutil.rmtree(directory, ignore_errors=True)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--creates", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    by_count = throughput(args.seconds, args.rounds)
    times = sorted(enforcement(args.creates))
    p99 = times[min(len(times) - 1, int(0.99 * len(times)))] if times else float("nan")
    base = by_count[0]["gbps"]
    print("| policies | Gbit/s (median) | runs | ping ms | loss vs 0 |")
    print("|---|---|---|---|---|")
    for count, row in by_count.items():
        print(f"| {count} | {row['gbps']:.3f} | {row['gbps_runs']} | {row['ping_ms']:.3f} | "
              f"{1 - row['gbps'] / base:.3f} |")
    print(f"enforcement: {len(times)} creates, median {statistics.median(times):.3f} s, "
          f"p99 {p99:.3f} s (target <= 1 s)")
    report = {"loss_100": round(1 - by_count[100]["gbps"] / base, 4),
              "loss_1000": round(1 - by_count[1000]["gbps"] / base, 4),
              "enforce_s_p99": round(p99, 4), "enforce_s": [round(t, 4) for t in times],
              "by_policies": {str(n): row for n, row in by_count.items()},
              "selected_endpoints": SELECTED}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
