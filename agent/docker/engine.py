"""A client of Docker's Engine API over dockerd's unix socket (blocking, standard library only).

Owns: the few Engine calls the agent makes: ping, list/inspect/create/remove networks,
inspect/list containers. API version 1.41 (Docker 20.10, the oldest we support; newer
daemons answer it too). Callers in trio run these in worker threads.

Rules:
- One request per connection (dockerd may close idle ones at any time).
- A daemon that cannot be reached raises `EngineUnavailable`; an answer >= 400 raises
  `EngineError` with Docker's own message and the status.

- `http.client` (not agent.unix_http): dockerd answers larger bodies chunked.

May import: agent.errors, the standard library.
"""

from __future__ import annotations

import http.client
import json
import socket
import urllib.parse
from dataclasses import dataclass
from typing import Any

from agent.errors import AgentError

API_VERSION = "v1.41"
DEFAULT_ENGINE_SOCKET = "/var/run/docker.sock"
MANAGED_LABEL = "io.vxmesh.network"


class EngineError(AgentError):
    """dockerd refused a request; `status` is its HTTP status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class EngineUnavailable(EngineError):
    """dockerd's socket does not answer."""

    def __init__(self, message: str) -> None:
        super().__init__(message, 0)


@dataclass(frozen=True)
class DockerNetwork:
    """The part of `docker network inspect` the agent reads."""

    id: str
    name: str
    driver: str
    ipam_driver: str
    subnets: tuple[str, ...]
    labels: dict[str, str]
    endpoints: dict[str, str]  # endpoint id -> container id

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> DockerNetwork:
        ipam = raw.get("IPAM") or {}
        return cls(
            id=raw.get("Id", ""), name=raw.get("Name", ""), driver=raw.get("Driver", ""),
            ipam_driver=ipam.get("Driver", ""),
            subnets=tuple(c.get("Subnet", "") for c in ipam.get("Config") or ()),
            labels=dict(raw.get("Labels") or {}),
            endpoints={c.get("EndpointID", ""): cid
                       for cid, c in (raw.get("Containers") or {}).items()})


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("docker", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class EngineClient:
    """Blocking client of one dockerd."""

    def __init__(self, socket_path: str = DEFAULT_ENGINE_SOCKET, timeout: float = 30.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def request(self, method: str, path: str, body: Any = None,
                query: dict[str, str] | None = None) -> Any:
        target = f"/{API_VERSION}{path}"
        if query:
            target += "?" + urllib.parse.urlencode(query)
        conn = _UnixConnection(self.socket_path, self.timeout)
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        try:
            conn.request(method, target, body=payload, headers=headers)
            reply = conn.getresponse()
            raw = reply.read()
        except (OSError, http.client.HTTPException) as exc:
            raise EngineUnavailable(f"dockerd at {self.socket_path}: {exc}") from None
        finally:
            conn.close()
        try:
            value = json.loads(raw) if raw.strip() else None
        except json.JSONDecodeError:
            value = raw.decode(errors="replace")
        if reply.status >= 400:
            message = value.get("message") if isinstance(value, dict) else value
            raise EngineError(f"dockerd: {method} {path}: {message} (HTTP {reply.status})",
                              reply.status)
        return value

    def ping(self) -> bool:
        try:
            self.request("GET", "/_ping")
        except EngineError:
            return False
        return True

    def networks(self, driver: str | None = None) -> list[DockerNetwork]:
        query = {"filters": json.dumps({"driver": [driver]})} if driver else None
        return [DockerNetwork.from_json(raw) for raw in self.request("GET", "/networks",
                                                                     query=query) or ()]

    def network(self, ident: str) -> DockerNetwork | None:
        try:
            return DockerNetwork.from_json(self.request("GET", f"/networks/{ident}"))
        except EngineError as exc:
            if exc.status == 404:
                return None
            raise

    def create_network(self, name: str, *, driver: str, subnet: str, gateway: str,
                       labels: dict[str, str], options: dict[str, str],
                       ipv6: tuple[str, str] | None = None) -> str:
        """Create a network; `ipv6` (subnet, gateway) makes it dual stack (`--ipv6`)."""
        config = [{"Subnet": subnet, "Gateway": gateway}]
        if ipv6 is not None:
            config.append({"Subnet": ipv6[0], "Gateway": ipv6[1]})
        body = {"Name": name, "Driver": driver, "CheckDuplicate": True, "Labels": labels,
                "Options": options, "EnableIPv6": ipv6 is not None,
                "IPAM": {"Driver": driver, "Config": config}}
        return str(self.request("POST", "/networks/create", body)["Id"])

    def remove_network(self, ident: str) -> None:
        try:
            self.request("DELETE", f"/networks/{ident}")
        except EngineError as exc:
            if exc.status != 404:
                raise

    def container(self, ident: str) -> dict[str, Any] | None:
        try:
            value = self.request("GET", f"/containers/{ident}/json")
        except EngineError as exc:
            if exc.status == 404:
                return None
            raise
        return value if isinstance(value, dict) else None

    def containers(self) -> list[dict[str, Any]]:
        return list(self.request("GET", "/containers/json", query={"all": "1"}) or ())
