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
`failed_after_halt_s`, `accel`, `errors` (a step that failed: its message). The steps are
agent.lab.vm_cluster.run_tier's, the same as `vxmesh lab vm`. Heavy (three TCG VMs, about 25
minutes): `nice -n 19 .venv/bin/python bench/vagrant.py --json`; no figure has a target, so
the machine's load average is printed with them.

May import: agent.lab, agent.terminal, the standard library.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from agent.lab import vm_cluster as cluster
from agent.terminal import Progress


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
    load_before = os.getloadavg()[0]
    result = cluster.run_tier(args.nodes, args.count, "x22b", progress=Progress())
    result["load_before"], result["load_after"] = round(load_before, 2), round(
        os.getloadavg()[0], 2)
    print(cluster.tier_table(result))
    print(f"load average (1 min) {result['load_before']} before, {result['load_after']} after")
    if args.json:
        print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
