"""Underlay facts: selection by interface, CIDR and default route; IPv4 and IPv6; the
capability probe (pure selection tests, then the same read from a real namespace)."""

from __future__ import annotations

import pytest

from agent.lab.namespaces import NetnsLab, run
from underlay.facts import (
    AddressRecord,
    CapabilityReport,
    DefaultRoute,
    UnderlaySelectionError,
    choose_underlay,
    probe_capabilities,
    read_underlay,
)
from underlay.kernel import NetlinkThread

LINKS = {1: ("lo", 65536), 2: ("eth0", 1500), 3: ("eth1", 9000)}
ADDRS = [
    AddressRecord(1, "127.0.0.1", 8),
    AddressRecord(2, "fe80::1", 64),
    AddressRecord(2, "192.168.1.5", 24),
    AddressRecord(2, "2001:db8::5", 64),
    AddressRecord(3, "10.9.0.5", 16),
    AddressRecord(3, "fd00::5", 64, flags=0x40),  # tentative: never used
]
ROUTES = [DefaultRoute(2, 2), DefaultRoute(10, 3)]


def test_default_route_ipv4_first_and_ipv6_on_request() -> None:
    facts = choose_underlay(LINKS, ADDRS, ROUTES)
    assert (facts.interface, facts.address, facts.mtu, facts.family, facts.chosen_by) == \
        ("eth0", "192.168.1.5", 1500, 4, "default route")
    with pytest.raises(UnderlaySelectionError, match="family=6"):
        choose_underlay(LINKS, ADDRS, ROUTES, family=6)  # eth1's v6 address is tentative
    v6 = choose_underlay(LINKS, ADDRS, [DefaultRoute(10, 2)], family=6)
    assert (v6.address, v6.family) == ("2001:db8::5", 6)


def test_prefsrc_wins() -> None:
    extra = [*ADDRS, AddressRecord(2, "192.168.1.6", 24)]
    facts = choose_underlay(LINKS, extra, [DefaultRoute(2, 2, prefsrc="192.168.1.6")])
    assert facts.address == "192.168.1.6"


def test_by_interface_and_cidr() -> None:
    assert choose_underlay(LINKS, ADDRS, [], interface="eth1").address == "10.9.0.5"
    assert choose_underlay(LINKS, ADDRS, [], interface="eth0", family=6).address == \
        "2001:db8::5"
    by_cidr = choose_underlay(LINKS, ADDRS, [], cidr="10.9.0.0/16")
    assert (by_cidr.interface, by_cidr.mtu, by_cidr.chosen_by) == ("eth1", 9000, "cidr")
    assert choose_underlay(LINKS, ADDRS, [], cidr="2001:db8::/32").interface == "eth0"


@pytest.mark.parametrize("kwargs, message", [
    ({"interface": "eth7"}, "interface='eth7': no such interface"),
    ({"interface": "lo"}, "interface='lo': no usable"),
    ({"cidr": "172.16.0.0/12"}, "cidr='172.16.0.0/12': no interface"),
    ({"cidr": "banana"}, "cidr='banana': not a network"),
    ({"family": 5}, "family=5"),
    ({}, "no default route"),
])
def test_bad_selectors_name_field_and_value(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(UnderlaySelectionError, match=message):
        choose_underlay(LINKS, ADDRS, [], **kwargs)  # type: ignore[arg-type]


def test_report_names_what_is_missing() -> None:
    report = CapabilityReport(frozenset({"vxlan", "bridge"}),
                              {"ipvlan": "no ipvlan link type", "nftables": "no socket"})
    text = report.describe()
    assert "missing ipvlan, nftables" in text and "no ipvlan link type" in text
    assert "all present" in CapabilityReport(frozenset({"vxlan"})).describe()


@pytest.mark.kernel
async def test_read_underlay_and_probe_in_a_namespace(netns_lab: NetnsLab) -> None:
    sw = netns_lab.underlay_bridge()
    ns = netns_lab.ns("h1")
    netns_lab.plug(sw, ns, "eth0", ["10.0.0.1/24", "fd00::1/64"], mtu=1400)
    netns_lab.plug(sw, ns, "eth1", ["10.5.0.1/24"])
    run("ip route add default via 10.0.0.254 dev eth0", netns=ns)
    run("ip -6 route add default via fd00::fe dev eth0", netns=ns)
    nl = NetlinkThread(ns)
    try:
        facts = await read_underlay(nl)
        assert (facts.interface, facts.address, facts.mtu) == ("eth0", "10.0.0.1", 1400)
        v6 = await read_underlay(nl, family=6)
        assert (v6.interface, v6.address, v6.family) == ("eth0", "fd00::1", 6)
        assert (await read_underlay(nl, interface="eth1")).address == "10.5.0.1"
        assert (await read_underlay(nl, cidr="10.5.0.0/16")).interface == "eth1"
        with pytest.raises(UnderlaySelectionError, match="interface='eth9'"):
            await read_underlay(nl, interface="eth9")
        report = await probe_capabilities(nl)
        before = run("ip -o link show", netns=ns).stdout
    finally:
        nl.close()
    assert {"vxlan", "bridge", "macvlan", "nftables"} <= report.available
    # This kernel has no ipvlan; the report must say so (and a kernel with it must not).
    has_ipvlan = netns_lab.kernel_has_link_kind("ipvlan")
    assert ("ipvlan" in report.available) == has_ipvlan
    if not has_ipvlan:
        assert "ipvlan" in report.describe() and "missing ipvlan" in report.describe()
    assert "vxprobe" not in before
