"""The gossip transport: one UDP socket for SWIM packets and a TCP listener for push-pull.

Owns: binding UDP and TCP on the same port, sending and receiving datagrams, the push-pull
stream protocol, per-stream time boxes, and the traffic counters (packets and bytes by
direction and message type, drops by reason).

Push-pull stream (both directions use the same framing):

    frame   = length (4 bytes, big endian) | payload, payload <= max_frame_bytes
    payload = sealed(kind byte | body) when a keyring is set, else kind byte | body
    initiator -> HELLO(flags: bit 0 = join, request id: 8 random bytes
                       [, signature (64) | node name: with an identity]), CHUNK*, END(count)
    responder -> REPLY(the same request id), CHUNK*, END(count)

Each CHUNK carries one chunk of `Swim.push_pull_state` (bounded by push_pull_chunk_limit), so
no message is ever unbounded, and the receiver merges chunks as they arrive. A reply whose
request id is not ours, a frame too long, one that does not authenticate, or one that does
not decode ends the stream and is counted as a drop ("size", "auth", "decode"). Every stream
runs in its own task under its own deadline (`tcp_timeout_s`, also checked after each merged
chunk, since merging is synchronous), so a slow or silent peer never stalls probing, other
streams, or the caller. Listener bounds: at most `max_streams` inbound streams at once and
`max_streams_per_source` from one address (extra connections are closed, "busy"); the hello
must arrive within `hello_timeout_s` ("timeout"); a peer sends at most `max_chunks` chunks and
`max_stream_bytes` bytes ("size"). The responder hands out its state only after the
initiator's hello (authentic, with a keyring) and state arrived; with an identity (signed
gossip), the hello must also carry the initiator's node name and its Ed25519 signature of the
request id, verified against the trusted key ("auth" otherwise; an unknown key is queued for
the shell to fetch, and the initiator's retry succeeds), so a stranger gets nothing even
without encryption.

UDP payloads are sealed by the SWIM core, so this layer counts them as one message type
("gossip"); push-pull frames count as "push_pull". Undecodable or unauthentic datagrams are
counted by the core (`SwimStatistics.wire_errors` / `auth_failures`); oversize ones here.

May import: trio, the standard library, gossip.errors, gossip.identity, gossip.keyring,
gossip.wire.
"""

from __future__ import annotations

import errno
import os
import struct
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import trio

from gossip.errors import GossipError, WireError
from gossip.identity import KeyCache, Signer, Verdict
from gossip.keyring import TCP, Keyring
from gossip.wire import ENCRYPTION_OVERHEAD, Addr

__all__ = [
    "FrameError", "Merge", "State", "Transport", "TransportLimits", "TransportStatistics",
    "encode_frame", "open_transport",
]

HELLO, REPLY, CHUNK, END = 1, 2, 3, 4
_LENGTH = struct.Struct("!I")
_COUNT = struct.Struct("!I")
_REQUEST_ID_BYTES = 8
_SIGNATURE_BYTES = 64
_HELLO_DOMAIN = b"vxmesh hello\x00"
_RECEIVE_BYTES = 65_536
_BIND_ATTEMPTS = 32

#: Our push-pull chunks for a stream, given the join flag and the peer: its gossip address
#: (we opened the stream) or its node name (it proved it in its hello; None without identity).
State = Callable[[bool, str | Addr | None], list[bytes]]
#: Merge one chunk of the peer's state (chunk, peer address, join flag); False if garbage.
Merge = Callable[[bytes, Addr, bool], bool]


