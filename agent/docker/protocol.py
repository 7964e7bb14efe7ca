"""Docker's plugin API v1 for a network driver and an IPAM driver: requests and answers, no I/O.

Owns: the JSON shapes of libnetwork's remote driver (`NetworkDriver.*`) and remote IPAM driver
(`IpamDriver.*`) calls, as Docker 20.10 sends them: parsing each request body into a frozen
dataclass (every field checked: a bad or missing value raises `InvalidRequest` naming the field
and the value), the answers to the calls that need no state (`Plugin.Activate`,
`NetworkDriver.GetCapabilities`, `IpamDriver.GetCapabilities`,
`IpamDriver.GetDefaultAddressSpaces`), the answer bodies of the others, and the pool id rule.

Rules:
- Pure: no socket, clock, trio or kernel; the plugin shell (agent.docker.plugin) does I/O.
- Docker sends `null` (or nothing) for empty maps and lists, and empty strings for absent
  values: both mean "not given".
- A pool id is `vxmesh/<subnet>` (`vxmesh/10.10.0.0/16`): Docker asks for the same pool again
  after a restart and gets the same id, so no pool table is kept.
- Scope `local` (each daemon keeps its own network object: the agent mirrors vxmesh networks
  into it), connectivity scope `global` (its endpoints reach every host).

May import: agent.api.errors (the one error table's kinds), the standard library.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.api.errors import InvalidRequest
from underlay.records import canonical_mac

ADDRESS_SPACE = "vxmesh"
POOL_PREFIX = f"{ADDRESS_SPACE}/"
GATEWAY_REQUEST = "com.docker.network.gateway"
MAC_OPTION = "com.docker.network.endpoint.macaddress"
GENERIC_OPTIONS = "com.docker.network.generic"
PORT_MAP_OPTION = "com.docker.network.portmap"
EXPOSED_PORTS_OPTION = "com.docker.network.endpoint.exposedports"
CONTENT_TYPE = "application/vnd.docker.plugins.v1.2+json"
DOCKER_ID = re.compile(r"^[0-9a-f]{64}$")
INTERFACE_PREFIX = "eth"

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

ACTIVATE = {"Implements": ["NetworkDriver", "IpamDriver"]}
NETWORK_CAPABILITIES = {"Scope": "local", "ConnectivityScope": "global"}
IPAM_CAPABILITIES = {"RequiresMACAddress": False, "RequiresRequestReplay": False}
DEFAULT_ADDRESS_SPACES = {"LocalDefaultAddressSpace": ADDRESS_SPACE,
                          "GlobalDefaultAddressSpace": ADDRESS_SPACE}


# -- requests ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class PoolRequest:
    """`IpamDriver.RequestPool`: `docker network create --subnet POOL [--ip-range SUB_POOL]`."""

    address_space: str
    pool: IPNetwork | None
    sub_pool: IPNetwork | None
    options: Mapping[str, str]
    v6: bool


@dataclass(frozen=True)
class PoolRelease:
    """`IpamDriver.ReleasePool`."""

    pool: IPNetwork


@dataclass(frozen=True)
class AddressRequest:
    """`IpamDriver.RequestAddress`: a container's address (`--ip` when `address` is given) or,
    with `gateway`, the network's gateway at network creation (`--gateway` when given)."""

    pool: IPNetwork
    address: IPAddress | None
    gateway: bool
    mac: str | None
    options: Mapping[str, str]


@dataclass(frozen=True)
class AddressRelease:
    """`IpamDriver.ReleaseAddress`."""

    pool: IPNetwork
    address: IPAddress


@dataclass(frozen=True)
class IpamData:
    """One entry of `IPv4Data` / `IPv6Data` in `NetworkDriver.CreateNetwork`."""

    address_space: str
    pool: IPNetwork
    gateway: IPInterface | None
    aux_addresses: Mapping[str, IPInterface]


@dataclass(frozen=True)
class NetworkCreate:
    """`NetworkDriver.CreateNetwork`: the network's id (not its name), pools and `-o` options."""

    network_id: str
    ipv4: tuple[IpamData, ...]
    ipv6: tuple[IpamData, ...]
    driver_options: Mapping[str, str]
    enable_ipv6: bool


@dataclass(frozen=True)
class NetworkRef:
    """`NetworkDriver.DeleteNetwork`."""

    network_id: str


@dataclass(frozen=True)
class PortBinding:
    """One `-p` mapping of `com.docker.network.portmap` (protocol number 6 tcp, 17 udp)."""

    proto: str
    port: int
    host_ip: str
    host_port: int
    host_port_end: int


