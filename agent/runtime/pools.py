"""Address pools of this host, one per network, opened on first use and flushed in background.

Owns: `AddressPools`: the pool cache (one pool, hence one flusher, per network and address
family: a network with an IPv6 subnet has a second pool), and the service that runs the
flushers and opens, while etcd answers, the pools of the networks this host has endpoints in
(so endpoints can still be made from our blocks if etcd goes away).

Rules: a pool opened by a request is handed to the service through a channel (its flusher
starts there), so no request needs a nursery; opening retries every `retry_interval`.

May import: agent.store, trio, the standard library.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import trio

from agent.errors import AgentError
from agent.runtime.networks import KnownNetworks
from agent.store.schema import Network
from agent.store.service import AddressPool, Store

log = logging.getLogger("vxmesh.agent")


class AddressPools:
    """This host's address pools by network name."""

    def __init__(self, store: Store, node: str) -> None:
        self._store = store
        self._node = node
        self._pools: dict[tuple[str, int], AddressPool] = {}
        self._lock = trio.Lock()
        self._opened, self._to_flush = trio.open_memory_channel[AddressPool](math.inf)

    async def get(self, network: Network, version: int = 4) -> AddressPool:
        """The pool of `network` (`version` 6: of its IPv6 subnet), opened (from etcd) the
        first time."""
        async with self._lock:
            pool = self._pools.get((network.name, version))
            if pool is None:
                pool = await self._store.open_address_pool(network.name, self._node,
                                                           version=version)
                self._pools[(network.name, version)] = pool
                self._opened.send_nowait(pool)
            return pool

    async def run(self, networks: KnownNetworks, wanted: Callable[[], set[str]],
                  retry_interval: float, *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run every pool's flusher; open the pools of the `wanted` networks in background."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._open_wanted, networks, wanted, retry_interval)
            task_status.started()
            async for pool in self._to_flush:
                nursery.start_soon(pool.run_flusher)

    async def _open_wanted(self, networks: KnownNetworks, wanted: Callable[[], set[str]],
                           retry_interval: float) -> None:
        names = wanted()
        while names:
            for name in sorted(names):
                network = networks.get(name)
                if network is None:
                    continue
                try:
                    await self.get(network)
                    if network.subnet6 is not None and network.driver == "overlay":
                        await self.get(network, 6)
                    names.discard(name)
                except AgentError as exc:
                    log.debug("address pool of %s not open yet: %s", name, exc)
            await trio.sleep(retry_interval)
