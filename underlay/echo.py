"""ICMP echo to underlay addresses: a probe the remote host's kernel answers by itself.

Owns: the ICMP / ICMPv6 echo request encoding, the parsing of echo replies, and `EchoSocket`,
a raw socket (root, or CAP_NET_RAW) in the caller's network namespace that sends requests
with one identifier and yields the addresses that answered.

Rules:
- Requests carry a random identifier per socket and a running sequence number; a reply with
  another identifier (someone else's ping in this namespace) is ignored, as is anything that
  is not an echo reply or does not parse (counted, never raised).
- IPv4 raw sockets receive the IP header (skipped by its length); ICMPv6 raw sockets do not,
  and the kernel fills in the ICMPv6 checksum.
- The kernel answers echo requests without any process (net.ipv4.icmp_echo_ignore_all = 0,
  the default; a firewall dropping ICMP makes every host look down: document that).

May import: trio, socket, the standard library.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from dataclasses import dataclass

import trio

ICMP_ECHO_REQUEST = 8
ICMP_ECHO_REPLY = 0
ICMPV6_ECHO_REQUEST = 128
ICMPV6_ECHO_REPLY = 129
PAYLOAD = b"vxmesh-host-probe"
_HEADER = struct.Struct("!BBHHH")


def checksum(data: bytes) -> int:
    """The internet checksum (RFC 1071) of `data`."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def encode_request(identifier: int, sequence: int, *, ipv6: bool = False,
                   payload: bytes = PAYLOAD) -> bytes:
    """An echo request (ICMPv6 with checksum 0: the kernel computes it)."""
    kind = ICMPV6_ECHO_REQUEST if ipv6 else ICMP_ECHO_REQUEST
    unsummed = _HEADER.pack(kind, 0, 0, identifier, sequence) + payload
    if ipv6:
        return unsummed
    return _HEADER.pack(kind, 0, checksum(unsummed), identifier, sequence) + payload


@dataclass(frozen=True)
class EchoReply:
    identifier: int
    sequence: int
    payload: bytes  # echoed back as sent


def parse_reply(data: bytes, *, ipv6: bool = False) -> EchoReply | None:
    """The echo reply in `data` (an IPv4 packet, or an ICMPv6 message), None for anything
    else (or garbage)."""
    if not ipv6:
        if len(data) < 20 or data[0] >> 4 != 4:
            return None
        data = data[(data[0] & 0x0F) * 4:]
    if len(data) < _HEADER.size:
        return None
    kind, code, _, identifier, sequence = _HEADER.unpack_from(data)
    if kind != (ICMPV6_ECHO_REPLY if ipv6 else ICMP_ECHO_REPLY) or code != 0:
        return None
    return EchoReply(identifier, sequence, data[_HEADER.size:])


@dataclass(frozen=True)
class EchoStatistics:
    sent: int
    send_errors: int  # no route, link down: the host counts as silent
    replies: int
    ignored: int  # not a reply of ours


class EchoSocket:
    """Echo requests out, answering addresses in, on one raw socket of one address family."""

    def __init__(self, source: str) -> None:
        self.ipv6 = ipaddress.ip_address(source).version == 6
        family, proto = ((socket.AF_INET6, socket.IPPROTO_ICMPV6) if self.ipv6
                         else (socket.AF_INET, socket.IPPROTO_ICMP))
        self._socket = trio.socket.socket(family, socket.SOCK_RAW, proto)
        self._source = source
        self.identifier = int.from_bytes(os.urandom(2), "big")
        self._sequence = 0
        self._sent = self._send_errors = self._replies = self._ignored = 0

    async def bind(self) -> None:
        """Send from `source` (the VTEP), so the answer comes back the underlay's way."""
        await self._socket.bind((self._source, 0))

    async def send(self, address: str) -> None:
        """One echo request to `address`; a local error (no route) is counted, not raised."""
        self._sequence = (self._sequence + 1) & 0xFFFF
        packet = encode_request(self.identifier, self._sequence, ipv6=self.ipv6)
        try:
            await self._socket.sendto(packet, (address, 0))
            self._sent += 1
        except OSError:
            self._send_errors += 1

    async def receive(self) -> str:
        """The address of the next host that answered one of our requests."""
        while True:
            data, sender = await self._socket.recvfrom(2048)
            reply = parse_reply(data, ipv6=self.ipv6)
            if reply is None or reply.identifier != self.identifier:
                self._ignored += 1
                continue
            self._replies += 1
            return str(ipaddress.ip_address(sender[0].split("%")[0]))

    def close(self) -> None:
        self._socket.close()

    def statistics(self) -> EchoStatistics:
        return EchoStatistics(self._sent, self._send_errors, self._replies, self._ignored)