@dataclass(frozen=True)
class EndpointCreate:
    """`NetworkDriver.CreateEndpoint`: the address Docker's IPAM call handed out, the MAC the
    user chose (`--mac-address`) or none, the published ports."""

    network_id: str
    endpoint_id: str
    address: IPInterface | None
    address_v6: IPInterface | None
    mac: str | None
    port_map: tuple[PortBinding, ...] = ()


@dataclass(frozen=True)
class EndpointRef:
    """The calls that name only an endpoint: EndpointOperInfo, DeleteEndpoint, Leave,
    RevokeExternalConnectivity."""

    network_id: str
    endpoint_id: str


@dataclass(frozen=True)
class JoinRequest:
    """`NetworkDriver.Join`: put the endpoint into the sandbox (a netns path Docker made)."""

    network_id: str
    endpoint_id: str
    sandbox_key: str
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ExternalConnectivity:
    """`NetworkDriver.ProgramExternalConnectivity`."""

    network_id: str
    endpoint_id: str
    port_map: tuple[PortBinding, ...]


# -- answers ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class StaticRoute:
    """A route Docker adds in the sandbox after moving the interface in."""

    destination: str
    next_hop: str | None  # None: a connected route (RouteType 1)


@dataclass(frozen=True)
class JoinAnswer:
    """The host-side name of the interface Docker moves into the sandbox (renamed `eth<N>`),
    the gateway (None: Docker adds its `docker_gwbridge` for egress) and extra routes."""

    interface: str
    gateway: str | None = None
    routes: tuple[StaticRoute, ...] = ()


def pool_id(pool: IPNetwork) -> str:
    return f"{POOL_PREFIX}{pool}"


def pool_answer(pool: IPNetwork) -> dict[str, Any]:
    return {"PoolID": pool_id(pool), "Pool": str(pool), "Data": {}}


def address_answer(address: IPAddress, pool: IPNetwork) -> dict[str, Any]:
    return {"Address": f"{address}/{pool.prefixlen}", "Data": {}}


def endpoint_answer(mac: str | None) -> dict[str, Any]:
    """CreateEndpoint's answer: only what Docker did not give (here: the MAC we chose)."""
    return {"Interface": {"MacAddress": mac} if mac else {}}


def join_answer(answer: JoinAnswer) -> dict[str, Any]:
    body: dict[str, Any] = {"InterfaceName": {"SrcName": answer.interface,
                                              "DstPrefix": INTERFACE_PREFIX}}
    if answer.gateway:
        body["Gateway"] = answer.gateway
    if answer.routes:
        body["StaticRoutes"] = [
            {"Destination": r.destination, "RouteType": 0 if r.next_hop else 1,
             **({"NextHop": r.next_hop} if r.next_hop else {})} for r in answer.routes]
    return body


def error_answer(message: str) -> dict[str, str]:
    return {"Err": message}


# -- parsing ----------------------------------------------------------------------------------

def _object(body: Any, what: str) -> Mapping[str, Any]:
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise InvalidRequest(f"{what}: body must be a JSON object, got {type(body).__name__}")
    return body


def _text(body: Mapping[str, Any], name: str, *, required: bool = False,
          where: str = "") -> str:
    label = f"{where}.{name}" if where else name
    value = body.get(name)
    if value is None or value == "":
        if required:
            raise InvalidRequest(f"{label}: required")
        return ""
    if not isinstance(value, str):
        raise InvalidRequest(f"{label}: {value!r} is not a string")
    return value


def _docker_id(body: Mapping[str, Any], name: str) -> str:
    value = _text(body, name, required=True)
    if not DOCKER_ID.match(value):
        raise InvalidRequest(f"{name}: {value!r} is not a Docker id (64 hex digits)")
    return value


def _bool(body: Mapping[str, Any], name: str) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidRequest(f"{name}: {value!r} is not true or false")
    return value


