"""Generic link operations: bridges, veth pairs, macvlan/ipvlan, addresses, routes, namespaces.

Owns: the netlink recipes for the kernel objects every endpoint mode and the overlay data
plane share. VXLAN devices, FDB and neighbor entries live in `underlay.netlink_ops`.

Rules:
- Link functions take the `IPRoute` of one namespace and run on that namespace's
  `underlay.kernel.NetlinkThread`, so several steps go in one hop:
  `await nl.call(lambda ipr: ensure_bridge(ipr, "vxbr0", mtu=1450))`, or
  `nl.call_blocking(...)` from synchronous code.
- Creation is idempotent: an existing object of the same kind is adopted (and brought to the
  requested MTU/MAC/state); an existing object of another kind raises `LinkConflict` and
  changes nothing. Deleting something already gone is success (`kernel.is_missing`).
- Every other kernel failure raises `KernelError` with the errno and the object's name.
- Named namespaces are created in this process (`underlay.netns_sockets.create_netns_at`:
  no fork), opened and deleted through `pyroute2.netns`; opening never creates (flags=0),
  so a typo fails instead of making an empty namespace.
- Interface names are at most 15 bytes (IFNAMSIZ - 1); longer names are refused up front.

May import: pyroute2, underlay.errors, underlay.kernel, underlay.netns_sockets.
"""

from __future__ import annotations

import errno as errno_codes
import ipaddress
import itertools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pyroute2 import netns as pyroute2_netns
from pyroute2.iproute import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_NODAD

from underlay.errors import KernelError, UnderlayError
from underlay.kernel import is_missing, netlink_errno
from underlay.netns_exec import netns_path
from underlay.netns_sockets import create_netns_at
from underlay.records import IFNAME_MAX, ifname_ok

_temporary = itertools.count()

T = TypeVar("T")


MACVLAN_MODES = {"private": 1, "vepa": 2, "bridge": 4, "passthru": 8, "source": 16}
IPVLAN_MODES = {"l2": 0, "l3": 1, "l3s": 2}


class LinkConflict(UnderlayError):
    """A name is taken by an object of another kind (or another peer); nothing was changed."""


class BadLinkName(UnderlayError):
    """An interface or namespace name the kernel would refuse; nothing was changed."""


@dataclass(frozen=True)
class LinkInfo:
    """What the kernel says about one link (read fresh; never cache `index` across resyncs)."""

    index: int
    name: str
    kind: str | None
    mac: str | None
    mtu: int
    up: bool
    master: int | None
    link: int | None
    operstate: str = "UNKNOWN"

    @property
    def operational(self) -> bool:
        """Carrier up and activated by the kernel's link watcher (UNKNOWN: no carrier notion)."""
        return self.up and self.operstate in ("UP", "UNKNOWN")


@dataclass(frozen=True)
class AddressInfo:
    """One address on a link, as `ipaddress` interface (address/prefix)."""

    index: int
    interface: ipaddress.IPv4Interface | ipaddress.IPv6Interface


def check_ifname(name: str, *, field: str = "ifname") -> str:
    """Return `name` when the kernel accepts it as an interface name, else raise BadLinkName."""
    if not ifname_ok(name):
        raise BadLinkName(f"{field}={name!r}: an interface name is 1 to {IFNAME_MAX} bytes "
                          "without '/', ':' or spaces")
    return name


def _kernel(what: str, fn: Callable[[], T]) -> T:
    """Run one netlink request, translating its failure into a KernelError naming `what`."""
    try:
        return fn()
    except NetlinkError as exc:
        raise KernelError(f"{what}: {exc}", netlink_errno(exc)) from exc


def link_info(msg: Any) -> LinkInfo:
    """A decoded pyroute2 `ifinfmsg` as a LinkInfo."""
    linkinfo = msg.get_attr("IFLA_LINKINFO")
    kind = linkinfo.get_attr("IFLA_INFO_KIND") if linkinfo is not None else None
    return LinkInfo(
        index=int(msg["index"]),
        name=str(msg.get_attr("IFLA_IFNAME")),
        kind=kind,
        mac=msg.get_attr("IFLA_ADDRESS"),
        mtu=int(msg.get_attr("IFLA_MTU") or 0),
        up=bool(msg["flags"] & 1),
        master=msg.get_attr("IFLA_MASTER"),
        link=msg.get_attr("IFLA_LINK"),
        operstate=str(msg.get_attr("IFLA_OPERSTATE") or "UNKNOWN"),
    )


