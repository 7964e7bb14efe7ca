"""End to end with real Docker: a 2-host lab, one real dockerd per host, the agent as its plugin.

One lab serves the module (`Lab(directory, prefix)` unique to this process: namespaces, etcd,
agents, dockerd per host); traffic stays inside its namespaces. First Docker's own calls are
replayed in Docker's order against a real agent's plugin socket (golden bodies); then `docker
network create` / `docker run` across hosts, static addresses, isolation, two networks per
container, egress and published ports, agent restarts (kill -9 and SIGTERM) under a running
ping, dockerd restart with live-restore, a container removed while its agent was down (Docker
retries its calls ~45 s before giving up: the slowest test), `vxmesh ports`, and the demo.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.docker import protocol as p
from agent.lab.docker import IMAGE
from agent.lab.docker_demo import run_docker_demo
from agent.lab.hosts import Lab, LabHost, LabState
from agent.unix_http import unix_request
from tests.docker import golden
from underlay.endpoints_model import mac_for_address
from underlay.netns_exec import ip_netns_exec

pytestmark = [pytest.mark.kernel, pytest.mark.etcd, pytest.mark.slow]

BLUE, BLUE_SUBNET = "blue", "10.10.0.0/16"
GREEN, GREEN_SUBNET = "green", "10.11.0.0/16"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, LabState]]:
    for binary in ("etcd", "dockerd", "docker"):
        if shutil.which(binary) is None:
            pytest.skip(f"needs {binary} (deploy/setup.sh installs etcd-server and docker.io)")
    the_lab = Lab(tmp_path_factory.mktemp("dockerlab"), prefix=f"d{os.getpid() % 10000}")
    try:
        state = the_lab.up(2, docker=True)
        yield the_lab, state
    finally:
        the_lab.down()


def docker(host: LabHost, *args: str, check: bool = True, timeout: float = 90.0
           ) -> subprocess.CompletedProcess[str]:
    answer = subprocess.run(["docker", "-H", host.docker.host, *args], capture_output=True,
                            text=True, timeout=timeout, check=False)
    if check and answer.returncode != 0:
        raise AssertionError(f"{host.name}: docker {' '.join(args)}: {answer.stderr}")
    return answer


def address_of(host: LabHost, container: str, network: str = BLUE) -> str:
    return docker(host, "inspect", "-f",
                  f"{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}",
                  container).stdout.strip()


def visible(lab: Lab, host: LabHost) -> set[str]:
    return {e["ip"] for e in lab.client(host).request("GET", "/v1/endpoints")}


def names_of(lab: Lab, host: LabHost, ip: str) -> set[str]:
    """The names `host` sees published for the endpoint at `ip` (name and aliases)."""
    rows = [e for e in lab.client(host).request("GET", "/v1/endpoints") if e["ip"] == ip]
    return {n for e in rows for n in [e.get("name") or "", *e.get("aliases", [])] if n}


def ensure_blue(lab: Lab, state: LabState) -> None:
    h1, h2 = state.hosts
    if BLUE not in docker(h1, "network", "ls", "--format", "{{.Name}}").stdout.split():
        docker(h1, "network", "create", "-d", "vxmesh", "--ipam-driver", "vxmesh", "--subnet",
               BLUE_SUBNET, BLUE)
    lab.wait_for(lambda: BLUE in docker(h2, "network", "ls", "--format",
                                        "{{.Name}}").stdout.split(),
                 "the mirrored network on h2", 15.0)


def plugin_call(host: LabHost, call: str, body: Any) -> tuple[int, Any]:
    payload = None if body is None else json.dumps(body).encode()
    answer = unix_request(str(host.docker.plugin_socket), "POST", f"/{call}", payload,
                          content_type=p.CONTENT_TYPE)
    return answer.status, json.loads(answer.body)


def answer_address(answers: dict[str, list[Any]]) -> str:
    """The address of the endpoint created last in a replay."""
    return str(answers["IpamDriver.RequestAddress"][-1]["Address"].split("/")[0])


def test_docker_calls_replayed_in_order_against_the_agent(lab: tuple[Lab, LabState]) -> None:
    """Docker's golden life of a network, on the real plugin socket of a real agent: answers,
    the handed-back veth (MTU, MAC), the table entry, clean removal, addresses released."""
    the_lab, state = lab
    h1, h2 = state.hosts
    the_lab.client(h1).request("POST", "/v1/networks",
                               {"name": "replay", "subnet": "10.99.0.0/24"})
    the_lab.wait_for(lambda: "replay" in {n["name"] for n in
                                          the_lab.client(h2).request("GET", "/v1/networks")},
                     "network replay on h2", 10.0)
    answers: dict[str, list[Any]] = {}
    handed_back: list[str] = []
    for call, body in golden.LIFE:
        if call == "NetworkDriver.CreateEndpoint" and body["EndpointID"] == golden.WEB:
            first = answers["IpamDriver.RequestAddress"][1]["Address"]  # what we handed out
            body = {**body, "Interface": {**body["Interface"], "Address": first}}
        if call == "IpamDriver.ReleaseAddress" and body["Address"] == "10.99.0.2":
            body = {**body, "Address": first.split("/")[0]}
        status, answer = plugin_call(h1, call, body)
        assert status == 200, (call, answer)
        answers.setdefault(call, []).append(answer)
        if call == "NetworkDriver.Join":
            handed_back.append(answer["InterfaceName"]["SrcName"])
            link = json.loads(subprocess.run(
                ip_netns_exec(h1.netns, ["ip", "-j", "link", "show", handed_back[-1]]),
                capture_output=True, text=True, check=True).stdout)[0]
            assert link["mtu"] == 1450
            mac = answers["NetworkDriver.CreateEndpoint"][-1]["Interface"]["MacAddress"]
            assert link["address"] == mac
            assert answer_address(answers) in visible(the_lab, h1)  # in the table, gossiped
    assert answers["Plugin.Activate"] == [p.ACTIVATE]
    assert answers["IpamDriver.RequestPool"] == [p.pool_answer(ipaddress.ip_network(
        "10.99.0.0/24"))]
    gateway, container, static = answers["IpamDriver.RequestAddress"]
    assert gateway == {"Address": "10.99.0.1/24", "Data": {}}
    assert container["Address"] == first and first.endswith("/24")
    assert static == {"Address": "10.99.0.9/24", "Data": {}}
    assert answers["NetworkDriver.CreateEndpoint"][1] == {
        "Interface": {"MacAddress": mac_for_address("10.99.0.9")}}
    # Leave deleted the veths; every address went back; the network stays (vxmesh made it).
    for name in handed_back:
        gone = subprocess.run(ip_netns_exec(h1.netns, ["ip", "link", "show", name]),
                              capture_output=True, text=True, check=False)
        assert gone.returncode != 0
    assert not {"10.99.0.9", first.split("/")[0]} & visible(the_lab, h1)
    status, answer = plugin_call(h1, "IpamDriver.RequestAddress",
                                 {"PoolID": golden.POOL, "Address": "10.99.0.9"})
    assert status == 200  # released: free again
    status, answer = plugin_call(h2, "IpamDriver.RequestAddress",
                                 {"PoolID": golden.POOL, "Address": "10.99.0.9"})
    assert status == 409 and "10.99.0.9" in answer["Err"]
    plugin_call(h1, "IpamDriver.ReleaseAddress", {"PoolID": golden.POOL, "Address": "10.99.0.9"})


def test_containers_across_hosts(lab: tuple[Lab, LabState]) -> None:
    the_lab, state = lab
    h1, h2 = state.hosts
    ensure_blue(the_lab, state)
    assert BLUE in {n["name"] for n in the_lab.client(h2).request("GET", "/v1/networks")}
    docker(h1, "run", "-d", "--name", "web", "--network", BLUE, "--network-alias", "www",
           IMAGE, "sh", "-c",
           "mkdir -p /www && echo hello from web > /www/index.html && exec httpd -f -p 80 -h /www")
    web = address_of(h1, "web")
    assert ipaddress.ip_address(web) in ipaddress.ip_network(BLUE_SUBNET)
    link = docker(h1, "exec", "web", "ip", "link", "show", "eth0").stdout
    assert "mtu 1450" in link and mac_for_address(web) in link
    inspect = json.loads(docker(h1, "network", "inspect", BLUE).stdout)[0]
    assert [c["Name"] for c in inspect["Containers"].values()] == ["web"]
    across = docker(h2, "run", "--rm", "--network", BLUE, IMAGE, "sh", "-c",
                    f"ping -c1 -W3 {web} && wget -qO- http://{web}/", check=False)
    assert across.returncode == 0 and "hello from web" in across.stdout, across.stderr
    # Names: with the network's gateway as its DNS server, Docker's embedded resolver forwards
    # what it does not know to the agent, which answers the network's names from every host.
    named = the_lab.client(h1).request("POST", "/v1/endpoints", {"name": "named",
                                                                 "network": BLUE})
    gateway = next(n["gateway"] for n in the_lab.client(h2).request("GET", "/v1/networks")
                   if n["name"] == BLUE)
    looked_up = docker(h2, "run", "--rm", "--network", BLUE, "--dns", gateway, IMAGE,
                       "nslookup", "named", check=False)
    the_lab.client(h1).request("DELETE", "/v1/endpoints/named")
    assert named["ip"] in looked_up.stdout, (looked_up.stdout, looked_up.stderr)
    # A container's own name and its --network-alias resolve on every host, as on Docker's
    # overlay (Docker tells the driver no name: the agent reads it from h1's Engine API).
    # (h2 holds blue's entries only while it has an endpoint there: the lookup's container.)
    the_lab.wait_for(lambda: {"web", "www"} <= names_of(the_lab, h1, web),
                     "web's container name and alias published by h1", 30.0)
    for name in ("web", "www"):
        looked_up = docker(h2, "run", "--rm", "--network", BLUE, "--dns", gateway, IMAGE,
                           "nslookup", name, check=False)
        assert web in looked_up.stdout, (name, looked_up.stdout, looked_up.stderr)

    # --ip through the IPAM driver; taken is refused, naming the address and its holder.
    static = str(ipaddress.ip_network(BLUE_SUBNET).network_address + 200)
    docker(h2, "run", "-d", "--name", "pinned", "--network", BLUE, "--ip", static, IMAGE,
           "sleep", "600")
    assert address_of(h2, "pinned") == static
    taken = docker(h1, "run", "--rm", "--network", BLUE, "--ip", static, IMAGE, "true",
                   check=False)
    assert taken.returncode != 0 and static in taken.stderr and "vxmesh" in taken.stderr
    # Two networks stay isolated; a container on both has two interfaces.
    the_lab.client(h2).request("POST", "/v1/networks", {"name": GREEN, "subnet": GREEN_SUBNET})
    the_lab.wait_for(lambda: GREEN in docker(h1, "network", "ls", "--format",
                                             "{{.Name}}").stdout.split(),
                     "network green mirrored into h1's dockerd", 15.0)
    isolated = docker(h2, "run", "--rm", "--network", GREEN, IMAGE, "ping", "-c1", "-W2", web,
                      check=False)
    assert isolated.returncode != 0
    docker(h2, "network", "connect", GREEN, "pinned")
    interfaces = docker(h2, "exec", "pinned", "ip", "-o", "addr").stdout
    assert BLUE_SUBNET.split(".0.0/")[0] in interfaces and "10.11." in interfaces
    # docker rm -f withdraws it from every host.
    assert web in visible(the_lab, h2)
    docker(h1, "rm", "-f", "web")
    the_lab.wait_for(lambda: web not in visible(the_lab, h2), "web withdrawn from h2", 10.0)
    docker(h2, "rm", "-f", "pinned")
    # `docker network rm` on one host deletes the vxmesh network; every dockerd drops it.
    docker(h1, "network", "rm", GREEN)
    assert GREEN not in {n["name"] for n in the_lab.client(h1).request("GET", "/v1/networks")}
    the_lab.wait_for(lambda: GREEN not in docker(h2, "network", "ls", "--format",
                                                 "{{.Name}}").stdout.split(),
                     "network green removed from h2's dockerd", 15.0)


def test_dual_stack_network_gives_containers_their_ipv6_address(
        lab: tuple[Lab, LabState]) -> None:
    """A vxmesh network with an IPv6 subnet is mirrored into every dockerd with --ipv6; a
    container gets its IPv6 address from the vxmesh IPv6 pool and is reached across hosts."""
    the_lab, state = lab
    h1, h2 = state.hosts
    the_lab.client(h1).request("POST", "/v1/networks", {"name": "dual", "subnet": "10.12.0.0/24",
                                                        "subnet6": "fd17:12::/64"})
    try:
        the_lab.wait_for(lambda: "dual" in docker(h2, "network", "ls", "--format",
                                                  "{{.Name}}").stdout.split(),
                         "network dual mirrored into h2's dockerd", 15.0)
        inspect = json.loads(docker(h2, "network", "inspect", "dual").stdout)[0]
        assert inspect["EnableIPv6"] is True
        assert {c["Subnet"] for c in inspect["IPAM"]["Config"]} == {"10.12.0.0/24",
                                                                    "fd17:12::/64"}
        docker(h1, "run", "-d", "--name", "six", "--network", "dual", IMAGE, "sleep", "600")
        six = docker(h1, "inspect", "-f", "{{(index .NetworkSettings.Networks \"dual\")"
                     ".GlobalIPv6Address}}", "six").stdout.strip()
        assert ipaddress.ip_address(six) in ipaddress.ip_network("fd17:12::/64"), six
        assert six in docker(h1, "exec", "six", "ip", "-6", "addr", "show", "eth0").stdout
        rows = {e["ip"]: e for e in the_lab.client(h2).request("GET", "/v1/endpoints")}
        across = docker(h2, "run", "--rm", "--network", "dual", IMAGE, "ping", "-c1", "-W3",
                        six, check=False)
        assert across.returncode == 0, (across.stdout, across.stderr, sorted(rows))
        # docker network create --ipv6 makes a dual-stack vxmesh network
        docker(h2, "network", "create", "-d", "vxmesh", "--ipam-driver", "vxmesh", "--ipv6",
               "--subnet", "10.13.0.0/24", "--subnet", "fd17:13::/64", "made6")
        the_lab.wait_for(lambda: {n["name"]: n["subnet6"] for n in the_lab.client(h1).request(
            "GET", "/v1/networks")}.get("made6") == "fd17:13::/64", "made6 in vxmesh", 15.0)
        overlapping = docker(h1, "network", "create", "-d", "vxmesh", "--ipam-driver", "vxmesh",
                             "--ipv6", "--subnet", "10.14.0.0/24", "--subnet", "fd17:13::/80",
                             "clash6", check=False)
        assert overlapping.returncode != 0 and "made6" in overlapping.stderr, overlapping.stderr
    finally:
        docker(h1, "rm", "-f", "six", check=False)
        for name in ("dual", "made6"):
            docker(h1, "network", "rm", name, check=False)


def test_egress_and_published_ports(lab: tuple[Lab, LabState]) -> None:
    """Egress and -p go through Docker's docker_gwbridge (Join answers no gateway)."""
    the_lab, state = lab
    h1, h2 = state.hosts
    ensure_blue(the_lab, state)
    docker(h1, "run", "-d", "--name", "pub", "--network", BLUE, "-p", "8080:80", IMAGE, "sh",
           "-c", "mkdir -p /www && echo published > /www/index.html && exec httpd -f -p 80 -h /www")
    try:
        fetched = subprocess.run(ip_netns_exec(h2.netns, [
            "curl", "-s", "-m", "5", "--retry", "5", "--retry-connrefused", "--retry-delay", "0",
            f"http://{h1.address}:8080/"]), capture_output=True, text=True, check=False)
        assert fetched.stdout.strip() == "published", fetched
        egress = docker(h1, "exec", "pub", "ping", "-c1", "-W3", "10.77.0.1", check=False)
        assert egress.returncode == 0, egress.stdout  # the switch namespace: beyond the host
    finally:
        docker(h1, "rm", "-f", "pub")


