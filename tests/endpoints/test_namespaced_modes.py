"""none, overlay, macvlan and ipvlan endpoints on a real kernel: who reaches whom, who must not."""

from __future__ import annotations

import pytest

from agent.lab.namespaces import NetnsLab, run
from tests.endpoints.conftest import Site, nsenter
from underlay import links
from underlay.endpoints_model import EndpointError, EndpointSpec, Mode

pytestmark = pytest.mark.kernel


async def test_none_mode_has_loopback_only(site: Site) -> None:
    h1 = site.service(site.config(site.h1, "a"))
    await h1.start()
    rec = await h1.create(EndpointSpec("isolated", Mode.NONE))
    assert rec.netns is not None and links.netns_exists(rec.netns)
    result = await h1.exec("isolated", ["ip", "-o", "link", "show"])
    assert result.returncode == 0
    assert [line.split(":")[1].strip() for line in result.stdout.splitlines()] == ["lo"]
    assert "state UNKNOWN" in result.stdout  # loopback is up
    site.serve(h1.exec_argv("isolated", []), "tcp", "127.0.0.1", 80)
    assert site.reach(h1.exec_argv("isolated", []), "tcp", "127.0.0.1", 80) == "127.0.0.1"
    assert site.reach(h1.exec_argv("isolated", []), "tcp", "10.0.0.1", 22) is None
    assert (await h1.inspect("isolated")).addresses == ("127.0.0.1/8", "::1/128")
    assert await h1.delete("isolated") is True
    assert not links.netns_exists(rec.netns)


def _vxlan(netns: str, local: str, remote: str) -> None:
    """A hand-built VXLAN segment (VNI 42) on bridge vxbr42, flooding to the other VTEP."""
    run(["ip", "link", "add", "vxbr42", "mtu", "1450", "type", "bridge"], netns=netns)
    run(["ip", "link", "add", "vxlan42", "type", "vxlan", "id", "42", "local", local,
         "dstport", "4789", "nolearning"], netns=netns)
    run(["ip", "link", "set", "vxlan42", "master", "vxbr42", "mtu", "1450", "up"], netns=netns)
    run(["ip", "link", "set", "vxbr42", "up"], netns=netns)
    run(["bridge", "fdb", "append", "00:00:00:00:00:00", "dev", "vxlan42", "dst", remote],
        netns=netns)


async def test_overlay_endpoints_talk_across_hosts_and_nowhere_else(site: Site) -> None:
    h1 = site.service(site.config(site.h1, "a"))
    h2 = site.service(site.config(site.h2, "b"))
    await h1.start()
    await h2.start()
    spec = EndpointSpec("o1", Mode.OVERLAY, network="blue", bridge="vxbr42",
                        addresses=("10.42.0.1/24",))  # MTU: the bridge's (1450)
    with pytest.raises(EndpointError, match="bridge='vxbr42'"):
        await h1.create(spec)  # the overlay network is not there yet: refused, nothing made
    assert h1.records() == [] and links.list_netns(prefix=h1.config.netns_prefix) == []
    _vxlan(site.h1, "10.0.0.1", "10.0.0.2")
    _vxlan(site.h2, "10.0.0.2", "10.0.0.1")
    o1 = await h1.create(spec)
    o2 = await h2.create(EndpointSpec("o2", Mode.OVERLAY, network="blue", bridge="vxbr42",
                                      addresses=("10.42.0.2/24", "fd00:42::2/64"), mtu=1450))
    # What the neighbor table needs: network, address, MAC (Docker's 02:42 + IPv4 octets).
    assert (o1.network, o1.addresses, o1.mac) == ("blue", ("10.42.0.1/24",), "02:42:0a:2a:00:01")
    assert o2.mac == "02:42:0a:2a:00:02"
    looked = await h2.inspect("o2")
    assert looked.mac == o2.mac and looked.mtu == 1450 and "fd00:42::2/64" in looked.addresses
    assert (await h1.inspect("o1")).mtu == 1450
    site.serve(h2.exec_argv("o2", []), "tcp", "0.0.0.0", 80)
    assert site.reach(h1.exec_argv("o1", []), "tcp", "10.42.0.2", 80) == "10.42.0.1"
    # Must not: the hosts and the outside have no address on the overlay.
    assert site.reach(nsenter(site.h2), "tcp", "10.42.0.2", 80) is None
    assert site.reach(nsenter(site.out), "tcp", "10.42.0.2", 80) is None
    assert site.reach(h1.exec_argv("o1", []), "tcp", "10.0.0.2", 80) is None


