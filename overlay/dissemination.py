"""Carries the neighbor table over SWIM gossip: the `gossip.delegate.Delegate` of the overlay.

Owns: the msgpack encoding of table records, the transmit-limited broadcast queue for the
piggyback path, push-pull full state as bounded chunks, and the mapping of membership events
onto the table's owner rules, through host liveness when given one (`overlay.liveness`): a
suspected member's host is probed, a failed one's entries stay while its host answers
(`member_agent_down`) and leave when it is silent (`member_failed`).

Rules:
- Local changes, refutations and newly accepted remote broadcasts go on the gossip core's
  transmit-limited `BroadcastQueue`, keyed by record key: each is sent at most
  `retransmit_mult * ceil(log10(n + 1))` times (n = alive members, self included; scoped,
  the members of the record's network), least-sent and newest first; a newer record for the
  same key replaces the queued older one (counted as invalidated).
- Scoped to networks (`DisseminationConfig.scoped`, the default): an endpoint record goes on
  its network's own queue, whose retransmit limit counts that network's members; it rides only
  on packets to members of its network (the core names the destination of every packet), and
  each gossip round the delegate names `gossip_nodes` random members of every network with
  news pending as extra targets (`gossip_targets`). Membership records (which node is in which
  network) stay cluster-wide: every node learns every network's members from them. A record of
  a network we have not joined (a peer's stale view sent it) is forwarded once per version to
  that network's members without being held (`forward_memory` keys remembered). Unscoped
  (`scoped=False`, the baseline): one queue, every record to every member.
- Push-pull state is everything the table holds, grouped by (network, owner) so names are not
  repeated, cut into chunks of at most `chunk_limit` bytes; scoped, a periodic exchange with a
  member whose networks we know carries every membership record but only the endpoint records
  of networks that member takes part in (a join, or a peer we know no network of, gets
  everything). Records merged from push-pull are not re-broadcast (anti-entropy must not start
  a storm); only refutations are.
- A tombstone's remaining lifetime is written in milliseconds at encoding time; the receiver's
  deadline is its own `now` plus that.
- An endpoint record ends with its owner's wall-clock change time (`Entry.changed_at`, float
  seconds since the epoch, nil if unknown). Records of older peers lack that last field: they
  decode with `changed_at=None`. (An older peer cannot decode the longer records: it drops them
  as wire errors, so a cluster is upgraded as a whole.) After it come the endpoint's attributes
  (`[name, [aliases], [[port, proto], ...], [[key, value], ...]]`, the labels only when there
  are any; nil when it has none), validated on receipt by
  overlay.attributes' rules; records without that field decode with no attributes.
- A signed record (see overlay.table) ends with its owner's 64-byte Ed25519 signature, after
  every other field; unsigned records are encoded exactly as before.
- A broadcast payload is delivered again and again (every node that accepts a record sends it
  up to the retransmit limit): a payload whose records were all live and all merged ACCEPTED
  or STALE is remembered by its bytes (`duplicate_memory` payloads, forgotten all at once when
  full, and whenever the table lets go of any record: then a repeat may be news again), and a
  repeat of it is counted in `statistics().duplicates` and not decoded or merged again (it
  would be STALE). Tombstones are not remembered: a repeat may carry their later deadline.
- Bytes from a peer that do not decode make `decode_records` raise `TableWireError` (a
  `gossip.errors.WireError`); the delegate catches it, counts it in
  `statistics().decode_errors` and drops the message: the SWIM core calls the delegate without
  a guard, and network bytes must never crash it. A chunk is decoded whole before any record of
  it is merged.
- `get_broadcasts` and `local_state` receive no clock from the core: a broadcast is encoded
  when queued (a tombstone's TTL may then be overstated by its time in the queue, seconds), push-
  pull state with the latest `now` the table was given (`NeighborTable.now`).

Pure: time is passed in; imports msgpack, the standard library, gossip.delegate/errors/swim
event types and overlay (never trio, socket, time, threading or pyroute2).
"""

from __future__ import annotations

import ipaddress
import math
import random
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import msgpack

from gossip.broadcast import BroadcastQueue, retransmit_limit
from gossip.errors import WireError
from gossip.swim import (
    Member,
    MemberFailed,
    MemberJoined,
    MemberLeft,
    MemberRecovered,
    MembershipEvent,
    MemberSuspected,
    MemberUpdated,
)
from overlay.attributes import NO_ATTRIBUTES, EndpointAttributes, InvalidAttributes, make_attributes
from overlay.errors import OverlayError
from overlay.liveness import KEPT, HostLiveness, VerdictChanged
from overlay.table import (
    VERSION_MAX,
    Entry,
    Membership,
    Merge,
    NeighborTable,
    Record,
    supersedes,
)

