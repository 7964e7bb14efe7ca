"""Throw-away network namespaces for tests: unique names, guaranteed clean-up.

Set-up uses iproute2 commands (the code under test uses pyroute2, so the two check each
other). Every name starts with a per-test prefix; `NetnsLab.close()` deletes everything it
made even when the test failed, and only what it made.
"""

from __future__ import annotations

import itertools
import os
import shlex
import subprocess
from collections.abc import Sequence

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
