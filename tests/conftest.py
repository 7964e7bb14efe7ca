"""Shared fixtures: root/kernel gating and throw-away network namespaces."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from tests.netns import NetnsLab


def _kernel_skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if shutil.which("ip") is None:
        return "needs iproute2 (ip) for test set-up"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = _kernel_skip_reason()
    if reason is None:
        return
    for item in items:
        if "kernel" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def netns_lab(request: pytest.FixtureRequest) -> Iterator[NetnsLab]:
    """Namespaces with a test-unique prefix, deleted after the test whatever its outcome."""
    lab = NetnsLab(request.node.name.replace("test_", "")[:3])
    try:
        yield lab
    finally:
        lab.close()
