"""Agent configuration: TOML file, then `VXMESH_*` environment, then flags, into frozen dataclasses.

Owns: the schema of `/etc/vxmesh/agent.toml` (one dataclass per `[section]`, every field
documented with its unit in the field metadata), parsing, type coercion and validation.

Rules:
- Precedence, lowest first: defaults, the TOML file, environment variables
  `VXMESH_<SECTION>_<KEY>` (lists comma-separated), flags (`--set section.key=value`).
- A bad key or value raises `AgentConfigError` naming the key, the value and where it came from;
  nothing is half-applied (the result is built only when everything is valid).
- A missing file is an error only when the path was given explicitly.
- `deploy/agent.example.toml` documents every key; a test keeps the two in step.

May import: the standard library and `agent.errors`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import socket
import tomllib
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from agent.errors import AgentError
from gossip.config import PRESETS

DEFAULT_CONFIG_PATH = Path("/etc/vxmesh/agent.toml")
ENV_PREFIX = "VXMESH_"
LOG_LEVELS = ("debug", "info", "warning", "error")
GOSSIP_PROFILES = tuple(PRESETS)
BRIDGE_NETFILTER_MODES = ("keep", "policy")


class AgentConfigError(AgentError):
    """A configuration key or value is wrong; the message names it."""


def _doc(text: str, unit: str = "", **checks: Any) -> dict[str, Any]:
    return {"doc": text, "unit": unit, **checks}


@dataclass(frozen=True)
class NodeConfig:
    """[node]: who this agent is and where it keeps its state."""

    name: str = field(default="", metadata=_doc(
        "node name in gossip and etcd; empty means the host name", "text"))
    state_dir: Path = field(default=Path("/var/lib/vxmesh"), metadata=_doc(
        "directory for the agent's own state (keyring, local endpoints); written atomically",
        "path"))
    log_level: str = field(default="info", metadata=_doc(
        "log level; SIGHUP re-reads it", "one of debug, info, warning, error",
        choices=LOG_LEVELS))
    leave_on_stop: bool = field(default=False, metadata=_doc(
        "SIGTERM (systemctl stop/restart) leaves the cluster, so peers withdraw this node's"
        " entries at once; false (serf's leave_on_terminate = false) keeps them on every peer"
        " while this host forwards, so a restart or upgrade cuts no traffic; `vxmesh leave`"
        " always leaves", "true or false"))


@dataclass(frozen=True)
class UnderlayConfig:
    """[underlay]: the host network that carries the overlay."""

    interface: str = field(default="", metadata=_doc(
        "interface carrying VXLAN traffic; empty means the interface of the default route",
        "interface name"))
    address: str = field(default="", metadata=_doc(
        "VTEP address; empty means the first global address of the interface",
        "IPv4 or IPv6 address", kind="address"))
    vxlan_port: int = field(default=4789, metadata=_doc(
        "UDP destination port of VXLAN packets", "UDP port", minimum=1, maximum=65535))


@dataclass(frozen=True)
class GossipConfig:
    """[gossip]: SWIM membership and the replicated neighbor table."""

    port: int = field(default=7946, metadata=_doc(
        "UDP and TCP port gossip binds on the underlay address", "port",
        minimum=1, maximum=65535))
    seeds: tuple[str, ...] = field(default=(), metadata=_doc(
        "peers to join at start; etcd's node registry adds more", "list of host:port",
        kind="hostport"))
    profile: str = field(default="lan", metadata=_doc(
        "timing preset of the SWIM protocol", f"one of {', '.join(GOSSIP_PROFILES)}",
        choices=GOSSIP_PROFILES))
    keyring_file: str = field(default="", metadata=_doc(
        "keyring (base64 AES keys, first is primary); empty means <state_dir>/keyring.json;"
        " `vxmesh keys` edits it, SIGHUP re-reads it", "path"))
    encrypt: bool = field(default=True, metadata=_doc(
        "encrypt gossip with the keyring (AES-GCM); when false, packets travel in clear",
        "true or false"))
    sign: bool = field(default=True, metadata=_doc(
        "sign this node's gossip claims (alive, leave, metadata, table records) with its"
        " Ed25519 identity key (<state_dir>/identity.json, public key in etcd) and drop"
        " every claim not signed by its node's key; a key holder cannot speak for another"
        " node. Every node of a cluster must agree", "true or false"))


@dataclass(frozen=True)
class StoreConfig:
    """[store]: the etcd cluster holding networks, VNIs, address blocks and the node registry."""

    endpoints: tuple[str, ...] = field(default=("http://127.0.0.1:2379",), metadata=_doc(
        "client URLs of the etcd members; calls go to the first healthy one and fail over to"
        " the next (list every member; https:// needs ca_file or the system's roots)",
        "list of http://host:port or https://host:port", kind="url"))
    ca_file: str = field(default="", metadata=_doc(
        "CA certificate(s) that sign the members' server certificates; empty means the"
        " system's trusted roots (https:// endpoints only)", "path to a PEM file",
        kind="file"))
    cert_file: str = field(default="", metadata=_doc(
        "client certificate presented to etcd (mutual TLS, with key_file)",
        "path to a PEM file", kind="file"))
    key_file: str = field(default="", metadata=_doc(
        "private key of cert_file", "path to a PEM file", kind="file"))
    username: str = field(default="", metadata=_doc(
        "etcd user (etcd authentication, with password_file); empty means none", "text"))
    password_file: str = field(default="", metadata=_doc(
        "file holding the etcd user's password (one line)", "path", kind="file"))
    timeout: float = field(default=2.0, metadata=_doc(
        "deadline of one etcd request, failover to other members included", "seconds",
        minimum=0.05, maximum=60.0))
    member_timeout: float = field(default=0.5, metadata=_doc(
        "a member that has not answered one request within this is left for the next (each"
        " further round over the members doubles it); keep it below etcd's election timeout",
        "seconds", minimum=0.05, maximum=60.0))
    lease_ttl: int = field(default=30, metadata=_doc(
        "TTL of this node's registry lease", "seconds", minimum=5, maximum=3600))
    retry_interval: float = field(default=1.0, metadata=_doc(
        "pause between reconnection attempts while etcd is down", "seconds",
        minimum=0.05, maximum=60.0))
    reclaim_grace: float = field(default=3600.0, metadata=_doc(
        "a host unregistered and not alive in gossip this long has left for good: its"
        " address blocks are freed", "seconds", minimum=60.0, maximum=30 * 86400.0))


@dataclass(frozen=True)
class ApiConfig:
    """[api]: the control API (HTTP/1.1 + JSON on a unix socket)."""

    socket: Path = field(default=Path("/run/vxmesh/agent.sock"), metadata=_doc(
        "unix socket path of the control API", "path"))
    socket_group: str = field(default="", metadata=_doc(
        "group owning the socket (members may use the CLI); empty keeps root's group",
        "group name"))
    socket_mode: str = field(default="0660", metadata=_doc(
        "permission bits of the socket", "octal string", kind="octal"))


@dataclass(frozen=True)
class MetricsConfig:
    """[metrics]: the Prometheus exposition."""

    enabled: bool = field(default=True, metadata=_doc(
        "serve /metrics over HTTP", "true or false"))
    address: str = field(default="0.0.0.0", metadata=_doc(
        "listen address of the metrics endpoint", "IPv4 or IPv6 address", kind="address"))
    port: int = field(default=9476, metadata=_doc(
        "TCP port of the metrics endpoint", "port", minimum=1, maximum=65535))


@dataclass(frozen=True)
class DataplaneConfig:
    """[dataplane]: how the reconciler applies desired state to the kernel."""

    resync_interval: float = field(default=90.0, metadata=_doc(
        "period of the full kernel dump that catches drift", "seconds",
        minimum=1.0, maximum=86400.0))
    apply_interval: float = field(default=0.02, metadata=_doc(
        "minimum pause between two apply passes (throttle; newest desired state wins)",
        "seconds", minimum=0.0, maximum=10.0))
    agent_down_grace: float = field(default=600.0, metadata=_doc(
        "how long a failed member's entries are kept while its host still answers the ICMP"
        " echo probes to its VTEP (agent down, host forwarding); 0 withdraws a failed member"
        " at once", "seconds", minimum=0.0, maximum=7 * 86400.0))
    host_probe_interval: float = field(default=0.25, metadata=_doc(
        "pause between two ICMP echo probes of a suspected or failed member's VTEP",
        "seconds", minimum=0.05, maximum=10.0))
    vxlan_udp_csum: bool = field(default=True, metadata=_doc(
        "vxlan devices send outer UDP checksums (IPv6 underlay: no zero checksums); false"
        " sends zero checksums, which can only pay where the NIC cannot offload the"
        " checksum (bench/dataplane.py measured no difference on veth); changing it"
        " re-creates the devices", "true or false"))
    bridge_netfilter: str = field(default="keep", metadata=_doc(
        "keep: bridged traffic goes through br_netfilter's ip/ip6tables hooks as this"
        " namespace has it (net.bridge.bridge-nf-call-ip{,6}tables; the first network"
        " policy turns them on); policy: the agent keeps them off while this host enforces"
        " no network policy, on while it does (bridged overlay frames skip the detour; in"
        " bench/dataplane.py request/response 1.06-1.23x faster in five runs, 0.98-1.04"
        " in three); only for a namespace whose other bridges need no iptables"
        " (Docker's do); back to keep turns them on",
        f"one of {', '.join(BRIDGE_NETFILTER_MODES)}", choices=BRIDGE_NETFILTER_MODES))
    host_timeout: float = field(default=4.0, metadata=_doc(
        "a probed host silent this long is down: its entries are withdrawn (must exceed"
        " host_probe_interval)", "seconds", minimum=0.2, maximum=60.0))


@dataclass(frozen=True)
class DnsConfig:
    """[dns]: the resolver at 127.0.0.11 in every endpoint namespace (names from gossip)."""

    enabled: bool = field(default=True, metadata=_doc(
        "serve endpoint names at 127.0.0.11:53 (UDP and TCP) inside endpoint namespaces",
        "true or false"))
    ttl: int = field(default=2, metadata=_doc(
        "TTL of the answers for endpoint names (a deleted endpoint stops resolving within"
        " the table's convergence plus this)", "seconds", minimum=0, maximum=3600))
    upstreams: tuple[str, ...] = field(default=(), metadata=_doc(
        "resolvers that other names are forwarded to, port 53; empty means the nameservers"
        " of the agent's /etc/resolv.conf", "list of IP or IP:port ([v6]:port)",
        kind="resolver"))
    forward: bool = field(default=True, metadata=_doc(
        "forward names outside the cluster's zone upstream (false: answer them REFUSED)",
        "true or false"))
    upstream_timeout: float = field(default=2.0, metadata=_doc(
        "how long one forwarded query waits for an upstream before trying the next",
        "seconds", minimum=0.05, maximum=30.0))


@dataclass(frozen=True)
class DockerConfig:
    """[docker]: the agent as Docker's network and IPAM plugin (driver name `vxmesh`)."""

    enabled: bool = field(default=False, metadata=_doc(
        "serve Docker's plugin API and mirror vxmesh networks into the local dockerd",
        "true or false"))
    plugin_socket: Path = field(default=Path("/run/docker/plugins/vxmesh.sock"), metadata=_doc(
        "unix socket Docker discovers the plugin on (its name is the driver's name)", "path"))
    engine_socket: Path = field(default=Path("/var/run/docker.sock"), metadata=_doc(
        "dockerd's Engine API socket (networks are created and removed through it)", "path"))


