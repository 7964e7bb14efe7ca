"""Endpoint model: specs, records, validation, address/MAC/name derivation, port conflicts.

Owns: everything about an endpoint that is decided rather than done: which fields a mode
accepts, the kernel names derived from an endpoint's name, the MAC rule, local address
allocation on a bridge network, the parse of `HOSTPORT:PORT/proto` and `ADDR:PORT/proto`, who
holds a port, and the JSON form of a record.

Rules:
- Pure: no I/O, no clock, no pyroute2/trio/socket. Bad input raises `EndpointSpecError`
  naming the field and the value.
- MAC rule (overlay and bridge endpoints without a given MAC): Docker's `02:42` followed by the
  four IPv4 octets; for an IPv6-only endpoint `02:` followed by the first five bytes of the
  SHA-256 of the 16 address bytes (deterministic, locally administered, unicast).
- Kernel names: namespace `<netns_prefix><name>`, host-side veth `vxep` + 10 hex digits of
  the SHA-256 of the name (15-byte limit), interface inside the namespace `ifname` (`eth0`).
- Sandboxes: an endpoint's interface goes into a namespace we make and own (the default), into
  a namespace the caller owns (`netns_path`: a CNI runtime's netns, never created or deleted
  by us), or stays in the host namespace as the veth peer `vxpr` + 10 hex digits for the
  caller to move (`hand_back`: Docker's Join, whose daemon moves and configures it).

May import: the standard library, underlay.errors and underlay.records.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from underlay.errors import UnderlayError
from underlay.records import IFNAME_MAX, canonical_ip, canonical_mac, ifname_ok, split_vlan

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
HOST_VETH_PATTERN = re.compile(r"^vxep[0-9a-f]{10}$")
INSIDE_IFNAME = "eth0"
PROTOCOLS = ("tcp", "udp")

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


class EndpointError(UnderlayError):
    """Base of endpoint failures; nothing was changed unless the message says otherwise."""


class EndpointSpecError(EndpointError):
    """A request names a bad field value; the message names the field and the value."""


class EndpointConflict(EndpointError):
    """The request collides with an existing endpoint, port holder or kernel object."""


class EndpointNotFound(EndpointError):
    """No endpoint has this name."""


class Mode(StrEnum):
    """Docker's networking modes."""

    NONE = "none"
    HOST = "host"
    BRIDGE = "bridge"
    OVERLAY = "overlay"
    MACVLAN = "macvlan"
    IPVLAN = "ipvlan"


NAMESPACED_MODES = frozenset({Mode.NONE, Mode.BRIDGE, Mode.OVERLAY, Mode.MACVLAN, Mode.IPVLAN})
#: The modes a network can be created in (its driver); `none` and `host` are endpoint-only.
NETWORK_MODES = (Mode.OVERLAY, Mode.BRIDGE, Mode.MACVLAN, Mode.IPVLAN)


class State(StrEnum):
    """Where an endpoint's life is; `creating`/`deleting` left at start mean a crash."""

    CREATING = "creating"
    READY = "ready"
    DELETING = "deleting"


@dataclass(frozen=True)
class PortClaim:
    """A port a host-mode workload binds (or a published port's host side)."""

    proto: str
    address: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}/{self.proto}"


@dataclass(frozen=True)
class PortMapping:
    """A published port: `host_ip:host_port` on the host DNATed to `port` in the endpoint."""

    host_port: int
    port: int
    proto: str = "tcp"
    host_ip: str | None = None

    def __str__(self) -> str:
        prefix = f"{self.host_ip}:" if self.host_ip else ""
        return f"{prefix}{self.host_port}:{self.port}/{self.proto}"

    def host_claim(self) -> PortClaim:
        return PortClaim(self.proto, self.host_ip or "0.0.0.0", self.host_port)


@dataclass(frozen=True)
class ListeningSocket:
    """A socket bound in the host namespace, as the kernel's socket diagnostics report it."""

    proto: str
    address: str
    port: int
    inode: int
    v6only: bool = False


