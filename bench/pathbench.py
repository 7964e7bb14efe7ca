"""Repeated, interleaved, CPU-pinned throughput and latency between namespace endpoints.

Owns what the data-plane benchmarks (dataplane.py, modes.py) share, so their figures are
measured the same way:
- `Target`: one path (a server side and a client side, each an argv prefix that runs a command
  there, e.g. `ip netns exec NS`), the address and ports the client uses;
- persistent servers per server side (iperf3 and the request/response echo below), started
  once, their output in a temporary log file (never a pipe nobody reads), stopped by pid;
- `measure_interleaved`: `repeats` rounds, every round measures every target once, in an order
  rotated by one each round (A B C, B C A, C A B, ...), so a burst of load from elsewhere on the
  shared machine lands on different paths in different rounds instead of on one path; targets
  compared in pairs are grouped so they are always measured back to back;
- `Spread`: median with min and max of the rounds; `paired_ratio`: the ratio of two targets
  taken round by round (adjacent measurements), then its median and spread. Compare those,
  not single runs: on a busy 2-core machine one run per path swings by 0.84x-1.15x.

CPU pinning as in the anchor lab: the iperf3 and echo servers run on CPU 1 (`SERVER_CPU`), the
clients on CPU 0 (`CLIENT_CPU`), with taskset; softirq work follows the sending CPU, so every
path pays it alike. A one-CPU machine pins both to CPU 0.

The request/response probe is this file run as a script: `--rr-server PORT` echoes 64-byte
messages (TCP_NODELAY) on every connection it accepts; `--rr-client HOST PORT COUNT` times
COUNT exchanges after 200 warm-up ones and prints the median in microseconds. Python on both
ends in every path: compare ratios, not absolute microseconds. The connection probe the same
way: `--connect-server PORT` accepts and closes every connection; `--connect-client HOST PORT
COUNT` times COUNT TCP handshakes, a new connection each (reset at once: no TIME_WAIT), after
20 warm-up ones, and prints the median in microseconds (what a new flow's first packets cost,
which throughput over one connection never shows).

May import: the standard library.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

CLIENT_CPU = 0
SERVER_CPU = 1 if (os.cpu_count() or 1) > 1 else 0
IPERF_PORT = 5201
RR_PORT = 7007
RR_SIZE = 64
RR_COUNT = 3000
RR_WARMUP = 200
CONNECT_BACKLOG = 512
CONNECT_WARMUP = 20
T = TypeVar("T")


@dataclass(frozen=True)
class Target:
    """One measured path: `server`/`client` are argv prefixes running a command on each side
    (the server side is identified by `server_key`: targets sharing it share one server).
    Servers listen on IPERF_PORT and RR_PORT; the client connects to `address` on
    `iperf_port` and `rr_port` (other ports where a NAT publishes the servers')."""

    name: str
    server: tuple[str, ...]
    client: tuple[str, ...]
    address: str
    server_key: str
    iperf_port: int = IPERF_PORT
    rr_port: int = RR_PORT
    four_streams: bool = True  # also measure 4 streams (gbps_p4)


@dataclass(frozen=True)
class Spread:
    """The median of repeated measurements with their minimum and maximum."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> Spread:
        return cls(statistics.median(samples), min(samples), max(samples))

    def text(self, digits: int = 2) -> str:
        return f"{self.median:.{digits}f} ({self.low:.{digits}f}-{self.high:.{digits}f})"

    def json(self, digits: int = 3) -> list[float]:
        return [round(self.low, digits), round(self.high, digits)]


@dataclass
class Samples:
    """Every round's figures of one target (round i of each list is the same round)."""

    gbps_p1: list[float] = field(default_factory=list)
    gbps_p4: list[float] = field(default_factory=list)
    rr_us: list[float] = field(default_factory=list)

    def spread(self, metric: str) -> Spread:
        values: list[float] = getattr(self, metric)
        return Spread.of(values)


METRICS = ("gbps_p1", "gbps_p4", "rr_us")


def paired_ratio(numerator: Samples, denominator: Samples, metric: str) -> Spread:
    """numerator/denominator of `metric`, taken round by round (both measured in the same
    round, moments apart), as median and spread over the rounds."""
    pairs = zip(getattr(numerator, metric), getattr(denominator, metric), strict=True)
    return Spread.of([n / d for n, d in pairs])


def pinned(cpu: int, argv: Sequence[str]) -> list[str]:
    return ["taskset", "-c", str(cpu), *argv]


# --------------------------------------------------------------------------- probe


def _listener(port: int) -> socket.socket:
    """A listening TCP socket on `port`: IPv4 and IPv6 on one dual-stack socket, IPv4 only
    where the namespace has no IPv6."""
    try:
        listener = socket.socket(socket.AF_INET6)
        listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("::", port))
    except OSError:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("0.0.0.0", port))
    return listener