def get_link(ipr: IPRoute, name: str) -> LinkInfo | None:
    """The link called `name` in this namespace, or None."""
    try:
        msgs = ipr.link("get", ifname=name)
    except NetlinkError as exc:
        if is_missing(exc):
            return None
        raise KernelError(f"look up link {name!r}: {exc}", netlink_errno(exc)) from exc
    return link_info(msgs[0])


def list_links(ipr: IPRoute, *, prefix: str = "") -> list[LinkInfo]:
    """Every link in this namespace whose name starts with `prefix`."""
    infos = [link_info(msg) for msg in _kernel("dump links", lambda: list(ipr.get_links()))]
    return [info for info in infos if info.name.startswith(prefix)]


def _require(ipr: IPRoute, name: str) -> LinkInfo:
    info = get_link(ipr, name)
    if info is None:
        raise KernelError(f"link {name!r} does not exist", errno_codes.ENODEV)
    return info


def set_link(ipr: IPRoute, name: str, *, mtu: int | None = None, mac: str | None = None,
             up: bool | None = None, master: str | None = None) -> LinkInfo:
    """Bring `name` to the given MTU / MAC / master / state (only what is given) and return it."""
    info = _require(ipr, name)
    changes: dict[str, Any] = {}
    if mtu is not None and info.mtu != mtu:
        changes["mtu"] = mtu
    if mac is not None and (info.mac or "").lower() != mac.lower():
        changes["address"] = mac.lower()
    if master is not None:
        master_index = _require(ipr, master).index
        if info.master != master_index:
            changes["master"] = master_index
    if changes:
        _kernel(f"set {name!r} {changes}", lambda: ipr.link("set", index=info.index, **changes))
    if up is not None and info.up != up:
        _kernel(f"set {name!r} {'up' if up else 'down'}",
                lambda: ipr.link("set", index=info.index, state="up" if up else "down"))
    return _require(ipr, name) if changes or up is not None else info


def set_bridge_port(ipr: IPRoute, name: str, *, hairpin: bool) -> None:
    """Set the hairpin flag of bridge port `name` (frames may leave by the port they came in).

    Needed for NAT hairpin when bridged frames pass through netfilter (br_netfilter): a
    packet DNATed back to the bridge is bridged out of its ingress port.
    """
    info = _require(ipr, name)
    _kernel(f"set hairpin={hairpin} on {name!r}",
            lambda: ipr.brport("set", index=info.index, mode=1 if hairpin else 0))


def wait_operational(ipr: IPRoute, name: str, *, timeout: float = 10.0) -> bool:
    """Wait (at most `timeout` seconds) until link `name` is operational; False if it is not.

    The kernel activates a link's queue and a bridge port's forwarding state from its link
    watcher, which may lag seconds behind `up` on a busy host: until then frames are dropped.
    """
    deadline = time.monotonic() + timeout
    while True:
        info = get_link(ipr, name)
        if info is not None and info.operational:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)


def _adopt(ipr: IPRoute, name: str, kind: str) -> LinkInfo | None:
    info = get_link(ipr, name)
    if info is not None and info.kind != kind:
        raise LinkConflict(f"link {name!r} exists as {info.kind or 'a device'}, not {kind}")
    return info


def ensure_bridge(ipr: IPRoute, name: str, *, mtu: int | None = None, mac: str | None = None,
                  up: bool = True) -> LinkInfo:
    """Create the bridge `name` (or adopt an existing one) with the given MTU, MAC and state."""
    check_ifname(name)
    if _adopt(ipr, name, "bridge") is None:
        spec: dict[str, Any] = {"ifname": name, "kind": "bridge"}
        if mtu is not None:
            spec["mtu"] = mtu
        if mac is not None:
            spec["address"] = mac.lower()
        _create(ipr, name, "bridge", spec)
    return set_link(ipr, name, mtu=mtu, mac=mac, up=up)


