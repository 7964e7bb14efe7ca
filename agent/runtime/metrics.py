"""Prometheus metrics of the agent: one registry of our own, served over HTTP at /metrics.

Owns: metric names, help texts and labels; the scrape-time collector that reads a
`MetricsSnapshot` (built by `agent.runtime.compose.metrics_snapshot` from the components'
`statistics()`); the histograms the agent observes as things happen (probe round trips,
apply passes, endpoint propagation).

Rules:
- Names follow Prometheus conventions: `vxmesh_` prefix, base units (seconds, bytes),
  `_total` on counters, no unit suffix on plain gauges. `promtool check metrics` accepts the
  exposition (a test runs it on a real scrape).
- Counters come from cumulative component statistics, so a scrape never resets anything.
- Never the process-global registry: two agents in one process (tests) never collide.
- Endpoint propagation is measured from the owner's wall clock (the change time its record
  carries) to this host's wall clock when the kernel holds it, so skew between the two clocks
  enters the figure; `observe_propagation` records a negative value (skew larger than the real
  latency) as 0 and counts it in `vxmesh_endpoint_propagation_clock_skew_total`: a rising count
  means the hosts' clocks need NTP, and the histogram's low buckets are then unreliable.

May import: prometheus_client, trio, agent.api.http, agent.dns (its statistics type), the
standard library.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import metadata

import trio
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from agent.api.http import HttpServerStatistics, Request, Response, serve_http
from agent.dns.resolver import ResolverStatistics

MEMBER_STATES = ("alive", "suspect", "dead", "left")
DROP_REASONS = ("decode", "auth", "size")


@dataclass(frozen=True)
class MetricsSnapshot:
    """What the agent's components report at one scrape (cumulative counts, current gauges)."""

    members_by_state: Mapping[str, int] = field(default_factory=dict)
    gossip_messages: Mapping[tuple[str, str], int] = field(default_factory=dict)
    """(message type, direction "sent"|"received") -> messages."""
    gossip_bytes: Mapping[tuple[str, str], int] = field(default_factory=dict)
    """(message type, direction) -> bytes on the wire."""
    dropped_packets: Mapping[str, int] = field(default_factory=dict)
    """reason (decode, auth, size) -> packets dropped."""
    health_score: int = 0
    neighbor_entries: Mapping[str, int] = field(default_factory=dict)
    """network name -> live entries in the neighbor table."""
    dataplane_operations: Mapping[str, int] = field(default_factory=dict)
    """result ("ok", "failed") -> kernel operations."""
    in_sync: bool = False
    store_up: bool = False
    store_errors: int = 0
    store_rejected_values: int = 0
    """etcd values refused now (do not decode or fail validation; last good copy in use)."""
    store_failovers: int = 0
    store_members_down: int = 0
    local_endpoints: int = 0
    api_requests: int = 0
    members_agent_down: int = 0
    """failed members whose host still answers: their entries are kept."""
    host_probes: Mapping[str, int] = field(default_factory=dict)
    """result ("sent", "answered", "send_failed") -> ICMP echo probes of doubted hosts."""
    dns: ResolverStatistics = field(default_factory=ResolverStatistics)
    wireguard_backend: str = "none"  # "kernel", "wireguard-go", "none"
    wireguard_up: bool = False
    wireguard_peers: int = 0
    wireguard_rotations: int = 0
    wireguard_rotating: bool = False
    """the endpoint resolver's counts (queries by type and result, forwarded, failures)."""
    policy_drops: Mapping[str, int] = field(default_factory=dict)
    """network policy name -> packets its deny dropped on this host."""


