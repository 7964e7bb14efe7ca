"""underlay.links on a real kernel: idempotent create/adopt, conflicts, moves, addresses, routes."""

from __future__ import annotations

import os
import time

import pytest

from agent.lab.namespaces import NetnsLab, run
from underlay import links
from underlay.errors import KernelError
from underlay.kernel import NetlinkThread

pytestmark = pytest.mark.kernel


def test_bridge_veth_addresses_routes_and_deletes(netns_lab: NetnsLab) -> None:
    host = netns_lab.ns("h")
    ep = netns_lab.ns("e")
    nl = NetlinkThread(host)
    nle = NetlinkThread(ep)
    try:
        first = nl.call_blocking(lambda ipr: links.ensure_bridge(ipr, "vxbr9", mtu=1400))
        again = nl.call_blocking(lambda ipr: links.ensure_bridge(ipr, "vxbr9", mtu=1400))
        assert first.index == again.index and again.kind == "bridge" and again.up
        assert again.mtu == 1400
        veth = nl.call_blocking(lambda ipr: links.ensure_veth(
            ipr, "vxv9", "eth0", peer_netns=ep, mtu=1400, master="vxbr9",
            peer_mac="02:42:0a:09:00:02"))
        assert veth.master == first.index and veth.kind == "veth"
        nl.call_blocking(lambda ipr: links.ensure_veth(ipr, "vxv9", "eth0", peer_netns=ep))
        with pytest.raises(links.LinkConflict, match="vxbr9"):
            nl.call_blocking(lambda ipr: links.ensure_veth(ipr, "vxbr9", "x"))
        with pytest.raises(links.BadLinkName, match="ifname"):
            nl.call_blocking(lambda ipr: links.ensure_bridge(ipr, "a-very-long-name-x"))
        nl.call_blocking(lambda ipr: links.add_address(ipr, "vxbr9", "10.9.0.1/24"))
        nl.call_blocking(lambda ipr: links.add_address(ipr, "vxbr9", "10.9.0.1/24"))
        nle.call_blocking(lambda ipr: links.set_link(ipr, "eth0", up=True))
        nle.call_blocking(lambda ipr: links.add_address(ipr, "eth0", "10.9.0.2/24"))
        nle.call_blocking(lambda ipr: links.add_address(ipr, "eth0", "fd00:9::2/64"))
        nle.call_blocking(lambda ipr: links.replace_route(ipr, "default", gateway="10.9.0.1"))
        inside = nle.call_blocking(lambda ipr: links.get_link(ipr, "eth0"))
        assert inside is not None and inside.mac == "02:42:0a:09:00:02" and inside.mtu == 1400
        addrs = {str(a.interface) for a in
                 nle.call_blocking(lambda ipr: links.list_addresses(ipr, "eth0"))}
        assert {"10.9.0.2/24", "fd00:9::2/64"} <= addrs
        assert "nodad" in run(["ip", "-6", "addr", "show", "eth0"], netns=ep).stdout
        assert "default via 10.9.0.1" in run(["ip", "route"], netns=ep).stdout
        nl.call_blocking(lambda ipr: links.ensure_veth(ipr, "vxtmp9", "vxtmp9p"))
        nl.call_blocking(lambda ipr: links.move_link(ipr, "vxtmp9p", ep, new_name="eth1"))
        assert nle.call_blocking(lambda ipr: links.get_link(ipr, "eth1")) is not None
        assert nl.call_blocking(lambda ipr: links.delete_link(ipr, "vxv9")) is True
        assert nl.call_blocking(lambda ipr: links.delete_link(ipr, "vxv9")) is False
        assert nle.call_blocking(lambda ipr: links.get_link(ipr, "eth0")) is None
        nl.call_blocking(lambda ipr: links.delete_route(ipr, "10.77.0.0/16"))
    finally:
        nl.close()
        nle.close()


def test_namespaces_are_never_created_by_accident(netns_lab: NetnsLab) -> None:
    name = f"{netns_lab.prefix}n"
    netns_lab.namespaces.append(name)  # the lab deletes it even if an assertion fails
    assert not links.netns_exists(name)
    with pytest.raises(KernelError):
        NetlinkThread(name)
    assert not links.netns_exists(name)
    assert links.create_netns(name) is True
    assert links.create_netns(name) is False
    assert "state UNKNOWN" in run(["ip", "link", "show", "lo"], netns=name).stdout
    assert name in links.list_netns(prefix=netns_lab.prefix)
    assert links.delete_netns(name) is True
    assert links.delete_netns(name) is False


