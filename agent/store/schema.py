"""The etcd key schema of vxmesh (version 1) and the records stored under it, in one place.

Every key lives under `/vxmesh/v1/`; values are UTF-8 JSON objects (guard keys hold a plain
network name). Anything else found under the prefix is *malformed*: readers skip it, log it once
and count it; it never crashes an agent.

    /vxmesh/v1/networks/<name>                    Network: name, vni, subnet, gateway, mtu,
                                                  mode (the driver), options, block_prefix,
                                                  subnet6, ip_range, internal (the last three
                                                  absent in older records: none, none, false)
    /vxmesh/v1/vnis/<vni:08d>                     guard: the name of the network holding the VNI
    /vxmesh/v1/subnets/<4|6>/<hex addr>/<len:03d> guard: the name of the network holding the
                                                  subnet. Keys sort by address, so "does any
                                                  network overlap 10.1.0.0/16" is one range
                                                  compare (subnets inside it) plus one compare per
                                                  shorter prefix length (subnets around it)
    /vxmesh/v1/blocks/<network>/<addr>-<len>      Block: an IPAM block of the network's subnet
                                                  (or of its subnet6: `Network.ipv6_view`),
                                                  claimed by one host (Calico block affinity);
                                                  `allocations` maps address -> endpoint handle.
                                                  These maps ARE the endpoint registry of the
                                                  network: a network "has endpoints" when any of
                                                  its blocks has an allocation.
    /vxmesh/v1/nodes/<name>                       Node: name, vtep, gossip [host, port], version,
                                                  public_key?, wireguard_key?; attached to the
                                                  node's lease (it disappears when the agent
                                                  stops refreshing the lease);
                                                  the gossip seed list
    /vxmesh/v1/policies/<name>                    Policy: name, network, direction, select
                                                  [key, value], allow [peer], ports
                                                  [[port, proto]]; a peer is [key, value] (a
                                                  label) or a CIDR string

Writes that need uniqueness are single etcd transactions: network create (compares the name,
the VNI guard and the subnet guards, puts all three), block claim (compares the block key is
absent and the network is the same incarnation), network delete (compares that no block changed
since the endpoint count was read). Nothing here does I/O: this module is pure (stdlib only,
plus agent.store.errors and the shared vocabulary of underlay.records: VNI and MTU ranges) and
is listed among the pure cores in pyproject.toml.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.store.errors import InvalidNetwork, InvalidPolicy, StoreError
from overlay.attributes import InvalidAttributes, make_attributes, make_labels
from underlay.endpoints_model import NETWORK_MODES
from underlay.records import MTU_MAX, MTU_MIN, VNI_MAX, VNI_MIN, split_vlan, vni_in_range

PREFIX = "/vxmesh/v1/"
NETWORKS = PREFIX + "networks/"
VNIS = PREFIX + "vnis/"
SUBNETS = PREFIX + "subnets/"
BLOCKS = PREFIX + "blocks/"
NODES = PREFIX + "nodes/"
POLICIES = PREFIX + "policies/"
POLICY_DIRECTIONS = ("ingress", "egress")
MAX_POLICY_PEERS = 32
MAX_POLICY_PORTS = 16

VNI_AUTO_FIRST = 4096
"""Allocated VNIs start here (as Docker's overlay driver does), below are for operators."""

MODES = tuple(mode.value for mode in NETWORK_MODES)
MODE_OPTIONS: Mapping[str, Mapping[str, tuple[str, ...] | None]] = {
    # option -> allowed values (None: any non-empty string)
    "overlay": {"encrypted": ("true", "false")},
    "bridge": {"masquerade": ("true", "false")},
    "macvlan": {"parent": None, "macvlan_mode": ("bridge", "private", "vepa", "passthru")},
    # ipvlan_mode default l2 (as Docker)
    "ipvlan": {"parent": None, "ipvlan_mode": ("l2", "l3")},
}
SUBNET_PREFIX_RANGE = {4: (8, 29), 6: (48, 120)}
"""Accepted subnet prefix lengths per family; also bounds the guard compares of a create."""
BLOCK_PREFIX_DEFAULT = {4: 26, 6: 122}
"""Default block size: 64 addresses, as Calico."""
BLOCK_PREFIX_RANGE = {4: (20, 30), 6: (116, 126)}

_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class MalformedRecord(StoreError):
    """A value under our prefix that does not decode into the record its key promises."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key


# -- keys ----------------------------------------------------------------------------------


def prefix_end(prefix: str) -> str:
    """The exclusive range end that covers every key starting with `prefix`."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def network_key(name: str) -> str:
    return NETWORKS + name


def vni_key(vni: int) -> str:
    return f"{VNIS}{vni:08d}"


def _address_hex(address: IPAddress) -> str:
    width = 8 if address.version == 4 else 32
    return f"{int(address):0{width}x}"


def subnet_key(subnet: IPNetwork) -> str:
    return (
        f"{SUBNETS}{subnet.version}/{_address_hex(subnet.network_address)}/{subnet.prefixlen:03d}"
    )


def subnet_inner_range(subnet: IPNetwork) -> tuple[str, str]:
    """[start, end) over the guard keys of every subnet equal to or inside `subnet`."""
    base = f"{SUBNETS}{subnet.version}/"
    start = base + _address_hex(subnet.network_address)
    # "/" sorts before "0", so every key <hex of the last address>/<len> is below this end.
    end = base + _address_hex(subnet.broadcast_address) + "0"
    return start, end


def subnet_outer_keys(subnet: IPNetwork) -> list[str]:
    """Guard keys of every strictly larger subnet that could contain `subnet`."""
    shortest, _ = SUBNET_PREFIX_RANGE[subnet.version]
    return [subnet_key(subnet.supernet(new_prefix=p)) for p in range(shortest, subnet.prefixlen)]


def blocks_prefix(network: str) -> str:
    return f"{BLOCKS}{network}/"


def block_key(network: str, cidr: IPNetwork) -> str:
    return f"{blocks_prefix(network)}{cidr.network_address}-{cidr.prefixlen}"


def block_cidr_from_key(key: str) -> IPNetwork | None:
    """The block a `blocks/<network>/<addr>-<len>` key names (None if it names none)."""
    address, _, length = key.rpartition("/")[2].partition("-")
    try:
        return ipaddress.ip_network(f"{address}/{length}", strict=True)
    except ValueError:
        return None


def node_key(name: str) -> str:
    return NODES + name


# -- records -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Network:
    """A network as stored; build one from user input with `validate_network`."""

    name: str
    vni: int
    subnet: IPNetwork
    gateway: IPAddress
    mtu: int | None = None
    mode: str = "overlay"
    options: Mapping[str, str] = field(default_factory=dict)
    block_prefix: int = 26
    subnet6: ipaddress.IPv6Network | None = None
    ip_range: IPNetwork | None = None
    internal: bool = False

    @property
    def driver(self) -> str:
        """Docker's word for the mode: overlay, bridge, macvlan or ipvlan."""
        return self.mode

    @property
    def gateway6(self) -> ipaddress.IPv6Address | None:
        """The IPv6 gateway: the first address of `subnet6` (as Docker)."""
        return None if self.subnet6 is None else self.subnet6.network_address + 1

    def ipv6_view(self) -> Network:
        """The network as its IPv6 address pool sees it: `subnet6` as the subnet, its first
        address as the gateway, blocks of /122 (64 addresses, or the subnet if smaller), no
        ip-range. Its blocks live under the same `blocks/<name>/` prefix as the IPv4 ones
        (told apart by their address family), so they go with the network."""
        if self.subnet6 is None:
            raise ValueError(f"network {self.name} has no IPv6 subnet")
        gateway6 = self.subnet6.network_address + 1
        return Network(self.name, self.vni, self.subnet6, gateway6, self.mtu, self.mode,
                       self.options, max(BLOCK_PREFIX_DEFAULT[6], self.subnet6.prefixlen))

    @property
    def parent(self) -> str | None:
        """macvlan/ipvlan: the host interface (`eth0`, or `eth0.30` for VLAN 30)."""
        return self.options.get("parent")

    @property
    def encrypted(self) -> bool:
        """Whether the network asks for encryption (`--opt encrypted=true`: VXLAN inside
        WireGuard, see underlay.wireguard_peers)."""
        return self.options.get("encrypted") == "true"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "vni": self.vni,
            "subnet": str(self.subnet),
            "gateway": str(self.gateway),
            "mtu": self.mtu,
            "mode": self.mode,
            "options": dict(self.options),
            "block_prefix": self.block_prefix,
            "subnet6": None if self.subnet6 is None else str(self.subnet6),
            "ip_range": None if self.ip_range is None else str(self.ip_range),
            "internal": self.internal,
        }


