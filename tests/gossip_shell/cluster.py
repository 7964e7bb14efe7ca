"""Helpers for tests that run real `GossipNode`s on loopback: start/kill a node, wait for a
condition with a deadline."""

from __future__ import annotations

from collections.abc import Callable

import trio

from gossip.node import GossipNode
from gossip.wire import Addr, MemberState

POLL_S = 0.02


async def wait_for(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> float:
    """Poll `condition` until it holds (returns the seconds it took) or fail naming `what`."""
    start = trio.current_time()
    with trio.move_on_after(timeout):
        while not condition():
            await trio.sleep(POLL_S)
        return trio.current_time() - start
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


async def start_node(nursery: trio.Nursery, node: GossipNode) -> tuple[Addr, trio.CancelScope]:
    """Run `node` in `nursery`; cancelling the returned scope kills it (no leave)."""
    scope = trio.CancelScope()

    async def runner(task_status: trio.TaskStatus[Addr] = trio.TASK_STATUS_IGNORED) -> None:
        with scope:
            await node.run(task_status=task_status)

    addr: Addr = await nursery.start(runner)
    return addr, scope


def states(node: GossipNode) -> dict[str, MemberState]:
    return {member.name: member.state for member in node.members()}


def sees_alive(node: GossipNode, names: list[str]) -> bool:
    view = states(node)
    return all(view.get(name) == MemberState.ALIVE for name in names)
