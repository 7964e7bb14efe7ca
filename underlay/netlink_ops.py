"""VXLAN-specific kernel operations: vxlan devices, FDB and neighbor entries, batched.

Owns:
- reading the kernel: link, FDB (AF_BRIDGE) and neighbor (IPv4 ARP, IPv6 NDP) dumps, each
  retried when the kernel flags it interrupted (NLM_F_DUMP_INTR) by a concurrent change;
  links decoded by pyroute2, FDB and neighbor messages (hundreds per resync) by struct here;
- vxlan devices: create with VNI, dstport, local address (IPv4 or IPv6), learning off, ARP/NDP
  proxy on, MTU and MAC; compare a device found in the kernel against a wanted spec;
- FDB and neighbor writes in batches: every message is encoded from a pyroute2 `ndmsg`
  template, many messages go to the kernel in one `send` on the namespace's pyroute2 socket,
  and every acknowledgement is read back and matched to its message by sequence number.

Rules:
- Every write states its state and flags: NUD_PERMANENT, NTF_SELF for FDB entries; the
  all-zero-MAC flood entries are appended (one per remote VTEP, keyed by MAC and dst), unicast
  FDB and neighbor entries are replaced.
- ENOENT (and ENODEV/ESRCH) on delete is success.
- Generic link operations (bridges, veths, addresses, up, MTU, namespaces) live in
  underlay/links.py; this module only adds what is specific to VXLAN.
- The synchronous functions take the namespace's `IPRoute` and must run on its
  `NetlinkThread`; `NetlinkKernel` is the trio-facing wrapper that the reconciler uses.

May import: pyroute2, trio (through underlay.kernel), the standard library, underlay.*.
"""

from __future__ import annotations

import errno as errno_codes
import itertools
import select
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pyroute2.iproute import IPRoute
from pyroute2.netlink import (
    NLM_F_ACK,
    NLM_F_APPEND,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_DUMP_INTR,
    NLM_F_REPLACE,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
)
from pyroute2.netlink.rtnl import RTM_DELNEIGH, RTM_GETLINK, RTM_GETNEIGH, RTM_NEWNEIGH
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.ndmsg import ndmsg

from underlay import links
from underlay.errors import KernelError, KernelTimedOut
from underlay.kernel import NetlinkThread, is_missing, netlink_errno
from underlay.records import (
    AF_BRIDGE,
    NTF_SELF,
    NUD_PERMANENT,
    ZERO_MAC,
    FdbRecord,
    FdbWrite,
    LinkRecord,
    NeighborRecord,
    VxlanAttributes,
    VxlanSpec,
    Write,
    WriteAction,
)

#: Messages per `send`. Each acknowledgement costs about 1 KiB of receive buffer in the
#: kernel's accounting; 512 of them stay well inside the buffer we ask for.
BATCH_MESSAGES = 512
#: Receive buffer we force on the socket (root only; otherwise the default stays).
RECEIVE_BUFFER = 8 * 1024 * 1024
#: How long to wait for the acknowledgements of one batch before giving up on it.
ACK_TIMEOUT_S = 10.0
#: Attempts at a dump the kernel keeps flagging as interrupted.
DUMP_ATTEMPTS = 8

# Our sequence numbers live above pyroute2's own allocator (0xFF..0xFFFF), so an answer to a
# pyroute2 request can never be mistaken for one of ours and the other way round.
_SEQ_BASE = 0x0100_0000
_SEQ_SPAN = 0x7000_0000
_sequence = itertools.count()


def next_seq() -> int:
    return _SEQ_BASE + next(_sequence) % _SEQ_SPAN


# --------------------------------------------------------------------------- encoding

_MAC_SENTINEL = bytes.fromhex("fe5e7e11ad01")
_IP4_SENTINEL = socket.inet_pton(socket.AF_INET, "198.51.100.213")
_IP6_SENTINEL = socket.inet_pton(socket.AF_INET6, "2001:db8:1234:5678:9abc:def0:1357:2468")
_IP_SENTINELS: dict[int, bytes] = {socket.AF_INET: _IP4_SENTINEL, socket.AF_INET6: _IP6_SENTINEL}


def _nl_flags(action: WriteAction) -> int:
    if action is WriteAction.REPLACE:
        return NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE
    if action is WriteAction.APPEND:
        return NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND
    return NLM_F_REQUEST | NLM_F_ACK


