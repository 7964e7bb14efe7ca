"""The `vxmesh` CNI plugin: a thin, fast client of the agent's control socket.

Owns: one run of the plugin (read `CNI_*` and stdin, validate everything, ask the agent, print
the result or the error object, exit 0 or 1). The kernel work (veth, addresses, MTU, routes,
neighbor records) happens in the agent; this process only translates.
`run` is also what the agent does with a run the compiled front (`agent/cni/front.c`) hands
it (`agent.cni.service`, `POST /v1/cni/exec`), asking its routes in-process; this module's
`main` runs where the front cannot reach the agent (and where no C compiler built it).

Commands:
  ADD      POST /v1/cni/attach; the result in the configuration's version (merged after a
           `prevResult` when vxmesh is not first in the chain).
  DEL      POST /v1/cni/detach; succeeds when the attachment is gone already, when the
           namespace is gone, and when the agent is down: then the request is left in the
           spool next to the agent's socket, which the agent works off when it starts.
  CHECK    POST /v1/cni/check with what `prevResult` says; differences are error 103.
  GC       POST /v1/cni/gc with `cni.dev/valid-attachments`.
  STATUS   GET /v1/status: 51 when the agent is unreachable (no new remote endpoints reach
           running containers), 50 when it is not ready or etcd is away.
  VERSION  the versions of `agent.cni.spec`.

Rules:
- Standard library only (`python -I -S` runs it: no site-packages, so nothing else can load);
  start-up time is part of every container start.
- Bad input is refused before the agent is asked, so it never leaves half-made veths or
  addresses; CNI_NETNS is opened here and checked to be a network namespace other than the
  host's. The agent gets the path itself (and keeps it: it re-checks the namespace after a
  restart), so the runtime's namespace must be visible in the agent's mount namespace, as
  `/run/netns/...` of Podman, containerd and CRI-O is.

May import: agent.cni.spec, agent.cni.netconf, agent.unix_http, the standard library.
"""

from __future__ import annotations

import fcntl
import posix  # not `os`: its import (posixpath, collections.abc) costs every start
import sys

from agent.cni import fastjson
from agent.cni.netconf import NetConf, attachment_name, parse_netconf, valid_attachments
from agent.cni.spec import (
    AGENT_FAILED,
    AGENT_PROTOCOL,
    CONFLICT,
    DRIFT,
    INVALID_CONFIG,
    INVALID_ENVIRONMENT,
    IO_FAILURE,
    LATEST,
    NETWORK_UNKNOWN,
    NOT_AVAILABLE,
    NOT_AVAILABLE_LIMITED,
    TRY_AGAIN_LATER,
    CniError,
    Interface,
    Invocation,
    IPConfig,
    Result,
    Route,
    config_version,
    decode_config,
    merge_results,
    parse_environment,
    version_answer,
)
from agent.unix_http import ProtocolError, unix_request

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any, BinaryIO, TextIO

    #: How the plugin asks the agent: (socket, method, path, body) -> (HTTP status, JSON).
    AgentCall = Callable[[str, str, str, Mapping[str, Any] | None], tuple[int, Any]]

AGENT_TIMEOUT = 60.0
NS_GET_NSTYPE = 0xB703  # ioctl: which kind of namespace a file descriptor refers to
CLONE_NEWNET = 0x40000000


class AgentUnreachable(Exception):
    """The agent's socket is missing or nobody accepts on it."""


def call_agent(socket_path: str, method: str, path: str,
               body: Mapping[str, Any] | None = None) -> tuple[int, Any]:
    """One request to the agent: (HTTP status, decoded JSON); AgentUnreachable if it is down."""
    payload = fastjson.dumps(body).encode() if body is not None else None
    try:
        reply = unix_request(socket_path, method, path, payload, timeout=AGENT_TIMEOUT)
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise AgentUnreachable(f"the vxmesh agent at {socket_path} is not running "
                               f"({exc.strerror})") from None
    except (OSError, ProtocolError) as exc:
        raise CniError(TRY_AGAIN_LATER, f"talking to the vxmesh agent at {socket_path} "
                                        f"failed: {exc}") from None
    try:
        return reply.status, fastjson.loads(reply.body.decode()) if reply.body else None
    except ValueError:
        raise CniError(AGENT_PROTOCOL, f"the agent at {socket_path} answered {reply.status} "
                                       "with a body that is not JSON") from None


def _agent_error(status: int, value: Any, command: str) -> CniError:
    """An agent error answer as a CNI error (the agent's message names field and value)."""
    message = value.get("error", {}).get("message") if isinstance(value, dict) else None
    details = f"{message or value!r} (agent HTTP {status})"
    if status == 400:
        return CniError(INVALID_CONFIG, details)
    if status == 404:
        return CniError(DRIFT if command == "CHECK" else NETWORK_UNKNOWN, details)
    if status == 409:
        return CniError(CONFLICT, details)
    if status == 503:
        return CniError(TRY_AGAIN_LATER, details)
    return CniError(AGENT_FAILED, details)


