"""The neighbor table: merge algebra (Hypothesis), convergence under any delivery order,
tombstones, scoping, owner failure / return / supersede, refutation after a restart, events."""

from __future__ import annotations

import math
import random

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from overlay.dissemination import decode_records, encode_record, encode_state
from overlay.table import (
    EndpointChanged,
    Entry,
    InvalidEndpoint,
    Membership,
    Merge,
    NeighborTable,
    NetworkPeerChanged,
    OwnerStatus,
    Record,
    TableEvent,
    merge_records,
)

NET = "blue"
MACS = ["02:42:0a:00:00:01", "02:42:0a:00:00:02", "02:42:0a:00:00:03"]
IPS = ["10.1.0.1", "10.1.0.2", "fd00::3", "10.1.0.4"]
VTEPS = ["192.0.2.1", "192.0.2.2", "2001:db8::3"]
WALL = 1_700_000_000.0  # an owner's wall clock (changed_at) as the agent passes it


def make_table(name: str, vtep: str = "192.0.2.9", networks: tuple[str, ...] = (NET,),
               **kwargs: float) -> NeighborTable:
    table = NeighborTable(name, vtep, **kwargs)
    for network in networks:
        table.join_network(network, 0.0)
    table.records_to_send()
    drain(table)
    return table


def drain(table: NeighborTable) -> list[TableEvent]:
    events = []
    while (event := table.next_event()) is not None:
        events.append(event)
    return events


def snapshot(table: NeighborTable) -> tuple[object, ...]:
    records = sorted(
        (type(r).__name__, r.key, r.version, r.rank, r.expires_at) for r in table.records()
    )
    view = sorted((e.key, e.version) for e in table.endpoints())
    return (records, view, sorted(table.network_peers(NET).items()))


# --------------------------------------------------------------------------- merge algebra

records_of_one_key = st.builds(
    Entry,
    network=st.just(NET),
    ip=st.just("10.1.0.1"),
    mac=st.sampled_from(MACS),
    owner=st.just("a"),
    vtep=st.sampled_from(VTEPS),
    version=st.integers(1, 4),
    deleted=st.booleans(),
    expires_at=st.sampled_from([100.0, 200.0]),
    changed_at=st.sampled_from([None, WALL, WALL + 0.5]),
).map(lambda e: e if e.deleted else Entry(e.network, e.ip, e.mac, e.owner, e.vtep, e.version,
                                          changed_at=e.changed_at))


@given(records_of_one_key, records_of_one_key, records_of_one_key)
def test_merge_is_commutative_associative_idempotent(a: Entry, b: Entry, c: Entry) -> None:
    assert merge_records(a, b) == merge_records(b, a)
    assert merge_records(merge_records(a, b), c) == merge_records(a, merge_records(b, c))
    assert merge_records(a, a) == a
    winner = merge_records(a, b)
    assert winner.version == max(a.version, b.version)


# --------------------------------------------------------------------------- convergence

operation = st.tuples(
    st.integers(0, 2),  # owner
    st.sampled_from(["put", "delete", "sync"]),  # sync: the owner hears everything so far
    st.integers(0, len(IPS) - 1),
    st.integers(0, len(MACS) - 1),
)


def run_owners(ops: list[tuple[int, str, int, int]]) -> list[Record]:
    owners = [make_table(f"node{i}", VTEPS[i]) for i in range(3)]
    produced: list[Record] = [m for o in owners for m in o.records() if isinstance(m, Membership)]
    now = 1.0
    for index, kind, ip_index, mac_index in ops:
        now += 0.5
        owner = owners[index]
        ip = IPS[ip_index]
        if kind == "put":
            owner.put_endpoint(NET, ip, MACS[mac_index], now, changed_at=WALL + now)
        elif kind == "delete":
            current = owner.get(NET, owner.node, ip)
            if current is not None and not current.deleted:
                owner.delete_endpoint(NET, ip, now, changed_at=WALL + now)
        else:
            for record in produced:
                owner.merge(record, now, relay=True)
        produced.extend(owner.records_to_send())
    return produced


@settings(max_examples=150, deadline=None)
@given(st.lists(operation, max_size=30), st.randoms(use_true_random=False),
       st.randoms(use_true_random=False))