FORMAT = 1
# Message kinds: append-only, never renumber (peers of other versions decode by them).
KIND_ENDPOINT = 1
KIND_MEMBERSHIP = 2
KIND_STATE = 3

_TTL_MAX_MS = 2**40
_WALL_MAX = 2.0**40  # seconds since the epoch (year 36812): anything above is garbage
_NAME_MAX = 255
_SIGNATURE_BYTES = 64
_ADDRESS_CACHE_MAX = 1 << 16
_CHUNK_MIN = 2048  # a group head (two names of up to 255 characters) plus one record fits


class TableWireError(OverlayError, WireError):
    """Bytes from a peer are not a valid table message (caught by the core as a WireError)."""


@dataclass(frozen=True, slots=True)
class DisseminationConfig:
    #: Each broadcast is sent retransmit_mult * ceil(log10(n + 1)) times by every node that
    #: accepts it. A node misses an update with probability about exp(-that * (1 - loss)), and
    #: unlike membership news a missed table update stays missed until a push-pull (minutes in
    #: a large cluster), so the default is 6, not memberlist's 4: at n = 200 and 5% loss that is
    #: 18 sends, ~4e-8 per node and change (4 gives ~1e-5: one stale node per ~500 changes).
    retransmit_mult: int = 6
    chunk_limit: int = 32 * 1024  # bytes per push-pull chunk (TCP stream)
    queue_limit: int = 16_384  # queued broadcasts; beyond it the most-sent are dropped
    forward_memory: int = 65_536  # keys of out-of-scope records remembered for forwarding
    duplicate_memory: int = 16_384  # broadcast payloads remembered as merged (module docstring)
    #: Endpoint records go only to members of their network (module docstring); False: every
    #: record to every member (the unscoped baseline `overlay.sim` measures against).
    scoped: bool = True


@dataclass(frozen=True, slots=True)
class DisseminationStatistics:
    queued: int
    broadcasts_sent: int  # record transmissions handed to the core
    invalidated: int  # queued records replaced by a newer one of the same key
    dropped_queue_full: int
    user_msgs: int
    chunks_sent: int
    chunks_merged: int
    decode_errors: int
    alive_members: int
    forwarded: int  # out-of-scope broadcasts passed on without being held
    duplicates: int  # broadcast payloads seen before and already merged: skipped


# --------------------------------------------------------------------------- encoding

_address_text: dict[bytes, str] = {}
_address_packed: dict[str, bytes] = {}


def _pack_address(text: str) -> bytes:
    packed = _address_packed.get(text)
    if packed is None:
        packed = ipaddress.ip_address(text).packed
        if len(_address_packed) >= _ADDRESS_CACHE_MAX:
            _address_packed.clear()
        _address_packed[text] = packed
    return packed


def _unpack_address(raw: object) -> str:
    if not isinstance(raw, bytes) or len(raw) not in (4, 16):
        raise TableWireError(f"address must be 4 or 16 bytes, got {raw!r:.40}")
    text = _address_text.get(raw)
    if text is None:
        text = str(ipaddress.ip_address(raw))
        if len(_address_text) >= _ADDRESS_CACHE_MAX:
            _address_text.clear()
        _address_text[raw] = text
    return text


def _unpack_mac(raw: object) -> str:
    if not isinstance(raw, bytes) or len(raw) != 6:
        raise TableWireError(f"mac must be 6 bytes, got {raw!r:.40}")
    return raw.hex(":")


def _name(raw: object) -> str:
    if not isinstance(raw, str) or not raw or len(raw) > _NAME_MAX:
        raise TableWireError(f"name must be 1 to {_NAME_MAX} characters, got {raw!r:.40}")
    return raw


def _version(raw: object) -> int:
    if not isinstance(raw, int) or isinstance(raw, bool) or not 0 < raw <= VERSION_MAX:
        raise TableWireError(f"version must be a positive integer, got {raw!r:.40}")
    return raw


def _ttl(raw: object, now: float) -> tuple[bool, float]:
    """(deleted, expires_at) from the wire's remaining lifetime (None for a live record)."""
    if raw is None:
        return False, math.inf
    if not isinstance(raw, int) or isinstance(raw, bool) or not 0 <= raw <= _TTL_MAX_MS:
        raise TableWireError(f"tombstone ttl must be milliseconds, got {raw!r:.40}")
    return True, now + raw / 1000.0


