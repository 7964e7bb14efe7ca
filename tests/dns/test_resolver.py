"""agent.dns.resolver on a real kernel: 127.0.0.11:53 inside a throw-away namespace, UDP and
TCP, names from the zone, other names forwarded to a real upstream (Debian's dnsmasq on
loopback, answering only its own static records), truncation falling back to TCP, garbage
never crashing the resolver, stop() closing the sockets."""

from __future__ import annotations

import shutil
import socket
import struct
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import dns.flags
import dns.message
import dns.rcode
import pytest
import trio

from agent.dns.resolver import DnsResolver, remove_resolv_conf, write_resolv_conf
from agent.dns.zone import DnsZone
from agent.lab.namespaces import NetnsLab
from overlay.attributes import make_attributes
from overlay.table import EndpointChanged, Entry
from underlay.errors import KernelError
from underlay.netns_sockets import open_socket_in_netns

pytestmark = pytest.mark.kernel
DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
LONG = "x" * 200
T = TypeVar("T")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """dnsmasq on 127.0.0.1:<free port>, static records only, never forwarding anywhere."""
    if not Path(DNSMASQ).exists():
        pytest.skip("needs dnsmasq (Debian: dnsmasq-base)")
    port = free_port()
    argv = [DNSMASQ, "--keep-in-foreground", "--no-resolv", "--no-hosts", "--no-daemon",
            "--bind-interfaces", "--listen-address=127.0.0.1", f"--port={port}",
            f"--pid-file={tmp_path / 'dnsmasq.pid'}", "--address=/example.test/192.0.2.10",
            *[f"--txt-record=big.example.test,{LONG}{i}" for i in range(6)]]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield ("127.0.0.1", port)
    finally:
        proc.kill()
        proc.wait(timeout=10)


def entry(network: str, ip: str, name: str) -> Entry:
    return Entry(network, ip, "02:42:0a:0a:00:02", "h1", "10.77.0.11", 1,
                 attributes=make_attributes(name))


def ask_udp(netns: str, query: dns.message.Message, timeout: float = 3.0) -> bytes:
    sock = open_socket_in_netns(netns, socket.AF_INET, socket.SOCK_DGRAM,
                                bind=("127.0.0.1", 0))
    with sock:
        sock.settimeout(timeout)
        sock.sendto(query.to_wire(), ("127.0.0.11", 53))
        return sock.recv(65535)


def ask_raw_udp(netns: str, data: bytes, timeout: float = 1.0) -> bytes | None:
    sock = open_socket_in_netns(netns, socket.AF_INET, socket.SOCK_DGRAM,
                                bind=("127.0.0.1", 0))
    with sock:
        sock.settimeout(timeout)
        sock.sendto(data, ("127.0.0.11", 53))
        try:
            return sock.recv(65535)
        except TimeoutError:
            return None


def ask_tcp(netns: str, query: dns.message.Message, timeout: float = 3.0) -> bytes:
    sock = open_socket_in_netns(netns, socket.AF_INET, socket.SOCK_STREAM)
    with sock:
        sock.settimeout(timeout)
        sock.connect(("127.0.0.11", 53))
        wire = query.to_wire()
        sock.sendall(struct.pack("!H", len(wire)) + wire)
        header = sock.recv(2, socket.MSG_WAITALL)
        return sock.recv(struct.unpack("!H", header)[0], socket.MSG_WAITALL)


async def in_thread(fn: Callable[..., T], *args: object) -> T:
    return await trio.to_thread.run_sync(fn, *args)


