"""Wire format: round trips, the append-only enum, and fuzzing (any bytes -> WireError or ok)."""

from __future__ import annotations

import contextlib
import random

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gossip.config import SwimConfig
from gossip.errors import WireError
from gossip.swim import Swim
from gossip.wire import (
    MAX_META_BYTES,
    Ack,
    Alive,
    ChunkType,
    Dead,
    IndirectPing,
    MemberRecord,
    MemberState,
    Message,
    MessageType,
    Nack,
    Ping,
    Suspect,
    UnknownMessage,
    UserMessage,
    decode_chunk,
    decode_packet,
    encode_member_record,
    encode_members_chunk,
    encode_message,
    encode_packet,
    encode_user_state_chunk,
)

SAMPLES: list[Message] = [
    Ping(1, "node-a"), IndirectPing(2**64 - 1, "b", ("10.0.0.2", 7946), True), Ack(3), Nack(4),
    Suspect(5, "c", "d"), Alive(6, "e", ("fd00::5", 7946), b"\x00" * 512), Dead(7, "f", "f"),
    UserMessage(b"payload"),
]


def test_every_message_round_trips_in_one_compound_packet() -> None:
    packet = encode_packet([encode_message(m) for m in SAMPLES])
    assert packet[0] == 1
    assert decode_packet(packet) == SAMPLES


def test_message_types_are_append_only() -> None:
    # Changing a shipped number breaks mixed-version clusters: this table must only grow.
    assert {t.name: t.value for t in MessageType} == {
        "PING": 0, "INDIRECT_PING": 1, "ACK": 2, "NACK": 3, "SUSPECT": 4, "ALIVE": 5,
        "DEAD": 6, "USER": 7}
    assert {t.name: t.value for t in ChunkType} == {"MEMBERS": 0, "USER_STATE": 1}


def test_unknown_types_are_skipped_not_fatal() -> None:
    future = msgpack.packb([99, "whatever", 1])
    packet = encode_packet([future, encode_message(Ack(1))])
    assert decode_packet(packet) == [UnknownMessage(99), Ack(1)]


def test_chunks_round_trip() -> None:
    records = [MemberRecord(f"n{i}", ("10.0.0.1", 7946 + i), b"m", i, MemberState(i % 4))
               for i in range(40)]
    assert decode_chunk(encode_members_chunk([encode_member_record(r) for r in records])) \
        == records
    assert decode_chunk(encode_user_state_chunk(b"\x01\x02")) == b"\x01\x02"
    assert decode_chunk(b"\x01" + msgpack.packb([7, 1])) is None


@pytest.mark.parametrize("bad", [
    b"", b"\x01", b"\x00\x91\x92\x02\x01",                       # short, wrong version
    b"\x01\x90",                                                  # empty compound
    b"\x01" + msgpack.packb([[0, -1, "a"]]),                      # negative seq
    b"\x01" + msgpack.packb([[0, 1, ""]]),                        # empty name
    b"\x01" + msgpack.packb([[5, 1, "a", "not-an-ip", 1, b""]]),  # bad host
    b"\x01" + msgpack.packb([[5, 1, "a", "10.0.0.1", 70000, b""]]),  # bad port
    b"\x01" + msgpack.packb([[5, 1, "a", "10.0.0.1", 1, b"x" * (MAX_META_BYTES + 1)]]),
    b"\x01" + msgpack.packb([[1, 1, "a", "10.0.0.1", 1, 1]]),     # nack flag not a bool
    b"\x01" + msgpack.packb([[2, True]]),                         # bool is not a seq
    b"\x01" + msgpack.packb([[-3]]),                               # negative type
    b"\x01" + msgpack.packb({"a": 1}),                            # not an array
    b"\x01\x91\x92\x02\x01\x00",                                  # trailing byte
])
def test_malformed_packets_raise_wire_error(bad: bytes) -> None:
    with pytest.raises(WireError):
        decode_packet(bad)


def _valid_packets() -> st.SearchStrategy[bytes]:
    names = st.text(min_size=1, max_size=12)
    seqs = st.integers(0, 2**64 - 1)
    addrs = st.tuples(st.sampled_from(["10.0.0.1", "fd00::1", "127.0.0.1"]),
                      st.integers(1, 65535))
    message = st.one_of(
        st.builds(Ping, seqs, names), st.builds(Ack, seqs), st.builds(Nack, seqs),
        st.builds(IndirectPing, seqs, names, addrs, st.booleans()),
        st.builds(Suspect, seqs, names, names), st.builds(Dead, seqs, names, names),
        st.builds(Alive, seqs, names, addrs, st.binary(max_size=40)),
        st.builds(UserMessage, st.binary(max_size=40)))
    return st.lists(message, min_size=1, max_size=6).map(
        lambda ms: encode_packet([encode_message(m) for m in ms]))


def _mutations(data: bytes, seed: int, count: int) -> list[bytes]:
    """`count` mutants of `data`: byte flips, insertions, deletions, truncations, splices."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        buf = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            op = rng.randrange(5)
            pos = rng.randrange(len(buf)) if buf else 0
            if op == 0 and buf:
                buf[pos] = rng.randrange(256)
            elif op == 1:
                buf.insert(pos, rng.choice((0x00, 0x7F, 0x80, 0x90, 0xC0, 0xC1, 0xC4, 0xCF,
                                            0xD9, 0xDC, 0xDD, 0xFF, rng.randrange(256))))
            elif op == 2 and len(buf) > 1:
                del buf[pos]
            elif op == 3:
                buf = buf[: pos + 1]
            else:
                buf[pos:pos] = buf[rng.randrange(len(buf) + 1):][:8]
        out.append(bytes(buf))
    return out


def _decode_or_wire_error(data: bytes) -> None:
    with contextlib.suppress(WireError):
        decode_packet(data)
    with contextlib.suppress(WireError):
        decode_chunk(data)


# Case counts (CI, derandomized): random bytes 12,000 examples x 4 framings = 48,000 inputs;
# mutated valid packets 3,000 examples x 20 mutants = 60,000; the whole core 1,500 examples
# x 10 inputs = 15,000 through receive_datagram and merge_push_pull_chunk: 123,000 in all.
def _fuzz(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                    suppress_health_check=list(HealthCheck))


@_fuzz(12_000)
@given(st.binary(max_size=200))
def test_fuzz_random_bytes(data: bytes) -> None:
    for framing in (b"", b"\x01", b"\x01\x91", b"\x01\x92\x00"):
        _decode_or_wire_error(framing + data)


@_fuzz(3_000)
@given(_valid_packets(), st.integers(0, 2**32))
def test_fuzz_mutated_valid_packets(packet: bytes, seed: int) -> None:
    decode_packet(packet)
    for mutant in _mutations(packet, seed, 20):
        _decode_or_wire_error(mutant)


@_fuzz(1_500)
@given(st.one_of(_valid_packets(), st.binary(max_size=120)), st.integers(0, 2**32))
def test_fuzz_the_core_never_raises(packet: bytes, seed: int) -> None:
    swim = Swim(SwimConfig.lan(), "me", ("10.0.0.1", 7946), meta=b"", rng=random.Random(seed),
                now=0.0)
    for mutant in [packet, *_mutations(packet, seed, 9)]:
        swim.receive_datagram(mutant, ("10.0.0.2", 7946), 1.0)
        swim.merge_push_pull_chunk(mutant, ("10.0.0.2", 7946), False, 1.0)
        swim.handle_timeout(2.0)
        swim.datagrams_to_send()
