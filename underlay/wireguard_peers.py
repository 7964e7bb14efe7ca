"""WireGuard peers of the encrypted networks: which peers this host's interfaces should hold,
and the decisions of a key rotation.

Design (README, "Encrypted networks"): one WireGuard interface per host and one peer per
published key of every other member. A peer's AllowedIPs is its tunnel address alone (/32),
its endpoint its underlay VTEP at its WireGuard port. An encrypted network's VXLAN device
has no fixed local address: its packets take the source of the route to TUNNEL_NETWORK,
which points at the current WireGuard interface with that interface's tunnel address. So
VXLAN of encrypted networks leaves the host only inside WireGuard, while plain networks on
the same host keep their VXLAN on the underlay.

Key rotation (`Rotation`): WireGuard names a peer by its public key and a host's interface
holds one private key, so a new key needs a second interface (slot), with its own port
(listen_port + slot) and tunnel address (`tunnel_address(underlay, slot)`), published next to
the current one. Every member then holds a peer for each published key: AllowedIPs are
unique per interface, and the two tunnel addresses keep the two peers apart.
1. prepare: the new slot's interface is up with every member as a peer (persistent keepalive,
   so that handshakes start); no route points at it yet; the new key is published as
   `preparing`, and a member's peer for it gets a persistent keepalive too, so the member
   starts the handshake the moment it adds the peer (WireGuard retries a handshake only every
   5 s). It waits until every wanted peer has completed a handshake on it: proof that the
   member holds our new key.
2. switch: one `ip route replace` of TUNNEL_NETWORK to the new interface with its tunnel
   address as source; from that packet on we send under the new key, with a source the
   members accept from it. The new key is then the current one (gossip meta, etcd record),
   the old one is published second; members move their FDB entries to the new tunnel
   address, and until they do, what they send under the old key still arrives on the old
   interface.
3. drain: the old interface is removed once nothing arrived on it for QUIET seconds, at the
   earliest MIN_DRAIN and at the latest MAX_DRAIN after the switch.
A member that never takes the new key within PREPARE_TIMEOUT aborts the rotation: the new
interface goes, the old key stays.

Tunnel addresses are IPv4 in 100.64.0.0/10 (shared address space, RFC 6598), derived from the
underlay address so that no allocation is needed: slot s lies in the half s of the /10, at
the underlay address's low 21 bits (IPv4; unique while every host's underlay address is unique
in its low 21 bits, as in any one /11) or its hash (IPv6). Two members claiming one tunnel
address are both named in the problems and neither gets a peer.

Pure: no I/O, no clock (in the pure-core contract). Standard library only.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

TUNNEL_NETWORK = ipaddress.IPv4Network("100.64.0.0/10")
SLOTS = 2  # interfaces a host may hold at once: the current one and, rotating, the next
DEFAULT_PORT = 51820
#: Rotation timing (seconds): how long the new key may wait for every member's handshake,
#: and the drain of the old interface after the switch.
PREPARE_TIMEOUT = 30.0
MIN_DRAIN = 3.0
QUIET = 2.0
MAX_DRAIN = 30.0
#: Persistent keepalive (seconds) of the new interface's peers while it prepares.
PREPARE_KEEPALIVE = 1
#: WireGuard's encapsulation: outer IP (20 or 40) + UDP 8 + WireGuard header 16 + tag 16.
OVERHEAD_IPV4 = 60
OVERHEAD_IPV6 = 80


def tunnel_address(underlay_address: str, slot: int = 0) -> str:
    """This host's tunnel address in `slot`, derived from its underlay address (see the
    module doc)."""
    address = ipaddress.ip_address(underlay_address)
    span = TUNNEL_NETWORK.num_addresses // SLOTS
    if address.version == 4:
        offset = int(address) % span
    else:
        offset = int.from_bytes(hashlib.sha256(address.packed).digest()[:4], "big") % span
    offset = min(max(offset, 1), span - 2)  # never a half's first or last address
    return str(TUNNEL_NETWORK.network_address + slot * span + offset)


def wireguard_mtu(underlay_mtu: int, underlay_address: str) -> int:
    """The WireGuard interface's MTU: the underlay's minus WireGuard's overhead."""
    return underlay_mtu - (OVERHEAD_IPV6 if ":" in underlay_address else OVERHEAD_IPV4)


@dataclass(frozen=True)
class PublishedKey:
    """What a member publishes about its WireGuard side (gossip meta)."""

    node: str
    vtep: str
    public_key: str
    tunnel: str
    port: int
    preparing: bool = False  # a rotation's new key, not yet in use (its peer starts handshakes)