async def test_resolver_in_a_namespace(netns_lab: NetnsLab, upstream: tuple[str, int]) -> None:
    ns = netns_lab.ns("ep")
    zone = DnsZone(ttl=2)
    zone.apply(EndpointChanged("blue", "10.10.0.5", None, entry("blue", "10.10.0.5", "web")))
    zone.apply(EndpointChanged("red", "10.20.0.5", None, entry("red", "10.20.0.5", "db")))
    resolver = DnsResolver(zone, upstreams=(upstream,), upstream_timeout=2.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(resolver.run)
        await resolver.serve(ns, ("blue",))

        # our names, UDP and TCP
        for ask in (ask_udp, ask_tcp):
            reply = dns.message.from_wire(await in_thread(ask, ns,
                                                          dns.message.make_query("web", "A")))
            assert [r.to_text() for rr in reply.answer for r in rr] == ["10.10.0.5"]
            assert reply.answer[0].ttl == 2
        # another network's name does not resolve, and is not forwarded
        reply = dns.message.from_wire(await in_thread(ask_udp, ns,
                                                      dns.message.make_query("db", "A")))
        assert reply.rcode() == dns.rcode.NXDOMAIN
        # forwarded to the upstream
        reply = dns.message.from_wire(await in_thread(
            ask_udp, ns, dns.message.make_query("www.example.test", "A")))
        assert [r.to_text() for rr in reply.answer for r in rr] == ["192.0.2.10"]
        # truncated over UDP (TC passed through), complete over TCP
        big = dns.message.make_query("big.example.test", "TXT")
        udp_reply = dns.message.from_wire(await in_thread(ask_udp, ns, big),
                                          continue_on_error=True)
        assert udp_reply.flags & dns.flags.TC
        tcp_reply = dns.message.from_wire(await in_thread(ask_tcp, ns, big))
        assert sum(len(rr) for rr in tcp_reply.answer) == 6
        # garbage: FORMERR with the id, or nothing; the resolver keeps answering
        formerr = await in_thread(ask_raw_udp, ns, b"\xbe\xef\x01\x00" + b"\xff" * 30)
        assert formerr is not None and formerr[:2] == b"\xbe\xef" and formerr[3] & 0x0F == 1
        assert await in_thread(ask_raw_udp, ns, b"\x00") is None
        reply = dns.message.from_wire(await in_thread(ask_udp, ns,
                                                      dns.message.make_query("web", "A")))
        assert reply.rcode() == dns.rcode.NOERROR

        stats = resolver.statistics()
        assert stats.queries[("A", "noerror")] >= 3
        assert stats.queries[("A", "nxdomain")] == 1
        assert stats.queries[("invalid", "formerr")] == 1
        assert stats.forwarded >= 3 and stats.upstream_failures == 0 and stats.dropped == 1

        resolver.stop(ns)
        assert resolver.statistics().namespaces == 0
        with trio.fail_after(5):
            while True:  # the port is free once the serving task has closed its sockets
                try:
                    await in_thread(lambda: open_socket_in_netns(
                        ns, socket.AF_INET, socket.SOCK_DGRAM, bind=("127.0.0.11", 53)).close())
                    break
                except KernelError:
                    await trio.sleep(0.05)
        nursery.cancel_scope.cancel()


async def test_upstream_down_answers_servfail(netns_lab: NetnsLab) -> None:
    ns = netns_lab.ns("ep")
    resolver = DnsResolver(DnsZone(), upstreams=(("127.0.0.1", free_port()),),
                           upstream_timeout=0.3)
    async with trio.open_nursery() as nursery:
        await nursery.start(resolver.run)
        await resolver.serve(ns, ("blue",))
        reply = dns.message.from_wire(await in_thread(
            ask_udp, ns, dns.message.make_query("www.example.test", "A")))
        assert reply.rcode() == dns.rcode.SERVFAIL
        assert resolver.statistics().upstream_failures == 1
        nursery.cancel_scope.cancel()


def test_resolv_conf_names_us_and_the_networks(tmp_path: Path) -> None:
    path = write_resolv_conf("vxep-x", ("blue", "red"), root=tmp_path)
    assert path.read_text() == ("nameserver 127.0.0.11\nsearch blue red\noptions ndots:0\n")
    remove_resolv_conf("vxep-x", root=tmp_path)
    assert not (tmp_path / "vxep-x").exists()
