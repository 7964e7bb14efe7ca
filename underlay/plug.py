"""A veth plugged into a sandbox in few netlink round trips: the attach path's kernel work.

Owns:
- `create_veth_into(ipr, ...)`: ONE `RTM_NEWLINK` making a veth pair whose host side is up,
  with its MTU, on its bridge, and whose peer is born inside the sandbox under its final
  name with its MTU and MAC (no create-then-move). The peer cannot be brought up in that
  request (veth refuses to open, ENOTCONN, before the pair is joined): `Sandbox.configure`
  does it in its batch.
  `ensure_veth_into` adopts a pair that exists (the re-ensure at start) through
  `underlay.links.ensure_veth`.
- `Sandbox`: a netlink socket of the sandbox's namespace (made in one short visit of a fresh
  thread, `underlay.netns_sockets.run_in_netns`, together with the interface's index), on
  which `configure` sends link state, every address and the routes as ONE batch and reads
  every acknowledgement, and `wait_operational` polls the link until it carries traffic.

Rules:
- Messages are encoded with pyroute2's message classes and sent on a raw socket (as
  `underlay.netlink_ops` does for FDB entries): no request round trip per attribute, no
  pyroute2 event loop per call. Sequence numbers come from `netlink_ops.next_seq` (above
  pyroute2's own range), so answers are matched to their messages.
- Kernel failures raise `KernelError` naming the object and the errno; a name taken by
  another kind of link raises `links.LinkConflict`. An address already there and a route
  replaced are success (the same spec applied twice is one result).
- Functions taking an `IPRoute` run on that namespace's `NetlinkThread`.

May import: pyroute2, the standard library, underlay.*.
"""

from __future__ import annotations

import errno as errno_codes
import ipaddress
import os
import select
import socket
import struct
import time
from collections.abc import Sequence
from typing import Any

from pyroute2.iproute import IPRoute
from pyroute2.netlink import (
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_EXCL,
    NLM_F_REPLACE,
    NLM_F_REQUEST,
    NLMSG_ERROR,
)
from pyroute2.netlink.rtnl import RTM_GETLINK, RTM_NEWADDR, RTM_NEWLINK, RTM_NEWROUTE
from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_NODAD, ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from underlay import links
from underlay.errors import KernelError, KernelTimedOut
from underlay.netlink_ops import encode_with_header, next_seq, raw_socket
from underlay.netns_sockets import run_in_netns

IFF_UP = 1
RT_TABLE_MAIN = 254
RTPROT_STATIC = 4  # what pyroute2 and `ip route add` record
RTN_UNICAST = 1
REPLY_TIMEOUT_S = 10.0
OPERATIONAL_TIMEOUT_S = 10.0
NETLINK_ROUTE = 0


def _exchange(sock: socket.socket, messages: Sequence[tuple[int, bytes]],
              timeout: float = REPLY_TIMEOUT_S) -> dict[int, tuple[int, bytes]]:
    """Send `messages` ((seq, bytes)) in one `send`; the answer to each by seq: (errno, the
    reply message for a request that has one, else b"")."""
    sock.send(b"".join(data for _, data in messages))
    pending = {seq for seq, _ in messages}
    answers: dict[int, tuple[int, bytes]] = {}
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    deadline = time.monotonic() + timeout
    while pending:
        left = deadline - time.monotonic()
        if left <= 0 or not poller.poll(int(left * 1000) + 1):
            raise KernelTimedOut(f"netlink: no answer within {timeout:.0f} s")
        try:
            data = sock.recv(1 << 16)
        except BlockingIOError:
            continue
        offset = 0
        while offset + 16 <= len(data):
            length, msg_type, _flags, seq = struct.unpack_from("=IHHI", data, offset)
            if length < 16:
                break
            if seq in pending:
                if msg_type == NLMSG_ERROR:
                    (code,) = struct.unpack_from("=i", data, offset + 16)
                    answers[seq] = (-code, answers.get(seq, (0, b""))[1])
                    pending.discard(seq)
                else:  # a reply (RTM_NEWLINK to RTM_GETLINK); no ack follows without ACK
                    answers[seq] = (0, data[offset:offset + length])
                    pending.discard(seq)
            offset += (length + 3) & ~3
    return answers


