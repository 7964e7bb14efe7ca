"""The lab's etcd: one plain member in the switch namespace, or a cluster, over TLS or not.

Owns: the records of the lab's etcd members (`EtcdMemberState`, kept in the lab state file),
their processes (`NamespacedEtcd`, a `LocalEtcd` run in a network namespace), the namespaces
of a cluster's members (`<prefix>e1..eN`, each with `eth0` = 10.77.0.(1+i) on the underlay
bridge, so a member can be partitioned by taking its port down), the lab PKI made at `up`
(`<lab>/pki`: a CA, each member's certificate naming its address, a client certificate the
agents present), the client settings agents get (every member's URL, rotated per host, and
the TLS files), killing and starting one member, and asking who leads.

Rules: the default lab stays one plain member at 10.77.0.1 (quick to start); processes are
found again by pid after checking their command line (a recycled pid is never signalled).
May import: agent.lab.etcd_local, agent.lab.certs, underlay (links, kernel, netns_exec), the
standard library; runs etcdctl (Debian: etcd-client) for `leader`.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.lab.certs import CertFiles, LabCA
from agent.lab.etcd_local import LocalEtcd, MemberTls
from underlay import links
from underlay.kernel import NetlinkThread
from underlay.netns_exec import ip_netns_exec

ETCDCTL = "/usr/bin/etcdctl"
CLIENT_PORT = 2379
PEER_PORT = 2380
SWITCH_ADDRESS = "10.77.0.1"
MAX_MEMBERS = 5


@dataclass
class EtcdMemberState:
    """One member as the lab state file records it."""

    name: str
    netns: str
    address: str
    data: str
    pid: int | None = None
    port: str = ""
    """The member's veth in the switch namespace ("" for the switch's own member)."""


class NamespacedEtcd(LocalEtcd):
    """A `LocalEtcd` run inside a network namespace, listening on an address there."""

    def __init__(self, data_dir: Path, *, netns: str, address: str, name: str = "vxmesh-lab",
                 tls: MemberTls | None = None, cluster: dict[str, str] | None = None,
                 heartbeat_ms: int = 50, election_ms: int = 500) -> None:
        super().__init__(data_dir, client_port=CLIENT_PORT, peer_port=PEER_PORT, name=name,
                         address=address, tls=tls, cluster=cluster, heartbeat_ms=heartbeat_ms,
                         election_ms=election_ms)
        self.netns = netns

    def command(self) -> list[str]:
        return ip_netns_exec(self.netns, super().command())

    def health(self) -> bool | str:
        tls = []
        if self.tls is not None:
            tls = ["--cacert", str(self.tls.ca), "--cert", str(self.tls.probe.cert),
                   "--key", str(self.tls.probe.key)]
        answer = subprocess.run(
            ip_netns_exec(self.netns, ["curl", "-s", "-m", "1", *tls,
                                       f"{self.client_url}/health"]),
            capture_output=True, text=True, timeout=5)
        if answer.returncode != 0:
            return f"curl exit {answer.returncode}"
        try:
            body = json.loads(answer.stdout or "{}")
        except ValueError:
            return f"health answer {answer.stdout!r}"
        return True if isinstance(body, dict) and body.get("health") == "true" else str(body)


class LabPki:
    """The files of the lab's PKI under `directory` (made by `create`)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    @property
    def ca(self) -> Path:
        return self.directory / "ca.pem"

    def cert(self, name: str) -> CertFiles:
        return CertFiles(self.directory / f"{name}.pem", self.directory / f"{name}-key.pem")

    def create(self, members: Sequence[EtcdMemberState]) -> None:
        ca = LabCA(self.directory, "vxmesh lab etcd CA")
        for member in members:
            ca.issue(member.name, addresses=[member.address], server=True, client=True)
        ca.issue("agent", client=True)
        ca.issue("probe", client=True)

    def member_tls(self, name: str) -> MemberTls:
        return MemberTls(self.ca, self.cert(name), self.cert("probe"))


