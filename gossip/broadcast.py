"""Transmit-limited broadcast queue: what gets piggybacked on the next packets.

Owns: the order and lifetime of pending broadcasts (membership news and delegate payloads).
Rules (memberlist's TransmitLimitedQueue, in our own shape):
- each broadcast is sent at most `retransmit_limit(n)` = mult * ceil(log10(n + 1)) times, n
  being the cluster size at the moment of sending;
- broadcasts sent fewer times go first; among equals, the newest first (levels are kept in
  age order as items move up, so this holds up to ties between moves);
- a broadcast queued with a key (a node name, or any hashable the delegate picks) replaces
  any pending broadcast with the same key: newer news about a node invalidates older news;
  keyless broadcasts never invalidate anything;
- a broadcast never rides twice on packets to the same member, nor on a packet to a name it
  was queued `not_to` (the member that told us, or a member told that it is alive, already
  knows): a transmission spent there is one that another member misses, and with a handful
  of members the limit runs out after two or three;
- the queue is bounded; beyond `max_pending` the most transmitted (then oldest) are dropped.
Usable by the layer above for its own delegate broadcasts. Pure: standard library only.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Hashable
from dataclasses import dataclass
from operator import attrgetter

_MAX_MISSES = 16


@dataclass(slots=True)
class _Pending:
    key: Hashable | None
    payload: bytes
    transmits: int
    order: int
    #: A tuple, not a set: at most a few tens of names (the retransmit limit plus those
    #: queued), and a simulator holds millions of pending broadcasts.
    not_to: tuple[Hashable, ...]


_by_order = attrgetter("order")


@functools.lru_cache(maxsize=4096)
def retransmit_limit(mult: int, n: int) -> int:
    """mult * ceil(log10(n + 1)): how many times a broadcast is sent in a cluster of n
    (memoized: every packet sent asks)."""
    return int(mult * math.ceil(math.log10(max(n, 1) + 1)))


class BroadcastQueue:
    """Pending broadcasts, fewest transmissions first, each sent a bounded number of times."""

    def __init__(self, retransmit_mult: int, *, max_pending: int = 16_384) -> None:
        self._mult = retransmit_mult
        self._max_pending = max_pending
        # transmits -> {order: pending}; dicts keep insertion (= age) order.
        self._levels: dict[int, dict[int, _Pending]] = {}
        self._by_key: dict[Hashable, _Pending] = {}
        self._order = 0
        self._size = 0
        self._smallest = 1 << 30
        self.dropped = 0

    def __len__(self) -> int:
        return self._size

    def queue(self, payload: bytes, key: Hashable | None = None, *,
              not_to: frozenset[Hashable] = frozenset()) -> None:
        """Add a broadcast; with a key, replace the pending broadcast of that key. It is never
        taken for a packet `to` a name in `not_to`."""
        if key is not None:
            old = self._by_key.pop(key, None)
            if old is not None:
                self._remove(old)
        self._order += 1
        item = _Pending(key, payload, 0, self._order, tuple(not_to))
        self._levels.setdefault(0, {})[item.order] = item
        self._size += 1
        self._smallest = min(self._smallest, len(payload))
        if key is not None:
            self._by_key[key] = item
        if self._size > self._max_pending:
            self._drop_one()

    def pending_for(self, key: Hashable) -> bytes | None:
        """The payload pending under `key`, if any."""
        item = self._by_key.get(key)
        return None if item is None else item.payload

    def take(self, overhead: int, limit: int, cluster_size: int, *,
             to: Hashable | None = None) -> list[bytes]:
        """Broadcasts for one packet (to the member named `to`, if known): each costs
        `overhead` + its length, within `limit` bytes.

        Every broadcast returned counts one transmission; it leaves the queue once it reached
        the retransmit limit for `cluster_size`. Broadcasts already sent `to` this member, or
        queued `not_to` it, are passed over and keep their transmissions for other packets;
        one that every other member of `cluster_size` has (by those names) leaves the queue.
        """
        # (called for every packet sent, mostly with a queue of one or two: written for that)
        floor = overhead + self._smallest
        if self._size == 0 or limit < floor:
            return []
        levels = self._levels
        others = cluster_size - 1
        if self._size == 1:
            return self._take_the_one(overhead, limit, cluster_size, to)
        told: list[_Pending] = []  # every other member has it: nobody left to tell
        chosen: list[_Pending] = []
        remaining = limit
        misses = 0
        for level in (levels if len(levels) == 1 else sorted(levels)):
            for item in reversed(levels[level].values()):
                if to is not None and to in item.not_to:
                    if len(item.not_to) >= others:
                        told.append(item)
                    continue
                cost = overhead + len(item.payload)
                if cost <= remaining:
                    chosen.append(item)
                    remaining -= cost
                    if remaining < floor:
                        break
                else:
                    # A nearly full packet: stop looking after a few misses rather than
                    # walking a long queue for a tiny item.
                    misses += 1
                    if misses > _MAX_MISSES:
                        break
            if remaining < floor or misses > _MAX_MISSES:
                break
        for item in told:
            self._remove(item)
            if item.key is not None and self._by_key.get(item.key) is item:
                del self._by_key[item.key]
        if not chosen:
            return []
        cap = retransmit_limit(self._mult, cluster_size)
        # Oldest first, so that each level stays (nearly) in age order for the next take.
        for item in (chosen if len(chosen) == 1 else sorted(chosen, key=_by_order)):
            transmits = item.transmits
            level_items = levels[transmits]
            del level_items[item.order]
            if not level_items:
                del levels[transmits]
            transmits += 1
            item.transmits = transmits
            if to is not None:
                item.not_to += (to,)
                if transmits >= cap or len(item.not_to) >= others:
                    self._forget(item)
                    continue
            elif transmits >= cap:
                self._forget(item)
                continue
            self._lift(item)
        payloads = []
        for item in chosen:
            payloads.append(item.payload)
        return payloads

    def _take_the_one(self, overhead: int, limit: int, cluster_size: int,
                      to: Hashable | None) -> list[bytes]:
        """`take` when one broadcast is pending (most calls): the same rules, fewer steps."""
        ((transmits, level_items),) = self._levels.items()
        ((order, item),) = level_items.items()
        if to is not None and to in item.not_to:
            if len(item.not_to) >= cluster_size - 1:
                self._remove(item)
                if item.key is not None and self._by_key.get(item.key) is item:
                    del self._by_key[item.key]
            return []
        if overhead + len(item.payload) > limit:
            return []
        del self._levels[transmits]
        transmits += 1
        item.transmits = transmits
        if to is not None:
            item.not_to += (to,)
            if len(item.not_to) >= cluster_size - 1:
                self._forget(item)
                return [item.payload]
        if transmits >= retransmit_limit(self._mult, cluster_size):
            self._forget(item)
        else:
            self._levels[transmits] = {order: item}
        return [item.payload]

    def _lift(self, item: _Pending) -> None:
        """File `item` (out of its level) at its new transmission count."""
        upper = self._levels.get(item.transmits)
        if upper is None:
            self._levels[item.transmits] = {item.order: item}
        else:
            upper[item.order] = item

    def clear(self) -> None:
        """Forget every pending broadcast."""
        self._levels.clear()
        self._by_key.clear()
        self._size = 0
        self._smallest = 1 << 30

    def _remove(self, item: _Pending) -> None:
        level = self._levels[item.transmits]
        del level[item.order]
        if not level:
            del self._levels[item.transmits]
        self._size -= 1

    def _forget(self, item: _Pending) -> None:
        self._size -= 1
        if item.key is not None and self._by_key.get(item.key) is item:
            del self._by_key[item.key]

    def _drop_one(self) -> None:
        level = self._levels[max(self._levels)]
        item = next(iter(level.values()))
        self._remove(item)
        if item.key is not None and self._by_key.get(item.key) is item:
            del self._by_key[item.key]
        self.dropped += 1
