"""Benchmark lab: N hosts in network namespaces on one switch, agents in them, process stats.

Owns what the gossip benchmarks share: building a lab of `N` namespace hosts on a shared
underlay bridge (reusing `agent.lab.namespaces`, so names carry a unique prefix and everything
made is deleted, even on failure or Ctrl-C), starting one agent process per host with its output
lines time-stamped on arrival, stopping processes by pid only, input packet loss through an
nftables table of our own per namespace, and idle CPU / RSS read from /proc.

Rules: traffic only inside the lab's namespaces (10.77.0.0/16 on `eth0`, loopback inside each
namespace for RPC); never touches a process, namespace or nftables table it did not create.
Neighbours are pinned: every host gets a permanent ARP entry for every other host and for the
switch's address, the switch one for every host. The kernel's ARP table is one for all
namespaces, and its dynamic entries are capped machine-wide (net.ipv4.neigh.default.gc_thresh3,
1,024 by default): N hosts in a full mesh need N*(N-1) of them, 1,560 at N=40, so without
pinning a 40-host lab overflows it ("neighbor table overflow", sends fail with ENOBUFS and TCP
connects time out). Permanent entries are exempt from that cap (kernel >= 4.19) and the
host-wide setting stays as it is.
May import: the standard library, `agent.lab.namespaces` and `underlay.netns_exec` (installed
in the venv by deploy/setup.sh; the bench scripts run as plain files with its python).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from agent.lab.namespaces import NetnsLab, run
from underlay.netns_exec import ip_netns_exec, nsenter_net

ROOT = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
LOSS_TABLE = "vxbenchloss"


@dataclass(frozen=True)
class LabHost:
    """One namespace host: short name, full namespace name, underlay address on eth0."""

    name: str
    netns: str
    addr: str


@dataclass(frozen=True)
class OutputLine:
    """One line an agent printed, with the monotonic time it arrived."""

    at: float
    text: str


class AgentProcess:
    """A process started in a lab namespace; a thread time-stamps every output line."""

    def __init__(self, host: LabHost, argv: Sequence[str], env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        self.host = host
        self.started_at = time.monotonic()
        # nsenter enters only the network namespace (`ip netns exec` would add a private mount
        # namespace, hiding namespaces an agent creates) and execs: popen.pid is the agent's.
        self.popen = subprocess.Popen(
            nsenter_net(host.netns, argv), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, stdin=subprocess.PIPE, text=True, bufsize=1,
            env=env, cwd=cwd)
        self.pid = self.popen.pid
        self._lines: list[OutputLine] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for text in self.popen.stdout:
            line = OutputLine(time.monotonic(), text.rstrip("\n"))
            with self._changed:
                self._lines.append(line)
                self._changed.notify_all()

    def lines(self) -> list[OutputLine]:
        with self._changed:
            return list(self._lines)

    def wait_line(self, match: Callable[[str], bool], deadline: float,
                  since: float = 0.0) -> OutputLine | None:
        """The first line at or after `since` that `match`es, waiting until `deadline`."""
        with self._changed:
            while True:
                for line in self._lines:
                    if line.at >= since and match(line.text):
                        return line
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._reader.is_alive():
                    return None  # out of time, or the process exited and said nothing more
                self._changed.wait(min(remaining, 0.2))

    def send_line(self, text: str) -> None:
        """Write one line to the process's standard input (a command for a bench runner)."""
        assert self.popen.stdin is not None
        self.popen.stdin.write(text + "\n")
        self.popen.stdin.flush()

    def last_words(self, count: int = 5) -> str:
        """The last `count` output lines, for reporting a process that failed."""
        return " | ".join(line.text.strip() for line in self.lines()[-count:])

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill9(self) -> float:
        """SIGKILL by pid; returns the monotonic time the signal was sent."""
        at = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        self.popen.wait(timeout=10)
        return at

    def terminate(self) -> None:
        """SIGTERM by pid, if it still runs (`stop` waits for it)."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)

    def stop(self, grace: float = 3.0) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds; by pid, only this process."""
        if self.popen.poll() is None:
            self.terminate()
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                self.popen.wait(timeout=10)
        if self.popen.stdin is not None:
            with contextlib.suppress(OSError):
                self.popen.stdin.close()
        self._reader.join(timeout=2)

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process so far, from /proc/PID/stat."""
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def rss_mb(self) -> float:
        """Resident set size in MB (10^6 bytes), from /proc/PID/status."""
        for row in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if row.startswith("VmRSS:"):
                return int(row.split()[1]) * 1024 / 1e6
        return 0.0


def stop_all(agents: Sequence[AgentProcess], grace: float = 3.0) -> None:
    """Stop every agent, all told at once (SIGTERM), so their shutdowns overlap: 40 agents
    leaving one after the other took minutes of a bench's time."""
    for agent in agents:
        agent.terminate()
    for agent in agents:
        agent.stop(grace)


