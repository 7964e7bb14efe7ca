"""The agent's start-up phases: one trio service each, started in dependency order.

Owns: `run_metrics`, `run_store`, `run_gossip`, `run_pipeline`, `run_dataplane`,
`run_pools`, `run_names`, `run_policies`, `run_api`, `run_watchdog`. Each is
`run_x(components, ..., *, task_status)`, reports started once its part is ready, and runs
until cancelled; `agent.runtime.process` starts them with `nursery.start` in that order.

Rules:
- etcd away = degraded: the store's services retry on their own; nothing here waits for it.
- A restart adopts the kernel: our endpoints are republished into the table before gossip
  joins, and the data plane is first applied only after the initial gossip sync (bounded),
  so no entry of a live peer is removed and re-added.
- Gossip never waits on the kernel: table and member events are only recorded by the
  pipeline, which settles them in bounded slices.

May import: agent.*, overlay, underlay, trio, the standard library.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
from functools import partial

import trio

from agent.api.routes import serve_api
from agent.cni.service import CNI_ROUTES, CniControl, work_off_spool
from agent.runtime.compose import Components
from agent.runtime.control import Control, agent_version
from agent.runtime.errors import EtcdUnreachable, PortInUse, StartupError
from agent.runtime.metrics import serve_metrics
from agent.runtime.systemd import run_watchdog as run_systemd_watchdog
from agent.state_files import StateWriteError
from agent.store.errors import StoreError, StoreUnavailable
from agent.store.schema import Node
from gossip.errors import GossipError
from overlay.reconciler import run_dataplane as run_reconciler

log = logging.getLogger("vxmesh.agent")

INITIAL_SYNC_TIMEOUT = 5.0
FIRST_CONTACT_MARGIN = 1.0
#: Block reclaimer passes per `store.reclaim_grace` (every 300 s at the default hour). Each
#: pass reads every node record and every address block (O(N) on every agent, so O(N^2)
#: reads for etcd); a host is reclaimed after grace plus at most one interval either way.
RECLAIM_PASSES_PER_GRACE = 12


async def run_metrics(c: Components, *,
                      task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Prometheus on `metrics.address:metrics.port` (if enabled)."""
    metrics = c.config.metrics
    async with trio.open_nursery() as nursery:
        if metrics.enabled:
            try:
                await nursery.start(serve_metrics, c.metrics, metrics.address, metrics.port)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise PortInUse(f"metrics.port={metrics.port}: {metrics.address} port "
                                    f"{metrics.port} is already in use") from None
                if exc.errno == errno.EADDRNOTAVAIL:
                    raise StartupError(f"metrics.address={metrics.address!r}: not an address "
                                       "of this host") from None
                raise
        task_status.started()


