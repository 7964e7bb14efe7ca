"""The table's gossip delegate: broadcast queue, bounded push-pull chunks, hostile bytes."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gossip.delegate import Delegate
from gossip.errors import WireError
from gossip.swim import (
    Member,
    MemberFailed,
    MemberJoined,
    MemberLeft,
    MemberRecovered,
    MemberState,
    MemberSuspected,
)
from overlay.dissemination import (
    DisseminationConfig,
    TableDelegate,
    TableWireError,
    decode_records,
    encode_memberships,
    encode_record,
    encode_state,
)
from overlay.errors import OverlayError
from overlay.table import Entry, Membership, NeighborTable, OwnerStatus

NET = "blue"


def make_delegate(name: str, vtep: str, *, scoped: bool = False) -> TableDelegate:
    """Unscoped unless asked: the queue's mechanics show without peers to scope to."""
    table = NeighborTable(name, vtep)
    table.join_network(NET, 0.0)
    return TableDelegate(table, DisseminationConfig(scoped=scoped), now=0.0)


def test_the_delegate_satisfies_the_gossip_protocol() -> None:
    delegate: Delegate = make_delegate("a", "192.0.2.1", scoped=True)
    (payload,) = delegate.get_broadcasts(3, 1400, None)
    assert delegate.gossip_targets(3) == []
    (joined,) = decode_records(payload, 0.0)
    assert isinstance(joined, Membership)
    assert (joined.network, joined.node, joined.vtep, joined.deleted) == (
        NET, "a", "192.0.2.1", False)


def test_newer_change_to_the_same_entry_invalidates_the_queued_one() -> None:
    delegate = make_delegate("a", "192.0.2.1")
    delegate.get_broadcasts(2, 1400)  # the network join
    delegate.table.put_endpoint(NET, "10.1.0.1", "02:00:00:00:00:01", 1.0)
    delegate.table.put_endpoint(NET, "10.1.0.2", "02:00:00:00:00:02", 1.0)
    delegate.handle_timeout(1.0)
    delegate.table.put_endpoint(NET, "10.1.0.1", "02:00:00:00:00:03", 2.0)
    payloads = delegate.get_broadcasts(overhead=3, limit=1400)
    records = [r for p in payloads for r in decode_records(p, 0.0)]
    assert [(r.ip, r.mac) for r in records if isinstance(r, Entry)] == [
        ("10.1.0.1", "02:00:00:00:00:03"), ("10.1.0.2", "02:00:00:00:00:02")]  # newest first
    assert delegate.statistics().invalidated == 1


def test_broadcasts_respect_the_budget_and_the_transmit_limit() -> None:
    delegate = make_delegate("a", "192.0.2.1")
    for i in range(40):
        delegate.table.put_endpoint(NET, f"10.1.0.{i + 1}", "02:00:00:00:00:01", 1.0)
    limit = delegate.retransmit_limit()
    assert limit == 6  # alone: 6 * ceil(log10(1 + 1))
    first = delegate.get_broadcasts(overhead=2, limit=300)
    assert sum(len(p) + 2 for p in first) <= 300 and len(first) >= 5
    second = delegate.get_broadcasts(overhead=2, limit=300)
    entries = [p for p in first + second if len(p) > 20]  # not the small membership record
    assert len(entries) == len(set(entries))  # unsent ones go first
    total = len(first) + len(second)
    while payloads := delegate.get_broadcasts(overhead=2, limit=1400):
        total += len(payloads)
    assert total == 41 * limit and delegate.statistics().broadcasts_sent == total


def test_state_chunks_are_bounded_and_round_trip() -> None:
    table = NeighborTable("a", "192.0.2.1")
    table.join_network(NET, 0.0)
    table.join_network("red", 0.0)
    for i in range(2000):
        table.put_endpoint(NET if i % 3 else "red", f"fd00::{i:x}", f"02:00:00:00:{i >> 8:02x}:"
                           f"{i & 255:02x}", 1.0)
    for i in range(0, 2000, 7):
        table.delete_endpoint(NET if i % 3 else "red", f"fd00::{i:x}", 2.0)
    chunks = list(encode_state(table.records(), 3.0, 4096))
    assert len(chunks) > 10 and max(len(c) for c in chunks) <= 4096
    decoded = [r for c in chunks for r in decode_records(c, 3.0)]
    assert {(r.key, r.version, r.deleted) for r in decoded} == \
        {(r.key, r.version, r.deleted) for r in table.records()}
    with pytest.raises(OverlayError, match="chunk_limit"):
        list(encode_state(table.records(), 3.0, 100))


