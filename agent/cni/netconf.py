"""The vxmesh plugin's own network configuration, attachment names, and the detach spool.

Owns: the fields a `"type": "vxmesh"` plugin object may carry (and the refusal of any other,
naming it), the static address and MAC a runtime asks for (capability arguments `ips` and
`mac`, or `CNI_ARGS` `IP=` / `MAC=`), the name an attachment has in the agent (derived from
(container ID, interface name), so every command finds it again without state of its own),
and where a DEL that could not reach the agent leaves its request.

Fields:
  network   the vxmesh network (default: the configuration's `name`)
  subnet    CIDR used to create the network when the agent does not know it yet
  vni, mtu  used only when creating it
  socket    the agent's control socket (default /run/vxmesh/agent.sock)
  dns       passed through into the result
  capabilities, runtimeConfig, args, prevResult, cniVersion(s), name, type, ipMasq and keys
  starting with `cni.dev/` belong to the protocol.

Pure, standard library only.
"""

from __future__ import annotations

from agent.cni.spec import (
    DECODING_FAILURE,
    INVALID_CONFIG,
    INVALID_ENVIRONMENT,
    UNSUPPORTED_FIELD,
    CniError,
    Invocation,
    Result,
    Value,
    parse_result,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

DEFAULT_SOCKET = "/run/vxmesh/agent.sock"
PLUGIN_TYPE = "vxmesh"
SPOOL_DIR_NAME = "cni-detach"
ATTACHMENT_PREFIX = "cni-"
NAME_FIRST = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")
NAME_CHARACTERS = NAME_FIRST | frozenset("_.-")
NAME_MAX = 31
HEX = frozenset("0123456789abcdef")
OWN_FIELDS = {"network", "subnet", "vni", "mtu", "socket", "dns"}
PROTOCOL_FIELDS = {"cniVersion", "cniVersions", "name", "type", "capabilities",
                   "runtimeConfig", "args", "prevResult", "ipMasq", "disableCheck", "disableGC"}
# CNI_ARGS keys we read; any other is refused unless IgnoreUnknown=1 (as the reference
# plugins do). Kubernetes' pod identity is accepted and ignored.
KNOWN_ARGS = {"IgnoreUnknown", "IP", "MAC", "K8S_POD_NAMESPACE", "K8S_POD_NAME",
              "K8S_POD_INFRA_CONTAINER_ID", "K8S_POD_UID"}


class NetConf(Value):
    """A validated vxmesh plugin configuration and what this attachment asks for."""

    __slots__ = (
        "dns",
        "ip",
        "mac",
        "mtu",
        "name",
        "network",
        "prev_result",
        "socket",
        "subnet",
        "version",
        "vni",
    )

    def __init__(self, name: str, version: str, network: str, socket: str = DEFAULT_SOCKET,
                 subnet: str | None = None, vni: int | None = None, mtu: int | None = None,
                 dns: Mapping[str, Any] | None = None, ip: str | None = None,
                 mac: str | None = None, prev_result: Result | None = None) -> None:
        self.name = name
        self.version = version
        self.network = network
        self.socket = socket
        self.subnet = subnet
        self.vni = vni
        self.mtu = mtu
        self.dns = dns
        self.ip = ip
        self.mac = mac
        self.prev_result = prev_result

    def __hash__(self) -> int:
        return hash((self.name, self.network, self.socket))

    @property
    def spool_dir(self) -> str:
        """Where DEL leaves requests for an agent it could not reach: next to its socket."""
        directory = self.socket.rpartition("/")[0]  # `os` costs the plugin's start
        return f"{directory or '.'}/{SPOOL_DIR_NAME}"


def is_vxmesh_name(text: str) -> bool:
    """A vxmesh network name, as the agent's API takes it (`agent.api.routes.NAME_PATTERN`)."""
    return 0 < len(text) <= NAME_MAX and text[0] in NAME_FIRST \
        and all(c in NAME_CHARACTERS for c in text)


def attachment_name(container_id: str, ifname: str) -> str:
    """The agent's name for the attachment (container ID, interface name)."""
    import hashlib  # only here: OpenSSL's import costs milliseconds at every plugin start

    digest = hashlib.sha256(f"{container_id}/{ifname}".encode()).hexdigest()
    return ATTACHMENT_PREFIX + digest[:16]


def _int_field(config: Mapping[str, Any], key: str, low: int, high: int) -> int | None:
    value = config.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise CniError(INVALID_CONFIG, f"{key}={value!r}: not an integer in {low}-{high}")
    return value


def _address(text: Any, where: str, *, code: int = INVALID_CONFIG) -> str:
    import ipaddress  # only when an address is asked for (milliseconds at every start)

    if not isinstance(text, str):
        raise CniError(code, f"{where}={text!r}: not an IP address")
    try:
        return str(ipaddress.ip_interface(text).ip)
    except ValueError:
        raise CniError(code, f"{where}={text!r}: not an IP address") from None


def _mac(text: Any, where: str, *, code: int = INVALID_CONFIG) -> str:
    parts = text.lower().replace("-", ":").split(":") if isinstance(text, str) else []
    if len(parts) != 6 or not all(len(p) == 2 and set(p) <= HEX for p in parts) \
            or int(parts[0], 16) & 1:
        raise CniError(code, f"{where}={text!r}: not a unicast MAC address")
    return ":".join(parts)


def _requested(config: Mapping[str, Any], invocation: Invocation) -> tuple[str | None, str | None]:
    """The static address and MAC this attachment asks for, from wherever the runtime put them."""
    runtime = config.get("runtimeConfig") or {}
    if not isinstance(runtime, dict):
        raise CniError(INVALID_CONFIG, f"runtimeConfig={runtime!r}: not an object")
    args = config.get("args") or {}
    cni_args = args.get("cni", {}) if isinstance(args, dict) else {}
    ips = runtime.get("ips") or (cni_args.get("ips") if isinstance(cni_args, dict) else None)
    ip = None
    if ips:
        if not isinstance(ips, list) or len(ips) != 1:
            raise CniError(INVALID_CONFIG,
                           f"runtimeConfig.ips={ips!r}: give exactly one address")
        ip = _address(ips[0], "runtimeConfig.ips")
    mac_value = runtime.get("mac")
    mac = _mac(mac_value, "runtimeConfig.mac") if mac_value else None
    ignore_unknown = (invocation.arg("IgnoreUnknown") or "").lower() in ("1", "true")
    for key, value in invocation.args:
        if key == "IP" and ip is None:
            ip = _address(value, "CNI_ARGS IP", code=INVALID_ENVIRONMENT)
        elif key == "MAC" and mac is None:
            mac = _mac(value, "CNI_ARGS MAC", code=INVALID_ENVIRONMENT)
        elif key not in KNOWN_ARGS and not ignore_unknown:
            raise CniError(INVALID_ENVIRONMENT,
                           f"CNI_ARGS {key}={value!r}: unknown argument (known: "
                           f"{', '.join(sorted(KNOWN_ARGS))}; or pass IgnoreUnknown=1)")
    return ip, mac


def parse_netconf(config: Mapping[str, Any], version: str, invocation: Invocation) -> NetConf:
    """Validate a vxmesh plugin object (stdin) for `invocation`; CniError names the field."""
    for key in sorted(config):
        if key not in OWN_FIELDS and key not in PROTOCOL_FIELDS \
                and not key.startswith("cni.dev/"):
            raise CniError(UNSUPPORTED_FIELD,
                           f"{key}={config[key]!r}: not a field of the vxmesh plugin (known: "
                           f"{', '.join(sorted(OWN_FIELDS))})")
    name = config.get("name")
    if not isinstance(name, str) or not name:
        raise CniError(INVALID_CONFIG, f"name={name!r}: required (the network's name)")
    plugin_type = config.get("type")
    if plugin_type is not None and plugin_type != PLUGIN_TYPE:
        raise CniError(INVALID_CONFIG, f"type={plugin_type!r}: this plugin is {PLUGIN_TYPE!r}")
    network = config.get("network", name)
    if not isinstance(network, str) or not is_vxmesh_name(network):
        field = "network" if "network" in config else "name"
        raise CniError(INVALID_CONFIG,
                       f"{field}={network!r}: not a vxmesh network name (lower-case letters, "
                       "digits, '-', '_', '.', 1-31 characters)")
    subnet = config.get("subnet")
    if subnet is not None:
        import ipaddress  # only when a subnet is given (milliseconds at every start)

        try:
            net = ipaddress.ip_network(subnet, strict=True) if isinstance(subnet, str) \
                else None
        except ValueError as exc:
            raise CniError(INVALID_CONFIG, f"subnet={subnet!r}: not a CIDR network ({exc})"
                           ) from None
        if net is None:
            raise CniError(INVALID_CONFIG, f"subnet={subnet!r}: not a CIDR network")
    socket = config.get("socket", DEFAULT_SOCKET)
    if not isinstance(socket, str) or not socket.startswith("/"):
        raise CniError(INVALID_CONFIG, f"socket={socket!r}: not an absolute path")
    dns = config.get("dns")
    if dns is not None and not isinstance(dns, dict):
        raise CniError(INVALID_CONFIG, f"dns={dns!r}: not an object")
    prev = config.get("prevResult")
    prev_result = parse_result(prev) if prev is not None else None
    ip, mac = _requested(config, invocation) if invocation.command == "ADD" else (None, None)
    return NetConf(name=name, version=version, network=network, socket=socket, subnet=subnet,
                   vni=_int_field(config, "vni", 1, (1 << 24) - 1),
                   mtu=_int_field(config, "mtu", 576, 9000), dns=dns, ip=ip, mac=mac,
                   prev_result=prev_result)


def valid_attachments(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """GC's `cni.dev/valid-attachments` as (container ID, interface name) pairs."""
    raw = config.get("cni.dev/valid-attachments")
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise CniError(DECODING_FAILURE, f"cni.dev/valid-attachments={raw!r}: not a list")
    out = []
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("containerID"), str) \
                or not isinstance(item.get("ifname"), str):
            raise CniError(DECODING_FAILURE,
                           f"cni.dev/valid-attachments: {item!r} is not "
                           '{"containerID": ..., "ifname": ...}')
        out.append((item["containerID"], item["ifname"]))
    return out