def _loss(output: str) -> tuple[int, int]:
    found = re.search(r"(\d+) packets transmitted, (\d+) packets received", output)
    assert found, output
    return int(found.group(1)), int(found.group(2))


def test_agent_restarts_lose_no_packet_and_dockerd_live_restore(
        lab: tuple[Lab, LabState]) -> None:
    the_lab, state = lab
    h1, h2 = state.hosts
    ensure_blue(the_lab, state)
    docker(h1, "run", "-d", "--name", "pa", "--network", BLUE, IMAGE, "sleep", "3600")
    docker(h2, "run", "-d", "--name", "pb", "--network", BLUE, IMAGE, "sleep", "3600")
    target = address_of(h1, "pa")
    the_lab.wait_for(lambda: target in visible(the_lab, h2), "pa on h2", 10.0)
    try:
        pinger = subprocess.Popen(["docker", "-H", h2.docker.host, "exec", "pb", "ping", "-i",
                                   "0.05", "-c", "240", "-W", "2", target],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        the_lab.stop_agent(state, h1, kill=True)
        the_lab.start_agent(state, h1)
        the_lab.wait_agent_ready(h1, 30.0)
        assert the_lab.stop_agent(state, h2) == 0  # SIGTERM: graceful leave
        the_lab.start_agent(state, h2)
        the_lab.wait_agent_ready(h2, 30.0)
        output, _ = pinger.communicate(timeout=60)
        sent, received = _loss(output)
        assert sent == 240 and received == sent, output

        # dockerd restarted with live-restore: the containers and their path stay.
        pid = h1.docker.pid()
        assert pid is not None
        os.kill(pid, signal.SIGTERM)
        the_lab.wait_for(lambda: h1.docker.pid() is None, "dockerd h1 to stop", 30.0)
        process = h1.docker.start()
        h1.docker.wait_ready(process)
        assert "pa" in docker(h1, "ps", "--format", "{{.Names}}").stdout.split()
        after = docker(h2, "exec", "pb", "ping", "-c3", "-i", "0.2", "-W2", target, check=False)
        assert after.returncode == 0, after.stdout
    finally:
        docker(h1, "rm", "-f", "pa", check=False)
        docker(h2, "rm", "-f", "pb", check=False)


def test_container_removed_while_agent_down_is_cleaned_up(lab: tuple[Lab, LabState]) -> None:
    the_lab, state = lab
    h1, h2 = state.hosts
    ensure_blue(the_lab, state)
    docker(h2, "run", "-d", "--name", "watcher", "--network", BLUE, IMAGE, "sleep", "3600")
    docker(h1, "run", "-d", "--name", "gone", "--network", BLUE, IMAGE, "sleep", "3600")
    address = address_of(h1, "gone")
    the_lab.wait_for(lambda: address in visible(the_lab, h2), "gone on h2", 10.0)
    the_lab.stop_agent(state, h1, kill=True)
    started = time.monotonic()
    docker(h1, "rm", "-f", "gone", timeout=120)  # Docker retries its plugin calls, then gives up
    removal_s = time.monotonic() - started
    the_lab.start_agent(state, h1)
    the_lab.wait_agent_ready(h1, 30.0)
    the_lab.wait_for(lambda: address not in visible(the_lab, h2) | visible(the_lab, h1),
                     "the gone container withdrawn everywhere", 20.0)
    # Its address was released (etcd learns it at h1's next flush of its blocks).
    the_lab.wait_for(lambda: docker(h2, "run", "--rm", "--network", BLUE, "--ip", address, IMAGE,
                                    "true", check=False).returncode == 0,
                     f"{address} free again (docker rm took {removal_s:.0f} s)", 20.0,
                     interval=0.5)
    docker(h2, "rm", "-f", "watcher")


def test_ports_name_the_docker_container(lab: tuple[Lab, LabState]) -> None:
    the_lab, state = lab
    h1 = state.hosts[0]
    docker(h1, "run", "-d", "--name", "hostweb", "--network", "host", IMAGE, "httpd", "-f",
           "-p", "8088")
    try:
        def listed() -> list[dict[str, Any]]:
            rows: list[dict[str, Any]] = the_lab.client(h1).request("GET",
                                                                    "/v1/ports?port=8088/tcp")
            return rows

        the_lab.wait_for(lambda: bool(listed()), "port 8088 listening", 10.0)
        assert {r["container"] for r in listed()} == {"hostweb"}
        assert {r["program"] for r in listed()} == {"httpd"}
        text = subprocess.run(the_lab.exec_argv(state, "h1", ["vxmesh", "ports", "8088/tcp"]),
                              capture_output=True, text=True, check=True).stdout
        assert "hostweb" in text
        refused = subprocess.run(the_lab.exec_argv(state, "h1", [
            "vxmesh", "endpoint", "create", "claim", "--mode", "host", "--port", "8088/tcp"]),
            capture_output=True, text=True, check=False)
        assert refused.returncode == 5 and "container hostweb" in refused.stderr, refused
    finally:
        docker(h1, "rm", "-f", "hostweb")


def test_docker_demo(lab: tuple[Lab, LabState]) -> None:
    the_lab, state = lab
    report = run_docker_demo(the_lab, len(state.hosts))
    assert report["ok"], report
    assert len(report["checks"]) == len(state.hosts) * (len(state.hosts) - 1)


def test_lab_state_records_docker(lab: tuple[Lab, LabState]) -> None:
    the_lab, state = lab
    loaded = the_lab.load()
    assert loaded is not None and loaded.docker
    argv = the_lab.exec_argv(loaded, "h2", ["docker", "ps"])
    assert f"DOCKER_HOST={state.hosts[1].docker.host}" in argv
    assert Path(state.hosts[1].docker.plugin_socket).is_socket()
