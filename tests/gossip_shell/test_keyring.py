"""Keyring: sealing format, multi-key opening, rotation refusals, and garbage never raising
anything but WireError."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gossip.errors import WireError
from gossip.keyring import KEYRING_VERSION, Keyring, KeyringError, fingerprint
from gossip.wire import ENCRYPTION_OVERHEAD

K16, K24, K32 = b"a" * 16, b"b" * 24, b"c" * 32


@pytest.mark.parametrize("key", [K16, K24, K32])
def test_round_trip_and_overhead(key: bytes) -> None:
    ring = Keyring([key], key)
    sealed = ring.seal(b"hello")
    assert len(sealed) == len(b"hello") + ENCRYPTION_OVERHEAD == len(b"hello") + 37
    assert sealed[0] == KEYRING_VERSION
    assert ring.open(sealed) == b"hello"
    assert ring.seal(b"hello") != sealed  # fresh nonce every time


def test_every_installed_key_opens_only_primary_seals() -> None:
    old, new = Keyring([K16], K16), Keyring([K32], K32)
    both = Keyring([K16, K32], K16)
    assert both.open(old.seal(b"x")) == b"x"
    assert both.open(new.seal(b"y")) == b"y"
    assert old.open(both.seal(b"z")) == b"z"
    with pytest.raises(WireError):
        new.open(both.seal(b"z"))
    assert both.keys() == [K16, K32]


def test_rotation_install_use_remove() -> None:
    ring = Keyring([K16], K16)
    ring.install(K32)
    ring.install(K32)  # idempotent
    ring.use(K32)
    assert ring.primary == K32 and ring.keys() == [K32, K16]
    sealed_old = Keyring([K16], K16).seal(b"late packet")
    assert ring.open(sealed_old) == b"late packet"
    ring.remove(K16)
    assert ring.keys() == [K32]
    with pytest.raises(WireError):
        ring.open(sealed_old)


def test_refusals_name_fingerprint_never_the_key_and_change_nothing() -> None:
    ring = Keyring([K16, K24], K16)
    with pytest.raises(KeyringError) as removing_primary:
        ring.remove(K16)
    message = str(removing_primary.value)
    assert fingerprint(K16) in message and "primary" in message
    assert K16.decode() not in message and K16.hex() not in message
    with pytest.raises(KeyringError, match=fingerprint(K32)):
        ring.use(K32)
    with pytest.raises(KeyringError, match="not installed"):
        ring.remove(K32)
    with pytest.raises(KeyringError, match="16, 24 or 32 bytes, got 7"):
        ring.install(b"x" * 7)
    with pytest.raises(KeyringError, match="expected bytes"):
        ring.install("a" * 16)  # type: ignore[arg-type]
    assert ring.keys() == [K16, K24] and ring.primary == K16
    with pytest.raises(KeyringError):
        Keyring([K16], b"short")
    assert "aaaa" not in repr(ring)


@pytest.mark.parametrize("data", [b"", b"\x01", b"\x01" + b"\0" * 27,
                                  b"plain msgpack packet here!!!!!",
                                  bytes([KEYRING_VERSION + 1]) + b"\0" * 40])
def test_plain_truncated_and_wrong_version_raise_wire_error(data: bytes) -> None:
    with pytest.raises(WireError):
        Keyring([K16], K16).open(data)


def test_every_single_bit_flip_is_rejected() -> None:
    ring = Keyring([K16], K16)
    sealed = ring.seal(b"payload that matters")
    for i in range(len(sealed)):
        for bit in (0, 7):
            forged = bytearray(sealed)
            forged[i] ^= 1 << bit
            with pytest.raises(WireError):
                ring.open(bytes(forged))
    with pytest.raises(WireError):
        ring.open(sealed[:-1])


RING = Keyring([K16, K32], K32)


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_wire_error(data: bytes) -> None:
    try:
        RING.open(data)
    except WireError:
        pass
    else:  # pragma: no cover - a 2^-128 event
        pytest.fail("random bytes authenticated")


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=200), st.data())
def test_mutated_sealed_packets_raise_only_wire_error(plaintext: bytes,
                                                      data: st.DataObject) -> None:
    sealed = bytearray(RING.seal(plaintext))
    # one xor per position, so two edits never cancel out
    edits = data.draw(st.dictionaries(st.integers(0, len(sealed) - 1), st.integers(1, 255),
                                      min_size=1, max_size=4))
    for index, xor in edits.items():
        sealed[index] ^= xor
    cut = data.draw(st.integers(0, len(sealed)))
    with pytest.raises(WireError):
        RING.open(bytes(sealed[:cut]) if cut < len(sealed) else bytes(sealed))


def test_random_keys_interoperate() -> None:
    key = os.urandom(32)
    assert Keyring([key], key).open(Keyring([key], key).seal(b"ok")) == b"ok"


def test_a_replayed_or_stale_packet_is_refused_and_channels_do_not_mix() -> None:
    from gossip.keyring import REPLAY_WINDOW_S, TCP

    clock = [1_700_000_000.0]
    ring = Keyring([K16], K16, clock=lambda: clock[0])
    sealed = ring.seal(b"ping")
    assert ring.open(sealed) == b"ping"
    with pytest.raises(WireError, match="replayed"):
        ring.open(sealed)
    with pytest.raises(WireError):
        ring.open(ring.seal(b"frame", TCP))  # a stream frame never opens as a datagram
    frame = ring.seal(b"frame", TCP)
    assert ring.open(frame, TCP) == ring.open(frame, TCP) == b"frame"  # streams: no nonce memory
    late = ring.seal(b"late")
    clock[0] += REPLAY_WINDOW_S + 1
    with pytest.raises(WireError, match="window"):
        ring.open(late)
    assert ring.replays == 2
