"""End to end: network policy across two real lab hosts (namespaces, etcd, agent processes).

Endpoints: `db` (app=db) and `other` (app=other) on h0, `web` (app=web) on h1. Policy `db-in`
lets only app=web reach app=db (ingress, enforced on h0); policy `web-out` lets app=web send
only to app=db (egress, enforced on h1). The second test counts and logs drops per policy with
endpoints of its own (app=a, app=b on h0, app=c on h1). Traffic stays inside the lab's
namespaces.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shutil
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.api.client import CliError
from agent.api.errors import EXIT_CONFLICT, EXIT_NOT_FOUND, EXIT_OK
from agent.cli.main import main
from agent.lab.hosts import Lab, LabHost, LabState
from tests.e2e.two_host_lab import two_host_lab
from underlay.netns_exec import ip_netns_exec
from underlay.policy_table import FAMILY, LOG_GROUP, LOG_PREFIX, TABLE

pytestmark = [pytest.mark.kernel, pytest.mark.etcd, pytest.mark.slow]

NETWORK = "pol"
SUBNET = "10.207.0.0/16"


@pytest.fixture(scope="module")
def lab() -> Iterator[tuple[Lab, LabState]]:
    if shutil.which("etcd") is None:
        pytest.skip("needs the etcd server binary (Debian package etcd-server)")
    with two_host_lab("vxmesh-policy-lab-", f"p21{os.getpid() % 1000}", NETWORK,
                      SUBNET) as lab_and_state:
        yield lab_and_state


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
    # both hosts' policy watches see them: other -> db (same host, ingress) stops
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

    # a new app=db endpoint on h1 is put in h1's selected set (how fast: bench/policy.py)
    db2 = _endpoint(the_lab, h1, "db2", "db")
    the_lab.wait_for(lambda: db2["ip"] in _selected(h1), "db2 to be covered", 10,
                     interval=0.02)
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


def test_drops_are_counted_per_policy_and_a_logged_policy_logs_them(
        lab: tuple[Lab, LabState], tmp_path: Path) -> None:
    the_lab, state = lab
    h0, h1 = state.hosts
    a = _endpoint(the_lab, h0, "a", "a")
    b = _endpoint(the_lab, h0, "b", "b")
    c = _endpoint(the_lab, h1, "c", "c")
    the_lab.wait_for(lambda: _pings(c, a["ip"]), "c to reach a", 15)
    # two policies select a (each allows something else: their union is what a accepts)
    assert _cli(h0, "policy", "create", "a-in", "--network", NETWORK, "--select", "app=a",
                "--allow-from", "app=b") == EXIT_OK
    assert _cli(h0, "policy", "create", "a-also", "--network", NETWORK, "--select", "app=a",
                "--allow-from", "10.99.0.0/16") == EXIT_OK
    assert _cli(h0, "policy", "create", "c-in", "--network", NETWORK, "--select", "app=c",
                "--allow-from", "app=nobody", "--log") == EXIT_OK
    the_lab.wait_for(lambda: not _pings(a, c["ip"]), "a -> c to be denied", 10)
    the_lab.wait_for(lambda: not _pings(c, a["ip"]), "c -> a to be denied", 10)
    assert _pings(b, a["ip"]), "b -> a (allowed by a-in) is dropped"

    pcap = tmp_path / "nflog.pcap"
    with _nflog_capture(h1, pcap):
        for _ in range(3):
            _pings(a, c["ip"])  # each echo denied on h1 by c-in: counted and logged
    logged = _nflog_records(pcap)
    assert (f"{LOG_PREFIX}c-in ", a["ip"], c["ip"]) in logged, logged
    assert all(prefix == f"{LOG_PREFIX}c-in " for prefix, _, _ in logged)  # only logged ones

    # c -> a: denied at a, which both a-in and a-also select: each counts it; c-in never sees
    # it. a -> c: only c-in, on h1.
    the_lab.wait_for(lambda: _dropped(the_lab, h1, "c-in") >= 3 + 1, "c-in's count", 10)
    the_lab.wait_for(lambda: min(_dropped(the_lab, h0, "a-in"), _dropped(the_lab, h0, "a-also"))
                     >= 1, "a-in's and a-also's counts", 10)
    assert _dropped(the_lab, h0, "c-in") == 0 and _dropped(the_lab, h1, "a-in") == 0
    listed = {p["name"]: p for p in the_lab.client(h1).request("GET", "/v1/policies")}
    assert listed["c-in"]["log"] and not listed["a-in"]["log"]
    assert listed["c-in"]["dropped"] >= 4 and listed["a-in"]["dropped"] == 0  # h1's own counts
    status = the_lab.client(h0).request("GET", "/v1/status")
    assert status["policy"]["drops"]["a-also"] >= 1
    for name in ("a-in", "a-also", "c-in"):
        assert _cli(h0, "policy", "delete", name) == EXIT_OK


@contextlib.contextmanager
def _nflog_capture(host: LabHost, pcap: Path) -> Iterator[None]:
    """tcpdump on the host's nflog group of policy logging, written to `pcap`."""
    errors = pcap.with_suffix(".err")
    with errors.open("w") as err:
        proc = subprocess.Popen(ip_netns_exec(host.netns, [
            "tcpdump", "-i", f"nflog:{LOG_GROUP}", "-U", "-n", "-w", str(pcap)]),
            stdout=subprocess.DEVNULL, stderr=err)
    try:
        Lab.wait_for(lambda: "listening on" in errors.read_text() or proc.poll() is not None,
                     "tcpdump to listen", 10)
        assert proc.poll() is None, errors.read_text()
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _nflog_records(pcap: Path) -> list[tuple[str, str, str]]:
    """(prefix, IPv4 source, destination) of every NFLOG record in a pcap file."""
    data = pcap.read_bytes()
    records: list[tuple[str, str, str]] = []
    offset = 24  # the file header; then per record a 16-byte header and the NFLOG message
    while offset + 16 <= len(data):
        (length,) = struct.unpack_from("<I", data, offset + 8)
        message = data[offset + 20:offset + 16 + length]  # past the 4-byte NFLOG header
        offset += 16 + length
        prefix, payload, at = "", b"", 0
        while at + 4 <= len(message):
            size, kind = struct.unpack_from("<HH", message, at)
            if size < 4:
                break
            value = message[at + 4:at + size]
            if kind == 10:  # NFULA_PREFIX, NUL-terminated
                prefix = value.rstrip(b"\0").decode()
            elif kind == 9:  # NFULA_PAYLOAD: the IP packet
                payload = value
            at += (size + 3) & ~3
        if len(payload) >= 20:
            records.append((prefix, str(ipaddress.ip_address(payload[12:16])),
                            str(ipaddress.ip_address(payload[16:20]))))
    return records
