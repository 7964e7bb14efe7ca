"""The Docker front door's place in the agent: its `Mesh` and its services.

Owns: `DockerMesh`, the `agent.docker.driver.Mesh` made of the agent's own operations (known
networks, network create/delete, the address pools, the attach operation with the veth handed
back to Docker), and `run_docker`, the phase that serves the plugin socket, runs the driver's
background work, the clean-up of endpoints whose containers went while the agent was away,
and the mirror of vxmesh networks into the local dockerd. Nothing here knows Docker's wire
format (agent.docker does).

Rules: with `[docker] enabled = false` the phase reports started and does nothing.

May import: agent.docker, agent.api, agent.store, agent.config, trio, the standard library.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import trio

from agent.config import DockerConfig
from agent.docker import protocol as p
from agent.docker.driver import Attachment, VxmeshDockerDriver
from agent.docker.engine import EngineClient
from agent.docker.mirror import NetworkMirror
from agent.docker.plugin import PluginHandler, serve_plugin
from agent.store.errors import StoreUnavailable
from agent.store.schema import Network
from agent.store.service import AddressPool

log = logging.getLogger("vxmesh.docker")


@dataclass(frozen=True)
class DockerMesh:
    """`agent.docker.driver.Mesh` over the agent's operations."""

    node: str
    networks: Callable[[], Mapping[str, Network]]
    create: Callable[[str, str, int | None, int | None], Awaitable[Network]]
    delete: Callable[[str], Awaitable[None]]
    pool: Callable[[Network], Awaitable[AddressPool]]
    attach_handed_back: Callable[[str, str, str, str, tuple[tuple[str, str], ...]],
                                 Awaitable[Attachment]]
    detach_endpoint: Callable[[str], Awaitable[bool]]
    degraded: Callable[[], bool]

    async def create_network(self, name: str, subnet: str, *, vni: int | None,
                             mtu: int | None) -> Network:
        return await self.create(name, subnet, vni, mtu)

    async def delete_network(self, name: str) -> None:
        await self.delete(name)

    async def _pool_of(self, network: str) -> AddressPool:
        known = self.networks().get(network)
        if known is None:
            raise StoreUnavailable(f"network {network!r} is not known on this host yet")
        return await self.pool(known)

    async def reserve_address(self, network: str, handle: str,
                              address: p.IPAddress | None) -> p.IPAddress:
        pool = await self._pool_of(network)
        if address is not None:
            return await pool.allocate_address(handle, address)
        chosen = await pool.allocate(handle)
        if not self.degraded():
            with contextlib.suppress(StoreUnavailable):  # gone now: flushed later
                chosen = await pool.confirm(handle)
        return chosen

    async def release_address(self, network: str, address: p.IPAddress) -> None:
        (await self._pool_of(network)).release(address)

    async def attach(self, name: str, network: str, address: p.IPInterface, mac: str,
                     labels: tuple[tuple[str, str], ...]) -> Attachment:
        return await self.attach_handed_back(name, network, str(address.ip), mac, labels)

    async def detach(self, name: str) -> bool:
        return await self.detach_endpoint(name)


async def run_docker(config: DockerConfig, mesh: DockerMesh, *, state_dir_file: str,
                     wait_networks_changed: Callable[[int], Awaitable[int]],
                     rng: random.Random,
                     task_status: trio.TaskStatus[PluginHandler | None] =
                     trio.TASK_STATUS_IGNORED) -> None:
    """Serve Docker's plugin socket and mirror networks into dockerd, until cancelled."""
    if not config.enabled:
        task_status.started(None)
        return
    from pathlib import Path

    engine = EngineClient(str(config.engine_socket))
    driver = VxmeshDockerDriver(mesh, engine, Path(state_dir_file), rng=rng)
    handler = PluginHandler(driver)
    mirror = NetworkMirror(engine, mesh.networks, lambda: dict(driver.state.networks),
                           wait_networks_changed)
    async with trio.open_nursery() as nursery:
        await nursery.start(driver.run)
        await nursery.start(serve_plugin, handler, config.plugin_socket)
        await nursery.start(driver.run_clean_up)
        await nursery.start(mirror.run)
        log.info("docker plugin on %s (dockerd at %s)", config.plugin_socket,
                 config.engine_socket)
        task_status.started(handler)
