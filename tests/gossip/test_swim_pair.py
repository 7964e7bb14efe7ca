"""Pair tests of the pure SWIM core: a few `Swim`s on a fake link, virtual time, no sockets."""

from __future__ import annotations

import dataclasses
import os
import random
from collections.abc import Iterable

import pytest

from gossip.config import SwimConfig
from gossip.errors import GossipError
from gossip.keyring import Keyring
from gossip.swim import (
    EARLY_ROUNDS_PER_INTERVAL,
    PULLED_NEWS_ROOM,
    MemberFailed,
    MemberForgotten,
    MemberJoined,
    MemberLeft,
    MemberRecovered,
    MemberState,
    MemberSuspected,
    MemberUpdated,
    Swim,
)
from gossip.wire import (
    Ack,
    Alive,
    Dead,
    MemberRecord,
    Ping,
    Suspect,
    UserMessage,
    decode_packet,
    encode_message,
    encode_packet,
)
from tests.gossip.fakelink import FakeLink

LAN = SwimConfig.lan()


def states(swim: Swim) -> dict[str, MemberState]:
    return {m.name: m.state for m in swim.members()}


def test_join_through_a_seed_makes_both_sides_see_each_other() -> None:
    link = FakeLink(2)
    a, b = link.swims
    b.join([a.addr], link.now)
    link.flush()
    assert states(a) == states(b) == {"a": MemberState.ALIVE, "b": MemberState.ALIVE}
    assert link.kinds("a") == ["MemberJoined"] and link.kinds("b") == ["MemberJoined"]
    joined = link.events["a"][0]
    assert isinstance(joined, MemberJoined) and joined.member.meta == b"meta-b"


def test_steady_probing_suspects_nobody_and_stays_quiet() -> None:
    link = FakeLink(3)
    link.form()
    before = len(link.sent)
    link.advance(30.0)
    for swim in link.swims:
        stats = swim.statistics()
        assert stats.probes_sent >= 25 and stats.probes_failed == 0
        assert stats.suspicions_started == 0 and stats.awareness == 0
    # about one ping and one ack per node per second, plus push-pulls: no gossip when idle.
    assert len(link.sent) - before <= 3 * 2 * 31


def test_a_dead_node_is_suspected_through_indirect_probes_then_failed() -> None:
    link = FakeLink(4)
    link.form()
    link.down.add(link["d"].addr)
    # one full round-robin of probes (3 targets, 1 s apart) and one more probe interval: every
    # node has probed d by then, whatever order its RNG drew
    link.advance(4.5)
    suspected = [e for e in link.events["a"] if isinstance(e, MemberSuspected)]
    assert any(e.member.name == "d" for e in link.events["a"] + link.events["b"]
               if isinstance(e, MemberSuspected))
    link.advance(LAN.suspicion_max_s(4) + 2 * LAN.probe_interval_s)
    for name in "abc":
        assert link[name].state_of("d") is MemberState.DEAD, name
        assert [type(e) for e in link.events[name] if e.member.name == "d"][-1] is MemberFailed
        stats = link[name].statistics()
        # nacks from live relays keep our own health good (Lifeguard).
        assert stats.awareness == 0
    assert sum(link[n].statistics().indirect_pings_sent for n in "abc") > 0
    assert not suspected or suspected[0].member.state is MemberState.SUSPECT


def test_suspicion_timeout_is_bounded_by_min_and_max() -> None:
    link = FakeLink(5)
    link.form()
    link.down.add(link["e"].addr)
    start = link.now
    failed_at: dict[str, float] = {}
    while len(failed_at) < 4 and link.now < start + 60:
        link.advance(0.1)
        for name in "abcd":
            if name not in failed_at and link[name].state_of("e") is MemberState.DEAD:
                failed_at[name] = link.now - start
    n = 5
    assert len(failed_at) == 4
    assert min(failed_at.values()) >= LAN.suspicion_min_s(n)
    assert max(failed_at.values()) <= LAN.suspicion_max_s(n) + 4 * LAN.probe_interval_s


