"""Let bridged traffic of a vxmesh network through Docker's FORWARD policy.

dockerd loads br_netfilter, turns `net.bridge.bridge-nf-call-iptables` on and sets the
FORWARD policy of its host to DROP, so frames bridged between a container's veth and the
network's VXLAN device (both ports of the vxmesh bridge `vxbr<VNI>`) would be dropped. Docker
leaves the chain `DOCKER-USER` to its users (it never flushes it): the agent inserts there one
rule per vxmesh bridge that accepts traffic in and out of that same bridge (so two vxmesh
networks stay isolated), and removes it when the network is deleted.

Owns: the rule's argv, `ensure_bridge_accepted(bridge)` and `remove_bridge_accepted(bridge)`
(idempotent, `iptables -w`, in the agent's network namespace, which is dockerd's).

May import: agent.errors, the standard library.
"""

from __future__ import annotations

import logging
import shutil
import subprocess

from agent.errors import AgentError

log = logging.getLogger("vxmesh.docker")

CHAIN = "DOCKER-USER"


class ForwardingError(AgentError):
    """iptables refused the rule; the message has its answer."""


def bridge_rule(bridge: str) -> list[str]:
    return ["-i", bridge, "-o", bridge, "-j", "ACCEPT", "-m", "comment", "--comment",
            f"vxmesh: {bridge} bridged traffic"]


def _iptables(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["iptables", "-w", "5", *args], capture_output=True, text=True,
                          timeout=30, check=False)


def ensure_bridge_accepted(bridge: str) -> bool:
    """Insert the rule for `bridge` unless present; False when there is no DOCKER-USER chain
    (no dockerd manages this host's iptables: nothing to let through)."""
    if shutil.which("iptables") is None:
        return False
    if _iptables("-C", CHAIN, *bridge_rule(bridge)).returncode == 0:
        return True
    inserted = _iptables("-I", CHAIN, "1", *bridge_rule(bridge))
    if inserted.returncode == 0:
        log.info("iptables: %s accepts traffic bridged on %s", CHAIN, bridge)
        return True
    if _iptables("-n", "-L", CHAIN).returncode != 0:
        return False
    raise ForwardingError(f"iptables -I {CHAIN} for {bridge}: {inserted.stderr.strip()}")


def remove_bridge_accepted(bridge: str) -> None:
    if shutil.which("iptables") is None:
        return
    for _ in range(8):  # a copy or two left by hand are removed too
        if _iptables("-D", CHAIN, *bridge_rule(bridge)).returncode != 0:
            return
