"""`vxmesh lab`: N hosts on one machine, made of network namespaces, with real agents and etcd.

Owns: the lab's namespaces (`<prefix>sw`, a switch namespace whose bridge `br0` carries the
underlay 10.77.0.0/24 and also hosts the default etcd member on 10.77.0.1; `<prefix>h1..hN`,
one per host with `eth0` = 10.77.0.(10+i)), its etcd (agent.lab.lab_etcd: one plain member by
default, or `--etcd-members 3 --etcd-tls`: a cluster with each member in its own namespace
`<prefix>e1..`, a lab CA and mutual TLS; `lab etcd kill|start MEMBER`, `lab etcd leader`),
one agent process per host (started in its namespace with its own config,
state directory, control socket and log), and the lab state file that lets `down`,
`status` and `exec` find all of it from another process.

Rules:
- Every process is started by us and stopped by its recorded pid, after checking that the
  pid still runs the command we started (a recycled pid is never signalled). An agent this
  `Lab` object started is checked through its `Popen` (running until it exits, even in the
  moment between fork and exec when /proc still shows our own command line); one started by
  another process (`vxmesh lab down` after `up`) by its command line.
- `down` removes everything `up` made, even after a crash half-way: agents, etcd, the
  endpoints' namespaces the agents made, the lab's namespaces, the lab directory.
- Traffic stays inside the lab's namespaces.

With `up --podman` every host also gets real rootful Podman (agent.lab.podman): `lab exec
h1 -- podman ...` runs h1's, and `lab exec h1 -- vxmesh cni install NET` writes into h1's CNI
configuration directory.

May import: everything in agent/, underlay (links, kernel), the standard library.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import functools
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agent.api.client import ApiClient, CliError
from agent.api.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from agent.config import render_toml
from agent.errors import AgentError
from agent.lab import podman as lab_podman
from agent.lab.docker import LabDocker
from agent.lab.lab_etcd import (
    MAX_MEMBERS,
    SWITCH_ADDRESS,
    EtcdMemberState,
    LabEtcd,
    LabPki,
    NamespacedEtcd,
)
from agent.lab.polling import poll_until
from agent.lab.provision import node_config
from agent.state_files import write_atomically
from agent.store.errors import EtcdStartError
from agent.terminal import Progress, render_table
from underlay import links
from underlay.kernel import NetlinkThread
from underlay.netns_exec import ip_netns_exec, nsenter_net
from underlay.wireguard import interface_name
from underlay.wireguard_peers import SLOTS

DEFAULT_DIR = Path("/run/vxmesh-lab")
DEFAULT_PREFIX = "vxl"
UNDERLAY = ipaddress.ip_network("10.77.0.0/24")
GOSSIP_PORT = 7946
METRICS_PORT = 9476
MAX_HOSTS = 16
AGENT_READY_TIMEOUT = 60.0


class LabError(AgentError):
    """The lab cannot do what was asked; the message says what and why."""


@dataclass
class LabHost:
    """One lab host: a namespace running one agent."""

    name: str
    netns: str
    address: str
    directory: str
    node: str = ""
    pid: int | None = None

    @property
    def socket(self) -> Path:
        return Path(self.directory) / "agent.sock"

    @property
    def config_path(self) -> Path:
        return Path(self.directory) / "agent.toml"

    @property
    def log_path(self) -> Path:
        return Path(self.directory) / "agent.log"

    @property
    def state_dir(self) -> Path:
        return Path(self.directory) / "state"

    @property
    def docker(self) -> LabDocker:
        """This host's dockerd (used when the lab runs with --docker)."""
        return LabDocker(self.netns, Path(self.directory) / "docker")


@dataclass
class LabState:
    """What `up` made; saved as JSON in the lab directory."""

    prefix: str
    switch: str
    etcd: list[EtcdMemberState] = field(default_factory=list)
    etcd_tls: bool = False
    key: str = ""
    hosts: list[LabHost] = field(default_factory=list)
    helpers: list[int] = field(default_factory=list)
    podman: bool = False
    docker: bool = False


def _pid_runs(pid: int | None, marker: str) -> bool:
    """True when `pid` is alive and its command line contains `marker` (not a recycled pid)."""
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[-1].split()[0]
    return marker in cmdline and state != "Z"


