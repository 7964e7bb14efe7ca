"""A two-host site for endpoint tests: h1 and h2 on an underlay switch, plus "outside".

Underlay 10.0.0.0/24: h1 .1, h2 .2, outside .254 (the hosts' default gateway). The outside
namespace also holds 10.99.0.1/32 on loopback, standing for an internet address; it has no
route to any endpoint subnet, so only NAT lets an endpoint's traffic come back from it.
Endpoint namespaces carry the lab's unique prefix and are deleted at teardown, with every
probe process (by pid).
"""

from __future__ import annotations

import dataclasses
import os
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agent.lab.namespaces import NetnsLab, run, wait_links_operational
from underlay import links
from underlay.endpoints import Endpoints
from underlay.endpoints_model import BridgeNetwork, EndpointsConfig
from underlay.netns_exec import nsenter_net

PROBE = str(Path(__file__).with_name("probe.py"))


def nsenter(netns: str) -> list[str]:
    """The argv prefix that runs a command in `netns`'s network namespace."""
    return nsenter_net(netns, [])


@dataclass
class Site:
    lab: NetnsLab
    tmp: Path
    h1: str
    h2: str
    out: str
    services: list[Endpoints] = field(default_factory=list)
    prefixes: list[str] = field(default_factory=list)
    servers: list[subprocess.Popen[str]] = field(default_factory=list)

    def config(self, host: str, tag: str, **overrides: object) -> EndpointsConfig:
        prefix = f"{self.lab.prefix}{tag}-"
        if prefix not in self.prefixes:
            self.prefixes.append(prefix)
        base = EndpointsConfig(state_dir=self.tmp / tag, host_netns=host, netns_prefix=prefix,
                               underlay_interface="eth0",
                               bridges=(BridgeNetwork(subnet="172.29.0.0/24"),))
        return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]

    def service(self, config: EndpointsConfig, **kwargs: object) -> Endpoints:
        svc = Endpoints(config, **kwargs)  # type: ignore[arg-type]
        self.services.append(svc)
        return svc

    def serve(self, prefix: list[str], proto: str, addr: str, port: int) -> subprocess.Popen[str]:
        """Start a probe server with the given argv prefix and wait (<= 5 s) until it listens."""
        proc = subprocess.Popen([*prefix, sys.executable, PROBE, "serve", proto, addr, str(port)],
                                stdout=subprocess.PIPE, text=True)
        self.servers.append(proc)
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 5.0)
        assert ready and proc.stdout.readline().strip() == "ready", "probe server did not start"
        return proc

    def reach(self, prefix: list[str], proto: str, host: str, port: int) -> str | None:
        """The peer address the server saw, or None when the connection failed."""
        proc = subprocess.run([*prefix, sys.executable, PROBE, "connect", proto, host,
                               str(port)], capture_output=True, text=True, timeout=10,
                              check=False)
        return proc.stdout.strip() if proc.returncode == 0 else None

    def close(self) -> None:
        for proc in self.servers:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        for svc in self.services:
            svc.close()
        for prefix in self.prefixes:
            for name in links.list_netns(prefix=prefix):
                links.delete_netns(name)


@pytest.fixture
def site(netns_lab: NetnsLab, tmp_path: Path) -> Iterator[Site]:
    sw = netns_lab.underlay_bridge()
    h1, h2, out = netns_lab.ns("h1"), netns_lab.ns("h2"), netns_lab.ns("out")
    netns_lab.plug(sw, h1, "eth0", ["10.0.0.1/24"])
    netns_lab.plug(sw, h2, "eth0", ["10.0.0.2/24"])
    netns_lab.plug(sw, out, "eth0", ["10.0.0.254/24"])
    run(["ip", "addr", "add", "10.99.0.1/32", "dev", "lo"], netns=out)
    for host in (h1, h2):
        run(["ip", "route", "add", "default", "via", "10.0.0.254"], netns=host)
    for netns in (sw, h1, h2, out):
        wait_links_operational(netns)
    s = Site(netns_lab, tmp_path, h1, h2, out)
    try:
        yield s
    finally:
        s.close()