@dataclass(frozen=True)
class BridgeNetwork:
    """A local bridge network (like docker0): kernel bridge, subnet, gateway, NAT or routed.

    `gateway_mode` "nat": outbound MASQUERADE, inbound only through published ports;
    "routed": no MASQUERADE, the subnet is reachable from hosts that route to it;
    "internal": neither in nor out, only between the network's own endpoints (Docker's
    `--internal`). `gateway_address`: the bridge's address (default: the subnet's first).
    """

    name: str = "bridge"
    ifname: str = "vxlocal0"
    subnet: str = "172.29.0.0/16"
    gateway_mode: str = "nat"
    mtu: int = 1500
    gateway_address: str | None = None
    subnet6: str | None = None

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.subnet)

    @property
    def network6(self) -> ipaddress.IPv6Network | None:
        return None if self.subnet6 is None else ipaddress.IPv6Network(self.subnet6)

    @property
    def gateway6(self) -> ipaddress.IPv6Interface | None:
        """The bridge's IPv6 address: the first of `subnet6` (as Docker)."""
        net = self.network6
        return None if net is None else \
            ipaddress.IPv6Interface(f"{net.network_address + 1}/{net.prefixlen}")

    @property
    def gateway(self) -> ipaddress.IPv4Interface:
        address = self.gateway_address or next(self.network.hosts())
        return ipaddress.IPv4Interface(f"{address}/{self.network.prefixlen}")


GATEWAY_MODES = ("nat", "routed", "internal")


def bridge_ifname(network: str) -> str:
    """The kernel bridge of the bridge network `network` (made by vxmesh, as Docker's br-ID)."""
    return "vxbr" + hashlib.sha256(network.encode()).hexdigest()[:10]


@dataclass(frozen=True)
class EndpointsConfig:
    """What an endpoint service needs to know about its host.

    state_dir: where records live (one JSON file per endpoint).
    host_netns: the namespace standing for the host (None: the agent's own).
    netns_prefix: endpoint namespaces are `<prefix><name>`; only these are garbage-collected.
    underlay_interface: default parent of macvlan/ipvlan endpoints.
    bridges: the local bridge networks (the first is the default).
    nft_table: name of our nftables table (family ip) in the host namespace.
    """

    state_dir: Path
    host_netns: str | None = None
    netns_prefix: str = "vxep-"
    underlay_interface: str = "eth0"
    bridges: tuple[BridgeNetwork, ...] = (BridgeNetwork(),)
    nft_table: str = "vxmesh"

    def bridge_network(self, name: str | None,
                       given: BridgeNetwork | None = None) -> BridgeNetwork:
        """The spec's own bridge network (`given`: a vxmesh bridge network), else the
        configured one called `name` (default: the first)."""
        if given is not None:
            return given
        wanted = name or self.bridges[0].name
        for net in self.bridges:
            if net.name == wanted:
                return net
        raise EndpointSpecError(
            f"network={name!r}: no such bridge network (have {[n.name for n in self.bridges]})")


