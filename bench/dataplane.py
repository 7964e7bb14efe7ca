"""Data-plane throughput and latency: reconciler-programmed overlay vs hand-made VXLAN vs host,
and every kernel setting of the VXLAN path switched on and off.

Usage: bench/dataplane.py [--seconds S] [--repeats R] [--settings all|none|NAME,...]
                          [--paths all|NAME,...] [--json]

Two namespace hosts h1, h2 on a veth underlay (MTU 1500) joined by a switch namespace, all
created and deleted by this script (agent.lab.namespaces: unique prefix, clean-up even on failure).
Paths between h1 and h2:
  (a) overlay_reconciler: endpoints a1, a2 (namespaces with a veth into the network bridge),
      the bridge, vxlan device, FDB and neighbor entries programmed by
      `overlay.reconciler.Reconciler` from `overlay.desired.compute_desired`;
  (b) overlay_hand: endpoints b1, b2 on a VXLAN made by hand with iproute2 (same MTU 1450,
      same options: nolearning, proxy, permanent FDB/neighbor/flood entries), every setting
      at the kernel's default;
  (c) host: h1 to h2 directly over the underlay;
  (d) overlay_encrypted: endpoints e1, e2 of an encrypted network (VXLAN between WireGuard
      tunnel addresses, MTU 1390), programmed by the same reconciler, over the WireGuard
      interfaces `underlay.wireguard` brings up (kernel module if the probe finds it, else
      wireguard-go: the backend is printed and in the JSON);
  (n) overlay_nonf: path (a) with br_netfilter's hooks off in the two host namespaces
      (`net.bridge.bridge-nf-call-ip{,6}tables` are per network namespace), switched just
      before the row is measured and back right after: what a host enforcing no network
      policy could run without;
  (g) overlay_tc: bridge-less L2: endpoints g1, g2 whose veth's host side and a vxlan
      device are joined by tc (u32 + mirred redirect, both ways; the vxlan FDB picks the
      remote VTEP);
  (h) overlay_routed: routed L3 (Calico's/flannel's model): endpoints r1, r2 with a /32 and
      a link-local gateway, IP forwarding on both hosts, /32 routes via the remote host's
      vxlan address;
  (m) overlay_macvlan: bridge-less L2 without veth: the endpoints' eth0 are macvlan (bridge
      mode) children of a vxlan device;
  (b+NAME) path (b) with one kernel setting switched away from its default (`settings_of`):
      GRO on the endpoint veths, on the vxlan device, fraglist GRO, GRO and UDP GRO
      forwarding on the underlay, UDP tunnel segmentation offload on the underlay, the outer
      UDP checksum, the MTU (1500 instead of 1450, fragmenting outer packets), br_netfilter's
      hooks on bridged frames (where the module is loaded), GRO with threaded NAPI on the
      endpoint veths and RPS on the vxlan device (both: receive work a kernel thread or
      another CPU can take from the sender's CPU). The switch
      happens just before the row is measured; every other row sees the defaults, and each
      b+NAME is measured back to back with a row of (b) at the defaults (b@NAME), 1 stream
      and request/response only.
For each: iperf3 TCP with 1 and 4 streams (`--seconds` each) and a 64-byte TCP
request/response probe (bench/pathbench.py: Python on both ends, its own cost is in every path
alike, so compare ratios, not absolute microseconds). Clients on CPU 0, servers on CPU 1
(taskset). `--repeats` rounds, every path once per round in a rotated order; figures are the
median with the min-max over rounds, ratios are taken round by round (two paths measured
moments apart) and given as median and min-max. The load average before and after is printed.
`--paths` measures only the paths named (with (a) and (c), to which every ratio is taken):
more rounds in the same time; the figures of the others are absent from the JSON.

With --json the last line is one JSON object: per path `gbps_p1`, `gbps_p4`, `rr_us` (medians)
and `gbps_p1_spread`, ... ([min, max]); `ratio_throughput` = gbps_p1(a)/gbps_p1(b),
`ratio_throughput_p4` likewise, `ratio_latency` = rr_us(b)/rr_us(a) (1.0: as fast as the
hand-made VXLAN; lower: slower), and `ratio_to_host_throughput` / `ratio_to_host_latency` for
(a)/(c) (latency: rr_us(c)/rr_us(a)); `ratio_encrypted_to_overlay` = gbps_p1(d)/gbps_p1(a)
(with `_p4` and `_latency` likewise) and `wireguard_backend`; each ratio with `_spread`;
`to_host`: per overlay path (a, n, g, h, m) its `throughput`, `throughput_p4` and `latency`
ratios to (c) taken the same way (latency: rr_us(c)/rr_us(path)), `to_reconciler` those of
n, g, h, m to (a);
`settings`: per setting its kernel default, the switched row's figures (`switched`, 1 stream
and RR only), the default row measured next to it (`default_row`) and the ratios
(`ratio_throughput` = switched/default, `ratio_latency` = default rr_us/switched rr_us, each
with `_spread`); `repeats`, `seconds`, `load_before`, `load_after`.

May import: the standard library, trio, overlay.*, underlay.*, agent.lab.namespaces,
bench/pathbench.py.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import trio
from pathbench import (
    Samples,
    Spread,
    Target,
    figures_json,
    loadavg,
    measure_interleaved,
    paired_ratio,
)

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
from underlay.netns_exec import ip_netns_exec, nsenter_net
from underlay.wireguard import (
    WireGuardInterface,
    interface_name,
    load_private_key,
    probe_wireguard,
    public_key_of,
)
from underlay.wireguard_peers import DEFAULT_PORT, WireGuardPeer, tunnel_address, wireguard_mtu

UNDERLAY_MTU = 1500
OVERLAY_MTU = 1450
ENCRYPTED_MTU = 1390
HAND_VXLAN = "hvx200"
HAND_BRIDGE = "hbr200"
TC_VXLAN = "tvx400"
ROUTED_VXLAN = "rvx500"
MACVLAN_VXLAN = "mvx600"
PATHS = ("overlay_reconciler", "overlay_hand", "host", "overlay_encrypted", "overlay_nonf",
         "overlay_tc", "overlay_routed", "overlay_macvlan")
TO_HOST = ("overlay_reconciler", "overlay_nonf", "overlay_tc", "overlay_routed",
           "overlay_macvlan")
"""The overlay paths whose ratio to the host path is printed (the targets' ratio)."""


# --------------------------------------------------------------------------- topology


def endpoint(lab: NetnsLab, host_ns: str, name: str, host_ifname: str, mac: str,
             ip: str, mtu: int = OVERLAY_MTU, prefix: int = 24) -> str:
    ns = lab.ns(name)
    run(["ip", "link", "add", host_ifname, "mtu", str(mtu), "type", "veth", "peer",
         "name", "eth0", "mtu", str(mtu), "netns", ns], netns=host_ns)
    run(["ip", "link", "set", "eth0", "address", mac, "up"], netns=ns)
    run(["ip", "addr", "add", f"{ip}/{prefix}", "dev", "eth0"], netns=ns)
    return ns


@dataclass(frozen=True)
class HandSide:
    """One host's half of path (b): its namespace, underlay addresses, the remote endpoint
    and the names of the endpoint veth (host side `port_ifname`, `eth0` in `endpoint_ns`)."""

    ns: str
    local: str
    remote: str
    remote_mac: str
    remote_ip: str
    port_ifname: str
    endpoint_ns: str


def hand_vxlan_device(side: HandSide, udp_csum: bool | None = None) -> None:
    """Path (b)'s vxlan device with its entries, as an operator would type it, with the same
    options as the reconciler (`udp_csum` None: the kernel's default checksum setting)."""
    csum = "" if udp_csum is None else "udpcsum" if udp_csum else "noudpcsum"
    for cmd in (
        f"ip link add {HAND_VXLAN} type vxlan id 200 dstport 4789 local {side.local} "
        f"nolearning proxy {csum}",
        f"ip link set {HAND_VXLAN} mtu {OVERLAY_MTU}",
        f"ip link set {HAND_VXLAN} master {HAND_BRIDGE} up",
        f"ip neigh add {side.remote_ip} lladdr {side.remote_mac} dev {HAND_VXLAN} nud permanent",
        f"bridge fdb add {side.remote_mac} dev {HAND_VXLAN} dst {side.remote} self permanent",
        f"bridge fdb append 00:00:00:00:00:00 dev {HAND_VXLAN} dst {side.remote} self "
        "permanent",
    ):
        run(cmd, netns=side.ns)


def hand_vxlan(side: HandSide) -> None:
    """Path (b): bridge, endpoint port and vxlan device made with iproute2."""
    for cmd in (
        f"ip link add {HAND_BRIDGE} type bridge",
        f"ip link set {HAND_BRIDGE} mtu {OVERLAY_MTU} up",
        f"ip link set {side.port_ifname} master {HAND_BRIDGE} up",
    ):
        run(cmd, netns=side.ns)
    hand_vxlan_device(side)


def tc_redirect(side: HandSide, local_mac: str) -> None:
    """Path (g), bridge-less L2: the endpoint veth's host side and a vxlan device joined by
    tc alone. Everything the endpoint sends is redirected (mirred) into the vxlan device,
    whose own FDB picks the remote VTEP (ARP answered by its `proxy` from the neighbor
    table); what the vxlan device receives for the endpoint's MAC is redirected to the veth.
    No bridge, so no br_netfilter detour (cls_u32: this kernel has no flower)."""
    for cmd in (
        f"ip link add {TC_VXLAN} type vxlan id 400 dstport 4789 local {side.local} "
        "nolearning proxy",
        f"ip link set {TC_VXLAN} mtu {OVERLAY_MTU} up",
        f"ip link set {side.port_ifname} up",
        f"ip neigh add {side.remote_ip} lladdr {side.remote_mac} dev {TC_VXLAN} nud permanent",
        f"bridge fdb add {side.remote_mac} dev {TC_VXLAN} dst {side.remote} self permanent",
        f"bridge fdb append 00:00:00:00:00:00 dev {TC_VXLAN} dst {side.remote} self "
        "permanent",
        f"tc qdisc add dev {side.port_ifname} clsact",
        f"tc filter add dev {side.port_ifname} ingress protocol all prio 1 u32 match u32 0 0 "
        f"action mirred egress redirect dev {TC_VXLAN}",
        f"tc qdisc add dev {TC_VXLAN} clsact",
        f"tc filter add dev {TC_VXLAN} ingress protocol all prio 1 u32 match ether dst "
        f"{local_mac} action mirred egress redirect dev {side.port_ifname}",
    ):
        run(cmd, netns=side.ns)


@dataclass(frozen=True)
class MacvlanSide:
    """One host's half of path (m): its namespace, underlay addresses and the remote
    endpoint; the local endpoint `name` (namespace and, in the host until it moves, the
    macvlan's name) with its MAC and address."""

    ns: str
    local: str
    remote: str
    remote_mac: str
    remote_ip: str
    name: str
    mac: str
    ip: str


def macvlan_endpoint(lab: NetnsLab, side: MacvlanSide) -> str:
    """Path (m), bridge-less L2 without veth: the endpoint's eth0 is a macvlan (bridge mode)
    whose lower device is a vxlan device (no bridge, no veth pair: macvlan hands a frame to
    the vxlan device's xmit directly, and the vxlan device's received frames to the
    endpoint by destination MAC in the same receive pass). The vxlan device's FDB picks the
    remote VTEP; its `proxy` answers ARP from its neighbor table."""
    ns = lab.ns(side.name)
    for cmd in (
        f"ip link add {MACVLAN_VXLAN} type vxlan id 600 dstport 4789 local {side.local} "
        "nolearning proxy",
        f"ip link set {MACVLAN_VXLAN} mtu {OVERLAY_MTU} up",
        f"ip neigh add {side.remote_ip} lladdr {side.remote_mac} dev {MACVLAN_VXLAN} "
        "nud permanent",
        f"bridge fdb add {side.remote_mac} dev {MACVLAN_VXLAN} dst {side.remote} self "
        "permanent",
        f"bridge fdb append 00:00:00:00:00:00 dev {MACVLAN_VXLAN} dst {side.remote} self "
        "permanent",
        f"ip link add link {MACVLAN_VXLAN} name {side.name} address {side.mac} "
        "type macvlan mode bridge",
        f"ip link set {side.name} netns {ns}",
    ):
        run(cmd, netns=side.ns)
    for cmd in (
        f"ip link set {side.name} name eth0",
        "ip link set eth0 up",
        f"ip addr add {side.ip}/24 dev eth0",
    ):
        run(cmd, netns=ns)
    return ns


@dataclass(frozen=True)
class RoutedSide:
    """One host's half of path (h), routed (L3, as Calico's and flannel's vxlan backends):
    the endpoint has a /32 and a default route to a link-local gateway; the host routes the
    local endpoint's /32 to its veth and the remote endpoint's /32 via the remote host's
    vxlan address (`vtep_ip`, a /32 on each vxlan device, with a permanent neighbor and FDB
    entry for the remote device's MAC)."""

    ns: str
    local: str
    remote: str
    port_ifname: str
    endpoint_ns: str
    endpoint_ip: str
    endpoint_mac: str
    vtep_ip: str
    vtep_mac: str
    remote_endpoint_ip: str
    remote_vtep_ip: str
    remote_vtep_mac: str


ROUTED_GATEWAY = "169.254.1.1"


def routed_path(side: RoutedSide) -> None:
    """Path (h): no bridge, IP forwarding on both hosts, vxlan between them."""
    port_mac = run(["cat", f"/sys/class/net/{side.port_ifname}/address"],
                   netns=side.ns).stdout.strip()
    for cmd in (
        "sysctl -qw net.ipv4.ip_forward=1",
        f"ip link add {ROUTED_VXLAN} address {side.vtep_mac} type vxlan id 500 dstport 4789 "
        f"local {side.local} nolearning",
        f"ip link set {ROUTED_VXLAN} mtu {OVERLAY_MTU} up",
        f"ip addr add {side.vtep_ip}/32 dev {ROUTED_VXLAN}",
        f"ip link set {side.port_ifname} up",
        f"ip route add {side.endpoint_ip}/32 dev {side.port_ifname}",
        f"ip neigh add {side.endpoint_ip} lladdr {side.endpoint_mac} dev {side.port_ifname} "
        "nud permanent",
        f"ip neigh add {side.remote_vtep_ip} lladdr {side.remote_vtep_mac} dev {ROUTED_VXLAN} "
        "nud permanent",
        f"bridge fdb add {side.remote_vtep_mac} dev {ROUTED_VXLAN} dst {side.remote} self "
        "permanent",
        f"ip route add {side.remote_endpoint_ip}/32 via {side.remote_vtep_ip} "
        f"dev {ROUTED_VXLAN} onlink",
    ):
        run(cmd, netns=side.ns)
    for cmd in (
        f"ip route add {ROUTED_GATEWAY} dev eth0 scope link",
        f"ip route add default via {ROUTED_GATEWAY} dev eth0",
        f"ip neigh add {ROUTED_GATEWAY} lladdr {port_mac} dev eth0 nud permanent",
    ):
        run(cmd, netns=side.endpoint_ns)


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


# --------------------------------------------------------------------------- settings


def ethtool_features(ns: str, ifname: str) -> dict[str, bool]:
    """`ethtool -k` of a device: feature name -> on."""
    out = run(["ethtool", "-k", ifname], netns=ns).stdout
    return {m[1]: m[2] == "on" for m in re.finditer(r"^\s*([\w-]+): (on|off)", out, re.M)}


@dataclass(frozen=True)
class Device:
    ns: str
    ifname: str


@dataclass(frozen=True)
class FeatureSetting:
    """ethtool features switched together on some devices of path (b) (on both hosts).
    `shown`: the name `ethtool -k` prints for the first feature (its state is the default)."""

    name: str
    what: str
    features: tuple[str, ...]
    shown: str
    devices: tuple[Device, ...]

    def state(self) -> bool:
        first = self.devices[0]
        return ethtool_features(first.ns, first.ifname)[self.shown]

    def switch(self, on: bool) -> None:
        # Turning on: in the order given (GRO before what depends on it); off: reversed.
        for device in self.devices:
            for feature in (self.features if on else tuple(reversed(self.features))):
                run(["ethtool", "-K", device.ifname, feature, "on" if on else "off"],
                    netns=device.ns)


@dataclass(frozen=True)
class ChecksumSetting:
    """The outer UDP checksum of path (b)'s vxlan devices (a creation-time attribute: the
    devices are re-created with their entries)."""

    sides: tuple[HandSide, ...]
    name: str = "udp_csum"
    what: str = "outer UDP checksum on the vxlan device (udpcsum)"

    def state(self) -> bool:
        side = self.sides[0]
        shown = run(["ip", "-d", "link", "show", HAND_VXLAN], netns=side.ns).stdout
        return " noudpcsum " not in shown

    def switch(self, on: bool) -> None:
        for side in self.sides:
            run(["ip", "link", "del", HAND_VXLAN], netns=side.ns)
            hand_vxlan_device(side, udp_csum=on)


@dataclass(frozen=True)
class MtuSetting:
    """Path (b) at the underlay's own MTU instead of the overlay MTU the agent derives: the
    endpoint veths, bridge and vxlan device at 1500 over a 1500 underlay, so full-size outer
    packets are fragmented (what Docker's overlay does when the MTU is not given to it)."""

    sides: tuple[HandSide, ...]
    name: str = "mtu_1500"
    what: str = ("MTU 1500 (not 1450) on endpoint, bridge and vxlan over the 1500 underlay: "
                 "outer packets fragment")

    def state(self) -> bool:
        side = self.sides[0]
        return f" mtu {UNDERLAY_MTU} " in run(["ip", "link", "show", HAND_VXLAN],
                                              netns=side.ns).stdout

    def switch(self, on: bool) -> None:
        mtu = str(UNDERLAY_MTU if on else OVERLAY_MTU)
        for side in self.sides:
            for ifname in (HAND_VXLAN, HAND_BRIDGE, side.port_ifname):
                run(["ip", "link", "set", ifname, "mtu", mtu], netns=side.ns)
            run(["ip", "link", "set", "eth0", "mtu", mtu], netns=side.endpoint_ns)


@dataclass(frozen=True)
class SysctlSetting:
    """Boolean sysctls switched together in the host namespaces of path (b)."""

    name: str
    what: str
    keys: tuple[str, ...]
    namespaces: tuple[str, ...]

    def state(self) -> bool:
        found = run(["sysctl", "-n", self.keys[0]], netns=self.namespaces[0]).stdout
        return found.strip() == "1"

    def switch(self, on: bool) -> None:
        for ns in self.namespaces:
            for key in self.keys:
                run(["sysctl", "-qw", f"{key}={int(on)}"], netns=ns)


@dataclass(frozen=True)
class SysfsSetting:
    """A per-device sysfs attribute (`/sys/class/net/DEV/<attribute>`, read and written in
    the device's namespace) switched between `off` and `on` values on some devices of path
    (b), after the ethtool `features` it needs are on (they go back to off when it is off)."""

    name: str
    what: str
    attribute: str
    on: str
    off: str
    devices: tuple[Device, ...]
    features: tuple[str, ...] = ()

    def state(self) -> bool:
        first = self.devices[0]
        found = run(["cat", f"/sys/class/net/{first.ifname}/{self.attribute}"],
                    netns=first.ns).stdout.strip()
        return int(found, 16) == int(self.on, 16)

    def switch(self, on: bool) -> None:
        for device in self.devices:
            if on:
                for feature in self.features:
                    run(["ethtool", "-K", device.ifname, feature, "on"], netns=device.ns)
            run(["sh", "-c", f"echo {self.on if on else self.off} > "
                 f"/sys/class/net/{device.ifname}/{self.attribute}"], netns=device.ns)
            if not on:
                for feature in reversed(self.features):
                    run(["ethtool", "-K", device.ifname, feature, "off"], netns=device.ns)


Setting = FeatureSetting | ChecksumSetting | MtuSetting | SysctlSetting | SysfsSetting


def settings_of(sides: Sequence[HandSide]) -> list[Setting]:
    """Every kernel setting of path (b) this bench switches, on both hosts."""
    veths = tuple(device for side in sides for device in (
        Device(side.ns, side.port_ifname), Device(side.endpoint_ns, "eth0")))
    vxlans = tuple(Device(side.ns, HAND_VXLAN) for side in sides)
    underlay = tuple(Device(side.ns, "eth0") for side in sides)
    return [
        FeatureSetting("gro_veth", "GRO on the endpoint veths (both ends; veth NAPI)",
                       ("gro",), "generic-receive-offload", veths),
        FeatureSetting("gro_list_veth", "GRO + fraglist GRO (rx-gro-list) on the endpoint "
                       "veths", ("gro", "rx-gro-list"), "rx-gro-list", veths),
        FeatureSetting("gro_vxlan", "GRO on the vxlan device (its gro_cells)", ("gro",),
                       "generic-receive-offload", vxlans),
        FeatureSetting("gro_underlay", "GRO on the underlay veth (host eth0)", ("gro",),
                       "generic-receive-offload", underlay),
        FeatureSetting("udp_gro_fwd_underlay", "GRO + rx-udp-gro-forwarding on the underlay "
                       "veth", ("gro", "rx-udp-gro-forwarding"), "rx-udp-gro-forwarding",
                       underlay),
        FeatureSetting("udp_tnl_tso_underlay", "UDP tunnel segmentation offload on the "
                       "underlay veth (tx-udp_tnl[-csum]-segmentation; off: GSO in software "
                       "before the underlay)", ("tx-udp_tnl-segmentation",
                                                "tx-udp_tnl-csum-segmentation"),
                       "tx-udp_tnl-segmentation", underlay),
        SysfsSetting("threaded_gro_veth", "GRO with threaded NAPI on the endpoint veths: "
                     "their receive work in a kernel thread the scheduler may run on the "
                     "other CPU", "threaded", "1", "0", veths, ("gro",)),
        SysfsSetting("rps_vxlan", "RPS on the vxlan device: decapsulated packets steered to "
                     "a CPU by flow hash (every CPU in the mask)", "queues/rx-0/rps_cpus",
                     f"{(1 << (os.cpu_count() or 1)) - 1:x}", "0", vxlans),
        ChecksumSetting(tuple(sides)),
        MtuSetting(tuple(sides)),
        *filter(None, [bridge_netfilter([side.ns for side in sides])]),
    ]


def bridge_netfilter(namespaces: Sequence[str]) -> SysctlSetting | None:
    """br_netfilter's hooks on bridged frames in `namespaces` (the sysctls are per network
    namespace); None where the kernel has no br_netfilter."""
    if not Path("/proc/sys/net/bridge").is_dir():
        return None
    return SysctlSetting(
        "bridge_nf_call", "br_netfilter: bridged frames through the ip/ip6tables hooks "
        "(net.bridge.bridge-nf-call-iptables/ip6tables in the host namespaces)",
        ("net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables"),
        tuple(namespaces))


class Switchboard:
    """Puts path (b) in the state a row wants: every setting at its default except the
    row's own, switched; only settings whose state differs are touched."""

    def __init__(self, settings: Sequence[Setting]) -> None:
        self.settings = {setting.name: setting for setting in settings}
        self.defaults = {setting.name: setting.state() for setting in settings}
        self.current = dict(self.defaults)

    @staticmethod
    def row(name: str) -> str:
        """The row measuring path (b) with setting `name` switched."""
        return f"b+{name}"

    @staticmethod
    def baseline(name: str) -> str:
        """The row measuring path (b) at the defaults right next to `row(name)`."""
        return f"b@{name}"

    def before(self, row: str) -> None:
        wanted = dict(self.defaults)
        for name in self.settings:
            if row == self.row(name):
                wanted[name] = not self.defaults[name]
        for name, on in wanted.items():
            if self.current[name] != on:
                self.settings[name].switch(on)
                self.current[name] = on

    def reset(self) -> None:
        self.before("")


# --------------------------------------------------------------------------- run


@dataclass(frozen=True)
class Run:
    samples: dict[str, Samples]
    backend: str
    defaults: dict[str, bool]
    settings: dict[str, str]  # name -> what


def bench(seconds: float, repeats: int, chosen: Sequence[str] | None, key_dir: Path,
          paths: Sequence[str] = PATHS) -> Run:
    lab = NetnsLab("d19")
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
        sides = [HandSide(ns, vtep, hosts[1 - i][1], f"02:42:0a:02:00:{2 - i:02x}",
                          f"10.2.0.{2 - i}", f"hbe{i + 1}", b[i])
                 for i, (ns, vtep) in enumerate(hosts)]
        for side in sides:
            hand_vxlan(side)
        g = [endpoint(lab, ns, f"g{i + 1}", f"tge{i + 1}", f"02:42:0a:04:00:{i + 1:02x}",
                      f"10.4.0.{i + 1}") for i, (ns, _v) in enumerate(hosts)]
        for i, (ns, vtep) in enumerate(hosts):
            tc_redirect(HandSide(ns, vtep, hosts[1 - i][1], f"02:42:0a:04:00:{2 - i:02x}",
                                 f"10.4.0.{2 - i}", f"tge{i + 1}", g[i]),
                        f"02:42:0a:04:00:{i + 1:02x}")
        r = [endpoint(lab, ns, f"r{i + 1}", f"rve{i + 1}", f"02:42:0a:05:00:{i + 1:02x}",
                      f"10.5.0.{i + 1}", prefix=32) for i, (ns, _v) in enumerate(hosts)]
        for i, (ns, vtep) in enumerate(hosts):
            routed_path(RoutedSide(
                ns, vtep, hosts[1 - i][1], f"rve{i + 1}", r[i], f"10.5.0.{i + 1}",
                f"02:42:0a:05:00:{i + 1:02x}", f"10.5.255.{i + 1}",
                f"02:42:0a:05:ff:{i + 1:02x}", f"10.5.0.{2 - i}", f"10.5.255.{2 - i}",
                f"02:42:0a:05:ff:{2 - i:02x}"))
        m = [macvlan_endpoint(lab, MacvlanSide(
            ns, vtep, hosts[1 - i][1], f"02:42:0a:06:00:{2 - i:02x}", f"10.6.0.{2 - i}",
            f"m{i + 1}", f"02:42:0a:06:00:{i + 1:02x}", f"10.6.0.{i + 1}"))
            for i, (ns, vtep) in enumerate(hosts)]
        netfilter = bridge_netfilter([ns for ns, _v in hosts])

        def target(name: str, client_ns: str, server_ns: str, address: str) -> Target:
            return Target(name, tuple(nsenter_net(server_ns, [])),
                          tuple(ip_netns_exec(client_ns, [])), address, server_ns)

        targets = [
            # (a) next to (c) and (b) in every rotation but one: the pairs compared most
            target("overlay_reconciler", a[0], a[1], "10.1.0.2"),
            target("host", hosts[0][0], hosts[1][0], "10.0.0.2"),
            target("overlay_tc", g[0], g[1], "10.4.0.2"),
            target("overlay_routed", r[0], r[1], "10.5.0.2"),
            target("overlay_macvlan", m[0], m[1], "10.6.0.2"),
            target("overlay_nonf", a[0], a[1], "10.1.0.2"),
            target("overlay_hand", b[0], b[1], "10.2.0.2"),
            target("overlay_encrypted", e[0], e[1], "10.3.0.2"),
        ]
        hand = next(t for t in targets if t.name == "overlay_hand")
        targets = [t for t in targets if t.name in paths]
        for t in targets:
            if run(["ping", "-c", "1", "-W", "2", t.address], netns=t.client[3],
                   check=False).returncode != 0:
                raise SystemExit(f"path {t.name}: {t.address} unreachable")
        all_settings = settings_of(sides)
        known = [setting.name for setting in all_settings]
        wanted = known if chosen is None else list(chosen)
        unknown = [name for name in wanted if name not in known]
        if unknown:
            raise SystemExit(f"--settings: unknown {unknown}; known: {','.join(known)}")
        board = Switchboard([s for s in all_settings if s.name in wanted])

        def hand_row(name: str) -> Target:
            return Target(name, hand.server, hand.client, hand.address, hand.server_key,
                          four_streams=False)

        groups = [targets] + [[hand_row(board.row(name)), hand_row(board.baseline(name))]
                              for name in board.settings]
        def before(name: str) -> None:
            # overlay_nonf: path (a) with br_netfilter off in the host namespaces, every
            # other row with it as it was (the settings rows as their Switchboard wants).
            if name == "overlay_nonf":
                board.reset()
                if netfilter is not None:
                    netfilter.switch(False)
            else:
                if netfilter is not None:
                    netfilter.switch(netfilter_default)
                board.before(name)

        netfilter_default = netfilter.state() if netfilter is not None else False
        try:
            samples = measure_interleaved(groups, repeats, seconds, before)
        finally:
            board.reset()
            if netfilter is not None:
                netfilter.switch(netfilter_default)
        return Run(samples, backend, board.defaults,
                   {name: setting.what for name, setting in board.settings.items()})
    finally:
        for nl in nls:
            nl.close()
        for i, (ns, _v) in enumerate(hosts):  # wireguard-go ends with its interface
            run(["ip", "link", "del", interface_name(f"{lab.prefix}h{i + 1}")], netns=ns,
                check=False)
        lab.close()


def paired(numerator: Samples, denominator: Samples) -> tuple[Spread, Spread, Spread]:
    """numerator/denominator round by round: 1-stream and 4-stream throughput, and latency
    as denominator's rr_us over numerator's (higher: numerator faster)."""
    return (paired_ratio(numerator, denominator, "gbps_p1"),
            paired_ratio(numerator, denominator, "gbps_p4"),
            paired_ratio(denominator, numerator, "rr_us"))


def ratio_json(names: tuple[str, str, str],
               spreads: tuple[Spread, Spread, Spread]) -> dict[str, object]:
    """Each ratio under its name, its [min, max] under `<name>_spread`."""
    out: dict[str, object] = {}
    for name, spread in zip(names, spreads, strict=True):
        out[name] = round(spread.median, 3)
        out[f"{name}_spread"] = spread.json()
    return out


def report(result: Run, seconds: float, repeats: int, load_before: str,
           load_after: str) -> dict[str, object]:
    samples = result.samples
    a, c = samples["overlay_reconciler"], samples["host"]
    measured = [name for name in PATHS if name in samples]
    print(f"load average before: {load_before}; after: {load_after}")
    print(f"{repeats} rounds x {seconds:g} s per iperf3 run, paths interleaved (rotated order); "
          "median (min-max) over rounds; clients on CPU 0, servers on CPU 1")
    print(f"wireguard backend {result.backend}")
    print(f"{'path':<28} {'Gbit/s P1':>20} {'Gbit/s P4':>20} {'RR us':>20}")
    for name in measured:
        s = samples[name]
        print(f"{name:<28} {s.spread('gbps_p1').text():>20} {s.spread('gbps_p4').text():>20} "
              f"{s.spread('rr_us').text(1):>20}")
    out: dict[str, object] = {name: figures_json(samples[name]) for name in measured}
    out.update(ratio_json(("ratio_to_host_throughput", "ratio_to_host_throughput_p4",
                           "ratio_to_host_latency"), paired(a, c)))
    if "overlay_hand" in samples:
        ab = paired(a, samples["overlay_hand"])
        out.update(ratio_json(("ratio_throughput", "ratio_throughput_p4", "ratio_latency"),
                              ab))
        print(f"(a)/(b): throughput {ab[0].text(3)}, P4 {ab[1].text(3)}, latency "
              f"{ab[2].text(3)}")
    print("overlay path / host (c), round by round (targets: throughput >= 0.9, latency "
          "host/overlay >= 0.87, i.e. overlay RR <= 1.15x host)")
    to_host: dict[str, object] = {}
    for name in (name for name in TO_HOST if name in samples):
        ratios = paired(samples[name], c)
        to_host[name] = ratio_json(("throughput", "throughput_p4", "latency"), ratios)
        print(f"  {name:<20} throughput {ratios[0].text(3)}, P4 {ratios[1].text(3)}, "
              f"latency host/overlay {ratios[2].text(3)}")
    out["to_host"] = to_host
    print("bridge-less and netfilter-less paths / (a), round by round")
    to_reconciler: dict[str, object] = {}
    for name in (name for name in TO_HOST[1:] if name in samples):
        ratios = paired(samples[name], a)
        to_reconciler[name] = ratio_json(("throughput", "throughput_p4", "latency"), ratios)
        print(f"  {name:<20} throughput {ratios[0].text(3)}, P4 {ratios[1].text(3)}, "
              f"latency (a)/path {ratios[2].text(3)}")
    out["to_reconciler"] = to_reconciler
    if "overlay_encrypted" in samples:
        da = paired(samples["overlay_encrypted"], a)
        out.update(ratio_json(("ratio_encrypted_to_overlay", "ratio_encrypted_to_overlay_p4",
                               "ratio_encrypted_to_overlay_latency"), da))
        out["wireguard_backend"] = result.backend
        print(f"(d)/(a) over {result.backend}: throughput {da[0].text(3)}, P4 "
              f"{da[1].text(3)}, latency {da[2].text(3)}")
    if result.settings:
        print()
        print("each kernel setting switched on path (b) (row b+NAME) against (b) at the "
              "kernel's defaults measured right next to it (row b@NAME), every round; ratio = "
              "switched/default (latency: default/switched, higher is faster)")
        print(f"{'setting':<22} {'default':>7} {'Gbit/s P1 switched':>20} {'P1 ratio':>20} "
              f"{'RR ratio':>20}  what")
        settings: dict[str, object] = {}
        for name, what in result.settings.items():
            row, base = samples[f"b+{name}"], samples[f"b@{name}"]
            throughput = paired_ratio(row, base, "gbps_p1")
            latency = paired_ratio(base, row, "rr_us")
            default = "on" if result.defaults[name] else "off"
            print(f"{name:<22} {default:>7} {row.spread('gbps_p1').text():>20} "
                  f"{throughput.text(3):>20} {latency.text(3):>20}  {what}")
            settings[name] = {"what": what, "default": result.defaults[name],
                              "switched": figures_json(row), "default_row": figures_json(base),
                              "ratio_throughput": round(throughput.median, 3),
                              "ratio_throughput_spread": throughput.json(),
                              "ratio_latency": round(latency.median, 3),
                              "ratio_latency_spread": latency.json()}
        out["settings"] = settings
    out.update({"repeats": repeats, "seconds": seconds, "load_before": load_before,
                "load_after": load_after})
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per iperf3 run (2)")
    parser.add_argument("--repeats", "--rounds", type=int, default=5,
                        help="rounds, every path once per round (5)")
    parser.add_argument("--settings", default="all",
                        help="kernel settings to switch on path (b): all, none or a list")
    parser.add_argument("--paths", default="all",
                        help="paths to measure: all or a list (host and overlay_reconciler "
                        "always, every ratio is to them)")
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    args = parser.parse_args(argv)
    paths = PATHS if args.paths == "all" else (
        "overlay_reconciler", "host", *args.paths.split(","))
    if unknown := sorted(set(paths) - set(PATHS)):
        parser.error(f"--paths: unknown {unknown}; known: {','.join(PATHS)}")
    if not 1 <= args.seconds <= 60 or not 1 <= args.repeats <= 20:
        parser.error(f"--seconds={args.seconds} (1..60), --repeats={args.repeats} (1..20)")
    chosen = None if args.settings == "all" else [] if args.settings == "none" else \
        args.settings.split(",")
    load_before = loadavg()
    with tempfile.TemporaryDirectory(prefix="vxmesh-bench-wg-") as key_dir:
        result = bench(args.seconds, args.repeats, chosen, Path(key_dir), paths)
    out = report(result, args.seconds, args.repeats, load_before, loadavg())
    if args.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