def rr_server(port: int) -> None:
    """Echo RR_SIZE-byte messages on each accepted connection, one after another."""
    with _listener(port) as listener:
        listener.listen(4)
        print("ready", flush=True)
        while True:
            conn, _ = listener.accept()
            with conn:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                while len(data := conn.recv(RR_SIZE, socket.MSG_WAITALL)) == RR_SIZE:
                    conn.sendall(data)


def connect_server(port: int) -> None:
    """Accept every connection and close it at once."""
    with _listener(port) as listener:
        listener.listen(CONNECT_BACKLOG)
        print("ready", flush=True)
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:  # reset by the client before it was taken
                continue
            conn.close()


def connect_client(host: str, port: int, count: int) -> None:
    """Time `count` TCP handshakes (a new connection each: connect() until it returns) after
    the warm-up ones; each is reset at once (SO_LINGER 0: no TIME_WAIT left behind). Prints
    the median in microseconds."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    samples = []
    for i in range(count + CONNECT_WARMUP):
        with socket.socket(family) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.settimeout(10)
            started = time.perf_counter_ns()
            sock.connect((host, port))
            if i >= CONNECT_WARMUP:
                samples.append(time.perf_counter_ns() - started)
    print(f"{statistics.median(samples) / 1000:.2f}")


def rr_client(host: str, port: int, count: int) -> None:
    """Time `count` exchanges after the warm-up; print the median in microseconds."""
    with socket.create_connection((host, port), timeout=10) as conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        payload = b"x" * RR_SIZE
        samples = []
        for i in range(count + RR_WARMUP):
            started = time.perf_counter_ns()
            conn.sendall(payload)
            if len(conn.recv(RR_SIZE, socket.MSG_WAITALL)) != RR_SIZE:
                raise SystemExit("echo server closed the connection")
            if i >= RR_WARMUP:
                samples.append(time.perf_counter_ns() - started)
    print(f"{statistics.median(samples) / 1000:.2f}")


# --------------------------------------------------------------------------- processes


class Servers:
    """Server processes started by this bench, each stopped by its pid."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], ready_word: str, timeout: float = 15) -> None:
        """Start `argv` (output to a log file, never a pipe nobody reads) and wait until
        its output says `ready_word`."""
        log = self.log_dir / f"server-{len(self.procs)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        deadline = time.monotonic() + timeout
        while ready_word.encode() not in log.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{argv!r} did not say {ready_word!r} within {timeout} s: "
                                   f"{log.read_bytes()[-300:]!r}")
            time.sleep(0.05)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=5)
        self.procs.clear()


@contextlib.contextmanager
def servers_for(targets: Sequence[Target]) -> Iterator[Servers]:
    """One iperf3 server and one echo server per distinct server side, stopped at exit."""
    log_dir = tempfile.TemporaryDirectory(prefix="vxmesh-pathbench-")
    servers = Servers(Path(log_dir.name))
    me = [sys.executable, str(Path(__file__).resolve())]
    started: set[str] = set()
    try:
        for target in targets:
            if target.server_key in started:
                continue
            started.add(target.server_key)
            # A client that vanishes mid-test must not leave the server busy for the next.
            servers.start([*target.server, *pinned(SERVER_CPU, [
                "iperf3", "-s", "-p", str(IPERF_PORT), "--forceflush",
                "--rcv-timeout", "5000", "--idle-timeout", "600"])], "Server listening")
            servers.start([*target.server, *pinned(SERVER_CPU, [
                *me, "--rr-server", str(RR_PORT)])], "ready")
        yield servers
    finally:
        servers.stop()
        log_dir.cleanup()


