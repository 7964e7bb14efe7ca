"""Endpoint modes compared: iperf3 TCP throughput and request/response latency, two hosts.

Usage: bench/modes.py [--seconds 3] [--round-trips 2000] [--json]

Two namespace hosts h1, h2 on one switch (bench/netns_bench.BenchLab, 10.77.0.0/16 on eth0).
Every endpoint is created through `underlay.endpoints.Endpoints`, one service per host.
For each mode a server endpoint on h1 and a client endpoint on h2:

| mode          | path                                                                      |
|---------------|---------------------------------------------------------------------------|
| host          | host-mode endpoints (the host's own stack): the baseline                  |
| bridge_routed | bridge networks with gateway_mode=routed, hosts route each other's subnet |
| bridge_nat    | client MASQUERADEd by h2, server reached on h1's published port (DNAT)    |
| overlay       | overlay endpoints in network "bench" (VNI 42), reconciler-programmed:     |
|               | per host `overlay.reconciler.Reconciler` makes bridge vxbr42 + vxlan      |
|               | vxtun42 (MTU = eth0's 1500 - 50) and the FDB, neighbor and flood entries  |
|               | of the remote endpoint from `overlay.desired.compute_desired`             |
| overlay_egress| an overlay endpoint on h2 (default route via the network's gateway on   |
|               | h2's bridge) to the host-mode server on h1: out of the overlay through    |
|               | MASQUERADE on its own host (`Endpoints.set_overlay_egress`, our table)    |
| macvlan       | macvlan (bridge mode) endpoints on each host's eth0, underlay addresses   |

Measured per mode: iperf3 -c, TCP, 1 stream and 4 streams (`gbps_p1`, `gbps_p4`, received
side), and the mean round trip of a 1-byte TCP request/response over one connection (`rr_us`,
median of 3 runs, Python on both ends; the same program in every mode, so the differences
are the path's).
`ratio_to_host` is gbps_p1 / host's gbps_p1; the table also shows the p4 and latency ratios.
The host namespace of the machine is shared with other work: figures carry that noise.

The overlay is programmed as the agent does it, in two passes per host: first the desired
state of the network alone (members = both hosts, VTEP = eth0's address read by
`underlay.facts.read_underlay`), so the bridge exists for the endpoints; then, once the
endpoints exist, the desired state with the remote endpoint (its MAC and address from the
endpoint record) and the local endpoint's host veth as a bridge port.

Rules: everything runs inside namespaces this script creates and deletes (even on failure or
Ctrl-C); processes it starts are stopped by pid.
May import: the standard library, trio, overlay.*, underlay.*, bench/netns_bench.py,
agent.lab.namespaces.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import trio
from netns_bench import BenchLab, LabHost, cleanup_on_sigterm

from agent.lab.namespaces import run, wait_links_operational
from overlay.desired import (
    AliveMember,
    EndpointEntry,
    LocalEndpoint,
    NetworkSpec,
    bridge_name,
    compute_desired,
    overlay_mtu,
    vxlan_name,
)
from overlay.reconciler import Reconciler, ReconcilerStatistics
from underlay import links
from underlay.endpoints import Endpoints
from underlay.endpoints_model import (
    BridgeNetwork,
    EndpointRecord,
    EndpointsConfig,
    EndpointSpec,
    Mode,
    parse_port_claim,
    parse_port_mapping,
)
from underlay.facts import UnderlayFacts, read_underlay
from underlay.kernel import NetlinkThread
from underlay.nat_table import OverlayEgress
from underlay.netlink_ops import NetlinkKernel

IPERF_PORT = 5201
RR_PORT = 5301
RR_REPEATS = 3  # the request/response figure is the median of this many runs
MODES = ("host", "bridge_routed", "bridge_nat", "overlay", "overlay_egress", "macvlan")
OVERLAY_SUBNET = "10.42.0.0/24"
OVERLAY_GATEWAY = "10.42.0.254"  # on every host's bridge (the agent's anycast gateway)
# MTU None: derived from the underlay, as in the agent
OVERLAY = NetworkSpec("bench", 42, gateway=f"{OVERLAY_GATEWAY}/24")


@dataclass(frozen=True)
class Target:
    """Where a mode's server runs and how the client reaches it."""

    mode: str
    server: str  # endpoint name on h1
    client: str  # endpoint name on h2
    address: str
    iperf_port: int
    rr_port: int


@dataclass(frozen=True)
class Figures:
    gbps_p1: float
    gbps_p4: float
    rr_us: float


# --- the request/response probe (this file run with --rr-server / --rr-client) -------------


def rr_server(port: int) -> None:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("0.0.0.0", port))
        sock.listen(4)
        print("ready", flush=True)
        while True:
            conn, _ = sock.accept()
            with conn:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                while data := conn.recv(1):
                    conn.sendall(data)