def _changed_at(raw: object) -> float | None:
    if raw is None:
        return None
    if not isinstance(raw, float | int) or isinstance(raw, bool) \
            or not 0 <= raw <= _WALL_MAX:  # also rejects NaN
        raise TableWireError(f"changed_at must be epoch seconds, got {raw!r:.40}")
    return float(raw)


def _ttl_ms(record: Record, now: float) -> int | None:
    if not record.deleted:
        return None
    return max(0, min(_TTL_MAX_MS, math.ceil((record.expires_at - now) * 1000.0)))


def _fields(raw: object, count: int, what: str, *, optional: int = 0) -> list[object]:
    """`raw` as a list of `count` fields; up to `optional` trailing ones may be missing (None)."""
    if not isinstance(raw, list) or not count - optional <= len(raw) <= count:
        raise TableWireError(f"{what} must be a list of {count} fields")
    return raw + [None] * (count - len(raw))


def _signature_field(record: Record) -> list[bytes]:
    """The trailing signature field: present only when the record is signed."""
    return [record.signature] if record.signature else []


def _signature(raw: object) -> bytes:
    if raw is None:
        return b""
    if not isinstance(raw, bytes) or len(raw) != _SIGNATURE_BYTES:
        raise TableWireError(f"signature must be {_SIGNATURE_BYTES} bytes, got {raw!r:.40}")
    return raw


def encode_record(record: Record, now: float) -> bytes:
    """One record as a broadcast payload."""
    if isinstance(record, Entry):
        return msgpack.packb([
            FORMAT, KIND_ENDPOINT, record.network, record.owner, _pack_address(record.ip),
            bytes.fromhex(record.mac.replace(":", "")), _pack_address(record.vtep),
            record.version, _ttl_ms(record, now), record.changed_at,
            _pack_attributes(record.attributes), *_signature_field(record),
        ])
    return msgpack.packb([
        FORMAT, KIND_MEMBERSHIP, record.network, record.node, _pack_address(record.vtep),
        record.version, _ttl_ms(record, now), *_signature_field(record),
    ])


def _unpack(data: bytes) -> list[object]:
    try:
        message = msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True)
    except (ValueError, TypeError, msgpack.UnpackException, RecursionError) as exc:
        raise TableWireError(f"not msgpack: {exc}") from None
    if not isinstance(message, list) or len(message) < 2:
        raise TableWireError("message must be a list starting with format and kind")
    if message[0] != FORMAT:
        raise TableWireError(f"unknown format {message[0]!r:.20}")
    return message


def _endpoint(network: str, owner: str, raw: object, now: float) -> Entry:
    ip, mac, vtep, version, ttl, changed_at, attributes, signature = _fields(
        raw, 8, "endpoint", optional=3)
    deleted, expires_at = _ttl(ttl, now)
    return Entry(network, _unpack_address(ip), _unpack_mac(mac), owner, _unpack_address(vtep),
                 _version(version), deleted, expires_at, _changed_at(changed_at),
                 _unpack_attributes(attributes), _signature(signature))


def _pack_attributes(attributes: EndpointAttributes) -> list[object] | None:
    if attributes == NO_ATTRIBUTES:
        return None
    packed: list[object] = [attributes.name, list(attributes.aliases),
                            [list(p) for p in attributes.ports]]
    if attributes.labels:
        packed.append([list(label) for label in attributes.labels])
    return packed


def _unpack_attributes(raw: object) -> EndpointAttributes:
    if raw is None:
        return NO_ATTRIBUTES
    name, aliases, ports, labels = _fields(raw, 4, "endpoint attributes", optional=1)
    if not isinstance(aliases, list) or not isinstance(ports, list) \
            or not isinstance(labels, list | None):
        raise TableWireError("endpoint attributes: aliases, ports and labels must be lists")
    try:
        return make_attributes(name, aliases, ports, labels or ())
    except InvalidAttributes as exc:
        raise TableWireError(f"endpoint attributes: {exc}") from None


def _membership(network: str, node: str, raw: object, now: float) -> Membership:
    vtep, version, ttl, signature = _fields(raw, 4, "membership", optional=1)
    deleted, expires_at = _ttl(ttl, now)
    return Membership(network, node, _unpack_address(vtep), _version(version), deleted,
                      expires_at, _signature(signature))


