"""The kernel adapter's core: one pyroute2 `IPRoute` per network namespace, owned by one thread.

Rules:
- This package (underlay/) is the only importer of pyroute2 in vxmesh.
- An `IPRoute` is created, used and closed by its own dedicated thread; trio code awaits
  `NetlinkThread.call(fn)`, which runs `fn(ipr)` on that thread and hands back the result or
  the exception. Calls on one namespace are serialised in submission order.
- A namespace (a name under /var/run/netns, or a path such as a runtime's `/run/netns/...` or
  `/proc/PID/ns/net`) is entered by the dedicated thread itself with setns(2), which moves
  that thread only, before it opens its `IPRoute`: no helper process is forked (pyroute2's
  `IPRoute(netns=...)` forks one per socket, tens of milliseconds in a large process, on
  every CNI ADD). A namespace that does not exist raises; none is ever created here.
- pyroute2 still forks helpers to create or remove named namespaces (`underlay.links`) and
  stops them with SIGTERM; a helper inheriting a Python SIGTERM handler (the agent's graceful
  leave, a benchmark's clean-up) would run our handler instead of dying and stall each such
  operation by seconds. Importing this module makes those helpers reset the handlers.
- Work running on the thread may call `call_blocking` of the same thread: it runs in place
  (so a whole multi-step operation can be handed to the thread in one hop).
- Cancellation: a cancelled `call` stops waiting, but a netlink request already handed to the
  thread still runs to completion (netlink requests are not interruptible).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno as errno_codes
import os
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import outcome
import trio
from pyroute2 import config as pyroute2_config
from pyroute2.iproute import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from underlay.errors import KernelError
from underlay.netns_exec import netns_path

T = TypeVar("T")

_STOP = object()

pyroute2_config.disable_mp_signal = True
# pyroute2 forks a child to create a namespace or open a socket in one and gives up when the
# child has not answered in 2 s; on a slow machine (a TCG VM at load 15) a fork of the agent
# took longer and `endpoint create` failed. A child that answers late is not a failure.
pyroute2_config.default_communicate_timeout = 30
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def enter_netns(netns: str) -> None:
    """Move the calling thread (only) into network namespace `netns` (a name or a path)."""
    path = netns if netns.startswith("/") else netns_path(netns)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"setns({path}): {os.strerror(code)}")
    finally:
        os.close(fd)


class NetlinkThread:
    """A dedicated thread holding the `IPRoute` of one network namespace (None: our own)."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self._requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._ready = threading.Event()
        self._open_error: BaseException | None = None
        self._ipr: IPRoute | None = None
        self._thread = threading.Thread(
            target=self._serve, name=f"netlink[{netns or 'host'}]", daemon=True
        )
        self._thread.start()
        self._ready.wait()
        if self._open_error is not None:
            raise KernelError(
                f"cannot open netlink in namespace {netns!r}: {self._open_error}",
                getattr(self._open_error, "code", None) or getattr(self._open_error, "errno", None),
            ) from self._open_error

    def _serve(self) -> None:
        try:
            if self.netns:
                enter_netns(self.netns)  # this thread is the namespace's for its whole life
            ipr = self._ipr = IPRoute()
        except BaseException as exc:  # reported to the constructor
            self._open_error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            while True:
                item = self._requests.get()
                if item is _STOP:
                    return
                fn, deliver = item
                deliver(outcome.capture(fn, ipr))
        finally:
            ipr.close()

    async def call(self, fn: Callable[[IPRoute], T]) -> T:
        """Run `fn(ipr)` on this namespace's thread and return its result."""
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()
        box: list[outcome.Outcome[T]] = []

        def deliver(result: outcome.Outcome[T]) -> None:
            def finish() -> None:
                box.append(result)
                done.set()

            # If the trio run that asked is gone, nobody is waiting for the result.
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(finish)

        self._requests.put((fn, deliver))
        await done.wait()
        return box[0].unwrap()

    def call_blocking(self, fn: Callable[[IPRoute], T]) -> T:
        """Run `fn(ipr)` on this namespace's thread from synchronous code (tools, benchmarks,
        and work already running on this thread: then `fn` runs at once, in place)."""
        if threading.current_thread() is self._thread:
            assert self._ipr is not None
            return fn(self._ipr)
        done = threading.Event()
        box: list[outcome.Outcome[T]] = []

        def deliver(result: outcome.Outcome[T]) -> None:
            box.append(result)
            done.set()

        self._requests.put((fn, deliver))
        done.wait()
        return box[0].unwrap()

    def close(self) -> None:
        """Stop the thread and close its socket; idempotent."""
        if self._thread.is_alive():
            self._requests.put(_STOP)
            self._thread.join(timeout=5)


def netlink_errno(exc: BaseException) -> int | None:
    """The errno a netlink failure carries, or None."""
    if isinstance(exc, NetlinkError):
        return int(exc.code)
    if isinstance(exc, KernelError):
        return exc.errno
    return None


def is_missing(exc: BaseException) -> bool:
    """True when a delete failed only because the object is already gone (success for us)."""
    return netlink_errno(exc) in (errno_codes.ENOENT, errno_codes.ENODEV, errno_codes.ESRCH)
