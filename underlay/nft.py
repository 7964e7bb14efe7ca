"""Running nftables scripts inside a network namespace.

Owns: the `nft` subprocess: atomic script application (`nft -f -`, one transaction) and
listing tables, in the host namespace given by name (entered with `nsenter --net`).

Rules: only whole transactions built by `underlay.nat_table`; never `flush ruleset`; a failure
raises KernelError with nft's message and leaves the previous ruleset in place (nft applies a
script all or nothing).
May import: the standard library, underlay.errors, underlay.links, underlay.netns_exec.
"""

from __future__ import annotations

import subprocess

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