async def run_store(c: Components, *,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """etcd: health probe, network watch (mirrored into the known networks), block reclaimer.

    On a first start (no copy of the networks in the state directory) etcd must answer
    within `store.timeout`, else EtcdUnreachable; later starts run degraded while it is away.
    """
    if not c.networks.copied:
        await _first_contact(c)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(c.store.run_health_probe)
        await nursery.start(c.store.run_network_watch)
        nursery.start_soon(_follow_networks, c)
        grace = c.config.store.reclaim_grace
        nursery.start_soon(partial(c.store.run_block_reclaimer, grace=grace,
                                   interval=grace / RECLAIM_PASSES_PER_GRACE,
                                   alive=partial(_alive_nodes, c)))
        task_status.started()


async def _first_contact(c: Components) -> None:
    store = c.config.store
    reason = "no answer"
    with trio.move_on_after(store.timeout + FIRST_CONTACT_MARGIN):
        try:
            await c.store.call(c.store.client.status)
            return
        except StoreUnavailable as exc:
            reason = str(exc)
    raise EtcdUnreachable(
        f"store.endpoints={store.endpoints[0]!r}: etcd did not answer within "
        f"{store.timeout:g} s ({reason}); a first start needs it (later starts run degraded "
        f"from the copy in {c.config.node.state_dir})")


def _alive_nodes(c: Components) -> set[str]:
    """Names gossip sees alive (the block reclaimer never frees a live host's blocks)."""
    return {m["name"] for m in c.gossip.members() if m["state"] == "alive"}


async def _follow_networks(c: Components) -> None:
    """Mirror the store's network view into the known networks once etcd has listed them."""
    version = -1
    while True:
        version = await c.store.wait_networks_changed(version)
        if c.store.network_view.revision == 0:
            continue  # not listed yet: keep the copy from the state directory
        try:
            c.networks.replace(dict(c.store.network_view.snapshot()))
        except StateWriteError as exc:
            log.error("%s", exc)
        c.pipeline.mark_dirty()
        c.wireguard.changed()


async def run_gossip(c: Components, *,
                     task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Republish our endpoints, gossip, register in etcd; started after the initial sync (or
    INITIAL_SYNC_TIMEOUT alone)."""
    c.attachments.republish()
    await c.attachments.apply_overlay_egress()
    async with trio.open_nursery() as nursery:
        try:
            await nursery.start(c.gossip.run)
        except* GossipError as group:
            port = c.config.gossip.port
            raise PortInUse(f"gossip.port={port}: {group.exceptions[0]}") from None
        nursery.start_soon(partial(c.store.run_node_registration, node_record(c),
                                   ttl=c.config.store.lease_ttl))
        with trio.move_on_after(INITIAL_SYNC_TIMEOUT):
            await c.gossip.wait_initial_sync()
        task_status.started()


def node_record(c: Components) -> Node:
    """Our etcd node record as it is now (the WireGuard key changes with a rotation)."""
    identity = c.gossip.identity
    return Node(c.node, ipaddress.ip_address(c.facts.address),
                (c.facts.address, c.config.gossip.port), agent_version(),
                b"" if identity is None else identity.signer.public_key,
                c.wireguard.public_key_bytes())


async def run_pipeline(c: Components, *,
                       task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Desired state from every change, handed to the reconciler (first compute first)."""
    async with trio.open_nursery() as nursery:
        await nursery.start(c.pipeline.run)
        task_status.started()


async def run_dataplane(c: Components, *,
                        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """The reconciler's apply loop: one full resync and apply before it reports started."""
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(run_reconciler, c.reconciler,
                                    resync_interval=c.config.dataplane.resync_interval,
                                    min_interval=c.config.dataplane.apply_interval))
        task_status.started()


async def run_wireguard(c: Components, *,
                        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """The WireGuard interface (once an encrypted network is known), its peers, rotations."""

    async def record() -> bool:
        try:
            await c.store.update_node(node_record(c))
        except StoreError as exc:
            log.warning("wireguard: the node record keeps the old key for now: %s", exc)
            return False
        return True

    await c.wireguard.run(lambda: any(n.encrypted for n in c.networks.values()),
                          c.gossip.published_wireguard, c.pipeline.mark_dirty,
                          c.gossip.set_wireguard, record, task_status=task_status)


async def run_pools(c: Components, *,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Address pools: flushers, and the pools of our networks opened in background."""
    await c.pools.run(c.networks, c.attachments.ipam_networks,
                      c.config.store.retry_interval, task_status=task_status)


async def run_names(c: Components, *,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """The resolver: the zone from the table, 127.0.0.11 in every local sandbox."""
    async with trio.open_nursery() as nursery:
        await nursery.start(c.names.resolver.run)
        c.names.load(c.table.endpoints())
        await c.names.refresh()
        task_status.started()


async def run_policies(c: Components, *,
                       task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Network policy: the stored policies and the table's labels kept in nftables."""
    await c.policies.run(task_status=task_status)


async def run_api(c: Components, control: Control, *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """The control API on `api.socket`, with the CNI plugin's routes; the CNI DELs the plugin
    spooled while the agent was down are worked off before it reports started."""
    api = c.config.api
    _cni: CniControl = control  # mypy: the control speaks the CNI routes' protocol
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(serve_api, control, api.socket,
                                    mode=c.config.socket_mode_bits, group=api.socket_group,
                                    stats=c.api_stats, extra_routes=CNI_ROUTES))
        await work_off_spool(control, api.socket)
        task_status.started()


async def run_watchdog(c: Components, control: Control, *,
                       task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """systemd's watchdog pings, healthy while the agent is ready."""
    await run_systemd_watchdog(c.notifier, lambda: control.ready, task_status=task_status)
