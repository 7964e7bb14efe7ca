"""Desired data-plane state: a pure function from what we know to the kernel objects we want.

Owns `compute_desired(networks, members, endpoints, local_endpoints, underlay, node)` (the
full recompute) and `IncrementalDesired`, which keeps the same result up to date change by
change, in work proportional to the change (see its docstring). What they compute:

- per network a bridge and a vxlan device (VNI, dstport, local VTEP address, learning off,
  ARP/NDP proxy on, MTU = underlay MTU - 50 on an IPv4 underlay, - 70 on IPv6, unless the
  network sets its own); the vxlan device's MAC is derived from the node name and the
  bridge's from (node, VNI), so neither changes across restarts (Felix does the same);
  the bridge carries the network's gateway address, and its IPv6 one when the network has an
  IPv6 subnet (the same on every host: an anycast
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
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from overlay.sharded import ShardedDict
from underlay.records import (
    ANY_ADDRESS,
    MTU_MAX,
    MTU_MIN,
    VNI_MAX,
    VNI_MIN,
    canonical_ip,
    canonical_mac,
)

DEFAULT_VXLAN_PORT = 4789
#: VXLAN encapsulation overhead: outer Ethernet 14 + IP (20 or 40) + UDP 8 + VXLAN 8.
OVERHEAD_IPV4 = 50
OVERHEAD_IPV6 = 70
#: VXLAN over WireGuard: VXLAN between IPv4 tunnel addresses (50) inside WireGuard (60 on an
#: IPv4 underlay, 80 on IPv6).
OVERHEAD_ENCRYPTED_IPV4 = 110
OVERHEAD_ENCRYPTED_IPV6 = 130

#: The local address of an encrypted network's vxlan device: none, so that its packets take
#: the source of the route to the WireGuard tunnel network (our current tunnel address; a key
#: rotation moves that route, see underlay.wireguard_peers, without touching the device).
ENCRYPTED_LOCAL = ANY_ADDRESS

BRIDGE_PREFIX = "vxbr"
VXLAN_PREFIX = "vxtun"
_OWNED_NAME = re.compile(r"^(vxbr|vxtun)(\d{1,8})$")


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class NetworkSpec:
    """An overlay network as the store holds it. `mtu` None: derived from the underlay.
    `gateway`, `gateway6`: the IPv4 and IPv6 addresses with prefix length the bridge carries
    (None: none)."""

    name: str
    vni: int
    mtu: int | None = None
    port: int = DEFAULT_VXLAN_PORT
    gateway: str | None = None
    encrypted: bool = False  # VXLAN between WireGuard tunnel addresses (overlay.wireguard)
    gateway6: str | None = None


@dataclass(frozen=True)
class AliveMember:
    """A member the gossip layer believes alive, with the VTEP address it advertises and its
    WireGuard tunnel address (None: it publishes no WireGuard key)."""

    name: str
    vtep: str
    tunnel: str | None = None


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
    gateway6: str | None = None


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


def overlay_mtu(underlay_mtu: int, underlay_address: str, *, encrypted: bool = False) -> int:
    """Underlay MTU minus the VXLAN (or VXLAN over WireGuard) overhead of the underlay's
    family."""
    if encrypted:
        overhead = OVERHEAD_ENCRYPTED_IPV6 if ":" in underlay_address else OVERHEAD_ENCRYPTED_IPV4
    else:
        overhead = OVERHEAD_IPV6 if ":" in underlay_address else OVERHEAD_IPV4
    return underlay_mtu - overhead


# --------------------------------------------------------------------------- the function


def _network_devices(spec: NetworkSpec, node: str, underlay: UnderlayAddressing,
                     ports: frozenset[str], problems: list[str],
                     tunnel: str | None = None) -> DesiredNetwork | None:
    if not VNI_MIN <= spec.vni <= VNI_MAX:
        problems.append(f"network {spec.name!r}: vni={spec.vni} is outside "
                        f"{VNI_MIN}..{VNI_MAX}; skipped")
        return None
    if not 1 <= spec.port <= 65535:
        problems.append(f"network {spec.name!r}: port={spec.port} is not a UDP port; skipped")
        return None
    local = underlay.address
    if spec.encrypted:
        if tunnel is None:
            problems.append(f"network {spec.name!r}: encrypted, but this host's WireGuard "
                            "interface is not up; skipped")
            return None
        local = ENCRYPTED_LOCAL
    limit = overlay_mtu(underlay.mtu, underlay.address, encrypted=spec.encrypted)
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
        vxlan=vxlan_name(spec.vni), port=spec.port, local=canonical_ip(local),
        mtu=mtu, vxlan_mac=vtep_mac(node), bridge_mac=stable_mac("vxmesh-bridge", node,
                                                                 str(spec.vni)),
        ports=ports, gateway=spec.gateway, gateway6=spec.gateway6,
    )


def accept_networks(networks: Iterable[NetworkSpec], ports: Mapping[str, frozenset[str]],
                    underlay: UnderlayAddressing, node: str,
                    problems: list[str], tunnel: str | None = None
                    ) -> dict[str, DesiredNetwork]:
    """The networks whose devices we can make, by name (sorted by name: the first of two
    networks claiming one VNI keeps it); the others are named in `problems`."""
    by_name: dict[str, DesiredNetwork] = {}
    seen_vni: dict[int, str] = {}
    for spec in sorted(networks, key=lambda n: n.name):
        if spec.vni in seen_vni:
            problems.append(f"network {spec.name!r}: vni={spec.vni} already used by "
                            f"{seen_vni[spec.vni]!r}; skipped")
            continue
        devices = _network_devices(spec, node, underlay, ports.get(spec.name, frozenset()),
                                   problems, tunnel)
        if devices is not None:
            seen_vni[spec.vni] = spec.name
            by_name[spec.name] = devices
    return by_name


def member_vteps(member: AliveMember, underlay: UnderlayAddressing
                 ) -> tuple[str | None, str | None, str]:
    """(VTEP, WireGuard tunnel address, problem): both in canonical form, None where unusable
    or absent; the problem names what is unusable ("" if nothing). The tunnel address is only
    looked at when the VTEP is usable."""
    try:
        vtep = canonical_ip(member.vtep)
    except ValueError:
        return None, None, f"member {member.name!r}: vtep={member.vtep!r} is not an address"
    if (":" in vtep) != (":" in underlay.address):
        return None, None, (f"member {member.name!r}: VTEP {vtep} is of another family than "
                            f"our underlay {underlay.address}; skipped")
    if member.tunnel is None:
        return vtep, None, ""
    try:
        return vtep, canonical_ip(member.tunnel), ""
    except ValueError:
        return vtep, None, f"member {member.name!r}: tunnel={member.tunnel!r} is not an address"


def local_ports(local_endpoints: Iterable[LocalEndpoint]) -> dict[str, frozenset[str]]:
    """Host-side veths by network."""
    ports: dict[str, set[str]] = {}
    for local in local_endpoints:
        ports.setdefault(local.network, set()).add(local.host_ifname)
    return {network: frozenset(names) for network, names in ports.items()}


def entry_addresses(entry: EndpointEntry) -> tuple[str, tuple[str, ...]]:
    """The entry's MAC and addresses in canonical form (each address once); ValueError names
    the first bad one."""
    return canonical_mac(entry.mac), tuple(dict.fromkeys(canonical_ip(ip) for ip in entry.ips))


def compute_desired(networks: Iterable[NetworkSpec], members: Iterable[AliveMember],
                    endpoints: Iterable[EndpointEntry],
                    local_endpoints: Iterable[LocalEndpoint], underlay: UnderlayAddressing,
                    node: str, tunnel: str | None = None) -> DesiredState:
    """The kernel objects this node (`node`) wants, given what it knows: the full recompute,
    O(everything). `IncrementalDesired` keeps the same result up to date change by change.

    `tunnel`: our WireGuard tunnel address while our WireGuard interface is up (None: it is
    not, and encrypted networks are skipped). An encrypted network's vxlan device has no
    local address (ENCRYPTED_LOCAL: the source is the tunnel route's) and each member's
    advertised tunnel address as its remote VTEP."""
    networks = tuple(networks)
    problems: list[str] = []
    vteps: dict[str, str] = {}
    tunnels: dict[str, str] = {}
    for member in members:
        if member.name == node:
            continue
        vtep, member_tunnel, problem = member_vteps(member, underlay)
        if problem:
            problems.append(problem)
        if vtep is not None:
            vteps[member.name] = vtep
        if member_tunnel is not None:
            tunnels[member.name] = member_tunnel

    by_name = accept_networks(networks, local_ports(local_endpoints), underlay, node, problems,
                              tunnel)
    encrypted = {spec.name for spec in networks if spec.encrypted}

    fdb: dict[FdbKey, str] = {}
    flood: set[FloodKey] = set()
    neighbors: dict[NeighborKey, str] = {}
    # Deterministic order, so that conflicting claims always resolve the same way.
    for entry in sorted(endpoints, key=claim_order):
        if entry.node == node:
            continue
        devices = by_name.get(entry.network)
        remote_vtep = (tunnels if entry.network in encrypted else vteps).get(entry.node)
        if devices is None or remote_vtep is None:
            continue
        try:
            mac, ips = entry_addresses(entry)
        except ValueError as exc:
            problems.append(f"endpoint on {entry.node!r} in {entry.network!r}: {exc}")
            continue
        fdb_key = FdbKey(devices.vxlan, mac)
        if fdb.get(fdb_key, remote_vtep) != remote_vtep:
            problems.append(_two_vteps(mac, entry.network, fdb[fdb_key]))
            continue
        fdb[fdb_key] = remote_vtep
        flood.add(FloodKey(devices.vxlan, remote_vtep))
        for ip in ips:
            neighbor_key = NeighborKey(devices.vxlan, ip)
            if neighbors.get(neighbor_key, mac) != mac:
                problems.append(_two_macs(ip, entry.network, neighbors[neighbor_key]))
                continue
            neighbors[neighbor_key] = mac

    return DesiredState(
        networks={d.vxlan: d for d in by_name.values()}, fdb=fdb, flood=frozenset(flood),
        neighbors=neighbors, problems=tuple(problems),
    )


def claim_order(entry: EndpointEntry) -> tuple[str, str, str, tuple[str, ...]]:
    """Of two entries claiming one MAC or address, the one first in this order wins."""
    return (entry.network, entry.node, entry.mac, entry.ips)


def _two_vteps(mac: str, network: str, kept: str) -> str:
    return f"MAC {mac} in {network!r} claimed by two VTEPs; keeping {kept}"


def _two_macs(ip: str, network: str, kept: str) -> str:
    return f"address {ip} in {network!r} claimed by two MACs; keeping {kept}"


# --------------------------------------------------------------------------- incremental

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class DesiredChanges:
    """What desired state gained, changed or lost since the last hand-over.

    A value of None means "no longer desired". `networks` is the whole device map (by vxlan
    name) when it changed, else None.
    """

    networks: Mapping[str, DesiredNetwork] | None = None
    fdb: Mapping[FdbKey, str | None] = field(default_factory=dict)
    flood: Mapping[FloodKey, bool | None] = field(default_factory=dict)
    neighbors: Mapping[NeighborKey, str | None] = field(default_factory=dict)

    def __len__(self) -> int:
        return ((self.networks is not None) + len(self.fdb) + len(self.flood)
                + len(self.neighbors))


@dataclass(slots=True)
class _Claim:
    """What one endpoint contributes now: a claim on its MAC's FDB entry and, while it holds
    the VTEP that entry points to (`accepted`), a flood entry and claims on its addresses."""

    order: tuple[str, str, str, tuple[str, ...]]
    network: str
    fdb: FdbKey
    vtep: str
    mac: str
    neighbors: tuple[NeighborKey, ...]
    accepted: bool = False

    def same_as(self, other: _Claim) -> bool:
        return (self.order, self.fdb, self.vtep, self.neighbors) == \
            (other.order, other.fdb, other.vtep, other.neighbors)


@dataclass(frozen=True)
class IncrementalStatistics:
    endpoints: int  # endpoint inputs held
    claiming: int  # of them, those contributing kernel entries
    dirty: int  # endpoints waiting for `step` (one marked twice may count twice)
    settled: int  # endpoints settled since start


class IncrementalDesired(Generic[K]):
    """`compute_desired`'s result, kept up to date by changes to its inputs.

    Inputs arrive one change at a time: `set_networks` and `set_local_endpoints` (small, whole),
    `set_member(name, vtep | None)` and `put_endpoint(key, entry)` / `remove_endpoint(key)`
    (`key`: the caller's identity of an endpoint, e.g. (network, IP)). Each costs O(1) and marks
    the endpoints it affects dirty: a member change marks that owner's endpoints (per-owner
    index), a network whose devices appear, vanish or move marks that network's (per-network
    index). `step(limit)` settles at most `limit` dirty endpoints, so the caller bounds the work
    it does at once; `take_changes()` hands over what the settled endpoints changed. Once
    nothing is dirty, `state()` equals `compute_desired` of the same inputs (problems sorted).

    A resync (the agent's safety net after missed events) feeds a fresh snapshot between
    `begin_resync()` and `end_resync()` through `resync_endpoint` / `resync_member`: a snapshot
    value is ignored for an endpoint or member changed since `begin_resync` (the change is
    newer), and whatever the snapshot did not hold is removed at `end_resync`.
    """

    def __init__(self, node: str, underlay: UnderlayAddressing) -> None:
        self.node = node
        self.underlay = underlay
        self._specs: tuple[NetworkSpec, ...] = ()
        self._ports: dict[str, frozenset[str]] = {}
        self._devices: dict[str, DesiredNetwork] = {}  # by network name
        self._network_problems: list[str] = []
        self._tunnel: str | None = None  # ours (WireGuard interface up), for encrypted networks
        self._encrypted: frozenset[str] = frozenset()
        self._member_input: dict[str, tuple[str, str | None]] = {}
        self._vteps: dict[str, str] = {}
        self._tunnels: dict[str, str] = {}  # members' WireGuard tunnel addresses
        self._member_problems: dict[str, str] = {}
        # Per-endpoint maps are sharded: no one insertion resizes a whole 100,000-key table
        # (overlay.sharded).
        self._inputs: ShardedDict[K, EndpointEntry] = ShardedDict()
        self._by_network: dict[str, set[K]] = {}
        self._by_owner: dict[str, set[K]] = {}
        self._dirty: set[K] = set()
        # Whole groups marked dirty at once (a network's or an owner's endpoints), as lists
        # `step` settles from: marking costs one list copy, never a set growing by thousands.
        self._dirty_batches: list[list[K]] = []
        self._batched = 0
        self._claims: ShardedDict[K, _Claim] = ShardedDict()
        self._invalid: dict[K, str] = {}
        self._fdb_claimants: ShardedDict[
            FdbKey, dict[K, tuple[str, str, str, tuple[str, ...]]]] = ShardedDict()
        self._fdb: ShardedDict[FdbKey, str] = ShardedDict()
        self._fdb_problems: dict[K, str] = {}
        self._flood_refs: dict[FloodKey, int] = {}
        self._neighbor_claimants: ShardedDict[
            NeighborKey, dict[K, tuple[str, str, str, tuple[str, ...]]]] = ShardedDict()
        self._neighbors: ShardedDict[NeighborKey, str] = ShardedDict()
        self._neighbor_problems: dict[tuple[K, NeighborKey], str] = {}
        self._networks_changed = False
        self._fdb_log: dict[FdbKey, str | None] = {}
        self._flood_log: dict[FloodKey, bool | None] = {}
        self._neighbor_log: dict[NeighborKey, str | None] = {}
        self._resyncing = False
        self._resync_dirty: list[K] = []  # stored during a resync, settled as one batch
        self._unseen_endpoints: set[K] = set()
        self._changed_endpoints: set[K] = set()
        self._unseen_members: set[str] = set()
        self._changed_members: set[str] = set()
        self._settled = 0
        self.problems_version = 0  # grows whenever `problems()` may have changed

    # -- inputs ---------------------------------------------------------------------------

    def set_networks(self, networks: Iterable[NetworkSpec]) -> None:
        """The networks this node takes part in (the whole set; cheap when unchanged)."""
        specs = tuple(networks)
        if specs != self._specs:
            self._specs = specs
            self._refresh_networks()

    def set_local_endpoints(self, local_endpoints: Iterable[LocalEndpoint]) -> None:
        ports = local_ports(local_endpoints)
        if ports != self._ports:
            self._ports = ports
            self._refresh_networks()

    def set_tunnel(self, tunnel: str | None) -> None:
        """Our WireGuard tunnel address while our WireGuard interface is up (None: it is not;
        encrypted networks are then left out)."""
        if tunnel != self._tunnel:
            self._tunnel = tunnel
            self._refresh_networks()

    def set_member(self, name: str, vtep: str | None, tunnel: str | None = None) -> None:
        """`name` is alive advertising `vtep` (and its WireGuard `tunnel` address, if it
        publishes one), or (vtep None) no longer alive."""
        if self._resyncing:
            self._changed_members.add(name)
            self._unseen_members.discard(name)
        self._apply_member(name, vtep, tunnel)

    def put_endpoint(self, key: K, entry: EndpointEntry) -> None:
        if self._resyncing:
            self._changed_endpoints.add(key)
            self._unseen_endpoints.discard(key)
        self._store(key, entry)

    def remove_endpoint(self, key: K) -> None:
        if self._resyncing:
            self._changed_endpoints.add(key)
            self._unseen_endpoints.discard(key)
        self._store(key, None)

    # -- resync -----------------------------------------------------------------------------

    def begin_resync(self) -> None:
        self._resyncing = True
        self._unseen_endpoints = set(self._inputs)
        self._changed_endpoints = set()
        self._unseen_members = set(self._member_input)
        self._changed_members = set()

    def resync_endpoint(self, key: K, entry: EndpointEntry) -> None:
        if key not in self._changed_endpoints:
            self._unseen_endpoints.discard(key)
            self._store(key, entry)

    def resync_member(self, name: str, vtep: str, tunnel: str | None = None) -> None:
        if name not in self._changed_members:
            self._unseen_members.discard(name)
            self._apply_member(name, vtep, tunnel)

    def end_resync(self) -> None:
        """Whatever the snapshot did not hold (and no change brought since) is gone."""
        for key in self._unseen_endpoints:
            self._store(key, None)
        for name in self._unseen_members:
            self._apply_member(name, None, None)
        self._resyncing = False
        if self._resync_dirty:
            self._dirty_batches.append(self._resync_dirty)
            self._batched += len(self._resync_dirty)
            self._resync_dirty = []
        self._unseen_endpoints, self._changed_endpoints = set(), set()
        self._unseen_members, self._changed_members = set(), set()

    # -- settling and outputs -------------------------------------------------------------

    @property
    def dirty(self) -> int:
        """Endpoints waiting for `step` (one marked twice may count twice)."""
        return len(self._dirty) + self._batched + len(self._resync_dirty)

    def step(self, limit: int) -> int:
        """Settle up to `limit` dirty endpoints; returns how many stay dirty."""
        left = limit
        batches = self._dirty_batches
        while left and batches:
            batch = batches[-1]
            take = min(left, len(batch))
            for _ in range(take):
                self._settle(batch.pop())
            left -= take
            self._batched -= take
            if not batch:
                batches.pop()
        dirty = self._dirty
        for _ in range(min(left, len(dirty))):
            self._settle(dirty.pop())
        if not dirty:
            # A drained set keeps its table, and popping from a large sparse table scans it.
            self._dirty = set()
        return len(dirty) + self._batched

    def take_changes(self) -> DesiredChanges:
        """What changed since the last call (settled endpoints, networks)."""
        changes = DesiredChanges(
            networks=self._device_map() if self._networks_changed else None,
            fdb=self._fdb_log, flood=self._flood_log, neighbors=self._neighbor_log)
        self._networks_changed = False
        self._fdb_log, self._flood_log, self._neighbor_log = {}, {}, {}
        return changes

    def state(self) -> DesiredState:
        """A copy of the whole current desired state (O(size): reports and tests)."""
        return DesiredState(networks=self._device_map(), fdb=self._fdb.copy_to_dict(),
                            flood=frozenset(self._flood_refs),
                            neighbors=self._neighbors.copy_to_dict(),
                            problems=self.problems())

    def devices(self) -> dict[str, DesiredNetwork]:
        """The desired devices by vxlan name (O(networks))."""
        return self._device_map()

    def problems(self) -> tuple[str, ...]:
        return tuple(sorted([*self._network_problems, *self._member_problems.values(),
                             *self._invalid.values(), *self._fdb_problems.values(),
                             *self._neighbor_problems.values()]))

    def statistics(self) -> IncrementalStatistics:
        return IncrementalStatistics(endpoints=len(self._inputs), claiming=len(self._claims),
                                     dirty=self.dirty, settled=self._settled)

    # -- internals: inputs ------------------------------------------------------------------

    def _device_map(self) -> dict[str, DesiredNetwork]:
        return {d.vxlan: d for d in self._devices.values()}

    def _refresh_networks(self) -> None:
        problems: list[str] = []
        devices = accept_networks(self._specs, self._ports, self.underlay, self.node, problems,
                                  self._tunnel)
        encrypted = frozenset(spec.name for spec in self._specs if spec.encrypted)
        moved = encrypted ^ self._encrypted  # their remote VTEPs change
        self._encrypted = encrypted
        for name in moved:
            self._mark_dirty(self._by_network.get(name))
        if problems != self._network_problems:
            self._network_problems = problems
            self.problems_version += 1
        old, self._devices = self._devices, devices
        if devices == old:
            return
        self._networks_changed = True
        for name in old.keys() | devices.keys():
            before, after = old.get(name), devices.get(name)
            if (before and before.vxlan) != (after and after.vxlan):
                self._mark_dirty(self._by_network.get(name))

    def _apply_member(self, name: str, vtep: str | None, tunnel: str | None) -> None:
        if name == self.node:
            return
        effective, effective_tunnel, problem = None, None, ""
        if vtep is None:
            self._member_input.pop(name, None)
        else:
            self._member_input[name] = (vtep, tunnel)
            effective, effective_tunnel, problem = member_vteps(
                AliveMember(name, vtep, tunnel), self.underlay)
        if self._member_problems.get(name, "") != problem:
            if problem:
                self._member_problems[name] = problem
            else:
                del self._member_problems[name]
            self.problems_version += 1
        if self._vteps.get(name) == effective and self._tunnels.get(name) == effective_tunnel:
            return
        for addresses, address in ((self._vteps, effective), (self._tunnels, effective_tunnel)):
            if address is None:
                addresses.pop(name, None)
            else:
                addresses[name] = address
        self._mark_dirty(self._by_owner.get(name))

    def _mark_dirty(self, keys: set[K] | None) -> None:
        """A group of endpoints (one network's, one owner's) must be settled again."""
        if keys:
            self._dirty_batches.append(list(keys))
            self._batched += len(keys)

    def _store(self, key: K, entry: EndpointEntry | None) -> None:
        old = self._inputs.get(key)
        if old == entry:
            return
        if old is not None:
            _unindex(self._by_network, old.network, key)
            _unindex(self._by_owner, old.node, key)
        if entry is None:
            del self._inputs[key]
        else:
            self._inputs[key] = entry
            self._by_network.setdefault(entry.network, set()).add(key)
            self._by_owner.setdefault(entry.node, set()).add(key)
        if self._resyncing:
            self._resync_dirty.append(key)  # each key once: no set growing by the snapshot
        else:
            self._dirty.add(key)

    # -- internals: claims ------------------------------------------------------------------

    def _settle(self, key: K) -> None:
        self._settled += 1
        target = self._target(key, self._inputs.get(key))
        current = self._claims.get(key)
        if current is not None and target is not None and current.same_as(target):
            return
        if current is not None:
            self._retract(key, current)
        if target is not None:
            self._claims[key] = target
            self._fdb_claimants.setdefault(target.fdb, {})[key] = target.order
            self._settle_fdb(target.fdb)

    def _target(self, key: K, entry: EndpointEntry | None) -> _Claim | None:
        if self._invalid.pop(key, None) is not None:
            self.problems_version += 1
        if entry is None or entry.node == self.node:
            return None
        devices = self._devices.get(entry.network)
        vtep = (self._tunnels if entry.network in self._encrypted else self._vteps).get(
            entry.node)
        if devices is None or vtep is None:
            return None
        try:
            mac, ips = entry_addresses(entry)
        except ValueError as exc:
            self._invalid[key] = f"endpoint on {entry.node!r} in {entry.network!r}: {exc}"
            self.problems_version += 1
            return None
        return _Claim(claim_order(entry), entry.network, FdbKey(devices.vxlan, mac), vtep, mac,
                      tuple(NeighborKey(devices.vxlan, ip) for ip in ips))

    def _retract(self, key: K, claim: _Claim) -> None:
        del self._claims[key]
        if claim.accepted:
            self._unaccept(key, claim)
        claimants = self._fdb_claimants[claim.fdb]
        del claimants[key]
        if not claimants:
            del self._fdb_claimants[claim.fdb]
        if self._fdb_problems.pop(key, None) is not None:
            self.problems_version += 1
        self._settle_fdb(claim.fdb)

    def _settle_fdb(self, fdb_key: FdbKey) -> None:
        claimants = self._fdb_claimants.get(fdb_key)
        if not claimants:
            if self._fdb.pop(fdb_key, None) is not None:
                self._fdb_log[fdb_key] = None
            return
        vtep = self._claims[min(claimants, key=claimants.__getitem__)].vtep
        if self._fdb.get(fdb_key) != vtep:
            self._fdb[fdb_key] = self._fdb_log[fdb_key] = vtep
        for key in list(claimants):
            claim = self._claims[key]
            holds = claim.vtep == vtep
            problem = "" if holds else _two_vteps(claim.mac, claim.network, vtep)
            if self._fdb_problems.get(key, "") != problem:
                if problem:
                    self._fdb_problems[key] = problem
                else:
                    del self._fdb_problems[key]
                self.problems_version += 1
            if holds and not claim.accepted:
                self._accept(key, claim)
            elif not holds and claim.accepted:
                self._unaccept(key, claim)

    def _accept(self, key: K, claim: _Claim) -> None:
        claim.accepted = True
        flood = FloodKey(claim.fdb.device, claim.vtep)
        refs = self._flood_refs.get(flood, 0)
        self._flood_refs[flood] = refs + 1
        if refs == 0:
            self._flood_log[flood] = True
        for neighbor in claim.neighbors:
            self._neighbor_claimants.setdefault(neighbor, {})[key] = claim.order
            self._settle_neighbor(neighbor)

    def _unaccept(self, key: K, claim: _Claim) -> None:
        claim.accepted = False
        flood = FloodKey(claim.fdb.device, claim.vtep)
        refs = self._flood_refs[flood] - 1
        if refs:
            self._flood_refs[flood] = refs
        else:
            del self._flood_refs[flood]
            self._flood_log[flood] = None
        for neighbor in claim.neighbors:
            claimants = self._neighbor_claimants[neighbor]
            del claimants[key]
            if not claimants:
                del self._neighbor_claimants[neighbor]
            if self._neighbor_problems.pop((key, neighbor), None) is not None:
                self.problems_version += 1
            self._settle_neighbor(neighbor)

    def _settle_neighbor(self, neighbor: NeighborKey) -> None:
        claimants = self._neighbor_claimants.get(neighbor)
        if not claimants:
            if self._neighbors.pop(neighbor, None) is not None:
                self._neighbor_log[neighbor] = None
            return
        mac = self._claims[min(claimants, key=claimants.__getitem__)].mac
        if self._neighbors.get(neighbor) != mac:
            self._neighbors[neighbor] = self._neighbor_log[neighbor] = mac
        for key in claimants:
            claim = self._claims[key]
            problem = "" if claim.mac == mac else _two_macs(neighbor.ip, claim.network, mac)
            if self._neighbor_problems.get((key, neighbor), "") != problem:
                if problem:
                    self._neighbor_problems[(key, neighbor)] = problem
                else:
                    del self._neighbor_problems[(key, neighbor)]
                self.problems_version += 1


def _unindex(index: dict[str, set[K]], name: str, key: K) -> None:
    keys = index.get(name)
    if keys is not None:
        keys.discard(key)
        if not keys:
            del index[name]
