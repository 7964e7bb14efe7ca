"""The SWIM membership state machine with the Lifeguard extensions, free of I/O.

Owns: the member table (state, incarnation, address, metadata), probing, suspicion,
refutation, local health, piggybacked dissemination, push-pull scheduling and merging,
graceful leave, re-joining failed members, reaping.

Shape (h11 / aioquic style): bytes and time go in, datagrams, push-pull requests and events
come out. The caller (the trio driver `gossip.node`, or the simulator `gossip.sim`) calls
`receive_datagram(data, addr, now)` for each UDP payload, `handle_timeout(now)` once
`now >= next_deadline()`, then drains `datagrams_to_send()`, `push_pulls_to_start()` and
`next_event()`. TCP push-pull streams are the caller's: it sends `push_pull_state(join)` and
feeds each received chunk to `merge_push_pull_chunk`. Sealing/opening with the keyring
happens here, so the caller moves opaque bytes only.

Member table: arrays indexed by the ids of a `gossip.members.MemberDirectory` holding
shared, interned records (alive, suspect, failed or left: a view that changes a member holds
another shared record; when it went down and the suspicion are the view's own, in sparse
dicts by id), so a simulator's thousands of views cost about 20 bytes per member each; a
node on its own has a private directory.

Protocol (memberlist's algorithms, our structure):
- probing: members in a shuffled round-robin order; a direct ping, then after the (awareness
  scaled) probe timeout `indirect_checks` ping-reqs with nack plus one direct retry (where
  memberlist would try TCP); at the end of the probe interval an unanswered target is
  suspected. Pings to a suspect carry the suspicion so it can refute.
- suspicion (Lifeguard): the timeout starts at `suspicion_max_s(n)` and shrinks to
  `suspicion_min_s(n)` as independent suspicions of the same member arrive; when it runs out
  the member is declared failed (a DEAD message). A member told it is suspect or dead refutes
  with a higher incarnation (and counts that against its own health).
- last-chance probes (ours): at 50, 70 and 85 % of its suspicion timeout (and halfway
  through what is left whenever a confirmation shortens it), a node that heard no
  refutation pings the suspect with the suspicion attached; a live member answers a stale
  suspicion with its current alive message on the ack. This closes the gap where a node
  missed a gossiped refutation and would declare a live member failed.
- local health: a failed probe with missing nacks, or a refutation, raises awareness; a
  successful probe lowers it; probe interval and timeout are multiplied by awareness + 1.
- dissemination: news is queued in a `BroadcastQueue` (transmit-limited, newer news about a
  node replaces older) and piggybacked on every packet we send, plus gossip rounds to
  `gossip_nodes` members every `gossip_interval_s` while anything is queued (ours, or the
  delegate's: one with `has_broadcasts()` is asked; one without it is assumed to always have
  some). With nothing to send no gossip timer is armed: the caller reports the delegate's new
  news with `delegate_has_news(now)` (news arriving through a packet or push-pull is seen
  here). Fresh delegate news leaves at once even while a round is armed for later: at most
  one round per `gossip_interval_s / EARLY_ROUNDS_PER_INTERVAL`, so a burst still rides
  shared rounds and the bytes sent are the same (each record is still sent its retransmit
  limit); only the wait for the next tick goes. Recently failed members still get gossip
  so they can refute. A delegate may name further targets per round
  (`Delegate.gossip_targets`: the overlay's members of a network with news), and every
  delegate call says which member a packet or push-pull state is for, so the layer above
  keeps a network's news among its members.
- push-pull: every `push_pull_interval_for(n)` with one random alive member, and on join with
  each seed; after a join, up to `join_sync_rounds` more with random alive members every
  ~`join_sync_interval_s` while the view keeps growing (in a cold start the seeds knew few of
  the nodes joining at the same time; full-state exchanges then spread the whole view in
  O(log n) rounds, where alive messages piggybacked one by one would take O(n)). A remote
  claim that a member we see alive is suspect or dead makes us suspect it locally (not
  broadcast) and tell that member directly, so a wrongly failed side refutes fast.
  What a push-pull teaches about third parties is anti-entropy: it is queued for piggyback
  (as memberlist does) only while fewer than `PULLED_NEWS_ROOM` broadcasts are pending. The
  peer had it, so it already rode, or rides, the gossip of whoever told the peer, and the
  news's own source (the member announcing itself, refuting, leaving; the detector of a
  failure) spreads it by gossip regardless; in a small cluster, with a retransmit limit of
  two or four, the extra transmissions are what makes joins reach everyone before the next
  push-pull, and they fit. Queued without a bound they made a cold start O(N^2)
  broadcasts (each of N nodes queueing all N members it learns). News about the peer
  itself is always queued (a joiner's push-pull with a seed is how the seed hears of it),
  and so are our own refutations.
- re-join: every `reconnect_interval_s` a push-pull with one random failed member we still
  remember; this is what heals partitions (serf's reconnect; bare memberlist has none).
- graceful leave: a DEAD message about ourselves sent from ourselves; peers mark us LEFT at once.
- reaping: failed members are forgotten after `remember_failed_s`, left ones after
  `remember_left_s`.
- bounds: an alive, suspect or dead claim whose incarnation is more than `INCARNATION_JUMP`
  (2**20) above the one we hold for that member (0 for an unknown member) is dropped and
  counted (`implausible_claims`), about ourselves too (we do not refute up to it). So a
  forgery can move an incarnation by at most 2**20 per accepted claim, the victim's
  refutation (one above the claim) always fits in 64 bits, and it wins back its identity as
  soon as it hears the forgery. Unsigned, a viewer can be moved more than 2**20 above the
  victim by two forgeries it accepts before the victim hears either (a suspect, then an
  alive): the victim then drops the claim as implausible and does not refute it
  (tests/gossip/test_swim_attacks.py, an xfail); signed claims (the agent's default) close it.

Events: `MemberJoined` (new, or back from failed/left), `MemberUpdated` (address or
metadata changed while alive), `MemberSuspected`, `MemberRecovered` (a suspect refuted),
`MemberFailed`, `MemberLeft`, `MemberForgotten` (reaped). Each transition emits exactly one
of them (plus `MemberUpdated` when a recovery also changes metadata).

Pure: never imports trio, socket, time, threading or pyroute2; randomness only from the
injected `random.Random`. Network input raises nothing (garbage is counted).
"""

from __future__ import annotations

import functools
import heapq
import math
import random
import sys
from array import array
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from gossip.broadcast import BroadcastQueue
from gossip.config import SwimConfig, suspicion_timeout
from gossip.delegate import Delegate
from gossip.errors import GossipError, WireError
from gossip.identity import KeyCache, Signer, Verdict, verify
from gossip.members import FormedView, MemberDirectory, MemberNode
from gossip.wire import (
    ENCRYPTION_OVERHEAD,
    PACKET_OVERHEAD,
    USER_MESSAGE_OVERHEAD,
    Ack,
    Addr,
    Alive,
    Dead,
    IndirectPing,
    MemberRecord,
    MemberState,
    Message,
    Nack,
    Ping,
    Suspect,
    UnknownMessage,
    UserMessage,
    alive_signed_bytes,
    encode_message,
    encode_packet,
    encode_user_state_chunk,
    leave_signed_bytes,
)

__all__ = [
    "INCARNATION_JUMP", "Member", "MemberFailed", "MemberForgotten", "MemberJoined",
    "MemberLeft", "MemberRecovered", "MemberState", "MemberSuspected", "MemberUpdated",
    "MembershipEvent", "PacketCipher", "StartPushPull", "Swim", "SwimStatistics",
]

_MAX_INCARNATION = 2**64 - 1
_CHUNK_SLACK = 16

#: How far one claim may move a member's incarnation past the one we know (0 for a member we
#: do not know yet). A member's own incarnation grows by one per refutation or metadata change,
#: so honest claims stay far below this; a claim further ahead is dropped and counted
#: (`implausible_claims`): otherwise one forged `Alive(2**64 - 1, ...)` would win forever, since
#: the victim could no longer refute above it. Reaching the type's limit takes at least
#: 2**64 / 2**20 = 2**44 accepted claims in a row.
INCARNATION_JUMP = 2**20
#: Fresh delegate news (`Swim.delegate_has_news`) may bring the next gossip round forward, to
#: at most this many rounds per `gossip_interval_s` (LAN: one per 50 ms) while news arrives.
EARLY_ROUNDS_PER_INTERVAL = 4
#: Addresses remembered as proven (see `Swim.receive_datagram`), oldest forgotten first.
PROVEN_ADDRESSES = 4096
#: Relayed pings waiting for their target's ack at once; further indirect pings are refused.
MAX_RELAYS = 1024
#: Claims (newest per node) kept while the node's public key is being fetched.
MAX_HELD_CLAIMS = 1024
#: News a push-pull teaches about third parties is queued for piggyback only while fewer
#: broadcasts than this are pending (a cold start would queue every member at every node).
PULLED_NEWS_ROOM = 64

