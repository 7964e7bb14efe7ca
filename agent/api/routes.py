"""The control API: HTTP/1.1 + JSON on a unix socket (`/run/vxmesh/agent.sock`).

Owns: the routes, request validation (every bad field answered with 400 naming the field and
the value, nothing changed), the JSON form of an attachment, and the `Control` protocol the
agent implements (`agent.runtime.control.Control`). Errors are answered through the one
table, `agent.api.errors`. Usable with `curl --unix-socket /run/vxmesh/agent.sock
http://vxmesh/v1/status`.

Routes (all JSON; errors are {"error": {"status": N, "message": "..."}}):
  GET    /v1/status                 node, VTEP, readiness, sync and store state, counts
  GET    /v1/members                gossip members
  GET    /v1/networks               networks (from etcd, or the last copy while etcd is away)
  POST   /v1/networks               {"name", "subnet", "vni"?, "mtu"?, "driver"? (overlay,
                                     bridge, macvlan, ipvlan), "subnet6"?, "gateway"?,
                                     "ip_range"?, "parent"?, "ipvlan_mode"?, "internal"?,
                                     "options"? {K: V}}                              -> 201
  DELETE /v1/networks/NAME
  GET    /v1/policies               network policies (from etcd)
  POST   /v1/policies               {"name", "network", "select": "K=V", "allow": ["K=V"|CIDR],
                                     "ports"?: ["P/PROTO"], "direction"?: ingress|egress,
                                     "log"?: bool}                                   -> 201
  DELETE /v1/policies/NAME
  GET    /v1/endpoints              every endpoint known (local and remote)
  GET    /v1/endpoints/NAME         one local endpoint (with its namespace, for exec)
  POST   /v1/endpoints              {"name", "network" (overlay), "mode"?, "ip"?, "mac"?,
                                     "publish"? (bridge), "ports"? (host),
                                     "netns_path"? (an existing namespace), "ifname"?,
                                     "aliases"?, "labels"?}  -> 201, the attachment
  DELETE /v1/endpoints/NAME
  GET    /v1/keys                   {"primary": fingerprint, "keys": [fingerprint...],
                                     "encrypt", "identity": fingerprint}  (never key material)
  POST   /v1/keys/install|use|remove  {"key": b64}
  POST   /v1/wireguard/rotate       a new WireGuard key pair, overlapping the old one; answers
                                     {"public_key", "previous", "interface", "tunnel", "port"}
                                     once the new key is the current one (409: refused)
  GET    /v1/fdb[?network=NAME]     desired vs kernel entries
  GET    /v1/ports[?port=PORT/PROTO]  listening sockets: process and Docker container

May import: trio, agent.api (attach, errors, http), agent.state_files, agent.errors,
underlay.endpoints_model (modes, the port syntax), the standard library.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import trio

from agent.api.attach import Attachment, AttachRequest, ExistingNetns, NewNamespace, Sandbox
from agent.api.errors import DOMAIN_ERRORS, ApiError, InvalidRequest, NotFound, http_status
from agent.api.http import (
    Handler,
    HttpServerStatistics,
    Request,
    Response,
    bind_unix_listener,
    serve_http,
)
from agent.state_files import StateReadError, decode_key
from overlay.attributes import InvalidAttributes, make_attributes
from underlay.endpoints_model import (
    NETWORK_MODES,
    EndpointSpecError,
    Mode,
    PortClaim,
    parse_port_claim,
    parse_port_mapping,
)
from underlay.records import MTU_MAX, MTU_MIN, VNI_MAX, VNI_MIN, canonical_ip

T = TypeVar("T")
ENDPOINT_MODES = tuple(mode.value for mode in Mode)
NETWORK_DRIVERS = tuple(mode.value for mode in NETWORK_MODES)
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,30}$")


@dataclass(frozen=True)
class NetworkCreateRequest:
    """A validated network-create request."""

    name: str
    subnet: str | None = None
    vni: int | None = None
    mtu: int | None = None
    driver: str = "overlay"
    subnet6: str | None = None
    gateway: str | None = None
    ip_range: str | None = None
    internal: bool = False
    options: tuple[tuple[str, str], ...] = ()
    """Driver options (`--opt K=V`, `--parent`, `--ipvlan-mode`), checked by the schema."""


NETWORK_FIELDS = {"name", "subnet", "vni", "mtu", "driver", "subnet6", "gateway", "ip_range",
                  "internal", "options", "parent", "ipvlan_mode"}


class Control(Protocol):
    """What the API asks of the running agent (`agent.runtime.control.Control`)."""

    def status(self) -> dict[str, Any]: ...
    def members(self) -> list[dict[str, Any]]: ...
    async def networks(self) -> list[dict[str, Any]]: ...
    async def create_network(self, request: NetworkCreateRequest) -> dict[str, Any]: ...
    async def delete_network(self, name: str) -> None: ...
    async def policies(self) -> list[dict[str, Any]]: ...
    async def create_policy(self, body: dict[str, Any]) -> dict[str, Any]: ...
    async def delete_policy(self, name: str) -> None: ...
    def endpoints(self) -> list[dict[str, Any]]: ...
    def endpoint(self, name: str) -> Attachment: ...
    async def attach(self, request: AttachRequest) -> Attachment: ...
    async def detach(self, name: str) -> bool: ...
    def keys(self) -> dict[str, Any]: ...
    async def change_key(self, action: str, key: bytes) -> dict[str, Any]: ...
    async def rotate_wireguard(self) -> dict[str, Any]: ...
    async def fdb(self, network: str | None) -> dict[str, Any]: ...
    async def ports(self, claim: PortClaim | None) -> list[dict[str, Any]]: ...
    async def leave(self) -> dict[str, Any]: ...


# -- request validation (pure) ----------------------------------------------------------------

def _field(body: Mapping[str, Any], name: str, *, required: bool = False) -> Any:
    if name not in body or body[name] is None:
        if required:
            raise InvalidRequest(f"{name}: required")
        return None
    return body[name]


def validate_name(value: Any, field_name: str = "name") -> str:
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
        raise InvalidRequest(f"{field_name}: {value!r} is not a name (lower-case letters, digits, "
                             "'-', '_', '.', 1-31 characters, starting with a letter or digit)")
    return value


def _int_in(value: Any, field_name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidRequest(f"{field_name}: {value!r} is not an integer in {low}-{high}")
    return value


def _ports(values: list[Any], field_name: str, parse: Callable[..., T]) -> tuple[T, ...]:
    """Port texts through the endpoint model's own parser; a bad one is a 400 naming it."""
    out = []
    for text in values:
        if not isinstance(text, str):
            raise InvalidRequest(f"{field_name}: {text!r} is not a string")
        try:
            out.append(parse(text, field_name=field_name))
        except EndpointSpecError as exc:
            raise InvalidRequest(str(exc)) from None
    return tuple(out)