def _create(ipr: IPRoute, name: str, kind: str, spec: dict[str, Any], *,
            other_name: str = "") -> None:
    try:
        ipr.link("add", **spec)
    except NetlinkError as exc:
        if netlink_errno(exc) == errno_codes.EEXIST:
            # Lost a race with another creator: adopt only if it is the same kind.
            if _adopt(ipr, name, kind) is not None:
                return
            raise LinkConflict(f"create {kind} {name!r}: {other_name or 'a name it needs'} "
                               "exists already") from exc
        raise KernelError(f"create {kind} {name!r}: {exc}", netlink_errno(exc)) from exc


def ensure_veth(ipr: IPRoute, name: str, peer: str, *, peer_netns: str | None = None,
                mtu: int | None = None, mac: str | None = None, peer_mac: str | None = None,
                master: str | None = None, up: bool = True) -> LinkInfo:
    """A veth pair: `name` here, its peer called `peer` in `peer_netns` (or here).

    The peer is created directly inside its namespace under its final name (one atomic
    request), so a crash never leaves a half-moved pair. An existing veth `name` is adopted;
    the peer's side is then the caller's to check (`set_link` in the peer namespace).
    """
    check_ifname(name)
    check_ifname(peer, field="peer")
    if _adopt(ipr, name, "veth") is None:
        peer_spec: dict[str, Any] = {"ifname": peer}
        if mtu is not None:
            peer_spec["mtu"] = mtu
        if peer_mac is not None:
            peer_spec["address"] = peer_mac.lower()
        if peer_netns is not None:
            peer_spec["net_ns_fd"] = open_netns_path(peer_netns)
        spec: dict[str, Any] = {"ifname": name, "kind": "veth", "peer": peer_spec}
        if mtu is not None:
            spec["mtu"] = mtu
        if mac is not None:
            spec["address"] = mac.lower()
        where = f" in namespace {peer_netns!r}" if peer_netns is not None else ""
        _create(ipr, name, "veth", spec, other_name=f"interface {peer!r}{where}")
    return set_link(ipr, name, mtu=mtu, mac=mac, master=master, up=up)


def _ensure_sublink(ipr: IPRoute, kind: str, name: str, parent: str, mode: int,
                    netns: str | None, mtu: int | None, mac: str | None) -> None:
    """Create a macvlan/ipvlan on `parent` here, placed in `netns` under `name`.

    With `netns`, the link is made here under a temporary name and then moved and renamed in
    one step: the kernel checks a new macvlan/ipvlan's name in this namespace too, so `eth0`
    inside an endpoint's namespace could not be made on a host whose own interface is eth0."""
    check_ifname(name)
    parent_index = _require(ipr, parent).index
    if netns is None and _adopt(ipr, name, kind) is not None:
        return
    made = name if netns is None else f"vxt{os.getpid() % 100000}{next(_temporary) % 1000}"
    spec: dict[str, Any] = {"ifname": made, "kind": kind, "link": parent_index,
                            f"{kind}_mode": mode}
    if mtu is not None:
        spec["mtu"] = mtu
    if mac is not None:
        spec["address"] = mac.lower()
    try:
        ipr.link("add", **spec)
    except NetlinkError as exc:
        code = netlink_errno(exc)
        if code == errno_codes.EOPNOTSUPP or (code == errno_codes.EINVAL and kind == "ipvlan"):
            raise KernelError(f"create {kind} {name!r}: this kernel has no {kind} support "
                              f"({exc})", code) from exc
        raise KernelError(f"create {kind} {name!r} on {parent!r}: {exc}", code) from exc
    if netns is None:
        return
    index = _require(ipr, made).index
    try:
        ipr.link("set", index=index, net_ns_fd=open_netns_path(netns), ifname=name)
    except NetlinkError as exc:
        # The kernel moves first and renames after: a taken name leaves it there, unrenamed.
        if get_link(ipr, made) is not None:
            delete_link(ipr, made)
        else:
            with IPRoute(netns=netns, flags=0) as inside:
                delete_link(inside, made)
        if netlink_errno(exc) == errno_codes.EEXIST:
            return  # the name is taken in the target namespace: the caller adopts it there
        raise KernelError(f"move {kind} {name!r} to namespace {netns!r}: {exc}",
                          netlink_errno(exc)) from exc


