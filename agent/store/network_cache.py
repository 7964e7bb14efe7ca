"""The networks last seen in etcd, kept in the state directory (`networks.json`).

Owns: that one file, rewritten atomically whenever the watched view changes, and read at
start, so a restarted agent keeps its data plane while etcd is away (it never flushes the
kernel because a store is unreachable).

Rules: a damaged file stops start-up with a message naming it; a failed write (full disk)
leaves the previous file and raises `StateWriteError` naming it.

May import: agent.state_files, agent.errors, the standard library.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.state_files import StateReadError, read_json, write_json


@dataclass
class NetworkCache:
    """Network records by name (their etcd JSON), persisted under `state_dir`."""

    state_dir: Path
    networks: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return self.state_dir / "networks.json"

    @classmethod
    def load(cls, state_dir: Path) -> NetworkCache:
        networks = read_json(state_dir / "networks.json", default={})
        if not isinstance(networks, dict):
            raise StateReadError(f"{state_dir / 'networks.json'}: expected a JSON object")
        return cls(state_dir, networks)

    def save(self, networks: dict[str, dict[str, Any]]) -> None:
        """Persist `networks` if they differ from what the file holds (or there is no file)."""
        if networks != self.networks or not self.path.exists():
            write_json(self.path, networks)
            self.networks = networks
