"""Desired data-plane state: a pure function from what we know to the kernel objects we want.

Owns `compute_desired(networks, members, endpoints, local_endpoints, underlay, node)`:

- per network a bridge and a vxlan device (VNI, dstport, local VTEP address, learning off,
  ARP/NDP proxy on, MTU = underlay MTU - 50 on an IPv4 underlay, - 70 on IPv6, unless the
  network sets its own); the vxlan device's MAC is derived from the node name and the
  bridge's from (node, VNI), so neither changes across restarts (Felix does the same);
  the bridge carries the network's gateway address (the same on every host: an anycast
  gateway; the vxlan device's ARP/NDP proxy never floods a request for it across the tunnel,
  so each endpoint reaches its own host's bridge), which routes published ports and egress;
- per remote endpoint address a permanent neighbor entry IP -> MAC (IPv4 ARP, IPv6 NDP) and
  per remote endpoint MAC a permanent FDB entry MAC -> VTEP, both on the vxlan device, so the
  kernel never has to ARP/NDP across the tunnel (flannel's order: neighbor, then FDB);
- per remote VTEP hosting an endpoint of the network a flood entry 00:00:00:00:00:00 -> VTEP
  (head-end replication of broadcast and unknown unicast), keyed by (device, VTEP);
- the host-side veth of every local endpoint as a port of the bridge, at the network MTU.

Kernel name scheme (prefix `vx`, the agent's; nothing else is ever touched):
    bridge  vxbr<VNI>    e.g. vxbr4097       (at most 12 bytes: VNI <= 16,777,215)
    vxlan   vxtun<VNI>   e.g. vxtun4097      (at most 13 bytes)
A device is ours exactly when its name matches one of these patterns; FDB and neighbor
entries are ours exactly when they sit on one of our vxlan devices with NUD_PERMANENT
(see overlay.reconciler).

Only alive remote members count; an endpoint's VTEP is the one its owner's membership
advertises. Entries of another address family than the underlay's are skipped. Bad input
(VNI out of range, unusable MTU, malformed MAC or address) never raises: the offending
network or entry is left out and named in `DesiredState.problems`.

Pure: no I/O, no clock, no trio, no pyroute2. May import the standard library, overlay.* and
underlay.records (the shared MAC/IP/VNI vocabulary).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from underlay.records import MTU_MAX, MTU_MIN, VNI_MAX, VNI_MIN, canonical_ip, canonical_mac

DEFAULT_VXLAN_PORT = 4789
#: VXLAN encapsulation overhead: outer Ethernet 14 + IP (20 or 40) + UDP 8 + VXLAN 8.
OVERHEAD_IPV4 = 50
OVERHEAD_IPV6 = 70

BRIDGE_PREFIX = "vxbr"
VXLAN_PREFIX = "vxtun"
_OWNED_NAME = re.compile(r"^(vxbr|vxtun)(\d{1,8})$")


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class NetworkSpec:
    """An overlay network as the store holds it. `mtu` None: derived from the underlay.
    `gateway`: the address with prefix length the bridge carries (None: none)."""

    name: str
    vni: int
    mtu: int | None = None
    port: int = DEFAULT_VXLAN_PORT
    gateway: str | None = None


@dataclass(frozen=True)
class AliveMember:
    """A member the gossip layer believes alive, with the VTEP address it advertises."""

    name: str
    vtep: str


@dataclass(frozen=True)
class EndpointEntry:
    """One endpoint from the neighbor table view: its network, addresses, MAC and owner."""

    network: str
    node: str
    mac: str
    ips: tuple[str, ...]


@dataclass(frozen=True)
class LocalEndpoint:
    """An endpoint of this host: its network and the host-side veth plugged into the bridge."""

    network: str
    host_ifname: str


class UnderlayAddressing(Protocol):
    """What desired state needs from the underlay: our VTEP address and the underlay MTU.

    `underlay.facts.UnderlayFacts` satisfies it; so does `UnderlayView`.
    """

    @property
    def address(self) -> str: ...

    @property
    def mtu(self) -> int: ...


@dataclass(frozen=True)
class UnderlayView:
    """A plain `UnderlayAddressing` (tests, simulations)."""

    address: str
    mtu: int


# --------------------------------------------------------------------------- outputs


@dataclass(frozen=True)
class DesiredNetwork:
    """The devices of one network on this host."""

    network: str
    vni: int
    bridge: str
    vxlan: str
    port: int
    local: str
    mtu: int
    vxlan_mac: str
    bridge_mac: str
    ports: frozenset[str] = frozenset()
    gateway: str | None = None


@dataclass(frozen=True, order=True)
class FdbKey:
    """A unicast FDB entry's identity: MAC on a vxlan device (value: the VTEP)."""

    device: str
    mac: str


