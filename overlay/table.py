"""The replicated neighbor table: every endpoint of the overlay networks this node takes part in.

Owns: endpoint entries (network, IP, MAC, owner node, owner VTEP) and per-network membership
records (network, node, VTEP), their last-writer-wins merge, tombstones and their reaping, the
owner-status rules (failed, left, superseded, gone) and the data-plane view with its change events.

Rules:
- A record is written only by its owner. Each node keeps one Lamport clock: a local write takes
  clock + 1, every record seen raises the clock to its version. Merge keeps the strictly greater
  version; equal versions break ties on `rank` (a tombstone beats a live record, then the larger
  MAC / VTEP), so every node picks the same winner whatever the delivery order.
- A delete leaves a tombstone that lives `tombstone_ttl` seconds; its remaining lifetime travels
  on the wire and the receiver keeps the later of the two deadlines (the merge stays a join),
  but never more than its own `tombstone_ttl` from now (a remote lifetime is capped on receipt).
- Bounds: a remote record whose version is more than `VERSION_JUMP` (2**32) above our clock
  is dropped and counted (`Merge.IMPLAUSIBLE`), so no record can push clocks to the limit.
  Tombstones are reaped when their deadline passes. If an old copy comes back after that (or after
  the owner restarted and forgot), the owner refutes it: it re-issues what it holds, or a tombstone,
  with a version above the stale one (as SWIM refutes suspicion with a higher incarnation).
- Scoping: endpoint records are held only for networks this node has joined (others are dropped,
  counted); membership records (which node is in which network) are held for every network.
- An owner whose agent is down but whose host still forwards (`member_agent_down`, decided by
  `overlay.liveness`) keeps its entries in the view, marked; its agent returning clears the mark
  (no event), its host going silent makes it failed.
- A failed or departed owner's entries leave the view at once and are kept `failed_grace`
  seconds; if the owner comes back within it they return to the view from local state (events,
  no broadcast). After the grace they are purged and late copies are dropped while the owner stays
  gone. A new node name at an address an older name used supersedes the older name's entries (a
  restart with a new identity), but only once the older name is confirmed gone (failed, or left
  by its own message): a claim of a new name alone never purges a live owner.
- The view holds, per (network, IP), the visible live entry with the highest (version, owner);
  every change of it is an `EndpointChanged(previous, current)` computed from local state, and
  every change of a network's peer set a `NetworkPeerChanged`.
- An endpoint record carries `changed_at`, the owner's wall-clock time (seconds since the epoch)
  of the write, passed in by the caller (None: not known, e.g. from an older peer). It is
  metadata for latency metrics only: never part of the version, the rank or the view's choice.
  A refutation re-issues the record it holds with its `changed_at` (no new change was made); a
  refuting tombstone of something we no longer hold has none.
- An endpoint record carries its `attributes` (name, aliases, service ports; see
  overlay.attributes), written by the owner with the record: the names the resolver serves.
- Validation on receipt: a remote endpoint needs a unicast, non-zero MAC and, once the
  network's subnet is known (`set_subnet`), an address inside it that is not its network,
  broadcast or gateway address (else `Merge.INVALID`, counted, nothing stored).
- Signed records (`sign` and `check_signature` given): every record we write carries our
  Ed25519 signature of `record_signed_bytes`; a remote record is stored only if its owner's
  trusted key signed it (else `Merge.UNVERIFIED`, counted; an unknown key is fetched by the
  shell, and the newest records waiting for it are merged again by `keys_learned`, at most
  `MAX_HELD_RECORDS`). A forged record in our own name
  is dropped, not refuted. Records of an owner the membership layer has not announced are
  held but stay out of the view until it does.

Pure: takes `now`, returns records and events; imports only the standard library and overlay.errors
(never trio, socket, time, threading or pyroute2).
"""

from __future__ import annotations

import heapq
import ipaddress
import math
from collections import deque
from collections.abc import Callable, Hashable, Iterator, Mapping
from dataclasses import dataclass, fields, replace
from enum import Enum
from types import MappingProxyType
from typing import TypeVar

from overlay.attributes import NO_ATTRIBUTES, EndpointAttributes
from overlay.errors import OverlayError
from underlay.records import ZERO_MAC, canonical_ip, canonical_mac

NAME_MAX = 255
#: Largest version a record may carry (msgpack's signed 64-bit range, what peers decode).
VERSION_MAX = 2**63 - 1
#: How far ahead of our Lamport clock a remote record's version may be; further is dropped
#: and counted (`Merge.IMPLAUSIBLE`). Honest clocks move one per write cluster-wide, so a
#: newcomer (clock 0) still accepts a cluster that has made up to 2**32 writes; a forgery
#: raises the clock by at most 2**32 per accepted record, so reaching VERSION_MAX takes
#: 2**31 of them in a row (and with signed records none is accepted).
VERSION_JUMP = 2**32
#: Remote records kept while their owner's key is being fetched (newest per key).
MAX_HELD_RECORDS = 4096


