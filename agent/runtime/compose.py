"""The composition root: every component of the agent, built bottom-up in one function.

Owns: `Components` (frozen: each part fully formed, none waiting for a later phase) and
`build_components`, which makes them in dependency order: metrics, the kernel adapter
(netlink thread and kernel), underlay facts and kernel capabilities, the endpoint service
(with its recovery pass), the store (its start-up access check), the known networks, the
address pools, the neighbor table, the reconciler, the pipeline, the gossip link, the attach
operation. Also what the pipeline and metrics read from them (`desired_inputs`,
`metrics_snapshot`) and where table events go (`route_table_event`).

Rules:
- Building starts nothing long-running (the phases in `agent.runtime.phases` do); it fails
  fast, with domain errors the process edge maps to one line and an exit code.
- The pipeline's inputs and the metrics snapshot read the finished `Components`: they are
  only called once the phases run, after `build_components` returned.
- Endpoints left by a previous run are recovered before any etcd (gRPC) thread exists: the
  recovery forks pyroute2 helpers into endpoint namespaces.

May import: agent.*, overlay, gossip, underlay, trio, the standard library.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from agent.api.http import HttpServerStatistics
from agent.config import AgentConfig, AgentConfigError
from agent.runtime.attachments import Attachments
from agent.runtime.errors import MissingKernelFeature, UnderlayNotFound
from agent.runtime.gossip_link import GossipLink, load_identity
from agent.runtime.metrics import AgentMetrics, MetricsSnapshot
from agent.runtime.names import EndpointNames
from agent.runtime.networks import KnownNetworks
from agent.runtime.pipeline import DesiredInputs, Pipeline
from agent.runtime.policies import PolicyEnforcer
from agent.runtime.pools import AddressPools
from agent.runtime.systemd import SystemdNotifier
from agent.runtime.wireguard_link import WireGuardLink, open_wireguard
from agent.store.connect import open_store
from agent.store.service import Store
from overlay import desired as desired_state
from overlay.reconciler import Reconciler
from overlay.table import NeighborTable, TableEvent
from underlay.endpoints import Endpoints
from underlay.endpoints_model import EndpointsConfig, Mode
from underlay.errors import KernelError
from underlay.facts import (
    UnderlayFacts,
    UnderlaySelectionError,
    probe_capabilities,
    read_underlay,
)
from underlay.kernel import NetlinkThread
from underlay.netlink_ops import NetlinkKernel
from underlay.offloads import read_features, tunnel_offload_advice

log = logging.getLogger("vxmesh.agent")

REQUIRED_KERNEL_FEATURES = ("vxlan", "bridge")


@dataclass(frozen=True)
class Components:
    """Every part of a running agent, built by `build_components`."""

    config: AgentConfig
    node: str
    started_at: float
    notifier: SystemdNotifier
    metrics: AgentMetrics
    api_stats: HttpServerStatistics
    netlink: NetlinkThread
    kernel: NetlinkKernel
    facts: UnderlayFacts
    endpoints: Endpoints
    store: Store
    networks: KnownNetworks
    pools: AddressPools
    table: NeighborTable
    reconciler: Reconciler
    pipeline: Pipeline
    gossip: GossipLink
    names: EndpointNames
    policies: PolicyEnforcer
    attachments: Attachments
    wireguard: WireGuardLink
    container_of_pid: Callable[[int], str | None]


def prepare_state_dir(path: Path) -> None:
    """Make `node.state_dir` if needed; AgentConfigError naming it when it cannot be used."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".writable"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise AgentConfigError(f"node.state_dir={str(path)!r}: {exc.strerror or exc}") from None


async def read_configured_underlay(config: AgentConfig, netlink: NetlinkThread
                                   ) -> UnderlayFacts:
    """The underlay the config selects; UnderlayNotFound naming the key when it is not here."""
    interface, address = config.underlay.interface, config.underlay.address
    selector = f"{address}/{128 if ':' in address else 32}" if address else None
    try:
        return await read_underlay(netlink, interface=interface or None, cidr=selector)
    except UnderlaySelectionError as exc:
        if interface:  # the message names interface=...: that is our underlay.interface
            raise UnderlayNotFound(f"underlay.{exc}") from None
        if address:
            raise UnderlayNotFound(f"underlay.address={address!r}: no interface on this host "
                                   "holds it") from None
        raise UnderlayNotFound(f"underlay: {exc}") from None


