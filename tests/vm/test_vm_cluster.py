"""The VM tier, three machines: README's Vagrant walk-through on node1..node3 (etcd on node1,
the agent as the systemd unit everywhere, provision.sh), an agent restart that loses no packet,
ipvlan across hosts, and a halted node marked failed.

Skipped unless asked for (`pytest -m vm`); about 23 minutes under TCG on two busy cores.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from agent.lab import vm
from agent.lab import vm_cluster as cluster
from tests.vm.test_vm_single import provisioned_lab

pytestmark = [pytest.mark.vm, pytest.mark.kernel, pytest.mark.timeout(5400)]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[vm.VmLab]:
    with provisioned_lab(tmp_path_factory, "vms", "x22c", 3) as machines:
        cluster.converge(machines, machines.names())
        yield machines


def test_walkthrough_and_a_restart_that_loses_no_packet(lab: vm.VmLab) -> None:
    cluster.vxmesh(lab, "node1", "network create blue --subnet 10.10.0.0/16")
    web = cluster.create_endpoint(lab, "node2", "web", "blue")
    cluster.create_endpoint(lab, "node3", "cli", "blue")
    db = cluster.create_endpoint(lab, "node1", "db", "blue")
    assert cluster.ping(lab, "node3", "cli", web, count=3).received > 0
    streams = [("node2", "web", db), ("node3", "cli", db)]
    counts = cluster.pings_during(lab, streams, lambda: cluster.restart_agent(lab, "node1"))
    assert [c.lost for c in counts] == [0, 0], counts


def test_ipvlan_l2_endpoints_reach_each_other_across_hosts(lab: vm.VmLab) -> None:
    cluster.ipvlan_networks(lab, "node1")
    matrix = cluster.ipvlan_matrix(lab, ["node2", "node3"])
    assert all(matrix.values()), matrix


def test_halted_node_is_marked_failed(lab: vm.VmLab) -> None:
    lab.power_off("node2")
    cluster.marked_failed(lab, "node1", "node2")
    assert cluster.member_states(lab, "node3")["node1"] == "alive"
