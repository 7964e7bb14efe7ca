"""The table's gossip delegate: broadcast queue, bounded push-pull chunks, hostile bytes."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gossip.delegate import Delegate
from gossip.errors import WireError
from overlay.dissemination import (
    BroadcastQueue,
    DisseminationConfig,
    TableDelegate,
    TableWireError,
    decode_records,
    encode_record,
    encode_state,
)
from overlay.table import Entry, NeighborTable

NET = "blue"


def make_delegate(name: str, vtep: str) -> TableDelegate:
    table = NeighborTable(name, vtep)
    table.join_network(NET, 0.0)
    return TableDelegate(table, now=0.0)


def entry(ip: str, version: int, mac: str = "02:00:00:00:00:01") -> Entry:
    return Entry(NET, ip, mac, "a", "192.0.2.1", version)


def test_the_delegate_satisfies_the_gossip_protocol() -> None:
    delegate: Delegate = make_delegate("a", "192.0.2.1")
    assert delegate.node_meta(512) == b""


def test_newer_change_to_the_same_entry_invalidates_the_queued_one() -> None:
    queue = BroadcastQueue(limit=100)
    queue.push(entry("10.1.0.1", 1))
    queue.push(entry("10.1.0.2", 2))
    queue.push(entry("10.1.0.1", 3, "02:00:00:00:00:03"))
    assert len(queue) == 2 and queue.invalidated == 1
    payloads = queue.take(overhead=3, limit=1400, max_transmits=5, now=0.0)
    versions = [r.version for p in payloads for r in decode_records(p, 0.0)]
    assert versions == [3, 2]  # newest first


def test_queue_respects_budget_least_sent_first_and_transmit_limit() -> None:
    queue = BroadcastQueue(limit=100)
    for i in range(40):
        queue.push(entry(f"10.1.0.{i + 1}", i + 1))
    size = len(encode_record(entry("10.1.0.10", 10), 0.0))
    first = queue.take(overhead=2, limit=10 * (size + 2), max_transmits=2, now=0.0)
    assert sum(len(p) + 2 for p in first) <= 10 * (size + 2) and len(first) >= 9
    second = queue.take(overhead=2, limit=10 * (size + 2), max_transmits=2, now=0.0)
    assert not {bytes(p) for p in first} & {bytes(p) for p in second}  # unsent ones go first
    total = len(first) + len(second)
    while payloads := queue.take(overhead=2, limit=1400, max_transmits=2, now=0.0):
        total += len(payloads)
    assert total == 80 and len(queue) == 0  # each sent exactly twice


def test_queue_drops_the_most_sent_beyond_its_limit() -> None:
    queue = BroadcastQueue(limit=3)
    for i in range(3):
        queue.push(entry(f"10.1.0.{i + 1}", i + 1))
    queue.take(overhead=0, limit=60, max_transmits=9, now=0.0)
    queue.push(entry("10.1.0.9", 9))
    assert len(queue) == 3 and queue.dropped == 1


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
    with pytest.raises(Exception, match="chunk_limit"):
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
    msgpack.packb({1: 2}),
]


@pytest.mark.parametrize("payload", GARBAGE)
def test_garbage_raises_only_the_wire_error_and_is_counted(payload: bytes) -> None:
    delegate = make_delegate("a", "192.0.2.1")
    with pytest.raises(WireError):
        delegate.notify_user_msg(payload, 1.0)
    with pytest.raises(TableWireError):
        delegate.merge_remote_state(payload, False, 1.0)
    assert delegate.statistics().decode_errors == 2
    assert next(iter(delegate.table.records())).owner == "a"  # nothing else was stored


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=120) | st.builds(
    lambda kind, items: msgpack.packb([1, kind, *items]),
    st.sampled_from([1, 2, 3]),
    st.lists(st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
             | st.binary(max_size=17) | st.text(max_size=4)
             | st.lists(st.integers(0, 9) | st.binary(max_size=6), max_size=5), max_size=9)))
def test_decoding_random_bytes_never_raises_anything_but_wire_error(payload: bytes) -> None:
    with contextlib.suppress(TableWireError):
        decode_records(payload, 0.0)


def test_retransmit_limit_grows_with_the_cluster() -> None:
    delegate = TableDelegate(NeighborTable("a", "192.0.2.1"), DisseminationConfig(), now=0.0)
    assert delegate.retransmit_limit() == 4
    for i in range(150):
        delegate.member_alive(f"n{i}", ("192.0.2.9", 7000 + i), 0.0)
    assert delegate.retransmit_limit() == 12
