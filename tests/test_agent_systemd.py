"""agent.runtime.systemd: sd_notify datagrams reach $NOTIFY_SOCKET; watchdog pings at half
the timeout."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import trio
import trio.testing

from agent.runtime.systemd import SystemdNotifier, run_watchdog


def _receiver(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    return sock


def _drain(sock: socket.socket) -> list[str]:
    out = []
    for _ in range(10_000):  # a notify socket holds far fewer
        try:
            out.append(sock.recv(4096).decode())
        except BlockingIOError:
            return out
    raise AssertionError("the notify socket never ran dry")


def test_ready_status_stopping_reach_the_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    with _receiver(path) as sock:
        notifier = SystemdNotifier({"NOTIFY_SOCKET": path})
        assert notifier.ready("3 members")
        assert notifier.stopping()
        assert _drain(sock) == ["READY=1\nSTATUS=3 members", "STOPPING=1"]


def test_abstract_socket_address() -> None:
    name = f"vxmesh-test-{os.getpid()}"
    with _receiver("\0" + name) as sock:
        assert SystemdNotifier({"NOTIFY_SOCKET": "@" + name}).notify("READY=1")
        assert _drain(sock) == ["READY=1"]


def test_without_systemd_everything_is_a_quiet_no_op() -> None:
    notifier = SystemdNotifier({})
    assert not notifier.enabled
    assert not notifier.ready()
    assert notifier.watchdog_interval() is None
    broken = SystemdNotifier({"NOTIFY_SOCKET": "/nonexistent/notify"})
    assert not broken.ready()  # logged once, never raised


async def test_watchdog_pings_at_half_the_timeout_only_while_healthy(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    path = str(tmp_path / "notify")
    healthy = [True]
    with _receiver(path) as sock:
        notifier = SystemdNotifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000",
                                    "WATCHDOG_PID": str(os.getpid())})
        assert notifier.watchdog_interval() == 1.0
        async with trio.open_nursery() as nursery:
            await nursery.start(run_watchdog, notifier, lambda: healthy[0])
            await trio.sleep(4.5)
            healthy[0] = False
            await trio.sleep(3)
            nursery.cancel_scope.cancel()
        assert _drain(sock) == ["WATCHDOG=1"] * 5
    other = SystemdNotifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000",
                             "WATCHDOG_PID": "1"})
    assert other.watchdog_interval() is None  # the watchdog is meant for another process
