"""Data-plane throughput and latency: reconciler-programmed overlay vs hand-made VXLAN vs host.

Usage: bench/dataplane.py [--seconds S] [--rounds R] [--json]

Two namespace hosts h1, h2 on a veth underlay (MTU 1500) joined by a switch namespace, all
created and deleted by this script (agent.lab.namespaces: unique prefix, clean-up even on failure).
Three paths between h1 and h2:
  (a) overlay_reconciler: endpoints a1, a2 (namespaces with a veth into the network bridge),
      the bridge, vxlan device, FDB and neighbor entries programmed by
      `overlay.reconciler.Reconciler` from `overlay.desired.compute_desired`;
  (b) overlay_hand: endpoints b1, b2 on a VXLAN made by hand with iproute2 (same MTU 1450,
      same options: nolearning, proxy, permanent FDB/neighbor/flood entries);
  (c) host: h1 to h2 directly over the underlay;
  (d) overlay_encrypted: endpoints e1, e2 of an encrypted network (VXLAN between WireGuard
      tunnel addresses, MTU 1390), programmed by the same reconciler, over the WireGuard
      interfaces `underlay.wireguard` brings up (kernel module if the probe finds it, else
      wireguard-go: the backend is printed and in the JSON).
For each: iperf3 TCP with 1 and 4 streams (`--seconds` each) and a 64-byte TCP
request/response probe (a small Python echo pair: its own cost is in every path alike, so
compare ratios, not absolute microseconds). Every measurement runs `--rounds` times, paths
interleaved; the best round counts (the machine is shared). iperf3 and echo processes are
started in the namespaces and stopped by pid.

With --json the last line is one JSON object: per path `gbps_p1`, `gbps_p4`, `rr_us`;
`ratio_throughput` = gbps_p1(a)/gbps_p1(b), `ratio_throughput_p4` likewise,
`ratio_latency` = rr_us(b)/rr_us(a) (1.0: as fast as the hand-made VXLAN; lower: slower),
and `ratio_to_host_throughput` / `ratio_to_host_latency` for (a)/(c);
`ratio_encrypted_to_overlay` = gbps_p1(d)/gbps_p1(a) (with `_p4` and `_latency` likewise) and
`wireguard_backend`.

May import: the standard library, trio, overlay.*, underlay.*, agent.lab.namespaces.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import trio

from agent.lab.namespaces import NetnsLab, run
from overlay.desired import (
    AliveMember,
    EndpointEntry,
    LocalEndpoint,
    NetworkSpec,
    UnderlayView,
    compute_desired,
)
from overlay.reconciler import Reconciler
from underlay.kernel import NetlinkThread
from underlay.netlink_ops import NetlinkKernel
from underlay.netns_exec import ip_netns_exec
from underlay.wireguard import (
    WireGuardInterface,
    interface_name,
    load_private_key,
    probe_wireguard,
    public_key_of,
)
from underlay.wireguard_peers import DEFAULT_PORT, WireGuardPeer, tunnel_address, wireguard_mtu

OVERLAY_MTU = 1450
ENCRYPTED_MTU = 1390
IPERF_PORT = 5201
RR_PORT = 7007
RR_SIZE = 64
RR_COUNT = 4000


@dataclass(frozen=True)
class Path_:
    """Where the client runs and which address it targets, and where the server runs."""

    name: str
    client_ns: str
    server_ns: str
    server_ip: str


@dataclass
class Figures:
    gbps_p1: float = 0.0
    gbps_p4: float = 0.0
    rr_us: float = float("inf")


# --------------------------------------------------------------------------- RR probe


def rr_server(port: int) -> None:
    """Echo fixed-size messages on one TCP connection until the peer closes."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", port))
    listener.listen(1)
    print("listening", flush=True)
    conn, _ = listener.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while True:
        data = conn.recv(RR_SIZE, socket.MSG_WAITALL)
        if len(data) < RR_SIZE:
            return
        conn.sendall(data)