@dataclass(frozen=True, order=True)
class FloodKey:
    """A flood entry's identity: all-zero MAC -> VTEP on a vxlan device (one per VTEP)."""

    device: str
    dst: str


@dataclass(frozen=True, order=True)
class NeighborKey:
    """A neighbor entry's identity: IP on a vxlan device (value: the MAC)."""

    device: str
    ip: str


@dataclass(frozen=True)
class DesiredState:
    """Every kernel object the agent wants on this host, keyed for the delta trackers."""

    networks: Mapping[str, DesiredNetwork] = field(default_factory=dict)  # by vxlan name
    fdb: Mapping[FdbKey, str] = field(default_factory=dict)
    flood: frozenset[FloodKey] = frozenset()
    neighbors: Mapping[NeighborKey, str] = field(default_factory=dict)
    problems: tuple[str, ...] = ()


# --------------------------------------------------------------------------- naming


def bridge_name(vni: int) -> str:
    """The bridge of the network with this VNI."""
    return f"{BRIDGE_PREFIX}{vni}"


def vxlan_name(vni: int) -> str:
    """The vxlan device of the network with this VNI."""
    return f"{VXLAN_PREFIX}{vni}"


def owned_device(name: str) -> tuple[str, int] | None:
    """('bridge'|'vxlan', VNI) when `name` follows our scheme, else None (not ours)."""
    match = _OWNED_NAME.match(name)
    if match is None:
        return None
    vni = int(match.group(2))
    if not VNI_MIN <= vni <= VNI_MAX or str(vni) != match.group(2):
        return None
    return ("bridge" if match.group(1) == BRIDGE_PREFIX else "vxlan", vni)


def stable_mac(*parts: str) -> str:
    """A locally administered unicast MAC derived from `parts` (same input, same MAC)."""
    digest = bytearray(hashlib.sha256("\0".join(parts).encode()).digest()[:6])
    digest[0] = (digest[0] & 0xFE) | 0x02
    return ":".join(f"{b:02x}" for b in digest)


def vtep_mac(node: str) -> str:
    """The MAC of this node's vxlan devices, derived from the node name."""
    return stable_mac("vxmesh-vtep", node)


def overlay_mtu(underlay_mtu: int, underlay_address: str) -> int:
    """Underlay MTU minus the VXLAN overhead of the underlay's family."""
    overhead = OVERHEAD_IPV6 if ":" in underlay_address else OVERHEAD_IPV4
    return underlay_mtu - overhead


# --------------------------------------------------------------------------- the function


def _network_devices(spec: NetworkSpec, node: str, underlay: UnderlayAddressing,
                     ports: frozenset[str], problems: list[str]) -> DesiredNetwork | None:
    if not VNI_MIN <= spec.vni <= VNI_MAX:
        problems.append(f"network {spec.name!r}: vni={spec.vni} is outside "
                        f"{VNI_MIN}..{VNI_MAX}; skipped")
        return None
    if not 1 <= spec.port <= 65535:
        problems.append(f"network {spec.name!r}: port={spec.port} is not a UDP port; skipped")
        return None
    limit = overlay_mtu(underlay.mtu, underlay.address)
    mtu = spec.mtu if spec.mtu is not None else limit
    if not MTU_MIN <= mtu <= MTU_MAX:
        problems.append(f"network {spec.name!r}: mtu={mtu} must be within {MTU_MIN}..{MTU_MAX};"
                        " skipped")
        return None
    if mtu > limit:  # too big for this host's underlay: clamp rather than cut the network off
        problems.append(f"network {spec.name!r}: mtu={mtu} is above this host's limit {limit} "
                        f"(underlay MTU {underlay.mtu} minus VXLAN overhead); using {limit}")
        mtu = limit
    return DesiredNetwork(
        network=spec.name, vni=spec.vni, bridge=bridge_name(spec.vni),
        vxlan=vxlan_name(spec.vni), port=spec.port, local=canonical_ip(underlay.address),
        mtu=mtu, vxlan_mac=vtep_mac(node), bridge_mac=stable_mac("vxmesh-bridge", node,
                                                                 str(spec.vni)),
        ports=ports, gateway=spec.gateway,
    )