def decode_records(data: bytes, now: float) -> list[Record]:
    """Records in a broadcast payload or a push-pull chunk; raises only TableWireError."""
    if data[:3] == _STATE_PREFIX:
        held = _decoded_chunks.get(data)
        if held is not None:
            return list(held)
        state = _decode_state(data, now)
        if not any(record.deleted for record in state):
            if len(_decoded_chunks) >= _DECODED_CHUNKS_MAX:
                _decoded_chunks.clear()
            _decoded_chunks[data] = tuple(state)
        return state
    held_broadcast = _decoded_broadcasts.get(data)
    if held_broadcast is not None:
        entry, ttl = held_broadcast
        return [entry if ttl is None else _tombstone_until(entry, now + ttl / 1000.0)]
    message = _unpack(data)
    kind = message[1]
    if kind == KIND_ENDPOINT:
        fields = _fields(message, 12, "endpoint message", optional=3)
        entry = _endpoint(_name(fields[2]), _name(fields[3]), fields[4:], now)
        if len(_decoded_broadcasts) >= _DECODED_BROADCASTS_MAX:
            _decoded_broadcasts.clear()
        ttl_ms = fields[8]  # checked by `_endpoint`: milliseconds, or nil
        _decoded_broadcasts[data] = (entry, ttl_ms if isinstance(ttl_ms, int) else None)
        return [entry]
    if kind == KIND_MEMBERSHIP:
        fields = _fields(message, 8, "membership message", optional=1)
        return [_membership(_name(fields[2]), _name(fields[3]), fields[4:], now)]
    if kind == KIND_STATE:
        groups = _fields(message, 3, "state chunk")[2]
        if not isinstance(groups, list):
            raise TableWireError("state chunk groups must be a list")
        records: list[Record] = []
        for group in groups:
            network_raw, owner_raw, membership, endpoints = _fields(group, 4, "state group")
            network, owner = _name(network_raw), _name(owner_raw)
            if membership is not None:
                records.append(_membership(network, owner, membership, now))
            if not isinstance(endpoints, list):
                raise TableWireError("state group endpoints must be a list")
            records.extend(_endpoint(network, owner, raw, now) for raw in endpoints)
        return records
    raise TableWireError(f"unknown message kind {kind!r:.20}")


_STATE_PREFIX = bytes([0x93, FORMAT, KIND_STATE])  # [FORMAT, KIND_STATE, groups] as packed
_DECODED_MAX = 1 << 17
#: (network, owner, packed endpoint) -> the live Entry those bytes decode to: push-pull
#: re-sends most of a table every time, and a live record decodes the same whatever `now`.
_decoded: dict[tuple[str, str, bytes], Entry] = {}
#: The same for a group's live membership.
_decoded_memberships: dict[tuple[str, str, bytes], Membership] = {}
#: An endpoint broadcast's bytes -> the Entry they decode to and their tombstone ttl field
#: (None: a live record, the same whatever `now`): every member of a network receives each
#: broadcast, and a tombstone again and again (each time until a later deadline).
_decoded_broadcasts: dict[bytes, tuple[Entry, int | None]] = {}
#: A whole push-pull chunk of live records -> what it decodes to: many members of a network
#: hold the same records in the same order, and their state chunks are the same bytes.
_decoded_chunks: dict[bytes, tuple[Record, ...]] = {}
#: Small bounds (an agent keeps them for its whole life): a broadcast's receipts, and a
#: chunk's across a network, come within seconds of each other.
_DECODED_BROADCASTS_MAX = 4096
_DECODED_CHUNKS_MAX = 64
_Decoded = TypeVar("_Decoded", Entry, Membership)
_UNPACK_ERRORS = (ValueError, TypeError, msgpack.UnpackException, RecursionError)


def _decode_state(data: bytes, now: float) -> list[Record]:
    """A push-pull chunk read group by group; each endpoint's (and membership's) bytes are
    looked up in `_decoded` (`_decoded_memberships`) before they are decoded (the same checks
    as `decode_records`' general path: three fields, four per group, a list of endpoints,
    nothing after the chunk)."""
    unpacker = msgpack.Unpacker(raw=False, use_list=True, strict_map_key=True,
                                max_buffer_size=max(len(data), 1))
    unpacker.feed(data)
    records: list[Record] = []
    try:
        unpacker.read_array_header()  # 3, then format and kind: the prefix checked them
        unpacker.skip()
        unpacker.skip()
        try:
            groups = unpacker.read_array_header()
        except ValueError:
            raise TableWireError("state chunk groups must be a list") from None
        for _ in range(groups):
            if unpacker.read_array_header() != 4:
                raise TableWireError("state group must be a list of 4 fields")
            network, owner = _name(unpacker.unpack()), _name(unpacker.unpack())
            start = unpacker.tell()
            unpacker.skip()
            packed = data[start:unpacker.tell()]
            if packed != b"\xc0":  # nil: a group without a membership
                records.append(_decoded_once(_decoded_memberships, _membership, network, owner,
                                             packed, now))
            try:
                count = unpacker.read_array_header()
            except ValueError:
                raise TableWireError("state group endpoints must be a list") from None
            for _ in range(count):
                start = unpacker.tell()
                unpacker.skip()
                packed = data[start:unpacker.tell()]
                records.append(_decoded_once(_decoded, _endpoint, network, owner, packed, now))
    except _UNPACK_ERRORS as exc:
        raise TableWireError(f"state chunk: {exc}") from None
    if unpacker.tell() != len(data):
        raise TableWireError("state chunk: bytes after its end")
    return records