def iperf_gbps(target: Target, streams: int, seconds: float, attempts: int = 3) -> float:
    """Received Gbit/s of one pinned iperf3 TCP run; a run iperf3 reports as failed is
    retried (on a busy machine the control connection occasionally times out)."""
    problem = ""
    argv = [*target.client, *pinned(CLIENT_CPU, [
        "iperf3", "-c", target.address, "-p", str(target.iperf_port), "-t", str(seconds),
        "-P", str(streams), "-J", "--connect-timeout", "5000"])]
    for _ in range(attempts):
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 20,
                                  check=False)
        except subprocess.TimeoutExpired:
            problem = f"no result within {seconds + 20} s"
            continue
        try:
            report = json.loads(proc.stdout)
        except ValueError:
            report = {}
        received = report.get("end", {}).get("sum_received")
        if proc.returncode == 0 and received is not None:
            return float(received["bits_per_second"]) / 1e9
        problem = str(report.get("error") or proc.stderr[-300:] or proc.stdout[-300:])
    raise RuntimeError(f"iperf3 {target.name} to {target.address}: {attempts} failures: "
                       f"{problem}")


def request_response_us(target: Target, count: int = RR_COUNT) -> float:
    me = [sys.executable, str(Path(__file__).resolve())]
    proc = subprocess.run([*target.client, *pinned(CLIENT_CPU, [
        *me, "--rr-client", target.address, str(target.rr_port), str(count)])],
        capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"request/response {target.name}: {proc.stderr[-300:]}")
    return float(proc.stdout.strip().splitlines()[-1])


def measure_once(target: Target, seconds: float, samples: Samples) -> None:
    samples.gbps_p1.append(iperf_gbps(target, 1, seconds))
    if target.four_streams:
        samples.gbps_p4.append(iperf_gbps(target, 4, seconds))
    samples.rr_us.append(request_response_us(target))


def rotated(items: Sequence[T], by: int) -> list[T]:
    """`items` rotated left by `by` (the order of round `by`)."""
    shift = by % len(items) if items else 0
    return [*items[shift:], *items[:shift]]


def measure_interleaved(groups: Sequence[Sequence[Target]], repeats: int, seconds: float,
                        before: Callable[[str], None] | None = None) -> dict[str, Samples]:
    """`repeats` rounds; in each, every group once, its targets back to back (a pair to be
    compared is one group), the order of the groups and within each group rotated by one
    every round (A B, B A, ...). `before(name)` runs just before a target is measured (a
    setting to switch, say). Returns every target's samples by name (names are unique)."""
    targets = [target for group in groups for target in group]
    samples = {target.name: Samples() for target in targets}
    if len(samples) != len(targets):
        raise ValueError("target names must be unique")
    with servers_for(targets):
        for round_number in range(repeats):
            for group in rotated(groups, round_number):
                for target in rotated(group, round_number):
                    if before is not None:
                        before(target.name)
                    measure_once(target, seconds, samples[target.name])
    return samples


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().strip()


def figures_json(samples: Samples) -> dict[str, object]:
    """The per-path JSON fields: medians as before (`gbps_p1`, `gbps_p4`, `rr_us`), each
    with its [min, max] spread (`gbps_p1_spread`, ...)."""
    out: dict[str, object] = {}
    for metric in METRICS:
        if not getattr(samples, metric):
            continue  # not measured for this target (gbps_p4 of a settings row)
        spread = samples.spread(metric)
        out[metric] = round(spread.median, 3)
        out[f"{metric}_spread"] = spread.json()
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """The probe's two sides (the benches run this file for them)."""
    parser = argparse.ArgumentParser(description="request/response probe")
    parser.add_argument("--rr-server", type=int)
    parser.add_argument("--rr-client", nargs=3)
    parser.add_argument("--connect-server", type=int)
    parser.add_argument("--connect-client", nargs=3)
    args = parser.parse_args(argv)
    if args.rr_server is not None:
        rr_server(args.rr_server)
    elif args.rr_client is not None:
        rr_client(args.rr_client[0], int(args.rr_client[1]), int(args.rr_client[2]))
    elif args.connect_server is not None:
        connect_server(args.connect_server)
    elif args.connect_client is not None:
        connect_client(args.connect_client[0], int(args.connect_client[1]),
                       int(args.connect_client[2]))
    else:
        parser.error("--rr-server PORT, --rr-client HOST PORT COUNT, --connect-server PORT"
                     " or --connect-client HOST PORT COUNT")
    return 0


if __name__ == "__main__":
    sys.exit(main())