@dataclass(frozen=True)
class WireGuardConfig:
    """[wireguard]: the host's WireGuard interface for encrypted networks."""

    listen_port: int = field(default=51820, metadata=_doc(
        "UDP port WireGuard listens on (underlay); a key rotation (`vxmesh keys"
        " rotate-wireguard`) moves the interface between this port and the next one, so"
        " firewalls must pass both", "UDP port", minimum=1, maximum=65534))


@dataclass(frozen=True)
class AgentConfig:
    """The whole configuration: one field per TOML section."""

    node: NodeConfig = NodeConfig()
    underlay: UnderlayConfig = UnderlayConfig()
    gossip: GossipConfig = GossipConfig()
    store: StoreConfig = StoreConfig()
    api: ApiConfig = ApiConfig()
    metrics: MetricsConfig = MetricsConfig()
    dataplane: DataplaneConfig = DataplaneConfig()
    dns: DnsConfig = DnsConfig()
    docker: DockerConfig = DockerConfig()
    wireguard: WireGuardConfig = WireGuardConfig()

    @property
    def node_name(self) -> str:
        """The node's name: configured, or this host's name."""
        return self.node.name or socket.gethostname()

    @property
    def identity_path(self) -> Path:
        return self.node.state_dir / "identity.json"

    @property
    def keyring_path(self) -> Path:
        """Where the gossip keyring lives."""
        if self.gossip.keyring_file:
            return Path(self.gossip.keyring_file)
        return self.node.state_dir / "keyring.json"

    @property
    def socket_mode_bits(self) -> int:
        """`api.socket_mode` as an integer."""
        return int(self.api.socket_mode, 8)


