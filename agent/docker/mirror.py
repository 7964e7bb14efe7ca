"""Every vxmesh network as a network object of the local dockerd, created and removed with it.

Docker's `local` scope gives every daemon its own network objects, so a network made once
(by `vxmesh network create`, or by `docker network create -d vxmesh` on any host) must be made
in each daemon: this service does that through the Engine API, so `docker run --network blue`
works on every host with no per-host step.

Owns: `plan_mirror` (pure: which Docker networks to create and which to remove) and
`run_network_mirror` (the trio shell: re-plans whenever the vxmesh networks change, and every
`interval` seconds while something is left to do or dockerd is away).

Rules:
- A vxmesh overlay network is created in Docker under its own name, with driver and IPAM
  driver `vxmesh`, its subnet and gateway (and, with a subnet6, `--ipv6` with its IPv6 subnet
  and gateway), the driver option `io.vxmesh.network=NAME` and the
  label `io.vxmesh.network=NAME`. A Docker network of another driver holding that name is left
  alone (logged once).
- Only a Docker network the driver has bound to a vxmesh network that no longer exists is
  removed (a network Docker is creating right now is never removed); one with containers
  attached is retried later.

May import: agent.docker (driver, engine), agent.store.schema, trio, the standard library.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial

import trio

from agent.docker.engine import MANAGED_LABEL, DockerNetwork, EngineClient, EngineError
from agent.store.schema import Network

log = logging.getLogger("vxmesh.docker")

DRIVER = "vxmesh"


@dataclass(frozen=True)
class MirrorPlan:
    create: tuple[Network, ...]
    remove: tuple[DockerNetwork, ...]
    blocked: tuple[str, ...]  # vxmesh names held by a Docker network of another driver


@dataclass(frozen=True)
class MirrorStatistics:
    created: int
    removed: int
    failures: int
    last_error: str


def plan_mirror(networks: Mapping[str, Network], docker: list[DockerNetwork],
                bindings: Mapping[str, str]) -> MirrorPlan:
    """What to change in Docker so it holds one `vxmesh` network per vxmesh overlay network."""
    ours = [d for d in docker if d.driver == DRIVER]
    subnets = {s for d in ours for s in d.subnets}
    names = {d.name: d for d in docker}
    create, blocked = [], []
    for network in sorted(networks.values(), key=lambda n: n.name):
        if network.mode != "overlay" or str(network.subnet) in subnets:
            continue
        holder = names.get(network.name)
        if holder is not None:
            blocked.append(network.name)
            continue
        create.append(network)
    remove = [d for d in ours if d.id in bindings and bindings[d.id] not in networks]
    return MirrorPlan(tuple(create), tuple(remove), tuple(blocked))


class NetworkMirror:
    """The shell around `plan_mirror`."""

    def __init__(self, engine: EngineClient, networks: Callable[[], Mapping[str, Network]],
                 bindings: Callable[[], Mapping[str, str]],
                 wait_changed: Callable[[int], Awaitable[int]], *, interval: float = 5.0
                 ) -> None:
        self.engine = engine
        self.networks = networks
        self.bindings = bindings
        self.wait_changed = wait_changed
        self.interval = interval
        self._created = 0
        self._removed = 0
        self._failures = 0
        self._last_error = ""
        self._blocked_logged: set[str] = set()

    def statistics(self) -> MirrorStatistics:
        return MirrorStatistics(self._created, self._removed, self._failures, self._last_error)

    async def sync_once(self) -> bool:
        """One pass; True when Docker holds exactly what it should."""
        docker = await trio.to_thread.run_sync(self.engine.networks)
        plan = plan_mirror(self.networks(), docker, self.bindings())
        for name in plan.blocked:
            if name not in self._blocked_logged:
                self._blocked_logged.add(name)
                log.error("docker: network name %r is taken by a non-vxmesh Docker network; "
                          "vxmesh network %s is not mirrored", name, name)
        done = True
        for network in plan.create:
            try:
                await trio.to_thread.run_sync(partial(
                    self.engine.create_network, network.name, driver=DRIVER,
                    subnet=str(network.subnet), gateway=str(network.gateway),
                    labels={MANAGED_LABEL: network.name},
                    options={"io.vxmesh.network": network.name},
                    ipv6=None if network.subnet6 is None
                    else (str(network.subnet6), str(network.gateway6))))
                self._created += 1
                log.info("docker: created network %s (%s) in the local dockerd", network.name,
                         network.subnet)
            except EngineError as exc:
                done = self._failed(exc)
        for stale in plan.remove:
            try:
                await trio.to_thread.run_sync(self.engine.remove_network, stale.id)
                self._removed += 1
                log.info("docker: removed network %s (its vxmesh network is gone)", stale.name)
            except EngineError as exc:
                done = self._failed(exc)
        return done

    def _failed(self, exc: EngineError) -> bool:
        self._failures += 1
        if str(exc) != self._last_error:
            log.warning("docker mirror: %s (retrying)", exc)
        self._last_error = str(exc)
        return False

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        task_status.started()
        version = -1
        while True:
            try:
                in_step = await self.sync_once()
            except EngineError as exc:
                in_step = self._failed(exc)
            with trio.move_on_after(self.interval if not in_step else 3600.0):
                version = await self.wait_changed(version)
