"""One HTTP/1.1 request over a unix stream socket: the clients' side of the control API.

Owns: `unix_request(socket_path, method, target, body)` -> `UnixResponse` (status, body),
for the CLI's `agent.api.client` and the CNI plugin. The plugin runs at every container
start and must start fast: `http.client` alone costs ~100 ms of imports (email, ssl), so this
speaks the little HTTP the agent's server needs itself: one request per connection
(`Connection: close`), a `Content-Length` body, the response read to its length or EOF.

Errors: `OSError` from the socket (FileNotFoundError / ConnectionRefusedError: nobody
listens), `ProtocolError` when the answer is not HTTP.

May import: the standard library only (`_socket`).
"""

from __future__ import annotations

import _socket  # `socket` itself costs the plugin ~15 ms of imports (enum, selectors)

MAX_RESPONSE = 16 * 1024 * 1024


class ProtocolError(Exception):
    """The peer's answer is not an HTTP/1.x response."""


class UnixResponse:
    """An answer: HTTP status and body (a plain class: `typing` costs the plugin's start)."""

    __slots__ = ("body", "status")

    def __init__(self, status: int, body: bytes) -> None:
        self.status = status
        self.body = body


def unix_request(socket_path: str, method: str, target: str, body: bytes | None = None, *,
                 timeout: float = 30.0, content_type: str = "application/json") -> UnixResponse:
    """Send `method target` (with `body`) to the server on `socket_path`; return its answer."""
    head = [f"{method} {target} HTTP/1.1", "Host: vxmesh", "Connection: close"]
    if body is not None:
        head += [f"Content-Type: {content_type}", f"Content-Length: {len(body)}"]
    request = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + (body or b"")
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(socket_path)
        sock.sendall(request)
        return _read_response(sock)
    finally:
        sock.close()


def _read_response(sock: _socket.socket) -> UnixResponse:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ProtocolError(f"connection closed before the response head ({data[:60]!r})")
        data += chunk
        if len(data) > 64 * 1024 and b"\r\n\r\n" not in data:
            raise ProtocolError("response head longer than 64 KiB")
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ProtocolError(f"not an HTTP status line: {lines[0][:80]!r}")
    length: int | None = None
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            if not value.strip().isdigit():
                raise ProtocolError(f"bad Content-Length {value.strip()!r}")
            length = int(value.strip())
        elif name.strip().lower() == "transfer-encoding":
            raise ProtocolError(f"unexpected Transfer-Encoding {value.strip()!r}")
    while length is None or len(rest) < length:
        if len(rest) > MAX_RESPONSE:
            raise ProtocolError(f"response body over {MAX_RESPONSE} bytes")
        chunk = sock.recv(65536)
        if not chunk:
            if length is not None:
                raise ProtocolError(f"response body cut at {len(rest)} of {length} bytes")
            break
        rest += chunk
    return UnixResponse(int(parts[1]), rest if length is None else rest[:length])