SECTIONS: dict[str, type] = {f.name: type(f.default) for f in dataclasses.fields(AgentConfig)}


def section_fields(section: str) -> list[dataclasses.Field[Any]]:
    """The fields of one section, in declaration order."""
    return list(dataclasses.fields(SECTIONS[section]))


def all_keys() -> list[str]:
    """Every `section.key` the configuration knows."""
    return [f"{s}.{f.name}" for s in SECTIONS for f in section_fields(s)]


def _describe(value: Any) -> str:
    return repr(value)


def _coerce(key: str, raw: Any, fld: dataclasses.Field[Any], hint: Any, origin: str) -> Any:
    """Turn a TOML value or an environment/flag string into the field's type, checked."""
    meta = fld.metadata

    def fail(expected: str) -> AgentConfigError:
        return AgentConfigError(f"{key}: expected {expected}, got {_describe(raw)} (from {origin})")

    from_text = isinstance(raw, str) and origin != "file"
    if hint is bool:
        if isinstance(raw, bool):
            value: Any = raw
        elif from_text and raw.strip().lower() in ("true", "1", "yes", "on"):
            value = True
        elif from_text and raw.strip().lower() in ("false", "0", "no", "off"):
            value = False
        else:
            raise fail("true or false")
    elif hint is int:
        if isinstance(raw, int) and not isinstance(raw, bool):
            value = raw
        elif from_text and raw.strip().lstrip("-").isdigit():
            value = int(raw)
        else:
            raise fail("an integer")
    elif hint is float:
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            value = float(raw)
        else:
            try:
                if not from_text:
                    raise ValueError
                value = float(raw)
            except ValueError:
                raise fail("a number") from None
    elif hint is str:
        if not isinstance(raw, str):
            raise fail("a string")
        value = raw
    elif hint is Path:
        if not isinstance(raw, str):
            raise fail("a path string")
        value = Path(raw)
    elif hint == tuple[str, ...]:
        if isinstance(raw, list) and all(isinstance(x, str) for x in raw):
            value = tuple(raw)
        elif from_text:
            value = tuple(part.strip() for part in raw.split(",") if part.strip())
        else:
            raise fail("a list of strings")
    else:  # pragma: no cover - a schema mistake, caught by the tests
        raise TypeError(f"{key}: unsupported field type {hint!r}")

    _check(key, value, meta, origin)
    return value


