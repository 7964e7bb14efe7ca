"""The endpoints this host owns, as the agent remembers them across restarts.

Owns: `EndpointRecord` records (name, network, mode, addresses, namespace, host-side interface,
published and claimed ports, creation time) and their file `<state_dir>/endpoints.json`,
rewritten atomically on every change, so a kill -9 never loses or tears one. The networks
last seen in etcd are kept alongside (`networks.json`), so a restarted agent keeps the data
plane while etcd is away.

Rules: a record is written to disk before the API answers; a failed write (full disk) leaves
the previous file and raises `StateWriteError` naming it. Reading a damaged file stops
start-up with a message naming it (never silently forgets endpoints).

May import: agent.state_files, agent.errors, the standard library.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agent.state_files import StateReadError, read_json, write_json


@dataclass(frozen=True)
class EndpointRecord:
    """One endpoint of this host."""

    name: str
    network: str
    mode: str
    ip: str | None
    mac: str | None
    netns: str | None
    host_ifname: str | None
    created_at: float
    publish: tuple[str, ...] = ()
    ports: tuple[str, ...] = ()
    prefixlen: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "publish": list(self.publish), "ports": list(self.ports)}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> EndpointRecord:
        return cls(**{**raw, "publish": tuple(raw.get("publish", ())),
                      "ports": tuple(raw.get("ports", ()))})


@dataclass
class LocalState:
    """The local endpoints plus the last known networks, persisted in the state directory."""

    state_dir: Path
    endpoints: dict[str, EndpointRecord] = field(default_factory=dict)
    networks: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def endpoints_path(self) -> Path:
        return self.state_dir / "endpoints.json"

    @property
    def networks_path(self) -> Path:
        return self.state_dir / "networks.json"

    @classmethod
    def load(cls, state_dir: Path) -> LocalState:
        state = cls(state_dir)
        raw = read_json(state.endpoints_path, default=[])
        try:
            for item in raw:
                record = EndpointRecord.from_json(item)
                state.endpoints[record.name] = record
        except (TypeError, KeyError) as exc:
            raise StateReadError(f"{state.endpoints_path}: malformed record ({exc})") from None
        networks = read_json(state.networks_path, default={})
        if not isinstance(networks, dict):
            raise StateReadError(f"{state.networks_path}: expected an object")
        state.networks = networks
        return state

    def put(self, record: EndpointRecord) -> None:
        """Add or replace a record, on disk first."""
        updated = {**self.endpoints, record.name: record}
        write_json(self.endpoints_path, [r.to_json() for r in updated.values()])
        self.endpoints = updated

    def remove(self, name: str) -> None:
        updated = {k: v for k, v in self.endpoints.items() if k != name}
        write_json(self.endpoints_path, [r.to_json() for r in updated.values()])
        self.endpoints = updated

    def save_networks(self, networks: dict[str, dict[str, Any]]) -> None:
        if networks != self.networks:
            write_json(self.networks_path, networks)
            self.networks = networks