#: Member ids per push-pull membership chunk: chunks are cut at fixed id ranges (and within
#: one only where its records exceed the chunk limit), so a range that did not change gives
#: the same chunk, which a shared directory hands out as one bytes object
#: (`MemberDirectory.members_chunk`): the replies a seed sends to thousands of joiners at
#: once share every range but the few that changed between them.
CHUNK_IDS = 256

#: How many probe round trips a `Swim` keeps until `take_probe_rtts` drains them.
PROBE_RTT_SAMPLES = 1024


class PacketCipher(Protocol):
    """What the core needs of `gossip.keyring.Keyring`: seal and open whole packets."""

    def seal(self, plaintext: bytes) -> bytes: ...

    def open(self, data: bytes) -> bytes: ...


@dataclass(frozen=True, slots=True)
class Member:
    """A snapshot of one member as this node sees it."""

    name: str
    addr: Addr
    meta: bytes
    state: MemberState
    incarnation: int


@dataclass(frozen=True, slots=True)
class MemberJoined:
    member: Member


@dataclass(frozen=True, slots=True)
class MemberUpdated:
    member: Member


@dataclass(frozen=True, slots=True)
class MemberSuspected:
    member: Member


@dataclass(frozen=True, slots=True)
class MemberRecovered:
    member: Member


@dataclass(frozen=True, slots=True)
class MemberFailed:
    member: Member


@dataclass(frozen=True, slots=True)
class MemberLeft:
    member: Member


@dataclass(frozen=True, slots=True)
class MemberForgotten:
    member: Member


MembershipEvent = (MemberJoined | MemberUpdated | MemberSuspected | MemberRecovered
                   | MemberFailed | MemberLeft | MemberForgotten)


@dataclass(frozen=True, slots=True)
class StartPushPull:
    """Open a TCP stream to `addr` and exchange full state (`join`: this is a join)."""

    addr: Addr
    join: bool


@dataclass(frozen=True)
class SwimStatistics:
    """Counters and gauges of one `Swim` (what metrics read)."""

    members_alive: int
    members_suspect: int
    members_failed: int
    members_left: int
    incarnation: int
    awareness: int
    packets_sent: int
    bytes_sent: int
    packets_received: int
    bytes_received: int
    wire_errors: int
    auth_failures: int
    unknown_messages: int
    misdirected_pings: int
    probes_sent: int
    probes_failed: int
    indirect_pings_sent: int
    suspicions_started: int
    refutations: int
    broadcasts_pending: int
    broadcasts_dropped: int
    push_pulls_started: int
    reconnects_started: int
    push_pull_chunks_merged: int
    implausible_claims: int
    replies_capped: int
    relays_refused: int
    bad_signatures: int
    unknown_keys: int
    #: News about third parties a push-pull taught us, not queued for piggyback (the queue
    #: held `PULLED_NEWS_ROOM` broadcasts or more).
    pulled_unqueued: int


def _snapshot(node: MemberNode) -> Member:
    return Member(node.name, node.addr, node.meta, node.state, node.incarnation)


class _Suspicion:
    """One suspicion, O(1) in size: at most `needed` + 1 confirmers (a tuple), the bounds of
    its cluster size (a tuple shared by every suspicion started at that size), and one due
    time armed at a time (`due`: the next last-chance probe or the deadline, see
    `Swim._arm_suspicion`). A simulator holds one per (view, suspect) pair: 5 * 10^7 in a
    50/50 partition of 10,000 nodes."""

    __slots__ = ("bounds", "confirmers", "deadline", "due", "extra", "stage", "start")

    def __init__(self, first: tuple[str], now: float,
                 bounds: tuple[int, float, float, int]) -> None:
        """`first`: the sender of the suspicion, alone in a tuple (shared, see
        `MemberDirectory.alone`); `bounds`: (cluster size, suspicion_min_s, suspicion_max_s,
        confirmations_needed)."""
        self.confirmers: tuple[str, ...] = first
        self.start = now
        self.bounds = bounds
        self.deadline = now + self.timeout(0)
        self.stage = 0  # the next of _LAST_CHANCE_AT (fractions of the first timeout)
        self.extra = math.inf  # the last chance a confirmation added
        self.due = math.inf  # when the armed timer fires

    def confirm(self, sender: str, now: float) -> bool:
        """Count an independent suspicion; True if it was new (the deadline may move in, and
        a last chance is added halfway through what is left)."""
        if sender in self.confirmers or len(self.confirmers) > self.bounds[3]:
            return False
        self.confirmers += (sys.intern(sender),)
        self.deadline = self.start + self.timeout(len(self.confirmers) - 1)
        self.extra = min(self.extra, now + _LAST_CHANCE_AT[0] * (self.deadline - now))
        return True

    def timeout(self, confirmations: int) -> float:
        """The suspicion timeout after `confirmations` independent confirmations."""
        _, min_s, max_s, needed = self.bounds
        return suspicion_timeout(min_s, max_s, needed, confirmations)

    def next_due(self) -> float:
        """The next last-chance probe, or the deadline if none comes before it."""
        due = min(self.deadline, self.extra)
        if self.stage < len(_LAST_CHANCE_AT):
            due = min(due, self.start + _LAST_CHANCE_AT[self.stage] * self.timeout(0))
        return due

    def passed(self, now: float) -> None:
        """The last chances due by `now` are done."""
        first = self.timeout(0)
        while (self.stage < len(_LAST_CHANCE_AT)
               and self.start + _LAST_CHANCE_AT[self.stage] * first <= now):
            self.stage += 1
        if self.extra <= now:
            self.extra = math.inf


class _Probe:
    __slots__ = ("acked", "addr", "nacks", "nacks_expected", "sent_at", "seq", "target")

    def __init__(self, seq: int, target: str, addr: Addr, sent_at: float) -> None:
        self.seq = seq
        self.target = target
        self.addr = addr
        self.sent_at = sent_at
        self.acked = False
        self.nacks = 0
        self.nacks_expected = 0


class _Relay:
    __slots__ = ("bare", "nack", "requester", "seq")

    def __init__(self, requester: Addr, seq: int, nack: bool, bare: bool) -> None:
        self.requester = requester
        self.seq = seq
        self.nack = nack
        # The requester has not proven its address: its ack or nack goes without piggyback
        # (smaller than its indirect ping), never as a full packet of gossip.
        self.bare = bare


# Timer kinds.
(_PROBE, _PROBE_TIMEOUT, _GOSSIP, _PUSH_PULL, _RECONNECT, _REAP, _SUSPICION, _RELAY,
 _JOIN_SYNC) = range(9)
#: Fractions of a suspicion's timeout at which a node that heard no refutation pings the
#: suspect itself (see `_last_chance_probe`).
_LAST_CHANCE_AT = (0.5, 0.7, 0.85)

_ALIVE, _SUSPECT, _DEAD, _LEFT = (MemberState.ALIVE, MemberState.SUSPECT, MemberState.DEAD,
                                  MemberState.LEFT)