@dataclass(frozen=True)
class EndpointSpec:
    """What a caller asks for. Unused fields stay at their defaults (checked per mode).

    network: bridge mode: the bridge network's name (default: the first configured);
      overlay mode: the overlay network's name, carried into the record for the neighbor table.
    bridge: overlay mode: the kernel bridge to plug the veth into (it must exist).
    addresses: CIDRs inside the endpoint (bridge: optional, allocated from the subnet).
    mac: inside interface MAC (default: derived from the first address, see module doc).
    mtu: inside interface MTU in bytes (default: the bridge network's, else the kernel's).
    gateway: default route inside the endpoint (bridge: the network's gateway by default).
    gateway6: overlay mode: the IPv6 default route inside the endpoint (the network's IPv6
      gateway on every host's bridge); bridge mode takes the bridge network's.
    publish: bridge mode published ports. claims: host mode port claims.
    parent: macvlan/ipvlan underlay interface (default: the configured underlay interface).
    bridge_network: bridge mode: the bridge network itself (a vxmesh bridge network, made on
      first use and removed with its last endpoint), instead of a configured one by name.
    ipvlan_mode: "l2", "l3" or "l3s".
    ifname: the interface's name inside the sandbox.
    netns_path: bridge/overlay: an existing namespace (a path) the caller owns; the interface
      goes there and the namespace is neither made nor deleted by us (CNI).
    hand_back: bridge/overlay: make the veth pair in the host namespace and leave its peer
      there, MTU and MAC set, for the caller to move and configure (Docker's Join).
    """

    name: str
    mode: Mode
    network: str | None = None
    bridge: str | None = None
    addresses: tuple[str, ...] = ()
    mac: str | None = None
    mtu: int | None = None
    gateway: str | None = None
    publish: tuple[PortMapping, ...] = ()
    claims: tuple[PortClaim, ...] = ()
    parent: str | None = None
    ipvlan_mode: str = "l2"
    bridge_network: BridgeNetwork | None = None
    ifname: str = INSIDE_IFNAME
    netns_path: str | None = None
    hand_back: bool = False
    aliases: tuple[str, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    services: tuple[tuple[int, str], ...] = ()
    gateway6: str | None = None


@dataclass(frozen=True)
class EndpointRecord:
    """An endpoint as persisted: the spec plus everything resolved from it.

    For an overlay endpoint, (network, addresses, mac) is what the neighbor table carries.
    netns: the namespace we made and own (None: host mode, or the sandbox is the caller's).
    sandbox: the caller's namespace (a path) holding the interface (`spec.netns_path`).
    handed_back: the veth peer left in the host namespace for the caller (`spec.hand_back`).
    """

    spec: EndpointSpec
    state: State
    netns: str | None
    host_ifname: str | None
    ifname: str | None
    addresses: tuple[str, ...]
    mac: str | None
    gateway: str | None
    bridge: str | None
    network: str | None = None
    sandbox: str | None = None
    handed_back: str | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def mode(self) -> Mode:
        return self.spec.mode

    def port_claims(self) -> tuple[PortClaim, ...]:
        """Host ports this endpoint holds (claims, or published ports' host side)."""
        return self.spec.claims + tuple(m.host_claim() for m in self.spec.publish)


# --- parsing --------------------------------------------------------------------------------


def _port(text: str, field_name: str, value: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise EndpointSpecError(f"{field_name}={value!r}: port {text!r} is not 1..65535")
    return int(text)


def _split_proto(text: str, field_name: str) -> tuple[str, str]:
    body, _, proto = text.partition("/")
    proto = proto or "tcp"
    if proto not in PROTOCOLS:
        raise EndpointSpecError(f"{field_name}={text!r}: protocol {proto!r} is not tcp or udp")
    return body, proto


def _address(text: str, field_name: str, value: str) -> str:
    try:
        return canonical_ip(text.strip("[]"))
    except ValueError:
        raise EndpointSpecError(f"{field_name}={value!r}: {text!r} is not an IP address") from None


def parse_port_mapping(text: str, *, field_name: str = "publish") -> PortMapping:
    """`HOSTPORT:PORT[/tcp|udp]` or `HOSTIP:HOSTPORT:PORT[/proto]` (IPv4 host address)."""
    body, proto = _split_proto(text, field_name)
    parts = body.split(":")
    if len(parts) == 2:
        host_ip = None
    elif len(parts) == 3:
        host_ip = _address(parts[0], field_name, text)
    else:
        raise EndpointSpecError(f"{field_name}={text!r}: expected HOSTPORT:PORT/proto")
    return PortMapping(_port(parts[-2], field_name, text), _port(parts[-1], field_name, text),
                       proto, host_ip)


def parse_port_claim(text: str, *, field_name: str = "claims") -> PortClaim:
    """`PORT[/proto]`, `ADDR:PORT[/proto]` or `[V6ADDR]:PORT[/proto]`; address 0.0.0.0 if none."""
    body, proto = _split_proto(text, field_name)
    if body.startswith("["):
        address, sep, port = body[1:].partition("]:")
        if not sep:
            raise EndpointSpecError(f"{field_name}={text!r}: expected [ADDR]:PORT/proto")
        return PortClaim(proto, _address(address, field_name, text),
                         _port(port, field_name, text))
    address, sep, port = body.rpartition(":")
    if not sep:
        return PortClaim(proto, "0.0.0.0", _port(body, field_name, text))
    return PortClaim(proto, _address(address, field_name, text), _port(port, field_name, text))


def _interface(text: str, field_name: str) -> IPInterface:
    try:
        iface = ipaddress.ip_interface(text)
    except ValueError:
        raise EndpointSpecError(f"{field_name}={text!r}: not an address with prefix") from None
    if "/" not in text:
        raise EndpointSpecError(f"{field_name}={text!r}: give the prefix length (e.g. /24)")
    return iface


def normalize_mac(text: str, *, field_name: str = "mac") -> str:
    """The canonical form (underlay.records.canonical_mac); unicast only."""
    try:
        mac = canonical_mac(text)
    except ValueError:
        raise EndpointSpecError(f"{field_name}={text!r}: not a MAC address (aa:bb:cc:dd:ee:ff)"
                                ) from None
    if int(mac[:2], 16) & 1:
        raise EndpointSpecError(f"{field_name}={text!r}: a multicast MAC cannot be an endpoint's")
    return mac


# --- derivation -----------------------------------------------------------------------------


def mac_for_address(address: str) -> str:
    """The default MAC of an endpoint whose first address is `address` (see module doc)."""
    ip = ipaddress.ip_interface(address).ip
    if ip.version == 4:
        raw = bytes([0x02, 0x42]) + ip.packed
    else:
        raw = bytes([0x02]) + hashlib.sha256(ip.packed).digest()[:5]
    return ":".join(f"{b:02x}" for b in raw)


def host_veth_name(name: str) -> str:
    """The host-side veth of endpoint `name` (recognisable by HOST_VETH_PATTERN)."""
    return "vxep" + hashlib.sha256(name.encode()).hexdigest()[:10]


def handed_back_veth_name(name: str) -> str:
    """The veth peer of endpoint `name` left in the host namespace for the caller to move."""
    return "vxpr" + hashlib.sha256(name.encode()).hexdigest()[:10]


def allocate_address(net: BridgeNetwork, taken: set[str], *, version: int = 4) -> str:
    """The lowest free host address of the bridge network's IPv4 (or IPv6) subnet, gateway
    excluded, as a CIDR."""
    subnet: ipaddress.IPv4Network | ipaddress.IPv6Network | None = \
        net.network if version == 4 else net.network6
    gateway = net.gateway if version == 4 else net.gateway6
    assert subnet is not None and gateway is not None
    used = {ipaddress.ip_interface(a).ip for a in taken} | {gateway.ip}
    for ip in subnet.hosts():
        if ip not in used:
            return f"{ip}/{subnet.prefixlen}"
    raise EndpointConflict(f"network={net.name!r}: subnet {subnet} has no free address")


def _check_common(spec: EndpointSpec) -> None:
    if not NAME_PATTERN.match(spec.name):
        raise EndpointSpecError(
            f"name={spec.name!r}: 1-63 characters of a-z, 0-9, '_', '.', '-' "
            f"starting with a letter or digit")
    if spec.mtu is not None and not 68 <= spec.mtu <= 65535:
        raise EndpointSpecError(f"mtu={spec.mtu!r}: must be between 68 and 65535 bytes")
    for text in spec.addresses:
        _interface(text, "addresses")
    if spec.mac is not None:
        normalize_mac(spec.mac)
    if spec.gateway is not None:
        _address(spec.gateway, "gateway", spec.gateway)
    if spec.gateway6 is not None and ":" not in _address(spec.gateway6, "gateway6",
                                                         spec.gateway6):
        raise EndpointSpecError(f"gateway6={spec.gateway6!r}: not an IPv6 address")
    if spec.parent is not None:
        try:
            split_vlan(spec.parent)
        except ValueError as exc:
            raise EndpointSpecError(f"parent={spec.parent!r}: {exc}") from None
    if spec.ipvlan_mode not in ("l2", "l3", "l3s"):
        raise EndpointSpecError(f"ipvlan_mode={spec.ipvlan_mode!r}: expected l2, l3 or l3s")
    if not ifname_ok(spec.ifname):
        raise EndpointSpecError(f"ifname={spec.ifname!r}: an interface name is 1 to "
                                f"{IFNAME_MAX} bytes without '/', ':' or spaces")
    if spec.netns_path is not None and not spec.netns_path.startswith("/"):
        raise EndpointSpecError(f"netns_path={spec.netns_path!r}: not an absolute path")
    if spec.netns_path is not None and spec.hand_back:
        raise EndpointSpecError(f"hand_back=True: the interface goes into "
                                f"netns_path={spec.netns_path!r}, nothing is handed back")


def _refuse_fields(spec: EndpointSpec, names: tuple[str, ...]) -> None:
    defaults = EndpointSpec(name=spec.name, mode=spec.mode)
    for name in names:
        value = getattr(spec, name)
        if value != getattr(defaults, name):
            raise EndpointSpecError(f"{name}={value!r}: not used by mode {spec.mode.value!r}")


def resolve(spec: EndpointSpec, config: EndpointsConfig,
            others: list[EndpointRecord]) -> EndpointRecord:
    """Validate `spec` for its mode and resolve it into a record in state `creating`."""
    try:
        spec = dataclasses.replace(spec, mode=Mode(spec.mode), addresses=tuple(spec.addresses),
                                   publish=tuple(spec.publish), claims=tuple(spec.claims))
    except ValueError:
        raise EndpointSpecError(
            f"mode={spec.mode!r}: expected one of {[m.value for m in Mode]}") from None
    _check_common(spec)
    mode = spec.mode
    own_sandbox = spec.netns_path is None and not spec.hand_back
    netns = f"{config.netns_prefix}{spec.name}" \
        if mode in NAMESPACED_MODES and own_sandbox else None
    addresses = spec.addresses
    gateway = spec.gateway
    bridge: str | None = None
    network = spec.network
    host_ifname: str | None = None
    if mode is Mode.HOST:
        _refuse_fields(spec, ("network", "bridge", "addresses", "mac", "mtu", "gateway",
                              "gateway6", "publish", "parent", "ifname", "netns_path", "hand_back",
                              "bridge_network"))
    elif mode is Mode.NONE:
        _refuse_fields(spec, ("network", "bridge", "addresses", "mac", "mtu", "gateway",
                              "gateway6", "publish", "claims", "parent", "ifname", "netns_path",
                              "hand_back", "bridge_network"))
    elif mode is Mode.BRIDGE:
        _refuse_fields(spec, ("bridge", "claims", "parent", "gateway6"))
        net = config.bridge_network(spec.network, spec.bridge_network)
        if net.gateway_mode not in GATEWAY_MODES:
            raise EndpointSpecError(f"bridge_network.gateway_mode={net.gateway_mode!r}: "
                                    f"expected one of {', '.join(GATEWAY_MODES)}")
        network, bridge, host_ifname = net.name, net.ifname, host_veth_name(spec.name)
        taken = {a for r in others if r.network == net.name and r.mode is Mode.BRIDGE
                 for a in r.addresses}
        versions = {_interface(text, "addresses").version for text in addresses}
        if 4 not in versions:
            addresses = (allocate_address(net, taken), *addresses)
        if net.network6 is not None and 6 not in versions:
            addresses = (*addresses, allocate_address(net, taken, version=6))
        for text in addresses:
            iface = _interface(text, "addresses")
            subnet = net.network if iface.version == 4 else net.network6
            if subnet is None or iface.network != subnet:
                raise EndpointSpecError(f"addresses={text!r}: not inside bridge network "
                                        f"{net.name!r} ({subnet or 'no IPv6 subnet'})")
            if iface.ip in (net.gateway.ip, net.gateway6 and net.gateway6.ip):
                raise EndpointSpecError(f"addresses={text!r}: that is the network's gateway")
        gateway = gateway or str(net.gateway.ip)
    elif mode is Mode.OVERLAY:
        _refuse_fields(spec, ("claims", "publish", "parent", "bridge_network"))
        if not spec.bridge:
            raise EndpointSpecError("bridge=None: an overlay endpoint needs the network's bridge")
        if not addresses:
            raise EndpointSpecError("addresses=(): an overlay endpoint needs its address")
        bridge, host_ifname = spec.bridge, host_veth_name(spec.name)
    else:  # macvlan, ipvlan
        _refuse_fields(spec, ("bridge", "claims", "publish", "netns_path", "hand_back",
                              "bridge_network", "gateway6"))
        if not addresses:
            raise EndpointSpecError(f"addresses=(): a {mode.value} endpoint needs its address")
        if mode is Mode.IPVLAN and spec.mac is not None:
            raise EndpointSpecError(f"mac={spec.mac!r}: ipvlan shares its parent's MAC")
    mac = None
    if mode in (Mode.BRIDGE, Mode.OVERLAY, Mode.MACVLAN):
        mac = normalize_mac(spec.mac) if spec.mac else mac_for_address(addresses[0])
    for other in others:
        if other.name == spec.name:
            continue
        shared = set(addresses) & set(other.addresses)
        same_segment = (other.bridge == bridge and bridge is not None) or (
            other.mode in (Mode.MACVLAN, Mode.IPVLAN) and mode in (Mode.MACVLAN, Mode.IPVLAN))
        if shared and same_segment:
            raise EndpointConflict(
                f"addresses={sorted(shared)!r}: already held by endpoint {other.name!r}")
        if mac is not None and other.mac == mac and other.bridge == bridge and bridge:
            raise EndpointConflict(f"mac={mac!r}: already held by endpoint {other.name!r}")
    return EndpointRecord(
        spec=spec, state=State.CREATING, netns=netns, host_ifname=host_ifname,
        ifname=spec.ifname if mode in (Mode.BRIDGE, Mode.OVERLAY, Mode.MACVLAN, Mode.IPVLAN)
        else None,
        addresses=tuple(addresses), mac=mac, gateway=gateway, bridge=bridge, network=network,
        sandbox=spec.netns_path,
        handed_back=handed_back_veth_name(spec.name) if spec.hand_back else None)


# --- port holders ---------------------------------------------------------------------------


def claims_overlap(a: PortClaim, b: PortClaim, *, b_v6only: bool = False) -> bool:
    """True when binding `a` would fail because `b` is bound (same proto and port)."""
    if a.proto != b.proto or a.port != b.port:
        return False
    ip_a, ip_b = ipaddress.ip_address(a.address), ipaddress.ip_address(b.address)
    if ip_a.version == ip_b.version:
        return ip_a == ip_b or ip_a.is_unspecified or ip_b.is_unspecified
    # A dual-stack (not v6only) wildcard on [::] also holds every IPv4 address.
    v6, v6_is_b = (ip_b, True) if ip_b.version == 6 else (ip_a, False)
    return v6.is_unspecified and not (v6_is_b and b_v6only)


def endpoint_holding(claim: PortClaim, records: list[EndpointRecord],
                     exclude: str) -> EndpointRecord | None:
    """The endpoint (other than `exclude`) whose port claims overlap `claim`, if any."""
    for record in records:
        if record.name == exclude:
            continue
        if any(claims_overlap(claim, held) for held in record.port_claims()):
            return record
    return None


def socket_holding(claim: PortClaim, sockets: list[ListeningSocket]) -> ListeningSocket | None:
    """A live socket whose binding overlaps `claim`, if any."""
    for sock in sockets:
        held = PortClaim(sock.proto, sock.address, sock.port)
        if claims_overlap(claim, held, b_v6only=sock.v6only):
            return sock
    return None


# --- JSON form ------------------------------------------------------------------------------


def record_to_json(record: EndpointRecord) -> dict[str, Any]:
    """A JSON-ready dict of the record (the state file's content)."""
    return dataclasses.asdict(record)


def record_from_json(data: dict[str, Any]) -> EndpointRecord:
    """Inverse of `record_to_json`; raises EndpointError on a malformed document."""
    try:
        raw = dict(data["spec"])
        raw["mode"] = Mode(raw["mode"])
        raw["addresses"] = tuple(raw["addresses"])
        raw["publish"] = tuple(PortMapping(**m) for m in raw["publish"])
        raw["claims"] = tuple(PortClaim(**c) for c in raw["claims"])
        raw["aliases"] = tuple(raw.get("aliases", ()))
        raw["labels"] = tuple((str(k), str(v)) for k, v in raw.get("labels", ()))
        raw["services"] = tuple((int(p), str(proto)) for p, proto in raw.get("services", ()))
        if raw.get("bridge_network") is not None:
            raw["bridge_network"] = BridgeNetwork(**raw["bridge_network"])
        spec = EndpointSpec(**raw)
        rest = {k: v for k, v in data.items() if k != "spec"}
        rest["state"] = State(rest["state"])
        rest["addresses"] = tuple(rest["addresses"])
        return EndpointRecord(spec=spec, **rest)
    except (KeyError, TypeError, ValueError) as exc:
        raise EndpointError(f"malformed endpoint record: {exc!r}") from exc
