"""End to end: network policy across two real lab hosts (namespaces, etcd, agent processes).

Endpoints: `db` (app=db) and `other` (app=other) on h0, `web` (app=web) on h1. Policy `db-in`
lets only app=web reach app=db (ingress, enforced on h0); policy `web-out` lets app=web send
only to app=db (egress, enforced on h1). Traffic stays inside the lab's namespaces.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.api.client import CliError
from agent.api.errors import EXIT_CONFLICT, EXIT_NOT_FOUND, EXIT_OK
from agent.cli.main import main
from agent.lab.hosts import Lab, LabHost, LabState
from underlay.netns_exec import ip_netns_exec
from underlay.policy_table import FAMILY, TABLE

pytestmark = [pytest.mark.kernel, pytest.mark.etcd, pytest.mark.slow]

NETWORK = "pol"
SUBNET = "10.207.0.0/16"
COVERAGE_TARGET = 1.0  # seconds from an endpoint's creation to its address in the policy set


@pytest.fixture(scope="module")
def lab() -> Iterator[tuple[Lab, LabState]]:
    if shutil.which("etcd") is None:
        pytest.skip("needs the etcd server binary (Debian package etcd-server)")
    # Not under pytest's basetemp: a concurrent pytest run prunes old ones (and our sockets).
    directory = Path(tempfile.mkdtemp(prefix="vxmesh-policy-lab-"))
    the_lab = Lab(directory, prefix=f"p21{os.getpid() % 1000}")
    try:
        state = the_lab.up(2)
        the_lab.client(state.hosts[0]).request("POST", "/v1/networks",
                                               {"name": NETWORK, "subnet": SUBNET})
        yield the_lab, state
    finally:
        the_lab.down()
        shutil.rmtree(directory, ignore_errors=True)


def _endpoint(lab: Lab, host: LabHost, name: str, app: str) -> dict[str, Any]:
    assert _cli(host, "endpoint", "create", name, "--network", NETWORK, "--label",
                f"app={app}") == EXIT_OK
    record: dict[str, Any] = lab.client(host).request("GET", f"/v1/endpoints/{name}")
    return record


def _cli(host: LabHost, *args: str) -> int:
    return main([*args, "--socket", str(host.socket), "--json"])


def _pings(src: dict[str, Any], dst_ip: str) -> bool:
    """One echo from `src`'s namespace to `dst_ip` is answered within 1 s."""
    return subprocess.run(ip_netns_exec(src["netns"], ["ping", "-n", "-c", "1", "-W", "1",
                                                       dst_ip]),
                          capture_output=True, timeout=10).returncode == 0


def _policy_table(host: LabHost) -> str:
    return subprocess.run(ip_netns_exec(host.netns, ["nft", "-j", "list", "table", FAMILY,
                                                     TABLE]),
                          capture_output=True, text=True, timeout=10).stdout


def _dropped(lab: Lab, host: LabHost, policy: str) -> float:
    return lab.scrape(host).get(f'vxmesh_policy_dropped_packets_total{{policy="{policy}"}}', 0)


