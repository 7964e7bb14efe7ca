"""Helpers for tests that run real `GossipNode`s on loopback: start/kill a node, read its view
(waiting on a condition is tests.polling.wait_until)."""

from __future__ import annotations

import trio

from gossip.node import GossipNode
from gossip.wire import Addr, MemberState
from tests.polling import wait_until


async def start_node(nursery: trio.Nursery, node: GossipNode) -> tuple[Addr, trio.CancelScope]:
    """Run `node` in `nursery`; cancelling the returned scope kills it (no leave)."""
    scope = trio.CancelScope()

    async def runner(task_status: trio.TaskStatus[Addr] = trio.TASK_STATUS_IGNORED) -> None:
        with scope:
            await node.run(task_status=task_status)

    addr: Addr = await nursery.start(runner)
    return addr, scope


async def form_cluster(nursery: trio.Nursery, nodes: list[GossipNode]) -> list[Addr]:
    """Run `nodes`, join each to the first, wait until everyone sees everyone alive; their
    addresses."""
    addrs = [(await start_node(nursery, node))[0] for node in nodes]
    for node in nodes[1:]:
        assert await node.join([addrs[0]]) == 1
    names = [node.name for node in nodes]
    await wait_until(lambda: all(sees_alive(n, names) for n in nodes), "cluster formed")
    return addrs


def states(node: GossipNode) -> dict[str, MemberState]:
    return {member.name: member.state for member in node.members()}


def sees_alive(node: GossipNode, names: list[str]) -> bool:
    view = states(node)
    return all(view.get(name) == MemberState.ALIVE for name in names)