def encode_ndmsg(*, msg_type: int, nl_flags: int, seq: int, family: int, ifindex: int,
                 state: int, flags: int, lladdr: str | None, dst: str | None) -> bytes:
    """Encode one neighbor/FDB message with pyroute2's `ndmsg` (the reference encoding)."""
    msg = ndmsg()
    msg["family"] = family
    msg["ifindex"] = ifindex
    msg["state"] = state
    msg["flags"] = flags
    attrs: list[tuple[str, Any]] = []
    if lladdr is not None:
        attrs.append(("NDA_LLADDR", lladdr))
    if dst is not None:
        attrs.append(("NDA_DST", dst))
    msg["attrs"] = attrs
    return encode_with_header(msg, msg_type, nl_flags, seq)


def encode_with_header(msg: Any, msg_type: int, nl_flags: int, seq: int) -> bytes:
    """The bytes of pyroute2 message `msg` under a request header (`pid` 0: the kernel
    fills in the socket's)."""
    msg["header"]["type"] = msg_type
    msg["header"]["flags"] = nl_flags
    msg["header"]["sequence_number"] = seq
    msg["header"]["pid"] = 0
    msg.encode()
    return bytes(msg.data)


class _Template:
    """A pyroute2-encoded message with slots for the sequence number, MAC and address.

    pyroute2 encodes the message once with sentinel values; each entry then costs a join of
    constant pieces and its own bytes instead of a full pyroute2 encode (about 70 us).
    """

    def __init__(self, data: bytes, mac: bool, ip_family: int | None) -> None:
        slots: list[tuple[int, int, str]] = [(8, 4, "seq")]
        if mac:
            slots.append((self._find(data, _MAC_SENTINEL), 6, "mac"))
        if ip_family is not None:
            sentinel = _IP_SENTINELS[ip_family]
            slots.append((self._find(data, sentinel), len(sentinel), "ip"))
        slots.sort()
        self.pieces: list[bytes] = []
        self.order: list[str] = []
        offset = 0
        for start, length, name in slots:
            self.pieces.append(data[offset:start])
            self.order.append(name)
            offset = start + length
        self.tail = data[offset:]

    @staticmethod
    def _find(data: bytes, sentinel: bytes) -> int:
        where = data.find(sentinel)
        if where < 0 or data.find(sentinel, where + 1) >= 0:
            raise KernelError("ndmsg template: sentinel not found exactly once")
        return where

    def render(self, seq: int, mac: bytes, ip: bytes) -> bytes:
        values = {"seq": struct.pack("=I", seq), "mac": mac, "ip": ip}
        parts: list[bytes] = []
        for piece, name in zip(self.pieces, self.order, strict=True):
            parts.append(piece)
            parts.append(values[name])
        parts.append(self.tail)
        return b"".join(parts)


_templates: dict[tuple[Any, ...], _Template] = {}


def _ip_family(ip: str) -> int:
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


def _template(msg_type: int, nl_flags: int, family: int, ifindex: int, state: int, flags: int,
              mac: bool, ip_family: int | None) -> _Template:
    key = (msg_type, nl_flags, family, ifindex, state, flags, mac, ip_family)
    found = _templates.get(key)
    if found is None:
        sentinel_ip = None
        if ip_family is not None:
            sentinel_ip = socket.inet_ntop(ip_family, _IP_SENTINELS[ip_family])
        data = encode_ndmsg(
            msg_type=msg_type, nl_flags=nl_flags, seq=0, family=family, ifindex=ifindex,
            state=state, flags=flags,
            lladdr=":".join(f"{b:02x}" for b in _MAC_SENTINEL) if mac else None,
            dst=sentinel_ip,
        )
        found = _Template(data, mac, ip_family)
        if len(_templates) > 4096:
            _templates.clear()
        _templates[key] = found
    return found


def _mac_bytes(mac: str) -> bytes:
    raw = bytes.fromhex(mac.replace(":", ""))
    if len(raw) != 6:
        raise ValueError(f"bad MAC address {mac!r}")
    return raw