def test_policy_allows_denies_returns_and_follows_endpoints(lab: tuple[Lab, LabState]) -> None:
    the_lab, state = lab
    h0, h1 = state.hosts
    db = _endpoint(the_lab, h0, "db", "db")
    other = _endpoint(the_lab, h0, "other", "other")
    web = _endpoint(the_lab, h1, "web", "web")
    for src, dst in ((web, db), (other, db), (web, other)):  # no policy: everything flows
        the_lab.wait_for(lambda s=src, d=dst: _pings(s, d["ip"]),
                         f"{src['name']} to reach {dst['name']}", 15)

    # a policy naming a network that does not exist is refused, naming it
    with pytest.raises(CliError, match="network 'nowhere' does not exist") as refused:
        the_lab.client(h1).request("POST", "/v1/policies", {
            "name": "lost", "network": "nowhere", "select": "app=db", "allow": ["app=web"]})
    assert refused.value.exit_code == EXIT_NOT_FOUND

    client = the_lab.client(h1)
    assert _cli(h1, "policy", "create", "db-in", "--network", NETWORK, "--select", "app=db",
                "--allow-from", "app=web") == EXIT_OK
    assert _cli(h1, "policy", "create", "web-out", "--network", NETWORK, "--select",
                "app=web", "--allow-from", "app=db", "--egress") == EXIT_OK
    assert _cli(h1, "policy", "create", "db-in", "--network", NETWORK, "--select", "app=x",
                "--allow-from", "app=y") == EXIT_CONFLICT
    # both hosts list the policies within a poll: other -> db (same host, ingress) stops
    the_lab.wait_for(lambda: not _pings(other, db["ip"]), "other -> db to be denied", 10)
    the_lab.wait_for(lambda: not _pings(web, other["ip"]), "web -> other to be denied", 10)
    assert _pings(web, db["ip"]), "web -> db (allowed by both policies) is dropped"
    assert _pings(db, other["ip"]), "db -> other: the reply to db must return"
    assert _dropped(the_lab, h0, "db-in") >= 1
    assert _dropped(the_lab, h1, "web-out") >= 1
    listed = {p["name"]: p for p in client.request("GET", "/v1/policies")}
    assert listed["db-in"]["select"] == ["app", "db"]
    assert listed["web-out"]["direction"] == "egress"
    assert _cli(h0, "policy", "list") == EXIT_OK

    # a new app=db endpoint on h1 is in h1's selected set within the target
    started = time.monotonic()
    db2 = _endpoint(the_lab, h1, "db2", "db")
    created = time.monotonic()
    covered = the_lab.wait_for(lambda: db2["ip"] in _selected(h1), "db2 to be covered", 5,
                               interval=0.02)
    assert covered <= COVERAGE_TARGET, f"covered {covered:.2f} s after creation " \
                                       f"({created - started:.2f} s to create)"
    assert not _pings(other, db2["ip"]), "other (h0) -> db2 (h1) must be denied on h1"
    assert _pings(web, db2["ip"])

    # a removed policy stops dropping
    assert _cli(h0, "policy", "delete", "db-in") == EXIT_OK
    assert _cli(h0, "policy", "delete", "db-in") == EXIT_NOT_FOUND
    the_lab.wait_for(lambda: _pings(other, db["ip"]), "other -> db once db-in is gone", 10)
    client.request("DELETE", "/v1/policies/web-out")
    the_lab.wait_for(lambda: _pings(web, other["ip"]), "web -> other once web-out is gone", 10)
    the_lab.wait_for(lambda: TABLE not in _policy_table(h0), "h0's table to be removed", 10)
    for host in (h0, h1):
        assert the_lab.agent_runs(host), the_lab.log_tail(host, 40)
        assert host.socket.exists(), (host.socket, the_lab.log_tail(host, 40))


def _selected(host: LabHost) -> set[str]:
    """Every address in the host's policy sets of this host's own endpoints ("l_" sets)."""
    text = _policy_table(host)
    if not text:
        return set()
    found: set[str] = set()
    for item in json.loads(text)["nftables"]:
        chosen = item.get("set")
        if chosen and chosen["name"].startswith("l_"):
            found.update(e for e in chosen.get("elem", []) if isinstance(e, str))
    return found


def test_policy_label_syntax_is_checked(lab: tuple[Lab, LabState]) -> None:
    the_lab, state = lab
    with pytest.raises(CliError, match=re.escape("labels[0]")):
        the_lab.client(state.hosts[0]).request(
            "POST", "/v1/endpoints", {"name": "bad", "network": NETWORK,
                                      "labels": {"app": "a b"}})
    with pytest.raises(CliError, match="policy allow\\[0\\]='nonsense'"):
        the_lab.client(state.hosts[0]).request(
            "POST", "/v1/policies", {"name": "x", "network": NETWORK, "select": "app=db",
                                     "allow": ["nonsense"]})
