"""Who holds a port in a namespace: the kernel's socket diagnostics, and the owning process.

Owns: listing bound TCP listeners and UDP sockets of a network namespace through
NETLINK_SOCK_DIAG (pyroute2's DiagSocket, opened inside that namespace; no text parsing), and
finding the processes that hold a socket inode (the /proc/<pid>/fd links).

Rules: read-only; a process that exits while we look is skipped. Namespaces are opened,
never created (flags=0).
May import: pyroute2, the standard library, underlay.endpoints_model, underlay.errors,
underlay.links.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from pyroute2.netlink import NETLINK_SOCK_DIAG
from pyroute2.netlink.diag import SS_ALL, DiagSocket, MarshalDiag
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.nlsocket import NetlinkSocket

from underlay.endpoints_model import ListeningSocket
from underlay.errors import KernelError
from underlay.links import open_netns_path

TCP_LISTEN = 10


class _NamespaceDiagSocket(DiagSocket):
    """DiagSocket whose socket is created inside a named namespace."""

    def __init__(self, netns: str | None) -> None:
        NetlinkSocket.__init__(self, NETLINK_SOCK_DIAG, netns=netns, flags=0)
        self.set_marshal(MarshalDiag())


@dataclass(frozen=True)
class SocketOwner:
    """A process holding a socket."""

    pid: int
    program: str


def listening_sockets(netns: str | None) -> list[ListeningSocket]:
    """TCP sockets in LISTEN and every bound UDP socket of `netns` (None: ours), v4 and v6."""
    if netns is not None:
        open_netns_path(netns)
    found: list[ListeningSocket] = []
    try:
        with _NamespaceDiagSocket(netns) as diag:
            diag.bind()
            for family in (socket.AF_INET, socket.AF_INET6):
                for proto, states in (("tcp", 1 << TCP_LISTEN), ("udp", SS_ALL)):
                    number = socket.IPPROTO_TCP if proto == "tcp" else socket.IPPROTO_UDP
                    for msg in diag.get_sock_stats(family=family, protocol=number,
                                                   states=states):
                        if msg["idiag_sport"] == 0:
                            continue
                        found.append(ListeningSocket(
                            proto=proto, address=str(msg["idiag_src"]),
                            port=int(msg["idiag_sport"]), inode=int(msg["idiag_inode"]),
                            v6only=bool(msg.get_attr("INET_DIAG_SKV6ONLY"))))
    except NetlinkError as exc:
        raise KernelError(f"socket diagnostics in {netns or 'host'}: {exc}", exc.code) from exc
    return found


def socket_owners(inode: int) -> list[SocketOwner]:
    """Processes with a file descriptor on socket `inode` (by scanning /proc/<pid>/fd)."""
    target = f"socket:[{inode}]"
    owners = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and _holds(entry.name, target):
            try:
                with open(f"/proc/{entry.name}/comm") as comm:
                    program = comm.read().strip()
            except OSError:
                continue  # exited meanwhile
            owners.append(SocketOwner(int(entry.name), program))
    return owners


def _holds(pid: str, target: str) -> bool:
    """True when process `pid` has a descriptor on `target`; fds closing meanwhile are skipped."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False  # exited, or not ours to read
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                return True
        except OSError:
            continue
    return False