def test_a_suspected_member_refutes_with_a_higher_incarnation() -> None:
    link = FakeLink(3)
    link.form()
    b = link["b"]
    assert b.incarnation == 0
    packet = encode_packet([encode_message(Suspect(0, "b", "c"))])
    link["a"].receive_datagram(packet, link["c"].addr, link.now)
    link.flush()
    assert link["a"].state_of("b") is MemberState.SUSPECT
    link.advance(2.0)
    assert b.incarnation == 1 and b.statistics().refutations == 1
    assert link["a"].state_of("b") is MemberState.ALIVE
    assert "MemberRecovered" in link.kinds("a")


def test_a_falsely_failed_member_refutes_and_rejoins() -> None:
    link = FakeLink(3)
    link.form()
    packet = encode_packet([encode_message(Dead(0, "b", "c"))])
    link["a"].receive_datagram(packet, link["c"].addr, link.now)
    link.flush()
    link.advance(2.0)
    kinds = [type(e) for e in link.events["a"] if e.member.name == "b"]
    assert kinds[-2:] == [MemberFailed, MemberJoined]
    assert link["a"].state_of("b") is MemberState.ALIVE and link["b"].incarnation >= 1


def test_graceful_leave_is_seen_as_left_at_once_never_failed() -> None:
    link = FakeLink(4)
    link.form()
    link["d"].leave(link.now)
    link.flush()
    for name in "abc":
        assert link[name].state_of("d") is MemberState.LEFT, name
    link.down.add(link["d"].addr)
    link.advance(LAN.suspicion_max_s(4) + 10)
    for name in "abc":
        kinds = [type(e) for e in link.events[name] if e.member.name == "d"]
        assert MemberLeft in kinds and MemberFailed not in kinds
        assert link[name].statistics().reconnects_started == 0


def test_metadata_change_spreads_and_oversize_is_refused() -> None:
    link = FakeLink(3)
    link.form()
    link["b"].set_meta(b"vtep=10.0.0.2;v=2", link.now)
    link.advance(2.0)
    updated = [e for e in link.events["a"] if isinstance(e, MemberUpdated)]
    assert updated and updated[-1].member.meta == b"vtep=10.0.0.2;v=2"
    assert link["c"].member("b").meta == b"vtep=10.0.0.2;v=2"  # type: ignore[union-attr]
    with pytest.raises(GossipError, match="meta"):
        link["b"].set_meta(b"x" * 513, link.now)


def test_garbage_and_unknown_types_are_counted_never_raised() -> None:
    link = FakeLink(2)
    a = link["a"]
    for junk in (b"", b"\x01", b"\x02\x90", b"\x01\xc1", b"\x01\x91\x92\x00\xff", os.urandom(64)):
        a.receive_datagram(junk, ("127.0.0.9", 1), 0.0)
    assert a.statistics().wire_errors >= 5
    a.receive_datagram(b"\x01\x91\x92\x7f\x01", ("127.0.0.9", 1), 0.0)  # type 127: unknown
    assert a.statistics().unknown_messages == 1
    assert not a.merge_push_pull_chunk(b"\x01\xc1", ("127.0.0.9", 1), False, 0.0)


def test_a_ping_for_someone_else_is_not_acked() -> None:
    link = FakeLink(2)
    a, b = link.swims
    b.receive_datagram(encode_packet([encode_message(Ping(9, "zed"))]), a.addr, 0.0)
    assert b.datagrams_to_send() == [] and b.statistics().misdirected_pings == 1


def test_packets_stay_within_the_budget_with_and_without_a_keyring() -> None:
    key = os.urandom(32)
    for keyrings in (None, [Keyring([key], key) for _ in range(3)]):
        link = FakeLink(3, keyrings=keyrings)  # type: ignore[arg-type]
        link.form()
        a = link["a"]
        for i in range(300):
            packet = encode_packet([encode_message(
                Alive(0, f"m{i:04d}", ("10.1.0.1", 7946), os.urandom(200)))])
            if a.keyring is not None:
                packet = a.keyring.seal(packet)
            a.receive_datagram(packet, link["b"].addr, link.now)
        link.advance(3.0)
        sizes = [len(data) for _, _, data in link.sent]
        assert max(sizes) <= 1400
        assert max(sizes) > 1200  # packets really are filled


