"""Throw-away network namespaces for tests and benchmarks: unique names, guaranteed clean-up.

Owns `NetnsLab` (namespaces named `<prefix><name>`, an optional switch namespace with a
bridge joining them, veth plugs), `run` (one iproute2-style command, in a namespace if given),
`wait_links_operational` (a veth is `up` at once, but the kernel's link watcher activates its
queue and a bridge port's forwarding state later, seconds later on a busy machine; frames sent
before are lost) and `kernel_has_link_kind` (asks the kernel itself, not our probe).

Rules: set-up uses iproute2 commands (the code under test uses pyroute2, so the two check each
other). Every name starts with a per-process, per-lab prefix; `NetnsLab.close()` deletes
everything it made, even when the caller failed, and only what it made. Every command has a
timeout.

May import: the standard library, underlay (netns_exec, links, kernel).
"""

from __future__ import annotations

import itertools
import os
import shlex
import subprocess
from collections.abc import Sequence
from functools import partial

from underlay import links
from underlay.kernel import NetlinkThread
from underlay.netns_exec import ip_netns_exec

_counter = itertools.count()


def run(cmd: Sequence[str] | str, *, netns: str | None = None, check: bool = True,
        timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run a command (in `netns` if given) and return its completed process."""
    argv = shlex.split(cmd) if isinstance(cmd, str) else list(cmd)
    if netns is not None:
        argv = ip_netns_exec(netns, argv)
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=timeout)


class NetnsLab:
    """Namespaces named `<prefix><name>` on an optional shared underlay bridge."""

    def __init__(self, tag: str) -> None:
        # Short: interface names are limited to 15 bytes.
        self.prefix = f"vt{os.getpid() % 1000:03d}{next(_counter) % 100:02d}{tag[:3]}"
        self.namespaces: list[str] = []
        self.host_links: list[str] = []

    def ns(self, name: str) -> str:
        full = f"{self.prefix}{name}"
        run(["ip", "netns", "add", full])
        self.namespaces.append(full)
        run(["ip", "link", "set", "lo", "up"], netns=full)
        return full

    def underlay_bridge(self) -> str:
        """A bridge in its own namespace joining hosts, like a switch; returns the namespace."""
        sw = self.ns("sw")
        run(["ip", "link", "add", "br0", "type", "bridge"], netns=sw)
        run(["ip", "link", "set", "br0", "up"], netns=sw)
        return sw

    def plug(self, switch_ns: str, host_ns: str, ifname: str, cidrs: Sequence[str],
             mtu: int = 1500) -> None:
        """Connect `host_ns` to the switch with a veth named `ifname` inside the host."""
        port = f"p{len(self.host_links)}{self.prefix}"[:15]
        tmp = f"t{len(self.host_links)}{self.prefix}"[:15]
        self.host_links.append(port)
        run(["ip", "link", "add", port, "mtu", str(mtu), "type", "veth", "peer", "name", tmp,
             "mtu", str(mtu)])
        run(["ip", "link", "set", port, "netns", switch_ns])
        run(["ip", "link", "set", tmp, "netns", host_ns])
        run(["ip", "link", "set", port, "master", "br0", "up"], netns=switch_ns)
        run(["ip", "link", "set", tmp, "name", ifname], netns=host_ns)
        for cidr in cidrs:
            extra = ["nodad"] if ":" in cidr else []
            run(["ip", "addr", "add", cidr, "dev", ifname, *extra], netns=host_ns)
        run(["ip", "link", "set", ifname, "up"], netns=host_ns)

    def kernel_has_link_kind(self, kind: str) -> bool:
        """True when this kernel can create a `kind` link (macvlan, ipvlan, ...) on a veth
        parent; tried with iproute2 in a namespace of this lab, deleted with it."""
        probe = self.ns(f"k{len(self.namespaces)}")
        run(["ip", "link", "add", "parent0", "type", "veth", "peer", "name", "parent1"],
            netns=probe)
        made = run(["ip", "link", "add", "probe0", "link", "parent0", "type", kind],
                   netns=probe, check=False)
        return made.returncode == 0

    def close(self) -> None:
        for name in reversed(self.namespaces):
            pids = run(["ip", "netns", "pids", name], check=False).stdout.split()
            for pid in pids:
                run(["kill", "-9", pid], check=False)
            run(["ip", "netns", "del", name], check=False)
        self.namespaces.clear()
        for link in self.host_links:
            run(["ip", "link", "del", link], check=False)
        self.host_links.clear()


def wait_links_operational(netns: str, names: list[str] | None = None, *,
                           timeout: float = 20.0) -> None:
    """Wait until `names` (default: every link but lo) in `netns` are operational, or raise."""
    nl = NetlinkThread(netns)
    try:
        wanted = names if names is not None else [
            info.name for info in nl.call_blocking(links.list_links) if info.name != "lo"]
        for name in wanted:
            if not nl.call_blocking(partial(links.wait_operational, name=name, timeout=timeout)):
                raise TimeoutError(f"{netns}: link {name} not operational after {timeout} s")
    finally:
        nl.close()