def _ask(call: AgentCall, conf: NetConf, command: str, path: str,
         body: Mapping[str, Any]) -> Any:
    try:
        status, value = call(conf.socket, "POST", path, body)
    except AgentUnreachable as exc:
        raise CniError(TRY_AGAIN_LATER, f"{exc}; start it (systemctl start vxmesh-agent) or "
                                        "fix socket in the network configuration") from None
    if status >= 400:
        raise _agent_error(status, value, command)
    if not isinstance(value, dict):
        raise CniError(AGENT_PROTOCOL, f"the agent answered {value!r} to {path}")
    return value


def check_netns(path: str) -> None:
    """CNI_NETNS must be a network namespace, and not our own (the host's)."""
    try:
        fd = posix.open(path, posix.O_RDONLY | posix.O_CLOEXEC)
    except OSError as exc:
        raise CniError(INVALID_ENVIRONMENT,
                       f"CNI_NETNS={path!r}: cannot open it ({exc.strerror})") from None
    try:
        kind = fcntl.ioctl(fd, NS_GET_NSTYPE)
    except OSError:
        kind = -1
    own = posix.stat("/proc/self/ns/net")
    opened = posix.fstat(fd)
    posix.close(fd)
    if kind != CLONE_NEWNET:
        raise CniError(INVALID_ENVIRONMENT, f"CNI_NETNS={path!r}: not a network namespace")
    if (opened.st_dev, opened.st_ino) == (own.st_dev, own.st_ino):
        raise CniError(INVALID_ENVIRONMENT,
                       f"CNI_NETNS={path!r}: that is the plugin's own (the host's) namespace")


def _attachment_body(invocation: Invocation, conf: NetConf) -> dict[str, Any]:
    return {"container_id": invocation.container_id, "ifname": invocation.ifname,
            "network": conf.network}


def result_from_attachment(attachment: Mapping[str, Any], invocation: Invocation,
                           conf: NetConf) -> Result:
    """The agent's attachment record as a CNI result (host veth first, then the container's)."""
    try:
        interfaces = (
            Interface(name=str(attachment["host_ifname"]),
                      mac=str(attachment.get("host_mac") or "")),
            Interface(name=invocation.ifname, mac=str(attachment["mac"]),
                      sandbox=invocation.netns, mtu=attachment.get("mtu")),
        )
        gateways = {4: attachment.get("gateway"), 6: attachment.get("gateway6")}
        ips = tuple(IPConfig(str(a), str(gw) if (gw := gateways[6 if ":" in a else 4]) else None,
                             1) for a in attachment["addresses"])
        routes = tuple(Route(str(r["dst"]), str(r["gw"]) if r.get("gw") else None)
                       for r in attachment.get("routes") or ())
    except (KeyError, TypeError) as exc:
        raise CniError(AGENT_PROTOCOL, f"the agent's attachment lacks {exc}") from None
    # the network config's dns wins; else the resolver the agent serves in the sandbox
    mine = Result(interfaces, ips, routes, dict(conf.dns or attachment.get("dns") or {}))
    return merge_results(conf.prev_result, mine) if conf.prev_result is not None else mine


def cmd_add(call: AgentCall, invocation: Invocation, conf: NetConf) -> dict[str, Any]:
    check_netns(invocation.netns)
    body = _attachment_body(invocation, conf)
    body.update(netns=invocation.netns, subnet=conf.subnet, vni=conf.vni, mtu=conf.mtu,
                ip=conf.ip, mac=conf.mac)
    attachment = _ask(call, conf, "ADD", "/v1/cni/attach", body)
    return result_from_attachment(attachment, invocation, conf).render(conf.version)


def spool_detach(conf: NetConf, body: Mapping[str, Any], name: str) -> str:
    """Leave a DEL for the agent to work off at its next start; returns the file written."""
    import os  # only here: the agent is down (the path every start takes avoids it)

    os.makedirs(conf.spool_dir, mode=0o700, exist_ok=True)
    target = os.path.join(conf.spool_dir, f"{name}.json")
    temporary = f"{target}.{os.getpid()}.tmp"
    try:
        with open(temporary, "w") as handle:
            handle.write(fastjson.dumps(dict(body)))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except OSError as exc:
        if os.path.lexists(temporary):
            os.unlink(temporary)
        raise CniError(IO_FAILURE, f"the agent is down and the detach request could not be "
                                   f"left in {conf.spool_dir}: {exc}") from None
    return target


def cmd_del(call: AgentCall, invocation: Invocation, conf: NetConf, log: TextIO) -> None:
    body = _attachment_body(invocation, conf)
    try:
        status, value = call(conf.socket, "POST", "/v1/cni/detach", body)
    except AgentUnreachable as exc:
        where = spool_detach(conf, body,
                             attachment_name(invocation.container_id, invocation.ifname))
        print(f"vxmesh: {exc}; the agent will detach at its next start ({where})", file=log)
        return
    if status >= 400:
        raise _agent_error(status, value, "DEL")


