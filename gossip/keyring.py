"""The gossip encryption keyring: AES-GCM, one primary key seals, every installed key opens.

Owns: the set of installed keys, which one is primary, the sealed packet format

    version (1 byte, = KEYRING_VERSION) | sent at (8 bytes, ms since the epoch, big endian)
    | nonce (12 random bytes) | ciphertext + GCM tag (16)

so a sealed packet is `ENCRYPTION_OVERHEAD` (37) bytes longer than its plaintext, and the
replay window. The associated data authenticated with every packet is the version byte, the
channel (`UDP` or `TCP`: a datagram never opens as a stream frame or the other way round) and
the send time.

Replay window: a packet whose send time is more than `REPLAY_WINDOW_S` (30 s) away from our
wall clock is refused, and on the UDP channel each nonce opens once: nonces seen within the
window are remembered (at most `REPLAY_MEMORY` of them; only authentic packets are
remembered, so nobody without a key can fill it). A captured sealed packet replayed from any
source is refused. Hosts' clocks must agree within the window (NTP).

Rules: keys are 16, 24 or 32 bytes (AES-128/192/256). `open` raises only `WireError`, whatever
the bytes (plain, truncated, forged, replayed, sealed with a key we do not hold). Mistakes by a
person (bad key length, removing the primary, using a key not installed) raise `KeyringError`,
name the key by a short fingerprint (never the key itself) and change nothing. Rotation across a
running cluster: `install` the new key everywhere, `use` it everywhere, `remove` the old one.

Pure apart from `os.urandom` for nonces; the wall clock is injected (`clock`, the agent passes
`time.time`; without one, packets are stamped 0 and no window is checked, but each UDP nonce
still opens once). No trio, socket, threads or clock of its own.
May import: the standard library, cryptography, gossip.errors, gossip.wire.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections import OrderedDict
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gossip.errors import GossipError, WireError
from gossip.wire import ENCRYPTION_OVERHEAD

__all__ = ["KEYRING_VERSION", "KEY_SIZES", "REPLAY_WINDOW_S", "TCP", "UDP", "Keyring",
           "KeyringError", "fingerprint"]

#: The first byte of every sealed packet (2: send time and channel authenticated).
KEYRING_VERSION = 2
#: Accepted key lengths, bytes.
KEY_SIZES = (16, 24, 32)
#: s. How far a packet's send time may be from our clock, either way.
REPLAY_WINDOW_S = 30.0
#: UDP nonces remembered for the replay check (oldest forgotten first).
REPLAY_MEMORY = 1 << 17
#: Channels: part of the associated data, never on the wire.
UDP = b"U"
TCP = b"T"
_NONCE_SIZE = 12
_TAG_SIZE = 16
_SENT_AT = struct.Struct("!Q")
_PREFIX = 1 + _SENT_AT.size

assert _PREFIX + _NONCE_SIZE + _TAG_SIZE == ENCRYPTION_OVERHEAD


class KeyringError(GossipError):
    """A keyring operation was refused; the message names the key by its fingerprint."""


def fingerprint(key: bytes) -> str:
    """A short, non-secret name for a key: the first 8 hex digits of its SHA-256."""
    return hashlib.sha256(key).hexdigest()[:8]


def _checked(key: object) -> bytes:
    if not isinstance(key, bytes | bytearray):
        raise KeyringError(f"key: expected bytes, got {type(key).__name__}")
    if len(key) not in KEY_SIZES:
        raise KeyringError(f"key {fingerprint(bytes(key))}: expected 16, 24 or 32 bytes, "
                           f"got {len(key)}")
    return bytes(key)


class Keyring:
    """Installed AES-GCM keys; the primary one seals, all of them open (primary tried first)."""

    def __init__(self, keys: list[bytes], primary: bytes, *,
                 clock: Callable[[], float] | None = None) -> None:
        """`clock`: wall-clock seconds since the epoch, for the replay window (None: none)."""
        checked = [_checked(k) for k in keys]
        primary = _checked(primary)
        self._ciphers: dict[bytes, AESGCM] = {}
        for key in [primary, *checked]:
            if key not in self._ciphers:
                self._ciphers[key] = AESGCM(key)
        self._primary = primary
        self._primary_cipher = self._ciphers[primary]
        self._clock = clock
        self._seen: OrderedDict[bytes, float] = OrderedDict()
        #: Authentic packets refused as replays or outside the window.
        self.replays = 0

    # -- packets ---------------------------------------------------------------------------

    def seal(self, plaintext: bytes, channel: bytes = UDP) -> bytes:
        """Encrypt and authenticate with the primary key, stamped with our clock."""
        nonce = os.urandom(_NONCE_SIZE)
        sent_at = 0 if self._clock is None else int(self._clock() * 1000)
        prefix = bytes((KEYRING_VERSION,)) + _SENT_AT.pack(sent_at)
        return prefix + nonce + self._primary_cipher.encrypt(nonce, plaintext, prefix + channel)

    def open(self, data: bytes, channel: bytes = UDP) -> bytes:
        """Decrypt with whichever installed key sealed `data`; WireError for anything else,
        a replay or a packet outside the window included."""
        if len(data) < ENCRYPTION_OVERHEAD:
            raise WireError(f"sealed packet: {len(data)} bytes, shorter than the "
                            f"{ENCRYPTION_OVERHEAD}-byte envelope")
        if data[0] != KEYRING_VERSION:
            raise WireError(f"sealed packet: unknown keyring version {data[0]}")
        prefix = bytes(data[:_PREFIX])
        nonce = bytes(data[_PREFIX:_PREFIX + _NONCE_SIZE])
        body = data[_PREFIX + _NONCE_SIZE:]
        plaintext = self._decrypt(nonce, body, prefix + channel)
        sent_at = _SENT_AT.unpack_from(prefix, 1)[0] / 1000.0
        now = sent_at if self._clock is None else self._clock()
        if abs(now - sent_at) > REPLAY_WINDOW_S:
            self.replays += 1
            raise WireError("sealed packet: sent outside the replay window")
        if channel == UDP:
            seen = self._seen
            if nonce in seen:
                self.replays += 1
                raise WireError("sealed packet: replayed")
            seen[nonce] = sent_at
            while seen:
                oldest, at = next(iter(seen.items()))
                if len(seen) <= REPLAY_MEMORY and (self._clock is None
                                                   or at >= now - 2 * REPLAY_WINDOW_S):
                    break
                del seen[oldest]
        return plaintext

    def _decrypt(self, nonce: bytes, body: bytes, aad: bytes) -> bytes:
        try:
            return self._primary_cipher.decrypt(nonce, body, aad)
        except InvalidTag:
            pass
        for cipher in self._ciphers.values():
            if cipher is self._primary_cipher:
                continue
            try:
                return cipher.decrypt(nonce, body, aad)
            except InvalidTag:
                continue
        raise WireError("sealed packet: no installed key authenticates it")

    # -- rotation ----------------------------------------------------------------------------

    @property
    def primary(self) -> bytes:
        return self._primary

    def keys(self) -> list[bytes]:
        """Installed keys, primary first."""
        return [self._primary, *(k for k in self._ciphers if k != self._primary)]

    def install(self, key: bytes) -> None:
        """Accept packets sealed with `key` too (installing an installed key does nothing)."""
        key = _checked(key)
        if key not in self._ciphers:
            self._ciphers[key] = AESGCM(key)

    def use(self, key: bytes) -> None:
        """Seal with `key` from now on; it must be installed already."""
        key = _checked(key)
        cipher = self._ciphers.get(key)
        if cipher is None:
            raise KeyringError(f"key {fingerprint(key)}: not installed; install it before "
                               f"using it as the primary key")
        self._primary = key
        self._primary_cipher = cipher

    def remove(self, key: bytes) -> None:
        """Stop accepting `key`; refused for the primary key and for a key not installed."""
        key = _checked(key)
        if key == self._primary:
            raise KeyringError(f"key {fingerprint(key)}: is the primary key; use another key "
                               f"before removing it")
        if key not in self._ciphers:
            raise KeyringError(f"key {fingerprint(key)}: not installed")
        del self._ciphers[key]

    def __repr__(self) -> str:
        names = ", ".join(fingerprint(k) for k in self.keys())
        return f"Keyring(primary={fingerprint(self._primary)}, keys=[{names}])"
