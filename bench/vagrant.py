"""The three-VM lab for real: Debian 12 VMs under qemu, etcd on node1, the agent as the
systemd unit on every node, provisioned by deploy/vagrant/provision.sh.

Usage: bench/vagrant.py [--nodes N] [--count PINGS] [--json]

Builds (or takes from its cache) the image of deploy/vagrant/build-box.sh, boots node1..nodeN
(`agent.lab.vm.VmLab`: one network namespace made for the run, a bridge and a tap per VM, no
route out; removed at the end even on failure), provisions them, then measures:
  converged_s     time until every agent sees every member alive;
  walk-through    README's: network blue, endpoints web (node2) and cli (node3), cli pings web;
  lost_on_restart packets lost by two ping streams (node2 web and node3 cli, each to node1's
                  endpoint db) while node1's agent does `systemctl restart`, interleaved with
                  the same streams without a restart (the baseline: A B A B);
  watchdog_restart_s  SIGSTOP of node3's agent until systemd runs a new one (WatchdogSec 30 s,
                  then TimeoutAbortSec 10 s: a stopped process cannot act on SIGABRT, then
                  RestartSec 1 s); watchdog_ready_s until that agent is ready again;
  ipvlan          the reach matrix of ipvlan l2 (eth0) and l3 (eth0.33) endpoints;
  failed_after_halt_s  `systemctl poweroff` of node2 (as `vagrant halt`) until node1 marks it
                  failed.
The last line with --json: `nodes`, `build_s`, `up_s` (boot to ssh + provisioning), `boot_s`,
`provision_s`, `converged_s`, `walkthrough_ping_received`, `watchdog_restart_s`, `watchdog_ready_s`,
`lost_on_restart` (worst round), `lost_baseline` (worst round), `ipvlan_ok`, `ipvlan`,
`failed_after_halt_s`, `accel`. Heavy (three TCG VMs): run it alone on the machine,
`flock /work/bench.lock .venv/bin/python bench/vagrant.py --json`.

May import: agent.lab, the standard library.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from agent.lab import vm
from agent.lab import vm_cluster as cluster

ROUNDS = 2


def run(nodes: int, count: int) -> dict[str, Any]:
    started = time.monotonic()
    image = vm.build_image()
    build_s = time.monotonic() - started
    result: dict[str, Any] = {"nodes": nodes, "build_s": round(build_s, 1),
                              "image_build_s_when_made": image.build_seconds}
    with tempfile.TemporaryDirectory(prefix="vxmesh-vagrant-bench-") as tmp:
        directory = Path(tmp)
        accel = vm.choose_accel(image, directory)
        result["accel"] = accel
        wheels = vm.wheelhouse(directory)
        with vm.VmLab(directory, "x22b", image, cluster.node_specs(nodes), accel=accel) as lab:
            up = cluster.bring_up(lab, wheels)
            result.update(boot_s=round(up.boot_s, 1), provision_s=round(up.provision_s, 1),
                          up_s=round(up.boot_s + up.provision_s, 1))
            names = lab.names()
            result["converged_s"] = round(cluster.converge(lab, names), 1)
            result.update(walkthrough(lab, names, count))
            result["exposure"] = cluster.security_exposure(lab, names[0])
            watchdog = cluster.watchdog_restart(lab, names[-1])
            result["watchdog_restart_s"] = round(watchdog.new_process_s, 1)
            result["watchdog_ready_s"] = round(watchdog.ready_s, 1)
            cluster.ipvlan_networks(lab, names[0])
            matrix = cluster.ipvlan_matrix(lab, names[1:3] if nodes >= 3 else names)
            result["ipvlan"] = matrix
            result["ipvlan_ok"] = all(matrix.values())
            if nodes >= 2:
                lab.power_off(names[1])
                result["failed_after_halt_s"] = round(
                    cluster.marked_failed(lab, names[0], names[1]), 1)
    return result


def walkthrough(lab: vm.VmLab, names: list[str], count: int) -> dict[str, Any]:
    """README's walk-through, then the restart rounds (A: baseline, B: node1's agent restarts)."""
    first, web_node, cli_node = names[0], names[1 % len(names)], names[2 % len(names)]
    cluster.vxmesh(lab, first, "network create blue --subnet 10.10.0.0/16")
    web = cluster.create_endpoint(lab, web_node, "web", "blue")
    cluster.create_endpoint(lab, cli_node, "cli", "blue")
    db = cluster.create_endpoint(lab, first, "db", "blue")
    pinged = cluster.ping(lab, cli_node, "cli", web, count=3)
    streams = [(web_node, "web", db), (cli_node, "cli", db)]
    rounds: list[dict[str, Any]] = []
    for round_no in range(ROUNDS):
        for restart in (False, True):
            action = (lambda: cluster.restart_agent(lab, first)) if restart else None
            counts = cluster.pings_during(lab, streams, action, count=count)
            rounds.append({"round": round_no, "restart": restart,
                           "sent": sum(c.sent for c in counts),
                           "lost": sum(c.lost for c in counts)})
    return {"walkthrough_ping_received": pinged.received, "walkthrough_ping_sent": pinged.sent,
            "restart_rounds": rounds,
            "lost_on_restart": max(r["lost"] for r in rounds if r["restart"]),
            "lost_baseline": max(r["lost"] for r in rounds if not r["restart"])}


def format_table(result: dict[str, Any]) -> str:
    lines = [f"{'measure':<28} value"]
    for key in ("accel", "build_s", "boot_s", "provision_s", "up_s", "converged_s",
                "walkthrough_ping_received", "watchdog_restart_s", "watchdog_ready_s",
                "failed_after_halt_s",
                "lost_baseline", "lost_on_restart", "exposure"):
        if key in result:
            lines.append(f"{key:<28} {result[key]}")
    for r in result.get("restart_rounds", []):
        label = "restart node1's agent" if r["restart"] else "baseline (no restart)"
        lines.append(f"  round {r['round']} {label:<24} lost {r['lost']} of {r['sent']}")
    for pair, ok in result.get("ipvlan", {}).items():
        lines.append(f"  ipvlan {pair:<26} {'reached' if ok else 'NOT reached'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--count", type=int, default=150,
                        help="pings per stream and round (0.2 s apart)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("needs root (network namespace, taps, mmdebstrap)")
    if not 1 <= args.nodes <= 3 or args.count < 10:
        parser.error("--nodes 1..3, --count >= 10")
    result = run(args.nodes, args.count)
    print(format_table(result))
    if args.json:
        print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