def _stop_pid(pid: int | None, marker: str, *, sig: int = signal.SIGTERM,
              timeout: float = 10.0) -> int | None:
    """Signal `pid` (if it still runs `marker`), wait up to `timeout`, then SIGKILL it.

    Returns its exit code when it was our child (so we reaped it), else None.
    """
    if not _pid_runs(pid, marker):
        return None
    assert pid is not None
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _pid_runs(pid, marker):
        try:
            reaped, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            reaped, status = 0, 0
        if reaped:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    if _pid_runs(pid, marker):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    try:
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    except ChildProcessError:
        return None


def _in_netns(netns: str, argv: Sequence[str], timeout: float = 30.0,
              check: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(ip_netns_exec(netns, argv), capture_output=True, text=True,
                          timeout=timeout, check=check)


class Lab:
    """The lab rooted at `directory`, its namespaces named `<prefix>...`."""

    def __init__(self, directory: Path = DEFAULT_DIR, prefix: str = DEFAULT_PREFIX,
                 *, progress: Progress | None = None, gossip_profile: str = "lan",
                 config: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        """`config`: extra agent config sections for every host (e.g. {"wireguard":
        {"listen_port": 51900}}), over the lab's own."""
        if not re.fullmatch(r"[a-z][a-z0-9]{0,7}", prefix):
            raise LabError(f"prefix {prefix!r}: 1-8 lower-case letters or digits")
        self.directory = directory
        self.prefix = prefix
        self.progress = progress or Progress(quiet=True)
        self._etcd_processes: dict[str, NamespacedEtcd] = {}
        self.gossip_profile = gossip_profile
        self.config = config or {}
        self._agents: dict[int, subprocess.Popen[bytes]] = {}  # the agents we started, by pid

    # -- state ------------------------------------------------------------------------------

    @property
    def state_path(self) -> Path:
        return self.directory / "lab.json"

    def load(self) -> LabState | None:
        try:
            raw = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise LabError(f"{self.state_path} is unreadable ({exc}); `vxmesh lab down` "
                           "removes what it can find") from None
        hosts = [LabHost(**h) for h in raw.pop("hosts", [])]
        etcd = [EtcdMemberState(**m) for m in raw.pop("etcd", [])]
        return LabState(**raw, hosts=hosts, etcd=etcd)

    def save(self, state: LabState) -> None:
        write_atomically(self.state_path, json.dumps(asdict(state), indent=2) + "\n", 0o600)

    def host(self, state: LabState, name: str) -> LabHost:
        for host in state.hosts:
            if host.name == name:
                return host
        raise LabError(f"no lab host {name!r} (hosts: {', '.join(h.name for h in state.hosts)})")

    def client(self, host: LabHost, timeout: float = 30.0) -> ApiClient:
        return ApiClient(str(host.socket), timeout)

    def etcd(self, state: LabState) -> LabEtcd:
        """The lab's etcd members (one plain member unless `up` asked for more, or TLS)."""
        return LabEtcd(state.etcd, state.etcd_tls, LabPki(self.directory / "pki"))

    # -- up ---------------------------------------------------------------------------------

    def up(self, hosts: int = 3, *, podman: bool = False, docker: bool = False,
           etcd_members: int = 1, etcd_tls: bool = False) -> LabState:
        """Build (or complete) the lab with `hosts` hosts; returns its state once all are ready.

        `podman`: also make real rootful Podman usable on every host (agent.lab.podman).
        `docker`: every host also runs a real dockerd with its agent as the plugin
        (agent.lab.docker).
        `etcd_members` > 1: an etcd cluster, each member in its own namespace on the underlay;
        `etcd_tls`: a lab CA made now, members and agents on mutual TLS."""
        if not 2 <= hosts <= MAX_HOSTS:
            raise LabError(f"--hosts {hosts}: the lab has 2 to {MAX_HOSTS} hosts")
        if not 1 <= etcd_members <= MAX_MEMBERS or etcd_members == 2:
            raise LabError(f"--etcd-members {etcd_members}: 1, 3, 4 or {MAX_MEMBERS}"
                           " (two members lose their quorum with either)")
        if os.geteuid() != 0:
            raise LabError("the lab creates network namespaces: run it as root")
        state = self.load()
        if state is not None and (len(state.hosts), len(state.etcd), state.etcd_tls) != (
                hosts, etcd_members, etcd_tls):
            raise LabError(f"a lab with {len(state.hosts)} hosts and {len(state.etcd)} etcd"
                           f" member(s){' over TLS' if state.etcd_tls else ''} is up;"
                           " `vxmesh lab down` first")
        if state is not None and docker and not state.docker:
            raise LabError("the lab is up without --docker; `vxmesh lab down` first")
        if state is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self.directory.chmod(0o700)
            switch = f"{self.prefix}sw"
            state = LabState(prefix=self.prefix, switch=switch,
                             etcd=LabEtcd.plan(self.prefix, switch, self.directory, etcd_members),
                             etcd_tls=etcd_tls, key=base64.b64encode(os.urandom(32)).decode(),
                             docker=docker)
            if etcd_tls:
                self.etcd(state).pki.create(state.etcd)
            for i in range(1, hosts + 1):
                name = f"h{i}"
                # Node names are global on this machine (endpoint namespaces carry them), so
                # a second lab (the tests') gets its own.
                node = name if self.prefix == DEFAULT_PREFIX else f"{self.prefix}{name}"
                state.hosts.append(LabHost(
                    name=name, netns=f"{self.prefix}{name}",
                    address=str(UNDERLAY.network_address + 10 + i),
                    directory=str(self.directory / name), node=node))
            self.save(state)
        with self.progress.step(f"underlay: switch {state.switch} and {hosts} host namespaces"):
            self._build_underlay(state)
        etcd = self.etcd(state)
        with self.progress.step(f"etcd on {', '.join(etcd.url(m) for m in etcd.members)}"):
            self.start_etcd(state)
        seeds = [f"{h.address}:{GOSSIP_PORT}" for h in state.hosts[:3]]
        for host in state.hosts:
            self._write_host_files(state, host, seeds)
        if state.docker:
            with self.progress.step(f"starting {hosts} dockerd (one per host namespace)"):
                self.start_dockers(state)
        with self.progress.step(f"starting {hosts} agents"):
            for host in state.hosts:
                if not self.agent_runs(host):
                    self.start_agent(state, host)
        with self.progress.step("waiting for every agent to sync and see every member"):
            self.wait_converged(state, timeout=AGENT_READY_TIMEOUT)
        if podman:
            with self.progress.step(f"podman on {hosts} hosts (image {lab_podman.IMAGE})"):
                self.provision_podman(state)
        return state

    def podman_host(self, host: LabHost) -> lab_podman.PodmanHost:
        return lab_podman.PodmanHost(host.netns, Path(host.directory),
                                     self.directory / "cni-bin")

    def provision_podman(self, state: LabState) -> None:
        lab_podman.install_plugin_dir(self.directory)
        rootfs = lab_podman.busybox_rootfs(self.directory / "busybox-rootfs.tar")
        for host in state.hosts:
            lab_podman.provision(self.podman_host(host), rootfs)
        state.podman = True
        self.save(state)

    def start_dockers(self, state: LabState) -> None:
        """Start every host's dockerd that is not running, wait for all, import the image."""
        started = [(h.docker, h.docker.start()) for h in state.hosts if h.docker.pid() is None]
        for daemon, process in started:
            daemon.wait_ready(process)
        rootfs = lab_podman.busybox_rootfs(self.directory / "busybox-rootfs.tar")
        for host in state.hosts:
            host.docker.import_image(rootfs)

    def _build_underlay(self, state: LabState) -> None:
        links.create_netns(state.switch)
        switch = NetlinkThread(state.switch)
        try:
            switch.call_blocking(lambda ipr: links.ensure_bridge(ipr, "br0"))
            switch.call_blocking(lambda ipr: links.add_address(
                ipr, "br0", f"{SWITCH_ADDRESS}/{UNDERLAY.prefixlen}"))
            for index, host in enumerate(state.hosts, start=1):
                links.create_netns(host.netns)
                port = f"p{index}"

                def plug(ipr: Any, port: str = port, host: LabHost = host) -> None:
                    links.ensure_veth(ipr, port, "eth0", peer_netns=host.netns, master="br0")

                switch.call_blocking(plug)
                nl = NetlinkThread(host.netns)
                try:
                    nl.call_blocking(functools.partial(self._address_host, host=host))
                finally:
                    nl.close()
        finally:
            switch.close()
        self.etcd(state).build_namespaces(state.switch, UNDERLAY.prefixlen)

    @staticmethod
    def _address_host(ipr: Any, host: LabHost) -> None:
        links.add_address(ipr, "eth0", f"{host.address}/{UNDERLAY.prefixlen}")
        links.set_link(ipr, "eth0", up=True)

    def _write_host_files(self, state: LabState, host: LabHost, seeds: list[str]) -> None:
        etcd = self.etcd(state)
        sections: dict[str, dict[str, Any]] = {
            "node": {"state_dir": str(host.state_dir), "log_level": "info"},
            "gossip": {"profile": self.gossip_profile, "port": GOSSIP_PORT},
            "api": {"socket": str(host.socket)},
            "metrics": {"address": "0.0.0.0", "port": METRICS_PORT},
            # A loaded CI machine can take seconds to accept a connection.
            "store": {"lease_ttl": 10, "timeout": 5.0, "member_timeout": 1.0,
                      **etcd.client_settings()},
            # The machine's resolvers are outside the lab: names of the lab resolve,
            # other names are refused instead of being sent where no lab packet may go.
            "dns": {"forward": False},
            "docker": {"enabled": state.docker,
                       "plugin_socket": str(host.docker.plugin_socket),
                       "engine_socket": str(host.docker.socket)},
        }
        for section, values in self.config.items():
            sections.setdefault(section, {}).update(values)
        config = node_config(
            name=host.node or host.name, address=host.address, interface="eth0",
            etcd=etcd.urls_for(state.hosts.index(host)),
            seeds=[s for s in seeds if not s.startswith(f"{host.address}:")],
            sections=sections)
        host.state_dir.mkdir(parents=True, exist_ok=True)
        write_atomically(host.config_path, render_toml(config))
        keyring = host.state_dir / "keyring.json"
        if not keyring.exists():
            write_atomically(keyring, json.dumps({"primary": state.key, "keys": [state.key]}),
                             0o600)

    def start_etcd(self, state: LabState) -> None:
        """Start every member not running (all launched first: a new cluster needs quorum)."""
        etcd = self.etcd(state)
        started = []
        for member in etcd.members:
            if _pid_runs(member.pid, etcd.marker(member)):
                continue
            process = etcd.process(member)
            process.launch()
            self._etcd_processes[member.name] = process
            member.pid = process.pid
            started.append(process)
        self.save(state)
        for process in started:
            try:
                process.wait_healthy(30.0)
            except EtcdStartError:
                self.stop_etcd(state)
                raise

    def stop_etcd(self, state: LabState) -> None:
        """Stop every member (SIGTERM, by pid); their data stays for `start_etcd`."""
        for member in state.etcd:
            self.kill_etcd_member(state, member.name, sig=signal.SIGTERM)

    def etcd_member(self, state: LabState, name: str) -> EtcdMemberState:
        for member in state.etcd:
            if member.name == name:
                return member
        raise LabError(f"no etcd member {name!r} (members: "
                       f"{', '.join(m.name for m in state.etcd)})")

    def kill_etcd_member(self, state: LabState, name: str, *,
                         sig: int = signal.SIGKILL) -> None:
        """SIGKILL (a crash) one member, by its recorded pid; its data stays."""
        member = self.etcd_member(state, name)
        _stop_pid(member.pid, self.etcd(state).marker(member), sig=sig)
        process = self._etcd_processes.pop(name, None)
        if process is not None:
            process.stop()  # reaps our child
        member.pid = None
        self.save(state)

    def start_etcd_member(self, state: LabState, name: str) -> None:
        """Start one member again on its data (it rejoins its cluster)."""
        etcd = self.etcd(state)
        member = self.etcd_member(state, name)
        if _pid_runs(member.pid, etcd.marker(member)):
            return
        process = etcd.process(member)
        process.launch()
        self._etcd_processes[name] = process
        member.pid = process.pid
        self.save(state)
        process.wait_healthy(30.0)

    def etcd_leader(self, state: LabState) -> str | None:
        """The name of the member that leads now (None while none does)."""
        leader = self.etcd(state).leader(state.switch)
        return leader.name if leader else None

    def start_agent(self, state: LabState, host: LabHost,
                    extra_env: dict[str, str] | None = None) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VXMESH_")}
        env["PYTHONUNBUFFERED"] = "1"
        env.update(extra_env or {})
        with open(host.log_path, "ab") as log:
            process = subprocess.Popen(
                # nsenter enters only the network namespace: `ip netns exec` would also give the
                # agent a private mount namespace, hiding the endpoint namespaces it creates.
                nsenter_net(host.netns, [sys.executable, "-m", "agent.cli.main", "agent",
                                         "--config", str(host.config_path)]),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, env=env, cwd="/")
        host.pid = process.pid
        self._agents[process.pid] = process
        self.save(state)

    def agent_runs(self, host: LabHost) -> bool:
        """True while the host's agent process runs (see the module docstring)."""
        process = self._agents.get(host.pid or 0)
        if process is not None:
            return process.poll() is None
        return _pid_runs(host.pid, str(host.config_path))

    def stop_agent(self, state: LabState, host: LabHost, *, kill: bool = False,
                   timeout: float = 10.0) -> int | None:
        """SIGTERM (a stop) or SIGKILL (a crash) the host's agent, SIGKILL after `timeout`; its
        exit code if this process started it."""
        sig = signal.SIGKILL if kill else signal.SIGTERM
        process = self._agents.pop(host.pid or 0, None)
        if process is None:
            code = _stop_pid(host.pid, str(host.config_path), sig=sig, timeout=timeout)
        else:
            if process.poll() is None:
                process.send_signal(sig)
            try:
                code = process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                code = process.wait()
        host.pid = None
        self.save(state)
        return code

    def wait_agent_exit(self, state: LabState, host: LabHost, timeout: float) -> int:
        """Wait (without signalling) for the agent this `Lab` started to end; its exit code."""
        process = self._agents.pop(host.pid or 0, None)
        if process is None:
            raise LabError(f"the agent of {host.name} was not started by this process")
        try:
            code = process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._agents[process.pid] = process
            raise LabError(f"the agent of {host.name} still runs after {timeout:.0f} s; log "
                           f"tail:\n{self.log_tail(host)}") from None
        host.pid = None
        self.save(state)
        return code

    def wait_agent_ready(self, host: LabHost, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if host.pid is not None and not self.agent_runs(host):
                raise LabError(f"agent of {host.name} exited; log tail:\n{self.log_tail(host)}")
            try:
                status = self.client(host, timeout=2).request("GET", "/v1/status")
            except CliError as exc:
                last = str(exc)
            else:
                if status.get("ready"):
                    return dict(status)
                last = f"not ready: {status}"
            time.sleep(0.1)
        raise LabError(f"agent of {host.name} not ready after {timeout:.0f} s ({last}); log "
                       f"tail:\n{self.log_tail(host)}")

    def wait_converged(self, state: LabState, timeout: float) -> None:
        """Every agent ready and seeing every host alive."""
        deadline = time.monotonic() + timeout
        for host in state.hosts:
            self.wait_agent_ready(host, max(1.0, deadline - time.monotonic()))
        want = {h.node or h.name for h in state.hosts if h.pid is not None}
        for host in state.hosts:
            if host.pid is None:
                continue

            def sees_all(host: LabHost = host) -> bool:
                return want <= self.alive_members(host)

            self.wait_for(sees_all, f"{host.name} to see members {sorted(want)}",
                          max(1.0, deadline - time.monotonic()))

    def alive_members(self, host: LabHost) -> set[str]:
        members = self.client(host, timeout=5).request("GET", "/v1/members")
        return {m["name"] for m in members if m.get("state") == "alive"}

    @staticmethod
    def wait_for(condition: Callable[[], bool], what: str, timeout: float,
                 interval: float = 0.05) -> float:
        """Poll `condition` until true (a CliError is "not yet"); LabError at the deadline."""
        return poll_until(condition, what, timeout, interval, error=LabError, not_yet=(CliError,))

    def log_tail(self, host: LabHost, lines: int = 15) -> str:
        try:
            return "\n".join(host.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # -- down -------------------------------------------------------------------------------

    def down(self) -> list[str]:
        """Remove everything the lab made; returns what was removed."""
        removed: list[str] = []
        state = self.load()
        if state is not None:
            if state.podman:
                for host in state.hosts:
                    lab_podman.remove_containers(self.podman_host(host))
                    removed.append(f"podman containers {host.name}")
            for host in state.hosts:
                if host.docker.pid() is not None or host.docker.holder_pid() is not None:
                    host.docker.stop()
                    removed.append(f"dockerd {host.name}")
                if self.agent_runs(host):
                    self._delete_endpoints(host)
                    self.stop_agent(state, host)
                    removed.append(f"agent {host.name}")
                if self._delete_wireguard(host):
                    removed.append(f"wireguard {host.name}")
            for pid in state.helpers:
                _stop_pid(pid, "http.server", sig=signal.SIGKILL, timeout=2)
            etcd = self.etcd(state)
            for member in state.etcd:
                if _pid_runs(member.pid, etcd.marker(member)):
                    self.kill_etcd_member(state, member.name, sig=signal.SIGTERM)
                    removed.append(f"etcd {member.name}")
        orphans = [n for h in (state.hosts if state else [])
                   for n in links.list_netns(prefix=f"vxep-{h.node or h.name}-")]
        for name in [*orphans, *links.list_netns(prefix=self.prefix)]:
            self._kill_namespace_processes(name)
            links.delete_netns(name)
            removed.append(f"namespace {name}")
        if self.directory.exists():
            lab_podman.unmount_below(self.directory)
            shutil.rmtree(self.directory)
            removed.append(str(self.directory))
        return removed

    def _delete_endpoints(self, host: LabHost) -> None:
        with contextlib.suppress(CliError):
            client = self.client(host, timeout=10)
            for endpoint in client.request("GET", "/v1/endpoints"):
                if endpoint.get("local"):
                    with contextlib.suppress(CliError):
                        client.request("DELETE", f"/v1/endpoints/{endpoint['name']}")

    @staticmethod
    def _delete_wireguard(host: LabHost) -> bool:
        """Delete the host's WireGuard interfaces (both slots), if any: wireguard-go then ends
        and removes its control socket (killed with the namespace it would leave it behind)."""
        deleted = False
        for slot in range(SLOTS):
            name = interface_name(host.node or host.name, slot)
            done = subprocess.run(ip_netns_exec(host.netns, ["ip", "link", "del", name]),
                                  capture_output=True, timeout=10)
            socket = Path("/var/run/wireguard") / f"{name}.sock"
            deadline = time.monotonic() + 5.0
            while socket.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            deleted |= done.returncode == 0
        return deleted

    @staticmethod
    def _kill_namespace_processes(netns: str) -> None:
        pids = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True,
                              timeout=10).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)

    # -- status, exec, metrics --------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        state = self.load()
        if state is None:
            return {"up": False, "directory": str(self.directory), "hosts": []}
        rows = []
        for host in state.hosts:
            running = self.agent_runs(host)
            row: dict[str, Any] = {"name": host.name, "netns": host.netns,
                                   "address": host.address, "pid": host.pid if running else None,
                                   "socket": str(host.socket), "ready": False, "members": None,
                                   "endpoints": None}
            if running:
                with contextlib.suppress(CliError):
                    status = self.client(host, timeout=3).request("GET", "/v1/status")
                    row.update(ready=bool(status.get("ready")),
                               members=status.get("members_alive"),
                               endpoints=status.get("endpoints"))
            rows.append(row)
        return {"up": True, "directory": str(self.directory), "prefix": state.prefix,
                "etcd": [{"name": m.name, "url": self.etcd(state).url(m),
                          "running": _pid_runs(m.pid, self.etcd(state).marker(m))}
                         for m in state.etcd],
                "hosts": rows}

    def exec_argv(self, state: LabState, host_name: str, command: Sequence[str]) -> list[str]:
        host = self.host(state, host_name)
        if state.podman and command and command[0] == "podman":  # the host's own Podman
            return self.podman_host(host).argv(list(command[1:]))
        if command and command[0] == "vxmesh":  # this installation's CLI, even off PATH
            command = [str(Path(sys.executable).parent / "vxmesh"), *command[1:]]
        env = [f"VXMESH_API_SOCKET={host.socket}", f"DOCKER_HOST={host.docker.host}"]
        if state.podman:  # `vxmesh cni install` writes into this host's CNI config dir
            env.append(f"VXMESH_CNI_CONF_DIR={self.podman_host(host).cni_conf_dir}")
        return ip_netns_exec(host.netns, ["env", *env, *command])

    def scrape(self, host: LabHost) -> dict[str, float]:
        """The host's metrics as {series: value} (series = name plus labels)."""
        answer = _in_netns(host.netns, ["curl", "-s", "-m", "3",
                                        f"http://127.0.0.1:{METRICS_PORT}/metrics"])
        return parse_exposition(answer.stdout)


def parse_exposition(text: str) -> dict[str, float]:
    """Prometheus text exposition to {series: value}; comments skipped."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        with contextlib.suppress(ValueError):
            out[series] = float(value)
    return out


# -- the demo ---------------------------------------------------------------------------------

DEMO_NETWORK = "demo"
DEMO_SUBNET = "10.200.0.0/16"
DEMO_METRICS = (
    ("vxmesh_neighbor_entries{network=\"demo\"}", "neighbor entries (demo)"),
    ("vxmesh_dataplane_operations_total{result=\"ok\"}", "kernel operations applied"),
    ("vxmesh_endpoint_propagation_seconds_count", "endpoint propagations observed"),
    ("vxmesh_gossip_messages_total", "gossip messages (all types)"),
)


def run_demo(lab: Lab, hosts: int) -> dict[str, Any]:
    """Network, one endpoint per host, HTTP from every host to one, pings across."""
    progress = lab.progress
    loaded = lab.load()
    if loaded is None or not all(lab.agent_runs(h) for h in loaded.hosts):
        state = lab.up(len(loaded.hosts) if loaded is not None else hosts)
    else:
        state = loaded
    before = {h.name: lab.scrape(h) for h in state.hosts}
    first = state.hosts[0]
    client = lab.client(first)
    report: dict[str, Any] = {"hosts": [h.name for h in state.hosts]}

    networks = {n["name"]: n for n in client.request("GET", "/v1/networks")}
    if DEMO_NETWORK not in networks:
        with progress.step(f"network create {DEMO_NETWORK} --subnet {DEMO_SUBNET}"):
            networks[DEMO_NETWORK] = client.request(
                "POST", "/v1/networks", {"name": DEMO_NETWORK, "subnet": DEMO_SUBNET})
    report["network"] = networks[DEMO_NETWORK]

    endpoints: dict[str, dict[str, Any]] = {}
    started = time.monotonic()
    for host in state.hosts:
        name = f"web-{host.name}"
        host_client = lab.client(host)
        try:
            record = host_client.request("GET", f"/v1/endpoints/{name}")
        except CliError:
            with progress.step(f"{host.name}: endpoint create {name} --network {DEMO_NETWORK}"):
                record = host_client.request("POST", "/v1/endpoints",
                                             {"name": name, "network": DEMO_NETWORK})
        endpoints[host.name] = record
    addresses = {e["ip"] for e in endpoints.values()}

    def everyone_knows() -> bool:
        return all(addresses <= {e["ip"] for e in lab.client(h).request("GET", "/v1/endpoints")}
                   and lab.client(h).request("GET", "/v1/status").get("in_sync")
                   for h in state.hosts)

    with progress.step("waiting until every host's kernel holds every endpoint"):
        lab.wait_for(everyone_knows, "every endpoint on every host", 30.0)
    report["propagation_seconds"] = round(time.monotonic() - started, 3)

    server = endpoints[first.name]
    url = f"http://{server['ip']}:8080/"
    report["http"] = []
    site = Path(first.directory) / "site"
    site.mkdir(exist_ok=True)
    (site / "index.html").write_text(f"hello from {server['name']} on {first.name}\n")
    with progress.step(f"HTTP server in {server['name']} on {url}"):
        http_server = subprocess.Popen(
            ip_netns_exec(server["netns"], [sys.executable, "-m", "http.server", "8080",
                                            "--bind", server["ip"], "--directory", str(site)]),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        state.helpers.append(http_server.pid)
        lab.save(state)
        lab.wait_for(lambda: _in_netns(server["netns"], ["curl", "-s", "-m", "1", url])
                     .returncode == 0, "the HTTP server", 10.0)
    try:
        for host in state.hosts[1:]:
            client_ep = endpoints[host.name]
            t0 = time.monotonic()
            answer = _in_netns(client_ep["netns"], ["curl", "-s", "-m", "5", url])
            took = time.monotonic() - t0
            report["http"].append({"from": client_ep["name"], "to": url,
                                   "ok": answer.returncode == 0,
                                   "body": answer.stdout.strip(), "seconds": round(took, 3)})
    finally:
        http_server.terminate()
        http_server.wait(timeout=10)
        state.helpers.remove(http_server.pid)
        lab.save(state)

    report["ping"] = []
    for source in state.hosts:
        for target in state.hosts:
            if source is target:
                continue
            src, dst = endpoints[source.name], endpoints[target.name]
            answer = _in_netns(src["netns"], ["ping", "-c", "1", "-W", "2", dst["ip"]])
            rtt = re.search(r"time=([\d.]+) ms", answer.stdout)
            report["ping"].append({"from": src["name"], "to": dst["name"],
                                   "ok": answer.returncode == 0,
                                   "rtt_ms": float(rtt.group(1)) if rtt else None})

    after = {h.name: lab.scrape(h) for h in state.hosts}
    report["metrics"] = []
    for series, label in DEMO_METRICS:
        for host in state.hosts:
            was = _sum_series(before[host.name], series)
            now = _sum_series(after[host.name], series)
            report["metrics"].append({"host": host.name, "metric": label,
                                      "before": was, "after": now, "moved": now - was})
    report["ok"] = all(x["ok"] for x in report["http"]) and all(x["ok"] for x in report["ping"])
    return report


def _sum_series(values: dict[str, float], series: str) -> float:
    """One series' value, or the sum over all label sets when `series` has no labels."""
    if "{" in series:
        return values.get(series, 0.0)
    return sum(v for k, v in values.items() if k == series or k.startswith(series + "{"))


def _print_demo(report: dict[str, Any]) -> None:
    net = report["network"]
    print(f"\nnetwork {net.get('name')}: VNI {net.get('vni')}, subnet {net.get('subnet')}; "
          f"every endpoint reached every host's kernel in {report['propagation_seconds']} s\n")
    print(render_table(report["http"], ["from", "to", "ok", "seconds", "body"]))
    print()
    print(render_table(report["ping"], ["from", "to", "ok", "rtt_ms"]))
    print()
    print(render_table(report["metrics"], ["host", "metric", "before", "after", "moved"]))
    print(f"\ndemo {'passed' if report['ok'] else 'FAILED'}. The lab keeps running: try "
          "`vxmesh lab exec h1 -- vxmesh members`, `vxmesh lab status`; "
          "remove it all with `vxmesh lab down`.")


# -- CLI entry --------------------------------------------------------------------------------

def run_lab_command(args: argparse.Namespace) -> int:
    lab = Lab(Path(args.dir) if args.dir else DEFAULT_DIR, args.prefix or DEFAULT_PREFIX,
              progress=Progress(quiet=args.json))
    if args.action == "up":
        state = lab.up(args.hosts, podman=args.podman, docker=args.docker,
                       etcd_members=args.etcd_members, etcd_tls=args.etcd_tls)
        if args.json:
            print(json.dumps(lab.status(), indent=2))
        else:
            print(f"lab up: {len(state.hosts)} hosts; `vxmesh lab status`, "
                  "`vxmesh lab exec h1 -- vxmesh members`, `vxmesh lab down`")
        return EXIT_OK
    if args.action == "down":
        removed = lab.down()
        if args.json:
            print(json.dumps({"removed": removed}))
        else:
            print("lab down: " + (", ".join(removed) if removed else "nothing was running"))
        return EXIT_OK
    if args.action == "status":
        status = lab.status()
        if args.json:
            print(json.dumps(status, indent=2))
        elif not status["up"]:
            print("lab is down (`vxmesh lab up`)")
        else:
            for member in status["etcd"]:
                print(f"etcd {member['name']} {member['url']}: "
                      f"{'running' if member['running'] else 'STOPPED'}")
            print(render_table(status["hosts"], ["name", "address", "pid", "ready", "members",
                                                 "endpoints", "socket"]))
        return EXIT_OK
    if args.action == "exec":
        current = lab.load()
        if current is None:
            raise LabError("the lab is down (`vxmesh lab up`)")
        command = list(args.command)
        if command and command[0] == "--":
            command = command[1:]
        if not command:
            print("vxmesh lab exec: give a command after --", file=sys.stderr)
            return EXIT_USAGE
        argv = lab.exec_argv(current, args.host, command)
        os.execvp(argv[0], argv)
    if args.action == "etcd":
        current = lab.load()
        if current is None:
            raise LabError("the lab is down (`vxmesh lab up`)")
        if args.etcd_action == "leader":
            leader = lab.etcd_leader(current)
            print(json.dumps({"leader": leader}) if args.json else (leader or "no leader"))
            return EXIT_OK if leader else EXIT_FAILED
        if not args.member:
            raise LabError(f"lab etcd {args.etcd_action}: name a member "
                           f"({', '.join(m.name for m in current.etcd)})")
        if args.etcd_action == "kill":
            lab.kill_etcd_member(current, args.member)
        else:
            lab.start_etcd_member(current, args.member)
        print(f"etcd {args.member}: {'killed' if args.etcd_action == 'kill' else 'started'}")
        return EXIT_OK
    if args.action == "demo":
        if args.docker:
            from agent.lab.docker_demo import print_docker_demo, run_docker_demo

            report = run_docker_demo(lab, args.hosts)
        else:
            report = run_demo(lab, args.hosts)
        if args.json:
            print(json.dumps(report, indent=2))
        elif args.docker:
            print_docker_demo(report)
        else:
            _print_demo(report)
        return EXIT_OK if report["ok"] else EXIT_FAILED
    raise LabError(f"unknown lab action {args.action!r}")