def cmd_check(call: AgentCall, invocation: Invocation, conf: NetConf) -> None:
    if conf.prev_result is None:
        raise CniError(INVALID_CONFIG, "prevResult: required for CHECK")
    interfaces = conf.prev_result.interfaces
    index = next((i for i, iface in enumerate(interfaces)
                  if iface.name == invocation.ifname and iface.sandbox == invocation.netns),
                 None)
    if index is None:
        raise CniError(DRIFT, f"prevResult: no interface {invocation.ifname!r} in sandbox "
                              f"{invocation.netns!r}")
    addresses = [ip.address for ip in conf.prev_result.ips if ip.interface == index]
    check_netns(invocation.netns)
    body = _attachment_body(invocation, conf)
    body.update(netns=invocation.netns, mac=interfaces[index].mac or None, addresses=addresses)
    answer = _ask(call, conf, "CHECK", "/v1/cni/check", body)
    problems = answer.get("problems") or []
    if problems:
        raise CniError(DRIFT, "; ".join(str(p) for p in problems))


def cmd_gc(call: AgentCall, conf: NetConf, config: Mapping[str, Any]) -> None:
    valid = valid_attachments(config)
    answer = _ask(call, conf, "GC", "/v1/cni/gc", {
        "network": conf.network,
        "valid": [{"container_id": cid, "ifname": ifname} for cid, ifname in valid]})
    failed = answer.get("failed") or []
    if failed:
        raise CniError(AGENT_FAILED, "garbage collection left: " + "; ".join(map(str, failed)))


def cmd_status(call: AgentCall, conf: NetConf) -> None:
    try:
        status, value = call(conf.socket, "GET", "/v1/status", None)
    except AgentUnreachable as exc:
        raise CniError(NOT_AVAILABLE_LIMITED, f"{exc}: no new endpoint reaches running "
                                              "containers until it is back") from None
    except CniError as exc:
        raise CniError(NOT_AVAILABLE, exc.details) from None
    if status >= 400 or not isinstance(value, dict):
        raise CniError(NOT_AVAILABLE, f"the agent answered {status}: {value!r}")
    if not value.get("ready"):
        raise CniError(NOT_AVAILABLE, f"the agent at {conf.socket} is starting (not ready yet)")
    if value.get("degraded") or not value.get("store_up", True):
        raise CniError(NOT_AVAILABLE, f"the agent cannot reach etcd ("
                                      f"{value.get('store_error') or 'store down'}): new "
                                      "networks and address blocks cannot be made")


def run(env: Mapping[str, str], stdin: BinaryIO, stdout: TextIO, log: TextIO,
        call: AgentCall = call_agent) -> int:
    """One plugin run; returns the exit status (0 success, 1 an error object was printed).
    `call` asks the agent (over its socket; the agent itself runs the compiled front's
    requests with a `call` of its own, `agent.cni.service`)."""
    version = LATEST
    try:
        try:
            raw = stdin.read()
        except OSError as exc:
            raise CniError(IO_FAILURE, f"stdin: cannot read the configuration ({exc})") from None
        decoded: dict[str, Any] | CniError
        try:
            decoded = decode_config(raw if raw.strip() else b"{}")
        except CniError as exc:  # reported after the environment, as the spec orders them
            decoded = exc
        if isinstance(decoded, dict) and isinstance(decoded.get("cniVersion"), str):
            version = decoded["cniVersion"]  # errors answer in the configuration's version
        invocation = parse_environment(env)
        if isinstance(decoded, CniError):
            raise decoded
        config = decoded
        if invocation.command == "VERSION":
            stdout.write(fastjson.dumps(version_answer(config)))
            return 0
        version = config_version(config, invocation.command)
        conf = parse_netconf(config, version, invocation)
        if invocation.command == "ADD":
            stdout.write(fastjson.dumps(cmd_add(call, invocation, conf)))
        elif invocation.command == "DEL":
            cmd_del(call, invocation, conf, log)
        elif invocation.command == "CHECK":
            cmd_check(call, invocation, conf)
        elif invocation.command == "GC":
            cmd_gc(call, conf, config)
        else:
            cmd_status(call, conf)
        return 0
    except CniError as exc:
        stdout.write(fastjson.dumps(exc.to_json(version)))
        return 1


def main() -> None:
    """Run once and exit without the interpreter's teardown (milliseconds at every call:
    nothing is left to clean up once the answer is written and flushed)."""
    env = {key.decode(errors="surrogateescape"): value.decode(errors="surrogateescape")
           for key, value in posix.environ.items()}
    status = run(env, sys.stdin.buffer, sys.stdout, sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    posix._exit(status)


if __name__ == "__main__":
    main()
