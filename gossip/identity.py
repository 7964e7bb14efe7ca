"""Node identity: an Ed25519 key per node, signatures on what a node claims about itself, and
the cache of other nodes' public keys.

Owns: signing and verifying (`Signer`, `verify`), the domain separation of signed bytes (each
kind of claim has its own prefix, so an alive signature never passes for a table record), and
`KeyCache`, the bounded map node name -> trusted public key.

Trust: the public keys are published in each node's etcd record, and etcd is the root of trust.
The cache only answers from what it was told (`learn`); a name it does not know is queued once
on `wanted()` for the shell to fetch from etcd, and a key a node announces in its alive message
that differs from the trusted one is queued once for a re-fetch (a node re-created with a new
key). While etcd is unreachable the keys already known keep working; a claim by a node whose
key is unknown is dropped (and counted by the caller) until the key arrives.

Pure: no clock, socket, trio or randomness besides key generation (`Signer.generate` uses the
OS's CSPRNG through `cryptography`). May import: the standard library, cryptography,
gossip.errors, gossip.wire.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable
from enum import Enum

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from gossip.errors import GossipError
from gossip.wire import PUBLIC_KEY_BYTES, SIGNATURE_BYTES

__all__ = ["PUBLIC_KEY_BYTES", "SIGNATURE_BYTES", "KeyCache", "Signer", "Verdict",
           "key_fingerprint", "verify"]

PRIVATE_KEY_BYTES = 32
#: Names the cache holds keys (and pending look-ups) for; the least recently used go first.
KEY_CACHE_SIZE = 65_536
#: Names waiting to be fetched at once; further unknown names are not queued (counted).
MAX_WANTED = 1024


class Verdict(Enum):
    """What checking a signed claim found."""

    VALID = "valid"
    UNKNOWN_KEY = "unknown_key"  # no trusted key for that node (yet)
    BAD_SIGNATURE = "bad_signature"  # missing, malformed or not made by the trusted key


def key_fingerprint(public_key: bytes) -> str:
    """A short, non-secret name for a public key (first 16 hex digits of its SHA-256)."""
    return hashlib.sha256(public_key).hexdigest()[:16]


class Signer:
    """Our own identity: signs claims with the private key."""

    def __init__(self, private_key: bytes) -> None:
        if len(private_key) != PRIVATE_KEY_BYTES:
            raise GossipError(f"identity key: expected {PRIVATE_KEY_BYTES} bytes, "
                              f"got {len(private_key)}")
        self._key = Ed25519PrivateKey.from_private_bytes(private_key)
        self.public_key = self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @classmethod
    def generate(cls) -> Signer:
        return cls(Ed25519PrivateKey.generate().private_bytes(
            Encoding.Raw, PrivateFormat.Raw, NoEncryption()))

    def private_bytes(self) -> bytes:
        """The raw private key, for the state file (mode 0600); never log it."""
        return self._key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)

    def __repr__(self) -> str:
        return f"Signer(public={key_fingerprint(self.public_key)})"


_public_keys: OrderedDict[bytes, Ed25519PublicKey] = OrderedDict()


def verify(public_key: bytes, signature: bytes, data: bytes) -> bool:
    """True if `signature` over `data` was made by `public_key`; False for any garbage."""
    if len(public_key) != PUBLIC_KEY_BYTES or len(signature) != SIGNATURE_BYTES:
        return False
    key = _public_keys.get(public_key)
    if key is None:
        try:
            key = Ed25519PublicKey.from_public_bytes(public_key)
        except ValueError:
            return False
        _public_keys[public_key] = key
        if len(_public_keys) > KEY_CACHE_SIZE:
            _public_keys.popitem(last=False)
    try:
        key.verify(signature, data)
    except InvalidSignature:
        return False
    return True


def _nothing() -> None:
    pass


class KeyCache:
    """Trusted public keys by node name, filled by the shell from etcd (see the module doc)."""

    def __init__(self, known: dict[str, bytes] | None = None) -> None:
        self._keys: OrderedDict[str, bytes] = OrderedDict(known or {})
        self._asked: OrderedDict[tuple[str, bytes], None] = OrderedDict()
        self._wanted: OrderedDict[str, None] = OrderedDict()
        #: Unknown names not queued because `MAX_WANTED` were already waiting.
        self.wanted_dropped = 0
        #: Called when a name is queued for `wanted()` (the shell wakes its fetcher, which
        #: otherwise sleeps; it must not call back into the core).
        self.on_wanted: Callable[[], None] = _nothing

    def public_key(self, name: str) -> bytes | None:
        key = self._keys.get(name)
        if key is None:
            self._want(name, b"")
        return key

    def check(self, name: str, announced: bytes, signature: bytes, data: bytes) -> Verdict:
        """Verify a claim by `name`: its signature over `data` against the trusted key.

        `announced` is the key the claim carries (alive messages do; b"" otherwise): when it
        differs from the trusted one, the trusted one is re-fetched once.
        """
        trusted = self.public_key(name)
        if trusted is None:
            return Verdict.UNKNOWN_KEY
        if announced and announced != trusted:
            self._want(name, announced)
        return Verdict.VALID if verify(trusted, signature, data) else Verdict.BAD_SIGNATURE

    def learn(self, name: str, public_key: bytes) -> None:
        """The key etcd holds for `name` (the shell calls this after a fetch)."""
        if len(public_key) != PUBLIC_KEY_BYTES:
            return
        self._keys[name] = public_key
        self._keys.move_to_end(name)
        if len(self._keys) > KEY_CACHE_SIZE:
            self._keys.popitem(last=False)

    def wanted(self) -> list[str]:
        """Names to fetch from etcd now (each asked once); drains them."""
        out = list(self._wanted)
        self._wanted.clear()
        return out

    def release(self, name: str) -> None:
        """The shell gave up fetching `name` (etcd had no key for it): the next claim by that
        name asks again."""
        self._asked.pop((name, b""), None)

    def known(self) -> dict[str, bytes]:
        return dict(self._keys)

    def _want(self, name: str, announced: bytes) -> None:
        key = (name, announced)
        if key in self._asked:
            return
        if len(self._wanted) >= MAX_WANTED:
            self.wanted_dropped += 1
            return
        self._asked[key] = None
        if len(self._asked) > KEY_CACHE_SIZE:
            self._asked.popitem(last=False)
        self._wanted[name] = None
        self.on_wanted()