async def test_macvlan_endpoints_sit_on_the_underlay_but_not_reach_their_parent(
        site: Site) -> None:
    h1 = site.service(site.config(site.h1, "a"))
    h2 = site.service(site.config(site.h2, "b"))
    await h1.start()
    await h2.start()
    m1 = await h1.create(EndpointSpec("m1", Mode.MACVLAN, addresses=("10.0.0.11/24",),
                                      gateway="10.0.0.254"))
    await h2.create(EndpointSpec("m2", Mode.MACVLAN, addresses=("10.0.0.12/24",)))
    assert m1.mac == "02:42:0a:00:00:0b"
    info = (await h1.exec("m1", ["ip", "-d", "link", "show", "eth0"])).stdout
    assert "macvlan mode bridge" in info and m1.mac in info
    site.serve(h1.exec_argv("m1", []), "tcp", "0.0.0.0", 80)
    site.serve(nsenter(site.out), "tcp", "0.0.0.0", 7000)
    assert site.reach(h2.exec_argv("m2", []), "tcp", "10.0.0.11", 80) == "10.0.0.12"
    assert site.reach(nsenter(site.h2), "tcp", "10.0.0.11", 80) == "10.0.0.2"
    assert site.reach(h1.exec_argv("m1", []), "tcp", "10.99.0.1", 7000) == "10.0.0.11"
    # Must not: macvlan children and their parent cannot talk (kernel design).
    assert site.reach(nsenter(site.h1), "tcp", "10.0.0.11", 80) is None
    with pytest.raises(EndpointError, match="parent='nope0'"):
        await h1.create(EndpointSpec("m3", Mode.MACVLAN, addresses=("10.0.0.13/24",),
                                     parent="nope0"))
    assert [r.name for r in h1.records()] == ["m1"]


@pytest.fixture
def needs_ipvlan(netns_lab: NetnsLab) -> None:
    if not netns_lab.kernel_has_link_kind("ipvlan"):
        pytest.skip("this kernel has no ipvlan (ip link add ... type ipvlan fails)")


async def test_ipvlan_request_is_refused_cleanly_where_the_kernel_lacks_it(
        netns_lab: NetnsLab, site: Site) -> None:
    if netns_lab.kernel_has_link_kind("ipvlan"):
        pytest.skip("this kernel has ipvlan: test_ipvlan_request_creates_an_endpoint runs")
    h1 = site.service(site.config(site.h1, "a"))
    await h1.start()
    assert "ipvlan" in h1.capabilities.missing  # our probe agrees with the kernel
    spec = EndpointSpec("i1", Mode.IPVLAN, addresses=("10.0.0.21/24",))
    with pytest.raises(EndpointError, match=r"mode='ipvlan'.*no ipvlan"):
        await h1.create(spec)
    assert h1.records() == [] and links.list_netns(prefix=h1.config.netns_prefix) == []


@pytest.mark.usefixtures("needs_ipvlan")
async def test_ipvlan_request_creates_an_endpoint(site: Site) -> None:
    h1 = site.service(site.config(site.h1, "a"))
    await h1.start()
    assert "ipvlan" not in h1.capabilities.missing  # our probe agrees with the kernel
    spec = EndpointSpec("i1", Mode.IPVLAN, addresses=("10.0.0.21/24",))
    assert (await h1.create(spec)).mode is Mode.IPVLAN


@pytest.mark.usefixtures("needs_ipvlan")
async def test_ipvlan_l2_and_l3(site: Site) -> None:
    h1 = site.service(site.config(site.h1, "a"))
    await h1.start()
    await h1.create(EndpointSpec("i1", Mode.IPVLAN, addresses=("10.0.0.21/24",)))
    await h1.create(EndpointSpec("i3", Mode.IPVLAN, addresses=("10.50.0.1/24",),
                                 ipvlan_mode="l3"))
    site.serve(h1.exec_argv("i1", []), "tcp", "0.0.0.0", 80)
    assert site.reach(nsenter(site.h2), "tcp", "10.0.0.21", 80) == "10.0.0.2"
    assert "mode l3" in (await h1.exec("i3", ["ip", "-d", "link", "show", "eth0"])).stdout
    assert await h1.delete("i1") and await h1.delete("i3")
