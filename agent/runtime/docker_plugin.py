"""The Docker front door's place in the agent: its `Mesh` and its phase.

Owns: `DockerMesh`, the `agent.docker.driver.Mesh` made of the agent's own operations (known
networks, network create/delete through `Control`, the address pools, the attach operation
with the veth handed back to Docker), and `run_docker`, the phase that serves the plugin
socket, runs the driver's background work, cleans up endpoints whose containers went while
the agent was away, and mirrors vxmesh networks into the local dockerd. Nothing here knows
Docker's wire format (agent.docker does).

Rules: with `[docker] enabled = false` this module is not even imported (the phase in
agent.runtime.process reports started and does nothing).

May import: agent.*, trio, the standard library.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass

import trio

from agent.api.attach import AttachRequest, HandBackVeth
from agent.api.routes import NetworkCreateRequest
from agent.docker import protocol as p
from agent.docker.driver import Attachment, VxmeshDockerDriver
from agent.docker.engine import EngineClient
from agent.docker.mirror import NetworkMirror
from agent.docker.plugin import PluginHandler, serve_plugin
from agent.runtime.compose import Components
from agent.runtime.control import Control
from agent.store.errors import NetworkNotFound, StoreUnavailable
from agent.store.schema import Network
from agent.store.service import AddressPool

log = logging.getLogger("vxmesh.docker")

STATE_FILE = "docker.json"


@dataclass(frozen=True)
class DockerMesh:
    """`agent.docker.driver.Mesh` over the running agent."""

    c: Components
    control: Control

    @property
    def node(self) -> str:
        return self.c.node

    def networks(self) -> Mapping[str, Network]:
        return dict(self.c.networks.items())

    async def create_network(self, name: str, subnet: str, *, vni: int | None,
                             mtu: int | None, subnet6: str | None = None) -> Network:
        await self.control.create_network(NetworkCreateRequest(name, subnet, vni, mtu,
                                                               subnet6=subnet6))
        created = self.c.networks.get(name)
        if created is None:
            raise NetworkNotFound(name)
        return created

    async def delete_network(self, name: str) -> None:
        await self.control.delete_network(name)

    async def _pool(self, network: str, version: int = 4) -> AddressPool:
        known = self.c.networks.get(network)
        if known is None:
            raise NetworkNotFound(network)
        return await self.c.pools.get(known, version)

    async def reserve_address(self, network: str, handle: str,
                              address: p.IPAddress | None, version: int = 4) -> p.IPAddress:
        pool = await self._pool(network, address.version if address is not None else version)
        if address is not None:
            return await pool.allocate_address(handle, address)
        chosen = await pool.allocate(handle)
        if not self.c.store.statistics().degraded:
            with contextlib.suppress(StoreUnavailable):  # gone now: flushed later
                chosen = await pool.confirm(handle)
        return chosen

    async def release_address(self, network: str, address: p.IPAddress) -> None:
        (await self._pool(network, address.version)).release(address)

    async def attach(self, name: str, network: str, address: p.IPInterface, mac: str,
                     labels: tuple[tuple[str, str], ...],
                     address6: p.IPInterface | None = None) -> Attachment:
        attached = await self.control.attach(AttachRequest(
            name=name, network=network, sandbox=HandBackVeth(), ip=str(address.ip), mac=mac,
            labels=labels, ip6=None if address6 is None else str(address6.ip)))
        assert attached.handed_back is not None  # HandBackVeth always hands one back
        return Attachment(interface=attached.handed_back, mtu=attached.mtu or 0)

    async def detach(self, name: str) -> bool:
        return await self.control.detach(name)

    async def set_aliases(self, name: str, aliases: tuple[str, ...]) -> None:
        await self.control.set_aliases(name, aliases)


def _watched_networks(c: Components) -> Mapping[str, Network]:
    """The store's view once it has listed (what `wait_networks_changed` reports on), else
    the copy the agent started with."""
    view = c.store.network_view
    return dict(view.snapshot()) if view.revision else dict(c.networks.items())


async def run_docker(c: Components, control: Control, *,
                     task_status: trio.TaskStatus[PluginHandler | None] =
                     trio.TASK_STATUS_IGNORED) -> None:
    """Docker's plugin socket and the network mirror (started only with `[docker] enabled`,
    by agent.runtime.process.run_docker)."""
    config = c.config.docker
    engine = EngineClient(str(config.engine_socket))
    driver = VxmeshDockerDriver(DockerMesh(c, control), engine,
                                c.config.node.state_dir / STATE_FILE, rng=random.Random())
    handler = PluginHandler(driver)
    mirror = NetworkMirror(engine, lambda: _watched_networks(c),
                           lambda: dict(driver.state.networks), c.store.wait_networks_changed)
    async with trio.open_nursery() as nursery:
        await nursery.start(driver.run)
        await nursery.start(serve_plugin, handler, config.plugin_socket)
        await nursery.start(driver.run_clean_up)
        await nursery.start(mirror.run)
        log.info("docker plugin on %s (dockerd at %s)", config.plugin_socket,
                 config.engine_socket)
        task_status.started(handler)
