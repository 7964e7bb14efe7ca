"""The reconciler against an in-memory kernel: scenarios in the style of Calico's vxlan_fdb
tests, with injected failures (EBUSY, ENOENT, EEXIST, interrupted dumps)."""

from __future__ import annotations

import errno
import logging

import pytest
import trio
import trio.testing

from overlay.desired import (
    AliveMember,
    DesiredState,
    EndpointEntry,
    LocalEndpoint,
    NetworkSpec,
    UnderlayView,
    compute_desired,
    vtep_mac,
)
from overlay.reconciler import Reconciler, run_dataplane
from tests.dataplane.fake_kernel import FakeKernel, Injection
from tests.polling import wait_until
from underlay.records import (
    NTF_MASTER,
    NTF_SELF,
    NUD_NOARP,
    NUD_PERMANENT,
    NUD_REACHABLE,
    ZERO_MAC,
    FdbWrite,
    NeighborWrite,
    VxlanAttributes,
    WriteAction,
)

UNDERLAY = UnderlayView(address="10.0.0.1", mtu=1500)
NET = NetworkSpec(name="blue", vni=4097)
MEMBERS = [AliveMember("h1", "10.0.0.1"), AliveMember("h2", "10.0.0.2"),
           AliveMember("h3", "10.0.0.3")]
MAC2 = "02:42:0a:01:00:02"
MAC3 = "02:42:0a:01:00:03"


def endpoints(*extra: EndpointEntry) -> list[EndpointEntry]:
    return [
        EndpointEntry("blue", "h2", MAC2, ("10.1.0.2", "fd10::2")),
        EndpointEntry("blue", "h3", MAC3, ("10.1.0.3", "fd10::3")),
        *extra,
    ]


def desired(eps: list[EndpointEntry] | None = None, members: list[AliveMember] | None = None,
            networks: list[NetworkSpec] | None = None,
            local: list[LocalEndpoint] | None = None) -> DesiredState:
    return compute_desired(networks if networks is not None else [NET],
                           members if members is not None else MEMBERS,
                           eps if eps is not None else endpoints(), local or [], UNDERLAY, "h1")


async def programmed() -> tuple[FakeKernel, Reconciler]:
    kernel = FakeKernel()
    reconciler = Reconciler(kernel)
    reconciler.set_desired(desired())
    assert await reconciler.apply()
    return kernel, reconciler


async def test_programs_devices_fdb_flood_and_neighbors() -> None:
    kernel, reconciler = await programmed()
    vx = kernel.link("vxtun4097")
    br = kernel.link("vxbr4097")
    assert vx is not None and br is not None
    assert vx.vxlan == VxlanAttributes(4097, 4789, "10.0.0.1", False, True)
    assert vx.mtu == 1450 and vx.master == br.index and vx.mac == vtep_mac("h1")
    assert kernel.fdb_of("vxtun4097") == {
        (MAC2, "10.0.0.2"): (NUD_PERMANENT, NTF_SELF),
        (MAC3, "10.0.0.3"): (NUD_PERMANENT, NTF_SELF),
        (ZERO_MAC, "10.0.0.2"): (NUD_PERMANENT, NTF_SELF),
        (ZERO_MAC, "10.0.0.3"): (NUD_PERMANENT, NTF_SELF),
    }
    assert {ip: mac for ip, (mac, _s, _f) in kernel.neighbors_of("vxtun4097").items()} == {
        "10.1.0.2": MAC2, "fd10::2": MAC2, "10.1.0.3": MAC3, "fd10::3": MAC3}
    stats = reconciler.statistics()
    assert (stats.networks, stats.fdb_entries, stats.flood_entries, stats.neighbor_entries) \
        == (1, 2, 2, 4)
    assert stats.in_sync and stats.resyncs == 1 and stats.ops_by_result["ok"] >= 8
    # Neighbor entries go before FDB entries (flannel's order).
    kinds = [type(w) for w in kernel.writes_seen]
    assert kinds.index(FdbWrite) > max(i for i, k in enumerate(kinds) if k is NeighborWrite)


