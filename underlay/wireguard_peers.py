"""WireGuard peers of the encrypted networks: which peers this host's interface should hold.

Design (README, "Encrypted networks"): one WireGuard interface per host and one peer per other
member that publishes a WireGuard key in its gossip meta. A peer's AllowedIPs is its tunnel
address alone (/32), its endpoint its underlay VTEP at its WireGuard port. An encrypted
network's VXLAN device uses the tunnel addresses as its local and remote VTEPs, so its VXLAN
packets leave the host only inside WireGuard, while plain networks on the same host keep their
VXLAN on the underlay.

Tunnel addresses are IPv4 in 100.64.0.0/10 (shared address space, RFC 6598), derived from the
underlay address so that no allocation is needed: an IPv4 underlay's low 22 bits (unique while
every host's underlay address is unique in its low 22 bits, as in any one /10), an IPv6
underlay's hash. Two members claiming one tunnel address are both named in the problems and
neither gets a peer.

Pure: no I/O, no clock (in the pure-core contract). Standard library only.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

TUNNEL_NETWORK = ipaddress.IPv4Network("100.64.0.0/10")
DEFAULT_PORT = 51820
#: WireGuard's encapsulation: outer IP (20 or 40) + UDP 8 + WireGuard header 16 + tag 16.
OVERHEAD_IPV4 = 60
OVERHEAD_IPV6 = 80


def tunnel_address(underlay_address: str) -> str:
    """This host's tunnel address, derived from its underlay address (see the module doc)."""
    address = ipaddress.ip_address(underlay_address)
    span = TUNNEL_NETWORK.num_addresses
    if address.version == 4:
        offset = int(address) % span
    else:
        offset = int.from_bytes(hashlib.sha256(address.packed).digest()[:4], "big") % span
    offset = min(max(offset, 1), span - 2)  # never the network or broadcast address
    return str(TUNNEL_NETWORK.network_address + offset)


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


@dataclass(frozen=True, order=True)
class WireGuardPeer:
    """One peer of our interface: key, endpoint (underlay address and port), tunnel address."""

    public_key: str
    endpoint_address: str
    port: int
    tunnel: str

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
        peers[item.public_key] = WireGuardPeer(item.public_key, item.vtep, item.port,
                                               item.tunnel)
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