def test_two_delegates_converge_by_broadcast_and_by_push_pull() -> None:
    a = make_delegate("a", "192.0.2.1")
    b = make_delegate("b", "192.0.2.2")
    for d, other in ((a, "b"), (b, "a")):
        d.member_alive(other, ("192.0.2.9", 7946), 0.0)
    a.table.put_endpoint(NET, "10.1.0.1", "02:00:00:00:00:01", 1.0)
    for payload in a.get_broadcasts(overhead=2, limit=1400):
        b.notify_user_msg(payload, 1.1)
    assert b.table.lookup(NET, "10.1.0.1") is not None
    b.table.put_endpoint(NET, "10.1.0.2", "02:00:00:00:00:02", 2.0)
    for chunk in b.local_state(join=False):
        a.merge_remote_state(chunk, False, 2.1)
    assert a.table.lookup(NET, "10.1.0.2") is not None
    assert a.statistics().chunks_merged == 1 and b.statistics().chunks_sent == 1
    # push-pull results are not re-broadcast; broadcast results are relayed
    relays = [r for p in a.get_broadcasts(2, 1400) for r in decode_records(p, 0)]
    assert all(r.owner == "a" for r in relays)
    assert [r.owner for p in b.get_broadcasts(2, 1400) for r in decode_records(p, 0)
            if isinstance(r, Entry)].count("a") == 1


GARBAGE = [
    b"", b"\x00", b"\xc1", msgpack.packb([2, 1]), msgpack.packb([1, 99]),
    msgpack.packb([1, 1, "blue", "a", b"\x00" * 3, b"\x00" * 6, b"\x00" * 4, 1, None]),
    msgpack.packb([1, 1, "blue", "a", b"\x00" * 4, b"\x00" * 6, b"\x00" * 4, -1, None]),
    msgpack.packb([1, 1, "blue", "", b"\x00" * 4, b"\x00" * 6, b"\x00" * 4, 1, None]),
    msgpack.packb([1, 1, "blue", "a", b"\x00" * 4, b"\x00" * 6, b"\x00" * 4, 1, -5]),
    msgpack.packb([1, 3, [["blue", "a", None, [[1, 2]]]]]),
    msgpack.packb([1, 3, {"x": 1}]),
    # the owner's change time: not a number, negative, NaN, absurd, a bool, one field too many
    *(msgpack.packb([1, 1, "blue", "a", b"\x00" * 4, b"\x00" * 6, b"\x00" * 4, 1, None, bad])
      for bad in ("x", -1.0, float("nan"), 2.0**41, True)),
    msgpack.packb([1, 1, "blue", "a", b"\x00" * 4, b"\x00" * 6, b"\x00" * 4, 1, None, 1.0, 2]),
    msgpack.packb([1, 3, [["blue", "a", None, [[b"\x00" * 4, b"\x00" * 6, b"\x00" * 4, 1, None,
                                               "x"]]]]]),
    msgpack.packb({1: 2}),
]


@pytest.mark.parametrize("payload", GARBAGE)
def test_garbage_is_a_wire_error_counted_and_dropped(payload: bytes) -> None:
    with pytest.raises(WireError):
        decode_records(payload, 1.0)
    delegate = make_delegate("a", "192.0.2.1")
    delegate.notify_user_msg(payload, 1.0)  # the core calls us unguarded: never raise
    delegate.merge_remote_state(payload, False, 1.0)
    assert delegate.statistics().decode_errors == 2
    assert next(iter(delegate.table.records())).owner == "a"  # nothing else was stored


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=120) | st.builds(
    lambda kind, items: msgpack.packb([1, kind, *items]),
    st.sampled_from([1, 2, 3]),
    st.lists(st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
             | st.binary(max_size=17) | st.text(max_size=4) | st.floats()
             | st.lists(st.integers(0, 9) | st.binary(max_size=6) | st.floats(), max_size=6),
             max_size=10)))
def test_decoding_random_bytes_never_raises_anything_but_wire_error(payload: bytes) -> None:
    with contextlib.suppress(TableWireError):
        decode_records(payload, 0.0)


