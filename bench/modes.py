"""Endpoint modes compared: iperf3 TCP throughput and request/response latency, two hosts.

Usage: bench/modes.py [--seconds 2] [--repeats 5] [--json]

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
| overlay6      | the same overlay endpoints over their IPv6 addresses (fd42::/64): NDP    |
|               | entries on the vxlan devices instead of ARP ones, the same FDB entries    |
| overlay_egress| an overlay endpoint on h2 (default route via the network's gateway on   |
|               | h2's bridge) to the host-mode server on h1: out of the overlay through    |
|               | MASQUERADE on its own host (`Endpoints.set_overlay_egress`, our table)    |
| macvlan       | macvlan (bridge mode) endpoints on each host's eth0, underlay addresses   |

Measured per mode (bench/pathbench.py, the same way as bench/dataplane.py): iperf3 TCP, 1 and
4 streams (`gbps_p1`, `gbps_p4`, received side), and the median round trip of a 64-byte TCP
request/response over one connection (`rr_us`, Python on both ends; the same program in every
mode, so the differences are the path's). Clients on CPU 0, servers on CPU 1 (taskset).
`--repeats` rounds, every mode once per round in a rotated order; figures are the median with
min-max over rounds. `ratio_to_host` (gbps_p1) and `latency_to_host` (rr_us, mode over host)
are taken round by round against host measured in the same round, as median with
`_spread` [min, max]. The load average before and after is printed and in the JSON.

The overlay is programmed as the agent does it, in two passes per host: first the desired
state of the network alone (members = both hosts, VTEP = eth0's address read by
`underlay.facts.read_underlay`), so the bridge exists for the endpoints; then, once the
endpoints exist, the desired state with the remote endpoint (its MAC and address from the
endpoint record) and the local endpoint's host veth as a bridge port.

Rules: everything runs inside namespaces this script creates and deletes (even on failure or
Ctrl-C); processes it starts are stopped by pid.
May import: the standard library, trio, overlay.*, underlay.*, bench/netns_bench.py,
bench/pathbench.py, agent.lab.namespaces.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import trio
from netns_bench import BenchLab, LabHost, cleanup_on_sigterm
from pathbench import (
    IPERF_PORT,
    RR_PORT,
    Samples,
    Target,
    figures_json,
    loadavg,
    measure_interleaved,
    paired_ratio,
)

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

MODES = ("host", "bridge_routed", "bridge_nat", "overlay", "overlay6", "overlay_egress",
         "macvlan")
OVERLAY_SUBNET = "10.42.0.0/24"
OVERLAY_GATEWAY = "10.42.0.254"  # on every host's bridge (the agent's anycast gateway)
# MTU None: derived from the underlay, as in the agent
OVERLAY = NetworkSpec("bench", 42, gateway=f"{OVERLAY_GATEWAY}/24")


@dataclass(frozen=True)
class ModeTarget:
    """Where a mode's server runs and how the client reaches it (ports: where the client
    connects; the servers listen on pathbench's IPERF_PORT and RR_PORT)."""

    mode: str
    server: str  # endpoint name on h1
    client: str  # endpoint name on h2
    address: str
    iperf_port: int = IPERF_PORT
    rr_port: int = RR_PORT

    def target(self, s1: Endpoints, s2: Endpoints) -> Target:
        return Target(self.mode, tuple(s1.exec_argv(self.server, [])),
                      tuple(s2.exec_argv(self.client, [])), self.address, self.server,
                      self.iperf_port, self.rr_port)


