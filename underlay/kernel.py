"""The kernel adapter's core: one pyroute2 `IPRoute` per network namespace, owned by one thread.

Rules:
- This package (underlay/) is the only importer of pyroute2 in vxmesh.
- An `IPRoute` is created, used and closed by its own dedicated thread; trio code awaits
  `NetlinkThread.call(fn)`, which runs `fn(ipr)` on that thread and hands back the result or
  the exception. Calls on one namespace are serialised in submission order.
- Named namespaces are opened with `flags=0`, so a typo raises instead of silently creating a
  new, empty namespace.
- pyroute2 forks a helper to open a socket in (or create) a named namespace and stops it
  with SIGTERM; a helper inheriting a Python SIGTERM handler (the agent's graceful leave, a
  benchmark's clean-up) would run our handler instead of dying and stall each namespace
  operation by seconds. Importing this module makes those helpers reset the handlers.
- Cancellation: a cancelled `call` stops waiting, but a netlink request already handed to the
  thread still runs to completion (netlink requests are not interruptible).
"""

from __future__ import annotations

import contextlib
import errno as errno_codes
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import outcome
import trio
from pyroute2 import IPRoute
from pyroute2 import config as pyroute2_config
from pyroute2.netlink.exceptions import NetlinkError

from underlay.errors import KernelError

T = TypeVar("T")

_STOP = object()

pyroute2_config.disable_mp_signal = True


class NetlinkThread:
    """A dedicated thread holding the `IPRoute` of one network namespace (None: our own)."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self._requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._ready = threading.Event()
        self._open_error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._serve, name=f"netlink[{netns or 'host'}]", daemon=True
        )
        self._thread.start()
        self._ready.wait()
        if self._open_error is not None:
            raise KernelError(
                f"cannot open netlink in namespace {netns!r}: {self._open_error}",
                getattr(self._open_error, "code", None),
            ) from self._open_error

    def _serve(self) -> None:
        try:
            ipr = IPRoute(netns=self.netns, flags=0) if self.netns else IPRoute()
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
        """Run `fn(ipr)` on this namespace's thread from synchronous code (tools, benchmarks)."""
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