async def test_second_apply_writes_nothing() -> None:
    kernel, reconciler = await programmed()
    kernel.writes_seen.clear()
    kernel.link_calls.clear()
    reconciler.set_desired(desired())
    assert await reconciler.apply()
    assert kernel.writes_seen == [] and kernel.link_calls == []


async def test_endpoint_moves_and_leaves() -> None:
    kernel, reconciler = await programmed()
    moved = [EndpointEntry("blue", "h3", MAC2, ("10.1.0.2", "fd10::2")),
             EndpointEntry("blue", "h3", MAC3, ("10.1.0.3", "fd10::3"))]
    reconciler.set_desired(desired(moved))
    assert await reconciler.apply()
    fdb = kernel.fdb_of("vxtun4097")
    assert (MAC2, "10.0.0.3") in fdb and (MAC2, "10.0.0.2") not in fdb
    assert (ZERO_MAC, "10.0.0.2") not in fdb and (ZERO_MAC, "10.0.0.3") in fdb
    reconciler.set_desired(desired([]))
    assert await reconciler.apply()
    assert kernel.fdb_of("vxtun4097") == {} and kernel.neighbors_of("vxtun4097") == {}


async def test_dead_member_entries_withdrawn() -> None:
    kernel, reconciler = await programmed()
    reconciler.set_desired(desired(members=MEMBERS[:2]))
    assert await reconciler.apply()
    assert set(kernel.fdb_of("vxtun4097")) == {(MAC2, "10.0.0.2"), (ZERO_MAC, "10.0.0.2")}
    assert set(kernel.neighbors_of("vxtun4097")) == {"10.1.0.2", "fd10::2"}


async def test_ebusy_entry_stays_dirty_and_does_not_block_others(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="vxmesh.dataplane")
    kernel = FakeKernel(injections=[Injection(
        lambda w: isinstance(w, FdbWrite) and w.mac == MAC2, errno.EBUSY, times=2)])
    reconciler = Reconciler(kernel)
    reconciler.set_desired(desired())
    assert not await reconciler.apply()
    fdb = kernel.fdb_of("vxtun4097")
    assert (MAC3, "10.0.0.3") in fdb and (MAC2, "10.0.0.2") not in fdb
    assert len(kernel.neighbors_of("vxtun4097")) == 4
    stats = reconciler.statistics()
    assert stats.ops_by_result["EBUSY"] == 1 and stats.pending_updates == 1
    assert not await reconciler.apply()  # still busy: retried, failed again
    assert await reconciler.apply()
    assert (MAC2, "10.0.0.2") in kernel.fdb_of("vxtun4097")
    assert reconciler.statistics().ops_by_result["EBUSY"] == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    repeats = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    # The same failure twice in a row: one warning, the repeat at debug level.
    assert len(warnings) == 1 and "1 of" in warnings[0] and "EBUSY" in warnings[0]
    assert len(repeats) == 1
    assert repeats[0].split("first: ")[1] == warnings[0].split("first: ")[1]
    assert [r.getMessage() for r in caplog.records].count("dataplane: back in sync") == 1
    assert await reconciler.apply()
    assert [r.getMessage() for r in caplog.records].count("dataplane: back in sync") == 1


async def test_enoent_on_delete_is_success_but_on_add_forces_resync() -> None:
    kernel, reconciler = await programmed()
    kernel.injections.append(Injection(lambda w: w.action is WriteAction.DELETE,
                                       errno.ENOENT, times=None))
    reconciler.set_desired(desired([]))
    assert await reconciler.apply()
    kernel.injections[:] = [Injection(lambda w: isinstance(w, NeighborWrite), errno.ENOENT)]
    resyncs = reconciler.statistics().resyncs
    reconciler.set_desired(desired())
    assert not await reconciler.apply()
    assert await reconciler.apply()
    assert reconciler.statistics().resyncs == resyncs + 1
    assert len(kernel.neighbors_of("vxtun4097")) == 4