class AgentMetrics:
    """The registry, the histograms the agent observes, and the scrape-time collector."""

    def __init__(self, snapshot: Callable[[], MetricsSnapshot]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.probe_rtt = Histogram(
            "vxmesh_gossip_probe_rtt_seconds",
            "Round-trip time of direct gossip probes (ping to ack).",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=self.registry)
        self.apply_duration = Histogram(
            "vxmesh_dataplane_apply_duration_seconds",
            "Duration of one data-plane apply pass (diff and kernel writes).",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
                     5, 10),
            registry=self.registry)
        self.propagation = Histogram(
            "vxmesh_endpoint_propagation_seconds",
            "Time from an endpoint change on its owner (owner's wall clock) to this host's "
            "kernel holding it (this host's wall clock).",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry)
        self.propagation_clock_skew = Counter(
            "vxmesh_endpoint_propagation_clock_skew",
            "Endpoint propagations that measured below zero (owner's clock ahead of ours), "
            "observed as 0.",
            registry=self.registry)
        self.dns_answer = Histogram(
            "vxmesh_dns_answer_seconds",
            "Time from a DNS query's arrival to its answer (forwarded ones included).",
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                     0.25, 0.5, 1, 2.5),
            registry=self.registry)
        self.registry.register(_SnapshotCollector(snapshot))

    def observe_propagation(self, seconds: float) -> None:
        """One endpoint propagation; a negative figure is clock skew: observed as 0, counted."""
        if seconds < 0:
            self.propagation_clock_skew.inc()
            seconds = 0.0
        self.propagation.observe(seconds)

    def exposition(self) -> bytes:
        """The text exposition of everything, as a scrape sees it."""
        return generate_latest(self.registry)


def _version() -> str:
    try:
        return metadata.version("vxmesh")
    except metadata.PackageNotFoundError:
        return "unknown"