def test_membership_events_drive_the_owner_rules_and_the_retransmit_limit() -> None:
    delegate = TableDelegate(NeighborTable("a", "192.0.2.1"), DisseminationConfig(), now=0.0)
    assert delegate.retransmit_limit() == 6
    for i in range(150):
        member = Member(f"n{i}", ("192.0.2.9", 7000 + i), b"", MemberState.ALIVE, 1)
        delegate.member_event(MemberJoined(member), 0.0)
    assert delegate.retransmit_limit() == 18
    failed = Member("n1", ("192.0.2.9", 7001), b"", MemberState.DEAD, 1)
    delegate.member_event(MemberSuspected(failed), 1.0)
    assert delegate.table.owner_status("n1") is OwnerStatus.ALIVE
    delegate.member_event(MemberFailed(failed), 1.0)
    assert delegate.table.owner_status("n1") is OwnerStatus.FAILED
    delegate.member_event(MemberRecovered(failed), 2.0)
    delegate.member_event(MemberLeft(failed), 3.0)
    assert delegate.table.owner_status("n1") is OwnerStatus.LEFT
    assert delegate.statistics().alive_members == 149


def test_out_of_scope_broadcasts_are_forwarded_once_per_version_but_not_held() -> None:
    owner = make_delegate("a", "192.0.2.1")
    owner.table.join_network("red", 0.0)
    bystander = make_delegate("b", "192.0.2.2")  # only in NET
    bystander.get_broadcasts(2, 1400)
    owner.table.put_endpoint("red", "10.2.0.1", "02:00:00:00:00:01", 1.0)
    payloads = owner.get_broadcasts(2, 1400)
    for payload in payloads + payloads:  # duplicated delivery
        bystander.notify_user_msg(payload, 1.0)
    assert bystander.table.endpoints("red") == []
    assert bystander.table.statistics().out_of_scope == 2
    forwarded = [r for p in bystander.get_broadcasts(2, 1400) for r in decode_records(p, 1.0)]
    assert [(r.network, r.ip) for r in forwarded if isinstance(r, Entry)] == [("red", "10.2.0.1")]
    assert bystander.statistics().forwarded == 1


def _introduce(delegates: list[TableDelegate]) -> None:
    """Every delegate learns every other as a member, and every membership record."""
    for d in delegates:
        for other in delegates:
            if other is not d:
                d.member_alive(other.table.node, (other.table.vtep, 7946), 0.0)
    for d in delegates:
        for payload in d.get_broadcasts(2, 1400, None):
            for other in delegates:
                if other is not d:
                    other.notify_user_msg(payload, 0.0)
    for d in delegates:
        d.get_broadcasts(2, 1400, None)  # relays of memberships


def test_scoped_records_ride_only_to_members_of_their_network() -> None:
    a = make_delegate("a", "192.0.2.1", scoped=True)
    a.table.join_network("red", 0.0)
    b = make_delegate("b", "192.0.2.2", scoped=True)  # blue only
    c = TableDelegate(NeighborTable("c", "192.0.2.3"), now=0.0)
    c.table.join_network("red", 0.0)
    _introduce([a, b, c])
    assert a.table.networks_of("b") == (NET,) and a.table.networks_of("c") == ("red",)
    a.table.put_endpoint("red", "10.2.0.1", "02:00:00:00:00:01", 1.0)
    assert a.gossip_targets(3) == ["c"]  # only red has news; never ourselves
    to_b = [r for p in a.get_broadcasts(2, 1400, "b") for r in decode_records(p, 1.0)]
    assert not any(isinstance(r, Entry) for r in to_b)
    to_c = [r for p in a.get_broadcasts(2, 1400, "c") for r in decode_records(p, 1.0)]
    assert [(r.network, r.ip) for r in to_c if isinstance(r, Entry)] == [("red", "10.2.0.1")]
    # c was the only other member of red: nobody is left to tell
    assert a.get_broadcasts(2, 1400, "c") == [] and a.gossip_targets(3) == []