async def test_eexist_foreign_device_holds_vni_other_networks_still_programmed() -> None:
    kernel = FakeKernel()
    kernel.add_link("vxlan0", "vxlan", vxlan=VxlanAttributes(4097, 4789, "10.0.0.1", True,
                                                            False))
    reconciler = Reconciler(kernel)
    red = NetworkSpec(name="red", vni=5000)
    reconciler.set_desired(desired(networks=[NET, red], eps=[
        *endpoints(), EndpointEntry("red", "h2", "02:42:0a:02:00:02", ("10.2.0.2",))]))
    assert not await reconciler.apply()
    assert kernel.link("vxtun5000") is not None
    assert kernel.neighbors_of("vxtun5000") == {
        "10.2.0.2": ("02:42:0a:02:00:02", NUD_PERMANENT, 0)}
    assert kernel.link("vxtun4097") is None and kernel.link("vxlan0") is not None
    stats = reconciler.statistics()
    assert stats.ops_by_result.get("EEXIST") == 1 and not stats.in_sync


async def test_interrupted_dump_defers_everything(caplog: pytest.LogCaptureFixture) -> None:
    kernel, _ = await programmed()
    stale_kernel_entries = dict(kernel.fdb)
    kernel.interrupted_dumps = 1
    restarted = Reconciler(kernel)
    restarted.set_desired(desired([]))
    assert not await restarted.apply()
    assert kernel.fdb == stale_kernel_entries  # no deletion before a full sync
    assert "interrupted" in caplog.text
    assert await restarted.apply()
    assert kernel.fdb_of("vxtun4097") == {}


async def test_foreign_objects_survive() -> None:
    kernel, reconciler = await programmed()
    vx = kernel.index("vxtun4097")
    foreign_bridge = kernel.add_link("docker0", "bridge")
    foreign_vxlan = kernel.add_link("vxlan0", "vxlan",
                                    vxlan=VxlanAttributes(42, 4789, None, True, False))
    kernel.add_link("vxtunnel", "dummy")  # our prefix, but not our scheme
    foreign = {
        (vx, "02:00:00:00:aa:01", "10.0.0.9"): (NUD_NOARP, NTF_SELF),       # not permanent
        (vx, "02:00:00:00:aa:02", None): (NUD_PERMANENT, NTF_MASTER),     # the bridge's
        (foreign_vxlan, "02:00:00:00:aa:03", "10.0.0.9"): (NUD_PERMANENT, NTF_SELF),
        (foreign_bridge, "02:00:00:00:aa:04", None): (NUD_PERMANENT, NTF_SELF),
    }
    kernel.fdb.update(foreign)
    kernel.neighbors[(vx, "10.1.0.99")] = ("02:00:00:00:aa:05", NUD_REACHABLE, 0)
    kernel.neighbors[(foreign_vxlan, "10.9.0.1")] = ("02:00:00:00:aa:06", NUD_PERMANENT, 0)
    reconciler.request_resync()
    reconciler.set_desired(desired([], networks=[]))
    assert await reconciler.apply()
    assert kernel.link("vxtun4097") is None and kernel.link("vxbr4097") is None
    for name in ("docker0", "vxlan0", "vxtunnel"):
        assert kernel.link(name) is not None
    assert {k: v for k, v in kernel.fdb.items() if k[0] != vx} == {
        k: v for k, v in foreign.items() if k[0] != vx}
    assert kernel.neighbors == {(foreign_vxlan, "10.9.0.1"): ("02:00:00:00:aa:06",
                                                              NUD_PERMANENT, 0)}


async def test_foreign_entries_on_our_device_survive_a_resync() -> None:
    kernel, reconciler = await programmed()
    vx = kernel.index("vxtun4097")
    kernel.fdb[(vx, "02:00:00:00:aa:01", "10.0.0.9")] = (NUD_NOARP, NTF_SELF)
    kernel.neighbors[(vx, "10.1.0.99")] = ("02:00:00:00:aa:05", NUD_REACHABLE, 0)
    reconciler.request_resync()
    assert await reconciler.apply()
    assert (vx, "02:00:00:00:aa:01", "10.0.0.9") in kernel.fdb
    assert (vx, "10.1.0.99") in kernel.neighbors


async def test_restart_adopts_without_writes() -> None:
    kernel, _ = await programmed()
    before = (dict(kernel.links), dict(kernel.fdb), dict(kernel.neighbors))
    kernel.writes_seen.clear()
    kernel.link_calls.clear()
    restarted = Reconciler(kernel)
    restarted.set_desired(desired())
    assert await restarted.apply()
    assert kernel.writes_seen == []
    assert [c for c in kernel.link_calls if not c.startswith("ensure_bridge")] == []
    assert (dict(kernel.links), dict(kernel.fdb), dict(kernel.neighbors)) == before


