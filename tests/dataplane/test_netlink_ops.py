"""Encoding and dumps of underlay.netlink_ops, without a kernel.

- A rendered template is byte-for-byte what pyroute2's `ndmsg` encodes for the same entry.
- A dump the kernel flags NLM_F_DUMP_INTR is retried; one that keeps being interrupted
  raises KernelError(EINTR).
"""

from __future__ import annotations

import errno
import socket
import struct
import threading
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyroute2.netlink import NLM_F_DUMP_INTR, NLM_F_MULTI, NLMSG_DONE
from pyroute2.netlink.rtnl import RTM_NEWNEIGH
from pyroute2.netlink.rtnl.marshal import MarshalRtnl

from underlay import netlink_ops, records
from underlay.errors import KernelError
from underlay.netlink_ops import encode_ndmsg, encode_write, write_fields
from underlay.records import FdbWrite, NeighborWrite, WriteAction

macs = st.binary(min_size=6, max_size=6).map(lambda b: ":".join(f"{x:02x}" for x in b))
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
actions = st.sampled_from(list(WriteAction))
fdb_writes = st.builds(FdbWrite, actions, st.integers(1, 2**31 - 1),
                       st.one_of(macs, st.just(records.ZERO_MAC)), st.one_of(ipv4, ipv6))
neighbor_writes = st.builds(NeighborWrite,
                            st.sampled_from([WriteAction.REPLACE, WriteAction.DELETE]),
                            st.integers(1, 2**31 - 1), st.one_of(ipv4, ipv6), macs)


@settings(max_examples=150, deadline=None)
@given(st.one_of(fdb_writes, neighbor_writes), st.integers(0x0100_0000, 0x7FFF_FFFF))
def test_template_render_equals_pyroute2_encoding(write: Any, seq: int) -> None:
    assert encode_write(write, seq) == encode_ndmsg(seq=seq, **write_fields(write))


def test_writes_state_and_flags_explicitly() -> None:
    fields = write_fields(FdbWrite(WriteAction.REPLACE, 5, "02:00:00:00:00:01", "10.0.0.2"))
    assert fields["state"] == records.NUD_PERMANENT
    assert fields["flags"] == records.NTF_SELF
    flood = write_fields(FdbWrite(WriteAction.APPEND, 5, records.ZERO_MAC, "10.0.0.2"))
    assert flood["nl_flags"] & 0x800  # NLM_F_APPEND
    unicast_delete = write_fields(FdbWrite(WriteAction.DELETE, 5, "02:00:00:00:00:01", "x"))
    flood_delete = write_fields(FdbWrite(WriteAction.DELETE, 5, records.ZERO_MAC,
                                         "10.0.0.2"))
    assert unicast_delete["dst"] is None and flood_delete["dst"] == "10.0.0.2"
    neigh = write_fields(NeighborWrite(WriteAction.REPLACE, 5, "fd10::2", "02:00:00:00:00:01"))
    assert neigh["family"] == socket.AF_INET6 and neigh["state"] == records.NUD_PERMANENT


def _fake_kernel(answers: int, interrupted: int) -> tuple[Any, socket.socket, threading.Thread]:
    """A kernel that answers `answers` dump requests, the first `interrupted` of them marked
    interrupted, then ends (so its thread never reads a socket the test has closed)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    ours.setblocking(False)

    def answer() -> None:
        for attempt in range(answers):
            request = theirs.recv(65536)
            if not request:
                return
            (seq,) = struct.unpack_from("=I", request, 8)
            flags = NLM_F_MULTI | (NLM_F_DUMP_INTR if attempt < interrupted else 0)
            entry = encode_ndmsg(msg_type=RTM_NEWNEIGH, nl_flags=flags, seq=seq, family=7,
                                 ifindex=4, state=0x80, flags=2,
                                 lladdr=f"02:00:00:00:00:{attempt:02x}", dst="10.0.0.2")
            done = struct.pack("=IHHIIi", 20, NLMSG_DONE, NLM_F_MULTI, seq, 0, 0)
            theirs.send(entry + done)

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    ipr = SimpleNamespace(asyncore=SimpleNamespace(socket=ours), marshal=MarshalRtnl())
    return ipr, theirs, thread


def test_interrupted_dump_is_retried() -> None:
    ipr, theirs, thread = _fake_kernel(answers=3, interrupted=2)
    try:
        records = netlink_ops.dump_fdb(ipr)
    finally:
        thread.join(5)
        theirs.close()
    assert [(r.ifindex, r.mac, r.dst) for r in records] == [(4, "02:00:00:00:00:02",
                                                             "10.0.0.2")]


def test_dump_that_keeps_being_interrupted_raises() -> None:
    ipr, theirs, thread = _fake_kernel(answers=netlink_ops.DUMP_ATTEMPTS,
                                       interrupted=netlink_ops.DUMP_ATTEMPTS)
    try:
        with pytest.raises(KernelError) as caught:
            netlink_ops.dump_fdb(ipr)
    finally:
        thread.join(5)
        theirs.close()
    assert not thread.is_alive()
    assert caught.value.errno == errno.EINTR


def test_acks_matched_by_sequence_number_and_missing_ones_time_out() -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    ours.setblocking(False)
    try:
        def ack(seq: int, code: int) -> bytes:
            return struct.pack("=IHHIIi", 36, 2, 0, seq, 0, -code) + b"\0" * 16

        # Out of order, with a stranger's answer (pyroute2's own seq) in between.
        theirs.send(ack(0x0100_0002, errno.EBUSY) + ack(77, 0) + ack(0x0100_0000, 0))
        results = [-1, -1, -1]
        netlink_ops._read_acks(ours, {0x0100_0000: 0, 0x0100_0001: 1, 0x0100_0002: 2},
                               results, timeout=0.2)
    finally:
        ours.close()
        theirs.close()
    assert results == [0, errno.ETIMEDOUT, errno.EBUSY]
