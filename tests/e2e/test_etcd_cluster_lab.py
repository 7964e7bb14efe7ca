"""End to end on `vxmesh lab up --etcd-members 3 --etcd-tls`: three hosts, three etcd members
each in its own namespace, mutual TLS. The leader dies while every host creates endpoints; a
member is partitioned; a network value is damaged by hand; an endpoint record is damaged and
its agent restarted. Nothing is lost or handed out twice, no traffic is cut.

One lab for the module (about 10 s to build); the tests run in order and leave it whole.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.lab.certs import LabCA
from agent.lab.hosts import Lab, LabHost, LabState
from underlay.netns_exec import ip_netns_exec, nsenter_net

pytestmark = [pytest.mark.kernel, pytest.mark.etcd, pytest.mark.slow]

NETWORK = "ha"
SUBNET = "10.203.0.0/16"
PER_HOST = 6
CALL_BOUND = 15.0  # seconds one endpoint create may take while etcd elects a new leader


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, LabState]]:
    if shutil.which("etcd") is None or shutil.which("etcdctl") is None:
        pytest.skip("needs etcd-server and etcd-client")
    the_lab = Lab(tmp_path_factory.mktemp("halab"), prefix=f"c{os.getpid() % 10000}")
    try:
        state = the_lab.up(3, etcd_members=3, etcd_tls=True)
        the_lab.client(state.hosts[0]).request("POST", "/v1/networks",
                                               {"name": NETWORK, "subnet": SUBNET})
        yield the_lab, state
    finally:
        the_lab.down()


def _create(lab: Lab, host: LabHost, name: str) -> dict[str, Any]:
    record: dict[str, Any] = lab.client(host, timeout=CALL_BOUND + 5).request(
        "POST", "/v1/endpoints", {"name": name, "network": NETWORK})
    return record


def _allocations(lab: Lab, state: LabState) -> dict[str, str]:
    """handle -> address, as etcd's blocks hold them (read with etcdctl)."""
    answer = lab.etcd(state).etcdctl(state.switch, "get", "--prefix",
                                     f"/vxmesh/v1/blocks/{NETWORK}/", "--print-value-only")
    assert answer.returncode == 0, answer.stderr
    out: dict[str, str] = {}
    for line in answer.stdout.splitlines():
        if line.strip():
            for address, handle in json.loads(line)["allocations"].items():
                assert handle not in out, f"{handle} holds two addresses"
                out[handle] = address
    return out


def _ping(netns: str, ip: str) -> bool:
    return subprocess.run(ip_netns_exec(netns, ["ping", "-c", "1", "-W", "2", ip]),
                          capture_output=True, timeout=10, check=False).returncode == 0


def test_leader_killed_while_every_host_creates_endpoints(lab: tuple[Lab, LabState]) -> None:
    the_lab, state = lab
    leader = the_lab.etcd_leader(state)
    assert leader is not None
    created: dict[str, dict[str, Any]] = {}
    waits: list[float] = []
    errors: list[str] = []
    first_done = threading.Event()

    def host_creates(host: LabHost) -> None:
        for i in range(PER_HOST):
            start = time.monotonic()
            try:
                record = _create(the_lab, host, f"{host.name}-ep{i}")
            except Exception as exc:  # every failure is reported below, none hidden
                errors.append(f"{host.name}-ep{i}: {exc}")
                continue
            waits.append(time.monotonic() - start)
            created[record["name"]] = record
            first_done.set()

    threads = [threading.Thread(target=host_creates, args=(h,)) for h in state.hosts]
    for thread in threads:
        thread.start()
    assert first_done.wait(30)
    the_lab.kill_etcd_member(state, leader)
    for thread in threads:
        thread.join(timeout=PER_HOST * CALL_BOUND)
    assert errors == []
    assert len(created) == 3 * PER_HOST
    assert max(waits) < CALL_BOUND
    addresses = [r["ip"] for r in created.values()]
    assert len(set(addresses)) == len(addresses), "an address was handed out twice"
    stored = _allocations(the_lab, state)
    for name, record in created.items():
        host = name.split("-")[0]
        handle = next(h for h in stored if h.endswith(f"/{name}"))
        assert handle.split("/")[0].endswith(host) and stored[handle] == record["ip"]
    print(f"leader {leader} killed: {len(created)} endpoints, slowest create {max(waits):.2f} s")
    the_lab.start_etcd_member(state, leader)