async def test_restart_removes_stale_entries_it_owns() -> None:
    kernel, _ = await programmed()
    restarted = Reconciler(kernel)
    restarted.set_desired(desired(endpoints()[:1]))
    assert await restarted.apply()
    assert set(kernel.fdb_of("vxtun4097")) == {(MAC2, "10.0.0.2"), (ZERO_MAC, "10.0.0.2")}


async def test_orphans_are_reclaimed_never_file_exists() -> None:
    kernel = FakeKernel()
    # A crash left: our vxlan name with a wrong VNI, our bridge name as a dummy, and a
    # device of ours for a network that no longer exists (holding an old entry).
    kernel.add_link("vxtun4097", "vxlan", vxlan=VxlanAttributes(7, 4789, "10.0.0.1", False,
                                                               True))
    kernel.add_link("vxbr4097", "dummy")
    old = kernel.add_link("vxtun300", "vxlan",
                          vxlan=VxlanAttributes(300, 4789, "10.0.0.1", False, True))
    kernel.fdb[(old, MAC2, "10.0.0.2")] = (NUD_PERMANENT, NTF_SELF)
    kernel.add_link("vxbr300", "bridge")
    reconciler = Reconciler(kernel)
    reconciler.set_desired(desired())
    assert await reconciler.apply()
    vx = kernel.link("vxtun4097")
    br = kernel.link("vxbr4097")
    assert vx is not None and vx.vxlan is not None and vx.vxlan.vni == 4097
    assert br is not None and br.kind == "bridge"
    assert kernel.link("vxtun300") is None and kernel.link("vxbr300") is None
    assert all(k[0] != old for k in kernel.fdb)
    assert len(kernel.fdb_of("vxtun4097")) == 4


async def test_vxlan_drift_fixed_in_place() -> None:
    kernel, reconciler = await programmed()
    vx = kernel.link("vxtun4097")
    assert vx is not None
    kernel.links[vx.index] = vx.__class__(vx.index, vx.name, vx.kind, vx.master, 1400, True,
                                          "02:00:00:00:00:99", vx.vxlan)
    reconciler.request_resync()
    assert await reconciler.apply()
    fixed = kernel.link("vxtun4097")
    assert fixed is not None and fixed.index == vx.index
    assert fixed.mtu == 1450 and fixed.mac == vtep_mac("h1")


async def test_entry_deleted_by_hand_is_restored_by_resync() -> None:
    kernel, reconciler = await programmed()
    vx = kernel.index("vxtun4097")
    del kernel.fdb[(vx, MAC2, "10.0.0.2")]
    del kernel.neighbors[(vx, "fd10::3")]
    assert await reconciler.apply()  # no resync: still believes it is there
    assert (vx, MAC2, "10.0.0.2") not in kernel.fdb
    reconciler.request_resync()
    assert await reconciler.apply()
    assert (vx, MAC2, "10.0.0.2") in kernel.fdb and (vx, "fd10::3") in kernel.neighbors


async def test_local_endpoint_ports_get_network_mtu() -> None:
    kernel = FakeKernel()
    kernel.add_link("vxe1", "veth", mtu=1500)
    reconciler = Reconciler(kernel)
    reconciler.set_desired(desired(local=[LocalEndpoint("blue", "vxe1"),
                                          LocalEndpoint("blue", "vxe-later")]))
    assert await reconciler.apply()
    port = kernel.link("vxe1")
    assert port is not None and port.mtu == 1450
    assert port.master == kernel.index("vxbr4097")


async def test_entries_wait_for_a_device_that_failed() -> None:
    kernel = FakeKernel(fail_create={"vxtun4097": errno.ENOMEM})
    reconciler = Reconciler(kernel)
    reconciler.set_desired(desired())
    assert not await reconciler.apply()
    assert kernel.fdb == {}
    assert reconciler.statistics().pending_updates == 8
    del kernel.fail_create["vxtun4097"]
    assert await reconciler.apply()
    assert len(kernel.fdb_of("vxtun4097")) == 4


