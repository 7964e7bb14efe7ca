"""Batched writes on a real kernel: every acknowledgement matched, a bad entry blocks none."""

from __future__ import annotations

import errno
import socket

import pytest
from pyroute2.iproute import IPRoute

from agent.lab.namespaces import NetnsLab, run
from underlay.kernel import NetlinkThread
from underlay.netlink_ops import (
    BATCH_MESSAGES,
    create_vxlan,
    dump_fdb,
    dump_links,
    dump_neighbors,
    send_writes,
)
from underlay.records import (
    ANY_ADDRESS,
    NUD_PERMANENT,
    ZERO_MAC,
    FdbRecord,
    FdbWrite,
    NeighborRecord,
    NeighborWrite,
    VxlanSpec,
    WriteAction,
    vxlan_matches,
)

pytestmark = pytest.mark.kernel


def test_batches_with_failures_in_the_middle(netns_lab: NetnsLab) -> None:
    ns = netns_lab.ns("h")
    nl = NetlinkThread(ns)
    try:
        spec = VxlanSpec(name="vxtun42", vni=42, port=4789, local="10.0.0.1", mtu=1450,
                         mac="02:00:00:00:00:42")
        index = nl.call_blocking(lambda ipr: create_vxlan(ipr, spec))
        link = next(r for r in nl.call_blocking(dump_links) if r.name == "vxtun42")
        assert vxlan_matches(link, spec) and link.mtu == 1450 and link.mac == spec.mac
        assert link.vxlan is not None and not link.vxlan.learning and link.vxlan.proxy
        # An encrypted network's device has no local address (the kernel reports none): it
        # is adopted as is, never re-created.
        anywhere = VxlanSpec(name="vxtun43", vni=43, port=4789, local=ANY_ADDRESS, mtu=1390,
                             mac="02:00:00:00:00:43")
        nl.call_blocking(lambda ipr: create_vxlan(ipr, anywhere))
        found = next(r for r in nl.call_blocking(dump_links) if r.name == "vxtun43")
        assert found.vxlan is not None and found.vxlan.local is None
        assert vxlan_matches(found, anywhere) and not vxlan_matches(link, anywhere)
        n = BATCH_MESSAGES * 2 + 17  # three sends
        writes: list[FdbWrite | NeighborWrite] = [
            FdbWrite(WriteAction.REPLACE, index, f"02:00:00:01:{i >> 8:02x}:{i & 255:02x}",
                     "10.0.0.2") for i in range(n)]
        writes[5] = FdbWrite(WriteAction.REPLACE, 999_999, "02:00:00:00:00:01", "10.0.0.2")
        writes[600] = NeighborWrite(WriteAction.REPLACE, index, "10.1.0.1", "02:00:zz")
        writes.append(FdbWrite(WriteAction.APPEND, index, ZERO_MAC, "10.0.0.2"))
        writes.append(FdbWrite(WriteAction.APPEND, index, ZERO_MAC, "10.0.0.3"))
        writes.append(NeighborWrite(WriteAction.REPLACE, index, "fd10::1", "02:00:00:00:00:09"))
        results = nl.call_blocking(lambda ipr: send_writes(ipr, writes))
        assert results[5] == errno.ENODEV and results[600] == errno.EINVAL
        assert sum(1 for r in results if r != 0) == 2
        fdb = [r for r in nl.call_blocking(dump_fdb) if r.ifindex == index]
        assert len(fdb) == n - 2 + 2
        assert all(r.state & NUD_PERMANENT for r in fdb)
        assert {r.dst for r in fdb if r.mac == ZERO_MAC} == {"10.0.0.2", "10.0.0.3"}
        neigh = [r for r in nl.call_blocking(dump_neighbors) if r.ifindex == index]
        assert [(r.ip, r.mac) for r in neigh] == [("fd10::1", "02:00:00:00:00:09")]
        # Deletes: gone already is success; a flood delete removes only its remote.
        deletes: list[FdbWrite | NeighborWrite] = [
            FdbWrite(WriteAction.DELETE, index, ZERO_MAC, "10.0.0.3"),
            FdbWrite(WriteAction.DELETE, index, "02:00:00:01:00:00", "10.0.0.2"),
            FdbWrite(WriteAction.DELETE, index, "02:00:00:01:00:00", "10.0.0.2"),
            NeighborWrite(WriteAction.DELETE, index, "fd10::1", None),
            NeighborWrite(WriteAction.DELETE, index, "fd10::1", None)]
        assert nl.call_blocking(lambda ipr: send_writes(ipr, deletes)) == [0] * 5
        shown = run("bridge fdb show dev vxtun42", netns=ns).stdout
        assert "00:00:00:00:00:00 dst 10.0.0.2 self permanent" in shown
        assert "dst 10.0.0.3" not in shown and "02:00:00:01:00:00" not in shown
        # pyroute2's own requests still work on the same socket afterwards.
        assert nl.call_blocking(lambda ipr: ipr.link_lookup(ifname="vxtun42")) == [index]
    finally:
        nl.close()