# --- the lab -------------------------------------------------------------------------------


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
                nodes: Sequence[OverlayNode]) -> tuple[Endpoints, Endpoints, list[ModeTarget]]:
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
                                           bridge=overlay_bridge,
                                           addresses=("10.42.0.1/24", "fd42::1/64")))
    ovl_cli = await s2.create(EndpointSpec("ovl-cli", Mode.OVERLAY, network=OVERLAY.name,
                                           bridge=overlay_bridge,
                                           addresses=("10.42.0.2/24", "fd42::2/64")))
    egress_cli = await s2.create(EndpointSpec(
        "ovl-egr", Mode.OVERLAY, network=OVERLAY.name, bridge=overlay_bridge,
        addresses=("10.42.0.3/24",), gateway=OVERLAY_GATEWAY))
    await s2.set_overlay_egress((OverlayEgress(OVERLAY.name, overlay_bridge, OVERLAY_SUBNET),))
    await reconcile_overlay(nodes, {h1.name: ovl_srv, h2.name: ovl_cli})
    assert egress_cli.gateway == OVERLAY_GATEWAY
    await s1.create(EndpointSpec("mv-srv", Mode.MACVLAN, addresses=("10.77.1.1/16",)))
    await s2.create(EndpointSpec("mv-cli", Mode.MACVLAN, addresses=("10.77.1.2/16",)))
    targets = [
        ModeTarget("host", "host-srv", "host-cli", h1.addr),
        ModeTarget("bridge_routed", "routed-srv", "routed-cli",
                   routed_srv.addresses[0].split("/")[0]),
        ModeTarget("bridge_nat", "nat-srv", "nat-cli", h1.addr, IPERF_PORT + 1, RR_PORT + 1),
        ModeTarget("overlay", "ovl-srv", "ovl-cli", ovl_srv.addresses[0].split("/")[0]),
        ModeTarget("overlay6", "ovl-srv", "ovl-cli", ovl_srv.addresses[1].split("/")[0]),
        ModeTarget("overlay_egress", "host-srv", "ovl-egr", h1.addr),
        ModeTarget("macvlan", "mv-srv", "mv-cli", "10.77.1.1"),
    ]
    return s1, s2, targets


@contextlib.contextmanager
def endpoint_namespaces_removed(lab: BenchLab) -> Iterator[None]:
    """At exit, delete the endpoint namespaces (prefix `<host netns>-ep-`) the bench made."""
    try:
        yield
    finally:
        for host in lab.hosts:
            for name in links.list_netns(prefix=f"{host.netns}-ep-"):
                links.delete_netns(name)


async def bench(seconds: float, repeats: int) -> tuple[dict[str, Samples], str]:
    """Samples per mode (interleaved rounds) and the note on how the overlay was programmed."""
    with tempfile.TemporaryDirectory(prefix="vxmesh-modes-") as state_root, \
            BenchLab(2, "mod") as lab, endpoint_namespaces_removed(lab), \
            netlink_threads(lab.hosts) as threads:
        s1, s2 = None, None
        try:
            nodes = await overlay_nodes(lab.hosts, threads)
            s1, s2, modes = await build(lab, Path(state_root), nodes)
            note = overlay_note(nodes)
            targets = [mode.target(s1, s2) for mode in modes]
            results = measure_interleaved([targets], repeats, seconds)
        finally:
            for service in (s1, s2):
                if service is not None:
                    service.close()
    return results, note


def table(results: dict[str, Samples]) -> str:
    """Median (min-max) per mode; ratios to host round by round (median (min-max))."""
    host = results["host"]
    rows = [f"{'mode':<14} {'Gbit/s x1':>19} {'Gbit/s x4':>19} {'rr us':>19} "
            f"{'x1/host':>17} {'x4/host':>17} {'rr/host':>17}"]
    for mode in MODES:
        f = results[mode]
        rows.append(
            f"{mode:<14} {f.spread('gbps_p1').text():>19} {f.spread('gbps_p4').text():>19} "
            f"{f.spread('rr_us').text(1):>19} "
            f"{paired_ratio(f, host, 'gbps_p1').text():>17} "
            f"{paired_ratio(f, host, 'gbps_p4').text():>17} "
            f"{paired_ratio(f, host, 'rr_us').text():>17}")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per iperf3 run (2)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="rounds, every mode once per round (5)")
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    args = parser.parse_args(argv)
    if not 1 <= args.seconds <= 60 or not 1 <= args.repeats <= 20:
        parser.error("--seconds must be 1..60 and --repeats 1..20")
    load_before = loadavg()
    with cleanup_on_sigterm():
        results, note = trio.run(bench, args.seconds, args.repeats)
    load_after = loadavg()
    print(f"load average before: {load_before}; after: {load_after}")
    print(f"{args.repeats} rounds x {args.seconds:g} s per iperf3 run, modes interleaved "
          "(rotated order); median (min-max) over rounds; ratios to host taken round by "
          "round; clients on CPU 0, servers on CPU 1")
    print(note)
    print(table(results))
    if args.json:
        host = results["host"]
        out: dict[str, object] = {}
        for mode, samples in results.items():
            ratio = paired_ratio(samples, host, "gbps_p1")
            latency = paired_ratio(samples, host, "rr_us")
            out[mode] = {**figures_json(samples), "ratio_to_host": round(ratio.median, 3),
                         "ratio_to_host_spread": ratio.json(),
                         "latency_to_host": round(latency.median, 3),
                         "latency_to_host_spread": latency.json()}
        out.update({"repeats": args.repeats, "seconds": args.seconds,
                    "load_before": load_before, "load_after": load_after})
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