def split_parent(parent: str) -> tuple[str, int | None]:
    """`eth0.30` -> ("eth0", 30); `eth0` -> ("eth0", None). Raises InvalidNetwork."""
    try:
        return split_vlan(parent)
    except ValueError as exc:
        raise InvalidNetwork("parent", parent, str(exc)) from None


def validate_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise InvalidNetwork(
            "name",
            name,
            "must be 1-63 characters of letters, digits, '_', '.', '-',"
            " starting with a letter or digit",
        )
    return name


def validate_vni(vni: object) -> int:
    if not vni_in_range(vni):
        raise InvalidNetwork("vni", vni, f"must be an integer in {VNI_MIN}..{VNI_MAX}")
    assert isinstance(vni, int)
    return vni


def validate_network(
    *,
    name: object,
    subnet: object,
    vni: object = None,
    gateway: object = None,
    mtu: object = None,
    mode: object = "overlay",
    options: object = None,
    block_prefix: object = None,
    subnet6: object = None,
    ip_range: object = None,
    internal: object = False,
) -> Network:
    """A `Network` from loosely typed input; `InvalidNetwork` names the first bad field.

    `vni=None` leaves the VNI to the store (0 in the result, allocated at create time).
    The host-dependent checks (the parent exists, the kernel has the driver) are the
    agent's, before it calls the store.
    """
    validate_name(name)
    assert isinstance(name, str)
    vni_value = 0 if vni is None else validate_vni(vni)
    if not isinstance(subnet, str):
        raise InvalidNetwork("subnet", subnet, "must be a CIDR string such as 10.1.0.0/16")
    try:
        net: IPNetwork = ipaddress.ip_network(subnet, strict=True)
    except ValueError as exc:
        raise InvalidNetwork("subnet", subnet, str(exc)) from None
    shortest, longest = SUBNET_PREFIX_RANGE[net.version]
    if not shortest <= net.prefixlen <= longest:
        raise InvalidNetwork(
            "subnet", subnet, f"IPv{net.version} prefix length must be {shortest}..{longest}"
        )
    if gateway is None:
        gw: IPAddress = net.network_address + 1
    else:
        if not isinstance(gateway, str):
            raise InvalidNetwork("gateway", gateway, "must be an address string")
        try:
            gw = ipaddress.ip_address(gateway)
        except ValueError as exc:
            raise InvalidNetwork("gateway", gateway, str(exc)) from None
        if gw.version != net.version or gw not in net:
            raise InvalidNetwork("gateway", gateway, f"must be inside subnet {net}")
        if gw == net.network_address or (net.version == 4 and gw == net.broadcast_address):
            raise InvalidNetwork("gateway", gateway, "must not be the network or broadcast address")
    if mtu is not None and (
        not isinstance(mtu, int) or isinstance(mtu, bool) or not MTU_MIN <= mtu <= MTU_MAX
    ):
        raise InvalidNetwork("mtu", mtu, f"must be an integer in {MTU_MIN}..{MTU_MAX}")
    if mode not in MODES:
        raise InvalidNetwork("mode", mode, f"must be one of {', '.join(MODES)}")
    assert isinstance(mode, str)
    opts = _validate_options(mode, {} if options is None else options)
    if "parent" in opts:
        split_parent(opts["parent"])
    net6 = _subnet6(subnet6)
    if net6 is not None and net.version == 6:
        raise InvalidNetwork("subnet6", subnet6, "the subnet is already IPv6; give an IPv4 "
                             "subnet with it, or none")
    range_net = _ip_range(ip_range, net)
    if not isinstance(internal, bool):
        raise InvalidNetwork("internal", internal, "must be true or false")
    if block_prefix is None:
        bp = max(BLOCK_PREFIX_DEFAULT[net.version], net.prefixlen)
        if range_net is not None:  # a small range still has a block for several hosts
            bp = min(max(bp, range_net.prefixlen + 2), BLOCK_PREFIX_RANGE[net.version][1])
    else:
        low, high = BLOCK_PREFIX_RANGE[net.version]
        if (
            not isinstance(block_prefix, int)
            or isinstance(block_prefix, bool)
            or not low <= block_prefix <= high
        ):
            raise InvalidNetwork(
                "block_prefix", block_prefix, f"must be an integer in {low}..{high}"
            )
        bp = max(block_prefix, net.prefixlen)
    return Network(name, vni_value, net, gw, mtu if isinstance(mtu, int) else None, mode, opts, bp,
                   net6, range_net, internal)


