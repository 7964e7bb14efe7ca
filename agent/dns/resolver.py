"""The resolver shell: 127.0.0.11:53 (UDP and TCP) inside every endpoint namespace, on trio.

Owns: the sockets bound inside each served namespace (through underlay.netns_sockets) and at
each served gateway address of the agent's own namespace (the asker's networks told by its
source address), the
receive loops that hand each query to the pure `DnsZone`, forwarding of foreign names to the
upstream resolvers (UDP, then TCP when the answer comes back truncated, each upstream tried in
turn within `upstream_timeout`), the resolv.conf written for named endpoint namespaces, and the
statistics the metrics read.

Rules:
- A receive loop never waits on an upstream: each forwarded query runs in its own task, at
  most `MAX_FORWARDS` at once (beyond that the query is answered SERVFAIL at once).
- A namespace is served from `serve()` until `stop()`; serving one that is already served only
  updates its networks. Sockets are closed when the namespace stops being served.
- Upstream sockets live in the agent's own namespace (where its resolv.conf's servers are
  reachable), as Docker's embedded resolver does for the host's servers.
- Nothing from the network raises: garbage is answered FORMERR or dropped by the zone.

May import: trio, dnspython, agent.dns.zone, underlay.netns_sockets, the standard library.
"""

from __future__ import annotations

import contextlib
import logging
import random
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import trio

from agent.dns.zone import Answered, DnsZone, Dropped, Forward
from underlay.netns_sockets import run_in_netns

log = logging.getLogger("vxmesh.dns")

RESOLVER_ADDRESS = "127.0.0.11"
DNS_PORT = 53
MAX_FORWARDS = 256
UDP_BATCH = 64
IP_FREEBIND = 15  # linux/in.h; not in Python's socket module
MAX_UDP = 65535
TCP_IDLE_TIMEOUT = 10.0
ETC_NETNS = Path("/etc/netns")


@dataclass(frozen=True)
class ResolverStatistics:
    """Cumulative counts of the resolver (what the metrics read)."""

    queries: dict[tuple[str, str], int] = field(default_factory=dict)
    """(query type, result) -> queries; results noerror, nxdomain, formerr, servfail, ..."""
    forwarded: int = 0
    upstream_failures: int = 0
    dropped: int = 0
    namespaces: int = 0
    gateways: int = 0


def upstreams_from_resolv_conf(path: Path = Path("/etc/resolv.conf")
                               ) -> tuple[tuple[str, int], ...]:
    """The nameservers of a resolv.conf (port 53), without our own 127.0.0.11."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return ()
    servers = []
    for line in lines:
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver" and parts[1] != RESOLVER_ADDRESS:
            servers.append((parts[1], DNS_PORT))
    return tuple(servers)


def resolv_conf_text(search: tuple[str, ...]) -> str:
    """What an endpoint namespace's resolv.conf says: us, its networks as search domains."""
    lines = [f"nameserver {RESOLVER_ADDRESS}"]
    if search:
        lines.append("search " + " ".join(search))
    lines.append("options ndots:0")
    return "\n".join(lines) + "\n"


@dataclass
class _Served:
    networks: tuple[str, ...]
    scope: trio.CancelScope
    sockets: list[socket.socket]
    by_source: Callable[[str], tuple[str, ...]] | None = None

    def networks_of(self, peer: str) -> tuple[str, ...]:
        """The networks whose names the asker at `peer` may see."""
        return self.networks if self.by_source is None else self.by_source(peer)


