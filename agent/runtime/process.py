"""The agent process: one trio nursery composing every component, and the control it offers.

Owns: start-up order (metrics, kernel adapter, underlay facts, store, gossip, pipeline, data
plane, control API), readiness (READY=1 after the first full sync), signals (SIGTERM/SIGINT:
stop and exit 0, leaving the cluster first only with `node.leave_on_stop`; SIGHUP: re-read
keys and log level), the `Control` the API calls (networks, endpoints, keys, fdb, leave) and
the metrics snapshot read at scrape time.

Rules:
- Gossip never waits on the kernel: membership and table changes only mark the pipeline
  dirty; the reconciler applies the newest desired state on its own schedule.
- etcd away = degraded: networks come from the last copy in the state directory, endpoints
  are still created from address blocks this host holds, gossip and data plane keep running.
- A restart adopts the kernel: our own endpoints are re-published before joining, and the
  data plane is first applied only after the initial gossip sync, so no entry of a live peer
  is removed and re-added.
- A stop is not a leave (serf's leave_on_terminate = false): peers see us fail, find our host
  still forwarding and keep our entries (agent.runtime.gossip_link), so a restart or upgrade
  cuts no traffic. `vxmesh leave` (POST /v1/leave) leaves, then ends the process with exit 0;
  so does SIGTERM with `node.leave_on_stop = true`. Peers then withdraw our entries at once.
- Shutdown work (leave, lease revoke) runs shielded and time-boxed.

May import: everything below it (agent.*, overlay, gossip, underlay), trio, the stdlib.
"""

from __future__ import annotations

import contextlib
import faulthandler
import ipaddress
import logging
import os
import random
import signal
import sys
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import trio

from agent.api.errors import ApiError, Conflict, InvalidRequest, NotFound, Unavailable
from agent.api.http import HttpServerStatistics
from agent.api.routes import EndpointSpec, NetworkSpec, serve_api
from agent.config import AgentConfig, ConfigError, load_config
from agent.errors import AgentError
from agent.runtime.gossip_link import GossipLink
from agent.runtime.metrics import AgentMetrics, MetricsSnapshot, serve_metrics
from agent.runtime.pipeline import DesiredInputs, Pipeline, moves_kernel_entry
from agent.runtime.systemd import SystemdNotifier, run_watchdog
from agent.state_files import StateReadError, StateWriteError
from agent.store.connect import open_store
from agent.store.errors import (
    StoreError,
    StoreUnavailable,
)
from agent.store.network_cache import NetworkCache
from agent.store.schema import IPAddress, Network, decode_network, validate_network
from agent.store.service import AddressPool, Store
from overlay import desired as desired_state
from overlay.reconciler import Reconciler, run_dataplane
from overlay.table import EndpointChanged, NeighborTable
from underlay import links
from underlay.endpoints import Endpoints
from underlay.endpoints_model import (
    EndpointConflict,
    EndpointNotFound,
    EndpointRecord,
    EndpointsConfig,
    EndpointSpecError,
    Mode,
)
from underlay.endpoints_model import EndpointSpec as UnderlayEndpointSpec
from underlay.errors import UnderlayError
from underlay.facts import UnderlayFacts, probe_capabilities, read_underlay
from underlay.kernel import NetlinkThread
from underlay.netlink_ops import NetlinkKernel
from underlay.records import NUD_PERMANENT

log = logging.getLogger("vxmesh.agent")
T = TypeVar("T")

SHUTDOWN_TIMEOUT = 3.0
INITIAL_SYNC_TIMEOUT = 5.0
LEAVE_ANSWER_TIME = 0.2  # after `vxmesh leave`: time for the API to send its answer


@dataclass(frozen=True)
class StopRequest:
    """Why the process is to end; `leave`: leave the cluster first; `left`: already did."""

    reason: str
    leave: bool
    left: bool = False


@dataclass(frozen=True)
class AgentExit:
    """How the process ends: exit code and why."""

    code: int
    reason: str