def parse_network_request(body: Mapping[str, Any]) -> NetworkCreateRequest:
    refuse_unknown(body, NETWORK_FIELDS)
    name = validate_name(_field(body, "name", required=True))
    subnet = _field(body, "subnet")
    if subnet is not None:
        try:
            net = ipaddress.ip_network(subnet, strict=True)
        except (TypeError, ValueError) as exc:
            raise InvalidRequest(f"subnet: {subnet!r} is not a CIDR network ({exc})") from None
        if net.num_addresses < 4:
            raise InvalidRequest(f"subnet: {subnet!r} is too small (need at least a /30)")
    vni = _field(body, "vni")
    mtu = _field(body, "mtu")
    driver = _optional_str(body, "driver") or "overlay"
    if driver not in NETWORK_DRIVERS:
        raise InvalidRequest(f"driver: {driver!r} is not one of {', '.join(NETWORK_DRIVERS)}")
    internal = _field(body, "internal") or False
    if not isinstance(internal, bool):
        raise InvalidRequest(f"internal: {internal!r} is not true or false")
    options = _labels(body, "options")
    for key in ("parent", "ipvlan_mode"):  # the CLI's own flags for two driver options
        value = _optional_str(body, key)
        if value is not None:
            options[key] = value
    return NetworkCreateRequest(
        name=name, subnet=subnet,
        vni=_int_in(vni, "vni", VNI_MIN, VNI_MAX) if vni is not None else None,
        mtu=_int_in(mtu, "mtu", MTU_MIN, MTU_MAX) if mtu is not None else None,
        driver=driver, subnet6=_optional_str(body, "subnet6"),
        gateway=_optional_str(body, "gateway"), ip_range=_optional_str(body, "ip_range"),
        internal=internal, options=tuple(sorted(options.items())),
    )