def write_fields(write: Write) -> dict[str, Any]:
    """The `ndmsg` fields a write is encoded with (state and flags always explicit)."""
    delete = write.action is WriteAction.DELETE
    if isinstance(write, FdbWrite):
        # Unicast deletes go without dst (the whole entry, whatever its remote); flood
        # deletes name the remote to drop.
        dst = write.dst
        if delete and write.mac != ZERO_MAC:
            dst = None
        return {
            "msg_type": RTM_DELNEIGH if delete else RTM_NEWNEIGH,
            "nl_flags": _nl_flags(write.action), "family": AF_BRIDGE,
            "ifindex": write.ifindex, "state": NUD_PERMANENT, "flags": NTF_SELF,
            "lladdr": write.mac, "dst": dst,
        }
    return {
        "msg_type": RTM_DELNEIGH if delete else RTM_NEWNEIGH,
        "nl_flags": _nl_flags(write.action), "family": _ip_family(write.ip),
        "ifindex": write.ifindex, "state": NUD_PERMANENT, "flags": 0,
        "lladdr": None if delete else write.mac, "dst": write.ip,
    }


def encode_write(write: Write, seq: int) -> bytes:
    """Encode one write as netlink bytes (pyroute2 template plus this entry's fields)."""
    fields = write_fields(write)
    lladdr = fields["lladdr"]
    dst = fields["dst"]
    ip_family = _ip_family(dst) if dst is not None else None
    template = _template(fields["msg_type"], fields["nl_flags"], fields["family"],
                         fields["ifindex"], fields["state"], fields["flags"],
                         lladdr is not None, ip_family)
    return template.render(
        seq,
        _mac_bytes(lladdr) if lladdr is not None else b"",
        socket.inet_pton(ip_family, dst) if ip_family is not None and dst is not None else b"",
    )


# --------------------------------------------------------------------------- batches


def raw_socket(ipr: IPRoute) -> socket.socket:
    sock: socket.socket = ipr.asyncore.socket
    return sock


def _ensure_receive_buffer(sock: socket.socket) -> None:
    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= RECEIVE_BUFFER:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, 33, RECEIVE_BUFFER)  # SO_RCVBUFFORCE
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)


def _read_acks(sock: socket.socket, pending: dict[int, int], results: list[int],
               timeout: float) -> None:
    """Read acknowledgements until every seq in `pending` (seq -> position) is answered."""
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    buffer = bytearray(1 << 20)
    view = memoryview(buffer)
    lost = False
    while pending:
        if not poller.poll(int((0.2 if lost else timeout) * 1000)):
            break
        try:
            size = sock.recv_into(buffer)
        except BlockingIOError:
            continue
        except OSError as exc:
            if exc.errno == errno_codes.ENOBUFS:
                lost = True  # some answers were dropped; collect what is left, then stop
                continue
            raise
        offset = 0
        while offset + 16 <= size:
            length, msg_type, _flags, seq = struct.unpack_from("=IHHI", view, offset)
            if length < 16:
                break
            position = pending.pop(seq, None) if msg_type == NLMSG_ERROR else None
            if position is not None:
                (code,) = struct.unpack_from("=i", view, offset + 16)
                results[position] = -code
            offset += (length + 3) & ~3
    code = errno_codes.ENOBUFS if lost else errno_codes.ETIMEDOUT
    for position in pending.values():
        results[position] = code


def send_writes(ipr: IPRoute, writes: Sequence[Write]) -> list[int]:
    """Send `writes` in batches and return one errno per write (0: done).

    ENOENT/ENODEV/ESRCH on delete count as done. A write that cannot be encoded (bad MAC or
    address) gets EINVAL without holding back the others. Runs on the namespace's thread.
    """
    sock = raw_socket(ipr)
    _ensure_receive_buffer(sock)
    results = [0] * len(writes)
    for start in range(0, len(writes), BATCH_MESSAGES):
        pending: dict[int, int] = {}
        payload: list[bytes] = []
        for position in range(start, min(start + BATCH_MESSAGES, len(writes))):
            seq = next_seq()
            try:
                payload.append(encode_write(writes[position], seq))
            except (ValueError, OSError, KernelError):
                results[position] = errno_codes.EINVAL
                continue
            pending[seq] = position
        if not payload:
            continue
        sock.send(b"".join(payload))
        _read_acks(sock, pending, results, ACK_TIMEOUT_S)
    for position, write in enumerate(writes):
        if write.action is WriteAction.DELETE and results[position] in (
            errno_codes.ENOENT, errno_codes.ENODEV, errno_codes.ESRCH
        ):
            results[position] = 0
    return results