def ensure_macvlan(ipr: IPRoute, name: str, parent: str, *, mode: str = "bridge",
                   netns: str | None = None, mtu: int | None = None,
                   mac: str | None = None) -> None:
    """A macvlan on `parent` (a link in this namespace), created as `name` inside `netns`.

    With `netns`, the sub-interface is born in the target namespace (one request, no rename);
    configure it there (addresses, up) through that namespace's NetlinkThread.
    """
    if mode not in MACVLAN_MODES:
        raise UnderlayError(f"macvlan mode={mode!r}: expected one of {sorted(MACVLAN_MODES)}")
    _ensure_sublink(ipr, "macvlan", name, parent, MACVLAN_MODES[mode], netns, mtu, mac)


def ensure_ipvlan(ipr: IPRoute, name: str, parent: str, *, mode: str = "l2",
                  netns: str | None = None, mtu: int | None = None) -> None:
    """An ipvlan (l2, l3 or l3s) on `parent`, created as `name` inside `netns` (see macvlan)."""
    if mode not in IPVLAN_MODES:
        raise UnderlayError(f"ipvlan mode={mode!r}: expected one of {sorted(IPVLAN_MODES)}")
    _ensure_sublink(ipr, "ipvlan", name, parent, IPVLAN_MODES[mode], netns, mtu, None)


OWNED_ALIAS = "vxmesh"
"""The interface alias (`ip link` shows it) of sub-interfaces vxmesh made and may remove."""


def ensure_vlan(ipr: IPRoute, name: str, parent: str, vlan: int) -> bool:
    """The 802.1Q sub-interface `name` of `parent` with id `vlan`, up; True if made now (then
    it carries OWNED_ALIAS). An existing link of that name is taken as it is."""
    check_ifname(name)
    info = get_link(ipr, name)
    if info is not None:
        if info.kind != "vlan":
            raise LinkConflict(f"link {name!r} exists as {info.kind or 'a device'}, not vlan")
        return False
    parent_index = _require(ipr, parent).index
    _create(ipr, name, "vlan", {"ifname": name, "kind": "vlan", "link": parent_index,
                                "vlan_id": vlan})
    index = _require(ipr, name).index
    _kernel(f"set alias and up of {name!r}",
            lambda: ipr.link("set", index=index, ifalias=OWNED_ALIAS, state="up"))
    return True


def owned_by_us(ipr: IPRoute, name: str) -> bool:
    """Whether link `name` exists and carries OWNED_ALIAS (vxmesh made it)."""
    try:
        msgs = ipr.link("get", ifname=name)
    except NetlinkError as exc:
        if is_missing(exc):
            return False
        raise KernelError(f"look up link {name!r}: {exc}", netlink_errno(exc)) from exc
    return bool(msgs[0].get_attr("IFLA_IFALIAS") == OWNED_ALIAS)


def move_link(ipr: IPRoute, name: str, netns: str, *, new_name: str | None = None) -> None:
    """Move link `name` from this namespace into `netns`, renamed to `new_name` if given."""
    info = _require(ipr, name)
    changes: dict[str, Any] = {"net_ns_fd": open_netns_path(netns)}
    if new_name is not None:
        changes["ifname"] = check_ifname(new_name, field="new_name")
    _kernel(f"move {name!r} to namespace {netns!r}",
            lambda: ipr.link("set", index=info.index, **changes))


def delete_link(ipr: IPRoute, name: str) -> bool:
    """Delete link `name`; True if it existed. Already gone is success."""
    info = get_link(ipr, name)
    if info is None:
        return False
    try:
        ipr.link("del", index=info.index)
    except NetlinkError as exc:
        if is_missing(exc):
            return False
        raise KernelError(f"delete link {name!r}: {exc}", netlink_errno(exc)) from exc
    return True


def parse_interface(cidr: str, *, field: str = "address") -> ipaddress.IPv4Interface | \
        ipaddress.IPv6Interface:
    """`10.0.0.2/24` or `fd00::2/64` as an interface, or UnderlayError naming the field."""
    try:
        return ipaddress.ip_interface(cidr)
    except ValueError as exc:
        raise UnderlayError(f"{field}={cidr!r}: not an address with prefix ({exc})") from exc