def rr_client(host: str, port: int, count: int) -> None:
    """Time `count` request/response exchanges; print the median in microseconds."""
    conn = socket.create_connection((host, port), timeout=10)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    payload = b"x" * RR_SIZE
    samples = []
    for i in range(count + 200):
        started = time.perf_counter_ns()
        conn.sendall(payload)
        conn.recv(RR_SIZE, socket.MSG_WAITALL)
        if i >= 200:  # warm-up
            samples.append(time.perf_counter_ns() - started)
    conn.close()
    print(f"{statistics.median(samples) / 1000:.2f}")


# --------------------------------------------------------------------------- processes


class Server:
    """A server process in a namespace, stopped by its pid."""

    def __init__(self, ns: str, argv: list[str], port: int) -> None:
        self.popen = subprocess.Popen(ip_netns_exec(ns, argv),
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            listening = run(["ss", "-Hltn", f"sport = :{port}"], netns=ns).stdout
            if listening.strip():
                return
            if self.popen.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise SystemExit(f"server {argv[0]} did not start listening in {ns}")

    def stop(self) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=5)


def iperf(path: Path_, streams: int, seconds: float) -> float:
    server = Server(path.server_ns, ["iperf3", "-s", "-1", "-p", str(IPERF_PORT)], IPERF_PORT)
    try:
        out = run(["iperf3", "-c", path.server_ip, "-p", str(IPERF_PORT), "-t", str(seconds),
                   "-P", str(streams), "-J"], netns=path.client_ns, timeout=seconds + 30).stdout
    finally:
        server.stop()
    return float(json.loads(out)["end"]["sum_received"]["bits_per_second"]) / 1e9


def request_response(path: Path_) -> float:
    me = [sys.executable, str(Path(__file__).resolve())]
    server = Server(path.server_ns, [*me, "--rr-server", str(RR_PORT)], RR_PORT)
    try:
        out = run([*me, "--rr-client", path.server_ip, str(RR_PORT), str(RR_COUNT)],
                  netns=path.client_ns, timeout=120).stdout
    finally:
        server.stop()
    return float(out.strip().splitlines()[-1])


# --------------------------------------------------------------------------- topology


def endpoint(lab: NetnsLab, host_ns: str, name: str, host_ifname: str, mac: str,
             ip: str, mtu: int = OVERLAY_MTU) -> str:
    ns = lab.ns(name)
    run(["ip", "link", "add", host_ifname, "mtu", str(mtu), "type", "veth", "peer",
         "name", "eth0", "mtu", str(mtu), "netns", ns], netns=host_ns)
    run(["ip", "link", "set", "eth0", "address", mac, "up"], netns=ns)
    run(["ip", "addr", "add", f"{ip}/24", "dev", "eth0"], netns=ns)
    return ns


def hand_vxlan(host_ns: str, local: str, remote: str, remote_mac: str, remote_ip: str,
               port_ifname: str) -> None:
    """Path (b): what an operator would type, with the same options as the reconciler."""
    for cmd in (
        f"ip link add hvx200 type vxlan id 200 dstport 4789 local {local} nolearning proxy",
        f"ip link set hvx200 mtu {OVERLAY_MTU}",
        "ip link add hbr200 type bridge",
        f"ip link set hbr200 mtu {OVERLAY_MTU} up",
        "ip link set hvx200 master hbr200 up",
        f"ip link set {port_ifname} master hbr200 up",
        f"ip neigh add {remote_ip} lladdr {remote_mac} dev hvx200 nud permanent",
        f"bridge fdb add {remote_mac} dev hvx200 dst {remote} self permanent",
        f"bridge fdb append 00:00:00:00:00:00 dev hvx200 dst {remote} self permanent",
    ):
        run(cmd, netns=host_ns)