async def warn_about_underlay_offloads(netlink: NetlinkThread, interface: str,
                                       udp_csum: bool) -> None:
    """Log once at start when the underlay cannot segment VXLAN packets (it is the host's
    interface: reported, never changed); a device without ethtool features is left alone."""
    try:
        features = await netlink.call(lambda _ipr: read_features(interface))
    except KernelError as exc:
        log.debug("underlay offloads not read: %s", exc)
        return
    advice = tunnel_offload_advice(interface, features, udp_csum)
    if advice is not None:
        log.warning("%s", advice)


async def build_components(config: AgentConfig, *, notifier: SystemdNotifier) -> Components:
    """Build every component in dependency order; nothing runs yet."""
    node = config.node_name
    prepare_state_dir(config.node.state_dir)
    networks = KnownNetworks.load(config.node.state_dir)
    metrics = AgentMetrics(lambda: metrics_snapshot(components))
    netlink = await trio.to_thread.run_sync(NetlinkThread)
    kernel = NetlinkKernel(netlink)
    facts = await read_configured_underlay(config, netlink)
    capabilities = await probe_capabilities(netlink)
    log.info("underlay: %s address %s mtu %d (chosen by %s); %s", facts.interface,
             facts.address, facts.mtu, facts.chosen_by, capabilities.describe())
    await warn_about_underlay_offloads(netlink, facts.interface,
                                       config.dataplane.vxlan_udp_csum)
    for needed in REQUIRED_KERNEL_FEATURES:
        if needed not in capabilities.available:
            raise MissingKernelFeature(f"kernel feature {needed}: "
                                       f"{capabilities.missing.get(needed)}")
    wireguard = await open_wireguard(node, config.node.state_dir, facts.address, facts.mtu,
                                     config.wireguard.listen_port)
    container_of_pid = container_names(config)
    endpoints = Endpoints(EndpointsConfig(
        state_dir=config.node.state_dir / "endpoints", netns_prefix=f"vxep-{node}-",
        underlay_interface=facts.interface), container_of_pid=container_of_pid)
    report = await endpoints.start()
    if report.failed or report.rolled_back or report.orphan_namespaces or report.sandbox_gone:
        log.warning("endpoint recovery: %s", report)
    store = await open_store(config.store, rng=random.Random(),
                             cached_networks=networks.values())
    pools = AddressPools(store, node)
    identity = load_identity(config, node)
    table = NeighborTable(node, facts.address,
                          sign=None if identity is None else identity.signer.sign,
                          check_signature=None if identity is None else identity.check_record)
    # Every finished pass is timed (the reconciler calls back; nobody polls its statistics).
    reconciler = Reconciler(kernel, on_applied=lambda applied: metrics.apply_duration.observe(
        applied.seconds), udp_csum=config.dataplane.vxlan_udp_csum)
    pipeline = Pipeline(reconciler, lambda: desired_inputs(components), node=node,
                        underlay=facts, endpoints=table.endpoints,
                        members=lambda: components.gossip.forwarding(),
                        observe_propagation=metrics.observe_propagation)
    names = EndpointNames(config.dns, records=endpoints.records,
                          joined=lambda: [n for name, n in networks.items()
                                          if name in table.networks()],
                          observe_latency=metrics.dns_answer.observe)
    policies = PolicyEnforcer(
        store, node, table.endpoints, state_dir=config.node.state_dir,
        skip_bridges_without_policy=config.dataplane.bridge_netfilter == "policy")
    gossip = GossipLink(config, node, facts.address, table,
                        on_change=lambda event: route_table_event(pipeline, names, policies,
                                                                  event),
                        on_member=pipeline.member_changed, on_membership=wireguard.changed,
                        extra_seeds=lambda: store.gossip_seeds(exclude=node),
                        identity=identity, public_keys=store.public_keys,
                        wireguard=wireguard.published())
    attachments = Attachments(node=node, facts=facts, netlink=netlink, endpoints=endpoints,
                              table=table, gossip=gossip, pipeline=pipeline,
                              networks=networks, pools=pools, store=store, names=names)
    components = Components(
        config=config, node=node, started_at=time.time(), notifier=notifier, metrics=metrics,
        api_stats=HttpServerStatistics(), netlink=netlink, kernel=kernel, facts=facts,
        endpoints=endpoints, store=store, networks=networks, pools=pools, table=table,
        reconciler=reconciler, pipeline=pipeline, gossip=gossip, names=names,
        policies=policies, attachments=attachments, wireguard=wireguard,
        container_of_pid=container_of_pid)
    return components