def _cidr(field_name: str, value: object) -> IPNetwork:
    if not isinstance(value, str):
        raise InvalidNetwork(field_name, value, "must be a CIDR string")
    try:
        return ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        raise InvalidNetwork(field_name, value, str(exc)) from None


def _subnet6(value: object) -> ipaddress.IPv6Network | None:
    if value is None:
        return None
    net = _cidr("subnet6", value)
    shortest, longest = SUBNET_PREFIX_RANGE[6]
    if not isinstance(net, ipaddress.IPv6Network) or not shortest <= net.prefixlen <= longest:
        raise InvalidNetwork("subnet6", value,
                             f"must be an IPv6 subnet with prefix length {shortest}..{longest}")
    return net


def _ip_range(value: object, subnet: IPNetwork) -> IPNetwork | None:
    """Docker's --ip-range: automatic addresses come from this part of the subnet."""
    if value is None:
        return None
    net = _cidr("ip_range", value)
    if net.version != subnet.version or not net.subnet_of(subnet):  # type: ignore[arg-type]
        raise InvalidNetwork("ip_range", value, f"must be inside subnet {subnet}")
    return net


def _validate_options(mode: str, options: object) -> dict[str, str]:
    if not isinstance(options, Mapping):
        raise InvalidNetwork("options", options, "must be a mapping of option to value")
    allowed = MODE_OPTIONS[mode]
    result: dict[str, str] = {}
    for key, value in options.items():
        if key == "parent" and key not in allowed:
            raise InvalidNetwork("parent", value, f"only macvlan and ipvlan networks have a "
                                 f"parent interface (driver is {mode})")
        if key not in allowed:
            known = ", ".join(allowed) or "none"
            raise InvalidNetwork(
                f"options.{key}", value, f"unknown for mode {mode} (known: {known})"
            )
        choices = allowed[key]
        if not isinstance(value, str) or not value:
            raise InvalidNetwork(f"options.{key}", value, "must be a non-empty string")
        if choices is not None and value not in choices:
            raise InvalidNetwork(f"options.{key}", value, f"must be one of {', '.join(choices)}")
        result[key] = value
    return result


