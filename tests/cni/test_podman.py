"""Real Podman (Debian's 4.3, rootful, CNI backend) on two lab hosts, on a vxmesh network.

`vxmesh cni install blue` on each host, then `podman run --network blue`: containers on h1
and h2 reach each other across the overlay, `-p 8080:80` on h1 answers from h2's host, an
agent killed with SIGKILL while containers talk costs no packet, and `podman rm` leaves no
attachment, veth or address behind.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from agent.cli.main import main
from agent.lab.hosts import LabHost
from agent.lab.namespaces import run
from tests.cni.conftest import NETWORK, CniLab
from underlay.netns_exec import nsenter_net

pytestmark = [pytest.mark.kernel, pytest.mark.etcd, pytest.mark.slow]

IMAGE = "vxmesh/busybox:latest"


def podman(cl: CniLab, host: LabHost, *args: str, timeout: float = 120) -> str:
    answer = cl.lab.podman_host(host).run(list(args), timeout=timeout)
    assert answer.returncode == 0, (args, answer.stdout, answer.stderr)
    return answer.stdout.strip()


def inspect(cl: CniLab, host: LabHost, name: str) -> dict[str, Any]:
    value: list[dict[str, Any]] = json.loads(podman(cl, host, "inspect", name))
    return value[0]


def container_netns(cl: CniLab, host: LabHost, name: str) -> str:
    return Path(inspect(cl, host, name)["NetworkSettings"]["SandboxKey"]).name


def container_ip(cl: CniLab, host: LabHost, name: str) -> str:
    return str(inspect(cl, host, name)["NetworkSettings"]["Networks"][NETWORK]["IPAddress"])


def attachments(cl: CniLab, host: LabHost) -> set[str]:
    return {e["name"] for e in cl.lab.client(host).request("GET", "/v1/endpoints")
            if e.get("local") and str(e["name"]).startswith("cni-")}


def install(cl: CniLab, host: LabHost, capsys: pytest.CaptureFixture[str]) -> None:
    directory = cl.lab.podman_host(host).cni_conf_dir
    assert main(["--socket", str(host.socket), "cni", "install", NETWORK,
                 "--dir", str(directory)]) == 0
    assert f"wrote {directory}/{NETWORK}.conflist" in capsys.readouterr().out


def install_by_lab_exec(cl: CniLab, host: LabHost) -> None:
    """`vxmesh lab exec hN -- vxmesh cni install NET`: the host's own CNI config dir."""
    argv = cl.lab.exec_argv(cl.state, host.name, ["vxmesh", "cni", "install", NETWORK])
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done
    assert (cl.lab.podman_host(host).cni_conf_dir / f"{NETWORK}.conflist").exists()


def test_lab_exec_runs_the_hosts_own_podman(cni_lab: CniLab) -> None:
    argv = cni_lab.lab.exec_argv(cni_lab.state, "h2", ["podman", "ps"])
    podman_host = cni_lab.lab.podman_host(cni_lab.h2)
    assert argv[:3] == nsenter_net(cni_lab.h2.netns, [])  # h2's network namespace
    assert f"CONTAINERS_CONF={podman_host.conf}" in argv and argv[-1] == "ps"
    assert "--root" in argv and str(podman_host.root) in argv
    assert f'network_config_dir = "{podman_host.cni_conf_dir}"' in podman_host.conf.read_text()


def test_podman_on_two_hosts(cni_lab: CniLab, capsys: pytest.CaptureFixture[str]) -> None:
    h1, h2 = cni_lab.h1, cni_lab.h2
    install(cni_lab, h1, capsys)
    install_by_lab_exec(cni_lab, h2)
    podman(cni_lab, h1, "run", "-d", "--name", "web", "--network", NETWORK, "-p", "8080:80",
           IMAGE, "sh", "-c", "echo hello from h1 > /var/www/index.html && "
                              "exec httpd -f -p 80 -h /var/www")
    podman(cni_lab, h2, "run", "-d", "--name", "cli", "--network", NETWORK, IMAGE,
           "sleep", "600")
    try:
        web, cli = container_ip(cni_lab, h1, "web"), container_ip(cni_lab, h2, "cli")
        assert attachments(cni_lab, h1) and attachments(cni_lab, h2)
        # Across the overlay, both ways, by podman exec in the containers.
        podman(cni_lab, h2, "exec", "cli", "ping", "-c", "2", "-W", "2", web)
        podman(cni_lab, h1, "exec", "web", "ping", "-c", "2", "-W", "2", cli)
        assert podman(cni_lab, h2, "exec", "cli", "wget", "-q", "-O", "-",
                      f"http://{web}/") == "hello from h1"
        # The published port, from the other host's own namespace (portmap's DNAT on h1).
        page = run(["curl", "-s", "-m", "5", f"http://{h1.address}:8080/"], netns=h2.netns,
                   check=False)
        assert page.stdout.strip() == "hello from h1", page
        # kill -9 of h1's agent while cli pings web: not one packet lost.
        stream = subprocess.Popen(
            nsenter_net(container_netns(cni_lab, h2, "cli"),
                        ["ping", "-i", "0.01", "-c", "400", "-W", "1", web]),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            cni_lab.lab.wait_for(lambda: stream.poll() is None, "ping to start", 5)
            cni_lab.lab.stop_agent(cni_lab.state, h1, kill=True)
            cni_lab.lab.start_agent(cni_lab.state, h1)
            cni_lab.lab.wait_agent_ready(h1, 60)
            output, _ = stream.communicate(timeout=60)
        finally:
            if stream.poll() is None:
                stream.kill()
                stream.wait()
        sent = re.search(r"(\d+) packets transmitted, (\d+) received", output)
        assert sent is not None and sent.group(1) == sent.group(2) == "400", output
        assert attachments(cni_lab, h1), "the restarted agent adopted the container"
    finally:
        podman(cni_lab, h1, "rm", "-f", "-t", "0", "web")
        podman(cni_lab, h2, "rm", "-f", "-t", "0", "cli")
    assert attachments(cni_lab, h1) == attachments(cni_lab, h2) == set()
    for host in (h1, h2):
        links = run(["ip", "-o", "link", "show"], netns=host.netns).stdout
        assert "vxep" not in links
        assert "8080" not in run(["iptables-save"], netns=host.netns).stdout