def container_names(config: AgentConfig) -> Callable[[int], str | None]:
    """The Docker container a process runs in, by name (None without `[docker] enabled`)."""
    if not config.docker.enabled:
        return lambda pid: None
    # Imported here: an agent without Docker never loads agent.docker (see process.run_docker).
    from agent.docker.containers import ContainerNames
    from agent.docker.engine import EngineClient

    return ContainerNames(EngineClient(str(config.docker.engine_socket), timeout=2.0)).name_of_pid


def route_table_event(pipeline: Pipeline, names: EndpointNames, policies: PolicyEnforcer,
                      event: TableEvent) -> None:
    """Every table event from the gossip link (never blocks): names, policies and desired
    state follow the view."""
    names.table_event(event)
    policies.table_changed()
    pipeline.table_changed(event)


def desired_inputs(c: Components) -> DesiredInputs:
    """The small inputs of desired state (read by the pipeline after `mark_dirty`): the
    networks this node takes part in and its local endpoints. Endpoints and members reach the
    pipeline change by change (`route_table_event`, the gossip link's `on_member`)."""
    joined = c.table.networks()
    networks = tuple(
        desired_state.NetworkSpec(name, net.vni, net.mtu, c.config.underlay.vxlan_port,
                                  f"{net.gateway}/{net.subnet.prefixlen}",
                                  encrypted=net.encrypted,
                                  gateway6=None if net.subnet6 is None
                                  else f"{net.gateway6}/{net.subnet6.prefixlen}")
        for name, net in c.networks.items() if name in joined)
    local = tuple(desired_state.LocalEndpoint(r.network, r.host_ifname)
                  for r in c.endpoints.records()
                  if r.mode is Mode.OVERLAY and r.host_ifname and r.network)
    return DesiredInputs(networks, local, c.wireguard.up_tunnel())


def metrics_snapshot(c: Components) -> MetricsSnapshot:
    """Everything the Prometheus collector reads, at scrape time."""
    gossip = c.gossip.metrics()
    # Probe round trips are drained at scrape time: a scrape shows those of the probes acked
    # up to the previous scrape at the latest.
    for rtt in c.gossip.take_probe_rtts():
        c.metrics.probe_rtt.observe(rtt)
    entries: dict[str, int] = {}
    for entry in c.table.endpoints():
        entries[entry.network] = entries.get(entry.network, 0) + 1
    ops: dict[str, int] = {}
    reconciler = c.reconciler.statistics()
    for result, count in reconciler.ops_by_result.items():
        key = "ok" if result == "ok" else "failed"
        ops[key] = ops.get(key, 0) + count
    store = c.store.statistics()
    wireguard = c.wireguard.statistics()
    return MetricsSnapshot(
        wireguard_backend=wireguard.backend or "none", wireguard_up=wireguard.tunnel is not None,
        wireguard_peers=wireguard.peers, wireguard_rotations=wireguard.rotations,
        wireguard_rotating=wireguard.rotation is not None,
        members_by_state=gossip.members_by_state,
        gossip_messages=gossip.messages,
        gossip_bytes=gossip.bytes,
        dropped_packets=gossip.dropped,
        health_score=gossip.health_score,
        neighbor_entries=entries,
        dataplane_operations=ops,
        in_sync=reconciler.in_sync,
        store_up=not store.degraded,
        store_errors=store.failed_calls,
        store_rejected_values=store.rejected_values,
        store_failovers=store.failovers,
        store_members_down=store.members_down,
        local_endpoints=len(c.endpoints.records()),
        api_requests=c.api_stats.requests,
        members_agent_down=gossip.agent_down,
        host_probes=gossip.host_probes,
        dns=c.names.statistics(),
        policy_drops=c.policies.statistics().drops,
    )

