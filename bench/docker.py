"""Docker containers on a vxmesh network: `docker run` time and time to the first cross-host reply.

Usage: bench/docker.py [--containers N] [--json]     (root; run under `flock /work/bench.lock`)

A 2-host lab (`agent.lab.hosts.Lab`, its own directory and prefix) with one real dockerd per
host and the agent as its network and IPAM plugin. A vxmesh network `bench` (10.61.0.0/16) is
created with `vxmesh network create` on h1 and mirrored into both daemons by the agents; a
long-running probe container sits on it on h2. Then N containers `httpd -f -p 80` are started
on h1 one after another, each with `docker run -d --network bench --ip A` and, interleaved
(A B A B), the same container on Docker's own bridge driver (a user-defined bridge network
10.62.0.0/16 on h1, so `--ip` works there too: the baseline).

Per container: `run_s`, the wall time of `docker run -d`; `first_reply_s`, from the start of
`docker run` until a TCP connection to port 80 of the container's address succeeds from the
probe container on h2 (vxmesh) or from the h1 host namespace (bridge: local reply only). The
prober is a Python loop entered into the probe's network namespace (`nsenter --net=/proc/PID/
ns/net`) before `docker run` starts, connecting every 5 ms with a 50 ms timeout. It first sets
the ARP retransmit time of its namespace to 10 ms (both systems alike): an address asked for
before it exists would otherwise be asked again only after the default 1 s, and every figure
would measure that timer instead of the network.

`after_run_s` is the part of `first_reply_s` after `docker run` returned (0 when the container
answered before the CLI returned): the wait a user sees between "Docker says it runs" and
"another host reaches it".

Targets at N=50 (issue 12): first cross-host reply p99 <= 1 s; docker run on vxmesh <= 1.3x the
bridge baseline. JSON last line: containers, run_s_p50, run_s_p50_bridge, run_ratio,
first_reply_s_p50, first_reply_s_p99 (plus the bridge's first-reply figures and p99s).

Rules: everything runs inside the lab's namespaces, which are removed at the end (even on
failure or Ctrl-C); processes are stopped by pid.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from underlay.netns_exec import nsenter_net, nsenter_pid_net

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from agent.lab.docker import IMAGE  # noqa: E402
from agent.lab.hosts import Lab, LabHost  # noqa: E402
from agent.terminal import Progress, render_table  # noqa: E402

NETWORK, SUBNET = "bench", ipaddress.ip_network("10.61.0.0/16")
BRIDGE, BRIDGE_SUBNET = "benchbr", ipaddress.ip_network("10.62.0.0/16")
REPLY_TIMEOUT = 15.0

PROBER = """
import glob, socket, sys, time
host, deadline = sys.argv[1], time.monotonic() + float(sys.argv[2])
for knob in glob.glob("/proc/sys/net/ipv4/neigh/*/retrans_time_ms"):
    with open(knob, "w") as f:
        f.write("10")
print("ready", flush=True)
while time.monotonic() < deadline:
    s = socket.socket()
    s.settimeout(0.05)
    try:
        s.connect((host, 80))
        print(repr(time.monotonic()), flush=True)
        break
    except OSError:
        time.sleep(0.005)
    finally:
        s.close()
else:
    print("timeout", flush=True)