def _check(key: str, value: Any, meta: Mapping[str, Any], origin: str) -> None:
    where = f"(from {origin})"
    if "choices" in meta and value not in meta["choices"]:
        raise AgentConfigError(
            f"{key}: {value!r} is not one of {', '.join(meta['choices'])} {where}")
    if "minimum" in meta and value < meta["minimum"]:
        raise AgentConfigError(f"{key}: {value!r} is below the minimum {meta['minimum']} {where}")
    if "maximum" in meta and value > meta["maximum"]:
        raise AgentConfigError(f"{key}: {value!r} is above the maximum {meta['maximum']} {where}")
    kind = meta.get("kind")
    items = value if isinstance(value, tuple) else (value,)
    for item in items:
        if kind == "address" and item:
            try:
                ipaddress.ip_address(item)
            except ValueError:
                raise AgentConfigError(f"{key}: {item!r} is not an IP address {where}") from None
        elif kind == "hostport":
            parse_hostport(item, key=key, origin=origin)
        elif kind == "resolver":
            parse_resolver(item, key=key, origin=origin)
        elif kind == "url":
            parse_etcd_url(item, key=key, origin=origin)
        elif kind == "file" and item and not os.access(item, os.R_OK):
            reason = "does not exist" if not os.path.exists(item) else "is not readable"
            raise AgentConfigError(f"{key}: {item!r} {reason} {where}")
        elif kind == "octal":
            try:
                bits = int(item, 8)
            except ValueError:
                raise AgentConfigError(f"{key}: {item!r} is not an octal mode like 0660 {where}") \
                    from None
            if not 0 <= bits <= 0o777:
                raise AgentConfigError(f"{key}: {item!r} is outside 0000-0777 {where}")


