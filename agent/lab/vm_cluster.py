"""What the VM tier checks on provisioned machines, shared by tests/vm and bench/vagrant.py.

Owns: bringing up a provisioned lab (`bring_up`: boot, wait for ssh, provision the etcd node
first, then the others), reading the unit's state (`unit`), and the measured operations:
convergence (every agent sees every member alive), the README walk-through, packets lost
while one node's agent restarts, the watchdog restarting a SIGSTOPped agent, the ipvlan reach
matrix, and how long until a halted node is marked failed; `run_tier`, the whole tier on
node1..nodeN in that order with its figures (bench/vagrant.py and `vxmesh lab vm`), with
`tier_table` and `tier_failures` to show it.

Rules: every wait has a deadline and raises VmError naming what never happened; nothing here
asserts a duration (callers report figures). Commands run on the VMs over ssh as in the README.

May import: the standard library, agent.lab.vm, agent.terminal.
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.lab import vm
from agent.lab.polling import poll_until
from agent.terminal import Progress

UNIT = "vxmesh-agent"
RESTART_ROUNDS = 2
_PING_SUMMARY = re.compile(r"(\d+) packets transmitted, (\d+) received")


@dataclass(frozen=True)
class UpTimes:
    boot_s: float
    provision_s: float


@dataclass(frozen=True)
class PingCount:
    sent: int
    received: int

    @property
    def lost(self) -> int:
        return self.sent - self.received


def node_specs(count: int) -> list[vm.VmSpec]:
    return [vm.VmSpec(f"node{i}", f"{vm.LAB_SUBNET}.{10 + i}") for i in range(1, count + 1)]


def wait_until(what: str, check: Callable[[], bool], timeout: float,
               interval: float = 1.0) -> float:
    """Seconds until `check()` holds (VmError after `timeout`)."""
    return poll_until(check, what, timeout, interval, error=vm.VmError)


def bring_up(lab: vm.VmLab, wheels: Path) -> UpTimes:
    """Start every VM, wait for ssh, provision the etcd node then the others in parallel."""
    started = time.monotonic()
    lab.start()
    names = lab.names()
    with ThreadPoolExecutor(len(names)) as pool:
        list(pool.map(lambda name: lab.wait_ssh(name), names))
    booted = time.monotonic()
    cluster = vm.cluster_for(lab)
    vm.provision(lab, cluster.etcd_node, cluster, wheels)
    others = [n for n in names if n != cluster.etcd_node]
    if others:
        with ThreadPoolExecutor(len(others)) as pool:
            list(pool.map(lambda name: vm.provision(lab, name, cluster, wheels), others))
    return UpTimes(boot_s=booted - started, provision_s=time.monotonic() - booted)


def vxmesh(lab: vm.VmLab, name: str, args: str, *, timeout: float = 180) -> Any:
    """`sudo vxmesh --json ARGS` on a VM, decoded."""
    return json.loads(lab.ssh(name, f"sudo vxmesh --json {args}", timeout=timeout).stdout)


def unit(lab: vm.VmLab, name: str, *properties: str) -> dict[str, str]:
    """`systemctl show` properties of the agent's unit."""
    flags = " ".join(f"-p {p}" for p in properties)
    out = lab.ssh(name, f"sudo systemctl show {flags} {UNIT}").stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def member_states(lab: vm.VmLab, name: str) -> dict[str, str]:
    members = vxmesh(lab, name, "members")
    return {str(m["name"]): str(m["state"]) for m in members}


def converge(lab: vm.VmLab, names: Sequence[str], *, timeout: float = 600) -> float:
    """Seconds until every agent in `names` sees all of them alive."""
    def everyone_alive() -> bool:
        for name in names:
            try:
                states = member_states(lab, name)
            except (vm.VmError, json.JSONDecodeError):
                return False
            if any(states.get(other) != "alive" for other in names):
                return False
        return True

    return wait_until("every agent sees every member alive", everyone_alive, timeout, 2.0)


def create_endpoint(lab: vm.VmLab, node: str, name: str, network: str) -> str:
    made = vxmesh(lab, node, f"endpoint create {name} --network {network}")
    return str(made["ip"]).split("/")[0]


