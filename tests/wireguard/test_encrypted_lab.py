"""Encrypted networks on a real two-host lab: wireguard-go (or the kernel module), real agents.

Proves: endpoints of an encrypted network ping across hosts with the network MTU at underlay
- 110; while they do, the underlay carries only WireGuard UDP on the configured port
(`[wireguard] listen_port`) and no plain VXLAN; a plain network on the same hosts keeps plain
VXLAN; `vxmesh status` names the backend; `vxmesh keys rotate-wireguard` under a probe stream
(ping every 10 ms) loses no packet and leaves the new public key in etcd and gossip and the
old key file gone; a member that leaves loses its peer; a host without WireGuard refuses an
encrypted network naming what is missing. Traffic stays inside the lab's namespaces.
The tests run in file order on one lab.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.api.client import CliError
from agent.api.errors import EXIT_USAGE
from agent.lab.hosts import Lab, LabHost, LabState
from agent.store.schema import node_key
from underlay.netns_exec import ip_netns_exec
from underlay.wireguard import public_key_of

pytestmark = [pytest.mark.kernel, pytest.mark.etcd, pytest.mark.slow]

SECRET, PLAIN = "secret", "plain"
PORT = 51900  # not the default 51820: the capture shows the configured port is the one used
PROBES = 2500  # one every 10 ms: the rotation (a few seconds) runs inside the stream


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, LabState]]:
    for tool in ("etcd", "wg", "tcpdump"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool} (deploy/setup.sh --test installs it)")
    the_lab = Lab(tmp_path_factory.mktemp("lab"), prefix=f"w20{os.getpid() % 10000}",
                  config={"wireguard": {"listen_port": PORT}})
    try:
        state = the_lab.up(2)
        yield the_lab, state
    finally:
        the_lab.down()


def _run(host: LabHost, argv: list[str], timeout: float = 20.0) -> str:
    return subprocess.run(ip_netns_exec(host.netns, argv), capture_output=True, text=True,
                          timeout=timeout, check=True).stdout


def _ping(endpoint: dict[str, Any], ip: str, count: int, interval: float = 0.1) -> bool:
    done = subprocess.run(ip_netns_exec(endpoint["netns"], [
        "ping", "-n", "-c", str(count), "-i", str(interval), "-W", "1", ip]),
        capture_output=True, text=True, timeout=count * interval + 10)
    return done.returncode == 0


def _capture(the_lab: Lab, host: LabHost, tmp: Path, endpoint: dict[str, Any], ip: str,
             vni: int) -> dict[str, Any]:
    """Packets seen on `host`'s underlay while `endpoint` pings: plain VXLAN of VNI `vni`
    ("vxlan") and WireGuard ("wireguard"), with the first few of each."""
    pcap, log = tmp / f"{host.name}-{ip}.pcap", tmp / f"{host.name}-{ip}.log"
    with log.open("w") as stderr:
        dump = subprocess.Popen(ip_netns_exec(host.netns, [
            "tcpdump", "-n", "-i", "eth0", "-Z", "root", "--immediate-mode", "-U", "-w", str(pcap),
            f"udp port 4789 or udp portrange {PORT}-{PORT + 1} or udp port 51820"]),
            stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        the_lab.wait_for(lambda: "listening on" in log.read_text(), "tcpdump to start", 10)
        assert _ping(endpoint, ip, 10)
    finally:
        dump.send_signal(signal.SIGINT)
        dump.wait(timeout=10)
    counts: dict[str, Any] = {}
    # The VNI: bytes 4-6 of the VXLAN header, which follows the 8-byte UDP header.
    filters = {"vxlan": f"udp port 4789 and (udp[12:4] & 0xffffff00) = {vni << 8}",
               "wireguard": f"udp src port {PORT} and udp dst port {PORT}",
               "other": f"not (udp src port {PORT} and udp dst port {PORT}) and not udp port 4789"}
    for kind, expression in filters.items():
        out = subprocess.run(["tcpdump", "-n", "-r", str(pcap), expression],
                             capture_output=True, text=True, timeout=20).stdout
        counts[kind] = len(out.splitlines())
        counts[f"first {kind}"] = out.splitlines()[:3]
    return counts


Endpoints = dict[tuple[str, str], dict[str, Any]]


@pytest.fixture(scope="module")
def endpoints(lab: tuple[Lab, LabState]) -> Endpoints:
    """An encrypted and a plain network, an endpoint of each on both hosts."""
    the_lab, state = lab
    c1 = the_lab.client(state.hosts[0])
    c1.request("POST", "/v1/networks", {"name": SECRET, "subnet": "10.220.0.0/24",
                                        "options": {"encrypted": "true"}})
    c1.request("POST", "/v1/networks", {"name": PLAIN, "subnet": "10.221.0.0/24"})
    eps = {}
    for host in state.hosts:
        for net in (SECRET, PLAIN):
            eps[host.name, net] = the_lab.client(host).request(
                "POST", "/v1/endpoints", {"name": f"{net}-{host.name}", "network": net})
    return eps


def test_encrypted_network_travels_only_inside_wireguard(
        lab: tuple[Lab, LabState], endpoints: Endpoints, tmp_path: Path) -> None:
    the_lab, state = lab
    h1, h2 = state.hosts
    c1 = the_lab.client(h1)
    eps = endpoints

    status = c1.request("GET", "/v1/status")["wireguard"]
    assert status["backend"] in ("kernel", "wireguard-go")
    the_lab.wait_for(lambda: _ping(eps[h1.name, SECRET], eps[h2.name, SECRET]["ip"], 1),
                     "a ping across the encrypted network", 30, interval=0.2)
    the_lab.wait_for(lambda: _ping(eps[h1.name, PLAIN], eps[h2.name, PLAIN]["ip"], 1),
                     "a ping across the plain network", 30, interval=0.2)

    # The encrypted network's devices: MTU underlay - 110; VXLAN with no local address, whose
    # source is the route to the tunnel network: the WireGuard interface, our tunnel address.
    networks = {n["name"]: n for n in c1.request("GET", "/v1/networks")}
    vxlan = json.loads(_run(h1, ["ip", "-j", "-d", "link", "show", "dev",
                                 f"vxtun{networks[SECRET]['vni']}"]))[0]
    assert vxlan["mtu"] == networks[SECRET]["mtu"] == 1500 - 110
    assert "local" not in vxlan["linkinfo"]["info_data"]
    route = json.loads(_run(h1, ["ip", "-j", "route", "show", "100.64.0.0/10"]))
    assert [(r["dev"], r["prefsrc"]) for r in route] == [(status["interface"], status["tunnel"])]
    assert status["port"] == PORT
    inner = json.loads(subprocess.run(ip_netns_exec(eps[h1.name, SECRET]["netns"], [
        "ip", "-j", "link", "show"]), capture_output=True, text=True, check=True,
        timeout=10).stdout)
    assert max(i["mtu"] for i in inner if i["ifname"] != "lo") == 1500 - 110

    secret = _capture(the_lab, h2, tmp_path, eps[h1.name, SECRET], eps[h2.name, SECRET]["ip"],
                      networks[SECRET]["vni"])
    assert secret["wireguard"] >= 20 and secret["vxlan"] == 0 and secret["other"] == 0, secret
    plain = _capture(the_lab, h2, tmp_path, eps[h1.name, PLAIN], eps[h2.name, PLAIN]["ip"],
                     networks[PLAIN]["vni"])
    assert plain["vxlan"] >= 20, plain

    # h1's public key is in its etcd node record too (and what `wg` on h2 holds as its peer).
    found = the_lab.etcd(state).etcdctl(state.switch, "get", "--print-value-only",
                                        node_key(h1.node or h1.name))
    record = json.loads(found.stdout)
    wg2 = the_lab.client(h2).request("GET", "/v1/status")["wireguard"]["interface"]
    assert record["wireguard_key"] == _run(h2, ["wg", "show", wg2, "peers"]).strip()
    metrics = the_lab.scrape(h1)
    assert metrics["vxmesh_wireguard_up"] == 1 and metrics["vxmesh_wireguard_peers"] == 1
    assert metrics[f'vxmesh_wireguard_backend{{backend="{status["backend"]}"}}'] == 1



def test_key_rotation_under_a_probe_stream_loses_nothing(
        lab: tuple[Lab, LabState], endpoints: Endpoints) -> None:
    the_lab, state = lab
    h1, h2 = state.hosts
    c1 = the_lab.client(h1)
    before = c1.request("GET", "/v1/status")["wireguard"]
    old_interface = before["interface"]
    the_lab.wait_for(lambda: _ping(endpoints[h1.name, SECRET],
                                   endpoints[h2.name, SECRET]["ip"], 1),
                     "a ping across the encrypted network", 30, interval=0.2)
    probe = subprocess.Popen(ip_netns_exec(endpoints[h1.name, SECRET]["netns"], [
        "ping", "-n", "-q", "-c", str(PROBES), "-i", "0.01", "-W", "2",
        endpoints[h2.name, SECRET]["ip"]]), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    try:
        rotated = json.loads(subprocess.run(
            [sys.executable, "-m", "agent.cli.main", "keys", "rotate-wireguard", "--json",
             "--socket", str(h1.socket)], capture_output=True, text=True, check=True,
            timeout=120).stdout)
        assert rotated["previous"] == before["public_key"] != rotated["public_key"]
        # Drained: the old interface is gone, h2 holds only the new key, all while probing.
        the_lab.wait_for(lambda: c1.request("GET", "/v1/status")["wireguard"]["rotation"]
                         is None, "the old interface drained", 60, interval=0.2)
        assert _run(h1, ["ip", "-br", "link", "show"]).count(old_interface + " ") == 0
        wg2 = the_lab.client(h2).request("GET", "/v1/status")["wireguard"]["interface"]
        the_lab.wait_for(lambda: _run(h2, ["wg", "show", wg2, "peers"]).split()
                         == [rotated["public_key"]], "h2 to hold only h1's new key", 30,
                         interval=0.2)
        assert probe.poll() is None, "the probe stream ended before the rotation did"
        out, _ = probe.communicate(timeout=PROBES * 0.01 + 60)
    finally:
        if probe.poll() is None:
            probe.kill()
            probe.wait()
    summary = [line for line in out.splitlines() if "packets transmitted" in line]
    assert summary and summary[0].startswith(f"{PROBES} packets transmitted, {PROBES} received"
                                             ), out

    metrics = the_lab.scrape(h1)
    assert metrics["vxmesh_wireguard_rotations_total"] == 1
    assert metrics["vxmesh_wireguard_rotating"] == 0
    after = c1.request("GET", "/v1/status")["wireguard"]
    assert after["public_key"] == rotated["public_key"] and after["rotations"] == 1
    assert after["port"] == PORT + 1 and after["interface"] == rotated["interface"]
    # The new public key in etcd and in gossip; the old key file gone, the new one 0600.
    found = the_lab.etcd(state).etcdctl(state.switch, "get", "--print-value-only",
                                        node_key(h1.node or h1.name))
    assert json.loads(found.stdout)["wireguard_key"] == rotated["public_key"]
    seen = {m["name"]: m for m in the_lab.client(h2).request("GET", "/v1/members")}
    assert seen[h1.node or h1.name]["wireguard"] == [rotated["public_key"]]
    files = {p.name: p for p in h1.state_dir.iterdir() if p.name.startswith("wireguard")}
    assert sorted(files) == ["wireguard.1.key"]
    assert files["wireguard.1.key"].stat().st_mode & 0o777 == 0o600
    assert public_key_of(files["wireguard.1.key"].read_text().strip()) == rotated["public_key"]
    assert _ping(endpoints[h2.name, SECRET], endpoints[h1.name, SECRET]["ip"], 3)


def test_a_member_that_leaves_loses_its_peer_and_a_host_without_wireguard_refuses(
        lab: tuple[Lab, LabState], endpoints: Endpoints, tmp_path: Path) -> None:
    the_lab, state = lab
    h1, h2 = state.hosts
    # A member that leaves loses its peer on the others.
    wg1 = the_lab.client(h1).request("GET", "/v1/status")["wireguard"]["interface"]
    assert len(_run(h1, ["wg", "show", wg1, "peers"]).split()) == 1
    the_lab.client(h2).request("POST", "/v1/leave", {})
    the_lab.wait_for(lambda: not _run(h1, ["wg", "show", wg1, "peers"]).split(),
                     "h2's peer removed from h1", 30, interval=0.2)

    # h2 again, on a PATH without wg and wireguard-go (and no kernel module here): it says
    # so, and refuses an encrypted network naming what is missing.
    assert the_lab.wait_agent_exit(state, h2, 15) == 0
    bare = tmp_path / "bin"
    bare.mkdir()
    for directory in ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin",
                      "/bin"):
        for tool in Path(directory).iterdir() if Path(directory).is_dir() else ():
            target = bare / tool.name
            if tool.name not in ("wg", "wireguard-go") and not target.exists():
                target.symlink_to(tool)
    the_lab.start_agent(state, h2, extra_env={"PATH": str(bare)})
    the_lab.wait_agent_ready(h2, 30)
    without = the_lab.client(h2).request("GET", "/v1/status")["wireguard"]
    assert without["backend"] is None and "wireguard-tools" in without["missing"]
    with pytest.raises(CliError, match=r"options\.encrypted.*wireguard-tools") as refused:
        the_lab.client(h2).request("POST", "/v1/networks", {
            "name": "secret2", "subnet": "10.222.0.0/24", "options": {"encrypted": "true"}})
    assert refused.value.exit_code == EXIT_USAGE
    assert "secret2" not in {n["name"] for n in the_lab.client(h2).request("GET", "/v1/networks")}
