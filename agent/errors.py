"""Errors of the agent package: one base for all of them, and the ones several layers share.

May import: the standard library only.
"""


class AgentError(Exception):
    """Base of every error raised by the agent package."""


class GossipKeyError(AgentError):
    """The gossip keyring cannot be used: its file is missing or unreadable, or a key change
    (install, use, remove) is refused; the message names the file or the key."""