def rr_client(host: str, port: int, round_trips: int) -> None:
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(100):  # warm-up
            sock.sendall(b"x")
            sock.recv(1)
        samples = []
        for _ in range(round_trips):
            start = time.perf_counter_ns()
            sock.sendall(b"x")
            if not sock.recv(1):
                raise SystemExit("server closed")
            samples.append(time.perf_counter_ns() - start)
    print(json.dumps({"mean_us": statistics.fmean(samples) / 1000,
                      "p50_us": statistics.median(samples) / 1000}))


# --- the lab -------------------------------------------------------------------------------


class Processes:
    """Servers started inside endpoints, stopped by pid."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], ready_word: str, timeout: float = 10) -> None:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        assert proc.stdout is not None
        fd, seen = proc.stdout.fileno(), b""
        deadline = time.monotonic() + timeout
        while ready_word.encode() not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], deadline - time.monotonic())
            chunk = os.read(fd, 4096) if ready else b""
            if not chunk:
                break
            seen += chunk
        if ready_word.encode() in seen:
            return
        raise RuntimeError(f"{argv!r} did not report {ready_word!r} within {timeout}s")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=5)
        self.procs.clear()


@dataclass(frozen=True)
class OverlayNode:
    """One lab host as the overlay's data plane sees it: node name, underlay, reconciler."""

    name: str
    underlay: UnderlayFacts
    reconciler: Reconciler


@contextlib.contextmanager
def netlink_threads(hosts: Sequence[LabHost]) -> Iterator[list[NetlinkThread]]:
    """One netlink thread per host namespace (the reconcilers' kernel), closed at exit."""
    threads: list[NetlinkThread] = []
    try:
        for host in hosts:
            threads.append(NetlinkThread(host.netns))
        yield threads
    finally:
        for nl in threads:
            nl.close()


async def overlay_nodes(hosts: Sequence[LabHost],
                        threads: Sequence[NetlinkThread]) -> list[OverlayNode]:
    """A reconciler per host; the VTEP address and MTU are eth0's, read from the kernel."""
    return [OverlayNode(host.name, await read_underlay(nl, interface="eth0"),
                        Reconciler(NetlinkKernel(nl)))
            for host, nl in zip(hosts, threads, strict=True)]


async def reconcile_overlay(nodes: Sequence[OverlayNode],
                            endpoints: Mapping[str, EndpointRecord]) -> None:
    """Every node's reconciler applies the desired state of OVERLAY computed from the lab's
    members and `endpoints` (node name -> its overlay endpoint record; empty: the network's
    bridge and vxlan device only). Raises RuntimeError naming the node if anything is left."""
    members = [AliveMember(node.name, node.underlay.address) for node in nodes]
    entries = [EndpointEntry(OVERLAY.name, owner, record.mac or "",
                             tuple(address.split("/")[0] for address in record.addresses))
               for owner, record in endpoints.items()]
    for node in nodes:
        local = [LocalEndpoint(OVERLAY.name, record.host_ifname)
                 for owner, record in endpoints.items()
                 if owner == node.name and record.host_ifname is not None]
        desired = compute_desired([OVERLAY], members, entries, local, node.underlay, node.name)
        node.reconciler.set_desired(desired)
        if desired.problems or not await node.reconciler.apply():
            raise RuntimeError(f"overlay on {node.name}: problems {list(desired.problems)}, "
                               f"{node.reconciler.statistics()}")


def overlay_note(nodes: Sequence[OverlayNode]) -> str:
    """What the reconcilers hold, for the notes above the table."""
    def counts(stats: ReconcilerStatistics) -> str:
        return (f"{stats.fdb_entries} fdb/{stats.flood_entries} flood/"
                f"{stats.neighbor_entries} neighbor")
    underlay = nodes[0].underlay
    held = ", ".join(f"{node.name} {counts(node.reconciler.statistics())}" for node in nodes)
    return (f"overlay: reconciler-programmed (overlay.reconciler from compute_desired): "
            f"{bridge_name(OVERLAY.vni)} + {vxlan_name(OVERLAY.vni)} per host, MTU "
            f"{overlay_mtu(underlay.mtu, underlay.address)} (eth0 {underlay.mtu}); {held}")


def host_config(host: LabHost, index: int, state_root: Path) -> EndpointsConfig:
    return EndpointsConfig(
        state_dir=state_root / host.name, host_netns=host.netns,
        netns_prefix=f"{host.netns}-ep-", underlay_interface="eth0",
        bridges=(BridgeNetwork(name="nat", ifname="vxlocal0", subnet=f"172.29.{index}.0/24"),
                 BridgeNetwork(name="routed", ifname="vxrouted0",
                               subnet=f"172.30.{index}.0/24", gateway_mode="routed")))


