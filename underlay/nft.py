"""Running nftables scripts inside a network namespace.

Owns: the `nft` subprocess: atomic script application (`nft -f -`, one transaction) and
listing tables, in the host namespace given by name (entered with `nsenter --net`).

Also the named counters of a table (`list_counters`) and bridge netfilter (`call_on_bridges`:
bridged IP traffic through the inet hooks, which network policy needs; `skip_bridges`: off
again, `bridges_called`: its state). The switches are `net.bridge.bridge-nf-call-ip{,6}tables`
of the calling process's network namespace (per namespace on this kernel and every one since
5.3), so they touch no other namespace.

Rules: only whole transactions built by `underlay.nat_table` or `underlay.policy_table`;
never `flush ruleset`; a failure raises KernelError with nft's message and leaves the
previous ruleset in place (nft applies a script all or nothing).
May import: the standard library, underlay.errors, underlay.links, underlay.netns_exec.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from underlay.errors import KernelError
from underlay.links import open_netns_path
from underlay.netns_exec import nsenter_net


def in_netns(netns: str | None, argv: list[str]) -> list[str]:
    """`argv` run inside the named namespace (None: unchanged, our own namespace)."""
    if netns is None:
        return argv
    open_netns_path(netns)  # KernelError naming it if it does not exist
    return nsenter_net(netns, argv)


def apply_script(netns: str | None, script: str, *, timeout: float = 20) -> None:
    """Run an nft script as one transaction in `netns`."""
    proc = subprocess.run(in_netns(netns, ["nft", "-f", "-"]), input=script, text=True,
                          capture_output=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise KernelError(f"nft -f failed in namespace {netns or 'host'}: "
                          f"{proc.stderr.strip()[:500]}")


def list_tables(netns: str | None, *, timeout: float = 20) -> list[str]:
    """`family name` of every nftables table in `netns`."""
    proc = subprocess.run(in_netns(netns, ["nft", "list", "tables"]), text=True,
                          capture_output=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise KernelError(f"nft list tables failed in {netns or 'host'}: {proc.stderr.strip()}")
    return [line.removeprefix("table ").strip() for line in proc.stdout.splitlines() if line]


def list_counters(netns: str | None, family: str, table: str, *,
                  timeout: float = 20) -> dict[str, int]:
    """Packets of every named counter in the table (empty when the table does not exist)."""
    proc = subprocess.run(in_netns(netns, ["nft", "-j", "list", "counters", "table", family,
                                           table]),
                          text=True, capture_output=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        return {}
    try:
        items = json.loads(proc.stdout).get("nftables", [])
    except ValueError as exc:
        raise KernelError(f"nft -j list counters: not JSON ({exc})") from None
    return {item["counter"]["name"]: int(item["counter"].get("packets", 0))
            for item in items if isinstance(item, dict) and "counter" in item}


BRIDGE_SYSCTLS = ("bridge-nf-call-iptables", "bridge-nf-call-ip6tables")


def call_on_bridges() -> None:
    """Send bridged IPv4/IPv6 traffic of our namespace through the inet hooks (br_netfilter;
    loaded with modprobe when missing); KernelError when the kernel cannot."""
    directory = Path("/proc/sys/net/bridge")
    if not directory.exists():
        subprocess.run(["modprobe", "br_netfilter"], capture_output=True, timeout=20,
                       check=False)
    _set_bridge_sysctls(directory, "1", "enable")


def skip_bridges() -> None:
    """Take bridged IPv4/IPv6 traffic of our namespace off the inet hooks (br_netfilter's
    detour, which costs each bridged frame; bench/dataplane.py, overlay_nonf); nothing to do
    where br_netfilter is not loaded. KernelError when the kernel refuses."""
    directory = Path("/proc/sys/net/bridge")
    if not directory.exists():
        return
    _set_bridge_sysctls(directory, "0", "disable")


def _set_bridge_sysctls(directory: Path, value: str, verb: str) -> None:
    """Write `value` to each of BRIDGE_SYSCTLS under `directory` that differs; KernelError
    naming what could not be done (`verb`) when the kernel refuses."""
    try:
        for name in BRIDGE_SYSCTLS:
            path = directory / name
            if path.read_text().strip() != value:
                path.write_text(f"{value}\n")
    except OSError as exc:
        raise KernelError(f"br_netfilter: cannot {verb} {directory}: {exc}") from None

