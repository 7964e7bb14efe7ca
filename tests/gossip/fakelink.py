"""A fake link between a few `Swim`s for pair tests (h11's ConnectionPair, for SWIM).

No sockets, no sleeps: datagrams are delivered in order, instantly, unless the link between
two nodes is cut; push-pulls run synchronously; time moves only through `advance`.
"""

from __future__ import annotations

import random
from collections import defaultdict

from gossip.config import SwimConfig
from gossip.delegate import Delegate
from gossip.identity import KeyCache, Signer
from gossip.swim import MembershipEvent, PacketCipher, Swim
from gossip.wire import Addr


class FakeLink:
    """Nodes named a, b, c... at 127.0.0.x:7946, wired together; `now` is virtual."""

    def __init__(self, count: int, config: SwimConfig | None = None, *,
                 keyrings: list[PacketCipher | None] | None = None,
                 delegates: list[Delegate | None] | None = None, seed: int = 7,
                 signed: bool = False) -> None:
        """`signed`: every node gets an identity key and one `KeyCache` of all of them
        (what etcd would hand out); `self.signers[name]` holds each key."""
        self.config = config or SwimConfig.lan()
        self.now = 0.0
        self.cut: set[frozenset[Addr]] = set()
        self.down: set[Addr] = set()
        self.sent: list[tuple[Addr, Addr, bytes]] = []
        self.events: dict[str, list[MembershipEvent]] = defaultdict(list)
        self.swims: list[Swim] = []
        names = [chr(ord("a") + i) for i in range(count)]
        self.signers = {name: Signer.generate() for name in names} if signed else {}
        self.key_caches = {name: KeyCache({n: k.public_key for n, k in self.signers.items()})
                           for name in names} if signed else {}
        for i in range(count):
            name = names[i]
            self.swims.append(Swim(
                self.config, name, (f"127.0.0.{i + 1}", 7946), meta=f"meta-{name}".encode(),
                rng=random.Random(seed * 100 + i), now=self.now,
                keyring=keyrings[i] if keyrings else None,
                delegate=delegates[i] if delegates else None,
                signer=self.signers.get(name), keys=self.key_caches.get(name)))
        self.by_addr = {s.addr: s for s in self.swims}

    def __getitem__(self, name: str) -> Swim:
        return next(s for s in self.swims if s.name == name)

    def connected(self, a: Addr, b: Addr) -> bool:
        return a not in self.down and b not in self.down and frozenset((a, b)) not in self.cut

    def isolate(self, name: str) -> None:
        """Cut every link of `name` (both directions)."""
        me = self[name].addr
        for other in self.swims:
            if other.addr != me:
                self.cut.add(frozenset((me, other.addr)))

    def flush(self) -> None:
        """Deliver everything in flight until nobody has anything more to send."""
        busy = True
        for _ in range(100_000):  # a storm that never settles is a bug, not a long wait
            if not busy:
                return
            busy = False
            for swim in self.swims:
                if swim.addr in self.down:
                    swim.datagrams_to_send()
                    swim.push_pulls_to_start()
                    continue
                for data, addr in swim.datagrams_to_send():
                    busy = True
                    self.sent.append((swim.addr, addr, data))
                    peer = self.by_addr.get(addr)
                    if peer is not None and self.connected(swim.addr, addr):
                        peer.receive_datagram(data, swim.addr, self.now)
                for start in swim.push_pulls_to_start():
                    busy = True
                    peer = self.by_addr.get(start.addr)
                    if peer is None or not self.connected(swim.addr, start.addr):
                        continue
                    mine = swim.push_pull_state(start.join, start.addr)
                    for chunk in mine:
                        peer.merge_push_pull_chunk(chunk, swim.addr, start.join, self.now)
                    theirs = peer.push_pull_state(start.join, swim.name)
                    for chunk in theirs:
                        swim.merge_push_pull_chunk(chunk, peer.addr, start.join, self.now)
                event = swim.next_event()
                while event is not None:
                    self.events[swim.name].append(event)
                    event = swim.next_event()
        raise AssertionError("the fake link never settled: a datagram storm")

    def advance(self, seconds: float) -> None:
        """Run timers in order up to now + seconds, delivering after each."""
        until = self.now + seconds
        self.flush()
        for _ in range(10_000_000):  # each turn runs a due timer: bounded by the timers due
            live = [s for s in self.swims if s.addr not in self.down]
            due = min((s.next_deadline() for s in live), default=float("inf"))
            if due > until:
                break
            self.now = max(self.now, due)
            for swim in live:
                if swim.next_deadline() <= self.now:
                    swim.handle_timeout(self.now)
            self.flush()
        else:
            raise AssertionError("timers never got past the horizon")
        self.now = until

    def form(self) -> None:
        """Everybody joins through the first node and the news settles."""
        for swim in self.swims[1:]:
            swim.join([self.swims[0].addr], self.now)
        self.advance(3.0)

    def kinds(self, name: str) -> list[str]:
        return [type(e).__name__ for e in self.events[name]]
