"""The one polling helper of the test suite: wait, bounded in time, for a condition to hold.

`wait_until(condition, what, timeout)` re-checks `condition` (a function, or a coroutine
function) every `interval` seconds of trio time (virtual under autojump_clock) and returns the
seconds it took, or fails the test naming `what` after `timeout`. Synchronous end-to-end tests
wait through the lab's own `Lab.wait_for`, which is the same rule on the wall clock.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable

import trio


async def wait_until(condition: Callable[[], bool | Awaitable[bool]], what: str,
                     timeout: float = 10.0, *, interval: float = 0.02) -> float:
    """Poll `condition` until it holds (returns the seconds it took) or fail naming `what`."""
    start = trio.current_time()
    with trio.move_on_after(timeout):
        while True:
            result = condition()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return trio.current_time() - start
            await trio.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