ATTACH_FIELDS = {"name", "network", "mode", "ip", "ip6", "mac", "publish", "ports", "netns_path",
                 "ifname", "aliases", "labels", "services"}


def parse_attach_request(body: Mapping[str, Any]) -> AttachRequest:
    """POST /v1/endpoints to the attach operation's request (a 400 naming any bad field)."""
    refuse_unknown(body, ATTACH_FIELDS)
    name = validate_name(_field(body, "name", required=True))
    mode = _field(body, "mode") or "overlay"
    if mode not in ENDPOINT_MODES:
        raise InvalidRequest(f"mode: {mode!r} is not one of {', '.join(ENDPOINT_MODES)}")
    network_raw = _field(body, "network", required=mode == "overlay")
    network = validate_name(network_raw, "network") if network_raw is not None else ""
    ip = _optional_ip(body, "ip")
    ip6 = _optional_ip(body, "ip6")
    if ip6 is not None and ":" not in ip6:
        raise InvalidRequest(f"ip6: {ip6!r} is not an IPv6 address")
    publish = _list(body, "publish")
    ports = _list(body, "ports")
    if publish and mode not in ("bridge", "overlay"):  # overlay: the network's driver decides
        raise InvalidRequest(f"publish: only bridge endpoints publish ports (mode is {mode!r})")
    if ports and mode != "host":
        raise InvalidRequest(f"ports: only host endpoints claim host ports (mode is {mode!r})")
    try:  # the same rules as for names arriving from peers (overlay.attributes)
        names = make_attributes("", _strings(body, "aliases"), _list(body, "services"),
                                sorted(_labels(body).items()))
    except InvalidAttributes as exc:
        raise InvalidRequest(str(exc)) from None
    return AttachRequest(
        name=name, network=network, mode=Mode(mode), ip=ip, ip6=ip6,
        mac=_optional_str(body, "mac"), sandbox=_sandbox(body),
        ifname=_optional_str(body, "ifname") or AttachRequest.ifname,
        publish=_ports(publish, "publish", parse_port_mapping),
        ports=_ports(ports, "ports", parse_port_claim),
        aliases=names.aliases, services=names.ports,
        labels=names.labels,
    )


def _optional_str(body: Mapping[str, Any], name: str) -> str | None:
    value = _field(body, name)
    if value is not None and not isinstance(value, str):
        raise InvalidRequest(f"{name}: {value!r} is not a string")
    return value


def _optional_ip(body: Mapping[str, Any], name: str) -> str | None:
    """Field `name` as a canonical IP address, if given."""
    value = _optional_str(body, name)
    if value is None:
        return None
    try:
        return canonical_ip(value)
    except ValueError:
        raise InvalidRequest(f"{name}: {value!r} is not an IP address") from None


def _sandbox(body: Mapping[str, Any]) -> Sandbox:
    path = _optional_str(body, "netns_path")
    if path is None:
        return NewNamespace()
    if not path.startswith("/"):
        raise InvalidRequest(f"netns_path: {path!r} is not an absolute path")
    return ExistingNetns(path)


def _strings(body: Mapping[str, Any], name: str) -> list[str]:
    values = _list(body, name)
    for value in values:
        if not isinstance(value, str):
            raise InvalidRequest(f"{name}: {value!r} is not a string")
    return values


def _labels(body: Mapping[str, Any], name: str = "labels") -> dict[str, str]:
    value = _field(body, name)
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                              for k, v in value.items()):
        raise InvalidRequest(f"{name}: {value!r} is not an object of strings")
    return dict(value)


