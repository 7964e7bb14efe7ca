"""systemd integration: sd_notify over $NOTIFY_SOCKET (READY=1, WATCHDOG=1, STOPPING=1, STATUS=).

Owns: the notify datagram socket and the watchdog ping loop. Without systemd (no
$NOTIFY_SOCKET) every call is a no-op, so the agent runs the same by hand, in the lab and
under systemd.

Rules: READY=1 is sent by the process only after the first full sync; WATCHDOG=1 at half of
$WATCHDOG_USEC, and only while the agent's loop is alive (a hung trio loop stops the pings and
systemd restarts us); a notify failure is logged once, never fatal.

May import: trio, the standard library.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Mapping

import trio

log = logging.getLogger(__name__)


class SystemdNotifier:
    """Sends sd_notify messages to the socket systemd gave us, if any."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]  # abstract namespace
        self.address = address or None
        self.sent: list[str] = []
        self._failed_once = False
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        watchdog_for_us = not pid or pid == str(os.getpid())
        self.watchdog_usec = int(usec) if usec.isdigit() and watchdog_for_us else 0

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *fields: str) -> bool:
        """Send `fields` (e.g. "READY=1", "STATUS=...") in one datagram; True when delivered."""
        message = "\n".join(fields)
        self.sent.append(message)
        if self.address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self.address)
                sock.sendall(message.encode())
        except OSError as exc:
            if not self._failed_once:
                log.warning("sd_notify to %r failed: %s", self.address, exc)
                self._failed_once = True
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, status: str) -> bool:
        return self.notify(f"STATUS={status}")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings (half the systemd timeout), None if not asked."""
        return self.watchdog_usec / 2e6 if self.watchdog_usec else None


async def run_watchdog(notifier: SystemdNotifier, healthy: Callable[[], bool] = lambda: True,
                       *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Ping WATCHDOG=1 at half of WATCHDOG_USEC while `healthy()`; returns at once if unasked."""
    interval = notifier.watchdog_interval()
    task_status.started()
    if interval is None:
        return
    while True:
        if healthy():
            notifier.notify("WATCHDOG=1")
        await trio.sleep(interval)