# Decoding neighbor dumps (linux/netlink.h, linux/neighbour.h).
_NLMSG_HEADER = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
_NDMSG = struct.Struct("=B3xiHBB")  # family, pad, ifindex, state, flags, type
_RTATTR = struct.Struct("=HH")  # length, type
_NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED and NLA_F_NET_BYTEORDER
_NDA_DST = 1
_NDA_LLADDR = 2
_ADDRESS_FAMILY_BY_SIZE = {4: socket.AF_INET, 16: socket.AF_INET6}

# --------------------------------------------------------------------------- dumps


def _dump_raw(ipr: IPRoute, request: Any, msg_type: int) -> tuple[int, list[bytes]]:
    """Run one dump, retried while the kernel flags it interrupted: its sequence number and
    the chunks received (each a run of whole netlink messages), not decoded."""
    sock = raw_socket(ipr)
    _ensure_receive_buffer(sock)
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    buffer = bytearray(1 << 20)
    for _attempt in range(DUMP_ATTEMPTS):
        seq = next_seq()
        request["header"]["type"] = msg_type
        request["header"]["flags"] = NLM_F_REQUEST | NLM_F_DUMP
        request["header"]["sequence_number"] = seq
        request["header"]["pid"] = 0
        request.encode()
        sock.send(bytes(request.data))
        chunks: list[bytes] = []
        interrupted = False
        done = False
        while not done:
            if not poller.poll(int(ACK_TIMEOUT_S * 1000)):
                raise KernelTimedOut("netlink dump timed out")
            try:
                size = sock.recv_into(buffer)
            except BlockingIOError:
                continue
            data = bytes(buffer[:size])
            offset = 0
            keep = False
            while offset + 16 <= size:
                length, kind, flags, msg_seq = struct.unpack_from("=IHHI", data, offset)
                if length < 16:
                    break
                if msg_seq == seq:
                    keep = True
                    if flags & NLM_F_DUMP_INTR:
                        interrupted = True
                    if kind == NLMSG_DONE:
                        done = True
                    elif kind == NLMSG_ERROR:
                        (code,) = struct.unpack_from("=i", data, offset + 16)
                        if code:
                            raise KernelError(f"netlink dump failed: {-code}", -code)
                        done = True
                offset += (length + 3) & ~3
            if keep:
                chunks.append(data)
        if interrupted:
            continue
        return seq, chunks
    raise KernelError("netlink dump kept being interrupted", errno_codes.EINTR)


def _dump(ipr: IPRoute, request: Any, msg_type: int) -> list[Any]:
    """Run one dump (see `_dump_raw`), decoded by pyroute2."""
    seq, chunks = _dump_raw(ipr, request, msg_type)
    messages: list[Any] = []
    for data in chunks:
        for msg in ipr.marshal.parse(data):
            header = msg["header"]
            if header.get("sequence_number") == seq and header.get("type") not in (
                NLMSG_DONE, NLMSG_ERROR
            ):
                messages.append(msg)
    return messages


@dataclass(frozen=True)
class _NeighborMessage:
    """What the dumps read of one RTM_NEWNEIGH message: its ndmsg header, NDA_DST (an IPv4
    or IPv6 address as text) and NDA_LLADDR (lower-case hex, colon-separated), None if absent."""

    family: int
    ifindex: int
    state: int
    flags: int
    dst: str | None
    lladdr: str | None


def _neighbor_messages(ipr: IPRoute, family: int) -> list[_NeighborMessage]:
    """One RTM_GETNEIGH dump of `family`, decoded here with struct.

    A neighbor message is its ndmsg header and two attributes we read; pyroute2's generic
    decoder took ~0.1 ms a message (about 20 ms a resync at 40 hosts, every resync_interval,
    on an idle agent), this ~0.005 ms.
    """
    request = ndmsg()
    request["family"] = family
    seq, chunks = _dump_raw(ipr, request, RTM_GETNEIGH)
    messages = []
    for data in chunks:
        offset = 0
        while offset + _NLMSG_HEADER.size <= len(data):
            length, kind, _flags, msg_seq, _pid = _NLMSG_HEADER.unpack_from(data, offset)
            if length < _NLMSG_HEADER.size:
                break
            end = min(offset + length, len(data))
            body = offset + _NLMSG_HEADER.size
            if (msg_seq == seq and kind == RTM_NEWNEIGH
                    and body + _NDMSG.size <= end):
                messages.append(_neighbor_message(data, body, end))
            offset += (length + 3) & ~3
    return messages