def list_addresses(ipr: IPRoute, name: str) -> list[AddressInfo]:
    """Addresses (v4 and v6, link-local included) on link `name`."""
    info = _require(ipr, name)
    msgs = _kernel(f"dump addresses of {name!r}", lambda: list(ipr.addr("dump", index=info.index)))
    out = []
    for msg in msgs:
        address = msg.get_attr("IFA_ADDRESS")
        out.append(AddressInfo(index=info.index, interface=ipaddress.ip_interface(
            f"{address}/{msg['prefixlen']}")))
    return out


def add_address(ipr: IPRoute, name: str, cidr: str) -> None:
    """Put `cidr` on link `name`; IPv6 without duplicate detection. Already there is success."""
    iface = parse_interface(cidr)
    info = _require(ipr, name)
    spec: dict[str, Any] = {"index": info.index, "address": str(iface.ip),
                            "prefixlen": iface.network.prefixlen}
    if iface.version == 6:
        spec["IFA_FLAGS"] = IFA_F_NODAD
    try:
        ipr.addr("add", **spec)
    except NetlinkError as exc:
        if netlink_errno(exc) != errno_codes.EEXIST:
            raise KernelError(f"add address {cidr} to {name!r}: {exc}",
                              netlink_errno(exc)) from exc


def replace_route(ipr: IPRoute, dst: str, *, gateway: str | None = None,
                  dev: str | None = None) -> None:
    """Install (or overwrite) the route to `dst` ("default" or a prefix) via gateway and/or dev."""
    if dst == "default":
        family = 6 if gateway is not None and ":" in gateway else 4
        dst = "::/0" if family == 6 else "0.0.0.0/0"
    network = ipaddress.ip_network(dst, strict=False)
    spec: dict[str, Any] = {"dst": str(network.network_address),
                            "dst_len": network.prefixlen}
    if network.version == 6:
        spec["family"] = 10
    if gateway is not None:
        spec["gateway"] = gateway
    if dev is not None:
        spec["oif"] = _require(ipr, dev).index
    _kernel(f"replace route {dst}", lambda: ipr.route("replace", **spec))


def delete_route(ipr: IPRoute, dst: str) -> None:
    """Remove the route to `dst`; already gone is success."""
    network = ipaddress.ip_network("0.0.0.0/0" if dst == "default" else dst, strict=False)
    spec: dict[str, Any] = {"dst": str(network.network_address), "dst_len": network.prefixlen}
    if network.version == 6:
        spec["family"] = 10
    try:
        ipr.route("del", **spec)
    except NetlinkError as exc:
        if not is_missing(exc):
            raise KernelError(f"delete route {dst}: {exc}", netlink_errno(exc)) from exc


# --- network namespaces -------------------------------------------------------------------


def check_netns_name(name: str) -> str:
    """Return `name` when usable as a named namespace, else raise BadLinkName."""
    if not name or "/" in name or name in (".", "..") or len(name) > 200 \
            or name.strip() != name:
        raise BadLinkName(f"netns={name!r}: a namespace name is a plain file name")
    return name


def open_netns_path(name: str) -> str:
    """The path of an existing namespace given by name or by path (`/proc/PID/ns/net`, a
    runtime's bind mount); KernelError if it does not exist."""
    path = name if name.startswith("/") else netns_path(check_netns_name(name))
    if not os.path.exists(path):
        raise KernelError(f"network namespace {name!r} does not exist", errno_codes.ENOENT)
    return path


def netns_exists(name: str) -> bool:
    """True when the named network namespace exists."""
    return check_netns_name(name) in pyroute2_netns.listnetns()


def list_netns(*, prefix: str = "") -> list[str]:
    """Named network namespaces whose name starts with `prefix`."""
    return sorted(n for n in pyroute2_netns.listnetns() if n.startswith(prefix))


def create_netns(name: str) -> bool:
    """Create the named namespace with loopback up; True if created, False if it existed."""
    check_netns_name(name)
    if netns_exists(name):
        return False
    try:
        create_netns_at(Path(netns_path(name)))
    except FileExistsError:
        return False
    except OSError as exc:
        raise KernelError(f"create network namespace {name!r}: {exc}", exc.errno) from exc
    return True


def delete_netns(name: str) -> bool:
    """Delete the named namespace (its links go with it); True if it existed."""
    if not netns_exists(name):
        return False
    try:
        pyroute2_netns.remove(name)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise KernelError(f"delete network namespace {name!r}: {exc}", exc.errno) from exc
    return True