def test_scoped_push_pull_carries_every_membership_and_shared_networks_only() -> None:
    a = make_delegate("a", "192.0.2.1", scoped=True)
    a.table.join_network("red", 0.0)
    b = make_delegate("b", "192.0.2.2", scoped=True)
    c = TableDelegate(NeighborTable("c", "192.0.2.3"), DisseminationConfig(scoped=True), now=0.0)
    c.table.join_network("green", 0.0)  # no network of a's
    _introduce([a, b, c])
    a.table.put_endpoint(NET, "10.1.0.1", "02:00:00:00:00:01", 1.0)
    a.table.put_endpoint("red", "10.2.0.1", "02:00:00:00:00:02", 1.0)

    def carried(join: bool, to: str | None) -> set[tuple[str, str]]:
        records = [r for c in a.local_state(join, to) for r in decode_records(c, 1.0)]
        assert {r.key for r in records if isinstance(r, Membership)} == {
            (NET, "a"), ("red", "a"), (NET, "b"), ("green", "c")}
        return {(r.network, r.ip) for r in records if isinstance(r, Entry)}

    assert carried(False, "b") == {(NET, "10.1.0.1")}
    assert carried(False, "c") == set()  # memberships only
    everything = {(NET, "10.1.0.1"), ("red", "10.2.0.1")}
    assert carried(True, "b") == everything  # a join gets everything
    assert carried(False, None) == everything  # a peer we cannot name
    assert carried(False, "stranger") == everything  # one we know no network of


def test_a_state_chunk_decodes_the_same_twice_and_tombstones_from_each_now() -> None:
    """Push-pull decoding remembers live endpoints and memberships by their bytes: a second
    decode of the same chunk gives equal records (the live ones the very objects), and a
    tombstone's deadline still comes from the `now` of each decode."""
    table = NeighborTable("a", "192.0.2.1")
    table.join_network(NET, 0.0)
    for i in range(20):
        table.put_endpoint(NET, f"10.7.0.{i + 1}", f"02:00:00:00:07:{i:02x}", 1.0)
    table.delete_endpoint(NET, "10.7.0.1", 2.0)
    (chunk,) = encode_state(table.records(), 2.0, 32 * 1024)
    first, second = decode_records(chunk, 2.0), decode_records(chunk, 5.0)
    assert [(r.key, r.version, r.deleted) for r in first] == \
        [(r.key, r.version, r.deleted) for r in second]
    live = [(a, b) for a, b in zip(first, second, strict=True)
            if isinstance(a, Entry) and not a.deleted]
    assert len(live) == 19 and all(a is b for a, b in live)
    (held_first,) = [r for r in first if isinstance(r, Membership)]
    (held_second,) = [r for r in second if isinstance(r, Membership)]
    assert held_first is held_second  # a live membership too
    (gone_first,) = [r for r in first if isinstance(r, Entry) and r.deleted]
    (gone_second,) = [r for r in second if isinstance(r, Entry) and r.deleted]
    assert gone_second.expires_at - gone_first.expires_at == pytest.approx(3.0)
    with pytest.raises(TableWireError):
        decode_records(chunk + b"\x00", 2.0)  # nothing may follow the chunk
    with pytest.raises(TableWireError):
        decode_records(chunk[:-3], 2.0)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.none() | st.integers(0, 5) | st.text(max_size=3)
                         | st.binary(max_size=6) | st.lists(st.binary(max_size=6)
                                                            | st.integers(0, 3), max_size=9),
                         max_size=5), max_size=4))
def test_state_chunks_of_random_groups_raise_only_wire_errors(groups: list[object]) -> None:
    with contextlib.suppress(TableWireError):
        decode_records(msgpack.packb([1, 3, groups]), 0.0)


def test_a_repeated_broadcast_is_merged_once_until_the_table_lets_a_record_go() -> None:
    """The same payload again is counted as a duplicate and not merged (it would be STALE);
    once the table dropped records (here: the owner left), a repeat is merged again."""
    sender, receiver = make_delegate("a", "192.0.2.1"), make_delegate("b", "192.0.2.2")
    for delegate, other in ((sender, receiver), (receiver, sender)):
        delegate.member_alive(other.table.node, (other.table.vtep, 7946), 0.0)
    sender.table.put_endpoint(NET, "10.1.0.1", "02:00:00:00:00:01", 1.0)
    (payload,) = [p for p in sender.get_broadcasts(2, 1400)
                  if isinstance(decode_records(p, 1.0)[0], Entry)]
    for _ in range(3):
        receiver.notify_user_msg(payload, 1.0)
    stats = receiver.statistics()
    assert (stats.user_msgs, stats.duplicates) == (3, 2)
    assert receiver.table.statistics().accepted == 1
    assert receiver.table.lookup(NET, "10.1.0.1") is not None
    receiver.member_left("a", 2.0)
    receiver.handle_timeout(2.0 + receiver.table.failed_grace + 1)
    assert receiver.table.lookup(NET, "10.1.0.1") is None
    receiver.notify_user_msg(payload, 3.0)
    assert receiver.statistics().duplicates == 2  # merged again (the owner is gone: dropped)
    assert receiver.table.statistics().owner_gone == 1