def parse_etcd_url(text: str, *, key: str = "store.endpoints",
                   origin: str = "argument") -> tuple[bool, str, int]:
    """An etcd client URL `http(s)://host:port` to (tls, host, port); `AgentConfigError` naming
    `key` and the value when it has another scheme, no port, a path, a query or credentials."""
    where = f"(from {origin})"
    try:
        parsed = urllib.parse.urlsplit(text)
        port = parsed.port
    except ValueError as exc:
        raise AgentConfigError(f"{key}: {text!r} is not a URL ({exc}) {where}") from None
    if parsed.scheme not in ("http", "https"):
        raise AgentConfigError(f"{key}: {text!r} must start with http:// or https:// {where}")
    if not parsed.hostname:
        raise AgentConfigError(f"{key}: {text!r} has no host {where}")
    if parsed.username or parsed.password:
        raise AgentConfigError(f"{key}: {text!r} must not carry credentials (use store.username"
                          f" and store.password_file) {where}")
    if parsed.path not in ("", "/") or parsed.query or parsed.fragment:
        raise AgentConfigError(
            f"{key}: {text!r} must be scheme://host:port, without a path {where}")
    if port is None:
        raise AgentConfigError(f"{key}: {text!r} has no port (etcd's client port is usually 2379:"
                          f" {parsed.scheme}://{parsed.hostname}:2379) {where}")
    return parsed.scheme == "https", parsed.hostname, port


def check_store(store: StoreConfig) -> None:
    """Rules across [store] keys; `AgentConfigError` naming the key and the value."""
    schemes = {parse_etcd_url(url)[0] for url in store.endpoints}
    if not store.endpoints:
        raise AgentConfigError("store.endpoints: give at least one etcd URL")
    if len(schemes) > 1:
        raise AgentConfigError(f"store.endpoints: {list(store.endpoints)!r} mixes http:// and"
                          " https:// (a cluster is all TLS or none)")
    tls = schemes == {True}
    for name in ("ca_file", "cert_file", "key_file"):
        value = getattr(store, name)
        if value and not tls:
            raise AgentConfigError(f"store.{name}: {value!r} is set but store.endpoints are http://"
                              " (use https:// URLs for TLS)")
    if bool(store.cert_file) != bool(store.key_file):
        named, missing = ("cert_file", "key_file") if store.cert_file else ("key_file",
                                                                             "cert_file")
        raise AgentConfigError(f"store.{missing}: empty, but store.{named}="
                          f"{getattr(store, named)!r} is set (mutual TLS needs both)")
    if bool(store.username) != bool(store.password_file):
        if store.username:
            raise AgentConfigError(f"store.password_file: empty, but store.username="
                              f"{store.username!r} is set")
        raise AgentConfigError(f"store.username: empty, but store.password_file="
                          f"{store.password_file!r} is set")
    if store.member_timeout > store.timeout:
        raise AgentConfigError(f"store.member_timeout: {store.member_timeout!r} is above"
                          f" store.timeout={store.timeout!r}")


def check_ports(config: AgentConfig) -> None:
    """The UDP ports of one host must differ: WireGuard's two (listen_port and the next, used
    during a key rotation) against gossip's and VXLAN's."""
    wireguard = config.wireguard.listen_port
    for key, port in (("gossip.port", config.gossip.port),
                      ("underlay.vxlan_port", config.underlay.vxlan_port)):
        if port in (wireguard, wireguard + 1):
            raise AgentConfigError(
                f"wireguard.listen_port: {wireguard} (and {wireguard + 1} during a key "
                f"rotation) collides with {key}={port}")


