"""Docker's plugin socket: the HTTP shell around agent.docker.protocol and a `DockerDriver`.

Owns: the route table of plugin API v1 (one POST per call, `/Plugin.Activate` ...
`/IpamDriver.ReleaseAddress`), calling the driver, answering with Docker's content type,
turning errors into `{"Err": "..."}` with a status from the one error table
(agent.api.errors), the socket's life (`serve_plugin`) and per-call counters.

Rules:
- A known call never answers 404: to Docker a 404 means "this plugin does not implement the
  call" and it would carry on as if it had succeeded; a missing object is answered 400.
- An unknown path answers 404 with an Err naming the known calls.
- The driver decides; this module only translates.

May import: agent.api (http server, errors), agent.docker.protocol, agent.errors, trio, the
standard library.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import trio

from agent.api.errors import DOMAIN_ERRORS, InvalidRequest, http_status
from agent.api.http import (
    HttpServerStatistics,
    Request,
    Response,
    bind_unix_listener,
    serve_http,
)
from agent.docker import protocol as p

log = logging.getLogger("vxmesh.docker")


class DockerDriver(Protocol):
    """The decisions behind the calls (agent.docker.driver implements it)."""

    async def request_pool(self, request: p.PoolRequest) -> p.IPNetwork: ...
    async def release_pool(self, request: p.PoolRelease) -> None: ...
    async def request_address(self, request: p.AddressRequest) -> p.IPAddress: ...
    async def release_address(self, request: p.AddressRelease) -> None: ...
    async def create_network(self, request: p.NetworkCreate) -> None: ...
    async def delete_network(self, request: p.NetworkRef) -> None: ...
    async def create_endpoint(self, request: p.EndpointCreate) -> str | None: ...
    def endpoint_info(self, request: p.EndpointRef) -> dict[str, Any]: ...
    async def delete_endpoint(self, request: p.EndpointRef) -> None: ...
    async def join(self, request: p.JoinRequest) -> p.JoinAnswer: ...
    async def leave(self, request: p.EndpointRef) -> None: ...
    async def program_external(self, request: p.ExternalConnectivity) -> None: ...
    async def revoke_external(self, request: p.EndpointRef) -> None: ...


@dataclass(frozen=True)
class PluginStatistics:
    """Calls answered, by call name, and how many were refused."""

    calls: dict[str, int]
    errors: dict[str, int]


Call = Callable[[DockerDriver, Any], Awaitable[dict[str, Any]]]


async def _activate(driver: DockerDriver, body: Any) -> dict[str, Any]:
    return p.ACTIVATE


async def _network_capabilities(driver: DockerDriver, body: Any) -> dict[str, Any]:
    return p.NETWORK_CAPABILITIES


async def _ipam_capabilities(driver: DockerDriver, body: Any) -> dict[str, Any]:
    return p.IPAM_CAPABILITIES


async def _address_spaces(driver: DockerDriver, body: Any) -> dict[str, Any]:
    return p.DEFAULT_ADDRESS_SPACES


async def _request_pool(driver: DockerDriver, body: Any) -> dict[str, Any]:
    return p.pool_answer(await driver.request_pool(p.parse_request_pool(body)))


async def _release_pool(driver: DockerDriver, body: Any) -> dict[str, Any]:
    await driver.release_pool(p.parse_release_pool(body))
    return {}


async def _request_address(driver: DockerDriver, body: Any) -> dict[str, Any]:
    request = p.parse_request_address(body)
    return p.address_answer(await driver.request_address(request), request.pool)


async def _release_address(driver: DockerDriver, body: Any) -> dict[str, Any]:
    await driver.release_address(p.parse_release_address(body))
    return {}


async def _create_network(driver: DockerDriver, body: Any) -> dict[str, Any]:
    await driver.create_network(p.parse_create_network(body))
    return {}


async def _delete_network(driver: DockerDriver, body: Any) -> dict[str, Any]:
    await driver.delete_network(p.parse_network_ref(body))
    return {}


async def _create_endpoint(driver: DockerDriver, body: Any) -> dict[str, Any]:
    return p.endpoint_answer(await driver.create_endpoint(p.parse_create_endpoint(body)))


async def _endpoint_info(driver: DockerDriver, body: Any) -> dict[str, Any]:
    return {"Value": driver.endpoint_info(p.parse_endpoint_ref(body, "EndpointOperInfo"))}


async def _delete_endpoint(driver: DockerDriver, body: Any) -> dict[str, Any]:
    await driver.delete_endpoint(p.parse_endpoint_ref(body, "DeleteEndpoint"))
    return {}


async def _join(driver: DockerDriver, body: Any) -> dict[str, Any]:
    return p.join_answer(await driver.join(p.parse_join(body)))


async def _leave(driver: DockerDriver, body: Any) -> dict[str, Any]:
    await driver.leave(p.parse_endpoint_ref(body, "Leave"))
    return {}


async def _program_external(driver: DockerDriver, body: Any) -> dict[str, Any]:
    await driver.program_external(p.parse_external_connectivity(body))
    return {}


async def _revoke_external(driver: DockerDriver, body: Any) -> dict[str, Any]:
    await driver.revoke_external(p.parse_endpoint_ref(body, "RevokeExternalConnectivity"))
    return {}


async def _discovery(driver: DockerDriver, body: Any) -> dict[str, Any]:
    return {}  # node discovery: vxmesh learns its peers through gossip


CALLS: dict[str, Call] = {
    "Plugin.Activate": _activate,
    "NetworkDriver.GetCapabilities": _network_capabilities,
    "NetworkDriver.CreateNetwork": _create_network,
    "NetworkDriver.DeleteNetwork": _delete_network,
    "NetworkDriver.CreateEndpoint": _create_endpoint,
    "NetworkDriver.EndpointOperInfo": _endpoint_info,
    "NetworkDriver.DeleteEndpoint": _delete_endpoint,
    "NetworkDriver.Join": _join,
    "NetworkDriver.Leave": _leave,
    "NetworkDriver.ProgramExternalConnectivity": _program_external,
    "NetworkDriver.RevokeExternalConnectivity": _revoke_external,
    "NetworkDriver.DiscoverNew": _discovery,
    "NetworkDriver.DiscoverDelete": _discovery,
    "IpamDriver.GetCapabilities": _ipam_capabilities,
    "IpamDriver.GetDefaultAddressSpaces": _address_spaces,
    "IpamDriver.RequestPool": _request_pool,
    "IpamDriver.ReleasePool": _release_pool,
    "IpamDriver.RequestAddress": _request_address,
    "IpamDriver.ReleaseAddress": _release_address,
}


def _answer(status: int, value: dict[str, Any]) -> Response:
    body = (json.dumps(value, sort_keys=True) + "\n").encode()
    return Response(status, body, content_type=p.CONTENT_TYPE)


class PluginHandler:
    """The request handler of the plugin socket, with its counters."""

    def __init__(self, driver: DockerDriver) -> None:
        self.driver = driver
        self._calls: Counter[str] = Counter()
        self._errors: Counter[str] = Counter()

    def statistics(self) -> PluginStatistics:
        return PluginStatistics(dict(self._calls), dict(self._errors))

    async def __call__(self, request: Request) -> Response:
        name = request.path.strip("/")
        call = CALLS.get(name)
        if call is None or request.method != "POST":
            self._errors["unknown"] += 1
            return _answer(404, p.error_answer(
                f"{request.method} {request.path}: not a call of this plugin (known: POST "
                f"/{', /'.join(CALLS)})"))
        self._calls[name] += 1
        try:
            body = json.loads(request.body) if request.body.strip() else None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            self._errors[name] += 1
            return _answer(400, p.error_answer(f"{name}: body is not JSON ({exc})"))
        try:
            answer = await call(self.driver, body)
        except DOMAIN_ERRORS as exc:
            self._errors[name] += 1
            status = http_status(exc)
            if status == 404 or isinstance(exc, InvalidRequest):
                status = 400
            log.info("docker %s refused (%d): %s", name, status, exc)
            return _answer(status, p.error_answer(f"vxmesh: {exc}"))
        log.debug("docker %s: %s -> %s", name, body, answer)
        return _answer(200, answer)


async def serve_plugin(handler: PluginHandler, socket_path: Path, *,
                       stats: HttpServerStatistics | None = None,
                       task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the plugin API on `socket_path` (mode 0600: dockerd runs as root) until cancelled;
    removes the socket on exit."""
    listener = await bind_unix_listener(socket_path, mode=0o600)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_http, [listener], handler, stats)
            task_status.started()
    finally:
        socket_path.unlink(missing_ok=True)
