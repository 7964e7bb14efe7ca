"""Agent restarts and crashes against running traffic: vxmesh's agent-down grace vs without it.

Usage: bench/restart.py [--repeats N] [--long SECONDS] [--kill SECONDS] [--json]

Builds a 3-host lab (`agent.lab.hosts.Lab`, its own directory and prefix; removed at the end
even on failure), one overlay network, one endpoint per host. Every fault runs under two probe
streams of `--rate` ICMP echoes per second (`agent.lab.probe_stream`, h1 -> h2 and h2 -> h1)
from before the fault until 2 s after the agent is back and in sync, and counts the probes lost
(both directions together) and the longest outage. Two configurations of the same lab, all
three agents restarted between them, interleaved (A B A B, `--repeats` times):
  vxmesh:   the defaults (SIGTERM does not leave; a failed member whose host answers keeps
            its entries for 600 s);
  baseline: `dataplane.agent_down_grace = 0` and `node.leave_on_stop = true`: what vxmesh did
            before (and Docker's NetworkDB does): a stop leaves, a failure withdraws at once.
Faults: SIGTERM and an immediate restart of h2's agent (`systemctl restart`); kill -9 of h2's
agent and a restart `--kill` seconds later (30); once per run, in the vxmesh configuration,
kill -9 for `--long` seconds (120; 0 skips it); and a dead host: h3's link down and its agent
killed, timed until h1 and h2 hold none of h3's entries (view and kernel), then restored.

With --json the last line is one JSON object: `lost_sigterm_restart`, `lost_kill_30s`,
`lost_kill_120s` (worst repeat, vxmesh), `lost_baseline_sigterm_restart`,
`lost_baseline_kill_30s` (worst repeat, baseline), `withdraw_dead_host_s` (worst, vxmesh),
`withdraw_dead_host_baseline_s`, and `runs` with every measurement. Run it alone on the
machine: `flock /work/bench.lock .venv/bin/python bench/restart.py --json`.

May import: agent.lab, underlay.netns_exec, the standard library.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agent.lab.hosts import Lab, LabHost, LabState
from agent.lab.probe_stream import ProbeStream, StreamReport
from underlay.netns_exec import ip_netns_exec

NETWORK = "bench"
SUBNET = "10.216.0.0/16"
CONFIGS = {
    "vxmesh": {},
    "baseline": {"VXMESH_DATAPLANE_AGENT_DOWN_GRACE": "0", "VXMESH_NODE_LEAVE_ON_STOP": "true"},
}
SETTLE = 2.0  # seconds the streams run on after recovery


@dataclass(frozen=True)
class Measurement:
    config: str
    fault: str
    lost: int  # probes lost, both directions
    longest_outage_s: float
    sent: int
    seconds: float  # fault start to recovery (agent ready), or to withdrawal for a dead host


class RestartBench:
    def __init__(self, lab: Lab, rate: float) -> None:
        self.lab = lab
        self.rate = rate
        self.state: LabState | None = None
        self.ips: dict[str, str] = {}
        self.netns: dict[str, str] = {}
        self.config = "vxmesh"

    # -- set-up -----------------------------------------------------------------------------

    def build(self) -> None:
        self.state = state = self.lab.up(3)
        self.lab.client(state.hosts[0]).request("POST", "/v1/networks",
                                                {"name": NETWORK, "subnet": SUBNET})
        for host in state.hosts:
            endpoint = self.lab.client(host).request(
                "POST", "/v1/endpoints", {"name": f"ep-{host.name}", "network": NETWORK})
            self.ips[host.name], self.netns[host.name] = endpoint["ip"], endpoint["netns"]
        self.wait_everyone_holds()

    def use(self, config: str) -> None:
        """Restart every agent with `config`'s settings (one at a time, each back in sync)."""
        state = self._state()
        for host in state.hosts:
            self.lab.stop_agent(state, host)
            self.lab.start_agent(state, host, dict(CONFIGS[config]))
            self.lab.wait_agent_ready(host, 60)
        self.config = config
        self.wait_everyone_holds()

    # -- faults -----------------------------------------------------------------------------

    def sigterm_restart(self) -> Measurement:
        _, h2, _ = self._state().hosts
        return self._under_streams("sigterm_restart", lambda: self._restart(h2, kill=False,
                                                                            down_s=0.0))

    def kill(self, seconds: float) -> Measurement:
        _, h2, _ = self._state().hosts
        return self._under_streams(f"kill_{seconds:g}s",
                                   lambda: self._restart(h2, kill=True, down_s=seconds))

    def dead_host(self) -> Measurement:
        state = self._state()
        h1, h2, h3 = state.hosts
        link = ip_netns_exec(h3.netns, ["ip", "link", "set", "eth0"])
        start = time.monotonic()
        subprocess.run([*link, "down"], check=True, timeout=10)
        self.lab.stop_agent(state, h3, kill=True)
        try:
            self.lab.wait_for(lambda: not self._holds(h1, self.ips["h3"])
                              and not self._holds(h2, self.ips["h3"]),
                              "h3's endpoint to leave h1 and h2", 60, interval=0.02)
            took = time.monotonic() - start
        finally:
            subprocess.run([*link, "up"], check=True, timeout=10)
            self.lab.start_agent(state, h3, dict(CONFIGS[self.config]))
            self.lab.wait_agent_ready(h3, 60)
        self.wait_everyone_holds()
        return Measurement(self.config, "dead_host", 0, 0.0, 0, round(took, 3))

    # -- helpers ----------------------------------------------------------------------------

    def _restart(self, host: LabHost, *, kill: bool, down_s: float) -> None:
        state = self._state()
        self.lab.stop_agent(state, host, kill=kill)
        time.sleep(down_s)  # the fault's length
        self.lab.start_agent(state, host, dict(CONFIGS[self.config]))
        self.lab.wait_agent_ready(host, 60)

    def _under_streams(self, fault: str, act: Callable[[], None]) -> Measurement:
        streams = [ProbeStream(self.netns[a], self.ips[b], self.rate)
                   for a, b in (("h1", "h2"), ("h2", "h1"))]
        for stream in streams:
            stream.wait_answering()
        start = time.monotonic()
        act()
        recovered = time.monotonic() - start
        self.wait_everyone_holds()
        time.sleep(SETTLE)  # the streams run on past the recovery
        reports: list[StreamReport] = [stream.stop() for stream in streams]
        return Measurement(self.config, fault, sum(r.lost for r in reports),
                           max(r.longest_outage_s for r in reports),
                           sum(r.sent for r in reports), round(recovered, 3))

    def wait_everyone_holds(self) -> None:
        state = self._state()
        self.lab.wait_for(lambda: all(self._holds(h, ip) for h in state.hosts
                                      for name, ip in self.ips.items() if name != h.name),
                          "every host to hold every endpoint", 60)

    def _holds(self, host: LabHost, ip: str) -> bool:
        visible = {e["ip"] for e in self.lab.client(host, 5).request("GET", "/v1/endpoints")}
        kernel = subprocess.run(ip_netns_exec(host.netns, ["ip", "neigh", "show",
                                                           "nud", "permanent"]),
                                capture_output=True, text=True,
                                timeout=10).stdout
        return ip in visible and re.search(rf"^{re.escape(ip)} ", kernel, re.M) is not None

    def _state(self) -> LabState:
        assert self.state is not None
        return self.state


