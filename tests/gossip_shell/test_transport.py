"""Transport: push-pull framing, sealing and matching, per-stream time boxes that stall
nothing else, bounded frames and streams, UDP counters, binding, and a fuzz of the stream
reader."""

from __future__ import annotations

import os
import struct

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from gossip.errors import GossipError
from gossip.keyring import Keyring
from gossip.transport import (
    CHUNK,
    END,
    HELLO,
    REPLY,
    Transport,
    TransportLimits,
    TransportStatistics,
    encode_frame,
    open_transport,
)
from gossip.wire import Addr
from tests.polling import wait_until

LOOPBACK = ("127.0.0.1", 0)
KEY = bytes(range(32))


class Peer:
    """State to offer and what was merged, for one side of a push-pull."""

    def __init__(self, chunks: list[bytes], refuse: bytes | None = None) -> None:
        self.chunks = chunks
        self.merged: list[tuple[bytes, bool]] = []
        self.joins_asked: list[bool] = []
        self.refuse = refuse

    def state(self, join: bool, peer: str | Addr | None) -> list[bytes]:
        self.joins_asked.append(join)
        return self.chunks

    def merge(self, chunk: bytes, addr: Addr, join: bool) -> bool:
        if chunk == self.refuse:
            return False
        self.merged.append((chunk, join))
        return True


async def serve(nursery: trio.Nursery, transport: Transport, peer: Peer) -> None:
    await nursery.start(transport.serve_push_pulls, peer.state, peer.merge)


@pytest.mark.parametrize("sealed", [False, True])
async def test_push_pull_exchanges_every_chunk_both_ways(sealed: bool) -> None:
    keyring = Keyring([KEY], KEY) if sealed else None
    limits = TransportLimits(chunk_limit=70_000)
    big = os.urandom(70_000)  # spans many TCP reads
    server_side = Peer([b"s1", big, b""])
    client_side = Peer([b"c1", b"c2"])
    async with trio.open_nursery() as nursery:
        server = await open_transport(LOOPBACK, keyring=keyring, limits=limits)
        client = await open_transport(LOOPBACK, keyring=keyring, limits=limits)
        await serve(nursery, server, server_side)
        assert await client.push_pull(server.addr, True, client_side.state, client_side.merge)
        assert server_side.merged == [(b"c1", True), (b"c2", True)]
        assert server_side.joins_asked == [True]
        assert client_side.merged == [(b"s1", True), (big, True), (b"", True)]
        out, into = client.statistics(), server.statistics()
        assert out.push_pulls == {("out", "ok"): 1}
        assert out.packets[("out", "push_pull")] == 4 == into.packets[("in", "push_pull")]
        assert out.packets[("in", "push_pull")] == 5 == into.packets[("out", "push_pull")]
        assert out.bytes[("out", "push_pull")] == into.bytes[("in", "push_pull")]
        await wait_until(lambda: server.statistics().push_pulls == {("in", "ok"): 1}, "served")
        assert out.dropped == {} and server.statistics().dropped == {}
        nursery.cancel_scope.cancel()


async def test_sealed_frames_with_an_unknown_key_are_dropped_as_auth() -> None:
    async with trio.open_nursery() as nursery:
        server = await open_transport(LOOPBACK, keyring=Keyring([KEY], KEY))
        other = os.urandom(16)
        client = await open_transport(LOOPBACK, keyring=Keyring([other], other))
        server_side = Peer([b"secret"])
        await serve(nursery, server, server_side)
        client_side = Peer([b"hello"])
        assert not await client.push_pull(server.addr, False, client_side.state,
                                          client_side.merge)
        await wait_until(lambda: server.statistics().dropped.get("auth") == 1, "auth drop")
        assert server_side.merged == [] and client_side.merged == []
        nursery.cancel_scope.cancel()


