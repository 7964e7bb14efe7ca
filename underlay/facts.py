"""Underlay facts: which interface and address carry the overlay, its MTU, kernel capabilities.

Owns:
- `choose_underlay(...)`: pure selection of the underlay interface and address from link,
  address and default-route records, by configured interface name, by CIDR, or by the
  default route (IPv4 first unless IPv6 is asked for); IPv4 and IPv6 underlays;
- `read_underlay(nl, ...)`: the same, reading the records in the namespace of a
  `NetlinkThread`;
- `probe_capabilities(nl)`: which of vxlan, bridge, macvlan, ipvlan and nftables this kernel
  offers, and a report naming what is missing.

Rules:
- A selector that matches nothing raises `UnderlaySelectionError` naming the field and the
  value (and what was found instead); nothing is changed.
- The link-kind probes are side-effect free: each asks the kernel to create a device with a
  deliberately invalid configuration (a vxlan without VNI, a bridge with MTU 1, a macvlan or
  ipvlan on loopback). A kernel that knows the kind rejects the configuration (EINVAL); one
  that does not answers EOPNOTSUPP. Nothing is ever created.
- nftables is probed by listing tables through pyroute2's nftables socket. Kernel modules
  are kernel-wide, so the answer holds for every namespace.
- Link-local IPv6, tentative and deprecated addresses never carry the overlay.

May import: pyroute2, the standard library, underlay.*.
"""

from __future__ import annotations

import errno as errno_codes
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pyroute2.iproute import IPRoute

from underlay.errors import UnderlayError
from underlay.kernel import NetlinkThread, netlink_errno

CAPABILITIES = ("vxlan", "bridge", "macvlan", "ipvlan", "vlan", "nftables")
KERNEL_MODULES = {"vxlan": "vxlan", "bridge": "bridge", "macvlan": "macvlan",
                  "ipvlan": "ipvlan", "vlan": "8021q"}
"""The kernel module behind each link kind (named when a kind is missing)."""
_IFA_F_SKIP = 0x40 | 0x20 | 0x01  # tentative, deprecated, secondary
_AF_INET = 2
_AF_INET6 = 10
_MAIN_TABLE = 254


class UnderlaySelectionError(UnderlayError):
    """No interface/address matches the configured underlay selector."""


@dataclass(frozen=True)
class AddressRecord:
    """One address on one link (from an address dump)."""

    ifindex: int
    address: str
    prefixlen: int
    flags: int = 0


@dataclass(frozen=True)
class DefaultRoute:
    """A default route of the main table: its output link and preferred source, if any."""

    family: int
    oif: int | None
    prefsrc: str | None = None
    priority: int = 0


