"""The shell around `overlay.liveness.HostLiveness`: ICMP echoes to doubted members' VTEPs.

Owns: one `underlay.echo.EchoSocket` bound to our VTEP, the loop that runs the core's timers,
sends the probes it asks for and feeds it the answers, and the hand-over of its verdict
changes (through `on_change`, which must not block: the gossip link maps them onto the
neighbor table and marks the pipeline dirty).

Rules: the core decides, this only moves packets and time (`trio.current_time()`); `wake()` is
called after the gossip link gave the core new work (a member suspected or failed), so its
first probe leaves at once. When the raw socket cannot be opened (no CAP_NET_RAW) the prober
logs one error and never answers: a failed member's host then counts as silent and is
withdrawn on detection, as without this feature.

May import: trio, overlay.liveness, underlay.echo, the standard library.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from overlay.liveness import HostLiveness
from underlay.echo import EchoSocket, EchoStatistics

log = logging.getLogger("vxmesh.liveness")


class HostProber:
    """Runs one `HostLiveness` core on a raw ICMP socket."""

    def __init__(self, liveness: HostLiveness, source: str, *,
                 on_change: Callable[[], None]) -> None:
        self.liveness = liveness
        self.source = source
        self.on_change = on_change
        self.echo: EchoSocket | None = None
        self._wake = trio.Event()

    def wake(self) -> None:
        """The core has new work: look at its deadline now (never blocks)."""
        self._wake.set()

    def statistics(self) -> EchoStatistics:
        return self.echo.statistics() if self.echo is not None else EchoStatistics(0, 0, 0, 0)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        try:
            echo = EchoSocket(self.source)
            await echo.bind()
        except OSError as exc:
            log.error("host probes off (every failed member is withdrawn at once): cannot "
                      "open a raw ICMP socket on %s: %s", self.source, exc)
            task_status.started()
            await self._drive(None)
            return
        self.echo = echo
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._receive, echo)
                task_status.started()
                await self._drive(echo)
        finally:
            echo.close()

    async def _drive(self, echo: EchoSocket | None) -> None:
        liveness = self.liveness
        while True:
            with trio.move_on_at(liveness.next_deadline()):
                await self._wake.wait()
            self._wake = trio.Event()
            now = trio.current_time()
            if now >= liveness.next_deadline():
                liveness.handle_timeout(now)
            for vtep in liveness.probes_to_send():
                if echo is not None:
                    await echo.send(vtep)
            self.on_change()

    async def _receive(self, echo: EchoSocket) -> None:
        while True:
            address = await echo.receive()
            self.liveness.probe_answered(address, trio.current_time())
            self.on_change()
            self.wake()  # the verdict may have moved its deadline