async def wireguard_up(lab: NetnsLab, hosts: list[tuple[str, str]], key_dir: Path) -> str:
    """A WireGuard interface per host with the other as its peer; returns the backend."""
    support = await probe_wireguard()
    if support.backend is None:
        raise SystemExit(f"overlay_encrypted: WireGuard missing: {support.missing}")
    interfaces, keys = [], []
    for i, (ns, vtep) in enumerate(hosts):
        key_path = key_dir / f"h{i + 1}.key"
        keys.append(public_key_of(load_private_key(key_path)))
        interfaces.append(WireGuardInterface(
            interface_name(f"{lab.prefix}h{i + 1}"), support.backend, key_path, DEFAULT_PORT,
            tunnel_address(vtep), wireguard_mtu(1500, vtep), netns=ns))
        await interfaces[-1].up()
    for i, interface in enumerate(interfaces):
        other = 1 - i
        await interface.put_peer(WireGuardPeer(keys[other], hosts[other][1], DEFAULT_PORT,
                                               tunnel_address(hosts[other][1])))
    return support.backend


async def program_overlay(hosts: list[tuple[str, str]], reconcilers: list[Reconciler]) -> None:
    members = [AliveMember(f"h{i + 1}", vtep, tunnel_address(vtep))
               for i, (_ns, vtep) in enumerate(hosts)]
    endpoints = [EndpointEntry(net, f"h{i + 1}", f"02:42:0a:0{octet}:00:{i + 1:02x}",
                               (f"10.{octet}.0.{i + 1}",))
                 for i in range(len(hosts)) for net, octet in (("a", 1), ("e", 3))]
    networks = [NetworkSpec("a", 100), NetworkSpec("e", 300, encrypted=True)]
    for i, ((_ns, vtep), reconciler) in enumerate(zip(hosts, reconcilers, strict=True)):
        reconciler.set_desired(compute_desired(
            networks, members, endpoints,
            [LocalEndpoint("a", f"vxa{i + 1}"), LocalEndpoint("e", f"vxe{i + 1}")],
            UnderlayView(vtep, 1500), f"h{i + 1}", tunnel_address(vtep)))
        if not await reconciler.apply():
            raise SystemExit(f"reconciler on h{i + 1}: {reconciler.statistics()}")


def measure(paths: list[Path_], seconds: float, rounds: int) -> dict[str, Figures]:
    figures = {path.name: Figures() for path in paths}
    for _round in range(rounds):
        for path in paths:
            f = figures[path.name]
            f.gbps_p1 = max(f.gbps_p1, iperf(path, 1, seconds))
            f.gbps_p4 = max(f.gbps_p4, iperf(path, 4, seconds))
            f.rr_us = min(f.rr_us, request_response(path))
    return figures


