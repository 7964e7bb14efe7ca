"""The networks this agent believes exist, kept in step with etcd by a list then a watch (pure).

A watch driver (agent.store.service) feeds it: `replace()` with a full listing at a revision, then
`apply()` with watch events in revision order. `version` moves on every change and on the
first listing (even an empty one), so a consumer can wait for "listed" and for "changed".
It decodes values and returns what changed as past-tense events. A value that does not decode
or fails validation (a typo, an unknown mode, an MTU out of range) never removes or changes a
network: the last good copy stays in the view (a network never seen good is left out), and
the problem is reported so the driver logs it once and counts it. Only a delete removes.
`revision` is where a resumed watch must start (revision + 1).
Imports: stdlib, agent.store.schema (listed among the pure cores).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from agent.store.schema import NETWORKS, MalformedRecord, Network, decode_network


@dataclass(frozen=True)
class NetworkAdded:
    network: Network


@dataclass(frozen=True)
class NetworkChanged:
    network: Network


@dataclass(frozen=True)
class NetworkRemoved:
    name: str


NetworkEvent = NetworkAdded | NetworkChanged | NetworkRemoved


@dataclass(frozen=True)
class KeyChange:
    """One watch event: `value` None for a delete."""

    key: str
    value: bytes | None
    mod_revision: int


@dataclass
class NetworkView:
    networks: dict[str, Network] = field(default_factory=dict)
    revision: int = 0
    version: int = 0
    """Bumped on every change, so waiters can tell "changed since I looked"."""
    listed: bool = False
    """True once a full listing was adopted (an empty listing too)."""
    malformed: list[MalformedRecord] = field(default_factory=list)
    """Problems found by the last replace/apply (the driver logs and counts, then clears)."""
    rejected: set[str] = field(default_factory=set)
    """Keys whose current value is rejected (the last good copy, if any, is used instead)."""

    def replace(self, listing: Iterable[tuple[str, bytes]], revision: int) -> list[NetworkEvent]:
        """Adopt a full listing taken at `revision`; return the difference to what we had."""
        fresh: dict[str, Network] = {}
        self.rejected = set()
        for key, value in listing:
            network = self._decode(key, value)
            if network is not None:
                fresh[network.name] = network
            elif (good := self.networks.get(key[len(NETWORKS) :])) is not None:
                fresh[good.name] = good  # keep the last good copy
        events: list[NetworkEvent] = [
            NetworkRemoved(name) for name in sorted(self.networks.keys() - fresh.keys())
        ]
        for name, network in sorted(fresh.items()):
            old = self.networks.get(name)
            if old is None:
                events.append(NetworkAdded(network))
            elif old != network:
                events.append(NetworkChanged(network))
        self.networks = fresh
        self.revision = max(self.revision, revision)
        if events or not self.listed:
            self.version += 1  # the first listing is news even when it is empty
        self.listed = True
        return events

    def apply(self, changes: Iterable[KeyChange], revision: int = 0) -> list[NetworkEvent]:
        """Apply watch events; `revision` (a progress header) may move `revision` on too."""
        events: list[NetworkEvent] = []
        for change in changes:
            self.revision = max(self.revision, change.mod_revision)
            name = change.key[len(NETWORKS) :]
            if change.value is None:
                self.rejected.discard(change.key)
                if self.networks.pop(name, None) is not None:
                    events.append(NetworkRemoved(name))
                continue
            network = self._decode(change.key, change.value)
            if network is None:
                continue  # the last good copy (if any) stays
            old = self.networks.get(network.name)
            self.networks[network.name] = network
            if old is None:
                events.append(NetworkAdded(network))
            elif old != network:
                events.append(NetworkChanged(network))
        self.revision = max(self.revision, revision)
        if events:
            self.version += 1
        return events

    def adopt_cached(self, networks: Iterable[Network]) -> None:
        """Before the first listing: take these (the copy a previous run kept) as the last
        good copies, so a value that is bad in etcd at our start does not remove them."""
        if not self.listed:
            self.networks = {network.name: network for network in networks}

    def snapshot(self) -> Mapping[str, Network]:
        return dict(self.networks)

    def _decode(self, key: str, value: bytes) -> Network | None:
        try:
            network = decode_network(key, value)
        except MalformedRecord as exc:
            self.malformed.append(exc)
            self.rejected.add(key)
            return None
        self.rejected.discard(key)
        return network
