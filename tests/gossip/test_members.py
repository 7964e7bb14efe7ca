"""The member table behind `Swim` (gossip.members): ids, shared records, formed views."""

from __future__ import annotations

import dataclasses
import random

import pytest

from gossip.config import SwimConfig
from gossip.errors import GossipError
from gossip.members import FormedView, MemberDirectory, MemberNode
from gossip.sim import Simulation
from gossip.swim import MemberForgotten, MemberState, Swim
from gossip.wire import (
    Ack,
    Alive,
    Dead,
    MemberRecord,
    Ping,
    Suspect,
    decode_chunk,
    decode_packet,
    encode_message,
    encode_packet,
)

LAN = SwimConfig.lan()


def records(count: int) -> list[MemberRecord]:
    return [MemberRecord(f"m{i:03d}", ("10.4.0.1", 7000 + i), b"meta", 0, MemberState.ALIVE)
            for i in range(count)]


def swim(name: str, port: int, directory: MemberDirectory | None = None,
         config: SwimConfig = LAN) -> Swim:
    return Swim(config, name, ("10.4.0.1", port), meta=b"meta", rng=random.Random(port),
                now=0.0, directory=directory)


def test_views_sharing_a_directory_share_records_and_keep_their_own_changes() -> None:
    directory = MemberDirectory(shared=True)
    view = FormedView(directory, records(50), 0.0)
    a, b = swim("m000", 7000, directory), swim("m001", 7001, directory)
    a.adopt_view(view, 0.0)
    b.adopt_view(view, 0.0)
    assert a.statistics().members_alive == b.statistics().members_alive == 49
    assert a._get("m010") is b._get("m010")  # one object for both views
    a.receive_datagram(encode_packet([encode_message(Suspect(0, "m010", "m002"))]),
                       ("10.4.0.1", 7002), 1.0)
    assert a.state_of("m010") is MemberState.SUSPECT
    assert b.state_of("m010") is MemberState.ALIVE
    assert view.nodes[directory.ids["m010"]].state is MemberState.ALIVE  # type: ignore[union-attr]


def test_adopting_a_formed_view_equals_adopting_its_records_one_by_one() -> None:
    shared = MemberDirectory(shared=True)
    view = FormedView(shared, records(30), 0.0)
    fast = swim("m005", 7005, shared)
    fast.adopt_view(view, 0.0)
    slow = swim("m005", 7005)
    slow.adopt_members(records(30), 0.0)
    assert sorted(fast.members(), key=lambda m: m.name) == \
        sorted(slow.members(), key=lambda m: m.name)
    assert fast.statistics() == slow.statistics()
    with pytest.raises(GossipError, match="another directory"):
        slow.adopt_view(view, 0.0)


def test_every_member_is_probed_once_per_round() -> None:
    a = swim("m000", 7000)
    a.adopt_members(records(40), 0.0)
    probes: dict[int, str] = {}  # seq -> target (a retry repeats the seq)
    now = 0.0
    for _ in range(39 * 2 + 1):
        now += LAN.probe_interval_s
        a.handle_timeout(now)
        for data, addr in a.datagrams_to_send():
            for message in decode_packet(data):
                if isinstance(message, Ping):
                    probes.setdefault(message.seq, message.target)
                    a.receive_datagram(encode_packet([encode_message(Ack(message.seq))]),
                                       addr, now)
    probed = list(probes.values())
    first, second = probed[:39], probed[39:78]
    assert sorted(first) == sorted(second) == [f"m{i:03d}" for i in range(1, 40)]
    assert first != second  # a fresh order each round


def test_a_private_directory_forgets_a_reaped_member_and_reuses_its_id() -> None:
    a = swim("m000", 7000, config=dataclasses.replace(LAN, remember_failed_s=4.0))
    a.adopt_members(records(5), 0.0)
    directory = a._dir
    dead_id = directory.ids["m004"]
    a.receive_datagram(encode_packet([encode_message(Dead(0, "m004", "m001"))]),
                       ("10.4.0.1", 7001), 1.0)
    assert a.state_of("m004") is MemberState.DEAD
    a.handle_timeout(20.0)
    forgotten = [e.member.name for e in iter(a.next_event, None)
                 if isinstance(e, MemberForgotten)]
    assert forgotten == ["m004"] and "m004" not in directory.ids
    assert a.state_of("m004") is None and a.statistics().members_failed == 0
    new = MemberRecord("m099", ("10.4.0.9", 7099), b"meta", 0, MemberState.ALIVE)
    a.merge_push_pull_chunk(_chunk([new]), ("10.4.0.1", 7001), False, 21.0)
    assert a.state_of("m099") is MemberState.ALIVE and directory.ids["m099"] == dead_id
    assert a._owner(("10.4.0.9", 7099)) is a._get("m099")
    assert a._owner(("10.4.0.1", 7004)) is None


def _chunk(members: list[MemberRecord]) -> bytes:
    from gossip.wire import encode_member_record, encode_members_chunk

    return encode_members_chunk([encode_member_record(r) for r in members])