@dataclass(frozen=True)
class IdleUsage:
    """Mean over agents: CPU in percent of one core over the window, RSS in MB at its end."""

    cpu_pct: float
    rss_mb: float


def measure_idle(agents: Sequence[AgentProcess], window: float) -> IdleUsage:
    before = [agent.cpu_seconds() for agent in agents]
    started = time.monotonic()
    time.sleep(window)
    elapsed = time.monotonic() - started
    after = [agent.cpu_seconds() for agent in agents]
    cpu = [(b - a) / elapsed * 100 for a, b in zip(before, after, strict=True)]
    rss = [agent.rss_mb() for agent in agents]
    return IdleUsage(cpu_pct=sum(cpu) / len(cpu), rss_mb=sum(rss) / len(rss))


class BenchLab:
    """`n` hosts h1..hn (10.77.0.1..n on eth0) on one switch namespace; a context manager."""

    def __init__(self, n: int, tag: str) -> None:
        if not 1 <= n <= 250:
            raise ValueError(f"lab size n={n}: must be between 1 and 250")
        self.n = n
        self._netns = NetnsLab(tag)
        self.hosts: list[LabHost] = []
        self.agents: list[AgentProcess] = []
        self._lossy: list[LabHost] = []
        self._macs: dict[str, str] = {}
        self.switch = ""
        self.prefix = self._netns.prefix

    def __enter__(self) -> BenchLab:
        try:
            self.switch = switch = self._netns.underlay_bridge()
            for index in range(1, self.n + 1):
                name = f"h{index}"
                netns = self._netns.ns(name)
                addr = f"10.77.0.{index}"
                self._netns.plug(switch, netns, "eth0", [f"{addr}/16"])
                self.hosts.append(LabHost(name, netns, addr))
            self._macs = {host.addr: _mac(host.netns, "eth0") for host in self.hosts}
            for host in self.hosts:
                _pin_neighbours(host.netns, "eth0", {a: m for a, m in self._macs.items()
                                                     if a != host.addr})
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def add_switch_address(self, cidr: str) -> None:
        """Give the switch's bridge an address (for a service all hosts reach, e.g. etcd)."""
        run(["ip", "addr", "add", cidr, "dev", "br0"], netns=self.switch)
        address, mac = cidr.split("/")[0], _mac(self.switch, "br0")
        for host in self.hosts:
            _pin_neighbours(host.netns, "eth0", {address: mac})
        _pin_neighbours(self.switch, "br0", self._macs)

    def spawn(self, host: LabHost, argv: Sequence[str], env: dict[str, str] | None = None,
              cwd: Path | None = None) -> AgentProcess:
        agent = AgentProcess(host, argv, env, cwd)
        self.agents.append(agent)
        return agent

    def set_input_loss(self, percent: int) -> None:
        """Drop `percent`% of packets arriving on eth0 in every host (our own nft table)."""
        for host in self.hosts:
            script = (
                f"add table inet {LOSS_TABLE}\n"
                f"add chain inet {LOSS_TABLE} input {{ type filter hook input priority -10; }}\n"
                f"add rule inet {LOSS_TABLE} input iifname \"eth0\" "
                f"numgen random mod 100 < {percent} drop\n")
            subprocess.run(ip_netns_exec(host.netns, ["nft", "-f", "-"]), input=script,
                           text=True, check=True, capture_output=True, timeout=10)
            self._lossy.append(host)

    def clear_input_loss(self) -> None:
        for host in self._lossy:
            run(["nft", "delete", "table", "inet", LOSS_TABLE], netns=host.netns, check=False)
        self._lossy.clear()

    def close(self) -> None:
        stop_all(self.agents, grace=2.0)
        self.agents.clear()
        self.clear_input_loss()
        self._netns.close()


def _mac(netns: str, ifname: str) -> str:
    return run(["cat", f"/sys/class/net/{ifname}/address"], netns=netns).stdout.strip()


def _pin_neighbours(netns: str, ifname: str, macs: dict[str, str]) -> None:
    """Permanent ARP entries on `ifname` in `netns`: address -> MAC (see the module doc)."""
    script = "".join(f"neigh replace {address} lladdr {mac} dev {ifname} nud permanent\n"
                     for address, mac in macs.items())
    subprocess.run(ip_netns_exec(netns, ["ip", "-batch", "-"]), input=script, text=True,
                   check=True, capture_output=True, timeout=30)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def cleanup_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt (as Ctrl-C is) so every lab's `with` cleans up."""
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def wait_until(condition: Callable[[], bool], timeout: float, poll: float = 0.05) -> bool:
    """Poll `condition` until it holds or `timeout` seconds pass (bounded in time)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(poll)
    return condition()


def machine_load() -> str:
    return Path("/proc/loadavg").read_text().strip()