def ping(lab: vm.VmLab, node: str, endpoint: str, target: str, *, count: int = 3,
         interval: float = 1.0, check: bool = False) -> PingCount:
    """Ping from an endpoint (`vxmesh endpoint exec`) and count what came back."""
    done = lab.ssh(node, f"sudo vxmesh endpoint exec {endpoint} -- ping -q -n -c {count} "
                         f"-i {interval} -W 5 {target}", check=check,
                   timeout=60 + count * (interval + 1))
    return _ping_count(done.stdout)


def _ping_count(output: str) -> PingCount:
    found = _PING_SUMMARY.search(output)
    if found is None:
        raise vm.VmError(f"no ping summary in {output[-500:]!r}")
    return PingCount(int(found.group(1)), int(found.group(2)))


def pings_during(lab: vm.VmLab, streams: Sequence[tuple[str, str, str]],
                 action: Callable[[], None] | None, *, count: int = 150,
                 interval: float = 0.2) -> list[PingCount]:
    """Pings (node, endpoint, target) running while `action` runs (None: the baseline)."""
    argvs = [lab.ssh_argv(node, f"sudo vxmesh endpoint exec {ep} -- ping -q -n -c {count} "
                                f"-i {interval} -W 5 {target}")
             for node, ep, target in streams]
    running = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
               for argv in argvs]
    try:
        time.sleep(min(5.0, count * interval / 4))  # the streams are flowing
        if action is not None:
            action()
        outputs = [p.communicate(timeout=120 + count * interval)[0] for p in running]
    finally:
        for p in running:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)
    return [_ping_count(out.decode(errors="replace")) for out in outputs]


def restart_agent(lab: vm.VmLab, name: str) -> None:
    lab.ssh(name, f"sudo systemctl restart {UNIT}")


@dataclass(frozen=True)
class WatchdogRestart:
    new_process_s: float  # SIGSTOP until systemd started a new agent process
    ready_s: float  # SIGSTOP until that agent sent READY=1 (the unit active again)


def watchdog_restart(lab: vm.VmLab, name: str, *, timeout: float = 600) -> WatchdogRestart:
    """SIGSTOP the agent; time until systemd runs a new one and until it is ready (VmError
    unless the journal shows the watchdog did it). A stopped process cannot act on the
    watchdog's SIGABRT: systemd kills it after TimeoutAbortSec (TimeoutStopSec here)."""
    before = unit(lab, name, "MainPID", "NRestarts")
    lab.ssh(name, f"sudo kill -STOP {before['MainPID']}")
    stopped = time.monotonic()
    now: dict[str, str] = {}

    def new_process() -> bool:
        now.update(unit(lab, name, "MainPID", "ActiveState", "NRestarts"))
        return now["MainPID"] not in ("0", before["MainPID"])

    new_process_s = wait_until("a new agent process after SIGSTOP", new_process, timeout, 0.2)
    wait_until("the new agent ready", lambda: new_process() and now["ActiveState"] == "active"
               and int(now["NRestarts"]) > int(before["NRestarts"]), timeout, 0.5)
    ready_s = time.monotonic() - stopped
    journal = lab.ssh(name, f"sudo journalctl -u {UNIT} --no-pager -o cat").stdout
    if "Watchdog timeout" not in journal:
        raise vm.VmError(f"{name}: the agent was restarted, but not by the watchdog")
    return WatchdogRestart(new_process_s=new_process_s, ready_s=ready_s)


def security_exposure(lab: vm.VmLab, name: str) -> str:
    """The last line of `systemd-analyze security` for the unit ("Overall exposure ...")."""
    out = lab.ssh(name, f"sudo systemd-analyze security {UNIT} --no-pager").stdout
    return out.strip().splitlines()[-1]


def ipvlan_networks(lab: vm.VmLab, node: str) -> None:
    """ipl2 (ipvlan l2 on eth0, addresses of the lab's segment) and ipl3 (l3 on eth0.33)."""
    vxmesh(lab, node, f"network create ipl2 --driver ipvlan --ipvlan-mode l2 --parent eth0 "
                      f"--subnet {vm.LAB_SUBNET}.0/24 --gateway {vm.BRIDGE_ADDRESS} "
                      f"--ip-range {vm.LAB_SUBNET}.64/28")
    vxmesh(lab, node, "network create ipl3 --driver ipvlan --ipvlan-mode l3 "
                      "--parent eth0.33 --subnet 10.33.0.0/24")


