"""The agent's side of the CNI plugin: its requests, translated into the one attach operation.

Owns: the `/v1/cni/...` routes of the control API (the process mounts them next to the API's
own), the validation of their bodies (400 naming the field and the value, nothing changed),
an attachment's identity (`agent.cni.netconf.attachment_name` of container ID and interface
name, with labels `cni.containerID` and `cni.ifname`), creating a network the agent does not
know yet from the subnet in the plugin's configuration, CHECK's comparison of the previous
result with the record, the kernel and the neighbor table, GC over the valid attachments,
and working off the detach requests the plugin spooled while the agent was down.

Routes:
  POST /v1/cni/attach  {"container_id", "ifname", "netns", "network", "subnet"?, "vni"?,
                        "mtu"?, "ip"?, "mac"?}                        -> 201, the attachment
  POST /v1/cni/detach  {"container_id", "ifname", "network"?}         -> {"detached": bool}
  POST /v1/cni/check   {"container_id", "ifname", "netns", "network"?, "mac"?,
                        "addresses"?}                                 -> {"problems": [...]}
  POST /v1/cni/gc      {"network", "valid": [{"container_id", "ifname"}]}
                                                          -> {"removed": [...], "failed": [...]}
  POST /v1/cni/exec    one whole plugin run from the compiled front (`agent/cni/front.c`):
                       the body every CNI_* variable as "NAME=VALUE\0", one more "\0", then
                       the plugin's stdin -> 200, the plugin's stdout as the body, its exit
                       status in X-Cni-Exit-Code. `agent.cni.plugin.run` does the run (in a
                       worker thread: it blocks), asking the routes above in-process instead
                       of over the socket, so a run answers here exactly as the Python plugin
                       would; 400 when the body is not in that framing.

Rules: no kernel work and no error translation of its own: everything goes through the
attach operation (`agent.api.attach`), errors through `agent.api.errors`.

May import: agent.api (attach, errors, http, routes), agent.cni.netconf, agent.cni.plugin,
agent.errors,
underlay.endpoints (its inspection type), underlay.endpoints_model (modes), trio, the
standard library.
"""

from __future__ import annotations

import io
import ipaddress
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import trio

from agent.api.attach import Attachment, AttachRequest, ExistingNetns
from agent.api.errors import Conflict, InvalidRequest, NotFound
from agent.api.http import Handler, Request, Response
from agent.api.routes import (
    Control,
    ExtraRoute,
    NetworkCreateRequest,
    attachment_json,
    json_body,
    make_handler,
    refuse_unknown,
    validate_name,
)
from agent.cni import plugin
from agent.cni.netconf import SPOOL_DIR_NAME, attachment_name
from agent.errors import AgentError
from underlay.endpoints import Inspection
from underlay.endpoints_model import Mode

log = logging.getLogger("vxmesh.cni")

LABEL_CONTAINER = "cni.containerID"
LABEL_IFNAME = "cni.ifname"
CONTAINER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
NETWORK_APPEARS_TIMEOUT = 2.0


class CniControl(Protocol):
    """What the CNI front door asks of the agent (`agent.runtime.control.Control`)."""

    async def networks(self) -> list[dict[str, Any]]: ...
    async def create_network(self, request: NetworkCreateRequest) -> dict[str, Any]: ...
    def endpoints(self) -> list[dict[str, Any]]: ...
    def endpoint(self, name: str) -> Attachment: ...
    def attachments(self) -> list[Attachment]: ...
    async def attach(self, request: AttachRequest) -> Attachment: ...
    async def detach(self, name: str) -> bool: ...
    async def inspect(self, name: str) -> Inspection: ...


@dataclass(frozen=True)
class CniAttachment:
    """The identity of one CNI attachment: (container ID, interface name)."""

    container_id: str
    ifname: str

    @property
    def name(self) -> str:
        return attachment_name(self.container_id, self.ifname)

    def labels(self) -> tuple[tuple[str, str], ...]:
        return ((LABEL_CONTAINER, self.container_id), (LABEL_IFNAME, self.ifname))


# -- request validation (pure) ----------------------------------------------------------------

def _text(body: Mapping[str, Any], name: str, *, required: bool = True) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise InvalidRequest(f"{name}: required")
        return None
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"{name}: {value!r} is not a non-empty string")
    return value


def parse_identity(body: Mapping[str, Any]) -> CniAttachment:
    container_id = _text(body, "container_id") or ""
    if not CONTAINER_ID.match(container_id):
        raise InvalidRequest(f"container_id: {container_id!r} is not a CNI container ID")
    ifname = _text(body, "ifname") or ""
    if len(ifname.encode()) > 15 or "/" in ifname or any(c.isspace() for c in ifname):
        raise InvalidRequest(f"ifname: {ifname!r} is not an interface name")
    return CniAttachment(container_id, ifname)


def _netns(body: Mapping[str, Any]) -> str:
    netns = _text(body, "netns") or ""
    if not netns.startswith("/"):
        raise InvalidRequest(f"netns: {netns!r} is not an absolute path")
    return netns