def attachment_json(attachment: Attachment) -> dict[str, Any]:
    """The API's JSON form of an attachment (what `vxmesh endpoint create --json` prints)."""
    return {"name": attachment.name, "network": attachment.network,
            "mode": attachment.mode.value, "ip": attachment.ip,
            "addresses": list(attachment.addresses), "mac": attachment.mac,
            "mtu": attachment.mtu, "netns": attachment.netns, "sandbox": attachment.sandbox,
            "ifname": attachment.ifname, "host_ifname": attachment.host_ifname,
            "handed_back": attachment.handed_back, "bridge": attachment.bridge,
            "gateway": attachment.gateway, "gateway6": attachment.gateway6,
            "routes": [{"dst": r.destination, "gw": r.gateway} for r in attachment.routes],
            "state": attachment.state, "node": attachment.node,
            "publish": [str(m) for m in attachment.publish],
            "ports": [str(c) for c in attachment.ports],
            "aliases": list(attachment.aliases), "labels": dict(attachment.labels),
            "dns": ({"nameservers": list(attachment.nameservers),
                     "search": list(attachment.search)} if attachment.nameservers else None)}


def parse_key(body: Mapping[str, Any]) -> bytes:
    refuse_unknown(body, {"key"})
    text = _field(body, "key", required=True)
    try:
        return decode_key(text, "key")
    except StateReadError as exc:
        raise InvalidRequest(str(exc)) from None


def _list(body: Mapping[str, Any], name: str) -> list[Any]:
    value = _field(body, name)
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidRequest(f"{name}: {value!r} is not a list")
    return value


def refuse_unknown(body: Mapping[str, Any], known: set[str]) -> None:
    extra = sorted(set(body) - known)
    if extra:
        raise InvalidRequest(f"{extra[0]}: unknown field (known: {', '.join(sorted(known))})")