"""


def docker(host: LabHost, *args: str, timeout: float = 60.0) -> str:
    proc = subprocess.run(["docker", "-H", host.docker.host, *args], capture_output=True,
                          text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)} on {host.name}: {proc.stderr.strip()}")
    return proc.stdout.strip()


def start_prober(netns_argv: list[str], address: str) -> subprocess.Popen[str]:
    prober = subprocess.Popen([*netns_argv, sys.executable, "-c", PROBER, address,
                               str(REPLY_TIMEOUT)], stdout=subprocess.PIPE, text=True)
    assert prober.stdout is not None
    if prober.stdout.readline().strip() != "ready":
        raise RuntimeError("prober did not start")
    return prober


def one(host: LabHost, network: str, address: str, name: str,
        prober_netns: list[str]) -> tuple[float, float]:
    prober = start_prober(prober_netns, address)
    try:
        start = time.monotonic()
        docker(host, "run", "-d", "--name", name, "--network", network, "--ip", address, IMAGE,
               "httpd", "-f", "-p", "80")
        run_s = time.monotonic() - start
        assert prober.stdout is not None
        line = prober.stdout.readline().strip()
        prober.wait(timeout=REPLY_TIMEOUT + 5)
    finally:
        if prober.poll() is None:
            prober.kill()
            prober.wait()
    if line in ("timeout", ""):
        raise RuntimeError(f"{name} ({address} on {network}) never answered")
    return run_s, float(line) - start


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def wait_docker_network(lab: Lab, host: LabHost, name: str, timeout: float = 20.0) -> None:
    lab.wait_for(lambda: name in docker(host, "network", "ls", "--format", "{{.Name}}").split(),
                 f"docker network {name} on {host.name}", timeout)


def run(args: argparse.Namespace) -> dict[str, Any]:
    lab = Lab(Path(f"/run/vxmesh-bench-docker-{os.getpid()}"), f"xbd{os.getpid() % 10000}",
              progress=Progress(quiet=args.json))
    try:
        state = lab.up(2, docker=True)
        h1, h2 = state.hosts
        lab.client(h1).request("POST", "/v1/networks", {"name": NETWORK, "subnet": str(SUBNET)})
        for host in (h1, h2):
            wait_docker_network(lab, host, NETWORK)
        docker(h1, "network", "create", "--subnet", str(BRIDGE_SUBNET), BRIDGE)
        docker(h2, "run", "-d", "--name", "probe", "--network", NETWORK, IMAGE, "sleep", "3600")
        probe_pid = docker(h2, "inspect", "-f", "{{.State.Pid}}", "probe")
        probe_netns = nsenter_pid_net(int(probe_pid), [])
        h1_netns = nsenter_net(h1.netns, [])
        rows: list[dict[str, Any]] = []
        for i in range(args.containers):
            vx_address = str(SUBNET.network_address + 256 + i)
            br_address = str(BRIDGE_SUBNET.network_address + 256 + i)
            for system, network, address, prober in (
                    ("vxmesh", NETWORK, vx_address, probe_netns),
                    ("bridge", BRIDGE, br_address, h1_netns)):
                run_s, reply_s = one(h1, network, address, f"{system}-{i}", prober)
                rows.append({"i": i, "system": system, "run_s": round(run_s, 3),
                             "first_reply_s": round(reply_s, 3),
                             "after_run_s": round(max(0.0, reply_s - run_s), 3)})
                print(f"{system}-{i}: run {run_s:.3f} s, first reply {reply_s:.3f} s",
                      file=sys.stderr)
        return summarize(args.containers, rows)
    finally:
        lab.down()


def summarize(n: int, rows: list[dict[str, Any]]) -> dict[str, Any]:
    vx = [r for r in rows if r["system"] == "vxmesh"]
    br = [r for r in rows if r["system"] == "bridge"]
    run_vx = statistics.median(r["run_s"] for r in vx)
    run_br = statistics.median(r["run_s"] for r in br)
    reply_vx = [r["first_reply_s"] for r in vx]
    reply_br = [r["first_reply_s"] for r in br]
    return {
        "containers": n,
        "run_s_p50": round(run_vx, 3),
        "run_s_p99": round(percentile([r["run_s"] for r in vx], 0.99), 3),
        "run_s_p50_bridge": round(run_br, 3),
        "run_s_p99_bridge": round(percentile([r["run_s"] for r in br], 0.99), 3),
        "run_ratio": round(run_vx / run_br, 3),
        "first_reply_s_p50": round(statistics.median(reply_vx), 3),
        "first_reply_s_p99": round(percentile(reply_vx, 0.99), 3),
        "first_reply_s_p50_bridge": round(statistics.median(reply_br), 3),
        "first_reply_s_p99_bridge": round(percentile(reply_br, 0.99), 3),
        "after_run_s_p50": round(statistics.median(r["after_run_s"] for r in vx), 3),
        "after_run_s_p99": round(percentile([r["after_run_s"] for r in vx], 0.99), 3),
        "after_run_s_p99_bridge": round(percentile([r["after_run_s"] for r in br], 0.99), 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--containers", type=int, default=50, help="containers per system")
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    args = parser.parse_args(argv)
    if args.containers < 1:
        parser.error(f"--containers {args.containers}: at least 1")
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    result = run(args)
    table = [{"figure": key, "value": value} for key, value in result.items()]
    with contextlib.redirect_stdout(sys.stderr if args.json else sys.stdout):
        print(render_table(table, ["figure", "value"]))
        print(f"targets: first_reply_s_p99 <= 1.0 s ({result['first_reply_s_p99']}); "
              f"run_ratio <= 1.3 ({result['run_ratio']})")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
