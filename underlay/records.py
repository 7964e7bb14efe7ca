"""Kernel object records: what dumps report and what writes ask, with no netlink library.

Owns: the link, FDB and neighbor records a dump returns, the vxlan device spec, the write
commands (replace, append, delete), the NUD_*/NTF_* values they carry and the adoption rule
for vxlan devices (`vxlan_matches`). overlay/ builds on these types without reaching pyroute2;
underlay.netlink_ops turns them into netlink messages.

Also the one source of the vocabulary every layer shares about these objects: the canonical
text of a MAC (`canonical_mac`: six lower-case, colon-separated octets) and of an IP address
(`canonical_ip`: the kernel's, i.e. Python's `ipaddress` compressed form), the zero MAC of
flood entries, the VNI bounds (`VNI_MIN`..`VNI_MAX`, 24 bits, 0 reserved) and the network MTU
range (`MTU_MIN`..`MTU_MAX`: the control API, the store's schema and desired state accept the
same MTUs, so a value one layer takes is never refused by the next). Both parsers
raise ValueError naming the value; each caller wraps it in its own package's error.

May import: the standard library.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from dataclasses import dataclass

AF_BRIDGE = 7
NUD_PERMANENT = 0x80
NUD_NOARP = 0x40
NUD_REACHABLE = 0x02
NTF_SELF = 0x02
NTF_MASTER = 0x04
ZERO_MAC = "00:00:00:00:00:00"
VNI_MIN = 1
VNI_MAX = (1 << 24) - 1  # 16,777,215
IFNAME_MAX = 15  # bytes of a Linux interface name (IFNAMSIZ - 1)
MTU_MIN = 1280  # IPv6 endpoints need at least this
MTU_MAX = 9216  # the largest jumbo frame common NICs take

_HEX_DIGITS = frozenset("0123456789abcdef")
#: Text already in canonical form (the common case: records are canonical when written), so
#: the parsers return it as is without the general path's work.
_CANONICAL_MAC = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}")
_CANONICAL_IPV4 = re.compile(r"(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}"
                             r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])")


def canonical_mac(text: str) -> str:
    """`text` (any case, `:` or `-` separated) as six lower-case colon-separated octets;
    ValueError naming the value if it is not a MAC address."""
    if _CANONICAL_MAC.fullmatch(text):
        return text
    octets = text.strip().lower().replace("-", ":").split(":")
    if len(octets) != 6 or not all(len(o) == 2 and set(o) <= _HEX_DIGITS for o in octets):
        raise ValueError(f"{text!r} is not a MAC address like 02:42:0a:00:00:02")
    return ":".join(octets)


def canonical_ip(text: str) -> str:
    """`text` as the kernel prints the IPv4 or IPv6 address; ValueError naming the value."""
    if _CANONICAL_IPV4.fullmatch(text):
        return text
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ValueError(f"{text!r} is not an IPv4 or IPv6 address") from None


def ifname_ok(name: str) -> bool:
    """True when the kernel takes `name` as an interface name (its dev_valid_name): 1 to
    IFNAME_MAX bytes, no '/', ':' or whitespace, not '.' or '..'."""
    return bool(name) and len(name.encode()) <= IFNAME_MAX and name not in (".", "..") \
        and not any(c in "/:" or c.isspace() for c in name)


VLAN_MAX = 4094  # 802.1Q VLAN ids are 1..4094 (0 and 4095 are reserved)


def split_vlan(parent: str) -> tuple[str, int | None]:
    """`eth0.30` -> ("eth0", 30), `eth0` -> ("eth0", None) (Docker's parent syntax);
    ValueError naming the rule when the VLAN id or the names are not valid."""
    if not ifname_ok(parent):
        raise ValueError(f"not an interface name (1 to {IFNAME_MAX} bytes, no '/', ':' or "
                         "spaces)")
    base, dot, vlan = parent.rpartition(".")
    if not dot:
        return parent, None
    if not base or not vlan.isdigit() or not 1 <= int(vlan) <= VLAN_MAX:
        raise ValueError(f"the VLAN id after the dot must be 1..{VLAN_MAX} (eth0.30)")
    return base, int(vlan)


def vni_in_range(vni: object) -> bool:
    """True for an integer (not a bool) VNI within VNI_MIN..VNI_MAX."""
    return isinstance(vni, int) and not isinstance(vni, bool) and VNI_MIN <= vni <= VNI_MAX




@dataclass(frozen=True)
class VxlanAttributes:
    """What the kernel reports about a vxlan device."""

    vni: int
    port: int
    local: str | None
    learning: bool
    proxy: bool
    udp_csum: bool = True  # outer UDP checksum sent (IPv6 underlay: not zero-checksum)


@dataclass(frozen=True)
class LinkRecord:
    """One network device as a link dump reports it."""

    index: int
    name: str
    kind: str | None
    master: int | None
    mtu: int
    up: bool
    mac: str | None
    vxlan: VxlanAttributes | None = None


@dataclass(frozen=True)
class FdbRecord:
    """One AF_BRIDGE FDB entry from a dump (dst None: none given)."""

    ifindex: int
    mac: str
    dst: str | None
    state: int
    flags: int


@dataclass(frozen=True)
class NeighborRecord:
    """One IPv4 ARP or IPv6 NDP neighbor entry from a dump."""

    ifindex: int
    ip: str
    mac: str | None
    state: int
    flags: int


ANY_ADDRESS = "0.0.0.0"  # a vxlan device's local address when it has none (IPv4)


@dataclass(frozen=True)
class VxlanSpec:
    """A vxlan device as we want it. `local` decides the underlay family (IPv4 or IPv6)."""

    name: str
    vni: int
    port: int
    local: str
    mtu: int
    mac: str
    learning: bool = False
    proxy: bool = True
    #: Send the outer UDP checksum (IPv4: udpcsum; IPv6: no udp6zerocsumtx/rx). Off sends
    #: zero checksums (RFC 7348 allows it for IPv4), which only pays where the NIC cannot
    #: offload the checksum; `[dataplane] vxlan_udp_csum`.
    udp_csum: bool = True


class WriteAction(enum.Enum):
    """What a write does: replace (create or overwrite), append (flood), delete."""

    REPLACE = "replace"
    APPEND = "append"
    DELETE = "delete"


@dataclass(frozen=True)
class FdbWrite:
    """One FDB message: MAC -> dst on a vxlan device (NTF_SELF, NUD_PERMANENT)."""

    action: WriteAction
    ifindex: int
    mac: str
    dst: str | None


@dataclass(frozen=True)
class NeighborWrite:
    """One neighbor message: IP -> MAC on a device (NUD_PERMANENT)."""

    action: WriteAction
    ifindex: int
    ip: str
    mac: str | None


Write = FdbWrite | NeighborWrite


def vxlan_matches(record: LinkRecord, spec: VxlanSpec) -> bool:
    """True when `record` can be adopted for `spec` without re-creating it.

    VNI, dstport, local address, the proxy flag and the UDP checksum setting cannot be changed
    on a live vxlan device;
    MTU, MAC and learning can, and are fixed in place. A device without a local address
    (the kernel reports none) matches ANY_ADDRESS.
    """
    found = record.vxlan
    return (
        record.kind == "vxlan" and found is not None and found.vni == spec.vni
        and found.port == spec.port and (found.local or ANY_ADDRESS) == spec.local
        and found.proxy == spec.proxy and found.udp_csum == spec.udp_csum
    )
