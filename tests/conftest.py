"""Shared fixtures: root/kernel gating, throw-away network namespaces, a local etcd."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.lab.etcd_local import ETCD_BINARY, LocalEtcd
from agent.lab.namespaces import NetnsLab


def _kernel_skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if shutil.which("ip") is None:
        return "needs iproute2 (ip) for test set-up"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The VM tier (qemu, minutes) runs only when asked for: `pytest -m vm`.
    vm_asked = "vm" in (config.getoption("markexpr", "") or "")
    reason = _kernel_skip_reason()
    for item in items:
        if "vm" in item.keywords and not vm_asked:
            item.add_marker(pytest.mark.skip(reason="VM tier: run with `pytest -m vm`"))
        elif reason is not None and "kernel" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def netns_lab(request: pytest.FixtureRequest) -> Iterator[NetnsLab]:
    """Namespaces with a test-unique prefix, deleted after the test whatever its outcome."""
    lab = NetnsLab(request.node.name.replace("test_", "")[:3])
    try:
        yield lab
    finally:
        lab.close()


@pytest.fixture
def local_etcd(tmp_path: Path) -> Iterator[LocalEtcd]:
    """A real etcd server on free loopback ports in a temporary data directory (stopped after)."""
    if not os.path.exists(ETCD_BINARY):
        pytest.skip(f"needs the etcd server binary {ETCD_BINARY} (Debian: etcd-server)")
    server = LocalEtcd(tmp_path / "etcd-data")
    server.start()
    try:
        yield server
    finally:
        server.stop()