class DnsResolver:
    """Serves the zone in every endpoint namespace and forwards the rest upstream."""

    def __init__(self, zone: DnsZone, *, upstreams: tuple[tuple[str, int], ...],
                 forward: bool = True,
                 upstream_timeout: float = 2.0, rng: random.Random | None = None,
                 observe_latency: Callable[[float], None] | None = None) -> None:
        self.zone = zone
        self.upstreams = upstreams
        self.forward = forward
        self.upstream_timeout = upstream_timeout
        self.rng = rng or random.Random()
        self.observe_latency = observe_latency or (lambda seconds: None)
        self._served: dict[str, _Served] = {}
        self._gateways: dict[str, _Served] = {}
        self._nursery: trio.Nursery | None = None
        self._forward_limit = trio.CapacityLimiter(MAX_FORWARDS)
        self._queries: dict[tuple[str, str], int] = {}
        self._forwarded = 0
        self._upstream_failures = 0
        self._dropped = 0

    async def run(self, *, task_status: trio.TaskStatus[DnsResolver] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Own the serving tasks until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started(self)
            await trio.sleep_forever()

    def statistics(self) -> ResolverStatistics:
        return ResolverStatistics(dict(self._queries), self._forwarded,
                                  self._upstream_failures, self._dropped, len(self._served),
                                  len(self._gateways))

    def served(self) -> dict[str, tuple[str, ...]]:
        """Namespace -> the networks its endpoint is on."""
        return {netns: s.networks for netns, s in self._served.items()}

    async def serve(self, netns: str, networks: tuple[str, ...]) -> None:
        """Answer at 127.0.0.11:53 inside `netns` for an endpoint on `networks`."""
        current = self._served.get(netns)
        if current is not None:
            current.networks = networks
            return
        if self._nursery is None:
            raise RuntimeError("DnsResolver.serve before run() started")
        address = (RESOLVER_ADDRESS, DNS_PORT)
        # One visit of the namespace for both; IP_FREEBIND: a runtime may bring the
        # sandbox's loopback up only after the attach (CNI runtimes do)
        udp, tcp = await trio.to_thread.run_sync(run_in_netns, netns,
                                                 partial(_freebind_pair, address))
        served = _Served(networks, trio.CancelScope(), [udp, tcp])
        self._served[netns] = served
        self._nursery.start_soon(self._serve_namespace, netns, served)

    def gateways(self) -> set[str]:
        """The gateway addresses served in the agent's own namespace."""
        return set(self._gateways)

    async def serve_gateway(self, address: str,
                            by_source: Callable[[str], tuple[str, ...]]) -> None:
        """Answer at `address`:53 in the agent's own namespace (a network's gateway on the
        host's bridge), for askers whose source address `by_source` maps to their networks.
        Bound with IP_FREEBIND: the address may reach the bridge a moment later."""
        if address in self._gateways:
            return
        if self._nursery is None:
            raise RuntimeError("DnsResolver.serve_gateway before run() started")
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sockets = [_freebind_socket(family, kind, (address, DNS_PORT))
                   for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM)]
        served = _Served((), trio.CancelScope(), sockets, by_source)
        self._gateways[address] = served
        self._nursery.start_soon(self._serve_namespace, f"gateway {address}", served)

    def stop_gateway(self, address: str) -> None:
        served = self._gateways.pop(address, None)
        if served is not None:
            served.scope.cancel()

    def stop(self, netns: str) -> None:
        """Stop answering inside `netns` (its endpoint is gone)."""
        served = self._served.pop(netns, None)
        if served is not None:
            served.scope.cancel()

    async def _serve_namespace(self, netns: str, served: _Served) -> None:
        udp, tcp_raw = served.sockets
        udp.setblocking(False)
        tcp = trio.SocketListener(trio.socket.from_stdlib_socket(tcp_raw))
        with served.scope, udp:
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._udp_loop, udp, served)
                    nursery.start_soon(trio.serve_listeners,
                                       lambda stream: self._tcp_connection(stream, served),
                                       [tcp])
            finally:
                await tcp.aclose()
        log.debug("dns: stopped serving %s", netns)

    # ------------------------------------------------------------------ UDP and TCP

    async def _udp_loop(self, sock: socket.socket, served: _Served) -> None:
        """Wait until readable, then answer every datagram queued (up to `UDP_BATCH`) before
        yielding: one scheduler round trip per burst, not two per packet. After a burst it
        yields and reads again at once; it waits on the socket only once it found none."""
        assert self._nursery is not None
        busy = False
        while True:
            if not busy:  # registering with epoll costs syscalls: only when we ran dry
                await trio.lowlevel.wait_readable(sock)
            busy = False
            for _ in range(UDP_BATCH):
                try:
                    data, peer = sock.recvfrom(MAX_UDP)
                except BlockingIOError:
                    break
                except OSError:  # ICMP error queued on the socket: not ours to act on
                    continue
                busy = True
                started = time.perf_counter()
                outcome = self.zone.answer(data, served.networks_of(peer[0]), self.rng)
                if isinstance(outcome, Forward):
                    self._nursery.start_soon(self._forward_udp, sock, peer, outcome, started)
                    continue
                self._count(outcome, started)
                # the common case sends at once, without a coroutine per answer
                if isinstance(outcome, Answered) and not _send_now(sock, outcome.wire, peer):
                    await _send_datagram(sock, outcome.wire, peer)
            await trio.lowlevel.checkpoint()

    async def _forward_udp(self, sock: socket.socket, peer: tuple[str, int],
                           outcome: Forward, started: float) -> None:
        reply = await self._forwarded_reply(outcome, tcp=False)
        self._count(reply, started)
        await _send_datagram(sock, reply.wire, peer)

    async def _tcp_connection(self, stream: trio.SocketStream, served: _Served) -> None:
        peer = str(stream.socket.getpeername()[0])
        async with stream:
            while True:
                with trio.move_on_after(TCP_IDLE_TIMEOUT) as idle:
                    frame = await _read_frame(stream)
                if idle.cancelled_caught or frame is None:
                    return
                started = time.perf_counter()
                outcome = self.zone.answer(frame, served.networks_of(peer), self.rng, tcp=True)
                if isinstance(outcome, Forward):
                    outcome = await self._forwarded_reply(outcome, tcp=True)
                self._count(outcome, started)
                if not isinstance(outcome, Answered):
                    return
                try:
                    await stream.send_all(struct.pack("!H", len(outcome.wire)) + outcome.wire)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return

    def _count(self, outcome: Answered | Dropped, started: float) -> None:
        if isinstance(outcome, Dropped):
            self._dropped += 1
            return
        key = (outcome.qtype, outcome.result)
        self._queries[key] = self._queries.get(key, 0) + 1
        self.observe_latency(time.perf_counter() - started)

    # ------------------------------------------------------------------ forwarding

    async def _forwarded_reply(self, outcome: Forward, *, tcp: bool) -> Answered:
        """The upstream's answer to a foreign query, or SERVFAIL/REFUSED of our own.

        A UDP asker gets the upstream's UDP answer as it is (truncated, TC set, when it did not
        fit: the asker then retries over TCP); a TCP asker's query goes over TCP upstream when
        the UDP answer came back truncated.
        """
        query = dns.message.from_wire(outcome.wire)
        if not self.forward:
            return self._own_reply(query, dns.rcode.REFUSED, outcome.qtype, "refused")
        if self._forward_limit.available_tokens == 0:
            self._upstream_failures += 1
            return self._own_reply(query, dns.rcode.SERVFAIL, outcome.qtype, "servfail")
        async with self._forward_limit:
            self._forwarded += 1
            for upstream in self.upstreams:
                with trio.move_on_after(self.upstream_timeout):
                    try:
                        wire = await self._ask_upstream(upstream, outcome.wire, query.id,
                                                        tcp=tcp)
                    except OSError as exc:
                        log.debug("dns: upstream %s failed: %s", upstream, exc)
                        continue
                    return Answered(wire, outcome.qtype, "forwarded")
            self._upstream_failures += 1
        return self._own_reply(query, dns.rcode.SERVFAIL, outcome.qtype, "servfail")

    async def _ask_upstream(self, upstream: tuple[str, int], wire: bytes, query_id: int, *,
                            tcp: bool) -> bytes:
        family = socket.AF_INET6 if ":" in upstream[0] else socket.AF_INET
        with trio.socket.socket(family, socket.SOCK_DGRAM) as sock:
            await sock.connect(upstream)
            await sock.send(wire)
            while True:
                reply = await sock.recv(MAX_UDP)
                if len(reply) >= 12 and struct.unpack("!H", reply[:2])[0] == query_id:
                    break
        if tcp and reply[2] & (dns.flags.TC >> 8):
            return await self._ask_upstream_tcp(family, upstream, wire)
        return reply

    async def _ask_upstream_tcp(self, family: int, upstream: tuple[str, int], wire: bytes
                                ) -> bytes:
        with trio.socket.socket(family, socket.SOCK_STREAM) as sock:
            await sock.connect(upstream)
            stream = trio.SocketStream(sock)
            await stream.send_all(struct.pack("!H", len(wire)) + wire)
            frame = await _read_frame(stream)
        if frame is None:
            raise OSError(f"upstream {upstream[0]}:{upstream[1]} closed TCP without an answer")
        return frame

    @staticmethod
    def _own_reply(query: dns.message.Message, rcode: dns.rcode.Rcode, qtype: str,
                   result: str) -> Answered:
        response = dns.message.make_response(query, recursion_available=True)
        response.set_rcode(rcode)
        return Answered(response.to_wire(), qtype, result)


