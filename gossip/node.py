"""The trio driver of one gossip node: the SWIM core on real sockets.

Owns: the `Swim` instance's clock and I/O. One loop runs `handle_timeout` at `next_deadline()`
and flushes what the core produced (datagrams, push-pulls to start, membership events); a
receiver task feeds datagrams to `receive_datagram`, flushes the answers itself and moves
the loop's wait to the core's next deadline without waking it (an idle node wakes per probe,
not per packet, nor for the timeout of a probe that was acked); a server task answers
push-pull streams; every other input wakes the loop.
Membership events go to subscribers through bounded channels: a full subscriber loses events
(counted per subscription and in total) and never slows gossip; it can re-read the whole
view with `members()`.

Rules: `run` follows the run_x convention (`task_status.started(addr)`); `leave` works under
a shielded, time-boxed cancel scope, then stops `run`; keys change at runtime through
`install_key` / `use_key` / `remove_key` (the same keyring object seals UDP in the core and
push-pull frames here). Time is `trio.current_time()`.

May import: trio, the standard library, gossip.*.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass

import trio

from gossip.config import SwimConfig
from gossip.delegate import Delegate
from gossip.errors import GossipError
from gossip.identity import KeyCache, Signer
from gossip.keyring import Keyring
from gossip.swim import Member, MembershipEvent, Swim, SwimStatistics
from gossip.transport import Transport, TransportLimits, TransportStatistics, open_transport
from gossip.wire import Addr

__all__ = ["GossipNode", "GossipNodeStatistics", "Subscription"]


@dataclass(frozen=True)
class GossipNodeStatistics:
    """Everything a node counts: the core's, the transport's, and event delivery."""

    swim: SwimStatistics
    transport: TransportStatistics
    #: reason -> packets or frames dropped: "decode" and "auth" (core and push-pull),
    #: "size", "busy", "timeout", "socket", "state"; claims dropped: "replay", "signature",
    #: "unknown_key", "implausible"; replies not sent: "reply_capped", "relay_refused".
    dropped: Mapping[str, int]
    events_published: int
    events_dropped: int
    subscribers: int
    push_pulls_in_flight: int


class Subscription:
    """Membership events for one consumer, from a bounded buffer (overflow is counted)."""

    def __init__(self, capacity: int) -> None:
        self._send, self._receive = trio.open_memory_channel[MembershipEvent](capacity)
        #: Events this subscriber missed because its buffer was full.
        self.dropped = 0

    def _offer(self, event: MembershipEvent) -> bool:
        """Hand over without waiting; False once the consumer has gone away."""
        try:
            self._send.send_nowait(event)
        except trio.WouldBlock:
            self.dropped += 1
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True

    def _end(self) -> None:
        """The node stopped: the consumer sees the end of the stream after the buffer."""
        self._send.close()

    async def receive(self) -> MembershipEvent:
        return await self._receive.receive()

    def receive_nowait(self) -> MembershipEvent:
        """Raises trio.WouldBlock when nothing is buffered."""
        return self._receive.receive_nowait()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> MembershipEvent:
        try:
            return await self._receive.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    def close(self) -> None:
        self._receive.close()


class GossipNode:
    """One SWIM member on a UDP+TCP port. `await nursery.start(node.run)`, then `join`."""

    def __init__(self, config: SwimConfig, name: str, bind: Addr, *, meta: bytes = b"",
                 keyring: Keyring | None = None, delegate: Delegate | None = None,
                 advertise: Addr | None = None, rng: random.Random | None = None,
                 tcp_timeout_s: float = 10.0, max_streams: int = 16,
                 signer: Signer | None = None, keys: KeyCache | None = None) -> None:
        """`signer` and `keys`: origin authentication (see `Swim`); whoever holds `keys`
        fetches the names on `keys.wanted()` (the agent: from etcd) and `learn`s them."""
        config.validate()
        if tcp_timeout_s <= 0:
            raise GossipError(f"GossipNode tcp_timeout_s: must be > 0, got {tcp_timeout_s!r}")
        if max_streams < 1:
            raise GossipError(f"GossipNode max_streams: must be >= 1, got {max_streams!r}")
        if advertise is None and bind[0] in ("0.0.0.0", "::", ""):
            raise GossipError(f"GossipNode advertise: required when binding the wildcard "
                              f"address {bind[0]!r}")
        self.config = config
        self.name = name
        self._bind = bind
        self._advertise = advertise
        self._meta = meta
        self._keyring = keyring
        self._delegate = delegate
        self._signer = signer
        self.identity_keys = keys
        self._rng = rng if rng is not None else random.Random()
        self._limits = TransportLimits(udp_max_bytes=config.udp_budget,
                                       chunk_limit=config.push_pull_chunk_limit,
                                       tcp_timeout_s=tcp_timeout_s, max_streams=max_streams)
        self._swim: Swim | None = None
        self._transport: Transport | None = None
        self._nursery: trio.Nursery | None = None
        self._wakeup = trio.Event()
        self._ticked = trio.Event()
        self._sleep: trio.CancelScope | None = None  # `_drive`'s wait for its next deadline
        self._subscribers: list[Subscription] = []
        self._events_published = 0
        self._events_dropped = 0
        self._in_flight = 0
        self._left = False

    # -- lifecycle -------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[Addr] = trio.TASK_STATUS_IGNORED) -> None:
        """Bind, start the core, report our advertised address, gossip until cancelled/left."""
        if self._swim is not None:
            raise GossipError(f"gossip node {self.name}: already ran; make a new GossipNode")
        identity = (None if self._signer is None or self.identity_keys is None
                    else (self.name, self._signer, self.identity_keys))
        transport = await open_transport(self._bind, keyring=self._keyring, limits=self._limits,
                                         identity=identity)
        try:
            addr = self._advertise if self._advertise is not None else transport.addr
            if self._advertise is not None and self._advertise[1] == 0:
                addr = (self._advertise[0], transport.addr[1])
            self._swim = Swim(self.config, self.name, addr, meta=self._meta, rng=self._rng,
                              now=trio.current_time(), delegate=self._delegate,
                              keyring=self._keyring, signer=self._signer,
                              keys=self.identity_keys)
            self._transport = transport
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(transport.serve_push_pulls, self._state, self._merge)
                nursery.start_soon(self._receive_loop)
                nursery.start_soon(self._drive)
                task_status.started(addr)
        finally:
            self._nursery = None
            with trio.CancelScope(shield=True):
                await transport.aclose()
            for subscription in self._subscribers:
                subscription._end()

    async def join(self, seeds: list[Addr]) -> int:
        """Push-pull with each seed (join flag) and announce ourselves; how many answered."""
        swim = self._running()
        swim.join(list(seeds), trio.current_time())
        starts = swim.push_pulls_to_start()
        answered = 0

        async def one(addr: Addr, join: bool) -> None:
            nonlocal answered
            if await self._push_pull(addr, join) and join:
                answered += 1

        async with trio.open_nursery() as nursery:
            for start in starts:
                nursery.start_soon(one, start.addr, start.join)
        self._wake()
        return answered

    async def leave(self, timeout_s: float = 3.0) -> None:
        """Announce a graceful leave and wait (at most `timeout_s`, shielded) until it has
        been sent; then stop `run`."""
        swim = self._running()
        if self._nursery is None or self._left:
            return  # `run` has ended or is ending: nothing left to announce with
        self._left = True
        with trio.CancelScope(shield=True, deadline=trio.current_time() + timeout_s):
            swim.leave(trio.current_time())
            self._wake()
            while swim.statistics().broadcasts_pending > 0 and swim.cluster_size() > 1:
                await self._ticked.wait()
            # one more turn of the loop (woken now: no timer may be due soon) so the last
            # packets are on the wire
            self._wake()
            await self._ticked.wait()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    # -- the loop ----------------------------------------------------------------------------------

    async def _drive(self) -> None:
        swim = self._running()
        while True:
            # A fresh event before the work: a wake-up during the flush is not lost.
            self._wakeup = trio.Event()
            if trio.current_time() >= swim.next_deadline():
                swim.handle_timeout(trio.current_time())
            await self._flush(swim)
            ticked, self._ticked = self._ticked, trio.Event()
            ticked.set()
            with trio.move_on_at(swim.next_deadline()) as self._sleep:
                await self._wakeup.wait()
            self._sleep = None

    async def _flush(self, swim: Swim) -> None:
        transport = self._transport
        assert transport is not None and self._nursery is not None
        for start in swim.push_pulls_to_start():
            self._nursery.start_soon(self._push_pull, start.addr, start.join)
        self._publish_events()
        for data, addr in swim.datagrams_to_send():
            await transport.send_datagram(data, addr)

    async def _receive_loop(self) -> None:
        transport = self._transport
        swim = self._running()
        assert transport is not None
        while True:
            data, addr = await transport.receive_datagram()
            swim.receive_datagram(data, addr, trio.current_time())
            # Answer from here (an ack, a relayed ping): the timer loop is not woken; its
            # wait moves to the next deadline the packet left (earlier: a new timer; later:
            # an acked probe's timeout no longer due).
            await self._flush(swim)
            sleep = self._sleep
            if sleep is not None:
                sleep.deadline = swim.next_deadline()

    async def _push_pull(self, addr: Addr, join: bool) -> bool:
        transport = self._transport
        assert transport is not None
        self._in_flight += 1
        try:
            return await transport.push_pull(addr, join, self._state, self._merge)
        finally:
            self._in_flight -= 1
            self._wake()

    def _state(self, join: bool, peer: str | Addr | None) -> list[bytes]:
        return self._running().push_pull_state(join, peer)

    def _merge(self, chunk: bytes, addr: Addr, join: bool) -> bool:
        merged = self._running().merge_push_pull_chunk(chunk, addr, join, trio.current_time())
        self._publish_events()
        self._wake()
        return merged

    def _publish_events(self) -> None:
        """Hand the core's events to subscribers at once (never waits), so a change seen in
        `members()` is already in every subscriber's buffer."""
        swim = self._running()
        while (event := swim.next_event()) is not None:
            self._events_published += 1
            kept = []
            for subscription in self._subscribers:
                before = subscription.dropped
                if subscription._offer(event):
                    kept.append(subscription)
                    self._events_dropped += subscription.dropped - before
            self._subscribers = kept

    def _wake(self) -> None:
        self._wakeup.set()

    def _running(self) -> Swim:
        if self._swim is None:
            raise GossipError(f"gossip node {self.name}: not running (start run() first)")
        return self._swim

    # -- the caller's API --------------------------------------------------------------------------

    @property
    def addr(self) -> Addr:
        """Our advertised address (valid once `run` has started)."""
        return self._running().addr

    def subscribe(self, capacity: int = 1024) -> Subscription:
        """Membership events from now on, buffered up to `capacity` (then dropped, counted)."""
        if capacity < 1:
            raise GossipError(f"subscribe capacity: must be >= 1, got {capacity!r}")
        subscription = Subscription(capacity)
        self._subscribers.append(subscription)
        return subscription

    def members(self) -> list[Member]:
        return self._running().members()

    def member(self, name: str) -> Member | None:
        return self._running().member(name)

    def set_meta(self, meta: bytes) -> None:
        self._running().set_meta(meta, trio.current_time())
        self._wake()

    def broadcast_user(self, payload: bytes, key: str | None = None) -> None:
        self._running().broadcast_user(payload, trio.current_time(), key)
        self._wake()

    def delegate_has_news(self) -> None:
        """The delegate queued broadcasts (see `gossip.delegate`); a no-op before `run`."""
        if self._swim is not None:
            self._swim.delegate_has_news(trio.current_time())
            self._wake()

    def keys_learned(self) -> None:
        """The key cache learned public keys: replay the claims held for them."""
        self._running().keys_learned(trio.current_time())
        self._publish_events()
        self._wake()

    def take_probe_rtts(self) -> list[float]:
        """Probe round trips (seconds) since the last call; see `Swim.take_probe_rtts`."""
        return self._running().take_probe_rtts()

    def keys(self) -> list[bytes]:
        """Installed keys, primary first ([] when encryption is off)."""
        return [] if self._keyring is None else self._keyring.keys()

    def install_key(self, key: bytes) -> None:
        self._require_keyring().install(key)

    def use_key(self, key: bytes) -> None:
        self._require_keyring().use(key)

    def remove_key(self, key: bytes) -> None:
        self._require_keyring().remove(key)

    def _require_keyring(self) -> Keyring:
        if self._keyring is None:
            raise GossipError(f"gossip node {self.name}: encryption is off (no keyring); "
                              f"keys cannot be changed at runtime")
        return self._keyring

    def statistics(self) -> GossipNodeStatistics:
        swim = self._running()
        transport = self._transport
        assert transport is not None
        core = swim.statistics()
        traffic = transport.statistics()
        dropped = dict(traffic.dropped)
        dropped["decode"] = dropped.get("decode", 0) + core.wire_errors
        dropped["auth"] = dropped.get("auth", 0) + core.auth_failures
        dropped["replay"] = 0 if self._keyring is None else self._keyring.replays
        dropped["signature"] = core.bad_signatures
        dropped["unknown_key"] = core.unknown_keys
        dropped["implausible"] = core.implausible_claims
        dropped["reply_capped"] = core.replies_capped
        dropped["relay_refused"] = core.relays_refused
        return GossipNodeStatistics(
            swim=core, transport=traffic, dropped=dropped,
            events_published=self._events_published, events_dropped=self._events_dropped,
            subscribers=len(self._subscribers), push_pulls_in_flight=self._in_flight)