def test_state_encodes_the_same_bytes_again_and_a_tombstone_from_each_now() -> None:
    """Group heads and live memberships are packed once per record: a second encoding is
    byte for byte the first; a left membership's remaining lifetime follows `now`."""
    table = NeighborTable("a", "192.0.2.1")
    table.join_network(NET, 0.0)
    table.join_network("red", 0.0)
    table.put_endpoint(NET, "10.8.0.1", "02:00:00:00:08:01", 1.0)
    first = list(encode_state(table.records(), 1.0, 32 * 1024))
    assert list(encode_state(table.records(), 1.0, 32 * 1024)) == first
    table.leave_network("red", 2.0)
    (gone,) = [r for c in encode_state(table.records(), 2.0, 32 * 1024)
               for r in decode_records(c, 0.0) if isinstance(r, Membership) and r.deleted]
    (later,) = [r for c in encode_state(table.records(), 5.0, 32 * 1024)
                for r in decode_records(c, 0.0) if isinstance(r, Membership) and r.deleted]
    assert gone.expires_at - later.expires_at == pytest.approx(3.0)


def test_membership_state_alone_is_encoded_as_encode_state_encodes_it() -> None:
    """A push-pull toward a member of none of our networks carries memberships alone: their
    own encoder gives the very bytes (chunk cuts included) that encode_state gives."""
    table = NeighborTable("a", "192.0.2.1")
    table.join_network(NET, 0.0)
    table.put_endpoint(NET, "10.1.0.1", "02:00:00:00:00:01", 1.0)
    for i in range(300):
        table.merge(Membership(f"net{i % 7}", f"node-{i}" + "x" * (i % 40),
                               f"198.51.100.{i % 250 + 1}", i + 2, i % 11 == 0,
                               100.0 if i % 11 == 0 else float("inf")), 1.0)
    elsewhere = frozenset({"net-of-someone-else"})
    for limit in (2048, 4096, 32 * 1024):
        alone = list(encode_memberships(table.memberships(), 3.0, limit))
        assert alone == list(encode_state(table.records(elsewhere), 3.0, limit))
        assert len(alone) > 1 or limit == 32 * 1024
    decoded = [r for c in encode_memberships(table.memberships(), 3.0, 2048)
               for r in decode_records(c, 3.0)]
    assert [(r.key, r.version, r.deleted) for r in decoded] == \
        [(r.key, r.version, r.deleted) for r in table.memberships()]


def test_a_broadcast_decodes_the_same_twice_and_a_tombstone_from_each_now() -> None:
    """Broadcast decoding remembers payloads by their bytes: a live endpoint's second decode
    is the very record of the first, a tombstone's deadline comes from each decode's `now`
    (all else equal), and a chunk of live records decodes to the same records again."""
    table = NeighborTable("a", "192.0.2.1")
    table.join_network(NET, 0.0)
    live = table.put_endpoint(NET, "10.9.0.1", "02:00:00:00:09:01", 1.0, changed_at=5.0)
    table.put_endpoint(NET, "10.9.0.2", "02:00:00:00:09:02", 1.0)
    gone = table.delete_endpoint(NET, "10.9.0.2", 2.0)
    payload = encode_record(live, 2.0)
    (first,) = decode_records(payload, 2.0)
    (second,) = decode_records(payload, 9.0)
    assert first is second and first == live
    tombstone = encode_record(gone, 2.0)
    (early,) = decode_records(tombstone, 2.0)
    (late,) = decode_records(tombstone, 7.0)
    assert isinstance(early, Entry) and isinstance(late, Entry)
    assert late.expires_at - early.expires_at == pytest.approx(5.0)
    assert early.expires_at == pytest.approx(gone.expires_at)
    assert late == Entry(early.network, early.ip, early.mac, early.owner, early.vtep,
                         early.version, True, late.expires_at, early.changed_at,
                         early.attributes, early.signature)
    table.handle_timeout(table.tombstone_ttl + 3.0)  # the tombstone is reaped: all is live
    (chunk,) = encode_state(table.records(), 1000.0, 32 * 1024)
    once, again = decode_records(chunk, 1000.0), decode_records(chunk, 2000.0)
    assert len(once) == 2 and all(a is b for a, b in zip(once, again, strict=True))
    with pytest.raises(TableWireError):
        decode_records(payload[:-1], 2.0)