def test_any_delivery_order_and_duplication_converges(
    ops: list[tuple[int, str, int, int]], order_a: random.Random, order_b: random.Random
) -> None:
    produced = run_owners(ops)
    tables = []
    for rng in (order_a, order_b):
        deliveries = produced + [rng.choice(produced) for _ in range(len(produced) // 2)]
        rng.shuffle(deliveries)
        table = make_table("observer")
        for record in deliveries:
            table.merge(record, 50.0)
        tables.append(table)
    assert snapshot(tables[0]) == snapshot(tables[1])
    # ... and equals the fold of the join over everything sent, key by key
    expected: dict[object, Record] = {}
    for record in produced:
        key = (type(record), record.key)
        expected[key] = merge_records(expected[key], record) if key in expected else record
    held = {(type(r), r.key): r for r in tables[0].records() if r.owner != "observer"}
    assert held == expected
    # the view holds, per (network, ip), the newest live entry
    for entry in tables[0].endpoints():
        rivals = [r for r in expected.values() if isinstance(r, Entry) and r.ip == entry.ip
                  and not r.deleted]
        assert (entry.version, entry.owner) == max((r.version, r.owner) for r in rivals)


@settings(max_examples=60, deadline=None)
@given(st.lists(operation, max_size=30), st.randoms(use_true_random=False))
def test_wire_and_push_pull_paths_converge_to_the_same_table(
    ops: list[tuple[int, str, int, int]], rng: random.Random
) -> None:
    produced = run_owners(ops)
    by_broadcast = make_table("x")
    shuffled = list(produced)
    rng.shuffle(shuffled)
    for record in shuffled:
        for decoded in decode_records(encode_record(record, 50.0), 50.0):
            by_broadcast.merge(decoded, 50.0, relay=True)
    by_push_pull = make_table("y")
    for chunk in encode_state(by_broadcast.records(), 50.0, 2048):
        for decoded in decode_records(chunk, 50.0):
            by_push_pull.merge(decoded, 50.0)
    def summary(records: list[Record]) -> set[object]:
        return {(type(r), r.key, r.version, r.rank, getattr(r, "changed_at", None))
                for r in records}

    expected: dict[object, Record] = {}
    for record in produced:  # the join of everything sent, with the owners' change times
        key = (type(record), record.key)
        expected[key] = merge_records(expected[key], record) if key in expected else record
    broadcast = summary([r for r in by_broadcast.records() if r.owner != "x"])
    assert broadcast == summary([r for r in by_push_pull.records() if r.owner not in ("x", "y")])
    assert broadcast == summary(list(expected.values()))


# --------------------------------------------------------------------------- local writes, events


def test_put_change_delete_events_carry_previous_and_current() -> None:
    table = make_table("a", "192.0.2.1")
    first = table.put_endpoint(NET, "10.1.0.1", "02:42:0A:00:00:01", 1.0)
    assert first.mac == "02:42:0a:00:00:01" and first.vtep == "192.0.2.1"
    assert drain(table) == [EndpointChanged(NET, "10.1.0.1", None, first)]
    second = table.put_endpoint(NET, "10.1.0.1", MACS[1], 2.0)
    assert second.version > first.version
    assert drain(table) == [EndpointChanged(NET, "10.1.0.1", first, second)]
    tombstone = table.delete_endpoint(NET, "10.1.0.1", 3.0)
    assert tombstone.deleted and tombstone.expires_at == 3.0 + table.tombstone_ttl
    assert drain(table) == [EndpointChanged(NET, "10.1.0.1", second, None)]
    assert table.records_to_send() == [first, second, tombstone]
    assert table.statistics().tombstones == 1


def test_bad_local_input_names_field_and_changes_nothing() -> None:
    table = make_table("a")
    before = snapshot(table)
    with pytest.raises(InvalidEndpoint, match=r"ip: '10\.1\.0\.300'"):
        table.put_endpoint(NET, "10.1.0.300", MACS[0], 1.0)
    with pytest.raises(InvalidEndpoint, match="mac: 'zz'"):
        table.put_endpoint(NET, "10.1.0.3", "zz", 1.0)
    with pytest.raises(InvalidEndpoint, match="network: 'red'"):
        table.put_endpoint("red", "10.1.0.3", MACS[0], 1.0)
    with pytest.raises(InvalidEndpoint, match=r"ip: '10\.1\.0\.3'"):
        table.delete_endpoint(NET, "10.1.0.3", 1.0)
    with pytest.raises(InvalidEndpoint, match="vtep"):
        NeighborTable("a", "not-an-ip")
    assert snapshot(table) == before and table.records_to_send() == []


def test_tombstones_are_reaped_and_a_stale_copy_is_then_refuted_by_its_owner() -> None:
    owner = make_table("a", tombstone_ttl=10.0)
    peer = make_table("b", tombstone_ttl=10.0)
    live = owner.put_endpoint(NET, "10.1.0.1", MACS[0], 1.0)
    tombstone = owner.delete_endpoint(NET, "10.1.0.1", 2.0)
    owner.records_to_send()
    assert owner.next_deadline() == 12.0
    owner.handle_timeout(11.9)
    assert owner.get(NET, "a", "10.1.0.1") is not None
    owner.handle_timeout(12.0)
    assert owner.get(NET, "a", "10.1.0.1") is None and owner.statistics().reaped == 1
    # a peer that missed the delete still has the live copy and offers it back
    peer.merge(live, 20.0)
    assert owner.merge(live, 20.0) is Merge.REFUTED
    (refutation,) = owner.records_to_send()
    assert refutation.deleted and refutation.version > tombstone.version
    peer.merge(refutation, 20.5)
    assert peer.lookup(NET, "10.1.0.1") is None


def test_tombstone_remaining_lifetime_travels_on_the_wire() -> None:
    owner = make_table("a", tombstone_ttl=600.0)
    owner.put_endpoint(NET, "fd00::3", MACS[0], 100.0)
    tombstone = owner.delete_endpoint(NET, "fd00::3", 100.0)
    # encoded 250 s later, received by a node whose clock reads 5000: 350 s remain
    (decoded,) = decode_records(encode_record(tombstone, 350.0), 5000.0)
    assert isinstance(decoded, Entry) and decoded.deleted
    assert decoded.expires_at == pytest.approx(5350.0)
    (live,) = decode_records(encode_record(owner.get(NET, "a", "fd00::3") or tombstone, 0), 1)
    assert live.expires_at == pytest.approx(1.0 + 700.0)


# --------------------------------------------------------------------------- scoping


def test_owner_wall_time_travels_on_the_wire_and_never_orders_records() -> None:
    owner = make_table("a", "192.0.2.1")
    first = owner.put_endpoint(NET, "10.1.0.1", MACS[0], 1.0, changed_at=WALL + 0.25)
    assert first.changed_at == WALL + 0.25
    (decoded,) = decode_records(encode_record(first, 1.0), 2.0)
    assert decoded == first
    (chunk,) = encode_state([first], 1.0, 2048)
    assert [r for r in decode_records(chunk, 2.0) if isinstance(r, Entry)] == [first]
    # a later write with an earlier wall time (the owner's clock stepped back) still wins
    second = owner.put_endpoint(NET, "10.1.0.1", MACS[1], 2.0, changed_at=WALL - 100)
    observer = make_table("c")
    observer.merge(second, 2.0)
    assert observer.merge(first, 2.0) is Merge.STALE
    assert observer.lookup(NET, "10.1.0.1") == second
    # the tombstone carries the time of the delete
    gone = owner.delete_endpoint(NET, "10.1.0.1", 3.0, changed_at=WALL + 3)
    assert gone.deleted and gone.changed_at == WALL + 3
    # records of peers that predate the field decode with changed_at unknown
    old_broadcast = msgpack.packb([1, 1, NET, "b", bytes([10, 1, 0, 2]), bytes(6),
                                   bytes([192, 0, 2, 2]), 7, None])
    (old,) = decode_records(old_broadcast, 1.0)
    assert isinstance(old, Entry) and old.changed_at is None and old.version == 7
    old_chunk = msgpack.packb([1, 3, [[NET, "b", None, [[bytes([10, 1, 0, 3]), bytes(6),
                                                          bytes([192, 0, 2, 2]), 8, None]]]]])
    (old,) = decode_records(old_chunk, 1.0)
    assert isinstance(old, Entry) and old.changed_at is None and old.ip == "10.1.0.3"
    for bad in (math.nan, -1.0, math.inf):
        with pytest.raises(InvalidEndpoint, match="changed_at"):
            owner.put_endpoint(NET, "10.1.0.9", MACS[0], 4.0, changed_at=bad)
    assert owner.get(NET, "a", "10.1.0.9") is None


def test_a_refutation_keeps_the_time_of_the_change_it_reissues() -> None:
    owner = make_table("a", "192.0.2.1")
    mine = owner.put_endpoint(NET, "10.1.0.1", MACS[0], 1.0, changed_at=WALL)
    owner.records_to_send()
    stale = Entry(NET, "10.1.0.1", MACS[1], "a", "192.0.2.1", mine.version + 5,
                  changed_at=WALL - 50)
    assert owner.merge(stale, 2.0) is Merge.REFUTED
    (fresh,) = owner.records_to_send()
    assert isinstance(fresh, Entry) and fresh.version > stale.version
    assert (fresh.mac, fresh.changed_at) == (MACS[0], WALL)
    ghost = Entry(NET, "10.1.0.7", MACS[1], "a", "192.0.2.1", 1, changed_at=WALL - 50)
    assert owner.merge(ghost, 3.0) is Merge.REFUTED
    (tombstone,) = owner.records_to_send()
    assert isinstance(tombstone, Entry) and tombstone.deleted and tombstone.changed_at is None


def test_endpoints_held_only_for_joined_networks_memberships_for_all() -> None:
    red_owner = make_table("a", "192.0.2.1", networks=("red", NET))
    observer = make_table("b", "192.0.2.2", networks=(NET,))
    red_owner.put_endpoint("red", "10.2.0.1", MACS[0], 1.0)
    red_owner.put_endpoint(NET, "10.1.0.1", MACS[1], 1.0)
    results = [observer.merge(r, 1.0) for r in red_owner.records()]
    assert results.count(Merge.OUT_OF_SCOPE) == 1
    assert [e.ip for e in observer.endpoints()] == ["10.1.0.1"]
    assert observer.network_peers("red") == {"a": "192.0.2.1"}
    assert observer.network_peers(NET) == {"a": "192.0.2.1", "b": "192.0.2.2"}
    drain(observer)
    # leaving a network tombstones our endpoints there and drops its records
    observer.join_network("red", 2.0)
    observer.merge(red_owner.get("red", "a", "10.2.0.1") or red_owner.records_to_send()[0], 2.0)
    observer.put_endpoint("red", "10.2.0.2", MACS[2], 2.0)
    observer.records_to_send()
    sent = observer.leave_network("red", 3.0)
    assert [type(r).__name__ for r in sent] == ["Entry", "Membership"]
    assert all(r.deleted for r in sent)
    assert observer.endpoints("red") == [] and "red" not in observer.networks()
    assert red_owner.merge(sent[1], 3.0) is Merge.ACCEPTED
    assert red_owner.network_peers("red") == {"a": "192.0.2.1"}


def test_endpoints_of_an_owner_are_its_visible_entries() -> None:
    """An owner's visible entries: not a tombstone, not an address another owner shows, not
    a failed owner's."""
    a, b = make_table("a", VTEPS[0]), make_table("b", VTEPS[1])
    viewer = make_table("c", VTEPS[2])
    for owner in (a, b):
        viewer.member_alive(owner.node, (owner.vtep, 7946), 1.0)
    a.put_endpoint(NET, IPS[0], MACS[0], 1.0)
    a.put_endpoint(NET, IPS[1], MACS[0], 1.0)
    a.put_endpoint(NET, IPS[2], MACS[0], 1.0)
    a.delete_endpoint(NET, IPS[2], 2.0)
    b.put_endpoint(NET, IPS[1], MACS[1], 3.0)  # b's clock is behind: version 2 < a's 3
    b.put_endpoint(NET, IPS[1], MACS[2], 3.0)
    b.put_endpoint(NET, IPS[1], MACS[1], 3.0)
    b.put_endpoint(NET, IPS[1], MACS[2], 3.0)  # version 5: b's shows at IPS[1]
    for record in [*a.records(), *b.records()]:
        viewer.merge(record, 4.0)
    assert viewer.lookup(NET, IPS[1]) == b.get(NET, "b", IPS[1])
    assert {e.ip for e in viewer.endpoints_of("a")} == {IPS[0]}
    assert viewer.endpoints_of("b") == [b.get(NET, "b", IPS[1])]
    assert viewer.endpoints_of("stranger") == []
    assert viewer.view() == {(e.network, e.ip): e for e in viewer.endpoints()}
    with pytest.raises(TypeError):
        viewer.view()[(NET, IPS[3])] = b.get(NET, "b", IPS[1])  # type: ignore[index]
    assert {e.ip for e in a.endpoints_of("a")} == {IPS[0], IPS[1]}
    viewer.member_failed("b", 5.0)
    assert viewer.endpoints_of("b") == []
    assert {e.ip for e in viewer.endpoints_of("a")} == {IPS[0], IPS[1]}


# --------------------------------------------------------------------------- owner failure


def fed_observer(grace: float = 30.0) -> tuple[NeighborTable, NeighborTable]:
    owner = make_table("a", "192.0.2.1")
    for i in range(3):
        owner.put_endpoint(NET, f"10.1.0.{i + 1}", MACS[i], 1.0)
    observer = make_table("b", "192.0.2.2", failed_grace=grace)
    observer.member_alive("a", ("192.0.2.1", 7946), 1.0)
    for record in owner.records():
        observer.merge(record, 1.0)
    drain(observer)
    return owner, observer


def test_failed_owner_is_withdrawn_at_once_and_restored_without_broadcasts() -> None:
    _, observer = fed_observer()
    observer.member_failed("a", 5.0)
    events = drain(observer)
    withdrawn = [e for e in events if isinstance(e, EndpointChanged)]
    assert len(withdrawn) == 3 and all(e.current is None for e in withdrawn)
    assert NetworkPeerChanged in {type(e) for e in events}
    assert observer.endpoints() == [] and observer.statistics().entries == 3
    observer.member_alive("a", ("192.0.2.1", 7946), 20.0)
    restored = [e for e in drain(observer) if isinstance(e, EndpointChanged)]
    assert len(restored) == 3 and all(e.previous is None for e in restored)
    assert observer.records_to_send() == []  # no storm
    observer.handle_timeout(100.0)  # the old grace deadline must not purge a returned owner
    assert len(observer.endpoints()) == 3


def test_failed_owner_is_purged_after_grace_and_late_copies_dropped() -> None:
    owner, observer = fed_observer(grace=30.0)
    observer.member_failed("a", 5.0)
    assert observer.next_deadline() == 35.0
    observer.handle_timeout(35.0)
    assert observer.statistics().entries == 0 and observer.owner_status("a") is OwnerStatus.GONE
    assert observer.network_peers(NET) == {"b": "192.0.2.2"}
    stale = next(r for r in owner.records() if isinstance(r, Entry))
    assert observer.merge(stale, 36.0) is Merge.OWNER_GONE
    observer.member_alive("a", ("192.0.2.1", 7946), 40.0)
    assert observer.merge(stale, 40.0) is Merge.ACCEPTED


def test_an_owner_going_and_returning_moves_only_its_own_memberships() -> None:
    networks = ("n0", "n1", "n2")
    observer = make_table("obs", networks=networks)
    for owner in ("a", "b", "c"):
        observer.member_alive(owner, (f"192.0.2.{ord(owner)}", 7946), 0.0)
        peer = make_table(owner, f"192.0.2.{ord(owner)}", networks=networks[:2])
        for record in peer.records():
            observer.merge(record, 0.0)
    drain(observer)
    observer.member_failed("b", 5.0)
    moved = [e for e in drain(observer) if isinstance(e, NetworkPeerChanged)]
    assert sorted((e.network, e.node, e.current) for e in moved) == \
        [("n0", "b", None), ("n1", "b", None)]
    assert set(observer.network_peers("n0")) == {"obs", "a", "c"}
    observer.member_alive("b", ("192.0.2.98", 7946), 6.0)
    back = [e for e in drain(observer) if isinstance(e, NetworkPeerChanged)]
    assert sorted((e.network, e.node, e.previous) for e in back) == \
        [("n0", "b", None), ("n1", "b", None)]
    observer.member_left("c", 7.0)
    observer.handle_timeout(7.0 + observer.failed_grace)  # c is purged: its memberships go
    assert observer.statistics().memberships == 3 + 2 + 2
    assert set(observer.network_peers("n1")) == {"obs", "a", "b"}


def test_new_identity_on_the_same_address_supersedes_the_old_one() -> None:
    old, observer = fed_observer()
    observer.member_alive("a-2", ("192.0.2.1", 7946), 10.0)
    # the old name is alive: a new name's claim alone purges nothing
    assert len(observer.endpoints()) == 3
    assert observer.owner_status("a") is OwnerStatus.ALIVE
    observer.member_failed("a", 10.0)
    assert observer.endpoints() == []
    assert observer.owner_status("a") is OwnerStatus.SUPERSEDED
    assert observer.statistics().purged == 3
    stale = next(r for r in old.records() if isinstance(r, Entry))
    assert observer.merge(stale, 11.0) is Merge.OWNER_GONE
    new = make_table("a-2", "192.0.2.1")
    observer.merge(new.put_endpoint(NET, "10.1.0.1", MACS[2], 11.0), 11.0)
    assert observer.lookup(NET, "10.1.0.1") == new.get(NET, "a-2", "10.1.0.1")


def test_restart_with_same_identity_refutes_its_old_entries() -> None:
    before, observer = fed_observer()
    for _ in range(5):  # the old incarnation had a high clock
        before.put_endpoint(NET, "10.1.0.1", MACS[1], 2.0)
    for record in before.records_to_send():
        observer.merge(record, 2.0)
    restarted = make_table("a", "192.0.2.1")  # forgot everything
    fresh = restarted.put_endpoint(NET, "10.1.0.1", MACS[2], 3.0)
    assert observer.merge(fresh, 3.0) is Merge.STALE  # lower clock: it loses ... for now
    restarted.records_to_send()
    # push-pull on join: the observer's full state reaches the restarted owner
    for record in list(observer.records()):
        restarted.merge(record, 4.0)
    refutations = restarted.records_to_send()
    assert {r.ip for r in refutations if isinstance(r, Entry)} == {"10.1.0.1", "10.1.0.2",
                                                                   "10.1.0.3"}
    for record in refutations:
        observer.merge(record, 4.5, relay=True)
    entry = observer.lookup(NET, "10.1.0.1")
    assert entry is not None and entry.mac == MACS[2]
    assert {e.ip for e in observer.endpoints()} == {"10.1.0.1"}


def test_reused_ip_shows_the_newer_owner_until_the_old_delete_arrives() -> None:
    a = make_table("a", "192.0.2.1")
    b = make_table("b", "192.0.2.2")
    observer = make_table("c")
    old = a.put_endpoint(NET, "10.1.0.1", MACS[0], 1.0)
    observer.merge(old, 1.0)
    gone = a.delete_endpoint(NET, "10.1.0.1", 2.0)
    b.merge(gone, 2.0)  # b allocated the IP after hearing of the delete
    new = b.put_endpoint(NET, "10.1.0.1", MACS[1], 3.0)
    observer.merge(new, 3.0)
    assert observer.lookup(NET, "10.1.0.1") == new
    drain(observer)
    observer.merge(gone, 4.0)
    assert observer.lookup(NET, "10.1.0.1") == new and drain(observer) == []
    assert math.isinf(new.expires_at)


def test_a_version_far_ahead_of_the_clock_is_dropped_and_writes_go_on() -> None:
    from overlay.table import VERSION_JUMP, VERSION_MAX

    a = make_table("a")
    b = make_table("b")
    forged = Entry(NET, IPS[0], MACS[0], "b", VTEPS[1], VERSION_MAX)
    assert a.merge(forged, 1.0) is Merge.IMPLAUSIBLE
    assert a.statistics().implausible == 1 and a.statistics().clock < VERSION_JUMP
    near = Entry(NET, IPS[1], MACS[1], "c", VTEPS[2], a.statistics().clock + VERSION_JUMP)
    assert a.merge(near, 1.0) is Merge.ACCEPTED
    entry = a.put_endpoint(NET, IPS[2], MACS[2], 2.0)
    assert entry.version < VERSION_MAX
    record = decode_records(encode_record(entry, 2.0), 2.0)[0]
    assert b.merge(record, 2.0) is Merge.IMPLAUSIBLE  # b's clock is far behind
    assert b.merge(near, 2.0) is Merge.ACCEPTED  # the news that moved a's clock reaches b
    assert b.merge(record, 2.0) is Merge.ACCEPTED


def test_a_remote_tombstone_lifetime_is_capped_at_ours() -> None:
    a = make_table("a", tombstone_ttl=600.0)
    tomb = Entry(NET, IPS[0], MACS[0], "b", VTEPS[1], 5, True, 10.0 + 2**40 / 1000)
    assert a.merge(tomb, 10.0) is Merge.ACCEPTED
    held = a.get(NET, "b", IPS[0])
    assert held is not None and held.expires_at == 610.0
    a.handle_timeout(611.0)
    assert a.get(NET, "b", IPS[0]) is None


def test_repeats_of_a_held_deletion_keep_the_later_deadline_capped_at_ours() -> None:
    """Every gossiped deletion arrives again and again: each repeat is STALE and may only move
    the deadline later (never past our own lifetime from now); validity still holds."""
    a = make_table("a", tombstone_ttl=600.0)
    tomb = Entry(NET, IPS[0], MACS[0], "b", VTEPS[1], 5, True, 100.0, WALL)

    def deadline() -> float:
        held = a.get(NET, "b", IPS[0])
        assert held is not None and held.deleted
        return held.expires_at

    assert a.merge(tomb, 10.0) is Merge.ACCEPTED
    for expires_at, now, kept in ((300.0, 20.0, 300.0), (200.0, 30.0, 300.0),
                                  (5000.0, 40.0, 640.0)):
        copy = Entry(NET, IPS[0], MACS[0], "b", VTEPS[1], 5, True, expires_at, WALL)
        assert a.merge(copy, now) is Merge.STALE
        assert deadline() == kept
    a.handle_timeout(301.0)
    assert deadline() == 640.0
    a.set_subnet(NET, "10.9.0.0/24", None)  # its address is outside the subnet now
    late = Entry(NET, IPS[0], MACS[0], "b", VTEPS[1], 5, True, 700.0, WALL)
    assert a.merge(late, 100.0) is Merge.INVALID and deadline() == 640.0
    assert (a.statistics().stale, a.statistics().invalid) == (3, 1)
    a.handle_timeout(640.5)
    assert a.get(NET, "b", IPS[0]) is None


def test_remote_records_with_a_bad_mac_or_address_are_invalid() -> None:
    a = make_table("a")
    a.set_subnet(NET, "10.1.0.0/24", "10.1.0.1")
    bad = [Entry(NET, "10.1.0.7", "01:00:5e:00:00:01", "b", VTEPS[1], 1),  # multicast
           Entry(NET, "10.1.0.7", "ff:ff:ff:ff:ff:ff", "b", VTEPS[1], 2),  # broadcast
           Entry(NET, "10.1.0.7", "00:00:00:00:00:00", "b", VTEPS[1], 3),  # zero
           Entry(NET, "10.9.0.7", MACS[0], "b", VTEPS[1], 4),  # outside the subnet
           Entry(NET, "10.1.0.1", MACS[0], "b", VTEPS[1], 5),  # the gateway
           Entry(NET, "10.1.0.0", MACS[0], "b", VTEPS[1], 6),  # network address
           Entry(NET, "10.1.0.255", MACS[0], "b", VTEPS[1], 7),  # broadcast address
           Entry(NET, "fd00::7", MACS[0], "b", VTEPS[1], 8)]  # other family
    assert [a.merge(entry, 1.0) for entry in bad] == [Merge.INVALID] * len(bad)
    assert a.statistics().invalid == len(bad) and a.endpoints() == []
    assert a.merge(Entry(NET, "10.1.0.7", MACS[0], "b", VTEPS[1], 9), 1.0) is Merge.ACCEPTED


def _signed_pair() -> tuple[NeighborTable, NeighborTable, dict[str, object]]:
    from gossip.identity import KeyCache, Signer

    signers = {"a": Signer.generate(), "b": Signer.generate()}
    cache = KeyCache({name: s.public_key for name, s in signers.items()})

    def check(owner: str, signature: bytes, data: bytes) -> bool | None:
        return cache.check(owner, b"", signature, data).value == "valid"

    tables = [NeighborTable(name, vtep, sign=signers[name].sign, check_signature=check)
              for name, vtep in (("a", VTEPS[0]), ("b", VTEPS[1]))]
    for table in tables:
        table.join_network(NET, 0.0)
    return tables[0], tables[1], dict(signers)


def test_signed_records_verify_and_forgeries_are_dropped() -> None:
    from dataclasses import replace as copy_with

    from gossip.identity import Signer
    from overlay.table import record_signed_bytes

    a, b, _ = _signed_pair()
    a.member_alive("b", ("192.0.2.2", 7946), 0.0)
    entry = b.put_endpoint(NET, IPS[0], MACS[0], 1.0)
    wire = decode_records(encode_record(entry, 1.0), 1.0)[0]
    assert wire.signature == entry.signature != b""
    assert a.merge(wire, 1.0) is Merge.ACCEPTED and a.lookup(NET, IPS[0]) is not None
    evil = Signer.generate()
    moved = copy_with(entry, vtep="203.0.113.66", version=entry.version + 1)
    forged = copy_with(moved, signature=evil.sign(record_signed_bytes(moved)))
    unsigned = copy_with(moved, signature=b"")
    in_a_name = Entry(NET, IPS[1], MACS[1], "a", "203.0.113.66", 50,
                      signature=evil.sign(b"anything"))
    assert [a.merge(r, 2.0) for r in (forged, unsigned, in_a_name)] == [Merge.UNVERIFIED] * 3
    assert a.lookup(NET, IPS[0]).vtep == VTEPS[1]  # type: ignore[union-attr]
    assert a.statistics().unverified == 3 and a.statistics().refuted == 0


def test_signed_mode_holds_records_of_an_owner_membership_does_not_know() -> None:
    a, b, _ = _signed_pair()
    entry = b.put_endpoint(NET, IPS[0], MACS[0], 1.0)
    assert a.merge(entry, 1.0) is Merge.ACCEPTED
    assert a.lookup(NET, IPS[0]) is None and a.get(NET, "b", IPS[0]) == entry
    a.member_alive("b", ("192.0.2.2", 7946), 2.0)
    assert a.lookup(NET, IPS[0]) == entry


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 2**63 - 1), st.sampled_from(["b", "a"]),
                          st.booleans()), min_size=1, max_size=20))
def test_no_forged_version_sequence_stops_honest_writes(
        forgeries: list[tuple[int, str, bool]]) -> None:
    from overlay.table import VERSION_MAX

    a, b = make_table("a"), make_table("b", VTEPS[1])
    b.records_to_send()
    for version, owner, deleted in forgeries:
        forged = Entry(NET, IPS[0], MACS[0], owner, VTEPS[2], version, deleted,
                       10.0 + 2**40 / 1000 if deleted else math.inf)
        a.merge(forged, 1.0)
        b.merge(forged, 1.0)  # gossip brings the same forgery to every node
    assert all(e.expires_at <= 1.0 + a.tombstone_ttl for e in a.records()
               if isinstance(e, Entry) and e.deleted)
    for record in a.records_to_send():  # refutations of forgeries in a's name
        b.merge(record, 1.0)
    for i in range(3):  # a's and b's next writes still fit the wire and reach the other
        entry = a.put_endpoint(NET, IPS[1], MACS[i], 2.0 + i)
        assert entry.version < VERSION_MAX
        assert b.merge(decode_records(encode_record(entry, 2.0), 2.0)[0], 2.0) \
            is Merge.ACCEPTED
    assert a.statistics().clock < VERSION_MAX // 2
