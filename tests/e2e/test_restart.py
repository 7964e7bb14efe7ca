"""End to end: the data plane outlives the control plane (a real 3-host lab).

Each test runs continuous probe streams (ping, 100 per second, each way) between endpoints
on two hosts from before the fault until after recovery, and counts what was lost: nothing
for an agent-only fault (kill -9 for 3 s and 30 s, SIGTERM and restart); a whole host cut off
is withdrawn everywhere by failure detection, with its agent running or dead; a leave is
gossiped as a leave. Tests print the times they measured and wait with generous deadlines;
the targets are bench/'s. One lab serves the module; every test leaves it as it found it.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from agent.lab.hosts import Lab, LabError, LabHost, LabState
from agent.lab.probe_stream import ProbeStream
from underlay.netns_exec import ip_netns_exec

pytestmark = [pytest.mark.kernel, pytest.mark.etcd, pytest.mark.slow]

HOSTS = 3
NETWORK = "keep"
SUBNET = "10.215.0.0/16"
RATE = 100  # probes per second, each way
# Deadlines, not targets: a test waits this long for what it checks, prints the time it took,
# and never fails for being slow on a loaded machine (the figures belong in bench/).
DETECTION_DEADLINE = 30.0  # seconds: a cut-off host gone everywhere (target 12 s)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, LabState]]:
    import shutil

    if shutil.which("etcd") is None:
        pytest.skip("needs the etcd server binary (Debian package etcd-server)")
    the_lab = Lab(tmp_path_factory.mktemp("lab15"), prefix=f"r15{os.getpid() % 1000}")
    try:
        state = the_lab.up(HOSTS)
        the_lab.client(state.hosts[0]).request("POST", "/v1/networks",
                                               {"name": NETWORK, "subnet": SUBNET})
        for host in state.hosts:
            the_lab.client(host).request("POST", "/v1/endpoints",
                                         {"name": f"ep-{host.name}", "network": NETWORK})
        for host in state.hosts:
            IPS[host.name] = str(_ep(the_lab, host)["ip"])
            NETNS[host.name] = str(_ep(the_lab, host)["netns"])
        _wait_all_hold(the_lab, state, set(IPS.values()))
        yield the_lab, state
    finally:
        the_lab.down()


@pytest.fixture(autouse=True)
def _restore(lab: tuple[Lab, LabState]) -> Iterator[None]:
    """Whatever a test did, the next one finds every link up and every agent running."""
    yield
    the_lab, state = lab
    for host in state.hosts:
        subprocess.run(ip_netns_exec(host.netns, ["ip", "link", "set", "eth0", "up"]),
                       check=True, timeout=10)
        if not the_lab.agent_runs(host):
            if host.pid is not None:
                the_lab.stop_agent(state, host)  # reap it
            _restart(the_lab, state, host)
    _wait_all_hold(the_lab, state, set(IPS.values()))


def _ep(lab: Lab, host: LabHost, name: str | None = None) -> dict[str, Any]:
    found: dict[str, Any] = lab.client(host).request(
        "GET", f"/v1/endpoints/{name or f'ep-{host.name}'}")
    return found


IPS: dict[str, str] = {}  # lab host -> the address of its endpoint ep-<host>
NETNS: dict[str, str] = {}  # lab host -> the namespace of that endpoint


def _ip(lab: Lab, host: LabHost) -> str:
    return IPS[host.name]


def _kernel_neighbors(host: LabHost) -> str:
    return subprocess.run(ip_netns_exec(host.netns, ["ip", "neigh", "show", "nud",
                                                     "permanent"]),
                          capture_output=True, text=True, timeout=10).stdout


def _holds(lab: Lab, host: LabHost, ip: str) -> bool:
    """`host`'s view holds endpoint `ip`, and its kernel too if the endpoint is remote."""
    rows = [e for e in lab.client(host, timeout=5).request("GET", "/v1/endpoints")
            if e["ip"] == ip]
    return bool(rows) and (rows[0]["local"] or re.search(
        rf"^{re.escape(ip)} ", _kernel_neighbors(host), re.M) is not None)


def _lacks(lab: Lab, host: LabHost, ip: str) -> bool:
    visible = {e["ip"] for e in lab.client(host, timeout=5).request("GET", "/v1/endpoints")}
    return ip not in visible and re.search(rf"^{re.escape(ip)} ", _kernel_neighbors(host),
                                           re.M) is None