async def build(lab: BenchLab, state_root: Path,
                nodes: Sequence[OverlayNode]) -> tuple[Endpoints, Endpoints, list[Target]]:
    h1, h2 = lab.hosts
    for netns in (lab.switch, h1.netns, h2.netns):
        wait_links_operational(netns)
    s1 = Endpoints(host_config(h1, 1, state_root))
    s2 = Endpoints(host_config(h2, 2, state_root))
    await s1.start()
    await s2.start()
    claims = (parse_port_claim(f"{IPERF_PORT}/tcp"), parse_port_claim(f"{RR_PORT}/tcp"))
    await s1.create(EndpointSpec("host-srv", Mode.HOST, claims=claims))
    await s2.create(EndpointSpec("host-cli", Mode.HOST))
    routed_srv = await s1.create(EndpointSpec("routed-srv", Mode.BRIDGE, network="routed"))
    await s2.create(EndpointSpec("routed-cli", Mode.BRIDGE, network="routed"))
    run(["ip", "route", "add", "172.30.2.0/24", "via", h2.addr], netns=h1.netns)
    run(["ip", "route", "add", "172.30.1.0/24", "via", h1.addr], netns=h2.netns)
    publish = (parse_port_mapping(f"{IPERF_PORT + 1}:{IPERF_PORT}/tcp"),
               parse_port_mapping(f"{RR_PORT + 1}:{RR_PORT}/tcp"))
    await s1.create(EndpointSpec("nat-srv", Mode.BRIDGE, network="nat", publish=publish))
    await s2.create(EndpointSpec("nat-cli", Mode.BRIDGE, network="nat"))
    await reconcile_overlay(nodes, {})  # the bridges the overlay endpoints plug into
    overlay_bridge = bridge_name(OVERLAY.vni)
    ovl_srv = await s1.create(EndpointSpec("ovl-srv", Mode.OVERLAY, network=OVERLAY.name,
                                           bridge=overlay_bridge, addresses=("10.42.0.1/24",)))
    ovl_cli = await s2.create(EndpointSpec("ovl-cli", Mode.OVERLAY, network=OVERLAY.name,
                                           bridge=overlay_bridge, addresses=("10.42.0.2/24",)))
    egress_cli = await s2.create(EndpointSpec(
        "ovl-egr", Mode.OVERLAY, network=OVERLAY.name, bridge=overlay_bridge,
        addresses=("10.42.0.3/24",), gateway=OVERLAY_GATEWAY))
    await s2.set_overlay_egress((OverlayEgress(OVERLAY.name, overlay_bridge, OVERLAY_SUBNET),))
    await reconcile_overlay(nodes, {h1.name: ovl_srv, h2.name: ovl_cli})
    assert egress_cli.gateway == OVERLAY_GATEWAY
    await s1.create(EndpointSpec("mv-srv", Mode.MACVLAN, addresses=("10.77.1.1/16",)))
    await s2.create(EndpointSpec("mv-cli", Mode.MACVLAN, addresses=("10.77.1.2/16",)))
    targets = [
        Target("host", "host-srv", "host-cli", h1.addr, IPERF_PORT, RR_PORT),
        Target("bridge_routed", "routed-srv", "routed-cli",
               routed_srv.addresses[0].split("/")[0], IPERF_PORT, RR_PORT),
        Target("bridge_nat", "nat-srv", "nat-cli", h1.addr, IPERF_PORT + 1, RR_PORT + 1),
        Target("overlay", "ovl-srv", "ovl-cli", ovl_srv.addresses[0].split("/")[0],
               IPERF_PORT, RR_PORT),
        Target("overlay_egress", "host-srv", "ovl-egr", h1.addr, IPERF_PORT, RR_PORT),
        Target("macvlan", "mv-srv", "mv-cli", "10.77.1.1", IPERF_PORT, RR_PORT),
    ]
    return s1, s2, targets


def iperf_gbps(argv_prefix: list[str], address: str, port: int, streams: int,
               seconds: int, attempts: int = 3) -> float:
    """Received Gbit/s of one iperf3 run; a run iperf3 itself reports as failed is retried
    (a busy shared machine occasionally makes the control connection time out)."""
    problem = ""
    for _ in range(attempts):
        try:
            proc = subprocess.run([*argv_prefix, "iperf3", "-c", address, "-p", str(port),
                                   "-t", str(seconds), "-P", str(streams), "-J",
                                   "--connect-timeout", "5000"], capture_output=True,
                                  text=True, timeout=seconds + 15, check=False)
        except subprocess.TimeoutExpired:
            problem = f"no result within {seconds + 15} s"
            continue
        try:
            report = json.loads(proc.stdout)
        except ValueError:
            report = {}
        received = report.get("end", {}).get("sum_received")
        if proc.returncode == 0 and received is not None:
            return float(received["bits_per_second"]) / 1e9
        problem = str(report.get("error") or proc.stderr[-300:] or proc.stdout[-300:])
    raise RuntimeError(f"iperf3 to {address}:{port} failed {attempts} times: {problem}")