def json_body(request: Request) -> dict[str, Any]:
    if not request.body:
        return {}
    try:
        value = json.loads(request.body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequest(f"body: not JSON ({exc})") from None
    except (ValueError, RecursionError):  # a number of too many digits, nesting too deep
        raise InvalidRequest("body: JSON nested too deeply or with a number too large") \
            from None
    if not isinstance(value, dict):
        raise InvalidRequest(f"body: expected a JSON object, got {type(value).__name__}")
    return value


# -- routing ----------------------------------------------------------------------------------

Route = Callable[[Control, Request, str], Awaitable[Response]]
# A front door's routes on this socket (CNI's): they take the control object the process
# hands them, whose protocol the front door declares and the process checks.
ExtraRoute = Callable[[Any, Request, str], Awaitable[Response]]


async def _status(control: Control, request: Request, arg: str) -> Response:
    return Response.json(200, control.status())


async def _members(control: Control, request: Request, arg: str) -> Response:
    return Response.json(200, control.members())


async def _leave(control: Control, request: Request, arg: str) -> Response:
    return Response.json(200, await control.leave())


async def _networks(control: Control, request: Request, arg: str) -> Response:
    return Response.json(200, await control.networks())


async def _network_create(control: Control, request: Request, arg: str) -> Response:
    network = parse_network_request(json_body(request))
    return Response.json(201, await control.create_network(network))


async def _network_delete(control: Control, request: Request, arg: str) -> Response:
    await control.delete_network(validate_name(arg))
    return Response.json(200, {"deleted": arg})


POLICY_FIELDS = {"name", "network", "select", "allow", "ports", "direction", "log"}


async def _policies(control: Control, request: Request, arg: str) -> Response:
    return Response.json(200, await control.policies())


async def _policy_create(control: Control, request: Request, arg: str) -> Response:
    body = json_body(request)
    refuse_unknown(body, POLICY_FIELDS)
    return Response.json(201, await control.create_policy(body))


async def _policy_delete(control: Control, request: Request, arg: str) -> Response:
    await control.delete_policy(validate_name(arg))
    return Response.json(200, {"deleted": arg})


async def _endpoints(control: Control, request: Request, arg: str) -> Response:
    return Response.json(200, control.endpoints())


async def _endpoint_get(control: Control, request: Request, arg: str) -> Response:
    return Response.json(200, attachment_json(control.endpoint(validate_name(arg))))


async def _endpoint_create(control: Control, request: Request, arg: str) -> Response:
    attach = parse_attach_request(json_body(request))
    return Response.json(201, attachment_json(await control.attach(attach)))


async def _endpoint_delete(control: Control, request: Request, arg: str) -> Response:
    if not await control.detach(validate_name(arg)):
        raise NotFound(f"no endpoint {arg!r} on this host")
    return Response.json(200, {"deleted": arg})


async def _keys(control: Control, request: Request, arg: str) -> Response:
    return Response.json(200, control.keys())


async def _key_change(control: Control, request: Request, arg: str) -> Response:
    if arg not in ("install", "use", "remove"):
        raise NotFound(f"no key action {arg!r} (install, use, remove)")
    return Response.json(200, await control.change_key(arg, parse_key(json_body(request))))


async def _wireguard_rotate(control: Control, request: Request, arg: str) -> Response:
    return Response.json(200, await control.rotate_wireguard())


async def _fdb(control: Control, request: Request, arg: str) -> Response:
    network = request.query.get("network")
    if network is not None:
        validate_name(network, "network")
    return Response.json(200, await control.fdb(network))


async def _ports_listed(control: Control, request: Request, arg: str) -> Response:
    text = request.query.get("port")
    claim = _ports([text], "port", parse_port_claim)[0] if text is not None else None
    return Response.json(200, await control.ports(claim))


ROUTES: dict[tuple[str, str], Route] = {
    ("GET", "/v1/status"): _status,
    ("GET", "/v1/members"): _members,
    ("POST", "/v1/leave"): _leave,
    ("GET", "/v1/networks"): _networks,
    ("POST", "/v1/networks"): _network_create,
    ("DELETE", "/v1/networks/*"): _network_delete,
    ("GET", "/v1/policies"): _policies,
    ("POST", "/v1/policies"): _policy_create,
    ("DELETE", "/v1/policies/*"): _policy_delete,
    ("GET", "/v1/endpoints"): _endpoints,
    ("GET", "/v1/endpoints/*"): _endpoint_get,
    ("POST", "/v1/endpoints"): _endpoint_create,
    ("DELETE", "/v1/endpoints/*"): _endpoint_delete,
    ("GET", "/v1/keys"): _keys,
    ("POST", "/v1/keys/*"): _key_change,
    ("POST", "/v1/wireguard/rotate"): _wireguard_rotate,
    ("GET", "/v1/fdb"): _fdb,
    ("GET", "/v1/ports"): _ports_listed,
}


def _resolve(method: str, path: str, routes: Mapping[tuple[str, str], ExtraRoute]
             ) -> tuple[ExtraRoute, str]:
    path = path.rstrip("/") or "/"
    head, _, tail = path.rpartition("/")
    candidates = [((method, path), ""), ((method, f"{head}/*"), tail)]
    for key, arg in candidates:
        if key in routes:
            return routes[key], arg
    allowed = sorted({m for (m, p) in routes if p in (path, f"{head}/*")})
    if allowed:
        raise ApiError(f"{method} not allowed on {path} (allowed: {', '.join(allowed)})", 405)
    raise NotFound(f"no such path {path!r}")


def make_handler(control: Control,
                 extra_routes: Mapping[tuple[str, str], ExtraRoute] | None = None) -> Handler:
    """The request handler: route, validate, call `control`, map errors to statuses."""
    routes: dict[tuple[str, str], ExtraRoute] = {**ROUTES, **(extra_routes or {})}

    async def handle(request: Request) -> Response:
        try:
            route, arg = _resolve(request.method, request.path, routes)
            return await route(control, request, arg)
        except DOMAIN_ERRORS as exc:
            return Response.error(http_status(exc), str(exc))

    return handle


async def serve_api(control: Control, socket_path: Path, *, mode: int = 0o660, group: str = "",
                    stats: HttpServerStatistics | None = None,
                    extra_routes: Mapping[tuple[str, str], ExtraRoute] | None = None,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the control API on `socket_path` until cancelled; removes the socket on exit."""
    listener = await bind_unix_listener(socket_path, mode=mode, group=group)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_http, [listener], make_handler(control, extra_routes),
                                stats)
            task_status.started()
    finally:
        socket_path.unlink(missing_ok=True)