class InvalidEndpoint(OverlayError):
    """A local write named a bad network, IP, MAC or VTEP; nothing was changed."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One endpoint as its owner published it; `deleted` marks a tombstone.

    `expires_at` is local: when a tombstone may be reaped (infinite for a live entry).
    `changed_at` is the owner's wall-clock time of the write (None if unknown); metadata only.
    `attributes` are the endpoint's name, aliases and service ports (empty if none given).
    """

    network: str
    ip: str
    mac: str
    owner: str
    vtep: str
    version: int
    deleted: bool = False
    expires_at: float = math.inf
    changed_at: float | None = None
    attributes: EndpointAttributes = NO_ATTRIBUTES
    signature: bytes = b""  # the owner's Ed25519 signature of `record_signed_bytes` (b"": none)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.network, self.owner, self.ip)

    @property
    def rank(self) -> tuple[bool, str, str]:
        """Tie-break between two different records of equal version (greater wins)."""
        return (self.deleted, self.mac, self.vtep)


@dataclass(frozen=True, slots=True)
class Membership:
    """`node` takes part in `network` with VTEP `vtep`; `deleted` means it left the network."""

    network: str
    node: str
    vtep: str
    version: int
    deleted: bool = False
    expires_at: float = math.inf
    signature: bytes = b""  # the node's signature of `record_signed_bytes` (b"": none)

    @property
    def key(self) -> tuple[str, str]:
        return (self.network, self.node)

    @property
    def owner(self) -> str:
        return self.node

    @property
    def rank(self) -> tuple[bool, str]:
        return (self.deleted, self.vtep)


Record = Entry | Membership

#: Signs bytes with our identity key.
Sign = Callable[[bytes], bytes]
#: (owner, signature, signed bytes) -> True valid, False forged, None owner's key unknown.
CheckSignature = Callable[[str, bytes, bytes], bool | None]

_UNSIGNED_FIELDS = frozenset({"expires_at", "signature"})
R = TypeVar("R", bound=Entry | Membership)
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def record_signed_bytes(record: Record) -> bytes:
    """What an owner signs: every field of the record but the local `expires_at` and the
    signature itself (a tombstone's remaining lifetime is not signed; the receiver caps it)."""
    content = tuple(getattr(record, f.name) for f in fields(record)
                    if f.name not in _UNSIGNED_FIELDS)
    return b"vxmesh record\x00" + repr((type(record).__name__, content)).encode()


def supersedes(incoming: Record, current: Record) -> bool:
    """True if `incoming` replaces `current` (same key): strictly greater (version, rank)."""
    if incoming.version != current.version:
        return incoming.version > current.version
    return incoming.rank > current.rank


def merge_records(a: Record, b: Record) -> Record:
    """The last-writer-wins join of two records of one key: commutative, associative, idempotent.

    Equal version and rank means the same write seen twice: keep the later tombstone deadline
    (then, only so that the join stays commutative on any input, the larger `changed_at`).
    """
    if a.version == b.version and a.rank == b.rank:
        return a if _copy_order(a) >= _copy_order(b) else b
    return b if supersedes(b, a) else a


def _copy_order(record: Record) -> tuple[float, float]:
    changed_at = record.changed_at if isinstance(record, Entry) else None
    return (record.expires_at, -math.inf if changed_at is None else changed_at)


@dataclass(frozen=True, slots=True)
class EndpointChanged:
    """The visible entry for (network, ip) changed: apply "delete previous, add current"."""

    network: str
    ip: str
    previous: Entry | None
    current: Entry | None


@dataclass(frozen=True, slots=True)
class NetworkPeerChanged:
    """The visible membership of `node` in `network` changed (joined, left, VTEP moved, failed)."""

    network: str
    node: str
    previous: Membership | None
    current: Membership | None


TableEvent = EndpointChanged | NetworkPeerChanged


class Merge(Enum):
    """What `merge` did with a remote record."""

    # By identity (members are singletons): Enum's own hash is Python code, and every merge
    # counts its result in a dict keyed by it.
    __hash__ = object.__hash__

    ACCEPTED = "accepted"  # newer than what we held: stored (and queued for relay if asked)
    STALE = "stale"  # older than or equal to what we held
    OUT_OF_SCOPE = "out_of_scope"  # endpoint of a network we have not joined
    OWNER_GONE = "owner_gone"  # owner purged after its grace, or superseded
    REFUTED = "refuted"  # a record in our own name we do not hold: we re-issued ours
    IMPLAUSIBLE = "implausible"  # version more than VERSION_JUMP above our clock
    INVALID = "invalid"  # MAC not unicast, IP outside the network's subnet or reserved
    UNVERIFIED = "unverified"  # signing on: unsigned, forged, or the owner's key not known yet


class OwnerStatus(Enum):
    ALIVE = "alive"
    AGENT_DOWN = "agent_down"  # its agent is silent, its host forwards: entries stay visible
    FAILED = "failed"
    LEFT = "left"
    SUPERSEDED = "superseded"
    GONE = "gone"


# Tuples, not sets: membership by identity, without Enum's Python-level __hash__ (hot path).
_VISIBLE = (OwnerStatus.ALIVE, OwnerStatus.AGENT_DOWN)
_HIDDEN = (OwnerStatus.FAILED, OwnerStatus.LEFT)
_DROPPED = (OwnerStatus.SUPERSEDED, OwnerStatus.GONE)