def _neighbor_message(data: bytes, body: int, end: int) -> _NeighborMessage:
    family, ifindex, state, flags, _kind = _NDMSG.unpack_from(data, body)
    dst: str | None = None
    lladdr: str | None = None
    at = body + _NDMSG.size
    while at + _RTATTR.size <= end:
        size, kind = _RTATTR.unpack_from(data, at)
        if size < _RTATTR.size or at + size > end:
            break
        value = data[at + _RTATTR.size:at + size]
        kind &= _NLA_TYPE_MASK
        if kind == _NDA_DST and len(value) in _ADDRESS_FAMILY_BY_SIZE:
            dst = socket.inet_ntop(_ADDRESS_FAMILY_BY_SIZE[len(value)], value)
        elif kind == _NDA_LLADDR:
            lladdr = value.hex(":")
        at += (size + 3) & ~3
    return _NeighborMessage(family, ifindex, state, flags, dst, lladdr)


def dump_fdb(ipr: IPRoute) -> list[FdbRecord]:
    """Every AF_BRIDGE FDB entry of the namespace (bridge and vxlan, master and self)."""
    return [FdbRecord(msg.ifindex, msg.lladdr, msg.dst, msg.state, msg.flags)
            for msg in _neighbor_messages(ipr, AF_BRIDGE) if msg.lladdr is not None]


def dump_neighbors(ipr: IPRoute) -> list[NeighborRecord]:
    """Every IPv4 and IPv6 neighbor entry of the namespace."""
    return [NeighborRecord(msg.ifindex, msg.dst, msg.lladdr, msg.state, msg.flags)
            for family in (socket.AF_INET, socket.AF_INET6)
            for msg in _neighbor_messages(ipr, family)
            if msg.dst is not None and msg.family == family]


def _vxlan_attributes(data: Any) -> VxlanAttributes:
    local = data.get_attr("IFLA_VXLAN_LOCAL") or data.get_attr("IFLA_VXLAN_LOCAL6")
    return VxlanAttributes(
        vni=int(data.get_attr("IFLA_VXLAN_ID") or 0),
        port=int(data.get_attr("IFLA_VXLAN_PORT") or 0),
        local=str(local) if local else None,
        learning=bool(data.get_attr("IFLA_VXLAN_LEARNING")),
        proxy=bool(data.get_attr("IFLA_VXLAN_PROXY")),
        udp_csum=_udp_csum(data, local),
    )


def _udp_csum(data: Any, local: object) -> bool:
    """Whether the device sends outer UDP checksums: IPv4 udpcsum, IPv6 no zero-checksum tx
    (an attribute the kernel leaves out: its default, checksums on)."""
    if local is not None and ":" in str(local):
        return not data.get_attr("IFLA_VXLAN_UDP_ZERO_CSUM6_TX")
    found = data.get_attr("IFLA_VXLAN_UDP_CSUM")
    return True if found is None else bool(found)


def dump_links(ipr: IPRoute) -> list[LinkRecord]:
    """Every network device of the namespace, with vxlan attributes where it is one."""
    records = []
    for msg in _dump(ipr, ifinfmsg(), RTM_GETLINK):
        info = msg.get_attr("IFLA_LINKINFO")
        kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
        vxlan = None
        if kind == "vxlan":
            data = info.get_attr("IFLA_INFO_DATA")
            if data is not None:
                vxlan = _vxlan_attributes(data)
        mac = msg.get_attr("IFLA_ADDRESS")
        records.append(LinkRecord(
            index=int(msg["index"]), name=str(msg.get_attr("IFLA_IFNAME")),
            kind=kind, master=msg.get_attr("IFLA_MASTER"),
            mtu=int(msg.get_attr("IFLA_MTU") or 0), up=bool(msg["flags"] & 1),
            mac=str(mac).lower() if mac else None, vxlan=vxlan,
        ))
    return records


# --------------------------------------------------------------------------- vxlan devices