class Swim:
    """One node's SWIM + Lifeguard membership, driven by `now` and an injected RNG."""

    def __init__(self, config: SwimConfig, name: str, addr: Addr, *, meta: bytes,
                 rng: random.Random, now: float, delegate: Delegate | None = None,
                 keyring: PacketCipher | None = None, signer: Signer | None = None,
                 keys: KeyCache | None = None, directory: MemberDirectory | None = None
                 ) -> None:
        """`signer` and `keys` together turn on origin authentication: our alive and leave
        messages are signed, and every other node's are verified against `keys`.
        `directory`: member ids and shared records (`gossip.members`); a simulator gives all
        its nodes one shared directory, a node on its own gets a private one."""
        config.validate()
        if not name or len(name) > 128:
            raise GossipError(f"Swim name: expected 1..128 characters, got {name!r}")
        if len(meta) > config.meta_limit:
            raise GossipError(f"Swim meta: {len(meta)} bytes exceed meta_limit "
                              f"{config.meta_limit}")
        self.config = config
        self.name = name
        self.addr = addr
        self.keyring = keyring
        self._rng = rng
        self._delegate = delegate
        if (signer is None) != (keys is None):
            raise GossipError("Swim signing: give both signer and keys, or neither")
        self._signer = signer
        self._keys = keys
        # Newest alive/leave per node whose key is not known yet; replayed by `keys_learned`.
        self._held: dict[str, Alive | Dead] = {}
        # The member table (see gossip.members): by directory id, the node we hold (None:
        # not known), the position in `_others` (-1: none); the other members' ids in any
        # order; the ids of failed or left members; counts per state (self not counted).
        self._dir = directory if directory is not None else MemberDirectory()
        self._ids, self._by_addr = self._dir.ids, self._dir.by_addr
        self._self = MemberNode(self._dir.id_for(name), name, addr, meta, 0, _ALIVE, self)
        self._dir.bind(addr, self._self.id)
        self._sign_self()
        self._recs: list[MemberNode | None] = []
        self._positions = array("i")
        # Per CHUNK_IDS id range: a version, moved on whenever the range's records change
        # (`_changed`): push-pull chunks are kept by (view token, range, version).
        self._view_token = self._dir.new_view()
        self._range_versions = array("q")
        self._grow()
        self._recs[self._self.id] = self._self
        self._others = array("i")
        # Failed or left ids -> when they went down here; suspects' ids -> their suspicion
        # (the shared records hold neither, see gossip.members).
        self._down: dict[int, float] = {}
        self._suspicions: dict[int, _Suspicion] = {}
        # Suspicion timers (`_arm_suspicion`): due time -> the id whose suspicion is due
        # then, or the ids in arming order; those times in a heap; one _SUSPICION timer,
        # for the earliest (`_sweep_at`), in `_timers`.
        self._suspicions_due: dict[float, int | list[int]] = {}
        self._due_times: list[float] = []
        self._sweep_at = math.inf
        self._counts = [0, 0, 0, 0]
        # Probe targets: ids before `_probe_pos` were probed this round; the next one is
        # drawn uniformly from the rest (a shuffle done one step per probe).
        self._probe_order = array("i")
        self._probe_pos = 0
        self._probe: _Probe | None = None
        # Round trips of acked probes (ping to ack, direct or through helpers), newest kept
        # when nobody drains them; `take_probe_rtts` hands them to metrics.
        self._probe_rtts: deque[float] = deque(maxlen=PROBE_RTT_SAMPLES)
        self._relays: dict[int, _Relay] = {}
        self._seq = 0
        self._timers: list[tuple[float, int, int, Any]] = []
        self._timer_seq = 0
        self._broadcasts = BroadcastQueue(config.retransmit_mult)
        self._outbox: list[tuple[bytes, Addr]] = []
        self._events: deque[MembershipEvent] = deque()
        self._push_pulls: list[StartPushPull] = []
        self._awareness = 0
        self._leaving = False
        self._gossip_armed = False
        self._gossip_due = math.inf  # when the armed round runs (an earlier one supersedes it)
        self._last_gossip_round = -math.inf
        self._stats: dict[str, int] = dict.fromkeys(
            ("packets_sent", "bytes_sent", "packets_received", "bytes_received", "wire_errors",
             "auth_failures", "unknown_messages", "misdirected_pings", "probes_sent",
             "probes_failed", "indirect_pings_sent", "suspicions_started", "refutations",
             "push_pulls_started", "reconnects_started", "push_pull_chunks_merged",
             "implausible_claims", "replies_capped", "relays_refused", "bad_signatures",
             "unknown_keys", "pulled_unqueued"), 0)
        # Addresses that answered our probe directly; replies to any other address that is
        # not a member's stay within twice the request (no amplification).
        self._proven: dict[Addr, None] = {}
        self._reply_room = math.inf
        # Where the packet or push-pull being handled came from (None: none is), and whether
        # it is a push-pull's membership (what it teaches about others is not re-broadcast).
        self._news_from: Addr | None = None
        self._pulling = False
        # Cluster size -> suspicion_min_s, suspicion_max_s, confirmations_needed, as last used.
        self._suspicion_bounds: tuple[int, float, float, int] = (-1, 0.0, 0.0, 0)
        self._at(now + rng.uniform(0, config.probe_interval_s), _PROBE, None)
        self._push_pull_token = 0
        # Bytes of our membership state as last sent in a push-pull (0: none yet).
        self._members_state_bytes = 0
        # After a join: [rounds left, members seen at the join or the last round, rounds in a
        # row that brought nothing].
        self._join_sync_token = 0
        self._join_sync = [0, 0, 0]
        self._at(now + rng.uniform(0, config.push_pull_interval_s), _PUSH_PULL, 0)
        if config.reconnect_interval_s is not None:
            self._at(now + rng.uniform(0, config.reconnect_interval_s), _RECONNECT, None)
        self._at(now + self._reap_period(), _REAP, None)
        if delegate is not None:
            self._arm_gossip(now)

    # -- the caller's side: input ----------------------------------------------------------

    def join(self, seeds: list[Addr], now: float) -> None:
        """Push-pull with each seed (join flag set) and announce ourselves."""
        for seed in seeds:
            if seed != self.addr:
                self._push_pulls.append(StartPushPull(seed, True))
                self._stats["push_pulls_started"] += 1
        self._announce_self(now)
        self._join_sync_token += 1
        self._join_sync = [self.config.join_sync_rounds, self._known(), 0]
        if self.config.join_sync_rounds:
            self._at(now + self._join_sync_delay(), _JOIN_SYNC, self._join_sync_token)

    def leave(self, now: float) -> None:
        """Announce a graceful leave: sent directly to `leave_fanout` members, then gossiped.

        We stop probing; the caller keeps driving us until `statistics().broadcasts_pending`
        is 0 (or its own time box ends), then stops.
        """
        if self._leaving:
            return
        self._leaving = True
        me = self._self
        self._self.state = _LEFT
        signature = (b"" if self._signer is None
                     else self._signer.sign(leave_signed_bytes(me.incarnation, me.name)))
        me.signature, me.key = signature, b""
        encoded = encode_message(Dead(me.incarnation, me.name, me.name, signature))
        self._broadcasts.queue(encoded, me.name)
        for node in self._random_members(self.config.leave_fanout, _is_alive):
            self._emit(node.addr, [encoded])
        self._arm_gossip(now)

    def set_meta(self, meta: bytes, now: float) -> None:
        """Change our metadata; spread with a new incarnation."""
        if len(meta) > self.config.meta_limit:
            raise GossipError(f"Swim meta: {len(meta)} bytes exceed meta_limit "
                              f"{self.config.meta_limit}")
        self._self.meta = meta
        self._self.incarnation = min(self._self.incarnation + 1, _MAX_INCARNATION)
        self._announce_self(now)

    def broadcast_user(self, payload: bytes, now: float, key: str | None = None) -> None:
        """Queue a user message for piggybacking (a newer one with the same key replaces it).

        It is sent `retransmit_limit(n)` times, to random members; receivers hand it to their
        delegate and do not re-broadcast it: spreading further is the delegate's decision
        (as with memberlist's user broadcasts).
        """
        if len(payload) + USER_MESSAGE_OVERHEAD > self._budget():
            raise GossipError(f"user broadcast of {len(payload)} bytes exceeds the packet "
                              f"budget of {self._budget()} bytes")
        self._broadcasts.queue(encode_message(UserMessage(payload)),
                               None if key is None else ("user", key))
        self._arm_gossip(now)

    def receive_datagram(self, data: bytes, addr: Addr, now: float) -> None:
        """One UDP payload from `addr`. Garbage, forgeries and plain text (with a keyring)
        are counted and dropped; this never raises for any input.

        Amplification bound: everything this packet makes us send (acks, relayed pings)
        totals at most twice its size unless `addr` has proven itself: it acked a probe we
        sent to it (return routability), or it is the address of a member we know (so
        piggybacked gossip keeps flowing on acks; a spoofed member address can draw
        full-size acks toward that member, never toward anyone else). An authentic sealed
        packet proves key possession, not the source address, so a key holder cannot
        reflect either. Further replies are dropped and counted (`replies_capped`).
        """
        stats = self._stats
        stats["packets_received"] += 1
        stats["bytes_received"] += len(data)
        self._reply_room = 2.0 * len(data)
        if self.keyring is not None:
            try:
                data = self.keyring.open(data)
            except WireError:
                stats["auth_failures"] += 1
                return
        if addr in self._proven or self._owner(addr) is not None:
            self._reply_room = math.inf
        try:
            messages = self._dir.decode_packet(data)
        except WireError:
            stats["wire_errors"] += 1
            return
        self._news_from = addr
        try:
            self._dispatch(messages, addr, now)
        finally:
            self._news_from = None

    def _dispatch(self, messages: list[Message | UnknownMessage], addr: Addr,
                  now: float) -> None:
        stats = self._stats
        # Suspicions first: a refutation then rides on the ack we send for a ping.
        for msg in messages:
            if isinstance(msg, Suspect):
                self._on_suspect(msg, now)
        for msg in messages:
            if isinstance(msg, Ping):
                self._on_ping(msg, addr)
            elif isinstance(msg, Ack):
                self._on_ack(msg, addr, now)
            elif isinstance(msg, Alive):
                self._on_alive(msg, now)
            elif isinstance(msg, Dead):
                self._on_dead(msg, now)
            elif isinstance(msg, IndirectPing):
                self._on_indirect_ping(msg, addr, now)
            elif isinstance(msg, Nack):
                self._on_nack(msg)
            elif isinstance(msg, UserMessage):
                if self._delegate is not None:
                    self._delegate.notify_user_msg(msg.payload, now)
                    self._arm_gossip_for_delegate(now)
            elif isinstance(msg, UnknownMessage):
                stats["unknown_messages"] += 1

    def handle_timeout(self, now: float) -> None:
        """Run every timer due at `now`."""
        timers = self._timers
        while timers and timers[0][0] <= now:
            when, _, kind, arg = heapq.heappop(timers)
            if kind == _PROBE:
                self._probe_tick(now)
            elif kind == _PROBE_TIMEOUT:
                self._probe_timed_out(arg, now)
            elif kind == _GOSSIP:
                self._gossip_tick(now)
            elif kind == _SUSPICION:
                self._suspicion_sweep(when, now)
            elif kind == _RELAY:
                self._relay_timed_out(arg)
            elif kind == _PUSH_PULL:
                self._push_pull_tick(arg, now)
            elif kind == _RECONNECT:
                self._reconnect_tick(now)
            elif kind == _JOIN_SYNC:
                self._join_sync_tick(arg, now)
            else:
                self._reap_tick(now)

    def merge_push_pull_chunk(self, chunk: bytes, addr: Addr, join: bool, now: float) -> bool:
        """One chunk of a peer's push-pull state. False (and counted) if it is garbage."""
        try:
            decoded = self._dir.decode_chunk(chunk)
        except WireError:
            self._stats["wire_errors"] += 1
            return False
        self._stats["push_pull_chunks_merged"] += 1
        if decoded is None:
            self._stats["unknown_messages"] += 1
        elif isinstance(decoded, bytes):
            if self._delegate is not None:
                self._delegate.merge_remote_state(decoded, join, now)
                self._arm_gossip_for_delegate(now)
        else:
            self._news_from = addr
            self._pulling = True
            ids, recs, me = self._ids, self._recs, self._self
            known = len(recs)
            try:
                for record in decoded:
                    # What we hold already (most of every push-pull) is skipped here: the
                    # handlers would drop it too, after building a message and checking
                    # its signature's claim.
                    member_id = ids.get(record.name)
                    if member_id is not None and member_id < known:
                        node = recs[member_id]
                        if (node is not None and node is not me
                                and record.incarnation == node.incarnation
                                and record.state == node.state and node.state != _SUSPECT):
                            continue
                    self._merge_record(record, now)
            finally:
                self._news_from = None
                self._pulling = False
        return True

    def keys_learned(self, now: float) -> None:
        """The key cache learned keys: replay the claims held while they were unknown."""
        held, self._held = self._held, {}
        for claim in held.values():
            if isinstance(claim, Alive):
                self._on_alive(claim, now)
            else:
                self._on_dead(claim, now)

    def adopt_members(self, records: list[MemberRecord], now: float) -> None:
        """Take members as already known: no events, no broadcasts, unknown names only.

        For a simulation or test that starts from a formed cluster; a live node learns
        members through `join` and `merge_push_pull_chunk`.
        """
        self.adopt_view(FormedView(self._dir, records, now), now)

    def adopt_view(self, view: FormedView, now: float) -> None:
        """`adopt_members` from a view prepared once (with our directory) for many nodes: a
        node that knows only itself copies its arrays, at C speed."""
        if view.directory is not self._dir:
            raise GossipError("adopt_view: the view was prepared with another directory")
        me = self._self
        if self._known() == 1:
            self._recs = list(view.nodes)
            self._positions = array("i", view.positions)
            self._others = array("i", view.order)
            self._counts = list(view.counts)
            self._down = dict(view.down)
            self._probe_order = array("i", view.probe)
            self._probe_pos = 0
            self._grow()
            mine = self._recs[me.id]
            if mine is not None:
                self._counts[mine.state] -= 1
                self._down.pop(me.id, None)
                self._unlist(me.id)
            self._recs[me.id] = me
            self._range_versions = array("q", (v + 1 for v in self._range_versions))
        else:
            for node in view.nodes:
                if node is not None and self._get(node.name) is None:
                    self._add(node, view.down.get(node.id, now))
        # Re-draw the push-pull phase for the cluster we now belong to: the period of a
        # member that has been in it a while (stretched to the byte budget for its state).
        self._members_state_bytes = max(self._members_state_bytes, view.state_bytes)
        self._push_pull_token += 1
        period = self._push_pull_period()
        self._at(now + self._rng.uniform(0, period), _PUSH_PULL, self._push_pull_token)

    # -- the caller's side: output ---------------------------------------------------------

    def next_deadline(self) -> float:
        """When `handle_timeout` must next be called (inf if never). Timers that would find
        nothing to do are dropped first, so an idle node is not woken for them: the timeout
        of a probe that was acked (or replaced), a gossip round an earlier one superseded."""
        timers = self._timers
        while timers:
            when, _, kind, arg = timers[0]
            if kind == _PROBE_TIMEOUT:
                probe: _Probe = arg
                stale = probe is not self._probe or probe.acked
            elif kind == _SUSPICION:
                stale = when != self._sweep_at
            else:
                stale = kind == _GOSSIP and (not self._gossip_armed or when < self._gossip_due)
            if not stale:
                return when
            heapq.heappop(timers)
        return math.inf

    def datagrams_to_send(self) -> list[tuple[bytes, Addr]]:
        """Sealed UDP payloads with their destinations, oldest first."""
        out, self._outbox = self._outbox, []
        return out

    def push_pulls_to_start(self) -> list[StartPushPull]:
        """Push-pull exchanges the caller should open now."""
        out, self._push_pulls = self._push_pulls, []
        return out

    def next_event(self) -> MembershipEvent | None:
        """The oldest undelivered membership event, or None."""
        return self._events.popleft() if self._events else None

    def push_pull_state(self, join: bool, to: str | Addr | None = None) -> list[bytes]:
        """Our full state as chunks: membership first, then the delegate's, each bounded.

        `to`: the peer, by member name or gossip address (None: not known), so the delegate
        can scope its state to what the peer shares with us. Membership is always whole.
        """
        owner = self._owner(to) if isinstance(to, tuple) else None
        peer = owner.name if owner is not None else None if isinstance(to, tuple) else to
        limit = self.config.push_pull_chunk_limit - _CHUNK_SLACK
        chunks: list[bytes] = []
        versions, token, kept = self._range_versions, self._view_token, self._dir.range_chunks
        mine = self._self.id // CHUNK_IDS  # (our own record changes in place: always built)
        for index in range(len(versions)):
            if index == mine:
                chunks += self._build_range(index, limit)
            else:
                chunks += kept((token, index, versions[index]),
                               functools.partial(self._build_range, index, limit))
        self._members_state_bytes = sum(len(chunk) for chunk in chunks)
        if self._delegate is not None:
            for piece in self._delegate.local_state(join, peer):
                if len(piece) > limit:
                    raise GossipError(f"delegate state chunk of {len(piece)} bytes exceeds "
                                      f"push_pull_chunk_limit {self.config.push_pull_chunk_limit}")
                chunks.append(encode_user_state_chunk(piece))
        return chunks

    def _build_range(self, index: int, limit: int) -> list[bytes]:
        """The membership chunks of id range `index`: its records, cut further only where
        they exceed `limit` bytes."""
        chunks: list[bytes] = []
        members_chunk = self._dir.members_chunk
        packed: list[bytes] = []
        size = 0
        for node in self._recs[index * CHUNK_IDS:(index + 1) * CHUNK_IDS]:
            if node is None:
                continue
            record = node.record()
            if size + len(record) > limit:
                chunks.append(members_chunk(packed))
                packed, size = [], 0
            packed.append(record)
            size += len(record)
        if packed:
            chunks.append(members_chunk(packed))
        return chunks

    def members(self) -> list[Member]:
        """Every member we know (self included), in any state."""
        return [_snapshot(node) for node in self._recs if node is not None]

    def member(self, name: str) -> Member | None:
        node = self._get(name)
        return None if node is None else _snapshot(node)

    def state_of(self, name: str) -> MemberState | None:
        """A member's state, cheaply (no snapshot)."""
        node = self._get(name)
        return None if node is None else node.state

    @property
    def incarnation(self) -> int:
        return self._self.incarnation

    @property
    def leaving(self) -> bool:
        return self._leaving

    def cluster_size(self) -> int:
        """Members alive or suspect, self included: the n of every formula."""
        return self._counts[_ALIVE] + self._counts[_SUSPECT] + 1

    def take_probe_rtts(self) -> list[float]:
        """Round trips (seconds, ping sent to ack received) of the probes acked since the last
        call, oldest first; at most `PROBE_RTT_SAMPLES` are kept in between."""
        rtts = list(self._probe_rtts)
        self._probe_rtts.clear()
        return rtts

    def statistics(self) -> SwimStatistics:
        c = self._counts
        return SwimStatistics(
            members_alive=c[_ALIVE], members_suspect=c[_SUSPECT], members_failed=c[_DEAD],
            members_left=c[_LEFT], incarnation=self._self.incarnation,
            awareness=self._awareness, broadcasts_pending=len(self._broadcasts),
            broadcasts_dropped=self._broadcasts.dropped, **self._stats)

    # -- sending -----------------------------------------------------------------------------

    def _budget(self) -> int:
        overhead = PACKET_OVERHEAD + (ENCRYPTION_OVERHEAD if self.keyring is not None else 0)
        return self.config.udp_budget - overhead

    def _send(self, addr: Addr, parts: list[bytes]) -> None:
        """Send messages to one peer, filling the rest of the packet with broadcasts."""
        room = self._budget() - sum(map(len, parts))
        self._emit(addr, parts + self._piggyback(room, addr))

    def _respond(self, addr: Addr, parts: list[bytes]) -> bool:
        """Send what a received packet asked for, within its reply room; False if dropped."""
        room = self._reply_room
        if room == math.inf:
            self._send(addr, parts)
            return True
        overhead = PACKET_OVERHEAD + (ENCRYPTION_OVERHEAD if self.keyring is not None else 0)
        size = overhead + sum(map(len, parts))
        if size > room:
            self._stats["replies_capped"] += 1
            return False
        extra = self._piggyback(min(self._budget() + overhead, int(room)) - size, addr)
        self._reply_room = room - size - sum(map(len, extra))
        self._emit(addr, parts + extra)
        return True

    def _prove(self, addr: Addr) -> None:
        proven = self._proven
        if addr not in proven:
            proven[addr] = None
            if len(proven) > PROVEN_ADDRESSES:
                del proven[next(iter(proven))]

    def _piggyback(self, room: int, to: Addr) -> list[bytes]:
        if self._delegate is None and not self._broadcasts:
            return []  # (most packets: nothing to look up)
        owner = self._owner(to)
        member = None if owner is None else owner.name
        parts = self._broadcasts.take(0, room, self.cluster_size(), to=member)
        if self._delegate is not None:
            room -= sum(map(len, parts))
            if room > USER_MESSAGE_OVERHEAD:
                for payload in self._delegate.get_broadcasts(USER_MESSAGE_OVERHEAD, room,
                                                             member):
                    encoded = encode_message(UserMessage(payload))
                    if len(encoded) <= room:
                        parts.append(encoded)
                        room -= len(encoded)
        return parts

    def _emit(self, addr: Addr, parts: list[bytes]) -> None:
        data = encode_packet(parts)
        if self.keyring is not None:
            data = self.keyring.seal(data)
        self._outbox.append((data, addr))
        self._stats["packets_sent"] += 1
        self._stats["bytes_sent"] += len(data)

    def _queue_broadcast(self, name: str, message: Message | bytes, now: float, *,
                         alive: bool = False) -> None:
        """Queue news about member `name`. It is never sent back to the member whose packet or
        push-pull brought it, nor (news that `name` is `alive`) to `name` itself: they know,
        and a transmission spent there is one that another member misses. Our own news goes
        to everyone (a refutation must reach the member that suspected us). What a push-pull
        teaches about a third party is queued only while fewer than `PULLED_NEWS_ROOM`
        broadcasts are pending (anti-entropy, see the module docstring); news about the peer
        itself always is (its join). `message` is encoded only if it is queued."""
        not_to: set[str] = set()
        if name != self.name:
            if alive:
                not_to.add(name)
            # (looked up now: a push-pull may have introduced the sender a record ago)
            teller = self._owner(self._news_from) if self._news_from else None
            if (self._pulling and (teller is None or teller.name != name)
                    and len(self._broadcasts) >= PULLED_NEWS_ROOM):
                self._stats["pulled_unqueued"] += 1
                return
            if teller is not None:
                not_to.add(teller.name)
        encoded = message if isinstance(message, bytes) else encode_message(message)
        # (one copy of the name and of the news for all the views that queue it)
        self._broadcasts.queue(self._dir.message(encoded), sys.intern(name),
                               not_to=frozenset(not_to))
        self._arm_gossip(now)

    def _announce_self(self, now: float) -> None:
        me = self._self
        self._sign_self()
        self._queue_broadcast(me.name, Alive(
            me.incarnation, me.name, me.addr, me.meta, me.key, me.signature), now)

    def _sign_self(self) -> None:
        """Sign our current alive claim (once per incarnation, address and metadata)."""
        me = self._self
        if self._signer is None:
            return
        me.key = self._signer.public_key
        me.signature = self._signer.sign(alive_signed_bytes(me.incarnation, me.name, me.addr,
                                                            me.meta, me.key))

    def _proven_claim(self, name: str, announced: bytes, signature: bytes,
                      data: bytes) -> bool:
        """With signing on: True if `name` signed `data`; otherwise dropped and counted."""
        keys = self._keys
        if keys is None:
            return True
        if name == self.name:
            assert self._signer is not None
            ok = verify(self._signer.public_key, signature, data)
            verdict = Verdict.VALID if ok else Verdict.BAD_SIGNATURE
        else:
            verdict = keys.check(name, announced, signature, data)
        if verdict is Verdict.VALID:
            return True
        self._stats["unknown_keys" if verdict is Verdict.UNKNOWN_KEY else "bad_signatures"] += 1
        return False

    def _hold(self, name: str, claim: Alive | Dead) -> None:
        held = self._held
        previous = held.pop(name, None)
        if previous is not None and previous.incarnation > claim.incarnation:
            claim = previous
        held[name] = claim
        if len(held) > MAX_HELD_CLAIMS:
            del held[next(iter(held))]

    # -- timers ------------------------------------------------------------------------------

    def _at(self, when: float, kind: int, arg: Any) -> None:
        self._timer_seq += 1
        heapq.heappush(self._timers, (when, self._timer_seq, kind, arg))

    def _scaled(self, seconds: float) -> float:
        return seconds * (self._awareness + 1)

    def _adjust_awareness(self, delta: int) -> None:
        top = self.config.awareness_max_multiplier - 1
        self._awareness = min(top, max(0, self._awareness + delta))

    def _arm_gossip(self, now: float) -> None:
        if not self._gossip_armed:
            self._schedule_gossip(now + self._rng.uniform(0, self.config.gossip_interval_s))

    def _schedule_gossip(self, when: float) -> None:
        """Arm the gossip round at `when`; a timer armed for later is superseded (its tick
        finds `_gossip_due` moved and does nothing)."""
        self._gossip_armed = True
        self._gossip_due = when
        self._at(when, _GOSSIP, None)

    def _delegate_pending(self) -> bool:
        """The delegate may have broadcasts (True for one that cannot tell)."""
        has_broadcasts = getattr(self._delegate, "has_broadcasts", None)
        if has_broadcasts is None:
            return self._delegate is not None
        return bool(has_broadcasts())

    def _arm_gossip_for_delegate(self, now: float) -> None:
        """After a delegate call: a delegate that now has news (a record to relay) gets a
        round at once when none is armed."""
        if self._delegate_pending() and not self._gossip_armed:
            self._schedule_gossip(now)

    def delegate_has_news(self, now: float) -> None:
        """The delegate queued fresh broadcasts (a record of ours, or one it merged and
        relays): gossip them now, also when a round is armed for later (older news being
        retransmitted), unless a round ran less than gossip_interval_s /
        EARLY_ROUNDS_PER_INTERVAL ago: then at that spacing. News never waits for the next
        tick on a hop; a burst rides the rounds that follow."""
        if self._delegate is None or not self._delegate_pending():
            return
        spacing = self.config.gossip_interval_s / EARLY_ROUNDS_PER_INTERVAL
        soonest = max(now, self._last_gossip_round + spacing)
        if not self._gossip_armed or soonest < self._gossip_due:
            self._schedule_gossip(soonest)

    def _reap_period(self) -> float:
        c = self.config
        return min(60.0, max(1.0, min(c.remember_failed_s, c.remember_left_s) / 4))

    # -- probing -----------------------------------------------------------------------------

    def _probe_tick(self, now: float) -> None:
        probe = self._probe
        if probe is not None:
            self._probe = None
            self._finish_probe(probe, now)
        if not self._leaving:
            target = self._next_probe_target()
            if target is not None:
                self._start_probe(target, now)
        self._at(now + self._scaled(self.config.probe_interval_s), _PROBE, None)

    def _next_probe_target(self) -> MemberNode | None:
        recs = self._recs
        for _ in range(2):
            order = self._probe_order
            end = len(order)
            randrange = self._rng.randrange
            while self._probe_pos < end:
                pos = self._probe_pos
                pick = randrange(pos, end)
                member_id = order[pick]
                order[pick] = order[pos]
                order[pos] = member_id
                self._probe_pos = pos + 1
                node = recs[member_id] if member_id < len(recs) else None
                if node is not None and node.state <= _SUSPECT and node is not self._self:
                    return node
            self._probe_order = array("i", (i for i in self._others
                                            if _is_probed(recs[i])))
            self._probe_pos = 0
            if not self._probe_order:
                return None
        return None

    def _start_probe(self, target: MemberNode, now: float) -> None:
        self._seq += 1
        probe = _Probe(self._seq, target.name, target.addr, now)
        self._probe = probe
        parts = [encode_message(Ping(probe.seq, target.name))]
        if target.state == _SUSPECT:
            parts.insert(0, encode_message(Suspect(target.incarnation, target.name, self.name)))
        self._send(target.addr, parts)
        self._stats["probes_sent"] += 1
        self._at(now + self._scaled(self.config.probe_timeout_s), _PROBE_TIMEOUT, probe)

    def _probe_timed_out(self, probe: _Probe, now: float) -> None:
        if probe is not self._probe or probe.acked:
            return
        target = probe.target
        # A second direct try: memberlist falls back to a TCP ping here; a UDP retry is what
        # a pure core can do, and it halves false suspicions on a lossy path.
        self._send(probe.addr, [encode_message(Ping(probe.seq, target))])
        helpers = self._random_members(self.config.indirect_checks,
                                       lambda n: n.state == _ALIVE and n.name != target)
        if not helpers:
            return
        encoded = encode_message(IndirectPing(probe.seq, target, probe.addr, True))
        for helper in helpers:
            self._send(helper.addr, [encoded])
        probe.nacks_expected = len(helpers)
        self._stats["indirect_pings_sent"] += len(helpers)

    def _finish_probe(self, probe: _Probe, now: float) -> None:
        if probe.acked:
            return
        if probe.nacks_expected > 0:
            self._adjust_awareness(max(0, probe.nacks_expected - probe.nacks))
        else:
            self._adjust_awareness(1)
        node = self._get(probe.target)
        if node is None or node.state > _SUSPECT or node.addr != probe.addr:
            return
        self._stats["probes_failed"] += 1
        self._on_suspect(Suspect(node.incarnation, node.name, self.name), now)

    def _on_ping(self, msg: Ping, addr: Addr) -> None:
        if msg.target != self.name:
            self._stats["misdirected_pings"] += 1
            return
        self._respond(addr, [encode_message(Ack(msg.seq))])

    def _on_indirect_ping(self, msg: IndirectPing, addr: Addr, now: float) -> None:
        target = self._get(msg.target)
        if (target is None or target is self._self or target.addr != msg.addr
                or len(self._relays) >= MAX_RELAYS):
            # Only toward a member we know at that address: never a reflector for others.
            self._stats["relays_refused"] += 1
            return
        self._seq += 1
        if self._respond(msg.addr, [encode_message(Ping(self._seq, msg.target))]):
            self._relays[self._seq] = _Relay(addr, msg.seq, msg.nack,
                                             bare=self._reply_room != math.inf)
            self._at(now + self.config.probe_timeout_s, _RELAY, self._seq)

    def _relay_timed_out(self, seq: int) -> None:
        relay = self._relays.pop(seq, None)
        if relay is not None and relay.nack:
            self._answer_relay(relay, encode_message(Nack(relay.seq)))

    def _on_ack(self, msg: Ack, addr: Addr, now: float) -> None:
        probe = self._probe
        if probe is not None and probe.seq == msg.seq:
            if addr == probe.addr:
                self._prove(addr)
            if not probe.acked:
                probe.acked = True
                self._adjust_awareness(-1)
                self._probe_rtts.append(now - probe.sent_at)
            return
        relay = self._relays.pop(msg.seq, None)
        if relay is not None:
            self._answer_relay(relay, encode_message(Ack(relay.seq)))

    def _answer_relay(self, relay: _Relay, message: bytes) -> None:
        if relay.bare:
            self._emit(relay.requester, [message])
        else:
            self._send(relay.requester, [message])

    def _on_nack(self, msg: Nack) -> None:
        probe = self._probe
        if probe is not None and probe.seq == msg.seq:
            probe.nacks += 1

    # -- gossip, push-pull, re-join, reaping -----------------------------------------------------

    def _gossip_tick(self, now: float) -> None:
        if not self._gossip_armed or now < self._gossip_due:
            return  # superseded by an earlier round (`delegate_has_news`)
        self._gossip_armed = False
        self._gossip_due = math.inf
        self._last_gossip_round = now
        if not self._broadcasts and not self._delegate_pending():
            return
        horizon = now - self.config.gossip_to_dead_s
        down = self._down

        def eligible(node: MemberNode) -> bool:
            return node.state <= _SUSPECT or (node.state == _DEAD and down[node.id] > horizon)

        targets = self._random_members(self.config.gossip_nodes, eligible)
        if self._delegate is not None:
            # The delegate may want its news at members of its choosing (a network's own).
            picked = {target.name for target in targets}
            for name in self._delegate.gossip_targets(self.config.gossip_nodes):
                node = self._get(name)
                if node is not None and name not in picked and node is not self._self \
                        and eligible(node):
                    picked.add(name)
                    targets.append(node)
        for target in targets:
            parts = self._piggyback(self._budget(), target.addr)
            if parts:  # empty for this target may still leave news for the next
                self._emit(target.addr, parts)
        if self._broadcasts or self._delegate_pending():
            self._schedule_gossip(now + self.config.gossip_interval_s)

    def _push_pull_tick(self, token: int, now: float) -> None:
        if token != self._push_pull_token:
            return
        if not self._leaving:
            for node in self._random_members(1, _is_alive):
                self._push_pulls.append(StartPushPull(node.addr, False))
                self._stats["push_pulls_started"] += 1
        self._at(now + self._push_pull_period(), _PUSH_PULL, token)

    def _push_pull_period(self) -> float:
        """`push_pull_interval_for(n)`, stretched so that an exchange of our membership state
        (its size both ways, as last built) averages at most `push_pull_bytes_per_s`."""
        config = self.config
        period = config.push_pull_interval_for(self.cluster_size())
        if config.push_pull_bytes_per_s > 0:
            period = max(period, 2 * self._members_state_bytes / config.push_pull_bytes_per_s)
        return period

    def _join_sync_delay(self) -> float:
        return self.config.join_sync_interval_s * self._rng.uniform(0.5, 1.5)

    def _join_sync_tick(self, token: int, now: float) -> None:
        """A push-pull with a random alive member until the view stayed the same for two
        rounds (a view complete early keeps spreading a while: in a cold start the complete
        views are the ones the others lack), or at once if it did not grow since the join: a
        join repeated in a cluster we already know (the agent retries seeds that are down)
        costs nothing more."""
        sync = self._join_sync
        if token != self._join_sync_token or self._leaving or sync[0] <= 0:
            return
        grew = self._known() != sync[1]
        first = sync[0] == self.config.join_sync_rounds
        sync[1] = self._known()
        sync[2] = 0 if grew else sync[2] + 1
        if sync[2] >= 2 or (first and not grew):
            return
        sync[0] -= 1
        for node in self._random_members(1, _is_alive):
            self._push_pulls.append(StartPushPull(node.addr, False))
            self._stats["push_pulls_started"] += 1
        if sync[0] > 0:
            self._at(now + self._join_sync_delay(), _JOIN_SYNC, token)

    def _reconnect_tick(self, now: float) -> None:
        interval = self.config.reconnect_interval_s
        assert interval is not None
        if not self._leaving and self._counts[_DEAD]:
            recs = self._recs
            failed = [node for i in self._down if (node := recs[i]) is not None
                      and node.state == _DEAD]
            if failed:
                node = self._rng.choice(failed)
                self._push_pulls.append(StartPushPull(node.addr, False))
                self._stats["reconnects_started"] += 1
        self._at(now + interval, _RECONNECT, None)

    def _reap_tick(self, now: float) -> None:
        failed_before = now - self.config.remember_failed_s
        left_before = now - self.config.remember_left_s
        recs = self._recs
        for member_id, since in list(self._down.items()):
            node = recs[member_id]
            if node is not None and (
                    (node.state == _DEAD and since < failed_before)
                    or (node.state == _LEFT and since < left_before)):
                self._forget(node)
        self._at(now + self._reap_period(), _REAP, None)

    # -- member table --------------------------------------------------------------------------

    def _known(self) -> int:
        """Members we hold in any state, self included."""
        return len(self._others) + 1

    def _get(self, name: str) -> MemberNode | None:
        member_id = self._ids.get(name)
        recs = self._recs
        return None if member_id is None or member_id >= len(recs) else recs[member_id]

    def _owner(self, addr: Addr) -> MemberNode | None:
        """The other member we know at `addr`, if any."""
        member_id = self._by_addr.get(addr)
        recs = self._recs
        if member_id is None or member_id >= len(recs):
            return None
        node = recs[member_id]
        if node is None or node is self._self or node.addr != addr:
            return None
        return node

    def _grow(self) -> None:
        """Size the arrays indexed by id to the directory's capacity."""
        missing = self._dir.capacity - len(self._recs)
        if missing > 0:
            self._recs.extend([None] * missing)
            self._positions.extend(array("i", [-1]) * missing)
        ranges = -(-len(self._recs) // CHUNK_IDS)
        if ranges > len(self._range_versions):
            self._range_versions.extend(array("q", [0]) * (ranges - len(self._range_versions)))

    def _changed(self, member_id: int) -> None:
        """The record we hold for `member_id` is another one (or none) now."""
        self._range_versions[member_id // CHUNK_IDS] += 1

    def _random_members(self, k: int, wanted: Callable[[MemberNode], bool]) -> list[MemberNode]:
        """Up to k distinct other members satisfying `wanted`, uniformly at random."""
        others = self._others
        count = len(others)
        if k <= 0 or count == 0:
            return []
        recs = self._recs
        if count > 4 * k + 16:
            chosen: dict[int, MemberNode] = {}
            rand = self._rng.randrange
            for _ in range(4 * k + 16):
                member_id = others[rand(count)]
                if member_id not in chosen:
                    node = recs[member_id]
                    assert node is not None
                    if wanted(node):
                        chosen[member_id] = node
                        if len(chosen) == k:
                            return list(chosen.values())
            rest = [node for i in others if i not in chosen
                    and (node := recs[i]) is not None and wanted(node)]
            picked = list(chosen.values())
            return picked + self._rng.sample(rest, min(k - len(picked), len(rest)))
        candidates = [node for i in others if (node := recs[i]) is not None and wanted(node)]
        return self._rng.sample(candidates, min(k, len(candidates)))

    def _add(self, node: MemberNode, now: float) -> None:
        """Hold `node`, a member we did not hold (`now`: since when, if it is down)."""
        self._grow()
        member_id = node.id
        self._recs[member_id] = node
        self._changed(member_id)
        self._dir.bind(node.addr, member_id)
        self._positions[member_id] = len(self._others)
        self._others.append(member_id)
        self._counts[node.state] += 1
        if node.state >= _DEAD:
            self._down[member_id] = now
        else:
            self._probe_order.append(member_id)

    def _unlist(self, member_id: int) -> None:
        """Take `member_id` out of `_others` (the last one moves into its place)."""
        position = self._positions[member_id]
        self._positions[member_id] = -1
        last = self._others.pop()
        if last != member_id:
            self._others[position] = last
            self._positions[last] = position

    def _forget(self, node: MemberNode) -> None:
        member_id = node.id
        self._recs[member_id] = None
        self._changed(member_id)
        self._unlist(member_id)
        self._counts[node.state] -= 1
        self._down.pop(member_id, None)
        self._suspicions.pop(member_id, None)
        self._dir.release(member_id)
        self._events.append(MemberForgotten(_snapshot(node)))

    def _replace(self, node: MemberNode, new: MemberNode, now: float) -> None:
        """Hold `new` (the same member, another shared record) instead of `node`; a suspicion
        of `node` ends (a new one is the caller's), a member going down counts from `now`."""
        member_id = node.id
        old, state = node.state, new.state
        self._recs[member_id] = new
        self._changed(member_id)
        self._counts[old] -= 1
        self._counts[state] += 1
        if old == _SUSPECT:
            del self._suspicions[member_id]
        if state >= _DEAD:
            if old < _DEAD:
                self._down[member_id] = now
        elif old >= _DEAD:
            del self._down[member_id]

    def _claim(self, node: MemberNode, state: MemberState, incarnation: int) -> MemberNode:
        """The shared record of `node`'s member in `state` at `incarnation` (its address,
        metadata and proof otherwise kept)."""
        return self._dir.claim(node.id, state, incarnation, node.addr, node.meta, node.key,
                               node.signature)

    def _refute(self, incarnation: int, now: float) -> None:
        me = self._self
        me.incarnation = min(max(me.incarnation, incarnation) + 1, _MAX_INCARNATION)
        self._adjust_awareness(1)
        self._stats["refutations"] += 1
        self._announce_self(now)

    def _implausible(self, incarnation: int, node: MemberNode | None) -> bool:
        """True (and counted) for a claim jumping more than INCARNATION_JUMP ahead."""
        known = 0 if node is None else node.incarnation
        if incarnation <= known + INCARNATION_JUMP:
            return False
        self._stats["implausible_claims"] += 1
        return True

    def _on_alive(self, msg: Alive, now: float) -> None:
        if self._implausible(msg.incarnation, self._get(msg.node)):
            return
        if msg.node == self.name:
            me = self._self
            if not self._leaving and (
                    msg.incarnation > me.incarnation
                    or (msg.incarnation == me.incarnation
                        and (msg.addr != me.addr or msg.meta != me.meta))) \
                    and self._signed_alive(msg):
                self._refute(msg.incarnation, now)
            return
        if len(msg.meta) > self.config.meta_limit:
            self._stats["wire_errors"] += 1
            return
        node = self._get(msg.node)
        if node is None:
            if not self._signed_alive(msg):
                return
            node = self._dir.alive(msg.node, msg.addr, msg.meta, msg.incarnation, msg.key,
                                   msg.signature)
            self._add(node, now)
            self._events.append(MemberJoined(_snapshot(node)))
            self._queue_broadcast(msg.node, msg, now, alive=True)
            return
        if msg.incarnation <= node.incarnation or not self._signed_alive(msg):
            return
        previous = node.state
        changed = node.addr != msg.addr or node.meta != msg.meta
        moved_from = node.addr if node.addr != msg.addr else None
        # The claim as every view that accepts it holds it (shared, see gossip.members).
        fresh = self._dir.alive(msg.node, msg.addr, msg.meta, msg.incarnation, msg.key,
                                msg.signature)
        self._replace(node, fresh, now)
        node = fresh
        if moved_from is not None:
            self._dir.bind(msg.addr, node.id)
        if previous != _ALIVE:
            if previous == _SUSPECT:
                self._events.append(MemberRecovered(_snapshot(node)))
                if changed:
                    self._events.append(MemberUpdated(_snapshot(node)))
            else:
                self._probe_order.append(node.id)
                self._events.append(MemberJoined(_snapshot(node)))
        elif changed:
            self._events.append(MemberUpdated(_snapshot(node)))
        encoded = encode_message(msg)
        self._queue_broadcast(msg.node, encoded, now, alive=True)
        if moved_from is not None:
            # Tell the old address too: if the member is still there, this was a forgery or
            # a stale copy, and it refutes at once instead of when gossip finds it.
            self._emit(moved_from, [encoded])

    def _signed_alive(self, msg: Alive) -> bool:
        if self._keys is None:
            return True
        before = self._stats["unknown_keys"]
        if self._proven_claim(msg.node, msg.key, msg.signature, alive_signed_bytes(
                msg.incarnation, msg.node, msg.addr, msg.meta, msg.key)):
            return True
        if self._stats["unknown_keys"] != before:
            self._hold(msg.node, msg)
        return False

    def _on_suspect(self, msg: Suspect, now: float, *, spread: bool = True) -> None:
        node = self._get(msg.node)
        if node is None or self._implausible(msg.incarnation, node):
            return
        if msg.incarnation < node.incarnation:
            if node is self._self and not self._leaving:
                # Someone still suspects an older us: repeat our alive message (it rides on
                # the ack if this came with a ping).
                self._announce_self(now)
            return
        if node is self._self:
            if not self._leaving:
                self._refute(msg.incarnation, now)
            return
        if node.state == _SUSPECT:
            suspicion = self._suspicions[node.id]
            if msg.incarnation > node.incarnation:
                # It refuted (we missed that) and is suspected again: a new suspicion, not a
                # confirmation of the old one.
                suspect = self._claim(node, _SUSPECT, msg.incarnation)
                self._replace(node, suspect, now)
                self._start_suspicion(suspect, msg, now, spread)
            elif suspicion.confirm(msg.sender, now):
                self._arm_suspicion(node.id, suspicion)
                if spread:
                    self._queue_broadcast(msg.node, msg, now)
            return
        if node.state != _ALIVE:
            return
        suspect = self._claim(node, _SUSPECT, msg.incarnation)
        self._replace(node, suspect, now)
        node = suspect
        self._start_suspicion(node, msg, now, spread)
        self._stats["suspicions_started"] += 1
        self._events.append(MemberSuspected(_snapshot(node)))

    def _start_suspicion(self, node: MemberNode, msg: Suspect, now: float, spread: bool) -> None:
        n = self.cluster_size()
        if self._suspicion_bounds[0] != n:
            # (one set of floats for every suspicion started at this size, not three each)
            config = self.config
            self._suspicion_bounds = (n, config.suspicion_min_s(n), config.suspicion_max_s(n),
                                      config.confirmations_needed(n))
        suspicion = _Suspicion(self._dir.alone(msg.sender), now, self._suspicion_bounds)
        self._suspicions[node.id] = suspicion
        self._arm_suspicion(node.id, suspicion)
        if spread:
            self._queue_broadcast(msg.node, msg, now)

    def _arm_suspicion(self, member_id: int, suspicion: _Suspicion) -> None:
        """Arm the suspicion of `member_id` for its next due time, if that is earlier than the
        armed one (the id left under the later time is stale: `_suspicion_due` skips it).

        Not a timer each: an id under its due time (a list of them when several share it:
        the suspicions a packet's batch of suspects started), the times in a heap, and one
        timer in `_timers` for the earliest (`_suspicion_sweep`)."""
        due = suspicion.next_due()
        if due >= suspicion.due:
            return
        suspicion.due = due
        by_due = self._suspicions_due
        held = by_due.get(due)
        if held is not None:
            if isinstance(held, int):
                by_due[due] = [held, member_id]
            else:
                held.append(member_id)
            return
        by_due[due] = member_id
        heapq.heappush(self._due_times, due)
        if due < self._sweep_at:
            self._sweep_at = due
            self._at(due, _SUSPICION, None)

    def _suspicion_sweep(self, when: float, now: float) -> None:
        """The suspicion timer: every suspicion due by `now`, in due time then arming order;
        then the timer for the next due time (one armed for a time no longer the earliest
        is stale)."""
        if when != self._sweep_at:
            return
        self._sweep_at = math.inf
        due_times, by_due = self._due_times, self._suspicions_due
        while due_times and due_times[0] <= now:
            due = heapq.heappop(due_times)
            held = by_due.pop(due)
            for member_id in (held,) if isinstance(held, int) else held:
                self._suspicion_due(member_id, due, now)
        if due_times and due_times[0] < self._sweep_at:
            self._sweep_at = due_times[0]
            self._at(self._sweep_at, _SUSPICION, None)

    def _suspicion_due(self, member_id: int, when: float, now: float) -> None:
        """A suspicion's due time: the member fails at the deadline; before it, this is a
        last-chance probe, and the suspicion is armed again for the next."""
        suspicion = self._suspicions.get(member_id)
        if suspicion is None or when != suspicion.due:
            return  # ended, or superseded by an earlier due time
        suspicion.due = math.inf
        node = self._recs[member_id]
        if node is None or node.state != _SUSPECT:
            return  # (a suspicion ends with its member's suspect state: not reached)
        if now >= suspicion.deadline:
            self._on_dead(Dead(node.incarnation, node.name, self.name), now)
            return
        suspicion.passed(now)
        self._last_chance_probe(node)
        self._arm_suspicion(member_id, suspicion)

    def _last_chance_probe(self, node: MemberNode) -> None:
        """Ping a member we still suspect, carrying the suspicion.

        The refutation of a falsely suspected member spreads by gossip; a node that missed
        it would declare a live member failed. So before the timeout runs out, a node that
        heard no refutation asks the member itself: an alive member answers a stale
        suspicion with its current alive message, piggybacked on the ack.
        """
        self._seq += 1
        self._send(node.addr, [encode_message(Suspect(node.incarnation, node.name, self.name)),
                               encode_message(Ping(self._seq, node.name))])

    def _on_dead(self, msg: Dead, now: float) -> None:
        node = self._get(msg.node)
        if (node is None or msg.incarnation < node.incarnation
                or self._implausible(msg.incarnation, node)):
            return
        if node is self._self:
            if not self._leaving:
                self._refute(msg.incarnation, now)
            return
        if node.state >= _DEAD:
            return
        left = msg.sender == msg.node
        if left:
            before = self._stats["unknown_keys"]
            if not self._proven_claim(msg.node, b"", msg.signature,
                                      leave_signed_bytes(msg.incarnation, msg.node)):
                if self._stats["unknown_keys"] != before:
                    self._hold(msg.node, msg)
                return
        down = (self._dir.claim(node.id, _LEFT, msg.incarnation, node.addr, node.meta, b"",
                                msg.signature) if left
                else self._claim(node, _DEAD, msg.incarnation))
        self._replace(node, down, now)
        node = down
        self._events.append((MemberLeft if left else MemberFailed)(_snapshot(node)))
        encoded = encode_message(msg)
        self._queue_broadcast(msg.node, encoded, now)
        # Tell the member itself (once, on the transition): if it is alive this was forged
        # or wrong, and it refutes now instead of never hearing it (nobody gossips to it).
        self._emit(node.addr, [encoded])

    def _merge_record(self, record: MemberRecord, now: float) -> None:
        state = record.state
        if state == _ALIVE:
            self._on_alive(Alive(record.incarnation, record.name, record.addr, record.meta,
                                 record.key, record.signature), now)
        elif state == _LEFT:
            self._on_dead(Dead(record.incarnation, record.name, record.name, record.signature),
                          now)
        elif record.name == self.name:
            self._on_suspect(Suspect(record.incarnation, record.name, self.name), now)
        else:
            node = self._get(record.name)
            if (node is None or node.state > _SUSPECT
                    or record.incarnation < node.incarnation):
                return
            # A peer thinks this member failed. Suspect it here without spreading the word,
            # and tell the member itself so that, if it is alive, it refutes at once.
            suspect = Suspect(record.incarnation, record.name, self.name)
            self._on_suspect(suspect, now, spread=False)
            self._emit(node.addr, [encode_message(suspect)])


def _is_alive(node: MemberNode) -> bool:
    return node.state == _ALIVE


def _is_probed(node: MemberNode | None) -> bool:
    return node is not None and node.state <= _SUSPECT
