"""underlay.policy_table's rules in a real kernel: namespaces of this test's own (a client and
a server on a bridge in a middle namespace with bridge netfilter on, as on an agent's host).

An ingress policy selecting the server (app=db) and allowing app=web: the client (app=other)
is denied and counted; the server's own new flows to the client (no policy selects the client)
pass; once the server's label changes (an element-only transaction: the union set of selected
endpoints loses it too) the client gets through.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from underlay.netns_exec import ip_netns_exec
from underlay.nft import apply_script, list_counters
from underlay.policy_table import (
    FAMILY,
    TABLE,
    PolicyEndpoint,
    PolicyRule,
    plan_policy,
    policy_transaction,
)

pytestmark = pytest.mark.kernel

SERVER, CLIENT = "10.206.0.2", "10.206.0.3"
DB_IN = PolicyRule("db-in", "n", False, ("app", "db"), (("app", "web"),))


def _in(ns: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(ip_netns_exec(ns, list(argv)), capture_output=True, text=True,
                          timeout=30, check=False)


@pytest.fixture
def triple() -> Iterator[tuple[str, str, str]]:
    tag = f"tk21{os.getpid() % 1000}"
    client, middle, server = (f"{tag}{role}" for role in "cms")
    try:
        for ns in (client, middle, server):
            subprocess.run(["ip", "netns", "add", ns], check=True, timeout=10)
        _in(middle, "ip", "link", "add", "br0", "type", "bridge")
        _in(middle, "ip", "link", "set", "br0", "up")
        _in(middle, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1")
        for ns, ip in ((client, CLIENT), (server, SERVER)):
            port = "p" + ns[-1]
            _in(middle, "ip", "link", "add", port, "type", "veth", "peer", "name", "eth0",
                "netns", ns)
            _in(middle, "ip", "link", "set", port, "master", "br0", "up")
            _in(ns, "ip", "addr", "add", f"{ip}/24", "dev", "eth0")
            _in(ns, "ip", "link", "set", "eth0", "up")
        yield client, middle, server
    finally:
        for ns in (client, middle, server):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def _reaches(source: str, address: str) -> bool:
    return _in(source, "ping", "-n", "-q", "-c", "1", "-W", "1", address).returncode == 0


def test_selected_is_enforced_unselected_passes_and_a_label_change_is_elements_only(
        triple: tuple[str, str, str]) -> None:
    client, middle, server = triple
    endpoints = [PolicyEndpoint("n", SERVER, (("app", "db"),), True),
                 PolicyEndpoint("n", CLIENT, (("app", "other"),), True)]
    plan = plan_policy([DB_IN], endpoints)
    script = policy_transaction(None, plan)
    assert script is not None
    apply_script(middle, script)
    assert _reaches(server, CLIENT)  # the client is selected by nothing: a new flow passes
    assert not _reaches(client, SERVER)  # the server is: denied, and counted
    assert list_counters(middle, FAMILY, TABLE)[plan.counters["db-in"]] >= 1
    relabelled = plan_policy([DB_IN], [PolicyEndpoint("n", SERVER, (("app", "cache"),), True),
                                       endpoints[1]])
    change = policy_transaction(plan, relabelled)
    assert change is not None and "chain" not in change
    assert "delete element inet vxmesh_policy ingress_selected_4 { 10.206.0.2 }" in change
    apply_script(middle, change)
    assert _reaches(client, SERVER)
