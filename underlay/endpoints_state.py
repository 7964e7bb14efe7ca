"""Endpoint records on disk: one JSON file per endpoint, written atomically.

Owns: the state directory layout (`<state_dir>/endpoints/<name>.json`) and an exclusive lock
(`<state_dir>/endpoints/.lock`) so two agents never manage the same endpoints.

Rules: a write goes to a temporary file in the same directory, is fsynced, renamed over the
old file and the directory fsynced, so a crash leaves the old or the new record, never a torn
one. A file that does not parse is renamed `<name>.json.bad` and reported, never deleted.
May import: the standard library, underlay.endpoints_model.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

from underlay.endpoints_model import (
    EndpointError,
    EndpointRecord,
    record_from_json,
    record_to_json,
)


class RecordStore:
    """The persisted endpoint records of one agent."""

    def __init__(self, state_dir: Path) -> None:
        self.directory = Path(state_dir) / "endpoints"
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise EndpointError(
                f"state_dir={str(state_dir)!r}: another agent holds {self.directory}/.lock"
            ) from None

    def _path(self, name: str) -> Path:
        return self.directory / f"{name}.json"

    def save(self, record: EndpointRecord) -> None:
        """Write `record` atomically (durable when this returns)."""
        path = self._path(record.name)
        tmp = path.with_suffix(".json.tmp")
        data = json.dumps(record_to_json(record), sort_keys=True, indent=1).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        self._sync_directory()

    def remove(self, name: str) -> None:
        """Forget endpoint `name`; already gone is success."""
        try:
            os.unlink(self._path(name))
        except FileNotFoundError:
            return
        self._sync_directory()

    def load(self) -> tuple[list[EndpointRecord], list[str]]:
        """Every record, and the names of files set aside as unreadable."""
        records, bad = [], []
        for path in sorted(self.directory.glob("*.json")):
            try:
                records.append(record_from_json(json.loads(path.read_text())))
            except (EndpointError, ValueError, OSError):
                os.replace(path, path.with_suffix(".json.bad"))
                bad.append(path.name)
        return records, bad

    def _sync_directory(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        """Release the lock; idempotent."""
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1