@dataclass(frozen=True)
class CapabilityReport:
    """Which kernel features exist; `missing` maps each absent one to the reason."""

    available: frozenset[str]
    missing: Mapping[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        if not self.missing:
            return "kernel capabilities: all present (" + ", ".join(CAPABILITIES) + ")"
        lacking = "; ".join(f"{name}: {why}" for name, why in sorted(self.missing.items()))
        return (f"kernel capabilities: missing {', '.join(sorted(self.missing))} ({lacking}); "
                f"present: {', '.join(sorted(self.available)) or 'none'}")


@dataclass(frozen=True)
class UnderlayFacts:
    """The interface and address that carry VXLAN traffic, and its MTU."""

    interface: str
    ifindex: int
    address: str
    prefixlen: int
    mtu: int
    chosen_by: str  # "interface", "cidr" or "default route"

    @property
    def family(self) -> int:
        """4 or 6."""
        return 6 if ":" in self.address else 4


def _usable(record: AddressRecord, family: int | None) -> bool:
    ip = ipaddress.ip_address(record.address)
    if family is not None and ip.version != family:
        return False
    if ip.is_link_local or ip.is_loopback or ip.is_multicast:
        return False
    return not record.flags & _IFA_F_SKIP


def _first_address(addresses: Iterable[AddressRecord], ifindex: int,
                   family: int | None) -> AddressRecord | None:
    candidates = [a for a in addresses if a.ifindex == ifindex and _usable(a, family)]
    # IPv4 first unless a family is asked for; kernel order within a family.
    candidates.sort(key=lambda a: ":" in a.address)
    return candidates[0] if candidates else None


def choose_underlay(links: Mapping[int, tuple[str, int]], addresses: list[AddressRecord],
                    routes: list[DefaultRoute], *, interface: str | None = None,
                    cidr: str | None = None, family: int | None = None) -> UnderlayFacts:
    """Pick the underlay. `links` maps ifindex -> (name, MTU); `family` is 4, 6 or None."""
    if family not in (None, 4, 6):
        raise UnderlaySelectionError(f"family={family!r}: expected 4 or 6")
    names = {name: index for index, (name, _mtu) in links.items()}

    def facts(record: AddressRecord, how: str) -> UnderlayFacts:
        name, mtu = links[record.ifindex]
        return UnderlayFacts(name, record.ifindex, str(ipaddress.ip_address(record.address)),
                             record.prefixlen, mtu, how)

    if interface is not None:
        if interface not in names:
            raise UnderlaySelectionError(
                f"interface={interface!r}: no such interface (have: "
                f"{', '.join(sorted(names)) or 'none'})")
        found = _first_address(addresses, names[interface], family)
        if found is None:
            raise UnderlaySelectionError(
                f"interface={interface!r}: no usable "
                f"{'IPv' + str(family) + ' ' if family else ''}address on it")
        return facts(found, "interface")
    if cidr is not None:
        try:
            network = ipaddress.ip_network(cidr, strict=False)
        except ValueError as exc:
            raise UnderlaySelectionError(f"cidr={cidr!r}: not a network ({exc})") from exc
        inside = [a for a in addresses if a.ifindex in links and _usable(a, network.version)
                  and ipaddress.ip_address(a.address) in network]
        if not inside:
            raise UnderlaySelectionError(f"cidr={cidr!r}: no interface has an address in it")
        inside.sort(key=lambda a: a.ifindex)
        return facts(inside[0], "cidr")
    for want in ([family] if family else [4, 6]):
        af = _AF_INET if want == 4 else _AF_INET6
        for route in sorted((r for r in routes if r.family == af), key=lambda r: r.priority):
            if route.oif is None or route.oif not in links:
                continue
            if route.prefsrc is not None:
                preferred = [a for a in addresses if a.ifindex == route.oif
                             and a.address == route.prefsrc]
                if preferred:
                    return facts(preferred[0], "default route")
            found = _first_address(addresses, route.oif, want)
            if found is not None:
                return facts(found, "default route")
    raise UnderlaySelectionError(
        "no interface, cidr given and no default route with a usable address"
        + (f" for family={family}" if family else "")
        + "; set the underlay interface or cidr in the configuration")


def _read_records(ipr: IPRoute) -> tuple[dict[int, tuple[str, int]], list[AddressRecord],
                                         list[DefaultRoute]]:
    links = {int(m["index"]): (str(m.get_attr("IFLA_IFNAME")), int(m.get_attr("IFLA_MTU")))
             for m in ipr.get_links()}
    addresses = []
    for msg in ipr.get_addr():
        address = msg.get_attr("IFA_ADDRESS") if msg["family"] == _AF_INET6 else (
            msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS"))
        if address is None:
            continue
        flags = msg.get_attr("IFA_FLAGS")
        addresses.append(AddressRecord(int(msg["index"]), str(address), int(msg["prefixlen"]),
                                       int(flags if flags is not None else msg["flags"])))
    routes = []
    for af in (_AF_INET, _AF_INET6):
        for msg in ipr.get_routes(family=af, table=_MAIN_TABLE):
            if msg["dst_len"] != 0 or msg.get_attr("RTA_DST") is not None:
                continue
            oif = msg.get_attr("RTA_OIF")
            multipath = msg.get_attr("RTA_MULTIPATH")
            if oif is None and multipath:
                oif = multipath[0]["oif"]
            routes.append(DefaultRoute(af, None if oif is None else int(oif),
                                       msg.get_attr("RTA_PREFSRC"),
                                       int(msg.get_attr("RTA_PRIORITY") or 0)))
    return links, addresses, routes


async def read_underlay(nl: NetlinkThread, *, interface: str | None = None,
                        cidr: str | None = None, family: int | None = None) -> UnderlayFacts:
    """Underlay facts of `nl`'s namespace, chosen by interface, CIDR or default route."""
    links, addresses, routes = await nl.call(_read_records)
    return choose_underlay(links, addresses, routes, interface=interface, cidr=cidr,
                           family=family)


_PROBES: dict[str, dict[str, Any]] = {
    "vxlan": {"kind": "vxlan"},               # no VNI: EINVAL when vxlan exists
    "bridge": {"kind": "bridge", "mtu": 1},   # MTU below minimum: EINVAL
    "macvlan": {"kind": "macvlan", "link": 1},  # on loopback: EINVAL
    "ipvlan": {"kind": "ipvlan", "link": 1},    # on loopback: EINVAL
    "vlan": {"kind": "vlan", "link": 1},        # no VLAN id: EINVAL
}


def _probe_links(ipr: IPRoute) -> dict[str, str | None]:
    """For each link kind: None when present, else the reason it is missing."""
    result: dict[str, str | None] = {}
    for kind, spec in _PROBES.items():
        try:
            ipr.link("add", ifname="vxprobe", **spec)
        except Exception as exc:
            code = netlink_errno(exc)
            result[kind] = (None if code != errno_codes.EOPNOTSUPP
                            else f"the kernel has no {kind} link type (kernel module "
                                 f"{KERNEL_MODULES[kind]} not available)")
            continue
        # Accepted an invalid configuration: remove what was made; the kind is there.
        ipr.link("del", ifname="vxprobe")
        result[kind] = None
    return result


def _probe_nftables() -> str | None:
    from pyroute2.nftables.main import NFTables

    try:
        nft = NFTables()
    except Exception as exc:  # no nfnetlink/nf_tables
        return f"cannot open an nftables socket: {exc}"
    try:
        nft.get_tables()
    except Exception as exc:
        return f"nf_tables does not answer: {exc}"
    finally:
        nft.close()
    return None


async def probe_capabilities(nl: NetlinkThread) -> CapabilityReport:
    """Which of vxlan, bridge, macvlan, ipvlan, nftables this kernel offers."""
    reasons = await nl.call(_probe_links)
    reasons["nftables"] = await nl.call(lambda _ipr: _probe_nftables())
    return CapabilityReport(
        available=frozenset(k for k, why in reasons.items() if why is None),
        missing={k: why for k, why in reasons.items() if why is not None},
    )