class _SnapshotCollector(Collector):
    def __init__(self, snapshot: Callable[[], MetricsSnapshot]) -> None:
        self._snapshot = snapshot

    def describe(self) -> list[object]:
        return []  # collected lazily: the snapshot source may not be ready at registration

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        snap = self._snapshot()
        info = GaugeMetricFamily("vxmesh_build_info", "Version of vxmesh and Python; always 1.",
                                 labels=["version", "python"])
        info.add_metric([_version(), platform.python_version()], 1)
        yield info

        members = GaugeMetricFamily("vxmesh_gossip_members",
                                    "Gossip members known, by state.", labels=["state"])
        for state in sorted(set(MEMBER_STATES) | set(snap.members_by_state)):
            members.add_metric([state], snap.members_by_state.get(state, 0))
        yield members

        messages = CounterMetricFamily("vxmesh_gossip_messages",
                                       "Gossip messages, by type and direction.",
                                       labels=["type", "direction"])
        for (kind, direction), count in sorted(snap.gossip_messages.items()):
            messages.add_metric([kind, direction], count)
        yield messages

        wire = CounterMetricFamily("vxmesh_gossip_bytes",
                                   "Gossip bytes on the wire, by type and direction.",
                                   labels=["type", "direction"])
        for (kind, direction), count in sorted(snap.gossip_bytes.items()):
            wire.add_metric([kind, direction], count)
        yield wire

        dropped = CounterMetricFamily("vxmesh_gossip_dropped_packets",
                                      "Gossip packets dropped, by reason (decode, auth, size).",
                                      labels=["reason"])
        for reason in sorted(set(DROP_REASONS) | set(snap.dropped_packets)):
            dropped.add_metric([reason], snap.dropped_packets.get(reason, 0))
        yield dropped

        yield GaugeMetricFamily("vxmesh_gossip_health_score",
                                "Local health (Lifeguard awareness); 0 is healthy.",
                                value=snap.health_score)

        policy = CounterMetricFamily("vxmesh_policy_dropped_packets",
                                     "Packets a network policy denied on this host, by policy.",
                                     labels=["policy"])
        for name, count in sorted(snap.policy_drops.items()):
            policy.add_metric([name], count)
        yield policy

        entries = GaugeMetricFamily("vxmesh_neighbor_entries",
                                    "Live neighbor-table entries, by network.",
                                    labels=["network"])
        for network, count in sorted(snap.neighbor_entries.items()):
            entries.add_metric([network], count)
        yield entries

        ops = CounterMetricFamily("vxmesh_dataplane_operations",
                                  "Kernel operations applied by the reconciler, by result.",
                                  labels=["result"])
        for result in sorted({"ok", "failed"} | set(snap.dataplane_operations)):
            ops.add_metric([result], snap.dataplane_operations.get(result, 0))
        yield ops

        yield GaugeMetricFamily("vxmesh_dataplane_in_sync",
                                "1 when the kernel holds exactly the desired state.",
                                value=1 if snap.in_sync else 0)
        yield GaugeMetricFamily("vxmesh_store_up", "1 when etcd answers.",
                                value=1 if snap.store_up else 0)
        yield CounterMetricFamily("vxmesh_store_errors", "Failed etcd requests.",
                                  value=snap.store_errors)
        yield GaugeMetricFamily(
            "vxmesh_store_rejected_values",
            "etcd values refused now (bad JSON or failing validation); the last good copy is"
            " used and the data plane is unchanged.", value=snap.store_rejected_values)
        yield CounterMetricFamily("vxmesh_store_failovers",
                                  "Times an etcd member was left for another.",
                                  value=snap.store_failovers)
        yield GaugeMetricFamily("vxmesh_store_members_down",
                                "Configured etcd members avoided now (not answering, no leader).",
                                value=snap.store_members_down)
        yield GaugeMetricFamily("vxmesh_local_endpoints", "Endpoints this host owns.",
                                value=snap.local_endpoints)
        yield CounterMetricFamily("vxmesh_api_requests", "Control API requests served.",
                                  value=snap.api_requests)
        yield GaugeMetricFamily(
            "vxmesh_members_agent_down",
            "Failed members whose host still answers probes: entries kept (agent down).",
            value=snap.members_agent_down)
        backend = GaugeMetricFamily(
            "vxmesh_wireguard_backend", "1 for the WireGuard implementation this host uses "
            "for encrypted networks (kernel, wireguard-go, none).", labels=["backend"])
        for name in ("kernel", "wireguard-go", "none"):
            backend.add_metric([name], 1 if snap.wireguard_backend == name else 0)
        yield backend
        yield GaugeMetricFamily("vxmesh_wireguard_up", "1 while the WireGuard interface is up.",
                                value=1 if snap.wireguard_up else 0)
        yield GaugeMetricFamily("vxmesh_wireguard_peers", "Peers of the WireGuard interface.",
                                value=snap.wireguard_peers)
        yield CounterMetricFamily("vxmesh_wireguard_rotations",
                                  "WireGuard key rotations completed since the agent started.",
                                  value=snap.wireguard_rotations)
        yield GaugeMetricFamily("vxmesh_wireguard_rotating",
                                "1 while a WireGuard key rotation runs (prepare or drain).",
                                value=1 if snap.wireguard_rotating else 0)
        probes = CounterMetricFamily("vxmesh_host_probes",
                                     "ICMP echo probes of suspected or failed members' hosts.",
                                     labels=["result"])
        for result in sorted({"sent", "answered", "send_failed"} | set(snap.host_probes)):
            probes.add_metric([result], snap.host_probes.get(result, 0))
        yield probes

        queries = CounterMetricFamily("vxmesh_dns_queries",
                                      "DNS queries answered, by query type and result.",
                                      labels=["type", "result"])
        for (qtype, result), count in sorted(snap.dns.queries.items()):
            queries.add_metric([qtype, result], count)
        yield queries
        yield CounterMetricFamily("vxmesh_dns_forwarded",
                                  "DNS queries for names outside the cluster sent upstream.",
                                  value=snap.dns.forwarded)
        yield CounterMetricFamily("vxmesh_dns_upstream_failures",
                                  "Forwarded DNS queries no upstream answered in time.",
                                  value=snap.dns.upstream_failures)
        yield CounterMetricFamily("vxmesh_dns_dropped",
                                  "Datagrams to the resolver that were not DNS at all.",
                                  value=snap.dns.dropped)
        yield GaugeMetricFamily("vxmesh_dns_sandboxes",
                                "Sandboxes the resolver serves at 127.0.0.11.",
                                value=snap.dns.namespaces)


async def serve_metrics(metrics: AgentMetrics, address: str, port: int, *,
                        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve GET /metrics on address:port; reports the bound port (useful with port 0)."""
    listeners = await trio.open_tcp_listeners(port, host=address)
    bound = listeners[0].socket.getsockname()[1]

    async def handle(request: Request) -> Response:
        if request.path != "/metrics":
            return Response.error(404, f"no such path {request.path!r}; try /metrics")
        if request.method not in ("GET", "HEAD"):
            return Response.error(405, f"{request.method} not allowed on /metrics")
        return Response(200, metrics.exposition(), content_type=CONTENT_TYPE_LATEST)

    async with trio.open_nursery() as nursery:
        await nursery.start(serve_http, listeners, handle, HttpServerStatistics())
        task_status.started(bound)
