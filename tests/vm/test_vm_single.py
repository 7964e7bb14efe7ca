"""The VM tier, one machine: the agent as deploy/systemd's unit under a real systemd and a full
Debian kernel (qemu, the image of deploy/vagrant/build-box.sh, provisioned by provision.sh as
Vagrant would, etcd on the same machine).

Skipped unless asked for (`pytest -m vm`): booting and provisioning under TCG take minutes.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator

import pytest

from agent.lab import vm
from agent.lab import vm_cluster as cluster

pytestmark = [pytest.mark.vm, pytest.mark.kernel, pytest.mark.timeout(3600)]

NODE = "node1"


def missing_tool() -> str | None:
    for tool in ("qemu-system-x86_64", "qemu-img", "mmdebstrap", "ssh"):
        if shutil.which(tool) is None:
            return tool
    try:
        vm.insecure_key()
    except vm.VmError:
        return "vagrant (its insecure key)"
    return None


@contextlib.contextmanager
def provisioned_lab(tmp_path_factory: pytest.TempPathFactory, folder: str, prefix: str,
                    nodes: int) -> Iterator[vm.VmLab]:
    """`nodes` VMs booted from the cached image and provisioned (skips without the tools);
    stopped and removed when the block ends."""
    missing = missing_tool()
    if missing is not None:
        pytest.skip(f"needs {missing} (deploy/setup.sh --vm)")
    image = vm.build_image()
    directory = tmp_path_factory.mktemp(folder)
    with vm.VmLab(directory, prefix, image, cluster.node_specs(nodes),
                  accel=vm.choose_accel(image, directory)) as machines:
        cluster.bring_up(machines, vm.wheelhouse(directory))
        yield machines


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[vm.VmLab]:
    with provisioned_lab(tmp_path_factory, "vm", "x22v", 1) as machines:
        yield machines


def test_systemctl_start_returns_once_ready_and_status_answers_over_ssh(lab: vm.VmLab) -> None:
    lab.ssh(NODE, f"sudo systemctl restart {cluster.UNIT}")
    # Type=notify: `systemctl restart` blocked until READY=1, sent after the first kernel
    # sync together with STATUS=, which systemd shows as StatusText.
    shown = cluster.unit(lab, NODE, "Type", "ActiveState", "SubState", "StatusText")
    assert shown["Type"] == "notify"
    assert (shown["ActiveState"], shown["SubState"]) == ("active", "running")
    assert shown["StatusText"].endswith("local endpoints"), shown
    status = cluster.vxmesh(lab, NODE, "status")
    assert status["node"] == NODE and status["ready"] and status["in_sync"], status
    # The VM's kernel has the wireguard module: the agent uses it, not wireguard-go.
    assert status["wireguard"]["backend"] == "kernel", status["wireguard"]


def test_watchdog_restarts_a_hung_agent(lab: vm.VmLab) -> None:
    took = cluster.watchdog_restart(lab, NODE)
    limits = cluster.unit(lab, NODE, "WatchdogUSec", "RestartUSec", "TimeoutAbortUSec")
    print(f"watchdog: new agent {took.new_process_s:.1f} s after SIGSTOP, ready "
          f"{took.ready_s:.1f} s after (WatchdogSec {limits['WatchdogUSec']}, TimeoutAbortSec "
          f"{limits['TimeoutAbortUSec']}, RestartSec {limits['RestartUSec']})")
    assert cluster.vxmesh(lab, NODE, "status")["ready"]


def test_systemctl_reload_rereads_the_keyring(lab: vm.VmLab) -> None:
    pid = cluster.unit(lab, NODE, "MainPID")["MainPID"]
    before = cluster.vxmesh(lab, NODE, "keys list")["keys"]
    keyring = json.loads(lab.ssh(NODE, "sudo cat /var/lib/vxmesh/keyring.json").stdout)
    keyring["keys"].append(lab.ssh(NODE, "vxmesh keys generate").stdout.strip())
    lab.ssh(NODE, "sudo tee /var/lib/vxmesh/keyring.json >/dev/null",
            stdin=json.dumps(keyring).encode())
    lab.ssh(NODE, f"sudo systemctl reload {cluster.UNIT}")
    cluster.wait_until("a second key in `vxmesh keys list` after reload",
                       lambda: len(cluster.vxmesh(lab, NODE, "keys list")["keys"])
                       == len(before) + 1, 120)
    assert cluster.unit(lab, NODE, "MainPID")["MainPID"] == pid


def test_hardened_unit_makes_ipvlan_l2_and_l3_endpoints(lab: vm.VmLab) -> None:
    print(cluster.security_exposure(lab, NODE))
    cluster.ipvlan_networks(lab, NODE)
    matrix = cluster.ipvlan_matrix(lab, [NODE])
    assert matrix == {"l2 same host": True, "l2 to segment gateway": True,
                      "l3 same host": True}, matrix
