"""`vxmesh ports [PORT/PROTO]`: the host's listening sockets, their processes and containers.

Owns: `port_rows(claim, container_of_pid)`: every TCP listener and bound UDP socket of the
agent's network namespace (the host's: host-mode containers bind there), the processes
holding each one, and the container each process runs in (the Docker front door names it;
None when it is in none). With a claim, only the sockets overlapping it (`80/tcp` also
matches `10.0.0.1:80/tcp` and `[::]:80/tcp`).

Rules: read-only and blocking (sock_diag, /proc): callers run it in a worker thread.

May import: underlay (ports, endpoints_model), the standard library.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from underlay import ports
from underlay.endpoints_model import PortClaim, socket_holding


def port_rows(claim: PortClaim | None,
              container_of_pid: Callable[[int], str | None]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for sock in ports.listening_sockets(None):
        if claim is not None and socket_holding(claim, [sock]) is None:
            continue
        owners: list[ports.SocketOwner | None] = [*ports.socket_owners(sock.inode)] or [None]
        for owner in owners:
            rows.append({"proto": sock.proto, "address": sock.address, "port": sock.port,
                         "pid": owner.pid if owner else None,
                         "program": owner.program if owner else None,
                         "container": container_of_pid(owner.pid) if owner else None})
    rows.sort(key=lambda r: (r["proto"], r["port"], r["address"], r["pid"] or 0))
    return rows