@dataclass(frozen=True)
class Node:
    """A node's registry record: where its VTEP and its gossip listener are, and its Ed25519
    public key (32 bytes, b"" when it does not sign), the root of trust of its gossip claims;
    its WireGuard public key (32 bytes, b"" when it cannot encrypt)."""

    name: str
    vtep: IPAddress
    gossip: tuple[str, int]
    version: str
    public_key: bytes = b""
    wireguard_key: bytes = b""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "vtep": str(self.vtep),
            "gossip": [self.gossip[0], self.gossip[1]],
            "version": self.version,
        }
        if self.public_key:
            out["public_key"] = base64.b64encode(self.public_key).decode()
        if self.wireguard_key:
            out["wireguard_key"] = base64.b64encode(self.wireguard_key).decode()
        return out


@dataclass(frozen=True)
class Block:
    """An IPAM block as stored: which host holds it and what it has handed out."""

    network: str
    cidr: IPNetwork
    host: str
    allocations: Mapping[IPAddress, str]

    def to_json(self) -> dict[str, Any]:
        return {
            "network": self.network,
            "cidr": str(self.cidr),
            "host": self.host,
            "allocations": {str(a): h for a, h in sorted(self.allocations.items())},
        }


# -- encoding ------------------------------------------------------------------------------