def ipvlan_matrix(lab: vm.VmLab, nodes: Sequence[str]) -> dict[str, bool]:
    """Reachability between ipvlan endpoints: l2 and l3 on one host; l2 to the segment's
    gateway (the run's bridge); with two nodes, l2 across hosts. Keys name each pair."""
    first = nodes[0]
    matrix: dict[str, bool] = {}
    a2 = create_endpoint(lab, first, "a2", "ipl2")
    b2 = create_endpoint(lab, first, "b2", "ipl2")
    create_endpoint(lab, first, "a3", "ipl3")
    b3 = create_endpoint(lab, first, "b3", "ipl3")
    for endpoint, mode in (("a2", "l2"), ("a3", "l3")):
        shown = lab.ssh(first, f"sudo vxmesh endpoint exec {endpoint} -- ip -d link show").stdout
        if f"ipvlan  mode {mode}" not in shown:
            raise vm.VmError(f"{first}: endpoint {endpoint} has no ipvlan {mode} link: {shown}")
    matrix["l2 same host"] = ping(lab, first, "a2", b2).received > 0
    matrix["l2 to segment gateway"] = ping(lab, first, "a2", vm.BRIDGE_ADDRESS).received > 0
    matrix["l3 same host"] = ping(lab, first, "a3", b3).received > 0
    if len(nodes) > 1:
        c2 = create_endpoint(lab, nodes[1], "c2", "ipl2")
        matrix["l2 across hosts"] = ping(lab, first, "a2", c2).received > 0
        matrix["l2 across hosts (reverse)"] = ping(lab, nodes[1], "c2", a2).received > 0
    return matrix


def marked_failed(lab: vm.VmLab, observer: str, halted: str, *, timeout: float = 180) -> float:
    """Seconds until `observer` shows `halted` as failed (or dead)."""
    return wait_until(f"{observer} marks {halted} failed",
                      lambda: member_states(lab, observer).get(halted) in ("failed", "dead"),
                      timeout, 1.0)


def run_tier(nodes: int, count: int, prefix: str, *, directory: Path | None = None,
             progress: Progress | None = None) -> dict[str, Any]:
    """The VM tier on node1..node`nodes` (1-3) in a temporary directory (under `directory`
    when given), its namespace `<prefix><pid>`, every VM stopped and
    the run's namespace deleted at the end: image (cached), boot, provisioning, convergence,
    the walk-through with restart rounds (A: ping streams alone, B: the same while node1's
    agent restarts; `count` pings per stream and round), the unit's security exposure, the
    watchdog restart of the last node's agent, the ipvlan matrix, the halt of node2. A step
    after convergence that fails is recorded under "errors" and the next one still runs."""
    steps = progress or Progress(quiet=True)
    started = time.monotonic()
    with steps.step("image (build-box.sh, cached)"):
        image = vm.build_image()
    result: dict[str, Any] = {"nodes": nodes, "build_s": round(time.monotonic() - started, 1),
                              "image_build_s_when_made": image.build_seconds, "errors": {}}
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vxmesh-vm-tier-", dir=directory) as tmp:
        workdir = Path(tmp)
        result["accel"] = accel = vm.choose_accel(image, workdir)
        with steps.step("wheelhouse of this tree"):
            wheels = vm.wheelhouse(workdir)
        with vm.VmLab(workdir, prefix, image, node_specs(nodes), accel=accel) as lab:
            with steps.step(f"boot and provision {nodes} VMs ({accel})"):
                up = bring_up(lab, wheels)
            result.update(boot_s=round(up.boot_s, 1), provision_s=round(up.provision_s, 1),
                          up_s=round(up.boot_s + up.provision_s, 1))
            names = lab.names()
            with steps.step("every agent sees every member"):
                result["converged_s"] = round(converge(lab, names), 1)
            for title, step in _tier_steps(lab, names, count):
                try:
                    with steps.step(title):
                        result.update(step())
                except vm.VmError as exc:
                    result["errors"][title] = str(exc)
    result.setdefault("ipvlan_ok", False)
    return result


