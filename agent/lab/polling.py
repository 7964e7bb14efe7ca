"""Waiting in the lab for something to become true: poll a condition against a deadline.

One loop for every lab (namespaces, virtual machines): it is bounded in time, returns how
long the wait took (the figure the walk-throughs print), and raises the caller's own error
type at the deadline. Errors the caller names as transient count as "not yet".
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

from agent.errors import AgentError


def poll_until(condition: Callable[[], bool], what: str, timeout: float, interval: float, *,
               error: type[AgentError],
               not_yet: tuple[type[Exception], ...] = ()) -> float:
    """Seconds until `condition()` holds; `error` naming `what` after `timeout` seconds."""
    start = time.monotonic()
    while True:
        with contextlib.suppress(*not_yet):
            if condition():
                return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise error(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(interval)
