"""The seam through which a layer above (overlay/) rides on gossip.

Pure: a delegate is called synchronously by the SWIM core with `now` passed in; it must not
block, sleep or do I/O. Membership changes reach the layer above as events from the core
(`MemberJoined`, `MemberFailed`, ...), and node metadata is set on the core (`Swim(meta=...)`,
`set_meta`), not through this protocol.

Optional: `has_broadcasts() -> bool`. A delegate that has it lets the core stop its gossip
timer while neither has anything to send (an idle node then wakes only to probe); its owner
then calls `Swim.delegate_has_news(now)` (`GossipNode.delegate_has_news()`) whenever it
queues broadcasts outside the core's calls. A delegate without it is gossiped for every
`gossip_interval_s`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol


class Delegate(Protocol):
    """What the SWIM core asks of the layer that carries application state over gossip.

    `to` is the name of the member a packet or push-pull state is for (None when the core does
    not know the destination as a member), so a delegate can scope what it sends: the overlay
    sends a network's records only to that network's members.
    """

    def notify_user_msg(self, payload: bytes, now: float) -> None:
        """A user message (piggybacked broadcast or direct) arrived from a peer."""
        ...

    def get_broadcasts(self, overhead: int, limit: int, to: str | None) -> list[bytes]:
        """User broadcasts to piggyback on a packet to member `to`, each costing `overhead`
        bytes plus its length, within `limit` bytes in total."""
        ...

    def gossip_targets(self, count: int) -> Sequence[str]:
        """Members this gossip round should also reach (besides the core's `count` random
        members): e.g. `count` members of each network with news pending. Names the core
        does not know alive or suspect are skipped."""
        ...

    def local_state(self, join: bool, to: str | None) -> Iterable[bytes]:
        """Full state for push-pull with member `to`, as a sequence of bounded chunks
        streamed over TCP."""
        ...

    def merge_remote_state(self, chunk: bytes, join: bool, now: float) -> None:
        """One chunk of a peer's push-pull state."""
        ...
