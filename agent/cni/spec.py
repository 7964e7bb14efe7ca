"""The CNI protocol as data: versions, the invocation (environment + stdin), results, errors.

Owns: what the CNI specification (1.1.0, and the older versions a runtime may ask for: 0.3.0,
0.3.1, 0.4.0, 1.0.0) says a plugin reads and writes, with nothing vxmesh-specific in the
decisions: parsing and validating `CNI_*` variables and the network configuration on stdin,
the result in the shape of the requested version, the error object and its codes, the
VERSION answer, reading a `prevResult`.

Rules:
- Pure and standard library only (the plugin must start fast; no trio, pyroute2 or grpc;
  even `ipaddress` is imported only where an address must be parsed, and the value types
  are `Value`s because `dataclasses` and `typing` cost ~10 ms of imports at every start).
- Every refusal is a `CniError` whose message names the variable or field and its value;
  nothing is decided from half-read input (validation ends before any request is sent).
- A result holds exactly the keys its version defines: `version` on IPs before 1.0.0,
  `mtu` on interfaces from 1.1.0; empty lists are left out, as the reference library does.

May import: the standard library only.
"""

from __future__ import annotations

from agent.cni import fastjson

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST = "1.1.0"

# Error codes of the specification (section 5) ...
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENVIRONMENT = 4
IO_FAILURE = 5
DECODING_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
NOT_AVAILABLE = 50
NOT_AVAILABLE_LIMITED = 51
# ... and vxmesh's own (100+).
AGENT_FAILED = 100
NETWORK_UNKNOWN = 101
CONFLICT = 102
DRIFT = 103
AGENT_PROTOCOL = 104

ERROR_MESSAGES = {
    INCOMPATIBLE_VERSION: "incompatible CNI version",
    UNSUPPORTED_FIELD: "unsupported field in network configuration",
    UNKNOWN_CONTAINER: "container unknown or does not exist",
    INVALID_ENVIRONMENT: "invalid environment variables",
    IO_FAILURE: "I/O failure",
    DECODING_FAILURE: "failed to decode content",
    INVALID_CONFIG: "invalid network configuration",
    TRY_AGAIN_LATER: "try again later",
    NOT_AVAILABLE: "the vxmesh plugin is not available",
    NOT_AVAILABLE_LIMITED: "the vxmesh plugin is not available; existing containers may have "
                           "limited connectivity",
    AGENT_FAILED: "the vxmesh agent failed the request",
    NETWORK_UNKNOWN: "no such vxmesh network",
    CONFLICT: "the request collides with an existing attachment or address",
    DRIFT: "the attachment is not as the previous result says",
    AGENT_PROTOCOL: "the vxmesh agent answered something that is not its API",
}

COMMANDS = ("ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION")
# Which variables each command requires (section 2, "Parameters").
REQUIRED_ENV = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME"),
    "GC": ("CNI_PATH",),
    "STATUS": (),
    "VERSION": (),
}
# The first version that defines each command (older configurations must not use it).
FIRST_VERSION = {"CHECK": "0.4.0", "GC": "1.1.0", "STATUS": "1.1.0"}

IFNAME_MAX = 15
ALNUM = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
ID_CHARACTERS = ALNUM | frozenset("_.-")


class CniError(Exception):
    """A CNI error result: `code` from the table above, `msg` short, `details` naming the
    variable or field and its value."""

    def __init__(self, code: int, details: str, msg: str | None = None) -> None:
        super().__init__(details)
        self.code = code
        self.msg = msg or ERROR_MESSAGES.get(code, "error")
        self.details = details

    def to_json(self, version: str) -> dict[str, Any]:
        return {"cniVersion": version, "code": self.code, "msg": self.msg,
                "details": self.details}


def version_key(text: str) -> tuple[int, int, int]:
    """`"0.4.0"` -> (0, 4, 0); a malformed version raises CniError (decode)."""
    parts = text.split(".") if isinstance(text, str) else []
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise CniError(DECODING_FAILURE, f"cniVersion={text!r}: not a version like 1.0.0")
    major, minor, patch = (int(p) for p in parts)
    return major, minor, patch


class Value:
    """A small value compared, hashed and shown by the fields its class lists in `__slots__`
    (set once, in `__init__`)."""

    __slots__: tuple[str, ...] = ()

    def fields(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Value) and type(other) is type(self) \
            and other.fields() == self.fields()

    def __hash__(self) -> int:
        return hash(self.fields())

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__name__}({shown})"


# --------------------------------------------------------------------------- invocation


class Invocation(Value):
    """One run of the plugin: the command and the `CNI_*` variables, validated."""

    __slots__ = ("args", "command", "container_id", "ifname", "netns", "path")

    def __init__(self, command: str, container_id: str = "", netns: str = "", ifname: str = "",
                 args: tuple[tuple[str, str], ...] = (), path: tuple[str, ...] = ()) -> None:
        self.command = command
        self.container_id = container_id
        self.netns = netns
        self.ifname = ifname
        self.args = args
        self.path = path

    def arg(self, key: str) -> str | None:
        for name, value in self.args:
            if name == key:
                return value
        return None


