"""End to end: `[dataplane] bridge_netfilter = "policy"` on two real lab hosts (namespaces,
etcd, agent processes).

With no policy the agents turn br_netfilter's hooks off in their host namespaces
(`net.bridge.bridge-nf-call-ip{,6}tables` = 0, a marker in the state directory) and traffic
flows; a policy turns them on before its table is applied, so it denies; its removal turns them
off again. A restart in the same mode changes nothing (traffic flows while the agent is down
and after); a restart with "keep" turns them back on (the kernel's default) and removes the
marker. Traffic stays inside the lab's namespaces.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.api.errors import EXIT_OK
from agent.cli.main import main
from agent.lab.hosts import Lab, LabHost, LabState
from agent.runtime.policies import BRIDGES_SKIPPED
from tests.e2e.two_host_lab import two_host_lab
from underlay.netns_exec import ip_netns_exec

pytestmark = [pytest.mark.kernel, pytest.mark.etcd, pytest.mark.slow]

NETWORK = "bnf"
SUBNET = "10.208.0.0/16"
SYSCTLS = ("net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables")


@pytest.fixture(scope="module")
def lab() -> Iterator[tuple[Lab, LabState]]:
    if shutil.which("etcd") is None:
        pytest.skip("needs the etcd server binary (Debian package etcd-server)")
    if not Path("/proc/sys/net/bridge").is_dir():
        pytest.skip("needs br_netfilter")
    with two_host_lab("vxmesh-bnf-lab-", f"b19{os.getpid() % 1000}", NETWORK, SUBNET,
                      config={"dataplane": {"bridge_netfilter": "policy"}}) as lab_and_state:
        yield lab_and_state


def _cli(host: LabHost, *args: str) -> int:
    return main([*args, "--socket", str(host.socket), "--json"])


def _endpoint(lab: Lab, host: LabHost, name: str, app: str) -> dict[str, Any]:
    assert _cli(host, "endpoint", "create", name, "--network", NETWORK, "--label",
                f"app={app}") == EXIT_OK
    record: dict[str, Any] = lab.client(host).request("GET", f"/v1/endpoints/{name}")
    return record


def _pings(src: dict[str, Any], dst_ip: str) -> bool:
    return subprocess.run(ip_netns_exec(src["netns"], ["ping", "-n", "-c", "1", "-W", "1",
                                                       dst_ip]),
                          capture_output=True, timeout=10).returncode == 0


def _bridge_netfilter(host: LabHost) -> set[str]:
    """The values of both sysctls in the host's namespace ({"1"}: on, {"0"}: off)."""
    shown = subprocess.run(ip_netns_exec(host.netns, ["sysctl", "-n", *SYSCTLS]),
                           capture_output=True, text=True, timeout=10, check=True).stdout
    return set(shown.split())


def test_bridge_netfilter_is_off_without_policy_on_with_one_and_keep_restores_it(
        lab: tuple[Lab, LabState]) -> None:
    the_lab, state = lab
    h0, h1 = state.hosts
    a = _endpoint(the_lab, h0, "a", "a")
    b = _endpoint(the_lab, h1, "b", "b")
    the_lab.wait_for(lambda: _pings(a, b["ip"]), "a to reach b", 15)
    for host in (h0, h1):
        the_lab.wait_for(lambda h=host: _bridge_netfilter(h) == {"0"},
                         f"{host.name}: bridge netfilter off without a policy", 15)
        assert (host.state_dir / BRIDGES_SKIPPED).exists()

    # a policy needs the hooks: on before its table, so a (app=a) is denied at b
    assert _cli(h1, "policy", "create", "b-in", "--network", NETWORK, "--select", "app=b",
                "--allow-from", "app=c") == EXIT_OK
    the_lab.wait_for(lambda: not _pings(a, b["ip"]), "a -> b to be denied", 15)
    for host in (h0, h1):
        the_lab.wait_for(lambda h=host: _bridge_netfilter(h) == {"1"},
                         f"{host.name}: bridge netfilter on with a policy", 15)
        assert not (host.state_dir / BRIDGES_SKIPPED).exists()
    assert _cli(h0, "policy", "delete", "b-in") == EXIT_OK
    the_lab.wait_for(lambda: _pings(a, b["ip"]), "a -> b once b-in is gone", 15)
    for host in (h0, h1):
        the_lab.wait_for(lambda h=host: _bridge_netfilter(h) == {"0"},
                         f"{host.name}: bridge netfilter off once the policy is gone", 15)

    # restart in the same mode: nothing flushed, nothing switched
    the_lab.stop_agent(state, h0)
    assert _pings(a, b["ip"]), "traffic stopped while h0's agent was down"
    the_lab.start_agent(state, h0)
    the_lab.wait_agent_ready(h0, 60)
    assert _pings(a, b["ip"])
    assert _bridge_netfilter(h0) == {"0"}

    # restart with "keep": the hooks back on, the marker gone, traffic still flowing
    the_lab.stop_agent(state, h1)
    the_lab.start_agent(state, h1, extra_env={"VXMESH_DATAPLANE_BRIDGE_NETFILTER": "keep"})
    the_lab.wait_agent_ready(h1, 60)
    the_lab.wait_for(lambda: _bridge_netfilter(h1) == {"1"}, "h1: bridge netfilter back on",
                     15)
    assert not (h1.state_dir / BRIDGES_SKIPPED).exists()
    the_lab.wait_for(lambda: _pings(a, b["ip"]), "a -> b after the restart with keep", 15)
    assert _bridge_netfilter(h0) == {"0"}  # the other host's namespace is its own
    for host in (h0, h1):
        assert the_lab.agent_runs(host), the_lab.log_tail(host, 40)