def run(repeats: int, kill_s: float, long_s: float, rate: float) -> list[Measurement]:
    directory = Path(tempfile.mkdtemp(prefix="vxmesh-bench-restart-"))
    lab = Lab(directory / "lab", prefix=f"b15{os.getpid() % 1000}")
    bench = RestartBench(lab, rate)
    out: list[Measurement] = []
    try:
        bench.build()
        for repeat in range(repeats):
            for config in ("vxmesh", "baseline"):  # A B A B
                bench.use(config)
                for measure in (bench.sigterm_restart, lambda: bench.kill(kill_s),
                                bench.dead_host):
                    result = measure()
                    out.append(result)
                    print(f"  repeat {repeat + 1} {result.config:<9} {result.fault:<16} "
                          f"lost {result.lost:>5}  outage {result.longest_outage_s:>6.2f} s  "
                          f"({result.seconds:.1f} s)", file=sys.stderr, flush=True)
        if long_s > 0:
            bench.use("vxmesh")
            out.append(bench.kill(long_s))
    finally:
        lab.down()
    return out


def summarize(results: list[Measurement], kill_s: float, long_s: float) -> dict[str, Any]:
    def worst(config: str, fault: str, field: str = "lost") -> float | None:
        values = [getattr(r, field) for r in results if r.config == config and r.fault == fault]
        return max(values) if values else None

    kill, long = f"kill_{kill_s:g}s", f"kill_{long_s:g}s"
    return {
        "lost_sigterm_restart": worst("vxmesh", "sigterm_restart"),
        "lost_kill_30s": worst("vxmesh", kill),
        "lost_kill_120s": worst("vxmesh", long) if long_s > 0 else None,
        "lost_baseline_sigterm_restart": worst("baseline", "sigterm_restart"),
        "lost_baseline_kill_30s": worst("baseline", kill),
        "withdraw_dead_host_s": worst("vxmesh", "dead_host", "seconds"),
        "withdraw_dead_host_baseline_s": worst("baseline", "dead_host", "seconds"),
        "kill_s": kill_s, "long_kill_s": long_s,
        "runs": [asdict(r) for r in results],
    }


def format_table(results: list[Measurement]) -> str:
    lines = [f"{'config':<10}{'fault':<18}{'lost':>8}{'outage s':>10}{'sent':>9}{'seconds':>9}"]
    for r in results:
        lines.append(f"{r.config:<10}{r.fault:<18}{r.lost:>8}{r.longest_outage_s:>10.2f}"
                     f"{r.sent:>9}{r.seconds:>9.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--kill", type=float, default=30.0,
                        help="seconds a killed agent stays down")
    parser.add_argument("--long", type=float, default=120.0,
                        help="seconds of the one long kill (0: skip)")
    parser.add_argument("--rate", type=float, default=100.0, help="probes per second each way")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("the lab needs root (network namespaces)")
    if args.repeats < 1 or args.kill < 0 or args.long < 0 or args.rate <= 0:
        parser.error("--repeats >= 1, --kill and --long >= 0, --rate > 0")
    results = run(args.repeats, args.kill, args.long, args.rate)
    print(format_table(results))
    summary = summarize(results, args.kill, args.long)
    print(" ".join(f"{k}={v}" for k, v in summary.items() if k != "runs"))
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
