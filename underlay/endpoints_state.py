"""Endpoint records on disk: one JSON file per endpoint, written atomically.

Owns: the state directory layout (`<state_dir>/endpoints/<name>.json`), the overlay egress
set last applied to the kernel (`overlay-egress.state`, so a restarted agent renders the same
isolation rules from its first nftables transaction on) and an exclusive lock
(`<state_dir>/endpoints/.lock`) so two agents never manage the same endpoints.

Rules: a write goes to a temporary file in the same directory (written whole, short writes
continued), is fsynced, renamed over the old file and the directory fsynced, so a crash leaves
the old or the new record, never a torn one; a failed write (ENOSPC) removes its temporary
file and raises `RecordWriteError`, leaving the previous record. Each record is written twice,
`<name>.json` then its copy `<name>.json.copy`: a record that does not parse (damaged by hand
or by the disk) is restored from its copy. When neither parses, the file is renamed
`<name>.json.bad` and its name reported as unreadable, never deleted: the caller must then
leave that endpoint's kernel objects alone (they may carry a running workload).
Durability: the fsyncs are for records that must outlive a reboot (an endpoint in a
namespace we own is re-made from its record). A record of an endpoint in a caller's sandbox
(a CNI runtime's namespace, a veth handed to Docker) cannot outlive one, its sandbox does not,
and a crash of the agent alone keeps the page cache: it is written `durable=False`, atomically
but without fsync (each costs milliseconds on a disk, on every container start and stop).
May import: the standard library, underlay.endpoints_model, underlay.errors.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path
from typing import Any

from underlay.endpoints_model import (
    EndpointError,
    EndpointRecord,
    record_from_json,
    record_to_json,
)
from underlay.errors import RecordWriteError

COPY_SUFFIX = ".json.copy"
#: The overlay networks' egress and isolation as last applied (not `*.json`: not a record).
OVERLAYS_FILE = "overlay-egress.state"


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

    def save(self, record: EndpointRecord, *, durable: bool = True) -> None:
        """Write `record` and its copy atomically (on disk when this returns, if `durable`)."""
        data = json.dumps(record_to_json(record), sort_keys=True, indent=1).encode()
        path = self._path(record.name)
        self._write(path, data, durable=durable)
        self._write(path.with_name(path.name[: -len(".json")] + COPY_SUFFIX), data,
                    durable=durable)

    def _write(self, path: Path, data: bytes, *, durable: bool = True) -> None:
        tmp = path.with_name(path.name + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
            if durable:
                self._sync_directory()
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise RecordWriteError(f"cannot write endpoint record {path}: {exc.strerror}") \
                from None

    def remove(self, name: str, *, durable: bool = True) -> None:
        """Forget endpoint `name` (record and copy); already gone is success."""
        removed = False
        for path in (self._path(name), self._copy_path(name)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
                removed = True
        if removed and durable:
            self._sync_directory()

    def _copy_path(self, name: str) -> Path:
        return self.directory / f"{name}{COPY_SUFFIX}"

    def load(self) -> tuple[list[EndpointRecord], list[str], list[str]]:
        """Every record; the names restored from their copy; the names set aside as unreadable
        (their files renamed `.bad`)."""
        records, restored, bad = [], [], []
        for path in sorted(self.directory.glob("*.json")):
            name = path.name[: -len(".json")]
            record = _parse(path)
            if record is None or record.name != name:
                copy = _parse(self._copy_path(name))
                if copy is None or copy.name != name:
                    os.replace(path, path.with_suffix(".json.bad"))
                    bad.append(name)
                    continue
                self._write(path, self._copy_path(name).read_bytes())
                restored.append(name)
                record = copy
            records.append(record)
        for copy_path in self.directory.glob(f"*{COPY_SUFFIX}"):
            if not self._path(copy_path.name[: -len(COPY_SUFFIX)]).exists():
                copy_path.unlink()  # a removal interrupted between the two unlinks
        return records, restored, bad

    def save_overlays(self, overlays: list[dict[str, Any]]) -> None:
        """Write the overlay egress set just applied (atomically, durably)."""
        self._write(self.directory / OVERLAYS_FILE, json.dumps(overlays, indent=1).encode())

    def load_overlays(self) -> list[dict[str, Any]]:
        """The overlay egress set last applied ([] if none was, or the file is unreadable:
        the agent re-applies the set it computes once it knows its networks)."""
        try:
            data = json.loads((self.directory / OVERLAYS_FILE).read_text())
        except (OSError, ValueError):
            return []
        return [d for d in data if isinstance(d, dict)] if isinstance(data, list) else []

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


def _parse(path: Path) -> EndpointRecord | None:
    try:
        return record_from_json(json.loads(path.read_text()))
    except (EndpointError, ValueError, OSError, TypeError, AttributeError):
        return None