async def answer_with(nursery: trio.Nursery, frames: bytes) -> Addr:
    """A server that reads the whole request and answers `frames` verbatim."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")

    async def handler(stream: trio.SocketStream) -> None:
        async with stream:
            with trio.move_on_after(0.2):
                while await stream.receive_some(65536):
                    pass  # the client does not close its side: the time box ends reading
            await stream.send_all(frames)

    await nursery.start(trio.serve_listeners, handler, listeners)
    addr: Addr = listeners[0].socket.getsockname()[:2]
    return addr


@pytest.mark.parametrize("frames", [
    encode_frame(REPLY, b"\0" * 8, None) + encode_frame(END, struct.pack("!I", 0), None),
    encode_frame(CHUNK, b"x", None),
    encode_frame(REPLY, b"", None),
], ids=["someone-else's-reply", "no-reply-header", "short-reply"])
async def test_a_reply_not_matching_our_request_is_refused(frames: bytes) -> None:
    async with trio.open_nursery() as nursery:
        addr = await answer_with(nursery, frames)
        client = await open_transport(LOOPBACK)
        peer = Peer([b"c"])
        assert not await client.push_pull(addr, False, peer.state, peer.merge)
        assert client.statistics().dropped == {"decode": 1}
        assert peer.merged == []
        nursery.cancel_scope.cancel()


async def raw_request(addr: Addr, frames: bytes) -> bytes:
    """Send `frames`, then read until the server closes."""
    stream = await trio.open_tcp_stream(*addr)
    received = b""
    async with stream:
        await stream.send_all(frames)
        with trio.fail_after(5):
            while data := await stream.receive_some(65536):
                received += data
    return received


@pytest.mark.parametrize(("frames", "reason"), [
    (encode_frame(HELLO, b"\x00" + bytes(8), None) + encode_frame(CHUNK, b"a", None)
     + encode_frame(END, struct.pack("!I", 5), None), "decode"),
    (encode_frame(HELLO, b"\x00" + bytes(8), None) + encode_frame(CHUNK, b"bad", None),
     "decode"),
    (encode_frame(HELLO, b"\x00", None), "decode"),
    (encode_frame(CHUNK, b"a", None), "decode"),
    (struct.pack("!I", 0), "decode"),
    (struct.pack("!I", 10**6) + b"x" * 100, "size"),
], ids=["count-mismatch", "merge-refused", "short-hello", "no-hello", "empty", "oversize"])
async def test_bad_requests_end_the_stream_and_are_counted(frames: bytes, reason: str) -> None:
    async with trio.open_nursery() as nursery:
        server = await open_transport(LOOPBACK, limits=TransportLimits(chunk_limit=4096))
        peer = Peer([b"never sent"], refuse=b"bad")
        await serve(nursery, server, peer)
        assert await raw_request(server.addr, frames) == b""
        await wait_until(lambda: server.statistics().dropped.get(reason) == 1, reason)
        assert peer.joins_asked == []
        nursery.cancel_scope.cancel()


async def test_a_silent_peer_times_out_without_stalling_other_streams() -> None:
    limits = TransportLimits(tcp_timeout_s=1.0)
    async with trio.open_nursery() as nursery:
        server = await open_transport(LOOPBACK, limits=limits)
        client = await open_transport(LOOPBACK, limits=limits)
        await serve(nursery, server, Peer([b"s"]))
        silent = await trio.open_tcp_stream(*server.addr)
        peer = Peer([b"c"])
        start = trio.current_time()
        assert await client.push_pull(server.addr, False, peer.state, peer.merge)
        assert trio.current_time() - start < 0.5  # not behind the silent one
        await wait_until(lambda: server.statistics().push_pulls.get(("in", "ok")) == 1
                         and server.statistics().streams_active == 1, "only the silent one left")
        await wait_until(lambda: server.statistics().push_pulls.get(("in", "timeout")) == 1,
                         "the silent stream timed out", timeout=5)
        assert await silent.receive_some(10) == b""
        await silent.aclose()

        # the other way round: a server that accepts and never answers
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        mute: Addr = listeners[0].socket.getsockname()[:2]
        assert not await client.push_pull(mute, False, peer.state, peer.merge)
        assert client.statistics().push_pulls[("out", "timeout")] == 1
        for listener in listeners:
            await listener.aclose()
        nursery.cancel_scope.cancel()


async def test_streams_beyond_the_limit_are_closed_as_busy() -> None:
    async with trio.open_nursery() as nursery:
        server = await open_transport(LOOPBACK, limits=TransportLimits(max_streams=1))
        await serve(nursery, server, Peer([]))
        holder = await trio.open_tcp_stream(*server.addr)
        await wait_until(lambda: server.statistics().streams_active == 1, "first stream served")
        assert await raw_request(server.addr, b"") == b""
        assert server.statistics().dropped == {"busy": 1}
        await holder.aclose()
        nursery.cancel_scope.cancel()


async def test_nothing_listening_is_a_failed_push_pull() -> None:
    client = await open_transport(LOOPBACK)
    probe = await open_transport(LOOPBACK)
    closed_addr = probe.addr
    await probe.aclose()
    peer = Peer([])
    assert not await client.push_pull(closed_addr, True, peer.state, peer.merge)
    assert client.statistics().push_pulls == {("out", "failed"): 1}
    await client.aclose()


async def test_datagrams_are_counted_and_oversize_ones_dropped() -> None:
    a = await open_transport(LOOPBACK, limits=TransportLimits(udp_max_bytes=500))
    b = await open_transport(LOOPBACK, limits=TransportLimits(udp_max_bytes=500))
    await a.send_datagram(b"x" * 501, b.addr)
    await a.send_datagram(b"hello", b.addr)
    with trio.fail_after(5):
        data, source = await b.receive_datagram()
    assert (data, source) == (b"hello", a.addr)
    stats = b.statistics()
    assert stats.dropped == {"size": 1}
    assert stats.packets == {("in", "gossip"): 1} and stats.bytes == {("in", "gossip"): 5}
    assert a.statistics().packets == {("out", "gossip"): 2}
    await a.aclose()
    await b.aclose()


async def test_binding_shares_one_port_and_a_taken_port_is_named() -> None:
    first = await open_transport(LOOPBACK)
    assert first.addr[0] == "127.0.0.1" and first.addr[1] > 0
    assert first._listener.socket.getsockname()[1] == first.addr[1]
    with pytest.raises(GossipError, match=f"port {first.addr[1]}"):
        await open_transport(first.addr)
    await first.aclose()


def exchange_with_bytes(blob: bytes, keyring: Keyring | None
                        ) -> tuple[str, TransportStatistics, Peer]:
    """Run a responder against `blob` over an in-memory stream: its outcome, its counters and
    what it merged."""

    async def main() -> tuple[str, TransportStatistics, Peer]:
        transport = await open_transport(LOOPBACK, keyring=keyring,
                                         limits=TransportLimits(chunk_limit=4096))
        client, server = trio.testing.memory_stream_pair()
        peer = Peer([b"state"])
        await client.send_all(blob)
        await client.send_eof()
        with trio.fail_after(5):
            outcome = await transport._respond(server, ("127.0.0.1", 1), peer.state, peer.merge)
        stats = transport.statistics()
        await transport.aclose()
        return outcome, stats, peer

    return trio.run(main)


HELLO_REQUEST = (encode_frame(HELLO, b"\x01" + bytes(8), None)
                 + encode_frame(CHUNK, b"abc", None) + encode_frame(END, struct.pack("!I", 1),
                                                                    None))


def test_the_valid_request_used_by_the_fuzz_succeeds() -> None:
    outcome, stats, peer = exchange_with_bytes(HELLO_REQUEST, None)
    assert outcome == "ok"
    assert stats.push_pulls == {("in", "ok"): 1} and stats.dropped == {}
    assert [chunk for chunk, _join in peer.merged] == [b"abc"]


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=200),
                 st.lists(st.tuples(st.integers(0, len(HELLO_REQUEST) - 1), st.integers(1, 255)),
                          min_size=1, max_size=3).map(
                     lambda edits: bytes(_mutate(HELLO_REQUEST, edits)))),
       st.booleans())
def test_any_bytes_end_in_a_counted_outcome(blob: bytes, sealed: bool) -> None:
    outcome, stats, peer = exchange_with_bytes(blob, Keyring([KEY], KEY) if sealed else None)
    assert outcome in ("ok", "failed")
    # Exactly one push-pull counted, with the outcome returned; a failure names one reason.
    assert stats.push_pulls == {("in", outcome): 1}
    if outcome == "ok":
        # In: HELLO, every merged chunk, END. Out: REPLY, our one chunk, END.
        assert stats.dropped == {}
        assert stats.packets[("in", "push_pull")] == 2 + len(peer.merged)
        assert stats.packets[("out", "push_pull")] == 3
    else:
        assert sum(stats.dropped.values()) == 1, stats.dropped
        assert set(stats.dropped) <= {"decode", "size", "auth", "timeout", "state"}
        assert ("out", "push_pull") not in stats.packets  # no reply to garbage


def _mutate(data: bytes, edits: list[tuple[int, int]]) -> bytearray:
    out = bytearray(data)
    for index, xor in edits:
        out[index] ^= xor
    return out


async def test_idle_connections_from_one_source_cannot_lock_out_a_join() -> None:
    limits = TransportLimits(max_streams=16, max_streams_per_source=2, hello_timeout_s=0.5)
    async with trio.open_nursery() as nursery:
        server = await open_transport(LOOPBACK, limits=limits)
        await serve(nursery, server, Peer([b"s"]))
        idle = [await trio.open_tcp_stream(*server.addr) for _ in range(5)]
        await wait_until(lambda: server.statistics().dropped.get("busy") == 3, "per-source cap")
        other = trio.socket.socket()
        await other.bind(("127.0.0.2", 0))
        await other.connect(server.addr)  # another source still gets a slot
        await wait_until(lambda: server.statistics().streams_active == 3, "other source served")
        await wait_until(lambda: server.statistics().dropped.get("timeout") == 3
                         and server.statistics().streams_active == 0, "idle ones closed")
        client = await open_transport(LOOPBACK, limits=limits)
        peer = Peer([b"c"])
        assert await client.push_pull(server.addr, True, peer.state, peer.merge)
        for stream in idle:
            await stream.aclose()
        other.close()
        nursery.cancel_scope.cancel()


async def test_a_stream_of_too_many_chunks_is_cut_off() -> None:
    limits = TransportLimits(max_chunks=3)
    frames = (encode_frame(HELLO, b"\x00" + bytes(8), None)
              + b"".join(encode_frame(CHUNK, b"x", None) for _ in range(10)))
    async with trio.open_nursery() as nursery:
        server = await open_transport(LOOPBACK, limits=limits)
        peer = Peer([b"never sent"])
        await serve(nursery, server, peer)
        assert await raw_request(server.addr, frames) == b""
        await wait_until(lambda: server.statistics().dropped.get("size") == 1, "size")
        assert len(peer.merged) == 3 and peer.joins_asked == []
        nursery.cancel_scope.cancel()


async def test_with_identities_a_stranger_gets_no_state_even_in_plain_text() -> None:
    from gossip.identity import KeyCache, Signer

    signers = {"a": Signer.generate(), "b": Signer.generate()}
    keys = KeyCache({name: s.public_key for name, s in signers.items()})
    async with trio.open_nursery() as nursery:
        server = await open_transport(LOOPBACK, identity=("a", signers["a"], keys))
        member = await open_transport(LOOPBACK, identity=("b", signers["b"], keys))
        served = Peer([b"secret state"])
        await serve(nursery, server, served)
        peer = Peer([b"c"])
        assert await member.push_pull(server.addr, True, peer.state, peer.merge)
        assert peer.merged == [(b"secret state", True)]
        stranger = encode_frame(HELLO, b"\x00" + bytes(8), None) + encode_frame(
            END, struct.pack("!I", 0), None)
        assert await raw_request(server.addr, stranger) == b""
        impostor = Signer.generate()
        forged = b"\x00" + bytes(8) + impostor.sign(b"x") + b"b"
        assert await raw_request(server.addr, encode_frame(HELLO, forged, None)) == b""
        unknown = await open_transport(LOOPBACK, identity=("c", impostor, KeyCache()))
        assert not await unknown.push_pull(server.addr, False, peer.state, peer.merge)
        await wait_until(lambda: server.statistics().dropped.get("auth") == 3, "three refusals")
        assert keys.wanted() == ["c"]  # the unknown name is fetched by the shell
        nursery.cancel_scope.cancel()
