"""Member ids, shared member records and formed views: what lets many `Swim`s share memory.

Owns: `MemberDirectory` (member name <-> small integer id, address -> id, the newest record
of each member in each state, memos of encoded and decoded push-pull chunks and of decoded
UDP packets), `MemberNode` (one member as a view holds it), `FormedView` (a formed cluster's
membership, prepared once, adopted by many views at the cost of a few array copies).

Rules:
- a `Swim` keeps its member table as arrays indexed by its directory's ids, not as dicts of
  objects: a view costs about 20 bytes per member, the records themselves are shared.
- a node whose `owner` is None is shared: any number of views may hold the same object and
  nobody mutates it (only a view's node for itself, `owner` = that view, changes in place). A
  view that changes a member (a suspicion, a failure, a leave) holds another shared node
  instead; what is its own (when the member went down, the suspicion and its timer) it keeps
  in its own tables, not in the node. So a 50/50 partition of 10,000 views costs a pointer
  per (view, member across the cut) for the records, not a copy each.
- every claim is interned: a view that takes (state, incarnation, address, metadata, proof)
  that the directory holds as that member's newest record in that state gets that very
  object (the same alive, suspect or failed record in every view that accepted it).
- a private directory (the agent: one `Swim`) forgets a name when its view forgets the
  member; a shared one (the simulator: thousands of `Swim`s in one process, a bounded set of
  names) keeps every name it saw.
- the chunk memos (shared directories only): `decode_chunk` keys on the chunk's bytes (a pure
  function of them), so views that exchange the same membership decode it once;
  `members_chunk` keys on the packed records, so views (and one view's successive states)
  holding the same records for an id range hold one chunk; `message` keys on a message's
  bytes, so the news every view queues is held once.
- `range_chunks` keeps what views built of an id range until the range changes (a version
  per range, in the view), within a bound, shared directory or not.
- the packet memo (shared directories only) keys on the bytes too: `decode_packet` is a pure
  function of them and what it returns is immutable (frozen messages; nobody changes the
  list), so the same packet delivered to many views (an ack or a ping of the same sequence
  number, one round of gossip to several members: about 4 in 5 deliveries in a simulation)
  is decoded once. Garbage is never memoized: it raises `WireError` at every receiver, and
  each counts it.
Pure: standard library and gossip.wire only; no I/O.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Callable, Iterable
from typing import TypeVar

from gossip.wire import (
    Addr,
    MemberRecord,
    MemberState,
    Message,
    UnknownMessage,
    decode_chunk,
    decode_packet,
    encode_member_record,
    encode_members_chunk,
)

__all__ = ["FormedView", "MemberDirectory", "MemberNode"]

_ALIVE, _SUSPECT, _DEAD, _LEFT = (MemberState.ALIVE, MemberState.SUSPECT, MemberState.DEAD,
                                  MemberState.LEFT)
#: Decoded push-pull chunks a shared directory remembers (newest kept), and encoded ones.
CHUNK_MEMO = 512
#: Decoded UDP packets a shared directory remembers (newest kept).
PACKET_MEMO = 16_384
#: Encoded messages a shared directory hands out one copy of (`message`).
MESSAGE_MEMO = 65_536
#: Push-pull chunks of (view, id range, version) a directory keeps for views to send again
#: (`range_chunks`; the most recently used kept).
RANGE_MEMO = 1024

_T = TypeVar("_T")


def _memoized(memo: dict[bytes, _T], bound: int, decode: Callable[[bytes], _T],
              data: bytes) -> _T:
    """`decode(data)`, from `memo` if it was decoded before; the oldest of `bound` entries
    makes room (what `decode` raises is not kept)."""
    found = memo.get(data, memo)
    if found is not memo:
        return found  # type: ignore[return-value]
    decoded = decode(data)
    if len(memo) >= bound:
        del memo[next(iter(memo))]
    memo[data] = decoded
    return decoded


class MemberNode:
    """One member as a view holds it (shared while `owner` is None, see the module rules)."""

    __slots__ = ("addr", "id", "incarnation", "key", "meta", "name", "owner", "packed",
                 "packed_key", "signature", "state")

    def __init__(self, member_id: int, name: str, addr: Addr, meta: bytes, incarnation: int,
                 state: MemberState, owner: object = None) -> None:
        self.id = member_id
        self.name = name
        self.addr = addr
        self.meta = meta
        self.incarnation = incarnation
        self.state = state
        self.packed = b""
        self.packed_key: tuple[object, ...] = ()
        # The proof of the last alive (its public key and signature) or of the leave (its
        # signature); b"" when unsigned.
        self.key = b""
        self.signature = b""
        self.owner = owner

    def record(self) -> bytes:
        """This member as a packed push-pull record (cached while unchanged)."""
        if self.owner is None and self.packed:
            return self.packed  # shared nodes never change
        proven = self.state == _ALIVE or self.state == _LEFT
        key = (self.incarnation, self.state, self.addr, self.meta, self.signature)
        if key != self.packed_key:
            self.packed = encode_member_record(MemberRecord(
                self.name, self.addr, self.meta, self.incarnation, self.state,
                self.key if proven else b"", self.signature if proven else b""))
            self.packed_key = key
        return self.packed


class MemberDirectory:
    """Names to ids (and back), addresses to ids, interned records, encoded and decoded
    chunks."""

    def __init__(self, *, shared: bool = False) -> None:
        """`shared`: many views use this directory (names are never forgotten, decoded
        chunks are memoized); otherwise it serves one view."""
        self.shared = shared
        self.ids: dict[str, int] = {}
        self._names: list[str | None] = []
        self._addr_of: list[Addr | None] = []
        # Per state, by id: the newest record interned in that state.
        self._newest: tuple[list[MemberNode | None], ...] = ([], [], [], [])
        self._free: list[int] = []
        #: Address -> the id last bound to it (`bind`); a view checks it holds that member
        #: there.
        self.by_addr: dict[Addr, int] = {}
        self._memo: dict[bytes, list[MemberRecord] | bytes | None] = {}
        self._chunks: dict[tuple[bytes, ...], bytes] = {}
        self._packets: dict[bytes, list[Message | UnknownMessage]] = {}
        self._messages: dict[bytes, bytes] = {}
        self._ranges: dict[tuple[int, int, int], list[bytes]] = {}
        self._views = 0
        self._alone: dict[str, tuple[str]] = {}

    @property
    def capacity(self) -> int:
        """One more than the largest id handed out: the length views size their arrays to."""
        return len(self._names)

    def id_for(self, name: str) -> int:
        """The id of `name`, handed out now if it has none."""
        found = self.ids.get(name)
        if found is not None:
            return found
        if self._free:
            member_id = self._free.pop()
            self._names[member_id] = name
        else:
            member_id = len(self._names)
            self._names.append(name)
            self._addr_of.append(None)
            for newest in self._newest:
                newest.append(None)
        self.ids[name] = member_id
        return member_id

    def release(self, member_id: int) -> None:
        """A view forgot this member: a private directory forgets the name too."""
        if self.shared:
            return
        name = self._names[member_id]
        if name is None:
            return
        del self.ids[name]
        addr = self._addr_of[member_id]
        if addr is not None and self.by_addr.get(addr) == member_id:
            del self.by_addr[addr]
        self._names[member_id] = None
        self._addr_of[member_id] = None
        for newest in self._newest:
            newest[member_id] = None
        self._free.append(member_id)

    def bind(self, addr: Addr, member_id: int) -> None:
        """`member_id` was seen at `addr` (the newest claim of an address wins)."""
        self.by_addr[addr] = member_id
        self._addr_of[member_id] = addr

    def alive(self, name: str, addr: Addr, meta: bytes, incarnation: int, key: bytes,
              signature: bytes) -> MemberNode:
        """The shared alive node for this claim: the newest one if it is the same claim."""
        return self.claim(self.id_for(name), _ALIVE, incarnation, addr, meta, key, signature)

    def claim(self, member_id: int, state: MemberState, incarnation: int, addr: Addr,
              meta: bytes, key: bytes, signature: bytes) -> MemberNode:
        """The shared node of member `member_id` in `state` with these fields: the newest one
        interned in that state if it is the same claim, else a new one (then the newest)."""
        newest = self._newest[state]
        node = newest[member_id]
        if (node is not None and node.incarnation == incarnation and node.addr == addr
                and node.meta == meta and node.signature == signature and node.key == key):
            return node
        name = self._names[member_id]
        assert name is not None
        node = MemberNode(member_id, name, addr, meta, incarnation, state)
        node.key, node.signature = key, signature
        newest[member_id] = node
        return node

    def members_chunk(self, packed: list[bytes]) -> bytes:
        """`gossip.wire.encode_members_chunk`; a shared directory hands out one bytes object
        for the same records (memoized, newest used kept), so the push-pull states that views
        build of the same id range share it rather than each holding a copy."""
        if not self.shared:
            return encode_members_chunk(packed)
        key = tuple(packed)
        memo = self._chunks
        chunk = memo.pop(key, None)
        if chunk is None:
            chunk = encode_members_chunk(packed)
            if len(memo) >= CHUNK_MEMO:
                del memo[next(iter(memo))]
        memo[key] = chunk
        return chunk

    def new_view(self) -> int:
        """A token no other view of this directory has (for `range_chunks` keys)."""
        self._views += 1
        return self._views

    def range_chunks(self, key: tuple[int, int, int],
                     build: Callable[[], list[bytes]]) -> list[bytes]:
        """The chunks a view built for `key` = (its token, id range, the range's version),
        built now if not kept. Bounded (`RANGE_MEMO`, least recently used dropped), so the
        views that answer many push-pulls at once (a cold start's seeds) send their state
        at the cost of the ranges that changed, while thousands of views that disagree (a
        partition) do not each keep a copy of their whole state."""
        memo = self._ranges
        chunks = memo.pop(key, None)
        if chunks is None:
            chunks = build()
            if len(memo) >= RANGE_MEMO:
                del memo[next(iter(memo))]
        memo[key] = chunks
        return chunks

    def alone(self, name: str) -> tuple[str]:
        """`(name,)`, one tuple per name in a shared directory (its names are bounded; a
        private one makes a new tuple: a sender's name is any string a packet brings): what
        every suspicion it starts counts as its confirmers until a second one confirms."""
        if not self.shared:
            return (sys.intern(name),)
        alone = self._alone.get(name)
        if alone is None:
            alone = self._alone[name] = (sys.intern(name),)
        return alone

    def message(self, encoded: bytes) -> bytes:
        """One bytes object for the same encoded message in a shared directory (memoized,
        oldest forgotten first): the news that thousands of views queue for piggyback (a
        partition's suspicions and failures) is held once, not once per view."""
        if not self.shared:
            return encoded
        return _memoized(self._messages, MESSAGE_MEMO, bytes, encoded)

    def forget_decoded(self) -> None:
        """Empty the memos of decoded packets and chunks (they fill again as views decode):
        their size is bounded whatever the cluster's, and a measurement of what the views
        hold leaves them out."""
        self._packets.clear()
        self._memo.clear()

    def decode_chunk(self, chunk: bytes) -> list[MemberRecord] | bytes | None:
        """`gossip.wire.decode_chunk`, memoized in a shared directory (raises WireError)."""
        if not self.shared:
            return decode_chunk(chunk)
        return _memoized(self._memo, CHUNK_MEMO, decode_chunk, chunk)

    def decode_packet(self, data: bytes) -> list[Message | UnknownMessage]:
        """`gossip.wire.decode_packet`, memoized in a shared directory (raises WireError).
        The list returned may be shared: read it, never change it."""
        if not self.shared or type(data) is not bytes:  # (only bytes are hashable and fixed)
            return decode_packet(data)
        return _memoized(self._packets, PACKET_MEMO, decode_packet, data)


class FormedView:
    """Membership every view of a formed cluster starts from, prepared once.

    Holds the shared node of every record (first one per name) at its id, the ids in record
    order, each id's position in that order, the ids worth probing, the failed or left ids
    (with the time they count as down from) and the count per state; `Swim.adopt_view`
    copies these arrays."""

    def __init__(self, directory: MemberDirectory, records: Iterable[MemberRecord],
                 now: float) -> None:
        self.directory = directory
        nodes: dict[int, MemberNode] = {}
        for record in records:
            member_id = directory.id_for(record.name)
            if member_id in nodes:
                continue
            node = directory.claim(member_id, record.state, record.incarnation, record.addr,
                                   record.meta, record.key, record.signature)
            directory.bind(record.addr, member_id)
            nodes[member_id] = node
        capacity = directory.capacity
        self.nodes: list[MemberNode | None] = [None] * capacity
        self.positions = array("i", [-1]) * capacity
        self.order = array("i", nodes)
        self.counts = [0, 0, 0, 0]
        for position, (member_id, node) in enumerate(nodes.items()):
            self.nodes[member_id] = node
            self.positions[member_id] = position
            self.counts[node.state] += 1
        self.probe = array("i", (i for i, n in nodes.items() if n.state <= _SUSPECT))
        #: Failed or left ids -> since when (`now`: a view counts from its adoption).
        self.down = {i: now for i, n in nodes.items() if n.state >= _DEAD}
        #: Bytes of these records as a push-pull sends them (chunk headers aside).
        self.state_bytes = sum(len(node.record()) for node in nodes.values())