def is_container_id(text: str) -> bool:
    """A CNI container ID: a letter or digit, then letters, digits, `_`, `.` or `-`."""
    return bool(text) and text[0] in ALNUM and all(c in ID_CHARACTERS for c in text)


def check_ifname(value: str, variable: str = "CNI_IFNAME") -> str:
    """A Linux interface name: 1-15 bytes, not `.`/`..`, no `/`, `:` or white space."""
    if not value or len(value.encode()) > IFNAME_MAX or value in (".", "..") \
            or any(c in value for c in "/: \t\n"):
        raise CniError(INVALID_ENVIRONMENT,
                       f"{variable}={value!r}: not an interface name (1-{IFNAME_MAX} bytes, "
                       "no '/', ':' or white space)")
    return value


def parse_args(text: str) -> tuple[tuple[str, str], ...]:
    """`CNI_ARGS` (`K=V;K=V`) as pairs; malformed text raises naming CNI_ARGS."""
    pairs: list[tuple[str, str]] = []
    for item in text.split(";"):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CniError(INVALID_ENVIRONMENT,
                           f"CNI_ARGS={text!r}: {item!r} is not KEY=VALUE (pairs separated by ';')")
        pairs.append((key, value))
    return tuple(pairs)


def parse_environment(env: Mapping[str, str]) -> Invocation:
    """The invocation from the process environment; refuses what the spec calls invalid."""
    command = env.get("CNI_COMMAND", "")
    if not command:
        raise CniError(INVALID_ENVIRONMENT,
                       f"CNI_COMMAND: required (one of {', '.join(COMMANDS)})")
    if command not in COMMANDS:
        raise CniError(INVALID_ENVIRONMENT,
                       f"CNI_COMMAND={command!r}: not one of {', '.join(COMMANDS)}")
    missing = [name for name in REQUIRED_ENV[command] if not env.get(name)]
    if missing:
        raise CniError(INVALID_ENVIRONMENT,
                       f"{', '.join(missing)}: required for {command}")
    container_id = env.get("CNI_CONTAINERID", "")
    if container_id and command in ("ADD", "CHECK", "DEL") \
            and not is_container_id(container_id):
        raise CniError(INVALID_ENVIRONMENT,
                       f"CNI_CONTAINERID={container_id!r}: must start with a letter or digit, "
                       "then letters, digits, '_', '.' or '-'")
    netns = env.get("CNI_NETNS", "")
    if netns and command in ("ADD", "CHECK", "DEL") and not netns.startswith("/"):
        raise CniError(INVALID_ENVIRONMENT,
                       f"CNI_NETNS={netns!r}: not an absolute path to a network namespace")
    ifname = env.get("CNI_IFNAME", "")
    if command in ("ADD", "CHECK", "DEL"):
        check_ifname(ifname)
    args = parse_args(env.get("CNI_ARGS", ""))
    path = tuple(p for p in env.get("CNI_PATH", "").split(":") if p)
    return Invocation(command, container_id, netns, ifname, args, path)


# --------------------------------------------------------------------------- configuration


class IPConfig(Value):
    """One address of a result: `address` a CIDR, `gateway` an address or None, `interface`
    an index into the result's interfaces (None: not tied to one)."""

    __slots__ = ("address", "gateway", "interface")

    def __init__(self, address: str, gateway: str | None = None,
                 interface: int | None = None) -> None:
        self.address = address
        self.gateway = gateway
        self.interface = interface


class Interface(Value):
    """One interface of a result; `sandbox` empty means the host."""

    __slots__ = ("mac", "mtu", "name", "sandbox")

    def __init__(self, name: str, mac: str = "", sandbox: str = "",
                 mtu: int | None = None) -> None:
        self.name = name
        self.mac = mac
        self.sandbox = sandbox
        self.mtu = mtu


class Route(Value):
    """A route of a result: `dst` a CIDR, via `gw` (None: on link)."""

    __slots__ = ("dst", "gw")

    def __init__(self, dst: str, gw: str | None = None) -> None:
        self.dst = dst
        self.gw = gw


