"""A small HTTP/1.1 server on trio, driven by h11: used by the control API and the metrics endpoint.

Owns: listening sockets (unix or TCP), one task per connection, request framing with h11
(keep-alive, Content-Length bodies, protocol errors answered with 400), per-request time
limits and a body size limit. It knows nothing of routes: a handler turns a `Request` into a
`Response`.

Rules: the handler runs in the connection's task; an exception from it becomes a 500 with a
JSON body and is logged, never crashes the server. A peer that sends garbage gets 400 and the
connection closed.

May import: trio, h11, the standard library, agent.errors.
"""

from __future__ import annotations

import json
import logging
import os
import socket as stdlib_socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import h11
import trio

from agent.errors import AgentError

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20
IDLE_TIMEOUT = 30.0
READ_CHUNK = 65536


@dataclass(frozen=True)
class Request:
    """One HTTP request, fully read."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class Response:
    """One HTTP response; `content_type` defaults to JSON."""

    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = field(default=())

    @classmethod
    def json(cls, status: int, value: object) -> Response:
        return cls(status, (json.dumps(value, indent=None, sort_keys=True) + "\n").encode())

    @classmethod
    def error(cls, status: int, message: str) -> Response:
        """The one error shape of the API: {"error": {"status": N, "message": "..."}}."""
        return cls.json(status, {"error": {"status": status, "message": message}})


class SocketInUseError(AgentError):
    """A live process already serves the unix socket we were asked to bind."""


Handler = Callable[[Request], Awaitable[Response]]


@dataclass
class HttpServerStatistics:
    """Counters of one server (read by metrics)."""

    requests: int = 0
    protocol_errors: int = 0
    handler_errors: int = 0


async def bind_unix_listener(path: Path, *, mode: int, group: str = "") -> trio.SocketListener:
    """Bind a unix stream socket at `path` (replacing a stale one) with `mode` and `group`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        probe = trio.socket.socket(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
        try:
            await probe.connect(str(path))
        except OSError:
            path.unlink(missing_ok=True)  # stale: nobody listens there
        else:
            raise SocketInUseError(f"{path}: another process is serving this socket")
        finally:
            probe.close()
    sock = trio.socket.socket(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # never world-accessible, even for an instant
    try:
        await sock.bind(str(path))
    finally:
        os.umask(old_umask)
    if group:
        import grp

        os.chown(path, -1, grp.getgrnam(group).gr_gid)
    os.chmod(path, mode)
    sock.listen(64)
    return trio.SocketListener(sock)


async def serve_http(listeners: list[trio.SocketListener], handler: Handler,
                     stats: HttpServerStatistics | None = None, *,
                     task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve `handler` on `listeners` until cancelled."""
    counters = stats if stats is not None else HttpServerStatistics()

    async def on_connection(stream: trio.SocketStream) -> None:
        try:
            await _serve_connection(stream, handler, counters)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError,
                ConnectionError):
            pass
        finally:
            await stream.aclose()

    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(trio.serve_listeners, on_connection, [listener])
        task_status.started()


async def _next_event(stream: trio.SocketStream, conn: h11.Connection) -> object:
    """The next h11 event, reading as needed; `trio.TooSlowError` after IDLE_TIMEOUT."""
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        with trio.fail_after(IDLE_TIMEOUT):
            data = await stream.receive_some(READ_CHUNK)
        conn.receive_data(data)  # b"" is end of stream: h11 then reports ConnectionClosed


async def _send(stream: trio.SocketStream, conn: h11.Connection, response: Response,
                *, close: bool = False) -> None:
    headers = [("Content-Type", response.content_type),
               ("Content-Length", str(len(response.body))), *response.headers]
    if close:
        headers.append(("Connection", "close"))
    reason = _REASONS.get(response.status, "")
    out = conn.send(h11.Response(status_code=response.status, headers=headers,
                                 reason=reason.encode()))
    assert out is not None
    body = conn.send(h11.Data(data=response.body))
    end = conn.send(h11.EndOfMessage())
    await stream.send_all(out + (body or b"") + (end or b""))


async def _serve_connection(stream: trio.SocketStream, handler: Handler,
                            stats: HttpServerStatistics) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
    while True:
        try:
            event = await _next_event(stream, conn)
            if not isinstance(event, h11.Request):
                return
            body = bytearray()
            while True:
                part = await _next_event(stream, conn)
                if isinstance(part, h11.Data):
                    body += part.data
                    if len(body) > MAX_BODY_BYTES:
                        await _send(stream, conn, Response.error(413, "request body too large"),
                                    close=True)
                        return
                elif isinstance(part, h11.EndOfMessage):
                    break
                else:
                    return
        except h11.RemoteProtocolError as exc:
            stats.protocol_errors += 1
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                await _send(stream, conn, Response.error(400, f"bad HTTP request: {exc}"),
                            close=True)
            return
        stats.requests += 1
        url = urlsplit(event.target.decode("latin-1"))
        request = Request(
            method=event.method.decode("ascii"),
            path=url.path,
            query={k: v[-1] for k, v in parse_qs(url.query).items()},
            headers={k.decode("latin-1").lower(): v.decode("latin-1") for k, v in event.headers},
            body=bytes(body),
        )
        try:
            response = await handler(request)
        except Exception:
            stats.handler_errors += 1
            log.exception("request %s %s failed", request.method, request.path)
            # the traceback goes to the log; the body names nothing (no exception text)
            response = Response.error(500, "internal error (see the agent's log)")
        await _send(stream, conn, response)
        if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
            return
        try:
            conn.start_next_cycle()
        except h11.LocalProtocolError:
            return


_REASONS = {200: "OK", 201: "Created", 202: "Accepted", 204: "No Content",
            400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            409: "Conflict", 413: "Payload Too Large", 422: "Unprocessable Entity",
            500: "Internal Server Error", 503: "Service Unavailable",
            504: "Gateway Timeout", 507: "Insufficient Storage"}