def policy_key(name: str) -> str:
    return POLICIES + name


Peer = tuple[str, str] | IPNetwork


@dataclass(frozen=True)
class Policy:
    """A network policy (Kubernetes NetworkPolicy semantics): in `network`, the endpoints
    labelled `select` accept (ingress) or send (egress) only to the `allow` peers (labels or
    CIDRs), on `ports` (empty: every port); `log`: denied packets are logged as well as
    counted. Build one with `validate_policy`."""

    name: str
    network: str
    direction: str
    select: tuple[str, str]
    allow: tuple[Peer, ...]
    ports: tuple[tuple[int, str], ...] = ()
    log: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "network": self.network, "direction": self.direction,
                "select": list(self.select),
                "allow": [p if isinstance(p, tuple) else str(p) for p in self.allow],
                "ports": [list(p) for p in self.ports], "log": self.log}


def _policy_label(value: object, field_name: str) -> tuple[str, str]:
    try:
        (label,) = make_labels([value])
    except InvalidAttributes as exc:
        raise InvalidPolicy(field_name, value, str(exc).partition(": ")[2]) from None
    return label


def _policy_peer(value: object, field_name: str) -> Peer:
    if isinstance(value, str) and "=" not in value:
        try:
            return ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise InvalidPolicy(field_name, value, "must be LABEL=VALUE or a CIDR") from None
    return _policy_label(value, field_name)


