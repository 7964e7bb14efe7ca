"""CNI ADD and DEL latency: the vxmesh plugin against Debian's reference bridge + host-local.

Usage: bench/cni.py [--runs N] [--json]        (root; run it under `flock /work/bench.lock`)

A lab of two namespace hosts (`agent.lab.hosts.Lab`: etcd, one real agent per host) in a
directory and with a namespace prefix of its own. On host h1, as a runtime would (the plugin
executed in the host's namespace with `CNI_*` variables and the configuration on stdin, see
`agent.cni.invoke.run_plugin`), each run makes a fresh container namespace and times, from exec
to exit of the plugin process:

| system | configuration                                                                 |
|--------|-------------------------------------------------------------------------------|
| vxmesh | `{"type": "vxmesh", "network": "bench"}`: the agent allocates from etcd-backed |
|        | IPAM, makes the veth into the namespace, publishes the endpoint by gossip     |
| ref    | `{"type": "bridge", "ipam": {"type": "host-local"}}` from containernetworking-  |
|        | plugins (Go): a local bridge, veth, address from a file-backed pool            |

ADD then DEL for both systems in every run, the order alternating (vxmesh first in even
runs, the reference first in odd ones) so machine noise falls on both. One container of each
stays attached for the whole run, so neither pays for creating its network or bridge inside
the measurement. `add_ratio` = vxmesh ADD p50 / reference ADD p50 (target: at most 1.5).

Rules: everything runs in namespaces this script creates and removes (even on failure);
traffic none. May import: agent.* (cni.invoke, lab), the standard library.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from agent.cni.conflist import conflist  # noqa: E402
from agent.cni.invoke import Attachment, PluginRun, plugin_dir, run_plugin  # noqa: E402
from agent.lab.hosts import Lab  # noqa: E402
from agent.lab.namespaces import run  # noqa: E402

NETWORK = "bench"
SUBNET = "10.231.0.0/16"
REF_SUBNET = "10.232.0.0/16"
VERSION = "1.0.0"


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


class Bench:
    """The lab, the two configurations, and the container namespaces of one bench run."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.prefix = f"cb{os.getpid() % 100000}"
        self.lab = Lab(directory / "lab", self.prefix)
        self.bin_dir = plugin_dir(directory)
        self.namespaces: list[str] = []
        self.host = ""
        self.configs: dict[str, dict[str, Any]] = {}

    def start(self) -> None:
        state = self.lab.up(2)
        h1 = state.hosts[0]
        self.host = h1.netns
        self.lab.client(h1).request("POST", "/v1/networks", {"name": NETWORK, "subnet": SUBNET})
        vxmesh = conflist(NETWORK, socket=str(h1.socket))["plugins"][0]
        vxmesh.pop("capabilities")
        self.configs["vxmesh"] = {"cniVersion": VERSION, "name": NETWORK, **vxmesh}
        self.configs["ref"] = {
            "cniVersion": VERSION, "name": "refbench", "type": "bridge",
            "bridge": f"{self.prefix}br"[:15], "isGateway": True,
            "ipam": {"type": "host-local", "subnet": REF_SUBNET,
                     "dataDir": str(self.directory / "host-local")}}

    def container(self, tag: str) -> Attachment:
        name = f"{self.prefix}c{tag}"
        run(["ip", "netns", "add", name])
        self.namespaces.append(name)
        return Attachment(container_id=name, netns=f"/run/netns/{name}")

    def drop(self, attachment: Attachment) -> None:
        name = attachment.container_id
        run(["ip", "netns", "delete", name], check=False)
        if name in self.namespaces:
            self.namespaces.remove(name)

    def call(self, system: str, command: str, attachment: Attachment) -> float:
        """One plugin run; its wall time in milliseconds (a failure stops the bench)."""
        started = time.perf_counter()
        done: PluginRun = run_plugin(self.bin_dir, self.configs[system]["type"], command,
                                     self.configs[system], attachment=attachment,
                                     host_netns=self.host)
        took = (time.perf_counter() - started) * 1000
        if done.code != 0:
            raise RuntimeError(f"{system} {command} failed: {done.stdout} {done.stderr}")
        return took

    def close(self) -> None:
        for name in list(self.namespaces):
            run(["ip", "netns", "delete", name], check=False)
        self.lab.down()


def measure(bench: Bench, runs: int) -> dict[str, dict[str, list[float]]]:
    times: dict[str, dict[str, list[float]]] = {
        system: {"ADD": [], "DEL": []} for system in ("vxmesh", "ref")}
    anchors = {system: bench.container(f"a{system[0]}") for system in times}
    for system, anchor in anchors.items():  # networks and bridges exist before we time
        bench.call(system, "ADD", anchor)
    for index in range(runs):
        order = ("vxmesh", "ref") if index % 2 == 0 else ("ref", "vxmesh")
        for system in order:
            attachment = bench.container(f"{index}{system[0]}")
            times[system]["ADD"].append(bench.call(system, "ADD", attachment))
            times[system]["DEL"].append(bench.call(system, "DEL", attachment))
            bench.drop(attachment)
    for system, anchor in anchors.items():
        bench.call(system, "DEL", anchor)
        bench.drop(anchor)
    return times


def table(times: dict[str, dict[str, list[float]]]) -> str:
    rows = ["| system | ADD p50 ms | ADD p99 ms | DEL p50 ms | DEL p99 ms | runs |",
            "|--------|-----------:|-----------:|-----------:|-----------:|-----:|"]
    for system, by_command in times.items():
        add, delete = by_command["ADD"], by_command["DEL"]
        rows.append(f"| {system} | {statistics.median(add):.1f} | {percentile(add, 0.99):.1f} | "
                    f"{statistics.median(delete):.1f} | {percentile(delete, 0.99):.1f} | "
                    f"{len(add)} |")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="ADD+DEL pairs per system")
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    args = parser.parse_args(argv)
    if not 1 <= args.runs <= 10_000:
        parser.error("--runs must be 1..10000")
    if os.geteuid() != 0:
        parser.error("run as root (the bench builds network namespaces)")
    with tempfile.TemporaryDirectory(prefix="vxmesh-bench-cni-") as tmp:
        bench = Bench(Path(tmp))
        try:
            bench.start()
            times = measure(bench, args.runs)
        finally:
            bench.close()
    print(f"load average after: {Path('/proc/loadavg').read_text().strip()}")
    print(table(times))
    vx, ref = times["vxmesh"], times["ref"]
    summary = {
        "runs": args.runs,
        "add_ms_p50": round(statistics.median(vx["ADD"]), 2),
        "add_ms_p99": round(percentile(vx["ADD"], 0.99), 2),
        "del_ms_p50": round(statistics.median(vx["DEL"]), 2),
        "ref_add_ms_p50": round(statistics.median(ref["ADD"]), 2),
        "ref_del_ms_p50": round(statistics.median(ref["DEL"]), 2),
        "add_ratio": round(statistics.median(vx["ADD"]) / statistics.median(ref["ADD"]), 3),
    }
    print(f"\nvxmesh ADD p50 / reference ADD p50 = {summary['add_ratio']} (target <= 1.5)")
    if args.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