def configure_logging(level: str) -> None:
    logging.basicConfig(stream=sys.stderr, level=level.upper(), force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def run_agent_process(config: AgentConfig, *, config_path: Path | None = None,
                      assignments: Sequence[str] = ()) -> int:
    """`vxmesh agent`: run until SIGTERM/SIGINT; 0 after a graceful stop, else an error code."""
    configure_logging(config.node.log_level)
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1`: stacks to the log
    os.register_at_fork(after_in_child=_default_signals_in_child)
    try:
        result: AgentExit = trio.run(run_agent, config, config_path, tuple(assignments))
    except (ConfigError, StateReadError) as exc:
        log.error("cannot start: %s", exc)
        return 2
    except AgentError as exc:
        log.error("agent failed: %s", exc)
        return 1
    log.info("agent stopped: %s", result.reason)
    return result.code


def _default_signals_in_child() -> None:
    """Children forked by libraries (pyroute2's namespace helpers) must die on SIGTERM.

    They inherit trio's Python-level handlers, which only record a signal; a helper stuck
    after the fork would then ignore the SIGTERM its parent sends and hang the parent's wait.
    """
    signal.set_wakeup_fd(-1)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)


async def run_agent(config: AgentConfig, config_path: Path | None = None,
                    assignments: tuple[str, ...] = ()) -> AgentExit:
    """The agent's whole life in one nursery; returns how it ended."""
    notifier = SystemdNotifier()
    agent = Agent(config, notifier=notifier, config_path=config_path, assignments=assignments)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(agent.run)
            nursery.start_soon(_follow_signals, signals, agent, config.node.leave_on_stop)
            stop = await agent.wait_stop_requested()
            log.info("%s: %s", stop.reason, "left the cluster, stopping" if stop.left else
                     "leaving the cluster" if stop.leave else
                     "stopping without leaving (peers keep our entries while this host "
                     "forwards; `vxmesh leave` withdraws them)")
            notifier.stopping()
            await agent.shutdown(leave=stop.leave)
            nursery.cancel_scope.cancel()
            return AgentExit(0, f"{stop.reason}: "
                                f"{'left' if stop.leave or stop.left else 'stopped'}")
    return AgentExit(1, "the agent's tasks ended by themselves")


async def _follow_signals(signals: Any, agent: Agent, leave_on_stop: bool) -> None:
    async for signum in signals:
        if signum == signal.SIGHUP:
            agent.reload()
        else:
            agent.request_stop(StopRequest(f"received {signal.Signals(signum).name}",
                                           leave=leave_on_stop))


class Agent:
    """The running agent: components, readiness, and the `agent.api.routes.Control`."""

    def __init__(self, config: AgentConfig, *, notifier: SystemdNotifier,
                 config_path: Path | None = None, assignments: tuple[str, ...] = ()) -> None:
        self.config = config
        self.config_path = config_path
        self.assignments = assignments
        self.node = config.node_name
        self.notifier = notifier
        self.rng = random.Random()
        self.started_at = time.time()
        self.ready = False
        self.metrics = AgentMetrics(self.snapshot)
        self.api_stats = HttpServerStatistics()
        self.network_cache = NetworkCache.load(config.node.state_dir)
        self.known_networks: dict[str, Network] = {}
        for name, raw in self.network_cache.networks.items():
            self.known_networks[name] = _network_from_json(name, raw)
        self.pools: dict[str, AddressPool] = {}
        self._nursery: trio.Nursery | None = None
        self._endpoint_lock = trio.Lock()
        self._pool_lock = trio.Lock()
        self._stop_requested = trio.Event()
        self._stop = StopRequest("", False)
        self.nl: NetlinkThread | None = None
        self.kernel: NetlinkKernel | None = None
        self.facts: UnderlayFacts | None = None
        self.store: Store | None = None
        self.table: NeighborTable | None = None
        self.gossip: GossipLink | None = None
        self.pipeline: Pipeline | None = None
        self.reconciler: Reconciler | None = None
        self.endpoint_service: Endpoints | None = None

    # -- life cycle ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[Agent] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        config = self.config
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            # 1. metrics
            if config.metrics.enabled:
                await nursery.start(serve_metrics, self.metrics, config.metrics.address,
                                    config.metrics.port)
            # 2. kernel adapter
            self.nl = await trio.to_thread.run_sync(NetlinkThread)
            self.kernel = NetlinkKernel(self.nl)
            # 3. underlay facts
            address = config.underlay.address
            selector = f"{address}/{128 if ':' in address else 32}" if address else None
            self.facts = await read_underlay(self.nl, interface=config.underlay.interface or None,
                                             cidr=selector)
            capabilities = await probe_capabilities(self.nl)
            log.info("underlay: %s address %s mtu %d (chosen by %s); %s", self.facts.interface,
                     self.facts.address, self.facts.mtu, self.facts.chosen_by,
                     capabilities.describe())
            for needed in ("vxlan", "bridge"):
                if needed not in capabilities.available:
                    raise AgentError(f"this kernel lacks {needed}: "
                                     f"{capabilities.missing.get(needed)}")
            # Endpoints left by a previous run are recovered now, before any gRPC thread
            # exists (the recovery forks pyroute2 helpers into endpoint namespaces).
            self.endpoint_service = Endpoints(EndpointsConfig(
                state_dir=config.node.state_dir / "endpoints", netns_prefix=f"vxep-{self.node}-",
                underlay_interface=self.facts.interface))
            report = await self.endpoint_service.start()
            if report.failed or report.rolled_back or report.orphan_namespaces:
                log.warning("endpoint recovery: %s", report)
            # 4. store (lazy connection; its services retry while etcd is away)
            self.store = await open_store(config.store, rng=self.rng,
                                          cached_networks=self.known_networks.values())
            nursery.start_soon(self.store.run_health_probe)
            await nursery.start(self.store.run_network_watch)
            nursery.start_soon(self._follow_networks)
            nursery.start_soon(partial(self.store.run_block_reclaimer,
                                       grace=config.store.reclaim_grace,
                                       alive=self._alive_nodes))
            # 5. gossip: our own endpoints are published before we join
            self.table = NeighborTable(self.node, self.facts.address)
            self._republish_local_endpoints()
            store = self.store
            self.gossip = GossipLink(config, self.node, self.facts.address, self.table,
                                     on_change=self._table_changed,
                                     extra_seeds=lambda: store.gossip_seeds(exclude=self.node))
            await nursery.start(self.gossip.run)
            nursery.start_soon(self._register_node)
            with trio.move_on_after(INITIAL_SYNC_TIMEOUT):
                await self.gossip.wait_initial_sync()
            # 6. pipeline
            self.reconciler = Reconciler(self.kernel)
            self.pipeline = Pipeline(self.reconciler, self.desired_inputs,
                                     observe_propagation=self.metrics.observe_propagation)
            await nursery.start(self.pipeline.run)
            # 7. data plane (one full resync and apply before it reports started)
            await nursery.start(self._run_dataplane)
            # 8. control API
            await nursery.start(lambda task_status: serve_api(
                self, config.api.socket, mode=config.socket_mode_bits,
                group=config.api.socket_group, stats=self.api_stats, task_status=task_status))
            await nursery.start(run_watchdog, self.notifier, self._healthy)
            nursery.start_soon(self._open_pools)
            self.ready = True
            self.notifier.ready(f"{len(self.gossip.members())} members, "
                                f"{len(self.endpoint_service.records())} local endpoints")
            log.info("agent %s ready (VTEP %s, gossip port %d)", self.node, self.facts.address,
                     config.gossip.port)
            task_status.started(self)

    async def _run_dataplane(self, *, task_status: trio.TaskStatus[None] =
                             trio.TASK_STATUS_IGNORED) -> None:
        reconciler = self.reconciler
        assert reconciler is not None
        stats_before = reconciler.statistics().applies

        async def timed() -> None:
            seen = stats_before
            while True:
                await trio.sleep(0.2)  # one sample per pass at most five times a second
                stats = reconciler.statistics()
                if stats.applies != seen:
                    seen = stats.applies
                    self.metrics.apply_duration.observe(stats.last_apply_seconds)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(timed)
            await nursery.start(lambda task_status: run_dataplane(
                reconciler, resync_interval=self.config.dataplane.resync_interval,
                min_interval=self.config.dataplane.apply_interval, task_status=task_status))
            task_status.started()

    def _healthy(self) -> bool:
        return self.ready

    def request_stop(self, stop: StopRequest) -> None:
        """End the process (`run_agent` does the work); the first request wins."""
        if not self._stop_requested.is_set():
            self._stop = stop
            self._stop_requested.set()

    async def wait_stop_requested(self) -> StopRequest:
        await self._stop_requested.wait()
        return self._stop

    async def shutdown(self, *, leave: bool) -> None:
        """Stop; with `leave`, a graceful leave first (peers drop our entries at once),
        shielded and time-boxed."""
        with trio.move_on_after(SHUTDOWN_TIMEOUT) as scope:
            scope.shield = True
            if leave and self.gossip is not None:
                await self.gossip.leave()
        self.config.api.socket.unlink(missing_ok=True)

    async def leave(self) -> dict[str, Any]:
        """`vxmesh leave`: leave the cluster now (peers withdraw our entries within a second),
        then end the process with exit 0 once this answer is on its way."""
        assert self.gossip is not None and self._nursery is not None
        with trio.move_on_after(SHUTDOWN_TIMEOUT) as scope:
            scope.shield = True
            await self.gossip.leave()

        async def stop_after_answer() -> None:
            await trio.sleep(LEAVE_ANSWER_TIME)
            self.request_stop(StopRequest("vxmesh leave", leave=False, left=True))

        self._nursery.start_soon(stop_after_answer)
        return {"node": self.node, "left": True, "stopping": True}

    def reload(self) -> None:
        """SIGHUP: re-read the log level from the config and the keyring from its file."""
        try:
            fresh = load_config(self.config_path, assignments=self.assignments)
        except ConfigError as exc:
            log.error("SIGHUP: config not reloaded: %s", exc)
            return
        logging.getLogger().setLevel(fresh.node.log_level.upper())
        if self.gossip is not None:
            try:
                self.gossip.reload_keyring()
            except AgentError as exc:
                log.error("SIGHUP: keyring not reloaded: %s", exc)
        log.info("SIGHUP: log level %s, keyring re-read", fresh.node.log_level)

    # -- following etcd and gossip ------------------------------------------------------------

    async def _follow_networks(self) -> None:
        """Mirror the store's network view into `self.known_networks` (and its file) once listed."""
        assert self.store is not None
        version = -1
        while True:
            version = await self.store.wait_networks_changed(version)
            if self.store.network_view.revision == 0:
                continue  # not listed yet: keep the copy from the state directory
            view = dict(self.store.network_view.snapshot())
            self.known_networks = view
            try:
                self.network_cache.save({n: net.to_json() for n, net in view.items()})
            except StateWriteError as exc:
                log.error("%s", exc)
            if self.pipeline is not None:
                self.pipeline.mark_dirty()

    async def _register_node(self) -> None:
        assert self.store is not None and self.facts is not None
        from agent.store.schema import Node

        node = Node(self.node, ipaddress.ip_address(self.facts.address),
                    (self.facts.address, self.config.gossip.port), _version())
        await self.store.run_node_registration(node, ttl=self.config.store.lease_ttl)

    def _alive_nodes(self) -> set[str]:
        """Names gossip sees alive (the block reclaimer never frees a live host's blocks)."""
        members = self.gossip.members() if self.gossip is not None else []
        return {m["name"] for m in members if m["state"] == "alive"}

    def _table_changed(self, event: object) -> None:
        """Called by the gossip link for every table event (never blocks)."""
        pipeline = self.pipeline
        if pipeline is None:
            return
        if isinstance(event, EndpointChanged) and event.current is not None \
                and event.current.owner != self.node and moves_kernel_entry(event):
            pipeline.endpoint_arrived(event.network, event.ip, event.current.changed_at)
        else:
            pipeline.mark_dirty()

    def _republish_local_endpoints(self) -> None:
        """Our overlay endpoints go back into the table before we join (restart)."""
        assert self.table is not None and self.endpoint_service is not None
        now = trio.current_time()
        for record in self.endpoint_service.records():
            ip = _ip_of(record)
            if record.mode is not Mode.OVERLAY or not ip or not record.mac \
                    or not record.network:
                continue
            if record.network not in self.table.networks():
                self.table.join_network(record.network, now)
            self.table.put_endpoint(record.network, ip, record.mac, now, changed_at=time.time())

    # -- desired state inputs -----------------------------------------------------------------

    def desired_inputs(self) -> DesiredInputs:
        assert self.table is not None and self.facts is not None and self.gossip is not None
        joined = self.table.networks()
        networks = tuple(
            desired_state.NetworkSpec(name, net.vni, net.mtu, self.config.underlay.vxlan_port)
            for name, net in self.known_networks.items() if name in joined)
        members = tuple(desired_state.AliveMember(name, vtep)
                        for name, vtep in self.gossip.forwarding_vteps().items())
        endpoints = tuple(desired_state.EndpointEntry(e.network, e.owner, e.mac, (e.ip,))
                          for e in self.table.endpoints())
        assert self.endpoint_service is not None
        local = tuple(desired_state.LocalEndpoint(r.network, r.host_ifname)
                      for r in self.endpoint_service.records()
                      if r.mode is Mode.OVERLAY and r.host_ifname and r.network)
        return DesiredInputs(networks, members, endpoints, local, self.facts, self.node)

    # -- metrics ------------------------------------------------------------------------------

    def snapshot(self) -> MetricsSnapshot:
        gossip = self.gossip.metrics() if self.gossip is not None else None
        if self.gossip is not None:
            # Probe round trips are drained at scrape time: a scrape shows those of the
            # probes acked up to the previous scrape at the latest.
            for rtt in self.gossip.take_probe_rtts():
                self.metrics.probe_rtt.observe(rtt)
        entries: dict[str, int] = {}
        if self.table is not None:
            for entry in self.table.endpoints():
                entries[entry.network] = entries.get(entry.network, 0) + 1
        ops: dict[str, int] = {}
        in_sync = False
        if self.reconciler is not None:
            stats = self.reconciler.statistics()
            in_sync = stats.in_sync
            for result, count in stats.ops_by_result.items():
                key = "ok" if result == "ok" else "failed"
                ops[key] = ops.get(key, 0) + count
        store = self.store.statistics() if self.store is not None else None
        return MetricsSnapshot(
            members_by_state=gossip.members_by_state if gossip else {},
            gossip_messages=gossip.messages if gossip else {},
            gossip_bytes=gossip.bytes if gossip else {},
            dropped_packets=gossip.dropped if gossip else {},
            health_score=gossip.health_score if gossip else 0,
            neighbor_entries=entries,
            dataplane_operations=ops,
            in_sync=in_sync,
            store_up=store is not None and not store.degraded,
            store_errors=store.failed_calls if store else 0,
            store_rejected_values=store.rejected_values if store else 0,
            store_failovers=store.failovers if store else 0,
            store_members_down=store.members_down if store else 0,
            local_endpoints=(len(self.endpoint_service.records())
                             if self.endpoint_service is not None else 0),
            api_requests=self.api_stats.requests,
            members_agent_down=gossip.agent_down if gossip else 0,
            host_probes=gossip.host_probes if gossip else {},
        )

    # -- Control: status and members ----------------------------------------------------------

    def status(self) -> dict[str, Any]:
        members = self.gossip.members() if self.gossip is not None else []
        store = self.store.statistics() if self.store is not None else None
        reconciler = self.reconciler.statistics() if self.reconciler is not None else None
        return {
            "node": self.node,
            "version": _version(),
            "ready": self.ready,
            "vtep": self.facts.address if self.facts else None,
            "underlay_interface": self.facts.interface if self.facts else None,
            "underlay_mtu": self.facts.mtu if self.facts else None,
            "gossip_port": self.config.gossip.port,
            "members_alive": sum(1 for m in members if m["state"] == "alive"),
            "members": len(members),
            "members_agent_down": [m["name"] for m in members if m.get("agent_down")],
            "networks": len(self.known_networks),
            "endpoints": (len(self.endpoint_service.records())
                          if self.endpoint_service is not None else 0),
            "visible_endpoints": len(self.table.endpoints()) if self.table else 0,
            "in_sync": bool(reconciler and reconciler.in_sync),
            "pending_kernel_changes": (reconciler.pending_updates + reconciler.pending_deletions
                                       if reconciler else None),
            "store_up": bool(store and not store.degraded),
            "degraded": bool(store is None or store.degraded),
            "store_error": store.last_error if store and store.degraded else None,
            "store_member": store.member if store else None,
            "uptime_seconds": round(time.time() - self.started_at, 1),
        }

    def members(self) -> list[dict[str, Any]]:
        return self.gossip.members() if self.gossip is not None else []

    # -- Control: networks --------------------------------------------------------------------

    async def networks(self) -> list[dict[str, Any]]:
        counts: dict[str, int] = {}
        if self.table is not None:
            for entry in self.table.endpoints():
                counts[entry.network] = counts.get(entry.network, 0) + 1
        return [{"name": n.name, "vni": n.vni, "subnet": str(n.subnet),
                 "gateway": str(n.gateway), "mtu": n.mtu, "mode": n.mode,
                 "endpoints": counts.get(n.name, 0),
                 "joined": self.table is not None and n.name in self.table.networks()}
                for n in sorted(self.known_networks.values(), key=lambda n: n.name)]

    async def create_network(self, spec: NetworkSpec) -> dict[str, Any]:
        assert self.store is not None
        if spec.subnet is None:
            raise InvalidRequest("subnet: required (for example 10.10.0.0/16)")
        network = validate_network(name=spec.name, subnet=spec.subnet, vni=spec.vni,
                                   mtu=spec.mtu)
        created = await self.store.create_network(network)
        self.known_networks[created.name] = created
        return _network_json(created)

    async def delete_network(self, name: str) -> None:
        assert self.store is not None
        assert self.endpoint_service is not None
        if any(r.network == name for r in self.endpoint_service.records()):
            raise Conflict(f"network {name!r} has endpoints on this host; delete them first")
        await self.store.delete_network(name)
        self.known_networks.pop(name, None)

    # -- Control: endpoints -------------------------------------------------------------------

    def endpoints(self) -> list[dict[str, Any]]:
        assert self.endpoint_service is not None
        rows: list[dict[str, Any]] = []
        records = self.endpoint_service.records()
        local_by_ip = {(r.network, _ip_of(r)): r for r in records if r.mode is Mode.OVERLAY}
        if self.table is not None:
            for entry in sorted(self.table.endpoints(), key=lambda e: (e.network, e.ip)):
                record = local_by_ip.get((entry.network, entry.ip))
                mine = entry.owner == self.node
                rows.append({"name": record.name if record and mine else None,
                             "network": entry.network, "mode": "overlay", "ip": entry.ip,
                             "mac": entry.mac, "node": entry.owner, "vtep": entry.vtep,
                             "local": mine})
        for record in records:
            if record.mode is not Mode.OVERLAY:
                rows.append({"name": record.name, "network": record.network,
                             "mode": record.mode.value, "ip": _ip_of(record), "mac": record.mac,
                             "node": self.node, "vtep": None, "local": True})
        return rows

    def endpoint(self, name: str) -> dict[str, Any]:
        assert self.endpoint_service is not None
        try:
            record = self.endpoint_service.get(name)
        except EndpointNotFound:
            raise NotFound(f"no endpoint {name!r} on this host") from None
        return _endpoint_json(record, self.node)

    async def create_endpoint(self, spec: EndpointSpec) -> dict[str, Any]:
        assert self.endpoint_service is not None
        async with self._endpoint_lock:
            if any(r.name == spec.name for r in self.endpoint_service.records()):
                raise Conflict(f"endpoint {spec.name!r} already exists on this host")
            if spec.mode == "overlay":
                return await self._create_overlay_endpoint(spec)
            ip = spec.ip
            wanted = UnderlayEndpointSpec(
                name=spec.name, mode=Mode(spec.mode),
                network=spec.network or None if spec.mode == "bridge" else None,
                addresses=(f"{ip}/{32 if ':' not in ip else 128}",) if ip else (),
                publish=spec.publish, claims=spec.ports)
            record = await self._call_endpoints(self.endpoint_service.create(wanted))
            return _endpoint_json(record, self.node)

    async def _create_overlay_endpoint(self, spec: EndpointSpec) -> dict[str, Any]:
        assert self.endpoint_service is not None and self.table is not None
        assert self.facts is not None and self.pipeline is not None and self.gossip is not None
        network = self.known_networks.get(spec.network)
        if network is None:
            raise NotFound(f"no network {spec.network!r} (known: "
                           f"{', '.join(sorted(self.known_networks)) or 'none'})")
        address, pool = await self._allocate_overlay_address(network, spec)
        ip = str(address)
        try:
            if network.name not in self.table.networks():
                self.table.join_network(network.name, trio.current_time())
                self.gossip.records_changed()
                self.pipeline.mark_dirty()
                with trio.move_on_after(2.0):
                    await self.gossip.sync_network(network.name)
            bridge = desired_state.bridge_name(network.vni)
            await self._wait_link(bridge)
            mtu = network.mtu or desired_state.overlay_mtu(self.facts.mtu, self.facts.address)
            record = await self._call_endpoints(self.endpoint_service.create(
                UnderlayEndpointSpec(name=spec.name, mode=Mode.OVERLAY, network=network.name,
                                     bridge=bridge, mtu=mtu,
                                     addresses=(f"{ip}/{network.subnet.prefixlen}",))))
        except BaseException:
            pool.release(address)
            raise
        assert record.mac is not None
        self.table.put_endpoint(network.name, ip, record.mac, trio.current_time(),
                                changed_at=time.time())
        self.gossip.records_changed()
        self.pipeline.mark_dirty()
        return _endpoint_json(record, self.node)

    async def _allocate_overlay_address(self, network: Network, spec: EndpointSpec
                                        ) -> tuple[IPAddress, AddressPool]:
        """The endpoint's address: `spec.ip` if given (checked and recorded in etcd by the
        pool), else the next free one, confirmed in etcd while it answers (another host may
        have recorded a chosen address in our block that we had not re-read yet)."""
        assert self.store is not None
        pool = await self._pool(network)
        handle = f"{self.node}/{spec.name}"
        if spec.ip is not None:
            return await pool.allocate_address(handle, spec.ip), pool
        address = await pool.allocate(handle)
        if not self.store.statistics().degraded:
            with contextlib.suppress(StoreUnavailable):  # gone now: flushed later
                address = await pool.confirm(handle)
        return address, pool

    async def _wait_link(self, name: str, timeout: float = 10.0) -> None:
        """Wait until the reconciler made link `name` (a network's bridge)."""
        assert self.nl is not None
        with trio.move_on_after(timeout):
            while await self.nl.call(lambda ipr: links.get_link(ipr, name)) is None:
                await trio.sleep(0.01)
            return
        raise Unavailable(f"bridge {name} did not appear within {timeout:.0f} s "
                          "(see `vxmesh fdb` and the agent's log)")

    async def _call_endpoints(self, call: Awaitable[T]) -> T:
        """Run an endpoint-service call, turning its errors into API errors."""
        try:
            return await call
        except EndpointNotFound as exc:
            raise NotFound(str(exc)) from None
        except EndpointConflict as exc:
            raise Conflict(str(exc)) from None
        except EndpointSpecError as exc:
            raise InvalidRequest(str(exc)) from None
        except UnderlayError as exc:
            raise ApiError(str(exc), 422) from None

    async def _open_pools(self) -> None:
        """Open the address pools of the networks we have endpoints in, while etcd answers,
        so that endpoints can still be created from our blocks if it goes away later."""
        assert self.endpoint_service is not None
        wanted = {r.network for r in self.endpoint_service.records()
                  if r.mode is Mode.OVERLAY and r.network}
        while wanted:
            for name in sorted(wanted):
                network = self.known_networks.get(name)
                if network is None:
                    continue
                try:
                    await self._pool(network)
                    wanted.discard(name)
                except AgentError as exc:
                    log.debug("address pool of %s not open yet: %s", name, exc)
            await trio.sleep(self.config.store.retry_interval)

    async def _pool(self, network: Network) -> AddressPool:
        async with self._pool_lock:  # one pool (and one flusher) per network
            pool = self.pools.get(network.name)
            if pool is not None:
                return pool
            assert self.store is not None and self._nursery is not None
            pool = await self.store.open_address_pool(network.name, self.node)
            self.pools[network.name] = pool
            self._nursery.start_soon(pool.run_flusher)
            return pool

    async def delete_endpoint(self, name: str) -> None:
        assert self.endpoint_service is not None and self.table is not None
        assert self.pipeline is not None and self.gossip is not None
        async with self._endpoint_lock:
            try:
                record = self.endpoint_service.get(name)
            except EndpointNotFound:
                raise NotFound(f"no endpoint {name!r} on this host") from None
            ip = _ip_of(record)
            network_name = record.network or ""
            now = trio.current_time()
            overlay = record.mode is Mode.OVERLAY
            if overlay and ip and self.table.get(network_name, self.node, ip) is not None:
                self.table.delete_endpoint(network_name, ip, now, changed_at=time.time())
                self.gossip.records_changed()
            await self._call_endpoints(self.endpoint_service.delete(name))
            if overlay:
                still = any(r.network == network_name and r.mode is Mode.OVERLAY
                            for r in self.endpoint_service.records())
                if not still and network_name in self.table.networks():
                    self.table.leave_network(network_name, now)
                    self.gossip.records_changed()
                self.pipeline.mark_dirty()
                network = self.known_networks.get(network_name)
                if network is not None and ip:
                    try:
                        pool = await self._pool(network)
                        pool.release(ipaddress.ip_address(ip))
                    except AgentError as exc:
                        log.warning("endpoint %s: address %s not released yet: %s", name, ip,
                                    exc)

    # -- Control: keys and fdb ----------------------------------------------------------------

    def keys(self) -> dict[str, Any]:
        assert self.gossip is not None
        return self.gossip.keys_json()

    async def change_key(self, action: str, key: bytes) -> dict[str, Any]:
        assert self.gossip is not None
        self.gossip.change_key(action, key)
        return self.gossip.keys_json()

    async def fdb(self, network: str | None) -> dict[str, Any]:
        assert self.kernel is not None and self.pipeline is not None
        want = self.pipeline.desired or desired_state.DesiredState()
        links = await self.kernel.dump_links()
        fdb = await self.kernel.dump_fdb()
        neighbors = await self.kernel.dump_neighbors()
        by_index = {link.index: link.name for link in links}
        device_network = {d.vxlan: d.network for d in want.networks.values()}
        rows: dict[tuple[str, str, str], dict[str, Any]] = {}

        def row(device: str, kind: str, key: str) -> dict[str, Any]:
            return rows.setdefault((device, kind, key), {
                "network": device_network.get(device, device), "kind": kind, "key": key,
                "value": None, "desired": None, "kernel": None})

        for fkey, vtep in want.fdb.items():
            row(fkey.device, "fdb", fkey.mac)["desired"] = vtep
        for flood in want.flood:
            row(flood.device, "flood", flood.dst)["desired"] = "00:00:00:00:00:00"
        for nkey, mac in want.neighbors.items():
            row(nkey.device, "neigh", nkey.ip)["desired"] = mac
        for record in fdb:
            device = by_index.get(record.ifindex, "")
            if desired_state.owned_device(device) is None or not device.startswith("vxtun") \
                    or not record.state & NUD_PERMANENT:
                continue
            if record.mac == "00:00:00:00:00:00":
                row(device, "flood", record.dst or "-")["kernel"] = record.mac
            elif record.dst is not None:
                row(device, "fdb", record.mac)["kernel"] = record.dst
        for neighbor in neighbors:
            device = by_index.get(neighbor.ifindex, "")
            if device.startswith("vxtun") and desired_state.owned_device(device) is not None \
                    and neighbor.state & NUD_PERMANENT:
                row(device, "neigh", neighbor.ip)["kernel"] = neighbor.mac
        out = []
        for item in sorted(rows.values(), key=lambda r: (r["network"], r["kind"], r["key"])):
            if network is not None and item["network"] != network:
                continue
            item["value"] = item["desired"] or item["kernel"]
            if item["desired"] == item["kernel"]:
                item["state"] = "ok"
            elif item["kernel"] is None:
                item["state"] = "missing"
            elif item["desired"] is None:
                item["state"] = "extra"
            else:
                item["state"] = "differs"
            out.append(item)
        return {"entries": out, "in_sync": all(r["state"] == "ok" for r in out),
                "problems": list(want.problems)}


def _ip_of(record: EndpointRecord) -> str | None:
    """The endpoint's first address without its prefix length."""
    return record.addresses[0].split("/")[0] if record.addresses else None


def _endpoint_json(record: EndpointRecord, node: str) -> dict[str, Any]:
    return {"name": record.name, "network": record.network, "mode": record.mode.value,
            "ip": _ip_of(record), "addresses": list(record.addresses), "mac": record.mac,
            "netns": record.netns, "host_ifname": record.host_ifname, "bridge": record.bridge,
            "gateway": record.gateway, "state": record.state.value, "node": node,
            "publish": [str(m) for m in record.spec.publish],
            "ports": [str(c) for c in record.spec.claims]}


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("vxmesh")
    except metadata.PackageNotFoundError:
        return "unknown"


def _network_json(network: Network) -> dict[str, Any]:
    return network.to_json()


def _network_from_json(name: str, raw: dict[str, Any]) -> Network:
    import json

    try:
        return decode_network(f"/vxmesh/v1/networks/{name}", json.dumps(raw).encode())
    except StoreError as exc:
        raise StateReadError(f"networks.json: network {name!r}: {exc}") from None
