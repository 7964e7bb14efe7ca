"""underlay.plug on a real kernel: the veth made in one request, the sandbox set in one batch."""

from __future__ import annotations

import pytest

from agent.lab.namespaces import NetnsLab, run
from underlay import links, plug
from underlay.errors import KernelError
from underlay.kernel import NetlinkThread

pytestmark = pytest.mark.kernel


def test_one_request_veth_one_batch_sandbox_and_the_same_spec_again(netns_lab: NetnsLab) -> None:
    host = netns_lab.ns("h")
    sandbox = netns_lab.ns("s")
    nl = NetlinkThread(host)
    try:
        bridge = nl.call_blocking(lambda ipr: links.ensure_bridge(ipr, "vxbr8", mtu=1400))
        nl.call_blocking(lambda ipr: plug.create_veth_into(
            ipr, "vxv8", "eth0", sandbox, mtu=1400, peer_mac="02:42:0a:08:00:02",
            master="vxbr8"))
        outside = nl.call_blocking(lambda ipr: links.get_link(ipr, "vxv8"))
        assert outside is not None and outside.up and outside.master == bridge.index
        assert outside.mtu == 1400
        spec = {"mtu": 1400, "mac": "02:42:0a:08:00:02",
                "addresses": ("10.8.0.2/24", "fd00:8::2/64"),
                "routes": (("0.0.0.0/0", "10.8.0.1"), ("::/0", "fd00:8::1"))}
        for _ in range(2):  # the same spec twice: one result (address EEXIST is success)
            with plug.Sandbox(sandbox, "eth0") as inside:
                inside.configure(**spec)  # type: ignore[arg-type]
                assert inside.wait_operational()
        shown = run(["ip", "-d", "addr", "show", "eth0"], netns=sandbox).stdout
        assert "mtu 1400" in shown and "02:42:0a:08:00:02" in shown and ",UP," in shown
        assert "inet 10.8.0.2/24 brd 10.8.0.255" in shown and "fd00:8::2/64" in shown
        assert "default via 10.8.0.1" in run(["ip", "route"], netns=sandbox).stdout
        assert "default via fd00:8::1" in run(["ip", "-6", "route"], netns=sandbox).stdout
        assert nl.call_blocking(lambda ipr: links.wait_operational(ipr, "vxv8"))
        # the same pair again: adopted (re-ensure at start), nothing doubled
        nl.call_blocking(lambda ipr: plug.ensure_veth_into(
            ipr, "vxv8", "eth0", sandbox, mtu=1400, peer_mac="02:42:0a:08:00:02",
            master="vxbr8"))
        assert run(["ip", "-o", "link"], netns=sandbox).stdout.count("eth0") == 1
        # a new host name whose peer name is taken in the sandbox: refused, nothing left
        with pytest.raises(links.LinkConflict, match="eth0"):
            nl.call_blocking(lambda ipr: plug.ensure_veth_into(
                ipr, "vxv8b", "eth0", sandbox, mtu=None, peer_mac=None, master=None))
        assert nl.call_blocking(lambda ipr: links.get_link(ipr, "vxv8b")) is None
        with pytest.raises(KernelError, match="vxnone"):
            nl.call_blocking(lambda ipr: plug.create_veth_into(
                ipr, "vxv8c", "eth1", sandbox, mtu=None, peer_mac=None, master="vxnone"))
        with pytest.raises(KernelError, match="eth9"):
            plug.Sandbox(sandbox, "eth9")
        with plug.Sandbox(sandbox, "eth0") as inside, \
                pytest.raises(KernelError, match=r"route 10\.99\.0\.0/16 via 10\.77\.0\.1"):
            inside.configure(mtu=None, mac=None, addresses=(),
                             routes=(("10.99.0.0/16", "10.77.0.1"),))  # unreachable gateway
    finally:
        nl.close()
