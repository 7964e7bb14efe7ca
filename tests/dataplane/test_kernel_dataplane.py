"""The reconciler on a real kernel: three namespace hosts on a shared underlay bridge.

Each host gets one endpoint (a namespace with a veth into the network's bridge); the
reconciler of each host programs the overlay from a computed desired state. Then: full
reachability over IPv4 and IPv6 (on an IPv4 and on an IPv6 underlay), a restart of the
reconcilers under a continuous probe stream with zero loss, a hand-deleted FDB entry restored
by the next resync, foreign objects left alone.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import trio

from agent.lab.namespaces import NetnsLab, run
from overlay.desired import (
    AliveMember,
    DesiredState,
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

pytestmark = pytest.mark.kernel

VNI = 4097
NETWORK = NetworkSpec(name="blue", vni=VNI)
HOSTS = (1, 2, 3)


def mac_of(i: int) -> str:
    return f"02:42:0a:01:00:{i:02x}"


@dataclass
class Host:
    index: int
    ns: str
    endpoint_ns: str
    vtep: str
    nl: NetlinkThread
    reconciler: Reconciler

    def restart(self) -> None:
        self.nl.close()
        self.nl = NetlinkThread(self.ns)
        self.reconciler = Reconciler(NetlinkKernel(self.nl))


@dataclass
class Lab:
    hosts: list[Host]
    underlay_v6: bool

    def desired(self, host: Host, network: NetworkSpec = NETWORK) -> DesiredState:
        members = [AliveMember(f"h{h.index}", h.vtep) for h in self.hosts]
        endpoints = [EndpointEntry("blue", f"h{h.index}", mac_of(h.index),
                                   (f"10.1.0.{h.index}", f"fd10::{h.index}"))
                     for h in self.hosts]
        underlay = UnderlayView(host.vtep, 1500)
        return compute_desired([network], members, endpoints,
                               [LocalEndpoint("blue", f"vxe{host.index}")], underlay,
                               f"h{host.index}")

    async def program(self, network: NetworkSpec = NETWORK) -> None:
        for host in self.hosts:
            host.reconciler.set_desired(self.desired(host, network))
            assert await host.reconciler.apply(), host.reconciler.statistics()


def build(lab: NetnsLab, underlay_v6: bool) -> Lab:
    sw = lab.underlay_bridge()
    hosts = []
    mtu = 1430 if underlay_v6 else 1450
    for i in HOSTS:
        ns = lab.ns(f"h{i}")
        lab.plug(sw, ns, "eth0", [f"10.0.0.{i}/24", f"fd00::{i}/64"])
        endpoint = lab.ns(f"e{i}")
        run(["ip", "link", "add", f"vxe{i}", "mtu", str(mtu), "type", "veth", "peer", "name",
             "eth0", "mtu", str(mtu), "netns", endpoint], netns=ns)
        run(["ip", "link", "set", "eth0", "address", mac_of(i), "up"], netns=endpoint)
        run(["ip", "addr", "add", f"10.1.0.{i}/24", "dev", "eth0"], netns=endpoint)
        run(["ip", "addr", "add", f"fd10::{i}/64", "dev", "eth0", "nodad"], netns=endpoint)
        nl = NetlinkThread(ns)
        hosts.append(Host(i, ns, endpoint, f"fd00::{i}" if underlay_v6 else f"10.0.0.{i}",
                          nl, Reconciler(NetlinkKernel(nl))))
    return Lab(hosts, underlay_v6)


@pytest.fixture
def v4lab(netns_lab: NetnsLab) -> Iterator[Lab]:
    built = build(netns_lab, underlay_v6=False)
    yield built
    for host in built.hosts:
        host.nl.close()


def ping(ns: str, target: str) -> bool:
    return run(["ping", "-c", "1", "-W", "2", target], netns=ns, check=False).returncode == 0


def reach_all(lab: Lab) -> list[str]:
    failures = []
    for src in lab.hosts:
        for dst in lab.hosts:
            if src is dst:
                continue
            for target in (f"10.1.0.{dst.index}", f"fd10::{dst.index}"):
                if not ping(src.endpoint_ns, target):
                    failures.append(f"e{src.index} -> {target}")
    return failures


@pytest.mark.parametrize("underlay_v6", [False, True], ids=["ipv4-underlay", "ipv6-underlay"])
async def test_every_endpoint_reaches_every_other(netns_lab: NetnsLab,
                                                  underlay_v6: bool) -> None:
    lab = build(netns_lab, underlay_v6)
    try:
        await lab.program()
        assert reach_all(lab) == []
        h1 = lab.hosts[0]
        links = run(["ip", "-d", "link", "show", "vxtun4097"], netns=h1.ns).stdout
        assert "vxlan id 4097" in links and "dstport 4789" in links
        assert "nolearning" in links and "proxy" in links
        assert f"mtu {1430 if underlay_v6 else 1450}" in links and "master vxbr4097" in links
        neigh = run(["ip", "neigh", "show", "dev", "vxtun4097"], netns=h1.ns).stdout
        assert f"fd10::2 lladdr {mac_of(2)} PERMANENT" in neigh
        stats = h1.reconciler.statistics()
        assert (stats.fdb_entries, stats.flood_entries, stats.neighbor_entries) == (2, 2, 4)
    finally:
        for host in lab.hosts:
            host.nl.close()


async def test_restart_under_traffic_loses_nothing(v4lab: Lab) -> None:
    await v4lab.program()
    e1, e2 = v4lab.hosts[0], v4lab.hosts[1]
    stream = subprocess.Popen(
        ip_netns_exec(e1.endpoint_ns, ["ping", "-i", "0.01", "-c", "300", "-W", "1",
                                       "10.1.0.2"]),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        await trio.sleep(0.5)  # the stream is running
        for host in (e1, e2):
            host.restart()
            host.reconciler.set_desired(v4lab.desired(host))
            assert await host.reconciler.apply()
            stats = host.reconciler.statistics()
            # Adopted: the device pass only; no entry was rewritten.
            assert stats.ops_by_result == {"ok": 1}, stats
            assert stats.fdb_entries == 2 and stats.neighbor_entries == 4
        output, _ = stream.communicate(timeout=30)
    finally:
        if stream.poll() is None:
            stream.kill()
            stream.wait()
    match = re.search(r"(\d+) packets transmitted, (\d+) received", output)
    assert match is not None, output
    assert match.group(1) == match.group(2) == "300", output


async def test_hand_deleted_entry_restored_and_foreign_objects_survive(v4lab: Lab) -> None:
    await v4lab.program()
    h1 = v4lab.hosts[0]
    ns = h1.ns
    run(["bridge", "fdb", "del", mac_of(2), "dev", "vxtun4097", "dst", "10.0.0.2", "self"],
        netns=ns)
    run(["ip", "neigh", "del", "fd10::3", "dev", "vxtun4097"], netns=ns)
    # Foreign: a bridge, a vxlan device with its own permanent entry, and a static
    # (not permanent) entry on our own vxlan device.
    run("ip link add brforeign type bridge", netns=ns)
    run("ip link add vxlan0 type vxlan id 77 dstport 4790 local 10.0.0.1", netns=ns)
    run("bridge fdb add 02:00:00:00:aa:01 dev vxlan0 dst 10.0.0.9 self permanent", netns=ns)
    run("bridge fdb add 02:00:00:00:aa:02 dev vxtun4097 dst 10.0.0.9 self static", netns=ns)
    assert f"{mac_of(2)} dst 10.0.0.2" not in run("bridge fdb show dev vxtun4097",
                                                   netns=ns).stdout
    h1.reconciler.request_resync()
    assert await h1.reconciler.apply()
    fdb = run("bridge fdb show", netns=ns).stdout
    assert f"{mac_of(2)} dev vxtun4097 dst 10.0.0.2 self permanent" in fdb
    assert "02:00:00:00:aa:01 dev vxlan0 dst 10.0.0.9 self permanent" in fdb
    assert "02:00:00:00:aa:02 dev vxtun4097 dst 10.0.0.9 self static" in fdb
    assert "fd10::3" in run("ip neigh show dev vxtun4097", netns=ns).stdout
    assert ping(h1.endpoint_ns, "10.1.0.2") and ping(h1.endpoint_ns, "fd10::3")
    # The network goes away: our devices go, the foreign ones stay.
    h1.reconciler.set_desired(compute_desired([], [], [], [], UnderlayView("10.0.0.1", 1500),
                                              "h1"))
    assert await h1.reconciler.apply()
    names = run("ip -o link show", netns=ns).stdout
    assert "vxtun4097" not in names and "vxbr4097" not in names
    assert "brforeign" in names and "vxlan0" in names
    assert "02:00:00:00:aa:01 dev vxlan0" in run("bridge fdb show", netns=ns).stdout


async def test_orphan_device_from_a_crash_is_reclaimed(netns_lab: NetnsLab) -> None:
    ns = netns_lab.ns("h1")
    netns_lab.plug(netns_lab.underlay_bridge(), ns, "eth0", ["10.0.0.1/24"])
    # A crash mid-creation left our vxlan name with the wrong VNI and our bridge name taken
    # by a veth; an old network's device holds an entry.
    run(f"ip link add vxtun{VNI} type vxlan id 9 dstport 4789 local 10.0.0.1", netns=ns)
    run(f"ip link add vxbr{VNI} type veth peer name orphanpeer", netns=ns)
    run("ip link add vxtun300 type vxlan id 300 dstport 4789 local 10.0.0.1", netns=ns)
    run("bridge fdb add 02:00:00:00:00:09 dev vxtun300 dst 10.0.0.2 self permanent", netns=ns)
    nl = NetlinkThread(ns)
    try:
        reconciler = Reconciler(NetlinkKernel(nl))
        reconciler.set_desired(compute_desired(
            [NETWORK], [AliveMember("h2", "10.0.0.2")],
            [EndpointEntry("blue", "h2", mac_of(2), ("10.1.0.2",))], [],
            UnderlayView("10.0.0.1", 1500), "h1"))
        assert await reconciler.apply(), reconciler.statistics()
    finally:
        nl.close()
    detail = run(f"ip -d link show vxtun{VNI}", netns=ns).stdout
    assert f"vxlan id {VNI}" in detail
    assert "bridge" in run(f"ip -d link show vxbr{VNI}", netns=ns).stdout
    assert "vxtun300" not in run("ip -o link show", netns=ns).stdout



async def test_the_gateway_is_each_hosts_own_bridge(v4lab: Lab) -> None:
    """Every host's bridge carries the network's gateway address (anycast): an endpoint's ARP
    for it is answered by its own host's bridge, never across the tunnel (the vxlan device's
    proxy), so its own host routes what the endpoint sends off the subnet."""
    with_gateway = NetworkSpec(name="blue", vni=VNI, gateway="10.1.0.254/24")
    await v4lab.program(with_gateway)
    for host in v4lab.hosts:
        assert "inet 10.1.0.254/24" in run("ip addr show vxbr4097", netns=host.ns).stdout
        assert ping(host.endpoint_ns, "10.1.0.254")
        bridge_mac = run("cat /sys/class/net/vxbr4097/address", netns=host.ns).stdout.strip()
        neigh = run("ip neigh show 10.1.0.254", netns=host.endpoint_ns).stdout
        assert bridge_mac in neigh, (host.index, neigh, bridge_mac)
    assert reach_all(v4lab) == []