def _wait_all_hold(lab: Lab, state: LabState, ips: set[str], timeout: float = 30.0) -> None:
    running = [h for h in state.hosts if h.pid is not None]
    lab.wait_for(lambda: all(_holds(lab, h, ip) for h in running for ip in ips),
                 f"every host to hold {sorted(ips)}", timeout)


def _member(lab: Lab, host: LabHost, name: str) -> dict[str, Any]:
    for member in lab.client(host, timeout=5).request("GET", "/v1/members"):
        if member["name"] == name:
            return dict(member)
    raise AssertionError(f"{host.name} does not know {name}")


class Streams:
    """Probe streams both ways between two hosts' endpoints, RATE per second each, running
    from construction (first answers seen) until `lost()`."""

    def __init__(self, lab: Lab, a: LabHost, b: LabHost) -> None:
        self.started = time.monotonic()
        self.streams = [ProbeStream(NETNS[src.name], IPS[dst.name], RATE)
                        for src, dst in ((a, b), (b, a))]
        for stream in self.streams:
            stream.wait_answering()

    def lost(self) -> list[int]:
        """Probes lost in each direction (stops the streams)."""
        reports = [stream.stop() for stream in self.streams]
        for report in reports:
            assert report.rate >= RATE * 0.99, report  # the stream really ran at its rate
        return [report.lost for report in reports]


def _restart(lab: Lab, state: LabState, host: LabHost, **env: str) -> float:
    """Start the host's agent; seconds until it is ready."""
    start = time.monotonic()
    lab.start_agent(state, host, env or None)
    lab.wait_agent_ready(host, 30)
    return time.monotonic() - start


def test_kill9_for_3s_loses_no_probe(lab: tuple[Lab, LabState]) -> None:
    the_lab, state = lab
    h1, h2 = state.hosts[0], state.hosts[1]
    streams = Streams(the_lab, h1, h2)
    the_lab.stop_agent(state, h2, kill=True)
    time.sleep(3)  # the fault's length
    _restart(the_lab, state, h2)
    _wait_all_hold(the_lab, state, set(IPS.values()))
    assert streams.lost() == [0, 0]


def test_kill9_for_30s_keeps_entries_marks_agent_down_then_reconciles(
        lab: tuple[Lab, LabState]) -> None:
    the_lab, state = lab
    h1, h2, h3 = state.hosts
    streams = Streams(the_lab, h1, h2)
    the_lab.stop_agent(state, h2, kill=True)
    killed = time.monotonic()
    # Detected as failed, found forwarding: marked everywhere, entries kept.
    for peer in (h1, h3):
        the_lab.wait_for(lambda peer=peer: _member(the_lab, peer, h2.node)["agent_down"],
                         f"{peer.name} to mark {h2.name} agent down", DETECTION_DEADLINE)
    member = _member(the_lab, h1, h2.node)
    assert (member["state"], member["host"]) == ("dead", "agent down")
    assert the_lab.client(h1).request("GET", "/v1/status")["members_agent_down"] == [h2.node]
    assert the_lab.scrape(h1)["vxmesh_members_agent_down"] == 1
    assert _holds(the_lab, h1, _ip(the_lab, h2)) and _holds(the_lab, h3, _ip(the_lab, h2))
    # Meanwhile an endpoint comes and another goes elsewhere: the returning agent's kernel must
    # catch up soon after its readiness (target 1 s; the test prints what it took).
    created = the_lab.client(h3).request("POST", "/v1/endpoints",
                                         {"name": "while-away", "network": NETWORK})["ip"]
    gone = the_lab.client(h1).request("POST", "/v1/endpoints",
                                      {"name": "short-lived", "network": NETWORK})["ip"]
    _wait_all_hold(the_lab, state, {gone})  # h2 is skipped (no agent): its kernel lacks it
    the_lab.client(h1).request("DELETE", "/v1/endpoints/short-lived")
    time.sleep(max(0.0, 30 - (time.monotonic() - killed)))  # the fault's length
    _restart(the_lab, state, h2)
    ready = time.monotonic()
    the_lab.wait_for(lambda: _holds(the_lab, h2, created) and _lacks(the_lab, h2, gone),
                     "h2's kernel to catch up", 10, interval=0.02)
    caught_up = time.monotonic() - ready
    for peer in (h1, h3):
        the_lab.wait_for(lambda peer=peer: not _member(the_lab, peer, h2.node)["agent_down"],
                         f"{peer.name} to clear the mark of {h2.name}", 10)
    assert streams.lost() == [0, 0]
    the_lab.client(h3).request("DELETE", "/v1/endpoints/while-away")
    print(f"kill -9 30 s: 0 lost; h2's kernel caught up {caught_up:.2f} s after readiness")