@dataclass(slots=True)
class _Owner:
    status: OwnerStatus
    addr: tuple[str, int] | None
    generation: int


@dataclass(frozen=True, slots=True)
class TableStatistics:
    entries: int  # endpoint records held, tombstones included
    tombstones: int
    visible_endpoints: int
    memberships: int
    hidden_owners: int  # failed or left, within their grace
    agent_down_owners: int  # agent silent, host forwarding: entries kept in the view
    clock: int
    accepted: int
    stale: int
    out_of_scope: int
    owner_gone: int
    refuted: int
    implausible: int
    invalid: int
    unverified: int
    reaped: int
    purged: int  # entries dropped after an owner's grace or on supersede


def _nothing() -> None:
    pass


def _checked_ip(value: str, field_name: str = "ip") -> str:
    try:
        return canonical_ip(value)
    except ValueError as exc:
        raise InvalidEndpoint(f"{field_name}: {exc}") from None


def _checked_mac(value: str) -> str:
    try:
        return canonical_mac(value)
    except ValueError as exc:
        raise InvalidEndpoint(f"mac: {exc}") from None


def _check_wall_time(value: float | None) -> float | None:
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise InvalidEndpoint(f"changed_at: {value!r} must be a wall-clock time in seconds >= 0")
    return value


def _check_name(field_name: str, value: str) -> str:
    if not value or len(value) > NAME_MAX:
        raise InvalidEndpoint(f"{field_name}: {value!r} must be 1 to {NAME_MAX} characters")
    return value


IndexKey = TypeVar("IndexKey", bound=Hashable)
Item = TypeVar("Item", bound=Hashable)


def _index_add(index: dict[IndexKey, tuple[Item, ...]], key: IndexKey, item: Item) -> None:
    """`item` among `index[key]` (a small tuple: a few owners, networks or memberships)."""
    items = index.get(key, ())
    if item not in items:
        index[key] = (*items, item)


def _index_discard(index: dict[IndexKey, tuple[Item, ...]], key: IndexKey, item: Item) -> None:
    """`item` no longer among `index[key]`; the key goes when nothing is left."""
    items = index.get(key, ())
    if item in items:
        rest = tuple(i for i in items if i != item)
        if rest:
            index[key] = rest
        else:
            del index[key]


