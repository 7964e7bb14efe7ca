"""The argv that runs a command inside a named network namespace: the one place that spells it.

Owns: `NETNS_DIR` (where iproute2 and pyroute2 keep named namespaces), `netns_path(name)` and
the two ways in (plus `nsenter_pid_net`, the second way into a process's namespace):
- `ip_netns_exec(netns, argv)`: `ip netns exec <netns> ...`, the form operators type. It also
  gives the command a private mount namespace (with /etc/netns/<name> bind-mounted over /etc),
  so namespaces the command creates are invisible to everyone else, and its pid is ip's child.
- `nsenter_net(netns, argv)`: `nsenter --net=<path> -- ...`, the network namespace only; the
  command execs in place (a Popen's pid is the command's), and what it creates stays visible.
  Agents, servers and anything a test or a bench signals by pid start this way.

Pure: builds lists, runs nothing. May import: the standard library.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

NETNS_DIR = "/var/run/netns"


def netns_path(name: str) -> str:
    """The bind-mount path of the named namespace (whether or not it exists)."""
    return os.path.join(NETNS_DIR, name)


def ip_netns_exec(netns: str, argv: Sequence[str]) -> list[str]:
    """`argv` run inside `netns` by `ip netns exec`."""
    return ["ip", "netns", "exec", netns, *argv]


def nsenter_net(netns: str, argv: Sequence[str]) -> list[str]:
    """`argv` run inside `netns`'s network namespace only, exec'd in place by nsenter."""
    return ["nsenter", f"--net={netns_path(netns)}", "--", *argv]


def nsenter_pid_net(pid: int, argv: Sequence[str]) -> list[str]:
    """`argv` run inside the network namespace of process `pid` (a container's, say)."""
    return ["nsenter", f"--net=/proc/{pid}/ns/net", "--", *argv]