class Result(Value):
    """An ADD result, version-neutral; `render(version)` gives the wire shape."""

    __slots__ = ("dns", "interfaces", "ips", "routes")

    def __init__(self, interfaces: tuple[Interface, ...] = (), ips: tuple[IPConfig, ...] = (),
                 routes: tuple[Route, ...] = (), dns: Mapping[str, Any] | None = None) -> None:
        self.interfaces = interfaces
        self.ips = ips
        self.routes = routes
        self.dns = dns

    def __hash__(self) -> int:
        return hash((self.interfaces, self.ips, self.routes))

    def render(self, version: str) -> dict[str, Any]:
        key = version_key(version)
        out: dict[str, Any] = {"cniVersion": version}
        if self.interfaces:
            rows = []
            for iface in self.interfaces:
                row: dict[str, Any] = {"name": iface.name}
                if iface.mac:
                    row["mac"] = iface.mac
                if iface.mtu is not None and key >= (1, 1, 0):
                    row["mtu"] = iface.mtu
                if iface.sandbox:
                    row["sandbox"] = iface.sandbox
                rows.append(row)
            out["interfaces"] = rows
        if self.ips:
            ips = []
            for ip in self.ips:
                item: dict[str, Any] = {}
                if key < (1, 0, 0):
                    item["version"] = "6" if ":" in ip.address else "4"
                item["address"] = ip.address
                if ip.gateway:
                    item["gateway"] = ip.gateway
                if ip.interface is not None:
                    item["interface"] = ip.interface
                ips.append(item)
            out["ips"] = ips
        if self.routes:
            out["routes"] = [{"dst": r.dst, **({"gw": r.gw} if r.gw else {})}
                             for r in self.routes]
        out["dns"] = dict(self.dns or {})
        return out


def parse_result(value: Any, where: str = "prevResult") -> Result:
    """A result as a runtime hands it back (`prevResult`), in any supported version's shape."""
    import ipaddress  # only here: the import costs milliseconds at every plugin start

    if not isinstance(value, dict):
        raise CniError(DECODING_FAILURE, f"{where}={value!r}: not a JSON object")
    try:
        interfaces = tuple(
            Interface(name=str(i["name"]), mac=str(i.get("mac") or ""),
                      sandbox=str(i.get("sandbox") or ""),
                      mtu=int(i["mtu"]) if i.get("mtu") is not None else None)
            for i in value.get("interfaces") or ())
        ips = []
        for ip in value.get("ips") or ():
            address = str(ip["address"])
            ipaddress.ip_interface(address)
            index = ip.get("interface")
            ips.append(IPConfig(address, str(ip["gateway"]) if ip.get("gateway") else None,
                                int(index) if index is not None else None))
        routes = tuple(Route(str(r["dst"]), str(r["gw"]) if r.get("gw") else None)
                       for r in value.get("routes") or ())
        dns = value.get("dns") or {}
        if not isinstance(dns, dict):
            raise TypeError("dns is not an object")
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CniError(DECODING_FAILURE, f"{where}: not a CNI result ({exc})") from None
    return Result(interfaces, tuple(ips), routes, dns)


def merge_results(previous: Result, mine: Result) -> Result:
    """`previous` (an earlier plugin's result) with `mine` appended; my IPs' interface indexes
    shifted past the previous interfaces."""
    shift = len(previous.interfaces)
    ips = tuple(IPConfig(ip.address, ip.gateway,
                         ip.interface + shift if ip.interface is not None else None)
                for ip in mine.ips)
    dns = dict(previous.dns or {}) or dict(mine.dns or {})
    return Result(previous.interfaces + mine.interfaces, previous.ips + ips,
                  previous.routes + mine.routes, dns)


def decode_config(raw: bytes) -> dict[str, Any]:
    """stdin as a JSON object with `cniVersion` and `name`; decode errors are code 6."""
    try:
        value = fastjson.loads(raw.decode("utf-8"))
    except ValueError as exc:  # UnicodeDecodeError too
        raise CniError(DECODING_FAILURE, f"stdin: the network configuration is not JSON ({exc})"
                       ) from None
    if not isinstance(value, dict):
        raise CniError(DECODING_FAILURE,
                       f"stdin: expected a JSON object, got {type(value).__name__}")
    return value


def config_version(config: Mapping[str, Any], command: str) -> str:
    """The configuration's `cniVersion`, checked against what we support and the command."""
    version = config.get("cniVersion")
    if version is None:
        raise CniError(INCOMPATIBLE_VERSION,
                       f"cniVersion: missing (supported: {', '.join(SUPPORTED_VERSIONS)})")
    if not isinstance(version, str):
        raise CniError(DECODING_FAILURE, f"cniVersion={version!r}: not a string")
    key = version_key(version)
    if version not in SUPPORTED_VERSIONS:
        raise CniError(INCOMPATIBLE_VERSION,
                       f"cniVersion={version!r}: not supported (supported: "
                       f"{', '.join(SUPPORTED_VERSIONS)})")
    first = FIRST_VERSION.get(command)
    if first is not None and key < version_key(first):
        raise CniError(INCOMPATIBLE_VERSION,
                       f"cniVersion={version!r}: {command} needs configuration version "
                       f"{first} or later")
    return version


def version_answer(config: Mapping[str, Any]) -> dict[str, Any]:
    """The VERSION result: the input's `cniVersion` (else the latest) and what we support."""
    version = config.get("cniVersion") if isinstance(config.get("cniVersion"), str) else LATEST
    return {"cniVersion": version, "supportedVersions": list(SUPPORTED_VERSIONS)}
