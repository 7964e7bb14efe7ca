"""Errors of the gossip package: one base, and the only error network input may raise."""


class GossipError(Exception):
    """Base of every error raised by the gossip package."""


class WireError(GossipError):
    """Bytes from the network could not be decoded, authenticated or accepted.

    This is the only exception that data received from a peer may raise; callers count it
    and drop the packet.
    """