def test_sigterm_and_restart_loses_no_probe(lab: tuple[Lab, LabState]) -> None:
    the_lab, state = lab
    h1, h3 = state.hosts[0], state.hosts[2]
    streams = Streams(the_lab, h1, h3)
    assert the_lab.stop_agent(state, h3) == 0  # SIGTERM: stops without leaving, exit 0
    _restart(the_lab, state, h3)
    _wait_all_hold(the_lab, state, set(IPS.values()))
    assert streams.lost() == [0, 0]
    assert not _member(the_lab, h1, h3.node)["agent_down"]


def test_leave_on_stop_and_vxmesh_leave_withdraw_as_a_leave(
        lab: tuple[Lab, LabState]) -> None:
    the_lab, state = lab
    h1, h2, h3 = state.hosts
    ip3 = _ip(the_lab, h3)
    took = {}
    for how in ("sigterm with node.leave_on_stop", "vxmesh leave"):
        the_lab.stop_agent(state, h3)
        _restart(the_lab, state, h3, **({"VXMESH_NODE_LEAVE_ON_STOP": "true"}
                                        if how.startswith("sigterm") else {}))
        _wait_all_hold(the_lab, state, {ip3})
        assert h3.pid is not None
        start = time.monotonic()
        if how == "vxmesh leave":
            # The answer comes once the leave has been gossiped (up to 2 s): time from the
            # request, not from the answer.
            leaving = concurrent.futures.ThreadPoolExecutor(1).submit(
                the_lab.client(h3).request, "POST", "/v1/leave")
        else:
            os.kill(h3.pid, signal.SIGTERM)
        the_lab.wait_for(lambda: _lacks(the_lab, h1, ip3) and _lacks(the_lab, h2, ip3),
                         f"h3's endpoint to leave after {how}", 10, interval=0.01)
        took[how] = time.monotonic() - start
        if how == "vxmesh leave":
            assert leaving.result(10)["left"]
        assert the_lab.wait_agent_exit(state, h3, 10) == 0
        assert _member(the_lab, h1, h3.node)["state"] == "left"
    _restart(the_lab, state, h3)
    _wait_all_hold(the_lab, state, {ip3})
    print("withdrawn everywhere after: " + ", ".join(f"{k} {v:.2f} s" for k, v in took.items()))


@pytest.mark.parametrize("agent", ["running", "dead"])
def test_a_host_cut_off_is_withdrawn_everywhere(
        lab: tuple[Lab, LabState], agent: str) -> None:
    the_lab, state = lab
    h1, h2, h3 = state.hosts
    ip3 = _ip(the_lab, h3)
    bystanders = Streams(the_lab, h1, h2)  # traffic between the others never notices
    if agent == "dead":  # first the agent dies: kept as agent down; then the host goes
        the_lab.stop_agent(state, h3, kill=True)
        the_lab.wait_for(lambda: _member(the_lab, h1, h3.node)["agent_down"]
                         and _member(the_lab, h2, h3.node)["agent_down"],
                         "h3 marked agent down", DETECTION_DEADLINE)
    subprocess.run(ip_netns_exec(h3.netns, ["ip", "link", "set", "eth0", "down"]),
                   check=True, timeout=10)
    start = time.monotonic()
    try:
        the_lab.wait_for(lambda: _lacks(the_lab, h1, ip3) and _lacks(the_lab, h2, ip3),
                         "h3's endpoint to leave h1 and h2", DETECTION_DEADLINE)
        took = time.monotonic() - start
        assert _member(the_lab, h1, h3.node)["host"] == "withdrawn"
    finally:
        subprocess.run(ip_netns_exec(h3.netns, ["ip", "link", "set", "eth0", "up"]),
                       check=True, timeout=10)
        if h3.pid is None:
            _restart(the_lab, state, h3)
    try:  # back: the cut-off side rejoins (its seeds are retried every 5 s)
        _wait_all_hold(the_lab, state, set(IPS.values()), timeout=30)
    except LabError as exc:
        raise AssertionError(f"{exc}\n{the_lab.log_tail(h3, 30)}") from None
    assert bystanders.lost() == [0, 0]
    print(f"host cut off (agent {agent}): withdrawn everywhere after {took:.1f} s")