def _map(body: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = body.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest(f"{name}: {value!r} is not a JSON object")
    return value


def _string_map(body: Mapping[str, Any], name: str) -> dict[str, str]:
    out = {}
    for key, value in _map(body, name).items():
        if not isinstance(value, str):
            raise InvalidRequest(f"{name}.{key}: {value!r} is not a string")
        out[key] = value
    return out


def _list(body: Mapping[str, Any], name: str) -> list[Any]:
    value = body.get(name)
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidRequest(f"{name}: {value!r} is not a list")
    return value


def _network(text: str, name: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError:
        raise InvalidRequest(f"{name}: {text!r} is not a CIDR network (like 10.10.0.0/16)") \
            from None


def _address(text: str, name: str) -> IPAddress:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise InvalidRequest(f"{name}: {text!r} is not an IP address") from None


def _interface(text: str, name: str) -> IPInterface:
    if "/" not in text:
        raise InvalidRequest(f"{name}: {text!r} is not an address with a prefix length "
                             "(like 10.10.0.5/16)")
    try:
        return ipaddress.ip_interface(text)
    except ValueError:
        raise InvalidRequest(f"{name}: {text!r} is not an address with a prefix length "
                             "(like 10.10.0.5/16)") from None


def _mac(text: str, name: str) -> str | None:
    if not text:
        return None
    try:
        return canonical_mac(text)
    except ValueError:
        raise InvalidRequest(f"{name}: {text!r} is not a MAC address (like 02:42:0a:0a:00:05)"
                             ) from None


def parse_pool_id(text: str, name: str = "PoolID") -> IPNetwork:
    """The subnet a pool id names; `InvalidRequest` for an id this driver never handed out."""
    if not text.startswith(POOL_PREFIX):
        raise InvalidRequest(f"{name}: {text!r} is not a vxmesh pool id (like "
                             f"{POOL_PREFIX}10.10.0.0/16)")
    return _network(text[len(POOL_PREFIX):], name)


def parse_request_pool(raw: Any) -> PoolRequest:
    body = _object(raw, "RequestPool")
    space = _text(body, "AddressSpace") or ADDRESS_SPACE
    if space != ADDRESS_SPACE:
        raise InvalidRequest(f"AddressSpace: {space!r} is not {ADDRESS_SPACE!r} (the one "
                             "address space of this driver)")
    pool_text = _text(body, "Pool")
    sub_text = _text(body, "SubPool")
    v6 = _bool(body, "V6")
    if not pool_text:
        if sub_text:
            raise InvalidRequest(f"SubPool: {sub_text!r} given without a Pool")
        raise InvalidRequest("Pool: required: vxmesh networks need a subnet "
                             "(docker network create --subnet 10.10.0.0/16 ...)")
    pool = _network(pool_text, "Pool")
    sub_pool = _network(sub_text, "SubPool") if sub_text else None
    if sub_pool is not None:
        raise InvalidRequest(f"SubPool: {sub_text!r}: --ip-range is not supported (vxmesh hands "
                             f"out addresses from the whole subnet {pool})")
    if v6 and pool.version != 6:
        raise InvalidRequest(f"V6: true but Pool {pool_text!r} is IPv4")
    return PoolRequest(space, pool, sub_pool, _string_map(body, "Options"), v6)


def parse_release_pool(raw: Any) -> PoolRelease:
    body = _object(raw, "ReleasePool")
    return PoolRelease(parse_pool_id(_text(body, "PoolID", required=True)))


def parse_request_address(raw: Any) -> AddressRequest:
    body = _object(raw, "RequestAddress")
    pool = parse_pool_id(_text(body, "PoolID", required=True))
    options = _string_map(body, "Options")
    address_text = _text(body, "Address")
    address = _address(address_text, "Address") if address_text else None
    if address is not None and address not in pool:
        raise InvalidRequest(f"Address: {address_text!r} is outside the pool {pool}")
    kind = options.get("RequestAddressType", "")
    if kind and kind != GATEWAY_REQUEST:
        raise InvalidRequest(f"Options.RequestAddressType: {kind!r} is not {GATEWAY_REQUEST!r}")
    mac = _mac(options.get(MAC_OPTION, ""), f"Options.{MAC_OPTION}")
    return AddressRequest(pool, address, kind == GATEWAY_REQUEST, mac, options)


def parse_release_address(raw: Any) -> AddressRelease:
    body = _object(raw, "ReleaseAddress")
    pool = parse_pool_id(_text(body, "PoolID", required=True))
    return AddressRelease(pool, _address(_text(body, "Address", required=True), "Address"))


def _ipam_data(raw: Any, name: str) -> IpamData:
    if not isinstance(raw, dict):
        raise InvalidRequest(f"{name}: {raw!r} is not a JSON object")
    pool = _network(_text(raw, "Pool", required=True, where=name), f"{name}.Pool")
    gateway_text = _text(raw, "Gateway", where=name)
    gateway = _interface(gateway_text, f"{name}.Gateway") if gateway_text else None
    aux = {key: _interface(value, f"{name}.AuxAddresses.{key}")
           for key, value in _string_map(raw, "AuxAddresses").items()}
    return IpamData(_text(raw, "AddressSpace", where=name), pool, gateway, aux)


def parse_create_network(raw: Any) -> NetworkCreate:
    body = _object(raw, "CreateNetwork")
    network_id = _docker_id(body, "NetworkID")
    options = _map(body, "Options")
    generic = options.get(GENERIC_OPTIONS)
    if generic is None:
        generic = {}
    if not isinstance(generic, dict) or not all(isinstance(v, str) for v in generic.values()):
        raise InvalidRequest(f"Options.{GENERIC_OPTIONS}: {generic!r} is not a map of strings")
    ipv6 = options.get("com.docker.network.enable_ipv6", False)
    if not isinstance(ipv6, bool):
        raise InvalidRequest(f"Options.com.docker.network.enable_ipv6: {ipv6!r} is not "
                             "true or false")
    v4 = tuple(_ipam_data(d, f"IPv4Data[{i}]") for i, d in enumerate(_list(body, "IPv4Data")))
    v6 = tuple(_ipam_data(d, f"IPv6Data[{i}]") for i, d in enumerate(_list(body, "IPv6Data")))
    return NetworkCreate(network_id, v4, v6, dict(generic), ipv6)


def parse_network_ref(raw: Any, call: str = "DeleteNetwork") -> NetworkRef:
    return NetworkRef(_docker_id(_object(raw, call), "NetworkID"))


def _port_map(options: Mapping[str, Any], name: str) -> tuple[PortBinding, ...]:
    raw = options.get(PORT_MAP_OPTION)
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise InvalidRequest(f"{name}.{PORT_MAP_OPTION}: {raw!r} is not a list")
    out = []
    for index, item in enumerate(raw):
        where = f"{name}.{PORT_MAP_OPTION}[{index}]"
        if not isinstance(item, dict):
            raise InvalidRequest(f"{where}: {item!r} is not a JSON object")
        proto = {6: "tcp", 17: "udp", 132: "sctp"}.get(item.get("Proto", 6))
        if proto is None:
            raise InvalidRequest(f"{where}.Proto: {item.get('Proto')!r} is not 6, 17 or 132")
        numbers = []
        for key in ("Port", "HostPort", "HostPortEnd"):
            value = item.get(key, 0)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
                raise InvalidRequest(f"{where}.{key}: {value!r} is not a port number")
            numbers.append(value)
        host_ip = item.get("HostIP") or ""
        if not isinstance(host_ip, str):
            raise InvalidRequest(f"{where}.HostIP: {host_ip!r} is not a string")
        out.append(PortBinding(proto, numbers[0], host_ip, numbers[1], numbers[2]))
    return tuple(out)


def parse_create_endpoint(raw: Any) -> EndpointCreate:
    body = _object(raw, "CreateEndpoint")
    network_id = _docker_id(body, "NetworkID")
    endpoint_id = _docker_id(body, "EndpointID")
    interface = _map(body, "Interface")
    address_text = _text(interface, "Address", where="Interface")
    v6_text = _text(interface, "AddressIPv6", where="Interface")
    options = _map(body, "Options")
    return EndpointCreate(
        network_id, endpoint_id,
        _interface(address_text, "Interface.Address") if address_text else None,
        _interface(v6_text, "Interface.AddressIPv6") if v6_text else None,
        _mac(_text(interface, "MacAddress", where="Interface"), "Interface.MacAddress"),
        _port_map(options, "Options"))


def parse_endpoint_ref(raw: Any, call: str) -> EndpointRef:
    body = _object(raw, call)
    return EndpointRef(_docker_id(body, "NetworkID"), _docker_id(body, "EndpointID"))


def parse_join(raw: Any) -> JoinRequest:
    body = _object(raw, "Join")
    network_id = _docker_id(body, "NetworkID")
    endpoint_id = _docker_id(body, "EndpointID")
    sandbox = _text(body, "SandboxKey", required=True)
    if not sandbox.startswith("/"):
        raise InvalidRequest(f"SandboxKey: {sandbox!r} is not an absolute path")
    return JoinRequest(network_id, endpoint_id, sandbox, dict(_map(body, "Options")))


def parse_external_connectivity(raw: Any) -> ExternalConnectivity:
    body = _object(raw, "ProgramExternalConnectivity")
    options = _map(body, "Options")
    return ExternalConnectivity(_docker_id(body, "NetworkID"), _docker_id(body, "EndpointID"),
                                _port_map(options, "Options"))