def test_a_simulation_holds_one_record_per_member_for_all_its_nodes() -> None:
    """Alive, suspect and failed alike: every view that holds a member in the same state at
    the same incarnation holds the same object (a partition's views cost a pointer per
    member across the cut); when each view suspected or failed it, it keeps to itself."""
    sim = Simulation(60, seed=3, config=LAN)
    sim.run_until(10.0)

    def held() -> list[MemberNode | None]:
        return [s._get("n00017") for n in sim.nodes if (s := n.swim) is not None
                and n.index != 17]

    assert len({id(node) for node in held()}) == 1
    sim.kill(17)
    suspected_at: dict[int, float] = {}
    for step in range(200):
        sim.run_until(10.0 + step * 0.25)
        suspects = [n for n in held() if n is not None and n.state is MemberState.SUSPECT]
        if len(suspects) > 1:
            assert len({id(node) for node in suspects}) == 1
            suspected_at = {n.index: s._suspicions[17].start for n in sim.nodes
                            if (s := n.swim) is not None and 17 in s._suspicions}
            break
    assert len(suspected_at) > 1
    sim.run_until(60.0)
    assert all(n.swim.state_of("n00017") is MemberState.DEAD
               for n in sim.nodes if n.swim is not None)
    assert len({id(node) for node in held()}) == 1
    down_since = {s._down[17] for n in sim.nodes if (s := n.swim) is not None}
    assert len(down_since) > 1  # each view's own time of the failure


def test_views_converged_counts_down_nodes_still_seen() -> None:
    sim = Simulation(6, seed=2, config=LAN)
    assert sim.views_converged(check_down=True)
    sim.kill(5)  # every view still sees it alive
    assert sim.views_converged() and not sim.views_converged(check_down=True)
    view = sim.nodes[0].swim
    assert view is not None
    node = view._get("n00001")
    assert node is not None
    view._forget(node)  # misses an up node while its count still matches the up nodes
    assert view.cluster_size() == 5
    assert not sim.views_converged()


def test_push_pull_states_share_the_chunks_of_unchanged_id_ranges() -> None:
    """Chunks are cut at fixed id ranges: two views of a shared directory holding the same
    members send the same chunk objects, and a view that learned one member since its last
    state rebuilds only that member's range (a seed's replies to a cold start's joiners share
    the rest); the chunks still merge into the whole membership."""
    from gossip.swim import CHUNK_IDS

    directory = MemberDirectory(shared=True)
    members = [MemberRecord(f"m{i:04d}", ("10.4.1.1", 1000 + i), b"meta", 0, MemberState.ALIVE)
               for i in range(3 * CHUNK_IDS)]
    view = FormedView(directory, members, 0.0)
    a, b = swim("a", 1, directory), swim("b", 2, directory)
    a.adopt_view(view, 0.0)
    b.adopt_view(view, 0.0)
    first = a.push_pull_state(join=False)
    assert len(first) == 4  # three full ranges, and the one holding a itself
    assert [id(c) for c in first[:3]] == [id(c) for c in b.push_pull_state(join=False)[:3]]
    newcomer = MemberRecord("m0001", ("10.4.1.9", 999), b"new", 1, MemberState.ALIVE)
    a.merge_push_pull_chunk(_chunk([newcomer]), ("10.4.1.9", 999), False, 1.0)
    second = a.push_pull_state(join=False)
    assert second[0] is not first[0] and second[1:] == first[1:]
    assert all(x is y for x, y in zip(second[1:], first[1:], strict=True))
    fresh = swim("fresh", 3)
    for chunk in second:
        assert fresh.merge_push_pull_chunk(chunk, a.addr, False, 2.0)
    assert fresh.statistics().members_alive == 3 * CHUNK_IDS + 1
    assert fresh.member("m0001") == a.member("m0001")


def test_a_shared_directory_decodes_each_distinct_packet_once_and_garbage_every_time() -> None:
    directory = MemberDirectory(shared=True)
    a, b = swim("a", 7001, directory), swim("b", 7002, directory)
    packet = encode_packet([encode_message(Ping(5, "a")), encode_message(Ack(3))])
    first = directory.decode_packet(packet)
    assert first == decode_packet(packet)
    assert directory.decode_packet(bytes(packet)) is first  # equal bytes, one decode
    assert MemberDirectory().decode_packet(packet) is not first  # a private one keeps none
    garbage = b"\x01\xc1"
    for view in (a, b, a):
        view.receive_datagram(garbage, ("10.4.0.1", 7003), 0.1)
    assert a.statistics().wire_errors == 2 and b.statistics().wire_errors == 1
    a.receive_datagram(packet, ("10.4.0.1", 7002), 0.2)  # the memoized ping still answered
    assert any(Ack(5) in decode_packet(data) for data, _ in a.datagrams_to_send())


def test_kept_push_pull_chunks_follow_every_change_of_their_range() -> None:
    """A view keeps the chunks of each id range until a record in it changes: after a
    suspicion, a failure and a refutation its state says what it holds, each time."""
    a, b = swim("a", 1), swim("b", 2)
    a.adopt_members(records(300), 0.0)

    def states() -> dict[str, tuple[MemberState, int]]:
        sent = [r for chunk in a.push_pull_state(join=False)
                if isinstance(decoded := decode_chunk(chunk), list) for r in decoded]
        assert len(sent) == 301
        return {r.name: (r.state, r.incarnation) for r in sent}

    assert states()["m007"] == (MemberState.ALIVE, 0)
    a.receive_datagram(encode_packet([encode_message(Suspect(0, "m007", "m001"))]),
                       b.addr, 1.0)
    assert states()["m007"] == (MemberState.SUSPECT, 0)
    a.receive_datagram(encode_packet([encode_message(Dead(0, "m007", "m001"))]), b.addr, 2.0)
    assert states()["m007"] == (MemberState.DEAD, 0)
    assert states()["m250"] == (MemberState.ALIVE, 0)
    a.receive_datagram(encode_packet([encode_message(Alive(1, "m250", ("10.4.0.1", 7250),
                                                           b"new"))]), b.addr, 3.0)
    assert states()["m250"] == (MemberState.ALIVE, 1)