def test_with_a_keyring_plain_and_foreign_packets_are_dropped() -> None:
    key = os.urandom(32)
    link = FakeLink(2, keyrings=[Keyring([key], key), Keyring([key], key)])
    link.form()
    a = link["a"]
    assert a.state_of("b") is MemberState.ALIVE
    plain = encode_packet([encode_message(Dead(5, "b", "x"))])
    a.receive_datagram(plain, ("127.0.0.9", 1), link.now)
    other = os.urandom(32)
    a.receive_datagram(Keyring([other], other).seal(plain), ("127.0.0.9", 1), link.now)
    assert a.statistics().auth_failures == 2
    assert a.state_of("b") is MemberState.ALIVE
    # what goes on the wire is sealed: it does not decode as plain text
    _, _, data = link.sent[-1]
    with pytest.raises(GossipError):
        decode_packet(data)


def test_a_partition_heals_through_rejoining_failed_members() -> None:
    config = dataclasses.replace(LAN, reconnect_interval_s=5.0)
    link = FakeLink(4, config)
    link.form()
    for x in "ab":
        for y in "cd":
            link.cut.add(frozenset((link[x].addr, link[y].addr)))
    link.advance(config.suspicion_max_s(4) + 10)
    assert link["a"].state_of("c") is MemberState.DEAD
    assert link["c"].state_of("a") is MemberState.DEAD
    link.cut.clear()
    link.advance(2 * config.reconnect_interval_s + 5)  # type: ignore[operator]
    for swim in link.swims:
        assert set(states(swim).values()) == {MemberState.ALIVE}, swim.name


def test_bare_memberlist_profile_does_not_heal() -> None:
    config = SwimConfig.memberlist_lan()
    link = FakeLink(4, config)
    link.form()
    for x in "ab":
        for y in "cd":
            link.cut.add(frozenset((link[x].addr, link[y].addr)))
    link.advance(config.suspicion_max_s(4) + config.gossip_to_dead_s + 10)
    link.cut.clear()
    link.advance(60)
    assert link["a"].state_of("c") is MemberState.DEAD


def test_failed_members_are_reaped_after_the_remembered_time() -> None:
    config = dataclasses.replace(LAN, remember_failed_s=20.0)
    link = FakeLink(3, config)
    link.form()
    link.down.add(link["c"].addr)
    link.advance(config.suspicion_max_s(3) + 30)
    assert link["a"].state_of("c") is None
    assert any(isinstance(e, MemberForgotten) for e in link.events["a"])


def test_a_restarted_node_overrides_its_old_failure() -> None:
    link = FakeLink(3)
    link.form()
    link.down.add(link["c"].addr)
    link.advance(LAN.suspicion_max_s(3) + 5)
    assert link["a"].state_of("c") is MemberState.DEAD
    fresh = Swim(LAN, "c", link["c"].addr, meta=b"new", rng=__import__("random").Random(3),
                 now=link.now)
    link.swims[2] = fresh
    link.by_addr[fresh.addr] = fresh
    link.down.clear()
    fresh.join([link["a"].addr], link.now)
    link.advance(3.0)
    assert link["a"].state_of("c") is MemberState.ALIVE
    assert link["b"].member("c").meta == b"new"  # type: ignore[union-attr]
    assert fresh.incarnation >= 1