def test_a_partitioned_member_is_left_and_used_again(lab: tuple[Lab, LabState]) -> None:
    the_lab, state = lab
    h1 = state.hosts[0]
    preferred = state.etcd[0]  # h1 lists e1 first
    the_lab.wait_for(lambda: the_lab.client(h1).request("GET", "/v1/status")["store_member"]
                     == the_lab.etcd(state).url(preferred), "h1 on its first member", 20)
    cut = ip_netns_exec(state.switch, ["ip", "link", "set", preferred.port, "down"])
    subprocess.run(cut, check=True, timeout=10)
    try:
        start = time.monotonic()
        _create(the_lab, h1, "during-partition")
        took = time.monotonic() - start
        status = the_lab.client(h1).request("GET", "/v1/status")
        assert status["store_member"] != the_lab.etcd(state).url(preferred)
        assert took < CALL_BOUND
        print(f"member {preferred.name} partitioned: create took {took:.2f} s")
    finally:
        subprocess.run(ip_netns_exec(state.switch, ["ip", "link", "set", preferred.port, "up"]),
                       check=True, timeout=10)
    the_lab.wait_for(lambda: the_lab.client(h1).request("GET", "/v1/status")["store_member"]
                     == the_lab.etcd(state).url(preferred), "h1 back on its first member", 30)


def test_a_damaged_network_value_cuts_no_traffic(lab: tuple[Lab, LabState]) -> None:
    the_lab, state = lab
    h1, h2 = state.hosts[:2]
    a = _create(the_lab, h1, "keep-a")
    b = _create(the_lab, h2, "keep-b")
    the_lab.wait_for(lambda: _ping(a["netns"], b["ip"]), "a to reach b", 20)
    key = f"/vxmesh/v1/networks/{NETWORK}"
    etcd = the_lab.etcd(state)
    good = etcd.etcdctl(state.switch, "get", key, "--print-value-only").stdout.strip()
    damaged = json.dumps(dict(json.loads(good), mode="overlya", mtu=600))
    assert etcd.etcdctl(state.switch, "put", key, damaged).returncode == 0
    try:
        the_lab.wait_for(lambda: all(the_lab.scrape(h).get("vxmesh_store_rejected_values") == 1
                                     for h in state.hosts), "every agent to reject it", 20)
        for _ in range(5):
            assert _ping(a["netns"], b["ip"])
        assert all(the_lab.client(h).request("GET", "/v1/status")["in_sync"]
                   for h in state.hosts)
    finally:
        assert etcd.etcdctl(state.switch, "put", key, good).returncode == 0
    the_lab.wait_for(lambda: all(the_lab.scrape(h).get("vxmesh_store_rejected_values") == 0
                                 for h in state.hosts), "the rejection to clear", 20)


def test_a_damaged_endpoint_record_survives_an_agent_restart(
        lab: tuple[Lab, LabState]) -> None:
    the_lab, state = lab
    h1, h2 = state.hosts[:2]
    a = the_lab.client(h1).request("GET", "/v1/endpoints/keep-a")
    b = the_lab.client(h2).request("GET", "/v1/endpoints/keep-b")
    (record,) = Path(h2.state_dir).rglob("keep-b.json")
    record.write_text('{"spec": {"name": "keep-b", "mo')  # torn by hand
    the_lab.stop_agent(state, h2)
    the_lab.start_agent(state, h2)
    the_lab.wait_agent_ready(h2, 30)
    assert the_lab.client(h2).request("GET", "/v1/endpoints/keep-b")["ip"] == b["ip"]
    the_lab.wait_for(lambda: _ping(a["netns"], b["ip"]), "a to reach b after the restart", 20)
    assert _allocations(the_lab, state)[f"{h2.node}/keep-b"] == b["ip"]


@pytest.mark.parametrize("case", ["wrong CA", "missing key file"])
def test_a_tls_mistake_stops_an_agent_with_one_line(lab: tuple[Lab, LabState], case: str,
                                                     tmp_path: Path) -> None:
    """A second agent on h3 (own state, socket and ports) with a bad [store]: exit 2 and one
    line naming the key, before it touches anything."""
    _, state = lab
    h3 = state.hosts[2]
    config = tomllib.loads(h3.config_path.read_text())
    config["node"]["state_dir"] = str(tmp_path / "state")
    config["api"]["socket"] = str(tmp_path / "agent.sock")
    config["gossip"]["port"] = 7999
    config["metrics"]["port"] = 9499
    if case == "wrong CA":
        config["store"]["ca_file"] = str(LabCA(tmp_path / "other").cert_path)
        key = "store.ca_file"
    else:
        config["store"]["key_file"] = str(tmp_path / "absent-key.pem")
        key = "store.key_file"
    path = tmp_path / "agent.toml"
    # TOML's strings, numbers, booleans and arrays of them read like JSON's.
    path.write_text("".join(f"[{section}]\n" + "".join(f"{k} = {json.dumps(v)}\n"
                                                     for k, v in body.items())
                            for section, body in config.items()))
    answer = subprocess.run(
        nsenter_net(h3.netns, [sys.executable, "-m", "agent.cli.main",
                               "agent", "--config", str(path)]),
        capture_output=True, text=True, timeout=60,
        check=False)
    assert answer.returncode == 2, answer.stderr[-2000:]
    last = answer.stderr.strip().splitlines()[-1]  # the config check or the access check
    assert f"{key}: " in last, answer.stderr[-2000:]