def create_veth_into(ipr: IPRoute, name: str, peer: str, netns: str, *, mtu: int | None,
                     peer_mac: str | None, master: str | None) -> None:
    """One request: veth `name` here (up, `mtu`, on bridge `master`), its peer `peer` in
    `netns` (down, `mtu`, `peer_mac`). `links.LinkConflict` when a name is taken."""
    links.check_ifname(name)
    links.check_ifname(peer, field="peer")
    master_index = None
    if master is not None:
        bridge = links.get_link(ipr, master)
        if bridge is None:
            raise KernelError(f"link {master!r} does not exist", errno_codes.ENODEV)
        master_index = bridge.index
    fd = os.open(links.open_netns_path(netns), os.O_RDONLY | os.O_CLOEXEC)
    try:
        peer_attrs: list[tuple[str, Any]] = [("IFLA_IFNAME", peer), ("IFLA_NET_NS_FD", fd)]
        attrs: list[tuple[str, Any]] = [("IFLA_IFNAME", name)]
        if mtu is not None:
            peer_attrs.append(("IFLA_MTU", mtu))
            attrs.append(("IFLA_MTU", mtu))
        if peer_mac is not None:
            peer_attrs.append(("IFLA_ADDRESS", peer_mac.lower()))
        if master_index is not None:
            attrs.append(("IFLA_MASTER", master_index))
        attrs.append(("IFLA_LINKINFO", {"attrs": [
            ("IFLA_INFO_KIND", "veth"),
            ("IFLA_INFO_DATA", {"attrs": [("VETH_INFO_PEER", {"attrs": peer_attrs})]})]}))
        msg = ifinfmsg()
        msg["index"] = 0
        msg["flags"] = IFF_UP
        msg["change"] = IFF_UP
        msg["attrs"] = attrs
        seq = next_seq()
        data = encode_with_header(msg, RTM_NEWLINK,
                       NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, seq)
        code, _ = _exchange(raw_socket(ipr), [(seq, data)])[seq]
    finally:
        os.close(fd)
    if code == errno_codes.EEXIST:
        raise links.LinkConflict(f"create veth {name!r}: it, or interface {peer!r} in "
                                 f"namespace {netns!r}, exists already")
    if code:
        raise KernelError(f"create veth {name!r} (peer {peer!r} in {netns!r}): "
                          f"{os.strerror(code)}", code)


def ensure_veth_into(ipr: IPRoute, name: str, peer: str, netns: str, *, mtu: int | None,
                     peer_mac: str | None, master: str | None) -> None:
    """`create_veth_into`, or, when host side `name` exists already (a re-ensure), adopt it
    through `links.ensure_veth` (the peer's side is then set by `Sandbox.configure`)."""
    try:
        create_veth_into(ipr, name, peer, netns, mtu=mtu, peer_mac=peer_mac, master=master)
    except links.LinkConflict:
        if links.get_link(ipr, name) is None:
            raise  # the peer's name is taken inside the sandbox
        links.ensure_veth(ipr, name, peer, peer_netns=netns, mtu=mtu, peer_mac=peer_mac,
                          master=master)


