"""The gossip encryption keyring: AES-GCM, one primary key seals, every installed key opens.

Owns: the set of installed keys, which one is primary, and the sealed packet format

    version (1 byte, = KEYRING_VERSION) | nonce (12 random bytes) | ciphertext + GCM tag (16)

so a sealed packet is `ENCRYPTION_OVERHEAD` (29) bytes longer than its plaintext, as in
memberlist. The version byte is authenticated as associated data.

Rules: keys are 16, 24 or 32 bytes (AES-128/192/256). `open` raises only `WireError`, whatever
the bytes (plain, truncated, forged, sealed with a key we do not hold). Mistakes by a person
(bad key length, removing the primary, using a key not installed) raise `KeyringError`, name the
key by a short fingerprint (never the key itself) and change nothing. Rotation across a running
cluster: `install` the new key everywhere, `use` it everywhere, `remove` the old one.

Pure apart from `os.urandom` for nonces: no trio, socket, time or threads.
May import: the standard library, cryptography, gossip.errors, gossip.wire.
"""

from __future__ import annotations

import hashlib
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gossip.errors import GossipError, WireError
from gossip.wire import ENCRYPTION_OVERHEAD

__all__ = ["KEYRING_VERSION", "KEY_SIZES", "Keyring", "KeyringError", "fingerprint"]

#: The first byte of every sealed packet.
KEYRING_VERSION = 1
#: Accepted key lengths, bytes.
KEY_SIZES = (16, 24, 32)
_NONCE_SIZE = 12
_TAG_SIZE = 16
_HEADER = bytes((KEYRING_VERSION,))

assert 1 + _NONCE_SIZE + _TAG_SIZE == ENCRYPTION_OVERHEAD


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

    def __init__(self, keys: list[bytes], primary: bytes) -> None:
        checked = [_checked(k) for k in keys]
        primary = _checked(primary)
        self._ciphers: dict[bytes, AESGCM] = {}
        for key in [primary, *checked]:
            if key not in self._ciphers:
                self._ciphers[key] = AESGCM(key)
        self._primary = primary
        self._primary_cipher = self._ciphers[primary]

    # -- packets ---------------------------------------------------------------------------

    def seal(self, plaintext: bytes) -> bytes:
        """Encrypt and authenticate with the primary key."""
        nonce = os.urandom(_NONCE_SIZE)
        return _HEADER + nonce + self._primary_cipher.encrypt(nonce, plaintext, _HEADER)

    def open(self, data: bytes) -> bytes:
        """Decrypt with whichever installed key sealed `data`; WireError for anything else."""
        if len(data) < ENCRYPTION_OVERHEAD:
            raise WireError(f"sealed packet: {len(data)} bytes, shorter than the "
                            f"{ENCRYPTION_OVERHEAD}-byte envelope")
        if data[0] != KEYRING_VERSION:
            raise WireError(f"sealed packet: unknown keyring version {data[0]}")
        nonce = data[1:1 + _NONCE_SIZE]
        body = data[1 + _NONCE_SIZE:]
        try:
            return self._primary_cipher.decrypt(nonce, body, _HEADER)
        except InvalidTag:
            pass
        for cipher in self._ciphers.values():
            if cipher is self._primary_cipher:
                continue
            try:
                return cipher.decrypt(nonce, body, _HEADER)
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