def test_a_namespace_is_made_in_this_process_and_no_thread_of_ours_moves(
        netns_lab: NetnsLab) -> None:
    """create_netns makes the namespace on a thread of its own (no fork of the agent, about
    a millisecond): a namespace of its own with loopback up, seen by `ip netns`, while every
    other thread of this process stays in the namespace it was in, and the maker ends."""
    name = f"{netns_lab.prefix}m"
    netns_lab.namespaces.append(name)
    before = _thread_namespaces()
    assert links.create_netns(name) is True
    made = os.stat(f"/run/netns/{name}").st_ino
    assert made not in before.values()
    # The thread that made it is gone once the OS has reaped it (join() returns just before).
    deadline = time.monotonic() + 10
    while made in (after := _thread_namespaces()).values() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert made not in after.values()
    assert {tid: after[tid] for tid in before if tid in after} == \
        {tid: ino for tid, ino in before.items() if tid in after}
    shown = run(["ip", "-o", "link", "show", "lo"], netns=name).stdout
    assert "LOOPBACK,UP" in shown
    assert run(["ping", "-c", "1", "-W", "2", "127.0.0.1"], netns=name).returncode == 0


def _thread_namespaces() -> dict[str, int]:
    """Thread id -> the inode of its network namespace (a NetlinkThread lives in its own)."""
    return {tid: os.stat(f"/proc/self/task/{tid}/ns/net").st_ino
            for tid in os.listdir("/proc/self/task")}


def test_macvlan_is_born_in_its_namespace(netns_lab: NetnsLab) -> None:
    host = netns_lab.ns("h")
    ep = netns_lab.ns("e")
    run(["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p"], netns=host)
    nl = NetlinkThread(host)
    try:
        nl.call_blocking(lambda ipr: links.ensure_macvlan(ipr, "mv0", "eth0", netns=ep))
        info = run(["ip", "-d", "link", "show", "mv0"], netns=ep).stdout
        assert "macvlan mode bridge" in info
        with pytest.raises(links.UnderlayError, match="mode='bogus'"):
            nl.call_blocking(lambda ipr: links.ensure_macvlan(ipr, "mv1", "eth0", mode="bogus"))
    finally:
        nl.close()


def test_sublink_named_like_the_hosts_own_interface_is_moved_in_under_that_name(
        netns_lab: NetnsLab) -> None:
    # Made under a temporary name here, then moved and renamed: a 6.1 kernel refuses an ipvlan
    # created straight into another namespace under a name this namespace already has (eth0).
    host = netns_lab.ns("h")
    ep = netns_lab.ns("e")
    run(["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p"], netns=host)
    nl = NetlinkThread(host)
    try:
        nl.call_blocking(lambda ipr: links.ensure_macvlan(ipr, "eth0", "eth0", netns=ep))
        nl.call_blocking(lambda ipr: links.ensure_macvlan(ipr, "eth0", "eth0", netns=ep))
        assert "macvlan mode bridge" in run(["ip", "-d", "link", "show", "eth0"], netns=ep).stdout
        for netns in (host, ep):  # the second call's temporary link is gone from both
            listed = run(["ip", "-br", "link"], netns=netns).stdout.split()
            assert not [name for name in listed if name.startswith("vxt")], listed
    finally:
        nl.close()


@pytest.mark.parametrize("kernel_has_ipvlan", [False, True],
                         ids=["kernel-without-ipvlan", "kernel-with-ipvlan"])
def test_ipvlan_is_born_in_its_namespace_or_reports_missing_support(
        netns_lab: NetnsLab, kernel_has_ipvlan: bool) -> None:
    if netns_lab.kernel_has_link_kind("ipvlan") != kernel_has_ipvlan:
        pytest.skip(f"this kernel {'lacks' if kernel_has_ipvlan else 'has'} ipvlan "
                    "(ip link add ... type ipvlan): the other case runs")
    host = netns_lab.ns("h")
    ep = netns_lab.ns("e")
    run(["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p"], netns=host)
    nl = NetlinkThread(host)
    try:
        if not kernel_has_ipvlan:
            with pytest.raises(KernelError, match="no ipvlan support"):
                nl.call_blocking(lambda ipr: links.ensure_ipvlan(ipr, "iv0", "eth0", netns=ep))
            return
        nl.call_blocking(lambda ipr: links.ensure_ipvlan(ipr, "iv0", "eth0", netns=ep))
        assert "ipvlan" in run(["ip", "-d", "link", "show", "iv0"], netns=ep).stdout
    finally:
        nl.close()