def _tombstone_until(entry: Entry, expires_at: float) -> Entry:
    """`entry` (a tombstone) with another local deadline."""
    return Entry(entry.network, entry.ip, entry.mac, entry.owner, entry.vtep, entry.version,
                 True, expires_at, entry.changed_at, entry.attributes, entry.signature)


def _decoded_once(memo: dict[tuple[str, str, bytes], _Decoded],
                  decode: Callable[[str, str, object, float], _Decoded], network: str,
                  owner: str, packed: bytes, now: float) -> _Decoded:
    """The record `packed` decodes to, from `memo` when those bytes were seen before; a live
    record decoded here is kept there (a tombstone's expiry depends on `now`), and `memo` is
    emptied when it holds `_DECODED_MAX`."""
    key = (network, owner, packed)
    record = memo.get(key)
    if record is None:
        record = decode(network, owner, msgpack.unpackb(packed, raw=False), now)
        if not record.deleted:
            if len(memo) >= _DECODED_MAX:
                memo.clear()
            memo[key] = record
    return record


def encode_state(records: Iterable[Record], now: float, chunk_limit: int) -> Iterator[bytes]:
    """Push-pull chunks, each at most `chunk_limit` bytes, grouped by (network, owner) in the
    order each group first appears (a (network, node) key has one membership at most)."""
    groups: dict[tuple[str, str], tuple[list[Membership], list[Entry]]] = {}
    for record in records:
        key = (record.network, record.owner)
        group = groups.get(key)
        if group is None:
            group = groups[key] = ([], [])
        if isinstance(record, Entry):
            group[1].append(record)
        else:
            group[0].append(record)
    chunk = _StateChunk(chunk_limit)
    for (network, owner), (memberships, entries) in groups.items():
        head, membership, alone = _pack_group_head(network, owner,
                                                   memberships[0] if memberships else None, now)
        if not entries:
            full = chunk.add_packed_group(alone)
            if full is not None:
                yield full
            continue
        packed = [_pack_state_entry(e, now) for e in entries]
        yield from chunk.add_group(head, membership, packed)
    yield from chunk.flush()


def encode_memberships(memberships: Iterable[Membership], now: float,
                       chunk_limit: int) -> Iterator[bytes]:
    """`encode_state` of membership records alone (each its own group: one record per
    (network, node) key), without gathering them into groups first."""
    chunk = _StateChunk(chunk_limit)
    cached = _group_cache.get
    for membership in memberships:
        hit = cached((membership.network, membership.node))
        if hit is not None and hit[0] is membership and not membership.deleted:
            alone = hit[3]
        else:
            alone = _pack_group_head(membership.network, membership.node, membership, now)[2]
        full = chunk.add_packed_group(alone)
        if full is not None:
            yield full
    yield from chunk.flush()


def _pack_group_head(network: str, owner: str, membership: Membership | None,
                     now: float) -> tuple[bytes, bytes, bytes]:
    """A state group's names, its membership field (nil without one) and the whole group
    without endpoints. Like an endpoint's, the bytes of a live membership are kept while that
    very record is held."""
    key = (network, owner)
    hit = _group_cache.get(key)
    if hit is not None and hit[0] is membership and (membership is None
                                                     or not membership.deleted):
        return hit[1], hit[2], hit[3]
    head = msgpack.packb(network) + msgpack.packb(owner)
    packed = b"\xc0"  # nil
    if membership is not None:
        packed = msgpack.packb([_pack_address(membership.vtep), membership.version,
                                _ttl_ms(membership, now), *_signature_field(membership)])
    alone = _array_header(4) + head + packed + _array_header(0)
    if membership is None or not membership.deleted:
        if len(_group_cache) >= _STATE_CACHE_MAX:
            _group_cache.clear()
        _group_cache[key] = (membership, head, packed, alone)
    return head, packed, alone