def create_vxlan(ipr: IPRoute, spec: VxlanSpec) -> int:
    """Create the vxlan device of `spec`, down, and return its ifindex."""
    local_key = "vxlan_local6" if ":" in spec.local else "vxlan_local"
    try:
        ipr.link("add", ifname=spec.name, kind="vxlan", vxlan_id=spec.vni,
                 vxlan_port=spec.port, vxlan_learning=int(spec.learning),
                 vxlan_proxy=int(spec.proxy), mtu=spec.mtu, address=spec.mac,
                 **{local_key: spec.local}, **_checksum_attributes(spec))
    except Exception as exc:
        raise KernelError(f"cannot create vxlan {spec.name} (VNI {spec.vni}): {exc}",
                          netlink_errno(exc)) from exc
    found = ipr.link_lookup(ifname=spec.name)
    if not found:
        raise KernelError(f"vxlan {spec.name} vanished after creation", errno_codes.ENODEV)
    return int(found[0])


def _checksum_attributes(spec: VxlanSpec) -> dict[str, int]:
    """The outer UDP checksum request of `spec` for its underlay family."""
    if ":" in spec.local:  # zero checksums over IPv6 need both ends to accept them
        zero = int(not spec.udp_csum)
        return {"vxlan_udp_zero_csum6_tx": zero, "vxlan_udp_zero_csum6_rx": zero}
    return {"vxlan_udp_csum": int(spec.udp_csum)}


def tune_vxlan(ipr: IPRoute, index: int, spec: VxlanSpec) -> None:
    """Fix what can change on a live vxlan device: MTU, MAC and learning."""
    try:
        ipr.link("set", index=index, mtu=spec.mtu, address=spec.mac)
        ipr.link("set", index=index, kind="vxlan", vxlan_learning=int(spec.learning))
    except Exception as exc:
        raise KernelError(f"cannot update vxlan {spec.name}: {exc}",
                          netlink_errno(exc)) from exc


def delete_link_by_index(ipr: IPRoute, index: int) -> None:
    """Delete a device; gone already counts as done."""
    try:
        ipr.link("del", index=index)
    except Exception as exc:
        if not is_missing(exc):
            raise KernelError(f"cannot delete link {index}: {exc}", netlink_errno(exc)) from exc


# --------------------------------------------------------------------------- trio side


class NetlinkKernel:
    """The reconciler's view of one namespace's kernel, awaited from trio.

    Every method runs its work on the namespace's `NetlinkThread`.
    """

    def __init__(self, nl: NetlinkThread) -> None:
        self.nl = nl

    async def dump_links(self) -> list[LinkRecord]:
        return await self.nl.call(dump_links)

    async def dump_fdb(self) -> list[FdbRecord]:
        return await self.nl.call(dump_fdb)

    async def dump_neighbors(self) -> list[NeighborRecord]:
        return await self.nl.call(dump_neighbors)

    async def send_writes(self, writes: Sequence[Write]) -> list[int]:
        batch = list(writes)
        return await self.nl.call(lambda ipr: send_writes(ipr, batch))

    async def create_vxlan(self, spec: VxlanSpec) -> int:
        return await self.nl.call(lambda ipr: create_vxlan(ipr, spec))

    async def tune_vxlan(self, index: int, spec: VxlanSpec) -> None:
        await self.nl.call(lambda ipr: tune_vxlan(ipr, index, spec))

    async def delete_link(self, index: int) -> None:
        await self.nl.call(lambda ipr: delete_link_by_index(ipr, index))

    async def ensure_bridge(self, name: str, mtu: int, mac: str, *addresses: str) -> int:
        """Create or adopt bridge `name` at this MTU and MAC, up, carrying `addresses` (CIDRs);
        returns its ifindex."""
        def ensure(ipr: IPRoute) -> links.LinkInfo:
            info = links.ensure_bridge(ipr, name, mtu=mtu, mac=mac)
            for address in addresses:
                links.add_address(ipr, name, address)
            return info

        return (await self.nl.call(ensure)).index

    async def attach(self, name: str, master: str, mtu: int) -> None:
        """Make `name` a port of bridge `master` at this MTU, up."""
        await self.nl.call(lambda ipr: links.set_link(ipr, name, mtu=mtu, master=master, up=True))