def bench(seconds: float, rounds: int, key_dir: Path) -> tuple[dict[str, Figures], str]:
    lab = NetnsLab("dpb")
    nls: list[NetlinkThread] = []
    hosts: list[tuple[str, str]] = []
    try:
        sw = lab.underlay_bridge()
        for i in (1, 2):
            ns = lab.ns(f"h{i}")
            lab.plug(sw, ns, "eth0", [f"10.0.0.{i}/24"])
            hosts.append((ns, f"10.0.0.{i}"))
        a = [endpoint(lab, ns, f"a{i + 1}", f"vxa{i + 1}", f"02:42:0a:01:00:{i + 1:02x}",
                      f"10.1.0.{i + 1}") for i, (ns, _v) in enumerate(hosts)]
        b = [endpoint(lab, ns, f"b{i + 1}", f"hbe{i + 1}", f"02:42:0a:02:00:{i + 1:02x}",
                      f"10.2.0.{i + 1}") for i, (ns, _v) in enumerate(hosts)]
        e = [endpoint(lab, ns, f"e{i + 1}", f"vxe{i + 1}", f"02:42:0a:03:00:{i + 1:02x}",
                      f"10.3.0.{i + 1}", ENCRYPTED_MTU) for i, (ns, _v) in enumerate(hosts)]
        backend = trio.run(wireguard_up, lab, hosts, key_dir)
        nls = [NetlinkThread(ns) for ns, _v in hosts]
        reconcilers = [Reconciler(NetlinkKernel(nl)) for nl in nls]
        trio.run(program_overlay, hosts, reconcilers)
        for i, (ns, vtep) in enumerate(hosts):
            other = 1 - i
            hand_vxlan(ns, vtep, hosts[other][1], f"02:42:0a:02:00:{other + 1:02x}",
                       f"10.2.0.{other + 1}", f"hbe{i + 1}")
        paths = [
            Path_("overlay_reconciler", a[0], a[1], "10.1.0.2"),
            Path_("overlay_hand", b[0], b[1], "10.2.0.2"),
            Path_("host", hosts[0][0], hosts[1][0], "10.0.0.2"),
            Path_("overlay_encrypted", e[0], e[1], "10.3.0.2"),
        ]
        for path in paths:
            if run(["ping", "-c", "1", "-W", "2", path.server_ip], netns=path.client_ns,
                   check=False).returncode != 0:
                raise SystemExit(f"path {path.name}: {path.server_ip} unreachable")
        return measure(paths, seconds, rounds), backend
    finally:
        for nl in nls:
            nl.close()
        for i, (ns, _v) in enumerate(hosts):  # wireguard-go ends with its interface
            run(["ip", "link", "del", interface_name(f"{lab.prefix}h{i + 1}")], netns=ns,
                check=False)
        lab.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per iperf3 run (3)")
    parser.add_argument("--rounds", type=int, default=2, help="best of R rounds (2)")
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    parser.add_argument("--rr-server", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--rr-client", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rr_server is not None:
        rr_server(args.rr_server)
        return
    if args.rr_client is not None:
        rr_client(args.rr_client[0], int(args.rr_client[1]), int(args.rr_client[2]))
        return
    if not 1 <= args.seconds <= 60 or not 1 <= args.rounds <= 10:
        parser.error(f"--seconds={args.seconds} (1..60), --rounds={args.rounds} (1..10)")
    with tempfile.TemporaryDirectory(prefix="vxmesh-bench-wg-") as key_dir:
        figures, backend = bench(args.seconds, args.rounds, Path(key_dir))
    print(f"{'path':<20} {'Gbit/s P1':>10} {'Gbit/s P4':>10} {'RR us':>8}")
    for name, f in figures.items():
        print(f"{name:<20} {f.gbps_p1:>10.2f} {f.gbps_p4:>10.2f} {f.rr_us:>8.1f}")
    a, b, c = figures["overlay_reconciler"], figures["overlay_hand"], figures["host"]
    d = figures["overlay_encrypted"]
    result: dict[str, object] = {
        name: {"gbps_p1": round(f.gbps_p1, 3), "gbps_p4": round(f.gbps_p4, 3),
               "rr_us": round(f.rr_us, 2)} for name, f in figures.items()}
    result["ratio_throughput"] = round(a.gbps_p1 / b.gbps_p1, 3)
    result["ratio_throughput_p4"] = round(a.gbps_p4 / b.gbps_p4, 3)
    result["ratio_latency"] = round(b.rr_us / a.rr_us, 3)
    result["ratio_to_host_throughput"] = round(a.gbps_p1 / c.gbps_p1, 3)
    result["ratio_to_host_latency"] = round(c.rr_us / a.rr_us, 3)
    result["ratio_encrypted_to_overlay"] = round(d.gbps_p1 / a.gbps_p1, 3)
    result["ratio_encrypted_to_overlay_p4"] = round(d.gbps_p4 / a.gbps_p4, 3)
    result["ratio_encrypted_to_overlay_latency"] = round(a.rr_us / d.rr_us, 3)
    result["wireguard_backend"] = backend
    print(f"(a)/(b): throughput {result['ratio_throughput']} (P4 "
          f"{result['ratio_throughput_p4']}), latency {result['ratio_latency']} (target >= 0.95)"
          f"; (a)/(c): throughput {result['ratio_to_host_throughput']}, latency "
          f"{result['ratio_to_host_latency']}; (d)/(a) over {backend}: throughput "
          f"{result['ratio_encrypted_to_overlay']} (P4 "
          f"{result['ratio_encrypted_to_overlay_p4']}), latency "
          f"{result['ratio_encrypted_to_overlay_latency']}")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
