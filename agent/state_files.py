"""The agent's state directory: atomic JSON files (local endpoints, the gossip keyring, the
node's Ed25519 identity key).

Owns: writing a file so that readers (and a restarted agent) see the old or the new content,
never a torn one (temp file in the same directory, fsync, rename, fsync of the directory), and
turning a full disk or a read-only directory into one clear `StateWriteError` that names the
file, with nothing changed. Secret files (keyring, identity key) are written 0600 and refused
at load when group- or world-accessible or not owned by us; their content never appears in an
error message.

May import: agent.errors, the standard library.
"""

from __future__ import annotations

import base64
import binascii
import errno
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import AgentError

KEY_LENGTHS = (16, 24, 32)


class StateWriteError(AgentError):
    """A state file could not be written (disk full, read-only, permissions); nothing changed."""


class StateReadError(AgentError):
    """A state file exists but cannot be read or parsed; the message names it."""


def write_atomically(path: Path, text: str, mode: int = 0o644) -> None:
    """Write `text` to `path` so readers see the old or the new file, never a part of one."""
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
        tmp = None
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError as exc:
        reason = "the disk is full" if exc.errno == errno.ENOSPC else exc.strerror
        raise StateWriteError(f"cannot write {path}: {reason}; the previous content is "
                              "unchanged") from exc
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def write_json(path: Path, value: Any, mode: int = 0o600) -> None:
    write_atomically(path, json.dumps(value, indent=2, sort_keys=True) + "\n", mode)


def read_json(path: Path, default: Any = None) -> Any:
    """The parsed file, or `default` when it does not exist; `StateReadError` when corrupt."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return default
    except (OSError, ValueError) as exc:
        raise StateReadError(f"cannot read {path}: {exc}") from None


@dataclass(frozen=True)
class KeyringFile:
    """The gossip keys on disk: `{"primary": b64, "keys": [b64, ...]}`; primary encrypts."""

    primary: bytes
    keys: tuple[bytes, ...]

    def to_json(self) -> dict[str, Any]:
        return {"primary": _b64(self.primary), "keys": [_b64(k) for k in self.keys]}


def _b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def decode_key(text: Any, where: str) -> bytes:
    """A base64 AES key (16, 24 or 32 bytes); `StateReadError` naming `where` otherwise."""
    try:
        key = base64.b64decode(text, validate=True) if isinstance(text, str) else b""
    except (binascii.Error, ValueError):
        key = b""
    if len(key) not in KEY_LENGTHS:
        # never echo the text: a near-valid key is still key material
        raise StateReadError(f"{where}: not a base64 AES key of 16, 24 or 32 bytes")
    return key


def check_secret_file(path: Path) -> None:
    """`StateReadError` unless `path` (if it exists) is ours and private (no group/world bits)."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StateReadError(f"cannot read {path}: {exc.strerror}") from None
    if info.st_mode & 0o077:
        raise StateReadError(f"{path}: mode {info.st_mode & 0o777:04o} lets others read it; "
                             f"refusing to use it (chmod 600 {path})")
    if info.st_uid != os.geteuid():
        raise StateReadError(f"{path}: owned by uid {info.st_uid}, not by us "
                             f"(uid {os.geteuid()}); refusing to use it")


IDENTITY_KEY_BYTES = 32


def load_identity_key(path: Path) -> bytes:
    """The node's Ed25519 private key (32 bytes); created (0600) on first use."""
    check_secret_file(path)
    raw = read_json(path)
    if raw is None:
        key = os.urandom(IDENTITY_KEY_BYTES)
        write_json(path, {"ed25519": _b64(key)}, 0o600)
        return key
    text = raw.get("ed25519") if isinstance(raw, dict) else None
    try:
        key = base64.b64decode(text, validate=True) if isinstance(text, str) else b""
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != IDENTITY_KEY_BYTES:
        raise StateReadError(f"{path}: expected {{\"ed25519\": base64 of "
                             f"{IDENTITY_KEY_BYTES} bytes}}")
    return key


def load_keyring(path: Path) -> KeyringFile | None:
    """The keyring at `path`, None if there is no file; `StateReadError` if it is malformed,
    or readable by anyone but us."""
    check_secret_file(path)
    raw = read_json(path)
    if raw is None:
        return None
    if not isinstance(raw, dict) or not isinstance(raw.get("keys"), list):
        raise StateReadError(f"{path}: expected {{\"primary\": ..., \"keys\": [...]}}")
    keys = tuple(decode_key(k, f"{path} keys") for k in raw["keys"])
    primary = decode_key(raw.get("primary"), f"{path} primary")
    if primary not in keys:
        keys = (primary, *keys)
    return KeyringFile(primary, keys)


def save_keyring(path: Path, keyring: KeyringFile) -> None:
    write_json(path, keyring.to_json(), 0o600)
