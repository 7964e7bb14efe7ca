"""agent.state_files: atomic writes; a full disk gives a clear error and keeps the old content."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import pytest

from agent.state_files import (
    KeyringFile,
    StateReadError,
    StateWriteError,
    load_keyring,
    save_keyring,
    write_json,
)
from agent.store.network_cache import NetworkCache


@pytest.mark.kernel
def test_full_disk_is_a_clear_error_and_the_old_file_survives(tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)], check=True)
    try:
        cache = NetworkCache(small)
        cache.save({"blue": {"name": "blue", "vni": 4096}})
        before = cache.path.read_text()
        with open(small / "filler", "wb", buffering=0) as filler, \
                contextlib.suppress(OSError):
            filler.write(b"\0" * (1 << 20))  # fills the disk
        with pytest.raises(StateWriteError, match="disk is full"):
            cache.save({"blue": {"name": "blue", "vni": 4096}, "red": {"pad": "x" * 4096}})
        assert cache.path.read_text() == before
        assert set(cache.networks) == {"blue"}
        assert sorted(p.name for p in small.iterdir()) == ["filler", "networks.json"]
        assert set(NetworkCache.load(small).networks) == {"blue"}
    finally:
        subprocess.run(["umount", str(small)], check=False)


def test_network_cache_round_trips_and_a_damaged_file_is_named(tmp_path: Path) -> None:
    cache = NetworkCache(tmp_path)
    cache.save({"blue": {"name": "blue", "vni": 4096}})
    assert NetworkCache.load(tmp_path).networks == {"blue": {"name": "blue", "vni": 4096}}
    assert os.stat(cache.path).st_mode & 0o777 == 0o600
    cache.path.write_text("{\"blue\": ")
    with pytest.raises(StateReadError, match=r"networks\.json"):
        NetworkCache.load(tmp_path)


def test_keyring_file(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    assert load_keyring(path) is None
    keyring = KeyringFile(b"k" * 32, (b"k" * 32, b"o" * 16))
    save_keyring(path, keyring)
    assert load_keyring(path) == keyring
    write_json(path, {"primary": "bm90IGEga2V5", "keys": []})
    with pytest.raises(StateReadError, match="primary"):
        load_keyring(path)


def test_secret_files_readable_by_others_are_refused_and_keys_never_echoed(
        tmp_path: Path) -> None:
    from agent.state_files import decode_key, load_identity_key

    path = tmp_path / "keyring.json"
    save_keyring(path, KeyringFile(b"k" * 32, (b"k" * 32,)))
    os.chmod(path, 0o640)
    with pytest.raises(StateReadError, match="0640"):
        load_keyring(path)
    near_valid = "a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5"  # 27 bytes of base64
    with pytest.raises(StateReadError) as refused:
        decode_key(near_valid, "key")
    assert near_valid not in str(refused.value)
    identity = tmp_path / "identity.json"
    first = load_identity_key(identity)
    assert len(first) == 32 and os.stat(identity).st_mode & 0o777 == 0o600
    assert load_identity_key(identity) == first
    os.chmod(identity, 0o644)
    with pytest.raises(StateReadError, match=r"identity\.json"):
        load_identity_key(identity)
