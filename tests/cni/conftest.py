"""One lab for the CNI tests that need a real agent: two hosts, etcd, Podman on each.

Building it is the expensive part (about ten seconds), so the package shares it; every test
leaves it as it found it (no attachment of its own left, agents running, etcd up).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.cni.invoke import plugin_dir
from agent.lab.hosts import Lab, LabHost, LabState

NETWORK = "blue"
SUBNET = "10.213.0.0/16"


@dataclass
class CniLab:
    lab: Lab
    state: LabState
    bin_dir: Path

    @property
    def h1(self) -> LabHost:
        return self.state.hosts[0]

    @property
    def h2(self) -> LabHost:
        return self.state.hosts[1]


@pytest.fixture(scope="package")
def cni_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CniLab]:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    for binary in ("etcd", "podman"):
        if shutil.which(binary) is None:
            pytest.skip(f"needs {binary} (deploy/setup.sh installs it)")
    directory = tmp_path_factory.mktemp("cnilab")
    lab = Lab(directory / "lab", prefix=f"c{os.getpid() % 100000}")
    try:
        state = lab.up(2, podman=True)
        lab.client(state.hosts[0]).request("POST", "/v1/networks",
                                           {"name": NETWORK, "subnet": SUBNET})
        yield CniLab(lab, state, plugin_dir(directory))
    finally:
        lab.down()
