"""`vxmesh lab demo --docker`: Docker containers on three hosts talking over a vxmesh network.

Owns: the demo's steps on a lab running dockerd per host (brought up with `--docker` if it is
not): `docker network create -d vxmesh --ipam-driver vxmesh --subnet 10.201.0.0/16 ddemo` on
h1, the wait until every other host's dockerd holds the mirrored network, one `httpd`
container per host serving its own page, then from every host a throw-away container that
pings and fetches every other host's web container across the overlay, and the report.

May import: agent.lab (hosts, docker), agent.terminal, the standard library.
"""

from __future__ import annotations

import re
import subprocess
import time
from typing import Any

from agent.lab.docker import IMAGE
from agent.lab.hosts import Lab, LabError, LabHost
from agent.terminal import render_table

NETWORK = "ddemo"
SUBNET = "10.201.0.0/16"


def docker(host: LabHost, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", "-H", host.docker.host, *args], capture_output=True,
                          text=True, timeout=timeout, check=False)


def _must(host: LabHost, *args: str) -> str:
    answer = docker(host, *args)
    if answer.returncode != 0:
        raise LabError(f"{host.name}: docker {' '.join(args)}: {answer.stderr.strip()}")
    return answer.stdout.strip()


def run_docker_demo(lab: Lab, hosts: int) -> dict[str, Any]:
    loaded = lab.load()
    if loaded is None or not loaded.docker or not all(lab.agent_runs(h) for h in loaded.hosts):
        state = lab.up(len(loaded.hosts) if loaded is not None else hosts, docker=True)
    else:
        state = loaded
    progress = lab.progress
    first = state.hosts[0]
    report: dict[str, Any] = {"hosts": [h.name for h in state.hosts], "network": NETWORK}
    if NETWORK not in _must(first, "network", "ls", "--format", "{{.Name}}").split():
        with progress.step(f"h1: docker network create -d vxmesh --ipam-driver vxmesh "
                           f"--subnet {SUBNET} {NETWORK}"):
            _must(first, "network", "create", "-d", "vxmesh", "--ipam-driver", "vxmesh",
                  "--subnet", SUBNET, NETWORK)
    started = time.monotonic()
    with progress.step("waiting until every host's dockerd holds the network"):
        for host in state.hosts:
            lab.wait_for(lambda h=host: NETWORK in _must(  # type: ignore[misc]
                h, "network", "ls", "--format", "{{.Name}}").split(),
                f"network {NETWORK} in {host.name}'s dockerd", 30.0)
    report["mirrored_seconds"] = round(time.monotonic() - started, 3)
    webs: dict[str, str] = {}
    for host in state.hosts:
        name = f"web-{host.name}"
        if docker(host, "inspect", name).returncode != 0:
            with progress.step(f"{host.name}: docker run -d --name {name} --network {NETWORK}"):
                _must(host, "run", "-d", "--name", name, "--network", NETWORK, IMAGE, "sh",
                      "-c", f"mkdir -p /www && echo hello from {name} on {host.name} "
                      "> /www/index.html && exec httpd -f -p 80 -h /www")
        webs[host.name] = _must(host, "inspect", "-f",
                                f"{{{{(index .NetworkSettings.Networks \"{NETWORK}\")"
                                ".IPAddress}}", name)
    report["containers"] = [{"host": h, "container": f"web-{h}", "ip": ip}
                            for h, ip in webs.items()]
    report["checks"] = []
    for source in state.hosts:
        for target in state.hosts:
            if source is target:
                continue
            ip = webs[target.name]
            with progress.step(f"{source.name}: container pings and fetches web-{target.name}"):
                script = (f"ping -c1 -W2 {ip} && wget -qO- http://{ip}/")
                answer = docker(source, "run", "--rm", "--network", NETWORK, IMAGE, "sh", "-c",
                                script)
            rtt = re.search(r"time=([\d.]+) ms", answer.stdout)
            body = answer.stdout.strip().splitlines()[-1] if answer.stdout.strip() else ""
            report["checks"].append({"from": source.name, "to": f"web-{target.name}",
                                     "ip": ip, "ok": answer.returncode == 0,
                                     "rtt_ms": float(rtt.group(1)) if rtt else None,
                                     "http": body if answer.returncode == 0 else
                                     answer.stderr.strip()[-80:]})
    report["ok"] = all(c["ok"] for c in report["checks"])
    return report


def print_docker_demo(report: dict[str, Any]) -> None:
    print(f"\nDocker network {report['network']} (driver and IPAM vxmesh) was in every host's "
          f"dockerd {report['mirrored_seconds']} s after it was created on h1\n")
    print(render_table(report["containers"], ["host", "container", "ip"]))
    print()
    print(render_table(report["checks"], ["from", "to", "ip", "ok", "rtt_ms", "http"]))
    print(f"\ndemo {'passed' if report['ok'] else 'FAILED'}. The lab keeps running: try "
          "`vxmesh lab exec h1 -- docker ps`, `vxmesh lab exec h2 -- docker network inspect "
          f"{report['network']}`; remove it all with `vxmesh lab down`.")