def _freebind_pair(address: tuple[str, int]) -> tuple[socket.socket, socket.socket]:
    """A UDP and a listening TCP socket on IPv4 `address` (IP_FREEBIND), or none."""
    udp = _freebind_socket(socket.AF_INET, socket.SOCK_DGRAM, address)
    try:
        return udp, _freebind_socket(socket.AF_INET, socket.SOCK_STREAM, address)
    except BaseException:
        udp.close()
        raise


def _freebind_socket(family: int, kind: int, address: tuple[str, int]) -> socket.socket:
    sock = socket.socket(family, kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
        sock.bind(address)
        if kind == socket.SOCK_STREAM:
            sock.listen(64)
    except BaseException:
        sock.close()
        raise
    return sock


def _send_now(sock: socket.socket, data: bytes, peer: tuple[str, int]) -> bool:
    """Send one answer if the socket has room; False when it must wait for room. A peer (or
    endpoint namespace) gone meanwhile counts as done."""
    try:
        sock.sendto(data, peer)
    except BlockingIOError:
        return False
    except OSError:
        pass
    return True


async def _send_datagram(sock: socket.socket, data: bytes, peer: tuple[str, int]) -> None:
    """Send one answer, waiting (once) for room if the socket buffer is full."""
    if not _send_now(sock, data, peer):
        await trio.lowlevel.wait_writable(sock)
        _send_now(sock, data, peer)


async def _read_frame(stream: trio.SocketStream) -> bytes | None:
    """One length-prefixed DNS message from a TCP stream; None at end of stream."""
    header = await _read_exactly(stream, 2)
    if header is None:
        return None
    return await _read_exactly(stream, struct.unpack("!H", header)[0])


async def _read_exactly(stream: trio.SocketStream, count: int) -> bytes | None:
    buffer = bytearray()
    while len(buffer) < count:
        chunk = await stream.receive_some(count - len(buffer))
        if not chunk:
            return None
        buffer += chunk
    return bytes(buffer)


def write_resolv_conf(netns: str, search: tuple[str, ...], root: Path = ETC_NETNS) -> Path:
    """/etc/netns/<netns>/resolv.conf (what `ip netns exec` bind-mounts over /etc/resolv.conf)."""
    directory = root / netns
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "resolv.conf"
    tmp = directory / ".resolv.conf.tmp"
    tmp.write_text(resolv_conf_text(search))
    tmp.replace(path)
    return path


def remove_resolv_conf(netns: str, root: Path = ETC_NETNS) -> None:
    directory = root / netns
    (directory / "resolv.conf").unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # not empty (someone else's files) or already gone
        directory.rmdir()
