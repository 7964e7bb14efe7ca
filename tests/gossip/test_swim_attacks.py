"""Forged SWIM claims against the pure core: bounded incarnations, recovery of the victim."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gossip.swim import INCARNATION_JUMP, MemberState, Swim
from gossip.wire import Alive, Dead, Suspect, encode_message, encode_packet
from tests.gossip.fakelink import FakeLink

ATTACKER = ("127.0.0.66", 7946)


def forge(victim: Swim, *messages: Alive | Dead | Suspect) -> None:
    """One unauthenticated datagram from the attacker's address."""
    victim.receive_datagram(encode_packet([encode_message(m) for m in messages]), ATTACKER, 0.0)


def test_an_alive_at_the_incarnation_limit_is_dropped_and_counted() -> None:
    link = FakeLink(3)
    link.form()
    a = link["a"]
    forge(a, Alive(2**64 - 1, "b", ATTACKER, b"evil"))
    forge(a, Dead(2**64 - 1, "c", "c"), Suspect(2**64 - 1, "b", "x"))
    link.advance(5.0)
    assert a.member("b").addr == link["b"].addr  # type: ignore[union-attr]
    assert a.state_of("c") == MemberState.ALIVE and a.state_of("b") == MemberState.ALIVE
    assert a.statistics().implausible_claims == 3


def test_a_forged_claim_within_the_bound_is_refuted_within_one_probe_period() -> None:
    link = FakeLink(3)
    link.form()
    a, b = link["a"], link["b"]
    known = a.member("b").incarnation  # type: ignore[union-attr]
    forge(a, Alive(known + INCARNATION_JUMP, "b", ATTACKER, b"evil"))
    assert a.member("b").addr == ATTACKER  # type: ignore[union-attr]
    link.advance(LINK_PROBE := link.config.probe_interval_s)
    assert LINK_PROBE == 1.0
    seen = a.member("b")
    assert seen is not None and seen.addr == b.addr and seen.meta == b"meta-b"
    assert b.incarnation == known + INCARNATION_JUMP + 1 < 2**64


def test_a_forged_leave_is_refuted_and_the_member_comes_back() -> None:
    link = FakeLink(3)
    link.form()
    a, c = link["a"], link["c"]
    forge(a, Dead(c.incarnation + INCARNATION_JUMP, "c", "c"))
    assert a.state_of("c") == MemberState.LEFT
    link.advance(5.0)
    assert a.state_of("c") == MemberState.ALIVE
    assert c.incarnation == INCARNATION_JUMP + 1


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["alive", "suspect", "dead"]),
                          st.sampled_from(["a", "b", "c"]),
                          st.integers(0, 2**64 - 1)), min_size=1, max_size=12))
def test_any_forgery_sequence_leaves_every_incarnation_refutable(
        forgeries: list[tuple[str, str, int]]) -> None:
    link = FakeLink(3, seed=3)
    link.form()
    a = link["a"]
    for kind, name, incarnation in forgeries:
        message: Alive | Dead | Suspect
        if kind == "alive":
            message = Alive(incarnation, name, ATTACKER, b"evil")
        elif kind == "suspect":
            message = Suspect(incarnation, name, "x")
        else:
            message = Dead(incarnation, name, name)
        forge(a, message)
        link.flush()
    link.advance(30.0)
    for swim in link.swims:
        assert swim.incarnation < 2**63
        for other in link.swims:
            seen = swim.member(other.name)
            assert seen is not None and seen.state == MemberState.ALIVE
            assert seen.addr == other.addr