def compute_desired(networks: Iterable[NetworkSpec], members: Iterable[AliveMember],
                    endpoints: Iterable[EndpointEntry],
                    local_endpoints: Iterable[LocalEndpoint], underlay: UnderlayAddressing,
                    node: str) -> DesiredState:
    """The kernel objects this node (`node`) wants, given what it knows."""
    problems: list[str] = []
    underlay_v6 = ":" in underlay.address
    vteps: dict[str, str] = {}
    for member in members:
        if member.name == node:
            continue
        try:
            vtep = canonical_ip(member.vtep)
        except ValueError:
            problems.append(f"member {member.name!r}: vtep={member.vtep!r} is not an address")
            continue
        if (":" in vtep) != underlay_v6:
            problems.append(f"member {member.name!r}: VTEP {vtep} is of another family than "
                            f"our underlay {underlay.address}; skipped")
            continue
        vteps[member.name] = vtep

    ports_by_network: dict[str, set[str]] = {}
    for local in local_endpoints:
        ports_by_network.setdefault(local.network, set()).add(local.host_ifname)

    by_name: dict[str, DesiredNetwork] = {}
    seen_vni: dict[int, str] = {}
    for spec in sorted(networks, key=lambda n: n.name):
        if spec.vni in seen_vni:
            problems.append(f"network {spec.name!r}: vni={spec.vni} already used by "
                            f"{seen_vni[spec.vni]!r}; skipped")
            continue
        devices = _network_devices(spec, node, underlay,
                                   frozenset(ports_by_network.get(spec.name, ())), problems)
        if devices is not None:
            seen_vni[spec.vni] = spec.name
            by_name[spec.name] = devices

    fdb: dict[FdbKey, str] = {}
    flood: set[FloodKey] = set()
    neighbors: dict[NeighborKey, str] = {}
    # Deterministic order, so that conflicting claims always resolve the same way.
    for entry in sorted(endpoints, key=lambda e: (e.network, e.node, e.mac, e.ips)):
        if entry.node == node:
            continue
        devices = by_name.get(entry.network)
        remote_vtep = vteps.get(entry.node)
        if devices is None or remote_vtep is None:
            continue
        try:
            mac = canonical_mac(entry.mac)
            ips = [canonical_ip(ip) for ip in entry.ips]
        except ValueError as exc:
            problems.append(f"endpoint on {entry.node!r} in {entry.network!r}: {exc}")
            continue
        fdb_key = FdbKey(devices.vxlan, mac)
        if fdb.get(fdb_key, remote_vtep) != remote_vtep:
            problems.append(f"MAC {mac} in {entry.network!r} claimed by two VTEPs; "
                            f"keeping {fdb[fdb_key]}")
            continue
        fdb[fdb_key] = remote_vtep
        flood.add(FloodKey(devices.vxlan, remote_vtep))
        for ip in ips:
            neighbor_key = NeighborKey(devices.vxlan, ip)
            if neighbors.get(neighbor_key, mac) != mac:
                problems.append(f"address {ip} in {entry.network!r} claimed by two MACs; "
                                f"keeping {neighbors[neighbor_key]}")
                continue
            neighbors[neighbor_key] = mac

    return DesiredState(
        networks={d.vxlan: d for d in by_name.values()}, fdb=fdb, flood=frozenset(flood),
        neighbors=neighbors, problems=tuple(problems),
    )