class FrameError(WireError):
    """A push-pull frame was refused; `reason` is the drop counter it goes to."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class TransportLimits:
    """Bounds of the transport (bytes, seconds, streams)."""

    #: bytes. Largest datagram accepted; larger ones are dropped ("size"). The SWIM budget.
    udp_max_bytes: int = 1400
    #: bytes. Largest push-pull chunk; a frame may hold it plus kind byte and encryption.
    chunk_limit: int = 65_536
    #: s. Time box of one whole push-pull exchange, either side.
    tcp_timeout_s: float = 10.0
    #: streams. Inbound push-pulls served at once; further connections are closed ("busy").
    max_streams: int = 16
    #: streams. Inbound push-pulls from one source address at once; more are closed ("busy").
    max_streams_per_source: int = 4
    #: s. An inbound stream must deliver its (authentic) hello within this, or it is closed:
    #: idle connections cannot hold the listener's slots.
    hello_timeout_s: float = 2.0
    #: chunks. Most chunks the peer may send in one exchange ("size" beyond).
    max_chunks: int = 512
    #: bytes. Most bytes the peer may send in one exchange ("size" beyond).
    max_stream_bytes: int = 32 * 1024 * 1024

    @property
    def max_frame_bytes(self) -> int:
        return self.chunk_limit + 1 + ENCRYPTION_OVERHEAD


@dataclass(frozen=True)
class TransportStatistics:
    """Traffic counters. Keys of `packets`/`bytes`: (direction "in"/"out", message type)."""

    packets: Mapping[tuple[str, str], int]
    bytes: Mapping[tuple[str, str], int]
    dropped: Mapping[str, int]
    push_pulls: Mapping[tuple[str, str], int]
    send_errors: int
    streams_active: int


def encode_frame(kind: int, body: bytes, keyring: Keyring | None) -> bytes:
    """One length-prefixed frame, sealed with the primary key when a keyring is set."""
    payload = bytes((kind,)) + body
    if keyring is not None:
        payload = keyring.seal(payload, TCP)
    return _LENGTH.pack(len(payload)) + payload


class _FrameReader:
    """Reads whole frames from a stream, never buffering more than one frame, and never more
    than `max_total` bytes in all."""

    def __init__(self, stream: trio.abc.ReceiveStream, max_frame: int, max_total: int,
                 keyring: Keyring | None, on_frame: Callable[[int], None]) -> None:
        self._stream = stream
        self._max = max_frame
        self._left = max_total
        self._keyring = keyring
        self._on_frame = on_frame
        self._buffer = bytearray()

    async def _exactly(self, count: int) -> bytes:
        while len(self._buffer) < count:
            data = await self._stream.receive_some(max(count - len(self._buffer), 4096))
            if not data:
                raise FrameError("decode", "push-pull stream closed in the middle of a frame")
            self._buffer += data
        out = bytes(self._buffer[:count])
        del self._buffer[:count]
        return out

    async def read(self) -> tuple[int, bytes]:
        (length,) = _LENGTH.unpack(await self._exactly(_LENGTH.size))
        if length > self._max:
            raise FrameError("size", f"push-pull frame of {length} bytes exceeds "
                                     f"{self._max}")
        if length == 0:
            raise FrameError("decode", "empty push-pull frame")
        self._left -= _LENGTH.size + length
        if self._left < 0:
            raise FrameError("size", "push-pull stream exceeds max_stream_bytes")
        payload = await self._exactly(length)
        self._on_frame(_LENGTH.size + length)
        if self._keyring is not None:
            try:
                payload = self._keyring.open(payload, TCP)
            except WireError as exc:
                raise FrameError("auth", f"push-pull frame: {exc}") from None
            if not payload:
                raise FrameError("decode", "empty push-pull frame")
        return payload[0], payload[1:]


class Transport:
    """A bound UDP socket and TCP listener sharing one port. Build with `open_transport`."""

    def __init__(self, udp: trio.socket.SocketType, listener: trio.SocketListener,
                 addr: Addr, *, keyring: Keyring | None, limits: TransportLimits,
                 identity: tuple[str, Signer, KeyCache] | None = None) -> None:
        self._identity = identity
        self._udp = udp
        self._listener = listener
        self.addr = addr
        self.keyring = keyring
        self.limits = limits
        self._packets: Counter[tuple[str, str]] = Counter()
        self._bytes: Counter[tuple[str, str]] = Counter()
        self._dropped: Counter[str] = Counter()
        self._push_pulls: Counter[tuple[str, str]] = Counter()
        self._send_errors = 0
        self._streams_active = 0
        self._streams_by_source: Counter[str] = Counter()

    # -- UDP -------------------------------------------------------------------------------

    async def send_datagram(self, data: bytes, addr: Addr) -> None:
        """Send one packet; a socket error is counted, never raised (UDP may lose it anyway)."""
        try:
            await self._udp.sendto(data, addr)
        except OSError:
            self._send_errors += 1
            return
        self._count("out", "gossip", len(data))

    async def receive_datagram(self) -> tuple[bytes, Addr]:
        """The next datagram within `udp_max_bytes`; oversize ones are dropped and counted."""
        while True:
            try:
                data, source = await self._udp.recvfrom(_RECEIVE_BYTES)
            except OSError:
                # An ICMP error reported on the socket: nothing to deliver.
                self._dropped["socket"] += 1
                continue
            if len(data) > self.limits.udp_max_bytes:
                self._dropped["size"] += 1
                continue
            self._count("in", "gossip", len(data))
            return data, (source[0], source[1])

    # -- TCP push-pull -------------------------------------------------------------------------

    async def push_pull(self, addr: Addr, join: bool, state: State, merge: Merge) -> bool:
        """Exchange full state with `addr` within `tcp_timeout_s`; True if it completed."""
        outcome = "failed"
        with trio.move_on_after(self.limits.tcp_timeout_s) as scope:
            try:
                stream = await trio.open_tcp_stream(addr[0], addr[1])
            except OSError:
                stream = None
            if stream is not None:
                async with stream:
                    request_id = os.urandom(_REQUEST_ID_BYTES)
                    hello = bytes((1 if join else 0,)) + request_id + self._hello_proof(
                        request_id)
                    outcome = await self._exchange(stream, addr, join, state, merge,
                                                   first=(HELLO, hello), expect=REPLY,
                                                   request_id=request_id)
        if scope.cancelled_caught:
            outcome = "timeout"
        self._push_pulls["out", outcome] += 1
        return outcome == "ok"

    async def serve_push_pulls(self, state: State, merge: Merge, *,
                               task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                               ) -> None:
        """Accept push-pull streams until cancelled, each in its own time-boxed task."""
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                try:
                    stream = await self._listener.accept()
                except OSError as exc:
                    if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                        self._dropped["busy"] += 1
                        await trio.sleep(0.1)  # out of descriptors: let streams finish
                        continue
                    raise
                try:
                    peer = stream.socket.getpeername()
                except OSError:
                    await stream.aclose()
                    continue
                source = peer[0]
                if (self._streams_active >= self.limits.max_streams
                        or self._streams_by_source[source] >= self.limits.max_streams_per_source):
                    self._dropped["busy"] += 1
                    await stream.aclose()
                    continue
                self._streams_active += 1
                self._streams_by_source[source] += 1
                nursery.start_soon(self._serve_one, stream, (source, peer[1]), state, merge)

    async def _serve_one(self, stream: trio.SocketStream, peer: Addr, state: State,
                         merge: Merge) -> None:
        try:
            await self._respond(stream, peer, state, merge)
        finally:
            self._streams_active -= 1
            self._streams_by_source[peer[0]] -= 1
            if not self._streams_by_source[peer[0]]:
                del self._streams_by_source[peer[0]]

    async def _respond(self, stream: trio.abc.Stream, peer: Addr, state: State,
                       merge: Merge) -> str:
        """Answer one push-pull stream within tcp_timeout_s; the outcome is counted."""
        outcome = "failed"
        try:
            with trio.move_on_after(self.limits.tcp_timeout_s) as scope:
                async with stream:
                    outcome = await self._exchange(stream, peer, False, state, merge,
                                                   first=None, expect=HELLO, request_id=None)
            if scope.cancelled_caught:
                outcome = "timeout"
        finally:
            self._push_pulls["in", outcome] += 1
        return outcome

    async def _exchange(self, stream: trio.abc.Stream, peer: Addr, join: bool, state: State,
                        merge: Merge, *, first: tuple[int, bytes] | None, expect: int,
                        request_id: bytes | None) -> str:
        """One side of a push-pull. The initiator sends first; the responder answers, and only
        after the initiator's hello authenticated (with a keyring) and its state arrived."""
        limits = self.limits
        reader = _FrameReader(stream, limits.max_frame_bytes, limits.max_stream_bytes,
                              self.keyring, lambda size: self._count("in", "push_pull", size))
        deadline = trio.current_time() + limits.tcp_timeout_s
        initiator: str | None = None
        try:
            if first is not None:
                await self._send_state(stream, first, state(join, peer))
                kind, body = await reader.read()
            else:
                hello: tuple[int, bytes] | None = None
                with trio.move_on_after(limits.hello_timeout_s):
                    hello = await reader.read()
                if hello is None:
                    raise FrameError("timeout", "push-pull: no hello within hello_timeout_s")
                kind, body = hello
            if kind != expect:
                raise FrameError("decode", f"push-pull: expected frame kind {expect}, "
                                           f"got {kind}")
            if expect == HELLO:
                if len(body) < 1 + _REQUEST_ID_BYTES:
                    raise FrameError("decode", "push-pull hello of the wrong length")
                join = bool(body[0] & 1)
                request_id = body[1:1 + _REQUEST_ID_BYTES]
                initiator = self._check_hello(request_id, body[1 + _REQUEST_ID_BYTES:])
            elif body != request_id:
                raise FrameError("decode", "push-pull reply does not match our request")
            merged = 0
            while True:
                kind, body = await reader.read()
                if kind == CHUNK:
                    if merged >= limits.max_chunks:
                        raise FrameError("size", "push-pull: more than max_chunks chunks")
                    if not merge(body, peer, join):
                        raise FrameError("decode", "push-pull chunk did not decode")
                    merged += 1
                    # Merging is synchronous work: the time box is checked after each chunk
                    # (not only at awaits), and other tasks (probes) run in between.
                    if trio.current_time() > deadline:
                        raise FrameError("timeout", "push-pull: time box spent merging")
                    await trio.sleep(0)
                elif kind == END:
                    if len(body) != _COUNT.size or _COUNT.unpack(body)[0] != merged:
                        raise FrameError("decode", "push-pull end: chunk count mismatch")
                    break
                else:
                    raise FrameError("decode", f"push-pull: unexpected frame kind {kind}")
            if first is None:
                assert request_id is not None
                await self._send_state(stream, (REPLY, request_id), state(join, initiator))
        except FrameError as exc:
            self._dropped[exc.reason] += 1
            return "failed"
        except GossipError:
            # Our own state could not be chunked (a delegate chunk over the limit).
            self._dropped["state"] += 1
            return "failed"
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return "failed"
        return "ok"

    def _hello_proof(self, request_id: bytes) -> bytes:
        if self._identity is None:
            return b""
        name, signer, _ = self._identity
        return signer.sign(_HELLO_DOMAIN + request_id + name.encode()) + name.encode()

    def _check_hello(self, request_id: bytes, proof: bytes) -> str | None:
        """The initiator's node name once its proof verified (None without an identity)."""
        if self._identity is None:
            if proof:
                raise FrameError("decode", "push-pull hello of the wrong length")
            return None
        signature, name_bytes = proof[:_SIGNATURE_BYTES], proof[_SIGNATURE_BYTES:]
        try:
            name = name_bytes.decode()
        except UnicodeDecodeError:
            name = ""
        if not 0 < len(name) <= 128:
            raise FrameError("auth", "push-pull hello: no node name and signature")
        verdict = self._identity[2].check(name, b"", signature,
                                          _HELLO_DOMAIN + request_id + name_bytes)
        if verdict is not Verdict.VALID:
            raise FrameError("auth", f"push-pull hello: {verdict.value}")
        return name

    async def _send_state(self, stream: trio.abc.Stream, header: tuple[int, bytes],
                          chunks: list[bytes]) -> None:
        frames = [encode_frame(header[0], header[1], self.keyring)]
        frames += [encode_frame(CHUNK, chunk, self.keyring) for chunk in chunks]
        frames.append(encode_frame(END, _COUNT.pack(len(chunks)), self.keyring))
        for frame in frames:
            if len(frame) - _LENGTH.size > self.limits.max_frame_bytes:
                raise FrameError("size", f"our push-pull chunk of {len(frame)} bytes exceeds "
                                         f"chunk_limit {self.limits.chunk_limit}")
            await stream.send_all(frame)
            self._count("out", "push_pull", len(frame))

    # -- bookkeeping ---------------------------------------------------------------------------

    def _count(self, direction: str, kind: str, size: int) -> None:
        self._packets[direction, kind] += 1
        self._bytes[direction, kind] += size

    def statistics(self) -> TransportStatistics:
        return TransportStatistics(
            packets=dict(self._packets), bytes=dict(self._bytes), dropped=dict(self._dropped),
            push_pulls=dict(self._push_pulls), send_errors=self._send_errors,
            streams_active=self._streams_active)

    async def aclose(self) -> None:
        self._udp.close()
        await self._listener.aclose()


