"""Waiting for a namespace lab's links to carry traffic (shared by the tests and bench/modes).

A veth is `up` at once, but the kernel's link watcher activates its queue (and a bridge
port's forwarding state) later, seconds later on a busy machine; frames sent before are lost.
"""

from __future__ import annotations

from functools import partial

from underlay import links
from underlay.kernel import NetlinkThread


def wait_links_operational(netns: str, names: list[str] | None = None, *,
                           timeout: float = 20.0) -> None:
    """Wait until `names` (default: every link but lo) in `netns` are operational, or raise."""
    nl = NetlinkThread(netns)
    try:
        wanted = names if names is not None else [
            info.name for info in nl.call_blocking(links.list_links) if info.name != "lo"]
        for name in wanted:
            if not nl.call_blocking(partial(links.wait_operational, name=name, timeout=timeout)):
                raise TimeoutError(f"{netns}: link {name} not operational after {timeout} s")
    finally:
        nl.close()