@dataclass(frozen=True)
class LabEtcd:
    """The lab's etcd members, described by their records (`members`) and `tls`."""

    members: Sequence[EtcdMemberState]
    tls: bool
    pki: LabPki

    @staticmethod
    def plan(prefix: str, switch: str, directory: Path, count: int) -> list[EtcdMemberState]:
        """Records for `count` members (1: the switch's own member, the default lab)."""
        if count == 1:
            return [EtcdMemberState("e1", switch, SWITCH_ADDRESS, str(directory / "etcd"))]
        return [EtcdMemberState(f"e{i}", f"{prefix}e{i}", f"10.77.0.{1 + i}",
                                str(directory / f"etcd-e{i}"), port=f"q{i}")
                for i in range(1, count + 1)]

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    def url(self, member: EtcdMemberState) -> str:
        return f"{self.scheme}://{member.address}:{CLIENT_PORT}"

    def urls_for(self, index: int) -> list[str]:
        """Every member's URL, starting at member `index` (hosts spread over the members)."""
        urls = [self.url(m) for m in self.members]
        start = index % len(urls)
        return urls[start:] + urls[:start]

    def client_settings(self) -> dict[str, Any]:
        """The [store] keys agents need besides the endpoints."""
        if not self.tls:
            return {}
        agent = self.pki.cert("agent")
        return {"ca_file": str(self.pki.ca), "cert_file": str(agent.cert),
                "key_file": str(agent.key)}

    def process(self, member: EtcdMemberState) -> NamespacedEtcd:
        cluster = None
        timing: dict[str, int] = {}
        if len(self.members) > 1:
            cluster = {m.name: f"{self.scheme}://{m.address}:{PEER_PORT}" for m in self.members}
            timing = {"heartbeat_ms": 100, "election_ms": 1000}  # etcd's own defaults
        tls = self.pki.member_tls(member.name) if self.tls else None
        return NamespacedEtcd(Path(member.data), netns=member.netns, address=member.address,
                              name=member.name if cluster else "vxmesh-lab", tls=tls,
                              cluster=cluster, **timing)

    def build_namespaces(self, switch: str, prefixlen: int) -> None:
        """A namespace per member of a cluster, plugged into the switch's bridge."""
        if len(self.members) == 1:
            return
        nl = NetlinkThread(switch)
        try:
            for member in self.members:
                links.create_netns(member.netns)

                def plug(ipr: Any, member: EtcdMemberState = member) -> None:
                    links.ensure_veth(ipr, member.port, "eth0", peer_netns=member.netns,
                                      master="br0")

                nl.call_blocking(plug)
                inside = NetlinkThread(member.netns)
                try:
                    inside.call_blocking(functools.partial(
                        _address, address=f"{member.address}/{prefixlen}"))
                finally:
                    inside.close()
        finally:
            nl.close()

    def marker(self, member: EtcdMemberState) -> str:
        return f"--data-dir={member.data}"

    def etcdctl(self, switch: str, *args: str, timeout: float = 10.0
                ) -> subprocess.CompletedProcess[str]:
        """Run etcdctl (v3 API) from the switch namespace against every member."""
        argv = [ETCDCTL, f"--endpoints={','.join(self.url(m) for m in self.members)}",
                "--dial-timeout=1s", "--command-timeout=2s"]
        if self.tls:
            probe = self.pki.cert("probe")
            argv += [f"--cacert={self.pki.ca}", f"--cert={probe.cert}", f"--key={probe.key}"]
        return subprocess.run(ip_netns_exec(switch, [*argv, *args]), capture_output=True,
                              text=True, timeout=timeout, env={**os.environ, "ETCDCTL_API": "3"},
                              check=False)

    def leader(self, switch: str) -> EtcdMemberState | None:
        """The member that leads now (`etcdctl endpoint status`), None while none does."""
        answer = self.etcdctl(switch, "endpoint", "status", "-w", "json")
        try:
            rows = json.loads(answer.stdout or "[]")
        except ValueError:
            return None
        by_url = {self.url(m): m for m in self.members}
        for row in rows:
            status = row.get("Status", {})
            if status.get("leader") and status.get("leader") == status.get("header", {}).get(
                    "member_id"):
                return by_url.get(row.get("Endpoint", ""))
        return None


def _address(ipr: Any, address: str) -> None:
    links.add_address(ipr, "eth0", address)
    links.set_link(ipr, "eth0", up=True)