async def open_transport(bind: Addr, *, keyring: Keyring | None = None,
                         limits: TransportLimits | None = None,
                         identity: tuple[str, Signer, KeyCache] | None = None) -> Transport:
    """Bind UDP and TCP on `bind`; port 0 picks a port free for both. GossipError if taken.
    `identity` (our node name, signer, trusted keys): signed push-pull hellos."""
    host, port = bind
    family = trio.socket.AF_INET6 if ":" in host else trio.socket.AF_INET
    for _ in range(_BIND_ATTEMPTS if port == 0 else 1):
        udp = trio.socket.socket(family, trio.socket.SOCK_DGRAM)
        try:
            await udp.bind((host, port))
        except OSError as exc:
            udp.close()
            raise GossipError(f"gossip bind: UDP {host} port {port}: {exc.strerror}") from None
        chosen = udp.getsockname()[1]
        tcp = trio.socket.socket(family, trio.socket.SOCK_STREAM)
        tcp.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEADDR, 1)
        try:
            await tcp.bind((host, chosen))
            tcp.listen(128)
        except OSError as exc:
            tcp.close()
            udp.close()
            if port == 0 and exc.errno == errno.EADDRINUSE:
                continue
            raise GossipError(f"gossip bind: TCP {host} port {chosen}: {exc.strerror}") from None
        return Transport(udp, trio.SocketListener(tcp), (host, chosen), keyring=keyring,
                         limits=limits or TransportLimits(), identity=identity)
    raise GossipError(f"gossip bind: no port free for both UDP and TCP on {host} "
                      f"after {_BIND_ATTEMPTS} attempts")
