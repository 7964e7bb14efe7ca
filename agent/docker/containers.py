"""Which Docker container a process belongs to, by name (for `vxmesh ports` and port refusals).

Owns: reading a process's control groups (`/proc/PID/cgroup`) for Docker's container id
(cgroupfs `/docker/<id>`, systemd `docker-<id>.scope`, cgroup v1 or v2), and the container's
name from the Engine API, cached per id (a container's name is kept for its life; a rename
shows after the cache entry of a gone container is dropped).

Rules: a process that is in no container, or whose container Docker does not know (another
runtime, or dockerd away), has no name: None, never an error.

May import: agent.docker.engine, the standard library.
"""

from __future__ import annotations

import re
from pathlib import Path

from agent.docker.engine import EngineClient, EngineError

CONTAINER_CGROUP = re.compile(r"(?:/docker/|/docker-)([0-9a-f]{64})(?:\.scope)?(?:/|$)")


def container_id_of_cgroups(text: str) -> str | None:
    """The Docker container id in the text of `/proc/PID/cgroup`, if any."""
    for line in text.splitlines():
        found = CONTAINER_CGROUP.search(line.split(":", 2)[-1])
        if found:
            return found.group(1)
    return None


def container_id_of_pid(pid: int, proc: Path = Path("/proc")) -> str | None:
    try:
        return container_id_of_cgroups((proc / str(pid) / "cgroup").read_text())
    except OSError:
        return None


class ContainerNames:
    """Container names by process, through one dockerd's Engine API."""

    def __init__(self, engine: EngineClient) -> None:
        self.engine = engine
        self._names: dict[str, str] = {}

    def name_of_container(self, container_id: str) -> str | None:
        known = self._names.get(container_id)
        if known is not None:
            return known
        try:
            found = self.engine.container(container_id)
        except EngineError:
            return None
        if found is None:
            return None
        name = str(found.get("Name", "")).lstrip("/") or container_id[:12]
        self._names[container_id] = name
        return name

    def name_of_pid(self, pid: int) -> str | None:
        """The name of the Docker container process `pid` runs in (blocking: a thread)."""
        container_id = container_id_of_pid(pid)
        return self.name_of_container(container_id) if container_id else None
