"""The data-plane settings the agent programs, on a real kernel: the vxlan devices the
reconciler makes carry the configured outer UDP checksum (IPv4 udpcsum / noudpcsum, IPv6
udp6zerocsumtx+rx), switching the setting re-creates them and traffic still flows; the
underlay check names an interface that cannot segment VXLAN packets."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from agent.lab.namespaces import NetnsLab, run
from overlay.desired import vxlan_name
from overlay.reconciler import Reconciler
from tests.dataplane.test_kernel_dataplane import NETWORK, VNI, Lab, build, ping
from underlay.errors import KernelError
from underlay.kernel import NetlinkThread
from underlay.netlink_ops import NetlinkKernel
from underlay.offloads import (
    TUNNEL_CSUM_SEGMENTATION,
    TUNNEL_SEGMENTATION,
    read_features,
    tunnel_offload_advice,
)

pytestmark = pytest.mark.kernel


@pytest.fixture(params=[False, True], ids=["ipv4", "ipv6"])
def lab(request: pytest.FixtureRequest, netns_lab: NetnsLab) -> Iterator[Lab]:
    built = build(netns_lab, underlay_v6=request.param)
    yield built
    for host in built.hosts:
        host.nl.close()


def vxlan_details(ns: str) -> str:
    return " " + run(["ip", "-d", "link", "show", vxlan_name(VNI)], netns=ns).stdout + " "


async def test_vxlan_devices_carry_the_checksum_setting_and_switch_by_recreation(
        lab: Lab) -> None:
    v6 = lab.underlay_v6
    await lab.program(NETWORK)  # default: checksums on
    for host in lab.hosts:
        shown = vxlan_details(host.ns)
        assert (" noudp6zerocsumtx " in shown) if v6 else (" udpcsum " in shown), shown
    indexes = {host.index: run(["cat", f"/sys/class/net/{vxlan_name(VNI)}/ifindex"],
                               netns=host.ns).stdout for host in lab.hosts}
    for host in lab.hosts:  # a restarted agent configured vxlan_udp_csum = false
        host.reconciler = Reconciler(NetlinkKernel(host.nl), udp_csum=False)
    await lab.program(NETWORK)
    for host in lab.hosts:
        shown = vxlan_details(host.ns)
        if v6:
            assert " udp6zerocsumtx " in shown and " udp6zerocsumrx " in shown, shown
        else:
            assert " noudpcsum " in shown, shown
        again = run(["cat", f"/sys/class/net/{vxlan_name(VNI)}/ifindex"], netns=host.ns).stdout
        assert again != indexes[host.index]  # re-created: the setting is fixed at creation
        stats = host.reconciler.statistics()
        assert stats.in_sync and stats.fdb_entries == 2 and stats.neighbor_entries >= 2
    first = lab.hosts[0]
    for other in lab.hosts[1:]:
        assert ping(first.endpoint_ns, f"10.1.0.{other.index}")
    # Adopted as it is when the setting matches: nothing re-created on a second restart.
    before = run(["cat", f"/sys/class/net/{vxlan_name(VNI)}/ifindex"], netns=first.ns).stdout
    first.reconciler = Reconciler(NetlinkKernel(first.nl), udp_csum=False)
    first.reconciler.set_desired(lab.desired(first, NETWORK))
    assert await first.reconciler.apply()
    assert run(["cat", f"/sys/class/net/{vxlan_name(VNI)}/ifindex"],
               netns=first.ns).stdout == before


def test_an_underlay_that_cannot_segment_vxlan_is_named(netns_lab: NetnsLab) -> None:
    ns = netns_lab.ns("u")
    run(["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth1"], netns=ns)
    nl = NetlinkThread(ns)
    try:
        features = nl.call_blocking(lambda _ipr: read_features("eth0"))
        assert features[TUNNEL_SEGMENTATION] and features[TUNNEL_CSUM_SEGMENTATION]
        assert tunnel_offload_advice("eth0", features, udp_csum=True) is None
        run(["ethtool", "-K", "eth0", TUNNEL_CSUM_SEGMENTATION, "off"], netns=ns)
        features = nl.call_blocking(lambda _ipr: read_features("eth0"))
        advice = tunnel_offload_advice("eth0", features, udp_csum=True)
        assert advice is not None and "eth0" in advice and TUNNEL_CSUM_SEGMENTATION in advice
        # zero checksums need only the plain tunnel segmentation, still on
        assert tunnel_offload_advice("eth0", features, udp_csum=False) is None
        with pytest.raises(KernelError, match="nodev0"):
            nl.call_blocking(lambda _ipr: read_features("nodev0"))
    finally:
        nl.close()
