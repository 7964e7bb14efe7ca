"""DNS benchmark: vxmesh's endpoint resolver against dnsmasq, same names, same client, same run.

What it measures (root needed; everything lives in namespaces it makes and deletes):
- throughput and latency: `dnsperf` (Debian) in a client namespace sends A queries for
  `--names` endpoint names for `--duration` seconds with `--outstanding` queries in flight,
  (a) to vxmesh's resolver at 127.0.0.11:53 inside the client namespace (agent.dns.resolver
  with a zone of those names, run by this process on trio, as the agent runs it), and
  (b) to dnsmasq answering the same names from a static hosts file, in its own namespace
  over a veth. Runs alternate A B A B (`--repeats` each) so machine noise shows. Latency
  percentiles come from dnsperf's per-query report of a paced run after each throughput run
  (one query in flight, 1,000 per second), so they show answer time, not queueing.
- propagation: `--lab-hosts` real agents in a `vxmesh lab` (its own directory and prefix):
  an endpoint with a name is created on h1, and every other host's resolver is asked for it
  until it answers; then it is deleted and asked until it no longer resolves. p99 over
  `--propagation-runs` names.

Prints a table and, with --json, one JSON object as its last line: `qps`, `qps_baseline`,
`qps_ratio`, `p50_ms`, `p99_ms`, `p50_ms_baseline`, `p99_ms_baseline`, `propagation_s_p99`,
`delete_propagation_s_p99`. Targets (issue 18): qps_ratio >= 0.5, p99 <= 2 ms, propagation
p99 <= 1 s.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from underlay.netns_exec import ip_netns_exec

# Run as a file, this script's folder comes first on sys.path, and this file would shadow
# dnspython's `dns` package: the folder is dropped (no bench/ module is imported here).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent]

import dns.message  # noqa: E402
import dns.rcode  # noqa: E402
import trio  # noqa: E402

from agent.dns.resolver import DnsResolver  # noqa: E402
from agent.dns.zone import DnsZone  # noqa: E402
from overlay.attributes import make_attributes  # noqa: E402
from overlay.table import EndpointChanged, Entry  # noqa: E402
from underlay.netns_sockets import open_socket_in_netns  # noqa: E402

DNSMASQ = "/usr/sbin/dnsmasq"
NETWORK = "bench"
CLIENT_ADDR, SERVER_ADDR = "10.253.0.1", "10.253.0.2"


@dataclass(frozen=True)
class Run:
    """One dnsperf run: queries per second and per-query latencies (seconds)."""

    qps: float
    latencies: list[float]
    lost: int


def ip(*args: str, netns: str | None = None, check: bool = True) -> None:
    argv = ip_netns_exec(netns, ["ip", *args]) if netns else ["ip", *args]
    subprocess.run(argv, check=check, capture_output=True, timeout=30)


@contextlib.contextmanager
def namespaces(prefix: str) -> Iterator[tuple[str, str]]:
    """A client and a server namespace joined by a veth; deleted whatever happens."""
    client, server = f"{prefix}c", f"{prefix}s"
    try:
        for ns in (client, server):
            subprocess.run(["ip", "netns", "add", ns], check=True, timeout=30)
            ip("link", "set", "lo", "up", netns=ns)
        ip("link", "add", f"{prefix}a", "type", "veth", "peer", "name", f"{prefix}b")
        ip("link", "set", f"{prefix}a", "netns", client)
        ip("link", "set", f"{prefix}b", "netns", server)
        ip("addr", "add", f"{CLIENT_ADDR}/30", "dev", f"{prefix}a", netns=client)
        ip("addr", "add", f"{SERVER_ADDR}/30", "dev", f"{prefix}b", netns=server)
        ip("link", "set", f"{prefix}a", "up", netns=client)
        ip("link", "set", f"{prefix}b", "up", netns=server)
        yield client, server
    finally:
        for ns in (client, server):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def endpoint_names(count: int) -> list[tuple[str, str]]:
    base = ipaddress.ip_address("10.10.0.2")
    return [(f"ep{i}", str(base + i)) for i in range(count)]


def dnsperf(netns: str, server: str, queries: Path, duration: float, outstanding: int,
            max_qps: int = 0) -> Run:
    argv = ip_netns_exec(netns, ["dnsperf", "-s", server, "-d", str(queries),
                                 "-l", str(duration), "-q", str(outstanding), "-t", "2", "-v"])
    if max_qps:
        argv += ["-Q", str(max_qps)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60,
                         check=True).stdout
    qps = float(re.search(r"Queries per second:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lost = int(re.search(r"Queries lost:\s+(\d+)", out).group(1))  # type: ignore[union-attr]
    answers = [line for line in out.splitlines() if line.startswith("> ")]
    latencies = [float(line.rsplit(" ", 1)[1]) for line in answers
                 if line.startswith("> NOERROR")]
    if len(latencies) < 0.99 * len(answers):
        raise RuntimeError(f"{server}: only {len(latencies)} of {len(answers)} answers NOERROR")
    return Run(qps, latencies, lost)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def throughput(args: argparse.Namespace) -> tuple[list[Run], list[Run]]:
    names = endpoint_names(args.names)
    prefix = f"vxd{os.getpid() % 10000}"
    ours: list[Run] = []
    baseline: list[Run] = []
    with namespaces(prefix) as (client, server), tempfile.TemporaryDirectory() as tmp:
        Path(tmp).chmod(0o755)  # dnsmasq reads its hosts file after dropping root
        hosts = Path(tmp, "hosts")
        hosts.write_text("".join(f"{addr} {name}\n" for name, addr in names))
        hosts.chmod(0o644)
        rng = random.Random(1)
        queries = Path(tmp, "queries")
        queries.write_text("".join(f"{rng.choice(names)[0]} A\n" for _ in range(20_000)))
        zone = DnsZone()
        for name, addr in names:
            entry = Entry(NETWORK, addr, "02:42:0a:0a:00:02", "h1", "10.77.0.11", 1,
                          attributes=make_attributes(name))
            zone.apply(EndpointChanged(NETWORK, addr, None, entry))
        dnsmasq = subprocess.Popen(
            ip_netns_exec(server, [
                DNSMASQ, "--keep-in-foreground", "--no-resolv", "--no-hosts",
                f"--addn-hosts={hosts}", f"--listen-address={SERVER_ADDR}", "--bind-interfaces",
                "--port=53", f"--pid-file={tmp}/dnsmasq.pid", "--cache-size=10000"]),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            await wait_answering(client, SERVER_ADDR)
            resolver = DnsResolver(zone, upstreams=(), forward=False)
            async with trio.open_nursery() as nursery:
                await nursery.start(resolver.run)
                await resolver.serve(client, (NETWORK,))
                for repeat in range(args.repeats):
                    for label, server_addr, runs in (("vxmesh", "127.0.0.11", ours),
                                                     ("dnsmasq", SERVER_ADDR, baseline)):
                        load = await trio.to_thread.run_sync(
                            dnsperf, client, server_addr, queries, args.duration,
                            args.outstanding)
                        # latency without queueing: one query in flight, 1,000 per second
                        paced = await trio.to_thread.run_sync(
                            dnsperf, client, server_addr, queries, args.latency_duration,
                            1, 1000)
                        runs.append(Run(load.qps, paced.latencies, load.lost + paced.lost))
                        print(f"  run {repeat + 1} {label:8s} {load.qps:9.0f} q/s  "
                              f"paced p50 {percentile(paced.latencies, 0.5) * 1e3:.3f} ms  "
                              f"p99 {percentile(paced.latencies, 0.99) * 1e3:.3f} ms  "
                              f"(under load p99 {percentile(load.latencies, 0.99) * 1e3:.2f} "
                              f"ms)  lost {load.lost + paced.lost}", file=sys.stderr,
                              flush=True)
                nursery.cancel_scope.cancel()
        finally:
            dnsmasq.terminate()
            dnsmasq.wait(timeout=10)
    return ours, baseline


async def wait_answering(netns: str, server: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await trio.to_thread.run_sync(resolves, netns, server, "ep0") is not None:
            return
        await trio.sleep(0.05)
    raise RuntimeError(f"{server} did not answer within {timeout} s")


def resolves(netns: str, server: str, name: str) -> list[str] | None:
    """The addresses `server` gives for `name`, asked from inside `netns`; None if no answer."""
    sock = open_socket_in_netns(netns, socket.AF_INET, socket.SOCK_DGRAM, bind=("0.0.0.0", 0))
    with sock:
        sock.settimeout(0.5)
        try:
            sock.sendto(dns.message.make_query(name, "A").to_wire(), (server, 53))
            reply = dns.message.from_wire(sock.recv(65535))
        except (OSError, dns.exception.DNSException):
            return None
    if reply.rcode() != dns.rcode.NOERROR:
        return []
    return [r.to_text() for rrset in reply.answer for r in rrset]


def propagation(args: argparse.Namespace) -> tuple[list[float], list[float]]:
    """Name-to-every-host times on a real lab: create on h1, ask h2..hN until it resolves."""
    from agent.api.client import ApiClient
    from agent.lab.hosts import Lab

    lab = Lab(Path(f"/run/vxmesh-bench-dns-{os.getpid()}"), f"bd{os.getpid() % 10000}")
    created: list[float] = []
    deleted: list[float] = []
    try:
        state = lab.up(args.lab_hosts)
        clients = {h.name: ApiClient(str(h.socket)) for h in state.hosts}
        first, others = state.hosts[0], state.hosts[1:]
        clients[first.name].request("POST", "/v1/networks",
                                    {"name": "dnsb", "subnet": "10.91.0.0/16"})
        askers = []
        for host in others:  # one endpoint per other host to ask from
            made = clients[host.name].request("POST", "/v1/endpoints",
                                              {"name": f"ask{host.name}", "network": "dnsb"})
            askers.append(made["netns"])
        for i in range(args.propagation_runs):
            name = f"web{i}"
            start = time.monotonic()
            clients[first.name].request("POST", "/v1/endpoints",
                                        {"name": name, "network": "dnsb"})
            created.append(wait_everywhere(askers, name, lambda r: bool(r), start))
            start = time.monotonic()
            clients[first.name].request("DELETE", f"/v1/endpoints/{name}")
            deleted.append(wait_everywhere(askers, name, lambda r: r == [], start))
            print(f"  name {name}: everywhere after {created[-1]:.3f} s, gone after "
                  f"{deleted[-1]:.3f} s", file=sys.stderr, flush=True)
    finally:
        lab.down()
    return created, deleted


def wait_everywhere(askers: list[str], name: str, done: Callable[[list[str] | None], bool],
                    start: float, timeout: float = 10.0) -> float:
    pending = set(askers)
    while pending and time.monotonic() - start < timeout:
        for netns in sorted(pending):
            if done(resolves(netns, "127.0.0.11", name)):
                pending.discard(netns)
    if pending:
        raise RuntimeError(f"{name}: not settled on {sorted(pending)} within {timeout} s")
    return time.monotonic() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--names", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per resolver, interleaved")
    parser.add_argument("--outstanding", type=int, default=20,
                        help="queries in flight in the throughput runs (dnsperf -q)")
    parser.add_argument("--latency-duration", type=float, default=3.0,
                        help="seconds of each paced latency run (1 in flight, 1,000/s)")
    parser.add_argument("--lab-hosts", type=int, default=3)
    parser.add_argument("--propagation-runs", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/dns.py: needs root (network namespaces)", file=sys.stderr)
        return 2
    ours, baseline = trio.run(throughput, args)
    created, deleted = propagation(args) if args.lab_hosts >= 2 else ([], [])
    qps = statistics.median(r.qps for r in ours)
    qps_base = statistics.median(r.qps for r in baseline)
    lat = [x for r in ours for x in r.latencies]
    lat_base = [x for r in baseline for x in r.latencies]
    result = {
        "names": args.names, "duration_s": args.duration, "repeats": args.repeats,
        "qps": round(qps), "qps_baseline": round(qps_base),
        "qps_ratio": round(qps / qps_base, 3),
        "qps_runs": [round(r.qps) for r in ours],
        "qps_runs_baseline": [round(r.qps) for r in baseline],
        "p50_ms": round(percentile(lat, 0.5) * 1e3, 3),
        "p99_ms": round(percentile(lat, 0.99) * 1e3, 3),
        "p50_ms_baseline": round(percentile(lat_base, 0.5) * 1e3, 3),
        "p99_ms_baseline": round(percentile(lat_base, 0.99) * 1e3, 3),
        "propagation_s_p99": round(percentile(created, 0.99), 3) if created else None,
        "delete_propagation_s_p99": round(percentile(deleted, 0.99), 3) if deleted else None,
    }
    print(f"\n{'':24s}{'vxmesh':>12s}{'dnsmasq':>12s}{'ratio':>8s}")
    print(f"{'queries/s (median)':24s}{qps:12.0f}{qps_base:12.0f}{qps / qps_base:8.2f}")
    print(f"{'latency p50 (ms)':24s}{result['p50_ms']:12.3f}{result['p50_ms_baseline']:12.3f}")
    print(f"{'latency p99 (ms)':24s}{result['p99_ms']:12.3f}{result['p99_ms_baseline']:12.3f}")
    if created:
        print(f"{'name everywhere p99 (s)':24s}{result['propagation_s_p99']:12.3f}")
        print(f"{'name gone p99 (s)':24s}{result['delete_propagation_s_p99']:12.3f}")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