@dataclass(frozen=True, order=True)
class WireGuardPeer:
    """One peer of our interface: key, endpoint (underlay address and port), tunnel address."""

    public_key: str
    endpoint_address: str
    port: int
    tunnel: str
    keepalive: int = 0  # persistent keepalive, seconds (0: off)

    @property
    def endpoint(self) -> str:
        host = f"[{self.endpoint_address}]" if ":" in self.endpoint_address \
            else self.endpoint_address
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class WantedPeers:
    """The peers we want, by public key, and what kept a member out."""

    peers: Mapping[str, WireGuardPeer]
    problems: tuple[str, ...] = ()


def wanted_peers(published: Iterable[PublishedKey], node: str, own_key: str) -> WantedPeers:
    """One peer per other member with a usable published key; a member whose tunnel address
    or key another one also claims gets none (both are named)."""
    problems: list[str] = []
    usable: list[PublishedKey] = []
    for item in sorted(published, key=lambda p: p.node):
        if item.node == node:
            continue
        try:
            tunnel = ipaddress.ip_address(item.tunnel)
            ipaddress.ip_address(item.vtep)
        except ValueError:
            problems.append(f"member {item.node!r}: tunnel={item.tunnel!r} or vtep="
                            f"{item.vtep!r} is not an address; no WireGuard peer")
            continue
        if tunnel not in TUNNEL_NETWORK or not 1 <= item.port <= 65535:
            problems.append(f"member {item.node!r}: tunnel {item.tunnel} is outside "
                            f"{TUNNEL_NETWORK} or port {item.port} is not a port; no peer")
            continue
        usable.append(item)
    claims: dict[str, list[str]] = {}
    for item in usable:
        claims.setdefault(item.tunnel, []).append(item.node)
        claims.setdefault(item.public_key, []).append(item.node)
    peers: dict[str, WireGuardPeer] = {}
    for item in usable:
        shared = [c for c in (item.tunnel, item.public_key) if len(claims[c]) > 1]
        if item.public_key == own_key:
            shared.append(item.public_key)
        if shared:
            problems.append(f"member {item.node!r}: {shared[0]} is also claimed by "
                            f"{', '.join(n for n in claims[shared[0]] if n != item.node) or node}"
                            "; no WireGuard peer")
            continue
        peers[item.public_key] = WireGuardPeer(
            item.public_key, item.vtep, item.port, item.tunnel,
            PREPARE_KEEPALIVE if item.preparing else 0)
    return WantedPeers(peers, tuple(problems))


@dataclass(frozen=True)
class PeerChanges:
    """What to do to an interface holding `applied` so that it holds `wanted`."""

    put: tuple[WireGuardPeer, ...]
    remove: tuple[str, ...]  # public keys

    def __bool__(self) -> bool:
        return bool(self.put or self.remove)


def peer_changes(applied: Mapping[str, WireGuardPeer],
                 wanted: Mapping[str, WireGuardPeer]) -> PeerChanges:
    """New or changed peers first (put), then the ones no longer wanted (remove)."""
    put = tuple(sorted(peer for key, peer in wanted.items() if applied.get(key) != peer))
    remove = tuple(sorted(key for key in applied if key not in wanted))
    return PeerChanges(put, remove)


@dataclass
class Rotation:
    """One key rotation's progress (see the module doc): fed observations and `now`, it says
    when to switch, when to give up and when the old interface may go."""

    started: float
    switched_at: float | None = None
    _received: dict[str, int] = field(default_factory=dict)
    _received_changed: float = 0.0

    @property
    def phase(self) -> str:
        return "prepare" if self.switched_at is None else "drain"

    def waiting_for(self, wanted: Iterable[str], handshaken: Iterable[str]) -> list[str]:
        """The wanted peers (public keys) of the new interface without a handshake yet."""
        done = set(handshaken)
        return sorted(key for key in wanted if key not in done)

    def expired(self, now: float) -> bool:
        """True once preparing has taken longer than PREPARE_TIMEOUT."""
        return self.switched_at is None and now - self.started > PREPARE_TIMEOUT

    def switched(self, now: float) -> None:
        self.switched_at = self._received_changed = now

    def observe_old(self, now: float, received: Mapping[str, int]) -> None:
        """Bytes received so far from each peer of the old interface."""
        if dict(received) != self._received:
            self._received = dict(received)
            self._received_changed = now

    def drained(self, now: float) -> bool:
        """True when the old interface may go (see the module doc)."""
        if self.switched_at is None:
            return False
        since = now - self.switched_at
        return since >= MAX_DRAIN or (since >= MIN_DRAIN
                                      and now - self._received_changed >= QUIET)