class Sandbox:
    """A netlink socket inside a sandbox's namespace and the index of its interface."""

    def __init__(self, netns: str, ifname: str) -> None:
        self.netns = netns
        self.ifname = ifname

        def visit() -> tuple[socket.socket, int]:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
            try:
                sock.bind((0, 0))
                return sock, socket.if_nametoindex(ifname)
            except BaseException:
                sock.close()
                raise

        try:
            self._sock, self.index = run_in_netns(netns, visit)
        except OSError as exc:
            raise KernelError(f"interface {ifname!r} in namespace {netns!r}: {exc}",
                              exc.errno) from exc

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def configure(self, *, mtu: int | None, mac: str | None, addresses: Sequence[str],
                  routes: Sequence[tuple[str, str]]) -> None:
        """Up with `mtu` and `mac`, `addresses` (CIDRs) on it, `routes` ((destination CIDR,
        gateway)) replaced: one batch, every acknowledgement checked."""
        messages: list[tuple[int, bytes, str]] = []
        link = ifinfmsg()
        link["index"] = self.index
        link["flags"] = IFF_UP
        link["change"] = IFF_UP
        link_attrs: list[tuple[str, Any]] = []
        if mtu is not None:
            link_attrs.append(("IFLA_MTU", mtu))
        if mac is not None:
            link_attrs.append(("IFLA_ADDRESS", mac.lower()))
        link["attrs"] = link_attrs
        seq = next_seq()
        messages.append((seq, encode_with_header(link, RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, seq),
                         f"set {self.ifname!r} up"))
        for cidr in addresses:
            iface = links.parse_interface(cidr)
            address = ifaddrmsg()
            address["family"] = socket.AF_INET6 if iface.version == 6 else socket.AF_INET
            address["prefixlen"] = iface.network.prefixlen
            address["index"] = self.index
            attrs: list[tuple[str, Any]] = [("IFA_ADDRESS", str(iface.ip))]
            if iface.version == 4:
                attrs.append(("IFA_LOCAL", str(iface.ip)))
                if iface.network.prefixlen < 31:
                    attrs.append(("IFA_BROADCAST", str(iface.network.broadcast_address)))
            else:
                attrs.append(("IFA_FLAGS", IFA_F_NODAD))
            address["attrs"] = attrs
            seq = next_seq()
            messages.append((seq, encode_with_header(address, RTM_NEWADDR, NLM_F_REQUEST | NLM_F_ACK
                                          | NLM_F_CREATE | NLM_F_EXCL, seq),
                             f"add address {cidr} to {self.ifname!r}"))
        for destination, gateway in routes:
            network = ipaddress.ip_network(destination, strict=False)
            route = rtmsg()
            route["family"] = socket.AF_INET6 if network.version == 6 else socket.AF_INET
            route["dst_len"] = network.prefixlen
            route["table"] = RT_TABLE_MAIN
            route["proto"] = RTPROT_STATIC
            route["scope"] = 0
            route["type"] = RTN_UNICAST
            attrs = [("RTA_GATEWAY", gateway)]
            if network.prefixlen:
                attrs.insert(0, ("RTA_DST", str(network.network_address)))
            route["attrs"] = attrs
            seq = next_seq()
            messages.append((seq, encode_with_header(route, RTM_NEWROUTE, NLM_F_REQUEST | NLM_F_ACK
                                          | NLM_F_CREATE | NLM_F_REPLACE, seq),
                             f"replace route {destination} via {gateway}"))
        answers = _exchange(self._sock, [(seq, data) for seq, data, _ in messages])
        for seq, _, what in messages:
            code = answers[seq][0]
            if code and not (code == errno_codes.EEXIST and what.startswith("add address")):
                raise KernelError(f"{what} in namespace {self.netns!r}: {os.strerror(code)}",
                                  code)

    def operational(self) -> bool:
        """Whether the interface carries traffic now (`links.LinkInfo.operational`)."""
        return link_operational(self._sock, self.index, f"{self.ifname!r} in {self.netns!r}")

    def wait_operational(self, timeout: float = OPERATIONAL_TIMEOUT_S) -> bool:
        """Poll (every 5 ms, at most `timeout` s) until it is operational; False if not."""
        deadline = time.monotonic() + timeout
        while not self.operational():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        return True


def link_operational(sock: socket.socket, index: int, what: str) -> bool:
    """One `RTM_GETLINK` of link `index` on `sock`: up and activated by the link watcher."""
    request = ifinfmsg()
    request["index"] = index
    seq = next_seq()
    query = encode_with_header(request, RTM_GETLINK, NLM_F_REQUEST, seq)
    code, reply = _exchange(sock, [(seq, query)])[seq]
    if code:
        raise KernelError(f"look up link {what}: {os.strerror(code)}", code)
    msg = ifinfmsg(reply)
    msg.decode()
    return links.link_info(msg).operational
