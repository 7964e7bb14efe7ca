"""End to end: a real 5-host lab (namespaces, etcd, one agent process per host).

One lab serves the whole module (building it is the expensive part); every test leaves it as it
found it: all agents running, etcd up, the underlay connected. Traffic stays inside the lab's
namespaces. The etcd outage lasts E2E_ETCD_OUTAGE seconds (default 60, as the issue
asks; the whole module takes about 90 s of its 6-minute budget).
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import ipaddress
import json
import os
import re
import shutil
import signal
import socket as socketlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.api.client import CliError
from agent.api.errors import EXIT_CONFLICT, EXIT_OK, EXIT_USAGE
from agent.cli.main import main
from agent.lab.hosts import Lab, LabError, LabHost, LabState
from gossip.keyring import fingerprint
from tests.test_agent_metrics import REQUIRED
from underlay.netns_exec import ip_netns_exec

pytestmark = [pytest.mark.kernel, pytest.mark.etcd, pytest.mark.slow]

HOSTS = 5
NETWORK = "e2e"
SUBNET = "10.201.0.0/16"
# Deadlines, not targets: a test waits this long for what it checks, prints the time it took,
# and never fails for being slow on a loaded machine (the figures belong in bench/).
DETECTION_DEADLINE = 30.0  # seconds: a killed host withdrawn everywhere (target 12 s)
OUTAGE = float(os.environ.get("E2E_ETCD_OUTAGE", "60"))


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, LabState]]:
    if shutil.which("etcd") is None:
        pytest.skip("needs the etcd server binary (Debian package etcd-server)")
    directory = tmp_path_factory.mktemp("lab")
    the_lab = Lab(directory, prefix=f"e{os.getpid() % 10000}")
    try:
        state = the_lab.up(HOSTS)
        client = the_lab.client(state.hosts[0])
        client.request("POST", "/v1/networks", {"name": NETWORK, "subnet": SUBNET})
        for host in state.hosts:
            the_lab.client(host).request("POST", "/v1/endpoints",
                                         {"name": f"ep-{host.name}", "network": NETWORK})
        _wait_everyone_has(the_lab, state, {_ip(the_lab, h) for h in state.hosts})
        yield the_lab, state
    finally:
        the_lab.down()


def _ep(lab: Lab, host: LabHost, name: str | None = None) -> dict[str, Any]:
    record: dict[str, Any] = lab.client(host).request(
        "GET", f"/v1/endpoints/{name or f'ep-{host.name}'}")
    return record


def _ip(lab: Lab, host: LabHost) -> str:
    return str(_ep(lab, host)["ip"])


def _visible_ips(lab: Lab, host: LabHost) -> set[str]:
    return {e["ip"] for e in lab.client(host, timeout=5).request("GET", "/v1/endpoints")
            if e.get("network") == NETWORK}


def _wait_everyone_has(lab: Lab, state: LabState, ips: set[str], timeout: float = 20.0,
                       hosts: list[LabHost] | None = None) -> float:
    lagging: dict[str, str] = {}

    def done() -> bool:
        lagging.clear()
        for host in hosts or state.hosts:
            status = lab.client(host, timeout=5).request("GET", "/v1/status")
            missing = ips - _visible_ips(lab, host)
            if missing or not status.get("in_sync"):
                lagging[host.name] = f"missing {sorted(missing)}, in_sync {status['in_sync']}"
        return not lagging

    try:
        return lab.wait_for(done, f"every host to hold {sorted(ips)}", timeout)
    except LabError as exc:
        logs = "\n".join(f"--- {h.name}\n{lab.log_tail(h, 30)}" for h in state.hosts)
        raise AssertionError(f"{exc}; lagging: {lagging}\n{logs}") from None


def _kernel_neighbors(host: LabHost) -> str:
    return subprocess.run(ip_netns_exec(host.netns, ["ip", "neigh", "show",
                                                     "nud", "permanent"]),
                          capture_output=True, text=True,
                          timeout=10).stdout


def _ping(src: dict[str, Any], dst_ip: str, count: int = 1, interval: float = 0.2,
          deadline: float = 2.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(ip_netns_exec(src["netns"], ["ping", "-n", "-c", str(count), "-i",
                                                       str(interval), "-W", str(deadline), dst_ip]),
                          capture_output=True, text=True, timeout=count * interval + 30)


def _loss(output: str) -> float:
    found = re.search(r"([\d.]+)% packet loss", output)
    assert found, output
    return float(found.group(1))


def test_full_mesh_reachability(lab: tuple[Lab, LabState]) -> None:
    the_lab, state = lab
    endpoints = {h.name: _ep(the_lab, h) for h in state.hosts}
    failures = []
    for src in state.hosts:
        for dst in state.hosts:
            if src is not dst:
                done = _ping(endpoints[src.name], endpoints[dst.name]["ip"])
                if done.returncode != 0:
                    failures.append(f"{src.name} -> {dst.name}")
    assert not failures, failures


def test_a_new_endpoint_reaches_every_kernel_and_leaves_it(
        lab: tuple[Lab, LabState]) -> None:
    the_lab, state = lab
    h1, others = state.hosts[0], state.hosts[1:]
    start = time.monotonic()
    created = the_lab.client(h1).request("POST", "/v1/endpoints",
                                         {"name": "fresh", "network": NETWORK})
    took = the_lab.wait_for(lambda: all(created["ip"] in _kernel_neighbors(h) for h in others),
                            "every kernel to hold the new endpoint", 10, interval=0.01)
    total = time.monotonic() - start
    print(f"propagation: API create on h1 to 4 kernels {total:.3f} s ({took:.3f} s after "
          "the create returned)")
    the_lab.client(h1).request("DELETE", "/v1/endpoints/fresh")
    the_lab.wait_for(lambda: all(created["ip"] not in _kernel_neighbors(h) for h in others),
                     "every kernel to drop it", 10, interval=0.01)


def test_attach_into_a_runtime_namespace_then_detach(lab: tuple[Lab, LabState]) -> None:
    """The attach operation with a sandbox the runtime owns (CNI's netns path): the interface
    goes in under the given name with the network's MTU, reaches another host's endpoint, and
    detaching takes it out and leaves the namespace."""
    the_lab, state = lab
    h1, h2 = state.hosts[0], state.hosts[1]
    sandbox = f"{the_lab.prefix}rt1"
    subprocess.run(["ip", "netns", "add", sandbox], check=True, timeout=10)
    try:
        attached = the_lab.client(h1).request("POST", "/v1/endpoints", {
            "name": "rt1", "network": NETWORK, "netns_path": f"/var/run/netns/{sandbox}",
            "ifname": "net1", "labels": {"app": "web"}})
        assert (attached["sandbox"], attached["ifname"], attached["netns"]) == (
            f"/var/run/netns/{sandbox}", "net1", None)
        assert attached["labels"] == {"app": "web"} and attached["mtu"] == 1450
        link = subprocess.run(ip_netns_exec(sandbox, ["ip", "-o", "link", "show", "net1"]),
                              capture_output=True, text=True, timeout=10).stdout
        assert "mtu 1450" in link and attached["mac"] in link
        done = _ping({"netns": sandbox}, _ip(the_lab, h2), deadline=5.0)
        assert done.returncode == 0, done.stdout + done.stderr
        the_lab.client(h1).request("DELETE", "/v1/endpoints/rt1")
        the_lab.wait_for(lambda: attached["ip"] not in _visible_ips(the_lab, h2),
                         "h2 to drop the detached endpoint", 10, interval=0.05)
        left = subprocess.run(ip_netns_exec(sandbox, ["ip", "-o", "link"]), capture_output=True,
                              text=True, timeout=10, check=True).stdout
        assert "net1" not in left  # the namespace stays: it is the runtime's
    finally:
        subprocess.run(["ip", "netns", "del", sandbox], timeout=10, check=False)


def _cli(host: LabHost, *args: str) -> int:
    return main([*args, "--socket", str(host.socket), "--json"])


def test_endpoint_create_with_a_chosen_ip_in_another_hosts_block(
        lab: tuple[Lab, LabState]) -> None:
    the_lab, state = lab
    h1, h2, h3 = state.hosts[:3]
    theirs = ipaddress.ip_address(_ip(the_lab, h2))
    chosen = str(theirs + 1)  # h2's block, and the next address h2 itself would hand out
    made = [(h1, "chosen"), (h2, "next-free"), (h3, "again")]
    try:
        assert _cli(h1, "endpoint", "create", "chosen", "--network", NETWORK, "--ip",
                    chosen) == EXIT_OK
        assert _ep(the_lab, h1, "chosen")["ip"] == chosen
        _wait_everyone_has(the_lab, state, {chosen})
        assert _ping(_ep(the_lab, h2), chosen).returncode == 0
        # h2 allocates next-free after h1 recorded an address in h2's block: never the same
        fresh = the_lab.client(h2).request("POST", "/v1/endpoints",
                                           {"name": "next-free", "network": NETWORK})
        assert fresh["ip"] != chosen
        # taken (409, naming the holder), the gateway, outside the subnet (400): no change
        with pytest.raises(CliError, match=f"ip='{re.escape(chosen)}' is allocated to "
                           "'[^']*/chosen'.*HTTP 409") as taken:
            the_lab.client(h3).request("POST", "/v1/endpoints",
                                       {"name": "dup", "network": NETWORK, "ip": chosen})
        assert taken.value.exit_code == EXIT_CONFLICT
        assert _cli(h3, "endpoint", "create", "gw", "--network", NETWORK, "--ip",
                    "10.201.0.1") == EXIT_USAGE
        assert _cli(h3, "endpoint", "create", "out", "--network", NETWORK, "--ip",
                    "10.9.0.1") == EXIT_USAGE
        assert not {e["name"] for e in the_lab.client(h3).request("GET", "/v1/endpoints")
                    if e.get("local")} & {"dup", "gw", "out"}
        # deleting the endpoint releases the address in h2's block: h3 may then take it
        the_lab.client(h1).request("DELETE", "/v1/endpoints/chosen")

        def h3_takes_it() -> bool:
            client = the_lab.client(h3)
            if any(e["name"] == "again" for e in client.request("GET", "/v1/endpoints")
                   if e.get("local")):
                return bool(_ep(the_lab, h3, "again")["ip"] == chosen)
            return bool(client.request("POST", "/v1/endpoints", {
                "name": "again", "network": NETWORK, "ip": chosen})["ip"] == chosen)

        the_lab.wait_for(h3_takes_it, "h3 to get the released address", 15, interval=0.2)
    finally:
        for host, name in made:
            with contextlib.suppress(CliError):
                the_lab.client(host).request("DELETE", f"/v1/endpoints/{name}")


def test_a_host_joining_a_network_late_gets_its_existing_endpoints(
        lab: tuple[Lab, LabState]) -> None:
    the_lab, state = lab
    h1, h2 = state.hosts[:2]
    the_lab.client(h1).request("POST", "/v1/networks", {"name": "late",
                                                        "subnet": "10.202.0.0/16"})
    first = the_lab.client(h1).request("POST", "/v1/endpoints",
                                       {"name": "early", "network": "late"})
    sent = 'vxmesh_gossip_messages_total{direction="sent",type="table_record"}'
    seen: list[float] = []

    def broadcasts_ran_out() -> bool:  # h1 stopped retransmitting: only a sync can help h2
        seen.append(the_lab.scrape(h1).get(sent, 0.0))
        return len(seen) >= 5 and seen[-1] == seen[-5]

    the_lab.wait_for(broadcasts_ran_out, "h1's broadcasts to run out", 20, interval=0.25)
    second = the_lab.client(h2).request("POST", "/v1/endpoints",
                                        {"name": "late", "network": "late"})
    the_lab.wait_for(lambda: first["ip"] in {e["ip"] for e in the_lab.client(h2).request(
        "GET", "/v1/endpoints") if e["network"] == "late"}, "h2 to learn h1's endpoint", 5)
    assert _ping(_ep(the_lab, h2, "late"), first["ip"]).returncode == 0
    the_lab.client(h1).request("DELETE", "/v1/endpoints/early")
    the_lab.client(h2).request("DELETE", "/v1/endpoints/late")
    the_lab.wait_for(lambda: all(second["ip"] not in _kernel_neighbors(h)
                                 and first["ip"] not in _kernel_neighbors(h)
                                 for h in state.hosts), "the late network's entries to go", 10)


@contextlib.contextmanager
def _agent_restored(lab: Lab, state: LabState, host: LabHost) -> Iterator[None]:
    """Whatever the test does to `host`'s agent, it runs again (and is ready) afterwards."""
    try:
        yield
    finally:
        if host.pid is None or not lab.agent_runs(host):
            with contextlib.suppress(LabError):
                lab.stop_agent(state, host, kill=True)  # reap what is left of it
            lab.start_agent(state, host)
            lab.wait_agent_ready(host, 30)


_REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from .* icmp_seq=(\d+) ", re.MULTILINE)


def _replies(path: Path) -> list[tuple[float, int]]:
    """(wall-clock time, icmp_seq) of every reply `ping -D` wrote to `path` so far."""
    return [(float(t), int(seq)) for t, seq in _REPLY.findall(path.read_text())]


def test_kill9_and_restart_loses_no_packet_of_a_running_stream(
        lab: tuple[Lab, LabState], tmp_path: Path) -> None:
    """The probe stream runs from before the kill until after the restarted agent's first
    kernel pass (it reports ready only after that pass), and not one probe is lost."""
    the_lab, state = lab
    h2, h3 = state.hosts[1], state.hosts[2]
    before = _kernel_neighbors(h2)
    output = tmp_path / "ping.txt"
    with output.open("w") as sink, _agent_restored(the_lab, state, h2):
        # -D: each reply carries its wall-clock time; no -c: it runs until we stop it.
        stream = subprocess.Popen(
            ip_netns_exec(_ep(the_lab, h2)["netns"], ["ping", "-n", "-D", "-i", "0.02",
                                                      _ip(the_lab, h3)]),
            stdout=sink, stderr=subprocess.STDOUT, text=True)
        try:
            the_lab.wait_for(lambda: len(_replies(output)) >= 10, "the stream to run", 10,
                             interval=0.05)
            killed_at = time.time()
            the_lab.stop_agent(state, h2, kill=True)
            the_lab.start_agent(state, h2)
            the_lab.wait_agent_ready(h2, 30)
            ready_at = time.time()
            the_lab.wait_for(lambda: sum(t > ready_at for t, _ in _replies(output)) >= 25,
                             "half a second of probes after the new agent's first pass", 10,
                             interval=0.05)
        finally:
            stream.send_signal(signal.SIGINT)
            stream.wait(10)
    replies = _replies(output)
    seqs = sorted(seq for _, seq in replies)
    assert min(t for t, _ in replies) < killed_at and max(t for t, _ in replies) > ready_at
    # every probe sent up to the last answered one was answered (none in flight is counted)
    missing = sorted(set(range(1, seqs[-1] + 1)) - set(seqs))
    print(f"kill -9 and restart: {len(seqs)} probes over {ready_at - killed_at:.2f} s of "
          f"restart, {len(missing)} lost")
    assert missing == [], output.read_text()[-2000:]
    assert _kernel_neighbors(h2) == before  # adopted, nothing flushed or rewritten
    status = the_lab.client(h2).request("GET", "/v1/status")
    assert status["in_sync"]


def test_vxmesh_leave_withdraws_entries_everywhere_as_a_leave(lab: tuple[Lab, LabState]) -> None:
    the_lab, state = lab
    h5 = state.hosts[4]
    ip5 = _ip(the_lab, h5)
    others = state.hosts[:4]
    assert h5.pid is not None
    with _agent_restored(the_lab, state, h5):
        start = time.monotonic()
        # The answer comes once the leave has been gossiped (up to 2 s): time from the
        # request, not from the answer.
        leaving = concurrent.futures.ThreadPoolExecutor(1).submit(
            the_lab.client(h5).request, "POST", "/v1/leave")
        the_lab.wait_for(lambda: all(ip5 not in _visible_ips(the_lab, h)
                                     and ip5 not in _kernel_neighbors(h) for h in others),
                         "h5's endpoint to leave every other host", 10.0, interval=0.01)
        took = time.monotonic() - start
        assert leaving.result(10)["left"]
        assert the_lab.wait_agent_exit(state, h5, 10) == 0  # it exits by itself after leaving
        # Gossiped as a leave, not found by failure detection:
        for host in others:
            member = next(m for m in the_lab.client(host).request("GET", "/v1/members")
                          if m["name"] == h5.node)
            assert member["state"] == "left", (host.name, member)
    _wait_everyone_has(the_lab, state, {ip5})
    print(f"vxmesh leave: gone everywhere after {took:.2f} s")


def test_sd_notify_ready_after_sync_watchdog_stopping_and_exit_0(
        lab: tuple[Lab, LabState], tmp_path: Path) -> None:
    the_lab, state = lab
    h3 = state.hosts[2]
    notify = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(30)
    try:
        assert the_lab.stop_agent(state, h3) == 0  # SIGTERM: a stop, exit 0
        the_lab.start_agent(state, h3, {"NOTIFY_SOCKET": str(tmp_path / "notify"),
                                        "WATCHDOG_USEC": "1000000"})
        assert h3.pid is not None
        messages = [notify.recv(4096).decode()]
        assert messages[0].startswith("READY=1")
        status = the_lab.client(h3).request("GET", "/v1/status")
        assert status["ready"] and status["in_sync"]  # READY came after the first full sync
        messages += [notify.recv(4096).decode() for _ in range(2)]
        assert messages[1:] == ["WATCHDOG=1", "WATCHDOG=1"]
        os.kill(h3.pid, signal.SIGTERM)
        for _ in range(30):  # one watchdog ping a second, the stop within 10 s
            if (message := notify.recv(4096).decode()) != "WATCHDOG=1":
                break
        assert message == "STOPPING=1"
        assert the_lab.wait_agent_exit(state, h3, 10) == 0
    finally:
        notify.close()
        if h3.pid is not None and the_lab.agent_runs(h3):
            the_lab.stop_agent(state, h3)  # the test failed with the notify-socket agent up
        the_lab.start_agent(state, h3)
        the_lab.wait_agent_ready(h3, 30)
    _wait_everyone_has(the_lab, state, {_ip(the_lab, h3)})


def test_removing_a_whole_host_withdraws_it_everywhere(
        lab: tuple[Lab, LabState]) -> None:
    the_lab, state = lab
    h4 = state.hosts[3]
    ip4 = _ip(the_lab, h4)
    others = [h for h in state.hosts if h is not h4]
    subprocess.run(ip_netns_exec(h4.netns, ["ip", "link", "set", "eth0", "down"]),
                   check=True, timeout=10)
    the_lab.stop_agent(state, h4, kill=True)
    try:
        took = the_lab.wait_for(lambda: all(ip4 not in _visible_ips(the_lab, h)
                                            and ip4 not in _kernel_neighbors(h)
                                            for h in others),
                                "h4's endpoint to leave every other host",
                                DETECTION_DEADLINE)
    finally:
        subprocess.run(ip_netns_exec(h4.netns, ["ip", "link", "set", "eth0", "up"]),
                       check=True, timeout=10)
        the_lab.start_agent(state, h4)
    the_lab.wait_agent_ready(h4, 30)
    _wait_everyone_has(the_lab, state, {ip4}, timeout=30)
    print(f"host removed: withdrawn everywhere after {took:.1f} s")


def test_etcd_outage_keeps_traffic_and_propagation(lab: tuple[Lab, LabState]) -> None:
    the_lab, state = lab
    h1, h2, h3 = state.hosts[:3]
    count = int(OUTAGE / 0.05)
    stream = subprocess.Popen(
        ip_netns_exec(_ep(the_lab, h1)["netns"], ["ping", "-n", "-c", str(count),
                                                  "-i", "0.05", "-W", "1", _ip(the_lab, h2)]),
        stdout=subprocess.PIPE, text=True)
    the_lab.stop_etcd(state)
    try:
        the_lab.wait_for(lambda: not the_lab.client(h3).request("GET", "/v1/status")
                         ["store_up"], "h3 to notice etcd is down", 30)
        created = the_lab.client(h3).request("POST", "/v1/endpoints",
                                             {"name": "during-outage", "network": NETWORK})
        _wait_everyone_has(the_lab, state, {created["ip"]})
        out, _ = stream.communicate(timeout=OUTAGE + 60)
    finally:
        the_lab.start_etcd(state)
    assert _loss(out) == 0.0, out
    the_lab.wait_for(lambda: all(the_lab.client(h).request("GET", "/v1/status")["store_up"]
                                 for h in state.hosts), "every agent back on etcd", 30)
    the_lab.client(h3).request("DELETE", "/v1/endpoints/during-outage")
    the_lab.wait_for(lambda: all(created["ip"] not in _visible_ips(the_lab, h)
                                 for h in state.hosts), "the deletion to reach everyone", 10)


FORGE = """
import os, socket, sys
from gossip.keyring import Keyring
key = os.urandom(32)
packet = Keyring([key], key).seal(b"\\x01" + os.urandom(64))
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    for _ in range(5):
        s.sendto(packet, (sys.argv[1], int(sys.argv[2])))
"""


def test_forged_gossip_packet_is_dropped_and_counted(lab: tuple[Lab, LabState]) -> None:
    the_lab, state = lab
    h1, h2 = state.hosts[:2]
    series = 'vxmesh_gossip_dropped_packets_total{reason="auth"}'
    before = the_lab.scrape(h1).get(series, 0.0)
    members_before = the_lab.client(h1).request("GET", "/v1/members")
    endpoints_before = the_lab.client(h1).request("GET", "/v1/endpoints")
    subprocess.run(ip_netns_exec(h2.netns, [sys.executable, "-c", FORGE,
                                            h1.address, "7946"]), check=True, timeout=30,
                   cwd=Path(__file__).resolve().parents[2])
    the_lab.wait_for(lambda: the_lab.scrape(h1).get(series, 0.0) >= before + 5,
                     "h1 to count 5 forged packets", 10)
    members_after = the_lab.client(h1).request("GET", "/v1/members")
    assert [(m["name"], m["state"]) for m in members_after] == \
        [(m["name"], m["state"]) for m in members_before]
    assert the_lab.client(h1).request("GET", "/v1/endpoints") == endpoints_before


def test_fdb_shows_desired_equal_to_kernel(lab: tuple[Lab, LabState]) -> None:
    the_lab, state = lab
    h1 = state.hosts[0]
    report = the_lab.client(h1).request("GET", f"/v1/fdb?network={NETWORK}")
    others = {_ip(the_lab, h) for h in state.hosts[1:]}
    vteps = {h.address for h in state.hosts[1:]}
    kinds: dict[str, set[str]] = {}
    for entry in report["entries"]:
        assert entry["state"] == "ok", entry
        kinds.setdefault(entry["kind"], set()).add(entry["key"])
    assert kinds["neigh"] == others
    assert kinds["flood"] == vteps
    assert len(kinds["fdb"]) == len(others)
    assert report["in_sync"] and not report["problems"]


def test_metrics_scrape_holds_every_metric(lab: tuple[Lab, LabState]) -> None:
    the_lab, state = lab
    text = subprocess.run(ip_netns_exec(state.hosts[0].netns,
                                        ["curl", "-s", "http://127.0.0.1:9476/metrics"]),
                          capture_output=True, text=True, timeout=10).stdout
    for name in REQUIRED:
        assert f"\n{name}" in text, name
    values = the_lab.scrape(state.hosts[0])
    assert values[f'vxmesh_neighbor_entries{{network="{NETWORK}"}}'] >= HOSTS
    assert values["vxmesh_dataplane_in_sync"] == 1.0
    assert values["vxmesh_dataplane_apply_duration_seconds_count"] >= 1  # on_applied timed it
    assert values["vxmesh_endpoint_propagation_seconds_count"] >= 1
    assert values["vxmesh_gossip_probe_rtt_seconds_count"] >= 1
    if shutil.which("promtool"):
        checked = subprocess.run(["promtool", "check", "metrics"], input=text, text=True,
                                 capture_output=True, timeout=60)
        assert checked.returncode == 0, checked.stdout + checked.stderr


def test_key_rotation_and_sighup_reload_keep_the_cluster_whole(
        lab: tuple[Lab, LabState]) -> None:
    the_lab, state = lab
    new_key = base64.b64encode(os.urandom(32)).decode()
    old_key = state.key
    new_print = fingerprint(base64.b64decode(new_key))
    listed = the_lab.client(state.hosts[0]).request("GET", "/v1/keys")
    assert listed["primary"] == fingerprint(base64.b64decode(old_key))  # never the key itself
    assert old_key not in json.dumps(listed)
    for action in ("install", "use"):
        for host in state.hosts:
            the_lab.client(host).request("POST", f"/v1/keys/{action}", {"key": new_key})
    # The last host learns the removal from its keyring file and SIGHUP, as an operator would.
    last = state.hosts[-1]
    for host in state.hosts[:-1]:
        the_lab.client(host).request("POST", "/v1/keys/remove", {"key": old_key})
    keyring = Path(last.directory) / "state" / "keyring.json"
    keyring.write_text(json.dumps({"primary": new_key, "keys": [new_key]}))
    assert last.pid is not None
    os.kill(last.pid, signal.SIGHUP)
    the_lab.wait_for(lambda: the_lab.client(last).request("GET", "/v1/keys")["keys"]
                     == [new_print], "h5 to reload its keyring", 10)
    for host in state.hosts:
        keys = the_lab.client(host).request("GET", "/v1/keys")
        assert {k: keys[k] for k in ("primary", "keys", "encrypt")} == \
            {"primary": new_print, "keys": [new_print], "encrypt": True}
        assert keys["identity"]
    names = {h.node for h in state.hosts}
    start = time.monotonic()
    while time.monotonic() - start < 3:  # a few probe rounds on the new key only
        for host in state.hosts:
            assert names <= the_lab.alive_members(host)
        time.sleep(0.5)
    with pytest.raises(CliError, match="primary"):
        the_lab.client(state.hosts[0]).request("POST", "/v1/keys/remove", {"key": new_key})


def _resolve(lab: Lab, endpoint: dict[str, Any], name: str, rdtype: str = "A",
             server: str = "127.0.0.11") -> list[str]:
    """What `server` answers `endpoint`'s namespace for `name` ([] for none)."""
    import dns.message
    import dns.rcode

    from underlay.netns_sockets import open_socket_in_netns

    sock = open_socket_in_netns(endpoint["netns"], socketlib.AF_INET, socketlib.SOCK_DGRAM,
                                bind=("0.0.0.0", 0))
    with sock:
        sock.settimeout(1.0)
        sock.sendto(dns.message.make_query(name, rdtype).to_wire(), (server, 53))
        reply = dns.message.from_wire(sock.recv(65535))
    if reply.rcode() != dns.rcode.NOERROR:
        return []
    return sorted(r.to_text() for rrset in reply.answer for r in rrset)


def test_names_resolve_on_every_host_and_go_with_the_endpoint(
        lab: tuple[Lab, LabState]) -> None:
    the_lab, state = lab
    h1, h2, h3 = state.hosts[:3]
    asker = _ep(the_lab, h2)
    resolv = Path("/etc/netns") / asker["netns"] / "resolv.conf"
    assert resolv.read_text() == (f"nameserver 127.0.0.11\nsearch {NETWORK}\n"
                                  "options ndots:0\n")
    # the asker resolves its peers' names from gossip; `ip netns exec` sees our resolv.conf
    assert _resolve(the_lab, asker, f"ep-{h1.name}") == [_ip(the_lab, h1)]
    web = the_lab.client(h1).request("POST", "/v1/endpoints", {
        "name": "web", "network": NETWORK, "aliases": ["api"], "services": ["80/tcp"]})
    api2 = the_lab.client(h3).request("POST", "/v1/endpoints", {
        "name": "web2", "network": NETWORK, "aliases": ["api"]})
    try:
        # How fast a name reaches every host is bench/dns.py's figure (p99 <= 1 s on a quiet
        # machine); here the names must arrive, on a machine as loaded as it may be.
        the_lab.wait_for(lambda: _resolve(the_lab, asker, "web") == [web["ip"]],
                         "web to resolve on h2", 15.0)
        the_lab.wait_for(lambda: _resolve(the_lab, asker, "api") == sorted(
            [web["ip"], api2["ip"]]), "the alias to answer both", 15.0)
        assert _resolve(the_lab, asker, f"web.{NETWORK}") == [web["ip"]]
        assert _resolve(the_lab, asker, "_80._tcp.api", "SRV") == [f"0 0 80 web.{NETWORK}."]
        # the network's gateway on the asker's own host answers too (Docker's --dns path),
        # scoped by the asker's source address
        gateway = next(n["gateway"] for n in the_lab.client(h2).request("GET", "/v1/networks")
                       if n["name"] == NETWORK)
        assert _resolve(the_lab, asker, "web", server=gateway) == [web["ip"]]
        listed = {e["ip"]: e for e in the_lab.client(h2).request("GET", "/v1/endpoints")}
        assert listed[web["ip"]]["name"] == "web" and listed[web["ip"]]["aliases"] == ["api"]
        via_exec = subprocess.run(ip_netns_exec(asker["netns"], ["getent", "hosts", "web"]),
                                  capture_output=True, text=True, timeout=10)
        assert via_exec.stdout.split()[:1] == [web["ip"]], via_exec
    finally:
        the_lab.client(h3).request("DELETE", "/v1/endpoints/web2")
        the_lab.client(h1).request("DELETE", "/v1/endpoints/web")
    # bench/dns.py measures how fast a name follows its endpoint; here it must follow at all.
    the_lab.wait_for(lambda: _resolve(the_lab, asker, "web") == [], "web to stop resolving",
                     15.0)


def test_a_name_on_another_network_does_not_resolve(lab: tuple[Lab, LabState]) -> None:
    the_lab, state = lab
    h1, h2 = state.hosts[:2]
    the_lab.client(h1).request("POST", "/v1/networks", {"name": "dnsother",
                                                        "subnet": "10.216.0.0/16"})
    the_lab.client(h1).request("POST", "/v1/endpoints", {"name": "hidden",
                                                         "network": "dnsother"})
    try:
        other = the_lab.client(h2).request("POST", "/v1/endpoints", {"name": "peer",
                                                                     "network": "dnsother"})
        the_lab.wait_for(lambda: bool(_resolve(the_lab, other, "hidden")),
                         "hidden to resolve on its own network", 5.0)
        assert _resolve(the_lab, _ep(the_lab, h2), "hidden") == []
    finally:
        for host, name in ((h2, "peer"), (h1, "hidden")):
            with contextlib.suppress(CliError):
                the_lab.client(host).request("DELETE", f"/v1/endpoints/{name}")
        with contextlib.suppress(CliError):
            the_lab.client(h1).request("DELETE", "/v1/networks/dnsother")


def test_recreating_the_last_endpoint_of_a_network_at_once_works(
        lab: tuple[Lab, LabState]) -> None:
    """Deleting a host's last endpoint of a network makes it leave (its bridge goes); an
    endpoint created right after must wait for the new bridge, not take the old one."""
    the_lab, state = lab
    h1 = state.hosts[0]
    client = the_lab.client(h1)
    client.request("POST", "/v1/networks", {"name": "churn", "subnet": "10.203.0.0/16"})
    try:
        for round_ in range(3):
            made = client.request("POST", "/v1/endpoints", {"name": "again", "network": "churn"})
            assert made["ip"], (round_, made)
            client.request("DELETE", "/v1/endpoints/again")
    finally:
        with contextlib.suppress(CliError):
            client.request("DELETE", "/v1/endpoints/again")
        with contextlib.suppress(CliError):
            client.request("DELETE", "/v1/networks/churn")