def _pack_state_entry(entry: Entry, now: float) -> bytes:
    """One endpoint of a state group. A live record packs the same every time: its bytes are
    kept per key while that very record is held (push-pull re-sends most of a table), bounded
    by `_STATE_CACHE_MAX` keys; a tombstone's remaining lifetime depends on `now`."""
    key = (entry.network, entry.owner, entry.ip)
    if not entry.deleted:
        hit = _state_cache.get(key)
        if hit is not None and hit[0] is entry:
            return hit[1]
    packed = msgpack.packb([
        _pack_address(entry.ip), bytes.fromhex(entry.mac.replace(":", "")),
        _pack_address(entry.vtep), entry.version, _ttl_ms(entry, now), entry.changed_at,
        _pack_attributes(entry.attributes), *_signature_field(entry),
    ])
    if not entry.deleted:
        if len(_state_cache) >= _STATE_CACHE_MAX:
            _state_cache.clear()
        _state_cache[key] = (entry, packed)
    return packed


_STATE_CACHE_MAX = 1 << 17
_group_cache: dict[tuple[str, str], tuple[Membership | None, bytes, bytes, bytes]] = {}
_state_cache: dict[tuple[str, str, str], tuple[Entry, bytes]] = {}


class _StateChunk:
    """Accumulates groups into chunks of bounded size (a group may span several chunks)."""

    _FRAME = 16  # array headers of the chunk and of one group, generously

    def __init__(self, limit: int) -> None:
        if limit < _CHUNK_MIN:
            raise OverlayError(f"chunk_limit: {limit!r} must be at least {_CHUNK_MIN} bytes")
        self.limit = limit
        self.groups: list[bytes] = []
        self.size = 8

    def add_group(self, head: bytes, membership: bytes, packed: list[bytes]) -> Iterator[bytes]:
        start = 0
        first = True
        while first or start < len(packed):
            base = len(head) + self._FRAME + (len(membership) if first else 1)
            if self.size + base + (len(packed[start]) if start < len(packed) else 0) > self.limit:
                yield from self.flush()
            budget = self.limit - self.size - base
            end = start
            while end < len(packed) and len(packed[end]) <= budget:
                budget -= len(packed[end])
                end += 1
            if end == start and start < len(packed):
                end = start + 1  # one record alone always fits a fresh chunk
            body = _array_header(len(packed[start:end])) + b"".join(packed[start:end])
            group = _array_header(4) + head + (membership if first else b"\xc0") + body
            self.groups.append(group)
            self.size += len(group)
            start = end
            first = False

    def add_packed_group(self, group: bytes) -> bytes | None:
        """A whole group without endpoints (its names and membership field), as `add_group`
        would add it; returns the chunk it closed, if it did not fit."""
        full = None
        if self.size + len(group) + self._FRAME - 2 > self.limit:
            full = self.take()
        self.groups.append(group)
        self.size += len(group)
        return full

    def flush(self) -> Iterator[bytes]:
        full = self.take()
        if full is not None:
            yield full

    def take(self) -> bytes | None:
        """The chunk of the groups added so far (None without any); starts a new one."""
        full = None
        if self.groups:
            full = (_array_header(3) + msgpack.packb(FORMAT) + msgpack.packb(KIND_STATE)
                    + _array_header(len(self.groups)) + b"".join(self.groups))
        self.groups = []
        self.size = 8
        return full


def _array_header(length: int) -> bytes:
    """msgpack's array header: fixarray below 16 items, else array 16 or array 32."""
    if length < 16:
        return _FIXARRAYS[length]
    if length < 1 << 16:
        return b"\xdc" + length.to_bytes(2, "big")
    return b"\xdd" + length.to_bytes(4, "big")


_FIXARRAYS = [bytes((0x90 | n,)) for n in range(16)]


# --------------------------------------------------------------------------- the delegate


