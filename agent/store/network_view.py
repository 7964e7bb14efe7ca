"""What this agent believes etcd holds under one prefix, kept in step by a list then a watch (pure).

Owns `RecordView` (the records of one prefix: networks, policies) and its two kinds,
`NetworkView` and `PolicyView`. A watch driver (agent.store.service) feeds a view: `replace()`
with a full listing at a revision, then `apply()` with watch events in revision order.
`version` moves on every change and on the first listing (even an empty one), so a consumer can
wait for "listed" and for "changed". It decodes values and returns what changed as past-tense
events. A value that does not decode or fails validation (a typo, an unknown mode, an MTU out of
range) never removes or changes a record: the last good copy stays in the view (a record never
seen good is left out), and the problem is reported so the driver logs it once and counts it.
Only a delete removes. `revision` is where a resumed watch must start (revision + 1).
Imports: stdlib, agent.store.schema (listed among the pure cores).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from agent.store.schema import (
    NETWORKS,
    POLICIES,
    MalformedRecord,
    Network,
    Policy,
    decode_network,
    decode_policy,
)


class _Named(Protocol):
    @property
    def name(self) -> str: ...


R = TypeVar("R", bound=_Named)


@dataclass(frozen=True)
class RecordAdded(Generic[R]):
    record: R


@dataclass(frozen=True)
class RecordChanged(Generic[R]):
    record: R


@dataclass(frozen=True)
class RecordRemoved:
    name: str


NetworkAdded = RecordAdded
NetworkChanged = RecordChanged
NetworkRemoved = RecordRemoved
NetworkEvent = RecordAdded[Network] | RecordChanged[Network] | RecordRemoved


@dataclass(frozen=True)
class KeyChange:
    """One watch event: `value` None for a delete."""

    key: str
    value: bytes | None
    mod_revision: int


class RecordView(Generic[R]):
    """The good records under `prefix` by name, with the watch's revision."""

    def __init__(self, prefix: str, decode: Callable[[str, bytes], R]) -> None:
        self.prefix = prefix
        self._decode_value = decode
        self.records: dict[str, R] = {}
        self.revision = 0
        self.version = 0
        """Bumped on every change, so waiters can tell "changed since I looked"."""
        self.listed = False
        """True once a full listing was adopted (an empty listing too)."""
        self.malformed: list[MalformedRecord] = []
        """Problems found by the last replace/apply (the driver logs and counts, then clears)."""
        self.rejected: set[str] = set()
        """Keys whose current value is rejected (the last good copy, if any, is used instead)."""

    def replace(self, listing: Iterable[tuple[str, bytes]], revision: int
                ) -> list[RecordAdded[R] | RecordChanged[R] | RecordRemoved]:
        """Adopt a full listing taken at `revision`; return the difference to what we had."""
        fresh: dict[str, R] = {}
        self.rejected = set()
        for key, value in listing:
            record = self._decode(key, value)
            if record is not None:
                fresh[record.name] = record
            elif (good := self.records.get(key[len(self.prefix):])) is not None:
                fresh[good.name] = good  # keep the last good copy
        events: list[RecordAdded[R] | RecordChanged[R] | RecordRemoved] = [
            RecordRemoved(name) for name in sorted(self.records.keys() - fresh.keys())
        ]
        for name, record in sorted(fresh.items()):
            old = self.records.get(name)
            if old is None:
                events.append(RecordAdded(record))
            elif old != record:
                events.append(RecordChanged(record))
        self.records = fresh
        self.revision = max(self.revision, revision)
        if events or not self.listed:
            self.version += 1  # the first listing is news even when it is empty
        self.listed = True
        return events

    def apply(self, changes: Iterable[KeyChange], revision: int = 0
              ) -> list[RecordAdded[R] | RecordChanged[R] | RecordRemoved]:
        """Apply watch events; `revision` (a progress header) may move `revision` on too."""
        events: list[RecordAdded[R] | RecordChanged[R] | RecordRemoved] = []
        for change in changes:
            self.revision = max(self.revision, change.mod_revision)
            name = change.key[len(self.prefix):]
            if change.value is None:
                self.rejected.discard(change.key)
                if self.records.pop(name, None) is not None:
                    events.append(RecordRemoved(name))
                continue
            record = self._decode(change.key, change.value)
            if record is None:
                continue  # the last good copy (if any) stays
            old = self.records.get(record.name)
            self.records[record.name] = record
            if old is None:
                events.append(RecordAdded(record))
            elif old != record:
                events.append(RecordChanged(record))
        self.revision = max(self.revision, revision)
        if events:
            self.version += 1
        return events

    def snapshot(self) -> Mapping[str, R]:
        return dict(self.records)

    def _decode(self, key: str, value: bytes) -> R | None:
        try:
            record = self._decode_value(key, value)
        except MalformedRecord as exc:
            self.malformed.append(exc)
            self.rejected.add(key)
            return None
        self.rejected.discard(key)
        return record


class NetworkView(RecordView[Network]):
    """The networks this agent believes exist."""

    def __init__(self) -> None:
        super().__init__(NETWORKS, decode_network)

    @property
    def networks(self) -> dict[str, Network]:
        return self.records

    def adopt_cached(self, networks: Iterable[Network]) -> None:
        """Before the first listing: take these (the copy a previous run kept) as the last
        good copies, so a value that is bad in etcd at our start does not remove them."""
        if not self.listed:
            self.records = {network.name: network for network in networks}


class PolicyView(RecordView[Policy]):
    """The network policies stored in etcd."""

    def __init__(self) -> None:
        super().__init__(POLICIES, decode_policy)

    @property
    def policies(self) -> dict[str, Policy]:
        return self.records