def _pyroute2_view(ipr: IPRoute) -> tuple[list[FdbRecord], list[NeighborRecord]]:
    """The same dumps decoded by pyroute2's generic decoder (what dump_fdb and dump_neighbors
    used before they decoded neighbor messages themselves): the reference to agree with."""
    fdb = [FdbRecord(int(m["ifindex"]), str(m.get_attr("NDA_LLADDR")).lower(),
                     m.get_attr("NDA_DST"), int(m["state"]), int(m["flags"]))
           for m in ipr.fdb("dump") if m.get_attr("NDA_LLADDR") is not None]
    neighbors = []
    for family in (socket.AF_INET, socket.AF_INET6):
        for m in ipr.neigh("dump", family=family):
            if m.get_attr("NDA_DST") is None or int(m["family"]) != family:
                continue
            mac = m.get_attr("NDA_LLADDR")
            neighbors.append(NeighborRecord(int(m["ifindex"]), str(m.get_attr("NDA_DST")),
                                            None if mac is None else str(mac).lower(),
                                            int(m["state"]), int(m["flags"])))
    return fdb, neighbors


def test_dumps_decode_every_record_as_pyroute2_does(netns_lab: NetnsLab) -> None:
    """FDB entries with IPv4 and IPv6 remotes, flood entries, bridge (master) entries, ARP and
    NDP entries, permanent ones and one without a link-layer address (FAILED, as the kernel
    leaves an unanswered resolution): the struct decoder gives what pyroute2 gives."""
    ns = netns_lab.ns("d")
    for command in (
        "ip link add vxbr7 type bridge",
        "ip link add vxtun7 type vxlan id 7 dstport 4789 local 10.0.0.1 nolearning",
        "ip link add vxtun8 type vxlan id 8 dstport 4789 local fd00::1 nolearning",
        "ip link set vxtun7 master vxbr7",
        "ip link set vxbr7 up", "ip link set vxtun7 up", "ip link set vxtun8 up",
        "bridge fdb append 00:00:00:00:00:00 dev vxtun7 dst 10.0.0.2 self permanent",
        "bridge fdb replace 02:00:00:00:07:01 dev vxtun7 dst 10.0.0.3 self permanent",
        "bridge fdb replace 02:00:00:00:08:01 dev vxtun8 dst fd00::2 self permanent",
        "bridge fdb add 02:00:00:00:07:02 dev vxtun7 master static",
        "ip neigh replace 10.7.0.5 lladdr 02:00:00:00:07:05 dev vxtun7 nud permanent",
        "ip neigh replace fd07::5 lladdr 02:00:00:00:07:06 dev vxtun7 nud permanent",
        "ip neigh replace 10.7.0.6 dev vxtun7 nud failed",
    ):
        run(command, netns=ns)
    nl = NetlinkThread(ns)
    try:
        fdb = nl.call_blocking(dump_fdb)
        neighbors = nl.call_blocking(dump_neighbors)
        assert (fdb, neighbors) == nl.call_blocking(_pyroute2_view)
        dsts = {r.mac: r.dst for r in fdb}
        assert dsts["02:00:00:00:07:01"] == "10.0.0.3" and dsts["02:00:00:00:08:01"] == "fd00::2"
        assert dsts["02:00:00:00:07:02"] is None
        assert {(r.ip, r.mac) for r in neighbors} >= {
            ("10.7.0.5", "02:00:00:00:07:05"), ("fd07::5", "02:00:00:00:07:06"),
            ("10.7.0.6", None)}
    finally:
        nl.close()
