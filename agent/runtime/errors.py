"""Start-up failures an operator causes in the environment, each naming the key and the value.

Owns: `StartupError` and its kinds. The process edge (`agent.runtime.process`) prints their
message as one line and exits 1; usage failures (a bad config value, a malformed etcd URL, an
unreadable keyring, a bad state directory) are `AgentConfigError`, `StateReadError` and
`GossipKeyError` and exit 2.

May import: agent.errors only.
"""

from __future__ import annotations

from agent.errors import AgentError


class StartupError(AgentError):
    """The environment does not let the agent start; the message names the key and value."""


class UnderlayNotFound(StartupError):
    """The configured underlay interface or address is not on this host."""


class MissingKernelFeature(StartupError):
    """The kernel lacks something the agent cannot run without (vxlan, bridge)."""


class PortInUse(StartupError):
    """A port the agent must bind (gossip, metrics) is held by another process."""


class EtcdUnreachable(StartupError):
    """A first start (no copy of the networks yet) and etcd did not answer in time."""
