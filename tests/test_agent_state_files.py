"""agent.state_files: atomic writes; a full disk gives a clear error and keeps the old content."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import pytest

from agent.local_endpoints import EndpointRecord, LocalState
from agent.state_files import (
    KeyringFile,
    StateReadError,
    StateWriteError,
    load_keyring,
    save_keyring,
    write_json,
)


def _record(name: str) -> EndpointRecord:
    return EndpointRecord(name=name, network="blue", mode="overlay", ip="10.1.0.2",
                          mac="02:42:0a:01:00:02", netns=f"vx-h1-{name}", host_ifname="vxh1",
                          created_at=1.0, prefixlen=24)


@pytest.mark.kernel
def test_full_disk_is_a_clear_error_and_the_old_file_survives(tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)], check=True)
    try:
        state = LocalState(small)
        state.put(_record("web"))
        before = state.endpoints_path.read_text()
        with open(small / "filler", "wb", buffering=0) as filler, \
                contextlib.suppress(OSError):
            filler.write(b"\0" * (1 << 20))  # fills the disk
        with pytest.raises(StateWriteError, match="disk is full"):
            state.put(_record("db"))
        assert state.endpoints_path.read_text() == before
        assert set(state.endpoints) == {"web"}
        assert sorted(p.name for p in small.iterdir()) == ["endpoints.json", "filler"]
        assert set(LocalState.load(small).endpoints) == {"web"}
    finally:
        subprocess.run(["umount", str(small)], check=False)


def test_state_round_trips_and_damaged_files_are_named(tmp_path: Path) -> None:
    state = LocalState(tmp_path)
    state.put(_record("web"))
    state.save_networks({"blue": {"name": "blue", "vni": 4096}})
    loaded = LocalState.load(tmp_path)
    assert loaded.endpoints == {"web": _record("web")}
    assert loaded.networks == {"blue": {"name": "blue", "vni": 4096}}
    assert os.stat(state.endpoints_path).st_mode & 0o777 == 0o600
    state.endpoints_path.write_text("[{\"name\": ")
    with pytest.raises(StateReadError, match=r"endpoints\.json"):
        LocalState.load(tmp_path)


def test_keyring_file(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    assert load_keyring(path) is None
    keyring = KeyringFile(b"k" * 32, (b"k" * 32, b"o" * 16))
    save_keyring(path, keyring)
    assert load_keyring(path) == keyring
    write_json(path, {"primary": "bm90IGEga2V5", "keys": []})
    with pytest.raises(StateReadError, match="primary"):
        load_keyring(path)