def _optional_int(body: Mapping[str, Any], name: str, low: int, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidRequest(f"{name}: {value!r} is not an integer in {low}-{high}")
    return value


@dataclass(frozen=True)
class AttachBody:
    identity: CniAttachment
    netns: str
    network: str
    subnet: str | None
    vni: int | None
    mtu: int | None
    ip: str | None
    mac: str | None


def parse_attach(body: Mapping[str, Any]) -> AttachBody:
    refuse_unknown(body, {"container_id", "ifname", "netns", "network", "subnet", "vni",
                          "mtu", "ip", "mac"})
    identity = parse_identity(body)
    network = validate_name(body.get("network"), "network")
    subnet = _text(body, "subnet", required=False)
    if subnet is not None:
        try:
            ipaddress.ip_network(subnet, strict=True)
        except ValueError as exc:
            raise InvalidRequest(f"subnet: {subnet!r} is not a CIDR network ({exc})") from None
    ip = _text(body, "ip", required=False)
    if ip is not None:
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise InvalidRequest(f"ip: {ip!r} is not an IP address") from None
    return AttachBody(identity, _netns(body), network, subnet,
                      _optional_int(body, "vni", 1, (1 << 24) - 1),
                      _optional_int(body, "mtu", 576, 9000), ip,
                      _text(body, "mac", required=False))


# -- the operations ---------------------------------------------------------------------------

async def ensure_network(control: CniControl, body: AttachBody) -> None:
    """The network exists in the agent afterwards: known, or created from the plugin's
    subnet (when another host creates it at the same moment, its record is waited for)."""
    if any(n["name"] == body.network for n in await control.networks()):
        return
    if body.subnet is None:
        raise NotFound(f"network: {body.network!r} is not a vxmesh network; create it "
                       f"(vxmesh network create {body.network} --subnet CIDR) or give "
                       '"subnet" in the CNI configuration')
    try:
        await control.create_network(NetworkCreateRequest(body.network, body.subnet, body.vni,
                                                          body.mtu))
    except Conflict:
        with trio.move_on_after(NETWORK_APPEARS_TIMEOUT):
            while not any(n["name"] == body.network for n in await control.networks()):
                await trio.sleep(0.05)
            return
        raise


async def attach(control: CniControl, body: AttachBody) -> Attachment:
    await ensure_network(control, body)
    identity = body.identity
    return await control.attach(AttachRequest(
        name=identity.name, network=body.network, mode=Mode.OVERLAY,
        sandbox=ExistingNetns(body.netns), ifname=identity.ifname, ip=body.ip, mac=body.mac,
        labels=identity.labels()))


async def check(control: CniControl, identity: CniAttachment, netns: str,
                mac: str | None, addresses: list[str]) -> list[str]:
    """What differs between the previous result, the record, the kernel and the table."""
    try:
        attachment = control.endpoint(identity.name)
    except NotFound:
        return [f"no attachment of container {identity.container_id!r} interface "
                f"{identity.ifname!r} on this host"]
    problems = []
    if attachment.sandbox != netns:
        problems.append(f"sandbox: the attachment is in {attachment.sandbox!r}, CNI_NETNS is "
                        f"{netns!r}")
    if mac and attachment.mac != mac.lower():
        problems.append(f"mac: prevResult says {mac}, the attachment has {attachment.mac}")
    for address in addresses:
        if address not in attachment.addresses:
            problems.append(f"address {address}: in prevResult, not in the attachment "
                            f"({', '.join(attachment.addresses)})")
    kernel = await control.inspect(identity.name)
    if kernel.mac is None:
        problems.append(f"interface {identity.ifname}: missing in {netns}")
    else:
        if kernel.mac != attachment.mac:
            problems.append(f"interface {identity.ifname}: MAC {kernel.mac}, want "
                            f"{attachment.mac}")
        if not kernel.up:
            problems.append(f"interface {identity.ifname}: down")
        if attachment.mtu is not None and kernel.mtu != attachment.mtu:
            problems.append(f"interface {identity.ifname}: MTU {kernel.mtu}, want "
                            f"{attachment.mtu}")
        for address in attachment.addresses:
            if address not in kernel.addresses:
                problems.append(f"interface {identity.ifname}: address {address} missing")
    published = {(row["network"], row["ip"]) for row in control.endpoints() if row["local"]}
    if attachment.ip and (attachment.network, attachment.ip) not in published:
        problems.append(f"address {attachment.ip}: not published in the neighbor table of "
                        f"network {attachment.network!r}")
    return problems


def cni_identity(attachment: Attachment) -> CniAttachment | None:
    """The CNI identity an attachment was made with (None: not made by CNI)."""
    labels = dict(attachment.labels)
    if LABEL_CONTAINER not in labels or LABEL_IFNAME not in labels:
        return None
    return CniAttachment(labels[LABEL_CONTAINER], labels[LABEL_IFNAME])


async def collect_garbage(control: CniControl, network: str,
                          valid: set[CniAttachment]) -> tuple[list[str], list[str]]:
    """Detach every CNI attachment of `network` not in `valid`; (removed, failed)."""
    removed, failed = [], []
    for attachment in control.attachments():
        identity = cni_identity(attachment)
        if identity is None or attachment.network != network or identity in valid:
            continue
        try:
            await control.detach(attachment.name)
            removed.append(f"{identity.container_id}/{identity.ifname}")
        except AgentError as exc:
            failed.append(f"{identity.container_id}/{identity.ifname}: {exc}")
    return removed, failed


def spool_dir(socket_path: Path) -> Path:
    """Where the plugin leaves DELs it could not deliver (`agent.cni.netconf.NetConf`)."""
    return socket_path.parent / SPOOL_DIR_NAME


async def work_off_spool(control: CniControl, socket_path: Path) -> int:
    """Detach what the plugin's DELs asked for while the agent was down; returns how many
    requests were worked off (a request that fails stays for the next start)."""
    directory = spool_dir(socket_path)
    done = 0
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        try:
            identity = parse_identity(json.loads(path.read_text()))
            await control.detach(identity.name)
        except (OSError, ValueError, AgentError) as exc:
            log.warning("CNI detach left in %s not worked off: %s", path, exc)
            continue
        path.unlink(missing_ok=True)
        done += 1
    if done:
        log.info("worked off %d CNI detach(es) spooled while the agent was down", done)
    return done


# -- routes -----------------------------------------------------------------------------------

async def _attach(control: CniControl, request: Request, arg: str) -> Response:
    attachment = await attach(control, parse_attach(json_body(request)))
    return Response.json(201, attachment_json(attachment))


async def _detach(control: CniControl, request: Request, arg: str) -> Response:
    body = json_body(request)
    refuse_unknown(body, {"container_id", "ifname", "network"})
    detached = await control.detach(parse_identity(body).name)
    return Response.json(200, {"detached": detached})


async def _check(control: CniControl, request: Request, arg: str) -> Response:
    body = json_body(request)
    refuse_unknown(body, {"container_id", "ifname", "netns", "network", "mac", "addresses"})
    addresses = body.get("addresses") or []
    if not isinstance(addresses, list) or not all(isinstance(a, str) for a in addresses):
        raise InvalidRequest(f"addresses: {addresses!r} is not a list of CIDRs")
    problems = await check(control, parse_identity(body), _netns(body),
                           _text(body, "mac", required=False), addresses)
    return Response.json(200, {"problems": problems})


async def _gc(control: CniControl, request: Request, arg: str) -> Response:
    body = json_body(request)
    refuse_unknown(body, {"network", "valid"})
    network = validate_name(body.get("network"), "network")
    raw = body.get("valid") or []
    if not isinstance(raw, list) or not all(isinstance(v, dict) for v in raw):
        raise InvalidRequest(f"valid: {raw!r} is not a list of "
                             '{"container_id", "ifname"} objects')
    removed, failed = await collect_garbage(control, network,
                                            {parse_identity(v) for v in raw})
    return Response.json(200, {"removed": removed, "failed": failed})


def parse_exec(body: bytes) -> tuple[dict[str, str], bytes]:
    """The front's request body as (CNI_* environment, stdin); InvalidRequest if malformed."""
    env: dict[str, str] = {}
    at = 0
    while at < len(body) and body[at] != 0:
        end = body.find(b"\0", at)
        if end < 0:
            break
        name, equals, value = body[at:end].decode(errors="surrogateescape").partition("=")
        if not equals or not name.startswith("CNI_"):
            raise InvalidRequest(f"environment: {name!r} is not a CNI_* variable")
        env[name] = value
        at = end + 1
    if at >= len(body):
        raise InvalidRequest("body: the environment block is not ended by an empty entry")
    return env, body[at + 1:]


def run_plugin(handler: Handler, env: Mapping[str, str], stdin: bytes) -> tuple[int, str]:
    """One plugin run in a worker thread, asking `handler` (the API's own routes) through the
    trio loop; (exit status, stdout)."""

    def call(socket: str, method: str, path: str,
             body: Mapping[str, Any] | None) -> tuple[int, Any]:
        payload = b"" if body is None else json.dumps(body).encode()
        response = trio.from_thread.run(handler, Request(method, path, {}, {}, payload))
        return response.status, json.loads(response.body) if response.body else None

    stdout, log_text = io.StringIO(), io.StringIO()
    status = plugin.run(env, io.BytesIO(stdin), stdout, log_text, call)
    if log_text.getvalue():
        log.info("CNI %s: %s", env.get("CNI_COMMAND"), log_text.getvalue().strip())
    return status, stdout.getvalue()


async def _exec(control: Control, request: Request, arg: str) -> Response:
    env, stdin = parse_exec(request.body)
    status, stdout = await trio.to_thread.run_sync(run_plugin, make_handler(control, CNI_ROUTES),
                                                   env, stdin)
    return Response(200, stdout.encode(), headers=(("X-Cni-Exit-Code", str(status)),))


CNI_ROUTES: dict[tuple[str, str], ExtraRoute] = {
    ("POST", "/v1/cni/attach"): _attach,
    ("POST", "/v1/cni/detach"): _detach,
    ("POST", "/v1/cni/check"): _check,
    ("POST", "/v1/cni/gc"): _gc,
    ("POST", "/v1/cni/exec"): _exec,
}
