"""Sockets born inside another network namespace, used from this one.

Owns: `open_socket_in_netns(netns, family, kind, bind=, listen=)`: a socket created (and
optionally bound, listening) inside
the namespace `netns` (a name under /run/netns or a path such as Docker's or a CNI runtime's
/proc/PID/ns/net or /var/run/netns/...), handed back to the caller. A socket belongs to the
namespace it was created in for its whole life, whichever thread uses it later: this is how one
agent serves 127.0.0.11 inside every endpoint namespace without a process per namespace.
`run_in_netns(netns, work)` runs any short piece of work there (the resolver's two sockets
in one visit; a netlink socket of a sandbox and its interface's index).
`create_netns_at(path)` makes a new namespace, loopback up, bound to a file (as `ip netns
add` does: /run/netns shared, the file bind-mounted) in this process, in about a millisecond;
pyroute2's `netns.create` forks the agent for it (120-150 ms on a loaded machine, most of an
endpoint's creation).

Rules:
- The namespace switch (setns(2), or unshare(2) for a new one) happens on a fresh thread that
  exists only for the visit, so no thread of the agent (trio's worker cache, the netlink
  thread) is ever left in another namespace, whatever fails.
- Errors are `KernelError` naming the namespace and the address.

May import: the standard library, underlay.errors.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import os
import socket
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from underlay.errors import KernelError

CLONE_NEWNET = 0x40000000
MS_BIND = 4096
MS_REC = 16384
MS_SHARED = 1 << 20
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
_IFREQ_FLAGS = struct.Struct("16sH14x")  # struct ifreq: the name, then ifr_flags
NETNS_RUN_DIR = Path("/run/netns")
T = TypeVar("T")
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def netns_path(netns: str) -> Path:
    """The file of a namespace given by name (under /run/netns) or by path."""
    return Path(netns) if "/" in netns else NETNS_RUN_DIR / netns


def open_socket_in_netns(netns: str, family: int, kind: int, *,
                         bind: tuple[str, int] | None = None, listen: int = 0) -> socket.socket:
    """A socket of `family`/`kind` created in `netns`, bound to `bind` there if given, and
    listening with backlog `listen` if that is positive (stream sockets)."""
    try:
        return run_in_netns(netns, lambda: _new_socket(family, kind, bind, listen))
    except KernelError:
        raise
    except OSError as exc:
        where = f" {bind[0]}:{bind[1]}" if bind else ""
        raise KernelError(f"cannot open a socket{where} in namespace {netns}: {exc}",
                          exc.errno) from exc


def run_in_netns(netns: str, work: Callable[[], T]) -> T:
    """`work()` run inside `netns` on a thread made for it (sockets it makes stay there);
    its result, or its exception."""
    return _on_a_thread_of_its_own(f"netns {netns}", lambda: _inside(netns_path(netns), work))


def _on_a_thread_of_its_own(name: str, work: Callable[[], T]) -> T:
    """`work()` run on a fresh thread that ends with it (whatever namespace it moved into);
    its result, or its exception, here."""
    result: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            result.append(work())
        except BaseException as exc:  # reported to the caller below
            failure.append(exc)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


def create_netns_at(path: Path) -> None:
    """A new network namespace with loopback up, kept by a bind mount on `path` (a file made
    here, in a directory made a shared mount as `ip netns` does, so other mount namespaces
    see it). FileExistsError if `path` exists; on any failure nothing is left behind."""
    directory = bytes(path.parent)
    path.parent.mkdir(mode=0o755, exist_ok=True)
    shared = _libc.mount(b"", directory, b"none", MS_SHARED | MS_REC, None) == 0
    if not shared:  # not a mount point yet: bind it onto itself, then share it
        shared = _libc.mount(directory, directory, b"none", MS_BIND | MS_REC, None) == 0 \
            and _libc.mount(b"", directory, b"none", MS_SHARED | MS_REC, None) == 0
    if not shared:
        err = ctypes.get_errno()
        raise OSError(err, f"cannot share {path.parent}: {os.strerror(err)}")
    os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0))

    def make() -> None:  # on a thread of its own: unshare moves only it, and it ends here
        if _libc.unshare(CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"unshare a network namespace: {os.strerror(err)}")
        if _libc.mount(b"/proc/thread-self/ns/net", bytes(path), b"none", MS_BIND, None) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"bind the namespace on {path}: {os.strerror(err)}")
        _loopback_up()

    try:
        _on_a_thread_of_its_own(f"netns {path.name}", make)
    except BaseException:
        _libc.umount2(bytes(path), 2)  # MNT_DETACH; EINVAL when it was never mounted
        path.unlink(missing_ok=True)
        raise


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        answer = fcntl.ioctl(sock, SIOCGIFFLAGS, _IFREQ_FLAGS.pack(b"lo", 0))
        flags = _IFREQ_FLAGS.unpack(answer)[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, _IFREQ_FLAGS.pack(b"lo", flags | IFF_UP))


def _new_socket(family: int, kind: int, bind: tuple[str, int] | None,
                listen: int) -> socket.socket:
    sock = socket.socket(family, kind)
    try:
        if bind is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(bind)
        if listen > 0:
            sock.listen(listen)
    except BaseException:
        sock.close()
        raise
    return sock


def _inside(path: Path, work: Callable[[], T]) -> T:
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise KernelError(f"namespace {path} cannot be opened: {exc.strerror}",
                              exc.errno) from None
        try:
            _setns(target, path)
            try:
                return work()
            finally:
                _setns(own, Path("/proc/thread-self/ns/net"))
        finally:
            os.close(target)
    finally:
        os.close(own)


def _setns(fd: int, path: Path) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise KernelError(f"setns into {path} failed: {os.strerror(err)}", err)