def validate_policy(*, name: object, network: object, direction: object, select: object,
                    allow: object, ports: object = (), log: object = False) -> Policy:
    """A policy from a person's (or a stored) definition; InvalidPolicy naming the field."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise InvalidPolicy("name", name, "must be 1-63 characters of letters, digits, '_', "
                            "'.', '-', starting with a letter or digit")
    if not isinstance(network, str) or not _NAME_RE.match(network):
        raise InvalidPolicy("network", network, "is not a network name")
    if direction not in POLICY_DIRECTIONS:
        raise InvalidPolicy("direction", direction, "must be ingress or egress")
    if not isinstance(allow, list | tuple) or not 1 <= len(allow) <= MAX_POLICY_PEERS:
        raise InvalidPolicy("allow", allow, f"must be 1 to {MAX_POLICY_PEERS} peers")
    if not isinstance(log, bool):
        raise InvalidPolicy("log", log, "must be true or false")
    if not isinstance(ports, list | tuple) or len(ports) > MAX_POLICY_PORTS:
        raise InvalidPolicy("ports", ports, f"must be at most {MAX_POLICY_PORTS} PORT/PROTO")
    clean_ports: set[tuple[int, str]] = set()
    for index, port in enumerate(ports):
        try:
            clean_ports.update(make_attributes(ports=[port]).ports)
        except InvalidAttributes as exc:
            raise InvalidPolicy(f"ports[{index}]", port, str(exc).partition(": ")[2]) from None
    peers = tuple(dict.fromkeys(_policy_peer(p, f"allow[{i}]") for i, p in enumerate(allow)))
    return Policy(name, network, str(direction), _policy_label(select, "select"), peers,
                  tuple(sorted(clean_ports)), log)


def decode_policy(key: str, value: bytes) -> Policy:
    data = _load(key, value)
    try:
        policy = validate_policy(name=data.get("name"), network=data.get("network"),
                                 direction=data.get("direction"), select=data.get("select"),
                                 allow=data.get("allow"), ports=data.get("ports", []),
                                 log=data.get("log", False))
    except InvalidPolicy as exc:
        raise MalformedRecord(key, f"{exc}") from None
    if policy_key(policy.name) != key:
        raise MalformedRecord(key, "name does not match the key")
    return policy


def encode(record: Network | Node | Block | Policy) -> bytes:
    return json.dumps(record.to_json(), sort_keys=True, separators=(",", ":")).encode()


def _load(key: str, value: bytes) -> dict[str, Any]:
    try:
        data = json.loads(value.decode())
    except (UnicodeDecodeError, ValueError) as exc:
        raise MalformedRecord(key, f"not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise MalformedRecord(key, "not a JSON object")
    return data


def decode_network(key: str, value: bytes) -> Network:
    data = _load(key, value)
    try:
        network = validate_network(
            name=data.get("name"),
            subnet=data.get("subnet"),
            vni=data.get("vni"),
            gateway=data.get("gateway"),
            mtu=data.get("mtu"),
            mode=data.get("mode"),
            options=data.get("options"),
            block_prefix=data.get("block_prefix"),
            subnet6=data.get("subnet6"),
            ip_range=data.get("ip_range"),
            internal=data.get("internal", False),
        )
    except InvalidNetwork as exc:
        raise MalformedRecord(key, f"{exc}") from None
    if network.vni == 0 or network_key(network.name) != key:
        raise MalformedRecord(key, "name or vni does not match the key")
    return network


def decode_node(key: str, value: bytes) -> Node:
    data = _load(key, value)
    try:
        name = data["name"]
        vtep = ipaddress.ip_address(data["vtep"])
        host, port = data["gossip"]
        version = data["version"]
        public_key = base64.b64decode(data.get("public_key", ""), validate=True)
        wireguard_key = base64.b64decode(data.get("wireguard_key", ""), validate=True)
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise MalformedRecord(key, f"bad node record ({exc!r})") from None
    if (
        not isinstance(name, str)
        or node_key(name) != key
        or not isinstance(host, str)
        or not isinstance(port, int)
        or not 0 < port < 65536
        or not isinstance(version, str)
        or len(public_key) not in (0, 32)
        or len(wireguard_key) not in (0, 32)
    ):
        raise MalformedRecord(key, "bad node record")
    return Node(name, vtep, (host, port), version, public_key, wireguard_key)


def check_block(block: Block, network: Network, key: str) -> None:
    """`MalformedRecord` unless `block` is a block of `network`: its block size, inside its
    subnet (a wrong one would fail every allocation or hand out foreign addresses)."""
    cidr = block.cidr
    if cidr.version != network.subnet.version or not cidr.subnet_of(network.subnet):  # type: ignore[arg-type]
        raise MalformedRecord(key, f"block {cidr} is outside subnet {network.subnet}")
    if cidr.prefixlen != network.block_prefix:
        raise MalformedRecord(
            key, f"block {cidr} is not a /{network.block_prefix} block of network {network.name}"
        )


def decode_block(key: str, value: bytes) -> Block:
    data = _load(key, value)
    try:
        network = data["network"]
        cidr: IPNetwork = ipaddress.ip_network(data["cidr"])
        host = data["host"]
        raw = data["allocations"]
        allocations = {ipaddress.ip_address(a): h for a, h in raw.items()}
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise MalformedRecord(key, f"bad block record ({exc!r})") from None
    if (
        not isinstance(network, str)
        or not isinstance(host, str)
        or block_key(network, cidr) != key
        or any(a not in cidr or not isinstance(h, str) for a, h in allocations.items())
    ):
        raise MalformedRecord(key, "bad block record")
    return Block(network, cidr, host, allocations)