def _tier_steps(lab: vm.VmLab, names: list[str],
                count: int) -> list[tuple[str, Callable[[], dict[str, Any]]]]:
    first = names[0]

    def exposure() -> dict[str, Any]:
        return {"exposure": security_exposure(lab, first)}

    def watchdog() -> dict[str, Any]:
        took = watchdog_restart(lab, names[-1])
        return {"watchdog_restart_s": round(took.new_process_s, 1),
                "watchdog_ready_s": round(took.ready_s, 1)}

    def ipvlan() -> dict[str, Any]:
        ipvlan_networks(lab, first)
        matrix = ipvlan_matrix(lab, names[1:3] if len(names) >= 3 else names)
        return {"ipvlan": matrix, "ipvlan_ok": all(matrix.values())}

    def halt() -> dict[str, Any]:
        lab.power_off(names[1])
        return {"failed_after_halt_s": round(marked_failed(lab, first, names[1]), 1)}

    steps: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("walk-through and restart rounds", lambda: _walkthrough(lab, names, count)),
        ("systemd-analyze security", exposure),
        (f"watchdog restart of {names[-1]}'s agent", watchdog),
        ("ipvlan reach matrix", ipvlan)]
    if len(names) >= 2:
        steps.append((f"halt {names[1]} until {first} marks it failed", halt))
    return steps


def _walkthrough(lab: vm.VmLab, names: list[str], count: int) -> dict[str, Any]:
    """README's walk-through, then (three nodes) the restart rounds (A: baseline, B: node1's
    agent restarts)."""
    first, web_node, cli_node = names[0], names[1 % len(names)], names[2 % len(names)]
    vxmesh(lab, first, "network create blue --subnet 10.10.0.0/16")
    web = create_endpoint(lab, web_node, "web", "blue")
    create_endpoint(lab, cli_node, "cli", "blue")
    db = create_endpoint(lab, first, "db", "blue")
    pinged = ping(lab, cli_node, "cli", web, count=3)
    walked = {"walkthrough_ping_received": pinged.received, "walkthrough_ping_sent": pinged.sent}
    if len(names) < 3:
        # The streams run `vxmesh endpoint exec` on their nodes: on node1 itself they would
        # need the very agent that restarts.
        return walked
    streams = [(web_node, "web", db), (cli_node, "cli", db)]
    rounds: list[dict[str, Any]] = []
    for round_no in range(RESTART_ROUNDS):
        for restart in (False, True):
            action = (lambda: restart_agent(lab, first)) if restart else None
            counts = pings_during(lab, streams, action, count=count)
            rounds.append({"round": round_no, "restart": restart,
                           "sent": sum(c.sent for c in counts),
                           "lost": sum(c.lost for c in counts)})
    return {**walked, "restart_rounds": rounds,
            "lost_on_restart": max(r["lost"] for r in rounds if r["restart"]),
            "lost_baseline": max(r["lost"] for r in rounds if not r["restart"])}


def tier_table(result: dict[str, Any]) -> str:
    lines = [f"{'measure':<28} value"]
    for key in ("nodes", "accel", "build_s", "boot_s", "provision_s", "up_s", "converged_s",
                "walkthrough_ping_received", "watchdog_restart_s", "watchdog_ready_s",
                "failed_after_halt_s", "lost_baseline", "lost_on_restart", "exposure"):
        if key in result:
            lines.append(f"{key:<28} {result[key]}")
    for r in result.get("restart_rounds", []):
        label = "restart node1's agent" if r["restart"] else "baseline (no restart)"
        lines.append(f"  round {r['round']} {label:<24} lost {r['lost']} of {r['sent']}")
    for pair, ok in result.get("ipvlan", {}).items():
        lines.append(f"  ipvlan {pair:<26} {'reached' if ok else 'NOT reached'}")
    for step, error in result.get("errors", {}).items():
        lines.append(f"  FAILED {step}: {error}")
    return "\n".join(lines)


def tier_failures(result: dict[str, Any]) -> list[str]:
    """What the tier found wrong, one line each (none: everything worked)."""
    failures = [f"{step}: {error}" for step, error in result.get("errors", {}).items()]
    if result.get("walkthrough_ping_received") == 0:
        failures.append("walk-through: no answer to cli's pings to web")
    if result.get("lost_on_restart", 0) > 0:
        failures.append(f"{result['lost_on_restart']} pings lost while node1's agent restarted")
    for pair, ok in result.get("ipvlan", {}).items():
        if not ok:
            failures.append(f"ipvlan {pair}: not reached")
    return failures