def parse_hostport(text: str, *, key: str = "address", origin: str = "argument") -> tuple[str, int]:
    """`host:port` or `[v6]:port` to a tuple; `AgentConfigError` naming `key` when malformed."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise AgentConfigError(f"{key}: {text!r} is not host:port (from {origin})")
    return host, int(port)


def parse_resolver(text: str, *, key: str = "resolver", origin: str = "argument"
                   ) -> tuple[str, int]:
    """A DNS server: `IP` (port 53), `IP:port` or `[v6]:port`; `AgentConfigError` naming `key`."""
    try:
        return str(ipaddress.ip_address(text)), 53
    except ValueError:
        pass
    host, port = parse_hostport(text, key=key, origin=origin)
    try:
        return str(ipaddress.ip_address(host)), port
    except ValueError:
        raise AgentConfigError(f"{key}: {text!r} is not an IP address or IP:port (from {origin})") \
            from None


def _env_overrides(environ: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """`VXMESH_SECTION_KEY=value` to {"section.key": (value, origin)}; unknown names refused."""
    known = {f"{ENV_PREFIX}{k.replace('.', '_').upper()}": k for k in all_keys()}
    out: dict[str, tuple[str, str]] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name == "VXMESH_CONFIG":
            continue
        if name not in known:
            raise AgentConfigError(f"unknown environment variable {name} (known: "
                              f"{', '.join(sorted(known))})")
        out[known[name]] = (value, f"environment {name}")
    return out


def _flag_overrides(assignments: Sequence[str]) -> dict[str, tuple[str, str]]:
    out: dict[str, tuple[str, str]] = {}
    for text in assignments:
        key, sep, value = text.partition("=")
        if not sep:
            raise AgentConfigError(f"--set {text!r}: expected section.key=value")
        out[key.strip()] = (value, f"flag --set {key.strip()}")
    return out


def build_config(data: Mapping[str, Any], *, origin: str = "file",
                 overrides: Mapping[str, tuple[str, str]] | None = None) -> AgentConfig:
    """Validate a parsed TOML mapping plus text overrides into an `AgentConfig`."""
    values: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    for section, body in data.items():
        if section not in SECTIONS:
            raise AgentConfigError(f"unknown section [{section}] in {origin} "
                              f"(known: {', '.join(SECTIONS)})")
        if not isinstance(body, dict):
            raise AgentConfigError(f"[{section}] in {origin} must be a table, got {body!r}")
        for key, raw in body.items():
            values[section][key] = (raw, "file" if origin == "file" else origin)
    for dotted, (raw, where) in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        if section not in SECTIONS:
            raise AgentConfigError(f"unknown key {dotted!r} (from {where})")
        values[section][key] = (raw, where)

    built: dict[str, Any] = {}
    for section, cls in SECTIONS.items():
        hints = get_type_hints(cls)
        by_name = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, (raw, where) in values[section].items():
            dotted = f"{section}.{key}"
            if key not in by_name:
                raise AgentConfigError(
                    f"unknown key {dotted!r} (from {where}; known in [{section}]: "
                    f"{', '.join(by_name)})")
            kind_origin = "file" if where == "file" else where
            kwargs[key] = _coerce(dotted, raw, by_name[key], hints[key], kind_origin)
        built[section] = cls(**kwargs)
    check_store(built["store"])
    config = AgentConfig(**built)
    check_ports(config)
    return config


def load_config(path: Path | None = None, *, environ: Mapping[str, str] | None = None,
                assignments: Sequence[str] = ()) -> AgentConfig:
    """Read the file (default `/etc/vxmesh/agent.toml` or `$VXMESH_CONFIG`), env and flags."""
    env = os.environ if environ is None else environ
    explicit = path is not None or "VXMESH_CONFIG" in env
    config_path = path or Path(env.get("VXMESH_CONFIG", str(DEFAULT_CONFIG_PATH)))
    data: dict[str, Any] = {}
    try:
        with open(config_path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        if explicit:
            raise AgentConfigError(f"config file {config_path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise AgentConfigError(f"config file {config_path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise AgentConfigError(f"cannot read config file {config_path}: {exc}") from None
    overrides = {**_env_overrides(env), **_flag_overrides(assignments)}
    try:
        return build_config(data, overrides=overrides)
    except AgentConfigError as exc:
        raise AgentConfigError(f"{config_path}: {exc}") from None


def render_toml(config: AgentConfig) -> str:
    """A TOML document that `load_config` reads back to `config` (lab and Vagrant write it)."""
    lines: list[str] = []
    for section in SECTIONS:
        lines.append(f"[{section}]")
        body = getattr(config, section)
        for fld in dataclasses.fields(body):
            lines.append(f"{fld.name} = {_toml_value(getattr(body, fld.name))}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    text = str(value)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