async def test_run_dataplane_applies_retries_and_resyncs(
        autojump_clock: trio.testing.MockClock) -> None:
    kernel = FakeKernel(injections=[Injection(
        lambda w: isinstance(w, FdbWrite) and w.mac == MAC3, errno.EBUSY, times=3)])
    reconciler = Reconciler(kernel)
    reconciler.set_desired(desired())
    async with trio.open_nursery() as nursery:
        started = await nursery.start(run_dataplane, reconciler)
        assert started is reconciler
        assert not reconciler.in_sync()
        await wait_until(reconciler.in_sync, "the retried entry applied", 10, interval=0.5)
        vx = kernel.index("vxtun4097")
        del kernel.fdb[(vx, MAC2, "10.0.0.2")]
        # the periodic resync (90 s) repairs it
        await wait_until(lambda: (vx, MAC2, "10.0.0.2") in kernel.fdb, "the resync repair", 200,
                         interval=1)
        reconciler.set_desired(desired([]))
        await wait_until(lambda: not kernel.fdb_of("vxtun4097"), "the entries removed", 5,
                         interval=0.1)
        nursery.cancel_scope.cancel()


async def test_deletions_remove_fdb_entries_before_neighbor_entries() -> None:
    kernel, reconciler = await programmed()
    kernel.writes_seen.clear()
    reconciler.set_desired(desired([]))
    assert await reconciler.apply()
    kinds = [type(w) for w in kernel.writes_seen]
    assert all(w.action is WriteAction.DELETE for w in kernel.writes_seen)
    assert max(i for i, k in enumerate(kinds) if k is FdbWrite) < kinds.index(NeighborWrite)


async def test_wait_applied_returns_a_pass_that_started_after_the_call() -> None:
    seen = []
    kernel = FakeKernel(injections=[Injection(
        lambda w: isinstance(w, FdbWrite) and w.mac == MAC3, errno.EBUSY, times=1)])
    reconciler = Reconciler(kernel, on_applied=seen.append)
    reconciler.set_desired(desired())
    assert not await reconciler.apply()  # pass 1 finished before anyone waits
    results = []

    async def waiter() -> None:
        results.append(await reconciler.wait_applied())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert results == []  # pass 1 does not count: it ended before the call
        assert await reconciler.apply()
    assert [(p.number, p.in_sync) for p in results] == [(2, True)]
    assert [(p.number, p.in_sync) for p in seen] == [(1, False), (2, True)]
    assert seen[-1].seconds == reconciler.statistics().last_apply_seconds


async def test_an_endpoint_joining_attaches_its_port_alone_and_a_vanished_one_is_repaired() -> None:
    kernel = FakeKernel()
    kernel.add_link("vxe1", "veth", mtu=1500)
    reconciler = Reconciler(kernel)
    reconciler.set_desired(desired(local=[LocalEndpoint("blue", "vxe1")]))
    assert await reconciler.apply()
    kernel.link_calls.clear()
    kernel.add_link("vxe2", "veth", mtu=1500)
    reconciler.set_desired(desired(local=[LocalEndpoint("blue", "vxe1"),
                                          LocalEndpoint("blue", "vxe2")]))
    assert await reconciler.apply()
    assert kernel.link_calls == ["attach vxe2"]  # no device pass: no bridge ensured again
    port = kernel.link("vxe2")
    assert port is not None and port.mtu == 1450 and port.master == kernel.index("vxbr4097")
    # A port gone before its attach, then the bridge deleted behind our back: the next pass
    # is a whole device pass that repairs the bridge and skips the missing port.
    reconciler.set_desired(desired(local=[LocalEndpoint("blue", "vxe1"),
                                          LocalEndpoint("blue", "vxe2"),
                                          LocalEndpoint("blue", "vxe-gone")]))
    await kernel.delete_link(kernel.index("vxbr4097"))
    kernel.link_calls.clear()
    assert not await reconciler.apply()  # the attach found nothing: a device pass is due
    assert await reconciler.apply()
    assert kernel.link_calls[0] == "ensure_bridge vxbr4097"
    assert {kernel.link(p).master for p in ("vxe1", "vxe2")} == {kernel.index("vxbr4097")}