class NeighborTable:
    """One node's copy of the neighbor table (see the module docstring for the rules)."""

    def __init__(
        self,
        node: str,
        vtep: str,
        *,
        tombstone_ttl: float = 600.0,
        failed_grace: float = 60.0,
        sign: Sign | None = None,
        check_signature: CheckSignature | None = None,
    ) -> None:
        """`sign` and `check_signature` (both or neither) turn on signed records: ours are
        signed, every remote one is verified before it is stored, and an owner the membership
        layer has not announced is held but not shown (see the module docstring)."""
        if (sign is None) != (check_signature is None):
            raise InvalidEndpoint("sign and check_signature: give both or neither")
        self._sign = sign
        self._check_signature = check_signature
        self._subnets: dict[str, dict[int, tuple[IPNetwork, frozenset[str]]]] = {}
        self._held: dict[tuple[str, ...], Record] = {}
        self.node = _check_name("node", node)
        self.vtep = _checked_ip(vtep, "vtep")
        if not tombstone_ttl > 0:
            raise InvalidEndpoint(f"tombstone_ttl: {tombstone_ttl!r} must be > 0 seconds")
        if not failed_grace >= 0:
            raise InvalidEndpoint(f"failed_grace: {failed_grace!r} must be >= 0 seconds")
        self.tombstone_ttl = tombstone_ttl
        self.failed_grace = failed_grace
        self._clock = 0
        self.now = -math.inf  # the latest time any call brought: encoders compute TTLs from it
        self._networks: set[str] = set()
        self._entries: dict[tuple[str, str, str], Entry] = {}
        self._memberships: dict[tuple[str, str], Membership] = {}
        self._by_owner: dict[str, set[tuple[str, str, str]]] = {}
        # Small indexes hold tuples (a few items each; shared, not copied, by `adopt`).
        self._memberships_by_owner: dict[str, tuple[tuple[str, str], ...]] = {}
        # owners of live entries per (network, ip)
        self._candidates: dict[tuple[str, str], tuple[str, ...]] = {}
        self._view: dict[tuple[str, str], Entry] = {}
        self._peer_view: dict[tuple[str, str], Membership] = {}
        # The peer view indexed both ways (network -> node -> record, node -> networks),
        # for gossip scoped to a network's members.
        self._peers: dict[str, dict[str, Membership]] = {}
        self._peer_networks: dict[str, tuple[str, ...]] = {}
        self._peer_names: dict[str, tuple[str, ...]] = {}  # `peer_names`, built on demand
        self._owners: dict[str, _Owner] = {}
        self._tombstones = 0
        self._reap_entries: list[tuple[float, tuple[str, str, str]]] = []
        self._reap_memberships: list[tuple[float, tuple[str, str]]] = []
        self._owner_at: dict[tuple[str, int], str] = {}
        self._removals = 0
        self._owner_heap: list[tuple[float, str, int]] = []
        self._events: deque[TableEvent] = deque()
        self._outbox: list[Record] = []
        #: Called whenever a record is added to `records_to_send` (the gossip shell arms its
        #: gossip timer; it must not call back into the table).
        self.on_outgoing: Callable[[], None] = _nothing
        self._counts = {m: 0 for m in Merge}
        self._reaped = 0
        self._purged = 0

    # ----------------------------------------------------------------- local writes (owner)

    def join_network(self, network: str, now: float) -> Membership:
        """Take part in `network`: from now on its endpoint records are held and gossiped."""
        _check_name("network", network)
        self._networks.add(network)
        record = self._signed(Membership(network, self.node, self.vtep, self._tick()))
        self._store(record, now)
        self._send(record)
        return record

    def leave_network(self, network: str, now: float) -> list[Record]:
        """Stop taking part: our endpoints there are deleted, the network's records dropped."""
        if network not in self._networks:
            raise InvalidEndpoint(f"network: {network!r} is not joined")
        out: list[Record] = []
        for key in [k for k in self._by_owner.get(self.node, ()) if k[0] == network]:
            if not self._entries[key].deleted:
                out.append(self.delete_endpoint(network, key[2], now))
        record = self._signed(Membership(
            network, self.node, self.vtep, self._tick(), True, now + self.tombstone_ttl
        ))
        self._store(record, now)
        self._send(record)
        out.append(record)
        self._networks.discard(network)
        for key in [k for k in self._entries if k[0] == network]:
            self._drop(key)
        return out

    def put_endpoint(self, network: str, ip: str, mac: str, now: float, *,
                     changed_at: float | None = None,
                     attributes: EndpointAttributes = NO_ATTRIBUTES) -> Entry:
        """Publish (or change) one of our endpoints; returns the record to gossip.

        `changed_at`: the wall-clock time of this change (the caller's clock, seconds since the
        epoch; `now` is the monotonic clock of the table's timers), carried to every peer.
        `attributes`: its name, aliases and service ports (validated by the caller).
        """
        if network not in self._networks:
            raise InvalidEndpoint(f"network: {network!r} is not joined by this node")
        entry = self._signed(Entry(network, _checked_ip(ip), _checked_mac(mac), self.node,
                                   self.vtep, self._tick(),
                                   changed_at=_check_wall_time(changed_at),
                                   attributes=attributes))
        self._store(entry, now)
        self._send(entry)
        return entry

    def delete_endpoint(self, network: str, ip: str, now: float, *,
                        changed_at: float | None = None) -> Entry:
        """Delete one of our endpoints: a tombstone replaces it; returns the record to gossip.

        `changed_at` as for `put_endpoint`.
        """
        key = (network, self.node, _checked_ip(ip))
        current = self._entries.get(key)
        if current is None or current.deleted:
            raise InvalidEndpoint(f"ip: {ip!r} is not an endpoint of ours in network {network!r}")
        entry = self._signed(replace(current, version=self._tick(), deleted=True,
                                     expires_at=now + self.tombstone_ttl,
                                     changed_at=_check_wall_time(changed_at)))
        self._store(entry, now)
        self._send(entry)
        return entry

    def has_outgoing(self) -> bool:
        """True while `records_to_send` has something."""
        return bool(self._outbox)

    def _send(self, record: Record) -> None:
        self._outbox.append(record)
        self.on_outgoing()

    def adopt(self, other: NeighborTable) -> None:
        """Hold every record `other` holds, as already merged: no events, no relays, no checks.

        For a simulation or test that starts from a warm cluster: one table of a network
        merges the network's records, every other member of that network adopts them (the
        records are shared, immutable; the indexes are copied). Our own writes must be among
        them, and `other` must have joined the networks we joined and no other.
        """
        if other._networks != self._networks:
            raise InvalidEndpoint(f"adopt: networks {sorted(other._networks)} are not ours "
                                  f"({sorted(self._networks)})")
        self._entries = dict(other._entries)
        self._memberships = dict(other._memberships)
        self._memberships_by_owner = dict(other._memberships_by_owner)
        self._by_owner = {owner: set(keys) for owner, keys in other._by_owner.items()}
        self._candidates = dict(other._candidates)
        self._view = dict(other._view)
        self._peer_view = dict(other._peer_view)
        self._peers = {network: dict(peers) for network, peers in other._peers.items()}
        self._peer_names = {}
        self._peer_networks = dict(other._peer_networks)
        self._tombstones = other._tombstones
        self._reap_entries = list(other._reap_entries)
        self._reap_memberships = list(other._reap_memberships)
        self._clock = max(self._clock, other._clock)
        self.now = max(self.now, other.now)
        self._removals += 1  # whatever was held before is replaced

    @property
    def removals(self) -> int:
        """How many records the table has let go of so far (reaped, purged, left). Until it
        grows, a record `merge` once ACCEPTED or found STALE would be STALE again."""
        return self._removals

    def records_to_send(self) -> list[Record]:
        """Records to broadcast (our writes, refutations, relays), oldest first; drains them."""
        out, self._outbox = self._outbox, []
        return out

    # ----------------------------------------------------------------- remote records

    def merge(self, record: Record, now: float, *, relay: bool = False) -> Merge:
        """Merge one record from a peer (its `expires_at` already set from the wire's TTL).

        With `relay`, an accepted record is queued on `records_to_send` for further gossip.
        A tombstone's deadline is capped at `now + tombstone_ttl`.
        """
        # The same live write again (a push-pull repeats most of what we hold): what the full
        # path below decides too, without its validation and lookups.
        if type(record) is Entry:
            current = self._entries.get((record.network, record.owner, record.ip))
            if not record.deleted:
                if current is record or (
                        current is not None and current.version == record.version
                        and not current.deleted and current.mac == record.mac
                        and current.vtep == record.vtep
                        and current.changed_at == record.changed_at):
                    self._counts[Merge.STALE] += 1
                    return Merge.STALE
            elif (current is not None and current.deleted and current.version == record.version
                  and current.mac == record.mac and current.vtep == record.vtep
                  and record.owner != self.node and self._check_signature is None):
                return self._same_deletion(current, record, now)
        elif type(record) is Membership and not record.deleted:
            held = self._memberships.get((record.network, record.node))
            if held is record or (
                    held is not None and held.version == record.version
                    and not held.deleted and held.vtep == record.vtep):
                self._counts[Merge.STALE] += 1
                return Merge.STALE
        if record.version > self._clock + VERSION_JUMP:
            self._counts[Merge.IMPLAUSIBLE] += 1
            return Merge.IMPLAUSIBLE
        if record.deleted and record.expires_at > now + self.tombstone_ttl:
            record = replace(record, expires_at=now + self.tombstone_ttl)
        if isinstance(record, Entry) and not self._valid_entry(record):
            self._counts[Merge.INVALID] += 1
            return Merge.INVALID
        if record.version > self._clock:
            self._clock = record.version
        owner = record.owner
        if owner == self.node:
            result = self._merge_own(record, now)
        else:
            result = self._merge_other(record, now)
            if relay and result is Merge.ACCEPTED:
                self._send(record)
        self._counts[result] += 1
        return result

    def _same_deletion(self, current: Entry, record: Entry, now: float) -> Merge:
        """Another owner's deletion that we hold (same version and rank), signing off: what
        the general path decides for it (every gossiped deletion arrives ~18 times at each
        node), without its lookups: it may only carry a later deadline, to keep (capped)."""
        if record.expires_at > now + self.tombstone_ttl:
            record = replace(record, expires_at=now + self.tombstone_ttl)
        result = Merge.INVALID if not self._valid_entry(record) else self._refused(record)
        if result is None:
            if record.expires_at > current.expires_at or (
                    record.expires_at == current.expires_at
                    and _copy_order(record) > _copy_order(current)):
                self._store_copy(record, now)
            result = Merge.STALE
        self._counts[result] += 1
        return result

    def _refused(self, record: Record) -> Merge | None:
        """Why a record of another owner is not held whatever it carries, if it is not."""
        status = self._owners.get(record.owner)
        if status is not None and status.status in _DROPPED:
            return Merge.OWNER_GONE
        if isinstance(record, Entry) and record.network not in self._networks:
            return Merge.OUT_OF_SCOPE
        return None

    def _merge_other(self, record: Record, now: float) -> Merge:
        refused = self._refused(record)
        if refused is not None:
            return refused
        current = self._current(record)
        if current is not None:
            merged = merge_records(current, record)
            if merged is current:
                return Merge.STALE
            if merged.version == current.version and merged.rank == current.rank:
                if not self._verified(record):
                    return Merge.UNVERIFIED
                self._store_copy(merged, now)  # same write, later tombstone deadline
                return Merge.STALE
        if not self._verified(record):
            return Merge.UNVERIFIED
        self._store(record, now)
        return Merge.ACCEPTED

    def _merge_own(self, record: Record, now: float) -> Merge:
        current = self._current(record)
        if current is not None and not supersedes(record, current):
            return Merge.STALE
        if not self._verified(record):
            return Merge.UNVERIFIED  # a forgery in our name: nothing to refute
        if current is None and record.deleted:
            self._store(record, now)  # a deletion of something we no longer hold: keep it
            return Merge.ACCEPTED
        # A copy in our name that we did not write (we restarted, or reaped its tombstone):
        # re-issue what we hold, or delete it, above its version.
        self._clock = max(self._clock, record.version)
        base = current if current is not None else record
        deleted = current is None or current.deleted
        fresh = replace(base, version=self._tick(), deleted=deleted,
                        expires_at=now + self.tombstone_ttl if deleted else math.inf)
        if current is None and isinstance(fresh, Entry):
            fresh = replace(fresh, changed_at=None)  # our deletion, time unknown
        fresh = self._signed(fresh)
        self._store(fresh, now)
        self._send(fresh)
        return Merge.REFUTED

    def records(self, networks: frozenset[str] | None = None) -> Iterator[Record]:
        """Everything held (entries with tombstones, memberships), for a push-pull exchange;
        with `networks`, every membership but only the entries of those networks (in the same
        order). Entries are held only for networks we take part in, so when we take part in
        none of them no entry is looked at."""
        yield from self._memberships.values()
        if networks is None or self._networks <= networks:
            yield from self._entries.values()
        elif not self._networks.isdisjoint(networks):
            for (network, _, _), entry in self._entries.items():
                if network in networks:
                    yield entry

    def memberships(self) -> Iterator[Membership]:
        """Every membership record held (tombstones included), in `records`' order."""
        return iter(self._memberships.values())

    def _current(self, record: Record) -> Record | None:
        if isinstance(record, Entry):
            return self._entries.get(record.key)
        return self._memberships.get(record.key)

    # ----------------------------------------------------------------- membership of nodes

    def member_alive(self, name: str, addr: tuple[str, int], now: float) -> None:
        """The membership layer sees `name` alive at `addr` (joined, recovered, updated)."""
        self.now = max(self.now, now)
        if name == self.node:
            return
        previous = self._owner_at.get(addr)
        self._owner_at[addr] = name
        if previous is not None and previous != name:
            # A new name at an old name's address supersedes it only once the old name is
            # confirmed gone (failed, or left by its own message); while it is alive, the
            # new claim waits: `_member_down` completes it when the old name goes.
            other = self._owners.get(previous)
            if (other is not None and other.addr == addr
                    and other.status not in (OwnerStatus.ALIVE, OwnerStatus.GONE)):
                self._set_status(previous, OwnerStatus.SUPERSEDED, now)
        state = self._owners.get(name)
        if state is None:
            self._owners[name] = _Owner(OwnerStatus.ALIVE, addr, 0)
            if self._check_signature is not None:
                self._refresh_owner(name)
            return
        state.addr = addr
        if state.status is not OwnerStatus.ALIVE:
            self._set_status(name, OwnerStatus.ALIVE, now)

    def member_agent_down(self, name: str, now: float) -> None:
        """`name`'s agent failed but its host still forwards: its entries stay in the view."""
        self.now = max(self.now, now)
        state = self._owners.get(name)
        if name == self.node or state is None or state.status is not OwnerStatus.ALIVE:
            return  # unknown, or already failed, left or gone: nothing to keep
        state.status = OwnerStatus.AGENT_DOWN
        state.generation += 1

    def member_failed(self, name: str, now: float) -> None:
        """`name` was declared dead: its records leave the view now, purged after the grace."""
        self._member_down(name, OwnerStatus.FAILED, now)

    def member_left(self, name: str, now: float) -> None:
        """`name` left gracefully: treated as a failure (it may be back soon, e.g. an upgrade)."""
        self._member_down(name, OwnerStatus.LEFT, now)

    def _member_down(self, name: str, status: OwnerStatus, now: float) -> None:
        self.now = max(self.now, now)
        if name == self.node:
            return
        state = self._owners.setdefault(name, _Owner(OwnerStatus.ALIVE, None, 0))
        if state.status in _HIDDEN or state.status in _DROPPED:
            return
        successor = None if state.addr is None else self._owner_at.get(state.addr)
        if successor is not None and successor != name:
            status = OwnerStatus.SUPERSEDED  # a new name took its address meanwhile
        self._set_status(name, status, now)

    def owner_status(self, name: str) -> OwnerStatus:
        state = self._owners.get(name)
        return OwnerStatus.ALIVE if state is None else state.status

    def _set_status(self, name: str, status: OwnerStatus, now: float) -> None:
        state = self._owners[name]
        state.status = status
        state.generation += 1
        if status in _HIDDEN:
            heapq.heappush(self._owner_heap, (now + self.failed_grace, name, state.generation))
        elif status in _DROPPED:
            self._purge_owner(name)
            heapq.heappush(self._owner_heap, (now + self.tombstone_ttl, name, state.generation))
        self._refresh_owner(name)

    def _purge_owner(self, name: str) -> None:
        for key in list(self._by_owner.get(name, ())):
            self._drop(key)
            self._purged += 1
        for membership_key in list(self._memberships_by_owner.get(name, ())):
            self._drop_membership(membership_key)

    # ----------------------------------------------------------------- time

    def next_deadline(self) -> float:
        """When `handle_timeout` next has work (a tombstone to reap, a grace to end)."""
        first = math.inf
        if self._reap_entries:
            first = self._reap_entries[0][0]
        if self._reap_memberships:
            first = min(first, self._reap_memberships[0][0])
        if self._owner_heap:
            first = min(first, self._owner_heap[0][0])
        return first

    def handle_timeout(self, now: float) -> None:
        self.now = max(self.now, now)
        while self._reap_entries and self._reap_entries[0][0] <= now:
            entry = self._entries.get(heapq.heappop(self._reap_entries)[1])
            if entry is not None and entry.deleted and entry.expires_at <= now:
                self._drop(entry.key)
                self._reaped += 1
        while self._reap_memberships and self._reap_memberships[0][0] <= now:
            record = self._memberships.get(heapq.heappop(self._reap_memberships)[1])
            if record is not None and record.deleted and record.expires_at <= now:
                self._drop_membership(record.key)
                self._reaped += 1
        while self._owner_heap and self._owner_heap[0][0] <= now:
            _, name, generation = heapq.heappop(self._owner_heap)
            state = self._owners.get(name)
            if state is None or state.generation != generation:
                continue
            if state.status in _HIDDEN:
                self._set_status(name, OwnerStatus.GONE, now)
            elif state.status in _DROPPED:
                del self._owners[name]  # forgotten: a later record counts as a new owner
                if state.addr is not None and self._owner_at.get(state.addr) == name:
                    del self._owner_at[state.addr]

    # ----------------------------------------------------------------- views and events

    def next_event(self) -> TableEvent | None:
        return self._events.popleft() if self._events else None

    def lookup(self, network: str, ip: str) -> Entry | None:
        """The visible entry for (network, ip), if any."""
        return self._view.get((network, ip))

    def endpoints(self, network: str | None = None) -> list[Entry]:
        """Visible entries (ours included), optionally of one network."""
        if network is None:
            return list(self._view.values())
        return [e for (n, _), e in self._view.items() if n == network]

    def view(self) -> Mapping[tuple[str, str], Entry]:
        """The visible entries by (network, ip), read-only (the table's own mapping)."""
        return MappingProxyType(self._view)

    def endpoints_of(self, owner: str) -> list[Entry]:
        """The visible entries `owner` wrote (in no particular order): found through the
        owner's own keys, without a walk of the whole view."""
        view = self._view
        return [entry for network, _, ip in self._by_owner.get(owner, ())
                if (entry := view.get((network, ip))) is not None and entry.owner == owner]

    def network_peers(self, network: str) -> dict[str, str]:
        """Visible nodes taking part in `network` (ourselves included) -> their VTEP."""
        return {node: m.vtep for node, m in self._peers.get(network, {}).items()}

    def peer_names(self, network: str) -> tuple[str, ...]:
        """Visible nodes taking part in `network` (ourselves included), in a stable order; the
        same tuple until that network's peers change."""
        names = self._peer_names.get(network)
        if names is None:
            names = self._peer_names[network] = tuple(self._peers.get(network, ()))
        return names

    def peer_count(self, network: str) -> int:
        """How many visible nodes take part in `network` (ourselves included)."""
        return len(self._peers.get(network, ()))

    def networks_of(self, node: str) -> tuple[str, ...]:
        """The networks `node` visibly takes part in (empty if none, or unknown), in the order
        we learned them: the table's own tuple, not a copy (every packet sent asks)."""
        return self._peer_networks.get(node, ())

    def networks(self) -> frozenset[str]:
        return frozenset(self._networks)

    def get(self, network: str, owner: str, ip: str) -> Entry | None:
        """The record held for one key, tombstone or hidden owner included."""
        return self._entries.get((network, owner, ip))

    def statistics(self) -> TableStatistics:
        return TableStatistics(
            entries=len(self._entries),
            tombstones=self._tombstones,
            visible_endpoints=len(self._view),
            memberships=len(self._memberships),
            hidden_owners=sum(1 for s in self._owners.values() if s.status in _HIDDEN),
            agent_down_owners=sum(1 for s in self._owners.values()
                                  if s.status is OwnerStatus.AGENT_DOWN),
            clock=self._clock,
            accepted=self._counts[Merge.ACCEPTED],
            stale=self._counts[Merge.STALE],
            out_of_scope=self._counts[Merge.OUT_OF_SCOPE],
            owner_gone=self._counts[Merge.OWNER_GONE],
            refuted=self._counts[Merge.REFUTED],
            implausible=self._counts[Merge.IMPLAUSIBLE],
            invalid=self._counts[Merge.INVALID],
            unverified=self._counts[Merge.UNVERIFIED],
            reaped=self._reaped,
            purged=self._purged,
        )

    # ----------------------------------------------------------------- internals

    def set_subnet(self, network: str, subnet: str, gateway: str | None) -> None:
        """Records of `network` must hold an address of `subnet`, not its network, broadcast
        (IPv4) or `gateway` address; until this is called for a network, any address is
        accepted. A dual-stack network calls it once per address family (its IPv4 and its
        IPv6 subnet); an address of a family without a subnet set is refused."""
        net = ipaddress.ip_network(subnet, strict=False)
        reserved = {str(net.network_address)}
        if net.version == 4 and net.prefixlen < 31:
            reserved.add(str(net.broadcast_address))
        if gateway is not None:
            reserved.add(_checked_ip(gateway, "gateway"))
        self._subnets.setdefault(network, {})[net.version] = (net, frozenset(reserved))

    def _valid_entry(self, entry: Entry) -> bool:
        """A remote endpoint must have a unicast, non-zero MAC and an address of its subnet."""
        first_octet = int(entry.mac[:2], 16)
        if first_octet & 1 or entry.mac == ZERO_MAC:
            return False
        subnets = self._subnets.get(entry.network)
        if subnets is None:
            return True
        address = ipaddress.ip_address(entry.ip)
        subnet = subnets.get(address.version)
        if subnet is None:
            return False
        net, reserved = subnet
        return address in net and entry.ip not in reserved

    def _signed(self, record: R) -> R:
        if self._sign is None:
            return record
        return replace(record, signature=self._sign(record_signed_bytes(record)))

    def _verified(self, record: Record) -> bool:
        """Signing off: True. On: True only if the owner's trusted key signed it."""
        check = self._check_signature
        if check is None:
            return True
        verdict = check(record.owner, record.signature, record_signed_bytes(record))
        if verdict is None:  # the owner's key is being fetched: keep the newest for a retry
            key = ("e", *record.key) if isinstance(record, Entry) else ("m", *record.key)
            held = self._held.pop(key, None)
            self._held[key] = record if held is None or supersedes(record, held) else held
            if len(self._held) > MAX_HELD_RECORDS:
                del self._held[next(iter(self._held))]
        return verdict is True

    def keys_learned(self, now: float) -> None:
        """Owners' keys arrived: merge again the records held while they were unknown."""
        held, self._held = self._held, {}
        for record in held.values():
            self.merge(record, now)

    def _tick(self) -> int:
        self._clock += 1
        return self._clock

    def _visible_owner(self, owner: str) -> bool:
        state = self._owners.get(owner)
        if state is None:
            # Signed records: an owner the membership layer never announced stays hidden.
            return self._check_signature is None or owner == self.node
        return state.status in _VISIBLE

    def _store(self, record: Record, now: float) -> None:
        self.now = max(self.now, now)
        if isinstance(record, Membership):
            self._store_membership(record)
            return
        key = record.key
        old = self._entries.get(key)
        self._entries[key] = record
        self._by_owner.setdefault(record.owner, set()).add(key)
        if old is not None and old.deleted:
            self._tombstones -= 1
        if record.deleted:
            self._tombstones += 1
            heapq.heappush(self._reap_entries, (record.expires_at, key))
        view_key = (record.network, record.ip)
        if record.deleted:
            _index_discard(self._candidates, view_key, record.owner)
        else:
            _index_add(self._candidates, view_key, record.owner)
        self._refresh_view(view_key)

    def _store_copy(self, record: Record, now: float) -> None:
        """Store another copy of the write held for `record`'s key (same version and rank: a
        later tombstone deadline, or a larger `changed_at`). A tombstone entry is in no view
        and no candidate set, so only the record and its reaping change (every gossiped
        tombstone arrives this way again and again); anything else takes `_store`."""
        if type(record) is Entry and record.deleted:
            if now > self.now:
                self.now = now
            key = (record.network, record.owner, record.ip)
            self._entries[key] = record
            heapq.heappush(self._reap_entries, (record.expires_at, key))
        else:
            self._store(record, now)

    def _store_membership(self, record: Membership) -> None:
        old = self._memberships.get(record.key)
        self._memberships[record.key] = record
        _index_add(self._memberships_by_owner, record.node, record.key)
        if record.deleted and (old is None or old.expires_at != record.expires_at):
            heapq.heappush(self._reap_memberships, (record.expires_at, record.key))
        self._refresh_peer(record.key)

    def _drop(self, key: tuple[str, str, str]) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        self._removals += 1
        if entry.deleted:
            self._tombstones -= 1
        keys = self._by_owner.get(entry.owner)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_owner[entry.owner]
        view_key = (entry.network, entry.ip)
        _index_discard(self._candidates, view_key, entry.owner)
        self._refresh_view(view_key)

    def _drop_membership(self, key: tuple[str, str]) -> None:
        if self._memberships.pop(key, None) is not None:
            self._removals += 1
            _index_discard(self._memberships_by_owner, key[1], key)
            self._refresh_peer(key)

    def _refresh_owner(self, owner: str) -> None:
        for network, _, ip in list(self._by_owner.get(owner, ())):
            self._refresh_view((network, ip))
        for key in list(self._memberships_by_owner.get(owner, ())):
            self._refresh_peer(key)

    def _refresh_view(self, view_key: tuple[str, str]) -> None:
        network, ip = view_key
        best: Entry | None = None
        for owner in self._candidates.get(view_key, ()):
            if not self._visible_owner(owner):
                continue
            entry = self._entries[(network, owner, ip)]
            if best is None or (entry.version, entry.owner) > (best.version, best.owner):
                best = entry
        previous = self._view.get(view_key)
        if previous is best:
            return
        if best is None:
            del self._view[view_key]
        else:
            self._view[view_key] = best
        self._events.append(EndpointChanged(network, ip, previous, best))

    def _refresh_peer(self, key: tuple[str, str]) -> None:
        record = self._memberships.get(key)
        if record is not None and (record.deleted or not self._visible_owner(record.node)):
            record = None
        previous = self._peer_view.get(key)
        if previous is record:
            return
        network, node = key
        self._peer_names.pop(network, None)
        if record is None:
            del self._peer_view[key]
            peers = self._peers[network]
            del peers[node]
            if not peers:
                del self._peers[network]
            _index_discard(self._peer_networks, node, network)
        else:
            self._peer_view[key] = record
            self._peers.setdefault(network, {})[node] = record
            _index_add(self._peer_networks, node, network)
        self._events.append(NetworkPeerChanged(key[0], key[1], previous, record))