def measure(s1: Endpoints, s2: Endpoints, target: Target, procs: Processes, seconds: int,
            round_trips: int) -> Figures:
    me = str(Path(__file__).resolve())
    # A client that vanishes mid-test must not leave the server busy for the retry.
    iperf_server = ["iperf3", "-s", "--forceflush", "-p", str(IPERF_PORT),
                    "--rcv-timeout", "5000", "--idle-timeout", "10"]
    procs.start(s1.exec_argv(target.server, iperf_server), "Server listening")
    procs.start(s1.exec_argv(target.server, [sys.executable, me, "--rr-server",
                                             str(RR_PORT)]), "ready")
    client = s2.exec_argv(target.client, [])
    p1 = iperf_gbps(client, target.address, target.iperf_port, 1, seconds)
    p4 = iperf_gbps(client, target.address, target.iperf_port, 4, seconds)
    rr_runs = []
    for _ in range(RR_REPEATS):
        rr = subprocess.run([*client, sys.executable, me, "--rr-client", target.address,
                             str(target.rr_port), str(round_trips)], capture_output=True,
                            text=True, timeout=120, check=True)
        rr_runs.append(json.loads(rr.stdout.strip().splitlines()[-1])["mean_us"])
    procs.stop()
    return Figures(p1, p4, statistics.median(rr_runs))


@contextlib.contextmanager
def endpoint_namespaces_removed(lab: BenchLab) -> Iterator[None]:
    """At exit, delete the endpoint namespaces (prefix `<host netns>-ep-`) the bench made."""
    try:
        yield
    finally:
        for host in lab.hosts:
            for name in links.list_netns(prefix=f"{host.netns}-ep-"):
                links.delete_netns(name)


async def bench(seconds: int, round_trips: int) -> tuple[dict[str, Figures], str]:
    """Figures per mode and the note on how the overlay was programmed."""
    results: dict[str, Figures] = {}
    procs = Processes()
    with tempfile.TemporaryDirectory(prefix="vxmesh-modes-") as state_root, \
            BenchLab(2, "mod") as lab, endpoint_namespaces_removed(lab), \
            netlink_threads(lab.hosts) as threads:
        s1, s2 = None, None
        try:
            nodes = await overlay_nodes(lab.hosts, threads)
            s1, s2, targets = await build(lab, Path(state_root), nodes)
            note = overlay_note(nodes)
            for target in targets:
                results[target.mode] = measure(s1, s2, target, procs, seconds, round_trips)
        finally:
            procs.stop()
            for service in (s1, s2):
                if service is not None:
                    service.close()
    return results, note


def table(results: dict[str, Figures]) -> str:
    host = results["host"]
    rows = [f"{'mode':<14} {'Gbit/s x1':>10} {'Gbit/s x4':>10} {'rr us':>8} "
            f"{'x1/host':>8} {'x4/host':>8} {'rr/host':>8}"]
    for mode in MODES:
        f = results[mode]
        rows.append(f"{mode:<14} {f.gbps_p1:>10.2f} {f.gbps_p4:>10.2f} {f.rr_us:>8.1f} "
                    f"{f.gbps_p1 / host.gbps_p1:>8.2f} {f.gbps_p4 / host.gbps_p4:>8.2f} "
                    f"{f.rr_us / host.rr_us:>8.2f}")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=3, help="per iperf3 run (whole seconds)")
    parser.add_argument("--round-trips", type=int, default=2000)
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    parser.add_argument("--rr-server", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--rr-client", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rr_server is not None:
        rr_server(args.rr_server)
        return 0
    if args.rr_client is not None:
        rr_client(args.rr_client[0], int(args.rr_client[1]), int(args.rr_client[2]))
        return 0
    if not 1 <= args.seconds <= 60 or not 10 <= args.round_trips <= 1_000_000:
        parser.error("--seconds must be 1..60 and --round-trips 10..1000000")
    with cleanup_on_sigterm():
        results, note = trio.run(bench, args.seconds, args.round_trips)
    print(f"load average after: {Path('/proc/loadavg').read_text().strip()}")
    print(note)
    print(table(results))
    if args.json:
        host = results["host"]
        print(json.dumps({mode: {"gbps_p1": round(f.gbps_p1, 3), "gbps_p4": round(f.gbps_p4, 3),
                                 "rr_us": round(f.rr_us, 1),
                                 "ratio_to_host": round(f.gbps_p1 / host.gbps_p1, 3)}
                          for mode, f in results.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