class TableDelegate:
    """`gossip.delegate.Delegate` over a `NeighborTable`; the shell also feeds it membership."""

    def __init__(
        self, table: NeighborTable, config: DisseminationConfig | None = None, *, now: float,
        liveness: HostLiveness | None = None,
        vtep_of: Callable[[Member], str | None] = lambda member: None,
        rng: random.Random | None = None,
    ) -> None:
        """`now` starts the table's clock for TTL encoding (see the module docstring).
        `liveness` decides about failed members whose VTEP `vtep_of` finds (in their meta);
        without it (or without a VTEP) a failed member is withdrawn at once. `rng` picks a
        network's gossip targets (default: seeded from the node's name)."""
        self.table = table
        self.liveness = liveness
        self.vtep_of = vtep_of
        self.config = config or DisseminationConfig()
        self._rng = rng if rng is not None else random.Random(f"gossip-targets:{table.node}")
        # Membership records (and, unscoped, everything); scoped, each network's endpoint
        # records have their own queue.
        self._queue = self._new_queue()
        self._network_queues: dict[str, BroadcastQueue] = {}
        table.handle_timeout(now)
        self._broadcasts_sent = 0
        self._invalidated = 0
        self._forwarded: OrderedDict[tuple[str, ...], Record] = OrderedDict()
        self._forwards = 0
        self._alive: set[str] = set()
        self._user_msgs = 0
        self._chunks_sent = 0
        self._chunks_merged = 0
        self._decode_errors = 0
        self._merged_payloads: set[bytes] = set()
        self._merged_at_removals = table.removals
        self._duplicates = 0
        # network -> (the table's peer names, those names without us): gossip_targets' draw
        self._others: dict[str, tuple[tuple[str, ...], list[str]]] = {}

    # Delegate protocol -------------------------------------------------------------------

    def notify_user_msg(self, payload: bytes, now: float) -> None:
        self._user_msgs += 1
        table = self.table
        merged = self._merged_payloads
        if self._merged_at_removals != table.removals:
            merged.clear()
            self._merged_at_removals = table.removals
        if payload in merged:
            self._duplicates += 1
            return
        try:
            records = decode_records(payload, now)
        except TableWireError:
            self._decode_errors += 1
            return
        held = True
        for record in records:
            result = table.merge(record, now, relay=True)
            if result is Merge.OUT_OF_SCOPE:
                self._forward(record)
            held = held and not record.deleted and result in _HELD
        if held and self._merged_at_removals == table.removals:
            if len(merged) >= self.config.duplicate_memory:
                merged.clear()
            merged.add(payload)
        self._drain_table()

    def get_broadcasts(self, overhead: int, limit: int, to: str | None = None) -> list[bytes]:
        self._drain_table()
        table = self.table
        payloads = self._queue.take(overhead, limit, len(self._alive) + 1, to=to)
        if to is not None and self._network_queues:
            room = limit - sum(overhead + len(p) for p in payloads) if payloads else limit
            for network in table.networks_of(to):
                queue = self._network_queues.get(network)
                if queue is None or not queue:
                    continue
                more = queue.take(overhead, room, table.peer_count(network), to=to)
                if more:
                    payloads += more
                    room -= sum(overhead + len(p) for p in more)
        self._broadcasts_sent += len(payloads)
        return payloads

    def pending_broadcasts(self) -> bool:
        """Anything queued, or written to the table and not queued yet."""
        return (bool(self._queue) or any(self._network_queues.values())
                or self.table.has_outgoing())

    def gossip_targets(self, count: int) -> list[str]:
        """`count` random members of each network with records pending (ourselves never)."""
        targets: list[str] = []
        self._drain_table()
        me = self.table.node
        for network, queue in self._network_queues.items():
            if not queue:
                continue
            names = self.table.peer_names(network)
            others = self._others.get(network)
            if others is None or others[0] is not names:
                others = self._others[network] = (names, [p for p in names if p != me])
            peers = others[1]
            if not peers:
                queue.clear()  # nobody to tell
                continue
            targets += self._rng.sample(peers, min(count, len(peers)))
        return targets

    def local_state(self, join: bool, to: str | None = None) -> Iterable[bytes]:
        table = self.table
        shared = frozenset(table.networks_of(to)) if (
            self.config.scoped and not join and to is not None) else frozenset()
        if shared and table.networks().isdisjoint(shared):
            # (what `table.records(shared)` yields then: memberships alone)
            chunks = encode_memberships(table.memberships(), table.now, self.config.chunk_limit)
        else:
            chunks = encode_state(table.records(shared or None), table.now,
                                  self.config.chunk_limit)
        for chunk in chunks:
            self._chunks_sent += 1
            yield chunk

    def merge_remote_state(self, chunk: bytes, join: bool, now: float) -> None:
        try:
            records = decode_records(chunk, now)
        except TableWireError:
            self._decode_errors += 1
            return
        self._chunks_merged += 1
        for record in records:
            self.table.merge(record, now)
        self._drain_table()

    # Shell side --------------------------------------------------------------------------

    def handle_timeout(self, now: float) -> None:
        self.table.handle_timeout(now)
        self._drain_table()

    def next_deadline(self) -> float:
        return self.table.next_deadline()

    def keys_learned(self, now: float) -> None:
        """Owners' public keys arrived: the table merges the records it held for them."""
        self.table.keys_learned(now)
        self._drain_table()

    def member_alive(self, name: str, addr: tuple[str, int], now: float) -> None:
        self._alive.add(name)
        self.table.member_alive(name, addr, now)

    def member_failed(self, name: str, now: float) -> None:
        self._alive.discard(name)
        self.table.member_failed(name, now)

    def member_agent_down(self, name: str, now: float) -> None:
        """`name` failed in gossip but its host forwards (`overlay.liveness`): entries stay."""
        self._alive.discard(name)
        self.table.member_agent_down(name, now)

    def member_left(self, name: str, now: float) -> None:
        self._alive.discard(name)
        self.table.member_left(name, now)

    def member_event(self, event: MembershipEvent, now: float) -> list[VerdictChanged]:
        """Feed one membership event of the SWIM core to host liveness and the table's owner
        rules; returns the liveness verdicts it changed (for the log)."""
        member = event.member
        liveness = self.liveness
        vtep = self.vtep_of(member) if liveness is not None else None
        if liveness is not None and vtep is not None and \
                isinstance(event, MemberSuspected | MemberFailed):
            if isinstance(event, MemberSuspected):
                liveness.member_suspected(member.name, vtep, now)
            else:
                liveness.member_failed(member.name, vtep, now)
            return self.apply_verdicts(now)
        if isinstance(event, MemberJoined | MemberUpdated | MemberRecovered):
            if liveness is not None and not isinstance(event, MemberUpdated):
                liveness.member_alive(member.name)
            self.member_alive(member.name, member.addr, now)
        elif isinstance(event, MemberFailed):
            self.member_failed(member.name, now)
        elif isinstance(event, MemberLeft):
            if liveness is not None:
                liveness.member_left(member.name)
            self.member_left(member.name, now)
        # Without liveness MemberSuspected changes nothing (Lifeguard: most suspicions are
        # refuted); MemberForgotten comes long after the failure whose grace already ran out.
        return []

    def apply_verdicts(self, now: float) -> list[VerdictChanged]:
        """Apply host liveness's verdict changes to the table (after its timers or answers
        moved them); returns them."""
        changes: list[VerdictChanged] = []
        if self.liveness is None:
            return changes
        while (change := self.liveness.next_event()) is not None:
            changes.append(change)
            if change.current in KEPT:
                if change.previous not in KEPT:
                    self.member_agent_down(change.name, now)
            else:
                self.member_failed(change.name, now)
        return changes

    def retransmit_limit(self) -> int:
        return retransmit_limit(self.config.retransmit_mult, len(self._alive) + 1)

    def statistics(self) -> DisseminationStatistics:
        queues = [self._queue, *self._network_queues.values()]
        return DisseminationStatistics(
            queued=sum(len(q) for q in queues),
            broadcasts_sent=self._broadcasts_sent,
            invalidated=self._invalidated,
            dropped_queue_full=sum(q.dropped for q in queues),
            user_msgs=self._user_msgs,
            chunks_sent=self._chunks_sent,
            chunks_merged=self._chunks_merged,
            decode_errors=self._decode_errors,
            alive_members=len(self._alive),
            forwarded=self._forwards,
            duplicates=self._duplicates,
        )

    def _forward(self, record: Record) -> None:
        key = _queue_key(record)
        last = self._forwarded.get(key)
        if last is not None and not supersedes(record, last):
            return
        self._forwarded[key] = record
        self._forwarded.move_to_end(key)
        if len(self._forwarded) > self.config.forward_memory:
            self._forwarded.popitem(last=False)
        self._forwards += 1
        self._enqueue(key, record)

    def _drain_table(self) -> None:
        table = self.table
        if table.has_outgoing():  # (mostly not: then no list is made)
            for record in table.records_to_send():
                self._enqueue(_queue_key(record), record)

    def _enqueue(self, key: tuple[str, ...], record: Record) -> None:
        queue = self._queue
        if self.config.scoped and isinstance(record, Entry):
            if record.network not in self._network_queues:
                self._network_queues[record.network] = self._new_queue()
            queue = self._network_queues[record.network]
        if queue.pending_for(key) is not None:
            self._invalidated += 1
        queue.queue(encode_record(record, self.table.now), key)

    def _new_queue(self) -> BroadcastQueue:
        return BroadcastQueue(self.config.retransmit_mult, max_pending=self.config.queue_limit)


_HELD = (Merge.ACCEPTED, Merge.STALE)


def _queue_key(record: Record) -> tuple[str, ...]:
    return ("e", *record.key) if isinstance(record, Entry) else ("m", *record.key)
