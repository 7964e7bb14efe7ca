"""The control API's client: blocking JSON over the agent's unix socket (stdlib only).

Owns: `ApiClient` (one request per connection, errors as `CliError` with the exit code from
agent.api.errors), the default socket path.

May import: agent.api.errors, agent.errors, agent.unix_http, the standard library.
"""

from __future__ import annotations

import json
from typing import Any

from agent.api.errors import EXIT_FAILED, EXIT_UNREACHABLE, exit_code_for_status
from agent.errors import AgentError
from agent.unix_http import ProtocolError, unix_request

DEFAULT_SOCKET = "/run/vxmesh/agent.sock"


class CliError(AgentError):
    """A failure the CLI reports on stderr and turns into an exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class ApiClient:
    """Blocking JSON client of the control API over its unix socket."""

    def __init__(self, socket_path: str, timeout: float = 30.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """Send one request; return the decoded JSON, or raise `CliError` with an exit code."""
        payload = json.dumps(body).encode() if body is not None else None
        try:
            reply = unix_request(self.socket_path, method, path, payload, timeout=self.timeout)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise CliError(f"cannot reach the agent at {self.socket_path}: {exc.strerror} "
                           "(is it running? `systemctl status vxmesh-agent`, or pass --socket)",
                           EXIT_UNREACHABLE) from None
        except PermissionError:
            raise CliError(f"no permission to use {self.socket_path} (run as root or as a "
                           "member of the socket's group)", EXIT_UNREACHABLE) from None
        except (OSError, ProtocolError) as exc:
            raise CliError(f"talking to the agent at {self.socket_path} failed: {exc}",
                           EXIT_UNREACHABLE) from None
        raw = reply.body
        try:
            value = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            raise CliError(f"the agent answered {reply.status} with a body that is not JSON",
                           EXIT_FAILED) from None
        if reply.status >= 400:
            message = (value or {}).get("error", {}).get("message", raw.decode(errors="replace"))
            raise CliError(f"{message} (HTTP {reply.status})",
                           exit_code_for_status(reply.status))
        return value