class RecordingDelegate:
    """A delegate that records what the core hands it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.received: list[bytes] = []
        self.merged: list[tuple[bytes, bool]] = []
        self.outgoing: list[bytes] = []

    def notify_user_msg(self, payload: bytes, now: float) -> None:
        self.received.append(payload)

    def get_broadcasts(self, overhead: int, limit: int, to: str | None) -> list[bytes]:
        out, self.outgoing = self.outgoing, []
        return out

    def gossip_targets(self, count: int) -> list[str]:
        return []

    def local_state(self, join: bool, to: str | None) -> Iterable[bytes]:
        return [f"state-of-{self.name}".encode()]

    def merge_remote_state(self, chunk: bytes, join: bool, now: float) -> None:
        self.merged.append((chunk, join))


def test_delegate_state_and_broadcasts_ride_on_gossip() -> None:
    delegates = [RecordingDelegate("a"), RecordingDelegate("b")]
    link = FakeLink(2, delegates=delegates)  # type: ignore[arg-type]
    link["b"].join([link["a"].addr], link.now)
    link.flush()
    assert delegates[0].merged == [(b"state-of-b", True)]
    assert delegates[1].merged == [(b"state-of-a", True)]
    delegates[0].outgoing.append(b"endpoint 10.9.0.5 on a")
    link["a"].broadcast_user(b"queued user news", link.now, key="k1")
    link.advance(1.0)
    assert b"endpoint 10.9.0.5 on a" in delegates[1].received
    assert b"queued user news" in delegates[1].received
    with pytest.raises(GossipError, match="budget"):
        link["a"].broadcast_user(b"x" * 1400, link.now)


def test_local_health_slows_an_isolated_node() -> None:
    link = FakeLink(5)
    link.form()
    link.isolate("a")
    a = link["a"]
    before = a.statistics().probes_sent
    link.advance(20.0)
    stats = a.statistics()
    assert stats.awareness == LAN.awareness_max_multiplier - 1
    # without health scaling it would have sent ~20 probes
    assert stats.probes_sent - before < 12


def test_suspect_in_ping_lets_the_target_refute_on_the_spot() -> None:
    link = FakeLink(3)
    link.form()
    a = link["a"]
    a.receive_datagram(encode_packet([encode_message(Suspect(0, "b", "c"))]), link["c"].addr,
                       link.now)
    link.cut.add(frozenset((link["b"].addr, link["c"].addr)))
    link.advance(5.0)
    assert a.state_of("b") is MemberState.ALIVE
    assert any(isinstance(e, MemberRecovered) for e in link.events["a"])


def test_push_pull_state_is_chunked_within_the_limit_and_merges_whole() -> None:
    import random

    from gossip.wire import MemberRecord

    records = [MemberRecord(f"m{i:05d}", ("10.2.0.1", 7946), os.urandom(300), 0,
                            MemberState.ALIVE) for i in range(600)]
    big = Swim(LAN, "big", ("10.0.0.1", 7946), meta=b"", rng=random.Random(1), now=0.0)
    big.adopt_members(records, 0.0)
    chunks = big.push_pull_state(join=False)
    assert len(chunks) >= 3
    assert all(len(c) <= LAN.push_pull_chunk_limit for c in chunks)
    fresh = Swim(LAN, "fresh", ("10.0.0.2", 7946), meta=b"", rng=random.Random(2), now=0.0)
    for chunk in chunks:
        assert fresh.merge_push_pull_chunk(chunk, big.addr, False, 1.0)
    assert fresh.statistics().members_alive == 601
    joined = 0
    while (event := fresh.next_event()) is not None:
        joined += isinstance(event, MemberJoined)
    assert joined == 601


def test_a_push_pull_queues_news_of_the_peer_and_a_bounded_share_of_the_rest() -> None:
    """Anti-entropy: a fresh node learning 600 members by one push-pull queues the peer's own
    alive (a joiner's push-pull is how a seed hears of it) and third-party news only while
    fewer than PULLED_NEWS_ROOM broadcasts are pending; a small state is queued whole, as
    memberlist does (its few transmissions are what spreads a join before the next
    push-pull)."""
    records = [MemberRecord(f"m{i:05d}", ("10.2.0.1", 7946), b"x", 0, MemberState.ALIVE)
               for i in range(600)]
    big = Swim(LAN, "big", ("10.0.0.1", 7946), meta=b"", rng=random.Random(1), now=0.0)
    big.adopt_members(records, 0.0)
    fresh = Swim(LAN, "fresh", ("10.0.0.2", 7946), meta=b"", rng=random.Random(2), now=0.0)
    for chunk in big.push_pull_state(join=False):
        assert fresh.merge_push_pull_chunk(chunk, big.addr, False, 1.0)
    stats = fresh.statistics()
    assert stats.members_alive == 601
    assert stats.broadcasts_pending == PULLED_NEWS_ROOM
    assert stats.pulled_unqueued == 601 - PULLED_NEWS_ROOM
    # the peer's news is among them: it rides our next gossip to anyone but the peer
    fresh.handle_timeout(2.0)
    told = [m for data, _ in fresh.datagrams_to_send() for m in decode_packet(data)
            if isinstance(m, Alive)]
    assert any(m.node == "big" for m in told)

    small = Swim(LAN, "small", ("10.0.0.3", 7946), meta=b"", rng=random.Random(3), now=0.0)
    small.adopt_members(records[:5], 0.0)
    peer = Swim(LAN, "peer", ("10.0.0.4", 7946), meta=b"", rng=random.Random(4), now=0.0)
    for chunk in small.push_pull_state(join=False):
        assert peer.merge_push_pull_chunk(chunk, small.addr, False, 1.0)
    assert peer.statistics().broadcasts_pending == 6
    assert peer.statistics().pulled_unqueued == 0


def test_a_node_that_missed_the_refutation_asks_the_suspect_itself() -> None:
    import random

    from gossip.wire import MemberRecord

    a = Swim(LAN, "a", ("10.0.0.1", 7946), meta=b"", rng=random.Random(4), now=0.0)
    a.adopt_members([MemberRecord(f"m{i:03d}", ("10.3.0.1", 7000 + i), b"", 0,
                                  MemberState.ALIVE) for i in range(100)], 0.0)
    a.receive_datagram(encode_packet([encode_message(Suspect(0, "m007", "m001"))]),
                       ("10.3.0.1", 7001), 0.0)
    timeout = LAN.suspicion_max_s(101)
    asked_at = []
    now = 0.0
    while now < timeout * 0.8:
        now += 0.05
        a.handle_timeout(now)
        for data, addr in a.datagrams_to_send():
            messages = decode_packet(data)
            if addr == ("10.3.0.1", 7007) and Suspect(0, "m007", "a") in messages:
                asked_at.append(now)
    assert any(abs(t - timeout * 0.5) < 0.1 for t in asked_at)
    assert any(abs(t - timeout * 0.7) < 0.1 for t in asked_at)
    # The suspect, already refuted (incarnation 1), answers the stale suspicion with its
    # alive message on the ack.
    b = Swim(LAN, "m007", ("10.3.0.1", 7007), meta=b"", rng=random.Random(5), now=0.0)
    b.receive_datagram(encode_packet([encode_message(Suspect(0, "m007", "x"))]), a.addr, 0.0)
    b.datagrams_to_send()
    assert b.incarnation == 1
    b.receive_datagram(encode_packet([encode_message(Suspect(0, "m007", "a")),
                                      encode_message(Ping(9, "m007"))]), a.addr, 1.0)
    [(reply, _)] = b.datagrams_to_send()
    assert Ack(9) in decode_packet(reply)
    assert any(isinstance(m, Alive) and m.incarnation == 1 for m in decode_packet(reply))
    a.receive_datagram(reply, b.addr, 1.0)
    assert a.state_of("m007") is MemberState.ALIVE


def test_a_suspicion_confirmed_by_many_stays_bounded_and_fails_at_the_minimum() -> None:
    """Twenty independent suspicions of one member: the confirmations needed bring the
    timeout to its minimum, the rest are not counted; the last-chance probes are those of
    the first timeout's 50 % point and one halfway through what each counted confirmation
    left, never one per confirmer, and the member fails at the minimum (one timer at a
    time, the suspicion's state O(1))."""
    a = Swim(LAN, "a", ("10.0.0.1", 7946), meta=b"", rng=random.Random(4), now=0.0)
    a.adopt_members([MemberRecord(f"m{i:03d}", ("10.3.0.1", 7000 + i), b"", 0,
                                  MemberState.ALIVE) for i in range(100)], 0.0)
    for sender in range(20):
        a.receive_datagram(encode_packet([encode_message(Suspect(0, "m007", f"m{sender:03d}"))]),
                           ("10.3.0.1", 7000 + sender), 0.01 * sender)
    n = 101
    asked_at, failed_at, now = [], None, 0.2
    while now < LAN.suspicion_max_s(n) and failed_at is None:
        now += 0.05
        a.handle_timeout(now)
        for data, addr in a.datagrams_to_send():
            if addr == ("10.3.0.1", 7007) and Suspect(0, "m007", "a") in decode_packet(data):
                asked_at.append(now)
        if a.state_of("m007") is MemberState.DEAD:
            failed_at = now
    assert failed_at is not None
    assert LAN.suspicion_min_s(n) <= failed_at <= LAN.suspicion_min_s(n) + 0.3
    assert 1 <= len(asked_at) <= 1 + LAN.confirmations_needed(n)
    assert a.statistics().members_failed == 1


def test_an_acked_probe_reports_its_round_trip() -> None:
    link = FakeLink(2)
    link.form()
    a, b = link.swims
    a.take_probe_rtts()
    pings: list[bytes] = []
    deadline = link.now + 10.0
    while not pings and link.now < deadline:
        link.now = a.next_deadline()
        a.handle_timeout(link.now)
        b.datagrams_to_send()
        for data, addr in a.datagrams_to_send():
            if addr == b.addr and any(isinstance(m, Ping) for m in decode_packet(data)):
                pings.append(data)
    assert pings, "a never probed b within 10 s"
    sent_at = link.now
    b.receive_datagram(pings[0], a.addr, sent_at + 0.004)
    for data, addr in b.datagrams_to_send():
        if addr == a.addr:
            a.receive_datagram(data, b.addr, sent_at + 0.009)
    assert a.take_probe_rtts() == [pytest.approx(0.009)]
    assert a.take_probe_rtts() == []


class QuietDelegate(RecordingDelegate):
    """A delegate that says when it has broadcasts (`gossip.delegate`'s optional half)."""

    def has_broadcasts(self) -> bool:
        return bool(self.outgoing)


def wakeups(swim: Swim, link: FakeLink, seconds: float) -> int:
    """How many distinct deadlines `swim` asks to be woken at within `seconds`."""
    seen = set()
    end = link.now + seconds
    while link.now < end:
        seen.add(swim.next_deadline())
        link.advance(0.05)
    return len(seen)


def test_an_idle_node_with_a_quiet_delegate_arms_no_gossip_timer_until_news() -> None:
    quiet, chatty = [QuietDelegate("a"), QuietDelegate("b")], [RecordingDelegate("c"),
                                                               RecordingDelegate("d")]
    quiet_link = FakeLink(2, delegates=quiet)  # type: ignore[arg-type]
    chatty_link = FakeLink(2, delegates=chatty)  # type: ignore[arg-type]
    for link in (quiet_link, chatty_link):
        link.swims[1].join([link.swims[0].addr], link.now)
        link.flush()
        link.advance(5.0)  # the join's own news has been sent its retransmit limit
    quiet_wakeups = wakeups(quiet_link.swims[0], quiet_link, 10.0)
    chatty_wakeups = wakeups(chatty_link.swims[0], chatty_link, 10.0)
    # probes (1 s) only: the timeout of an acked probe does not wake the node (about 22 did
    # before); the chatty one adds a gossip round every 200 ms
    assert quiet_wakeups <= 15 < 50 <= chatty_wakeups
    quiet[0].outgoing.append(b"endpoint 10.9.0.7 on a")
    quiet_link.swims[0].delegate_has_news(quiet_link.now)
    quiet_link.advance(1.0)
    assert b"endpoint 10.9.0.7 on a" in quiet[1].received


def test_fresh_delegate_news_does_not_wait_for_the_armed_round() -> None:
    """A delegate without `has_broadcasts` keeps a round armed every 200 ms (as older news
    being retransmitted does); fresh news brings the round forward, at most one round per
    gossip_interval_s / EARLY_ROUNDS_PER_INTERVAL however often news comes."""
    delegates = [RecordingDelegate("a"), RecordingDelegate("b")]
    link = FakeLink(2, delegates=delegates)  # type: ignore[arg-type]
    link.form()
    a, b = link.swims
    spacing = LAN.gossip_interval_s / EARLY_ROUNDS_PER_INTERVAL
    for step in range(8):  # news at several phases of the 200 ms round
        link.advance(0.037)
        news = f"endpoint 10.9.0.{step} on a".encode()
        delegates[0].outgoing.append(news)
        a.delegate_has_news(link.now)
        assert a.next_deadline() <= link.now + spacing
        link.advance(spacing)
        assert news in delegates[1].received

    def news_packets(since: int) -> int:
        return sum(1 for src, dst, data in link.sent[since:] if src == a.addr and dst == b.addr
                   and any(isinstance(m, UserMessage) for m in decode_packet(data)))

    sent_before = len(link.sent)
    for step in range(100):  # news every 10 ms for one second
        delegates[0].outgoing.append(f"burst {step}".encode())
        a.delegate_has_news(link.now)
        link.advance(0.01)
    link.advance(spacing)
    probes = 2 * int(1.0 / LAN.probe_interval_s + 1)  # a's pings and its acks to b's
    assert news_packets(sent_before) <= 1.0 / spacing + 1 + probes
    assert all(f"burst {step}".encode() in delegates[1].received for step in range(100))


def test_push_pull_is_stretched_to_its_byte_budget_in_a_large_cluster() -> None:
    """10,000 members: their state is ~750 KB, so the 1,500 B/s budget stretches the period
    from push_pull_interval_for(n) (300 s) to 2 * size / budget; a small cluster keeps it."""
    config = SwimConfig.lan()
    big = Swim(config, "n0", ("10.0.0.1", 7946), meta=b"m" * 48, rng=random.Random(1), now=0.0)
    big.adopt_members([MemberRecord(f"n{i:05d}", (f"10.1.{i >> 8}.{i & 255}", 7946),
                                    b"m" * 48, 0, MemberState.ALIVE) for i in range(1, 10_000)],
                      0.0)
    size = sum(len(chunk) for chunk in big.push_pull_state(join=False))
    assert size > 500_000
    first = config.push_pull_interval_for(10_000) + 1.0  # after the first periodic one
    big.handle_timeout(first)
    assert len(big.push_pulls_to_start()) == 1
    stretched = 2 * size / config.push_pull_bytes_per_s
    assert stretched > 2 * config.push_pull_interval_for(10_000)
    big.handle_timeout(first + stretched - 1.0)
    assert big.push_pulls_to_start() == []  # not at 300 s, nor 600 s
    big.handle_timeout(first + stretched + 1.0)
    assert len(big.push_pulls_to_start()) == 1


def test_join_push_pulls_follow_a_growing_view_and_stop_in_a_known_cluster() -> None:
    link = FakeLink(6)
    for name in "bcdef":
        link[name].join([link["a"].addr], link.now)
        link.flush()
    link.advance(10.0)
    assert all(len(link[name].members()) == 6 for name in "abcdef")
    joiner = link["f"]
    before = joiner.statistics().push_pulls_started
    joiner.join([link["a"].addr], link.now)  # again, as the agent retries its seeds
    link.advance(5.0)
    # the join itself, and at most one periodic push-pull: no join rounds, nothing grew
    assert joiner.statistics().push_pulls_started - before <= 2
