"""agent.runtime.metrics: a real scrape over HTTP, checked by promtool, holds every metric
issue 8 lists."""

from __future__ import annotations

import shutil
import subprocess
import urllib.error
import urllib.request

import pytest
import trio

from agent.runtime.metrics import AgentMetrics, MetricsSnapshot, serve_metrics

REQUIRED = (
    "vxmesh_build_info", "vxmesh_gossip_members", "vxmesh_gossip_messages_total",
    "vxmesh_gossip_bytes_total", "vxmesh_gossip_dropped_packets_total",
    "vxmesh_gossip_probe_rtt_seconds_bucket", "vxmesh_gossip_health_score",
    "vxmesh_neighbor_entries", "vxmesh_dataplane_apply_duration_seconds_bucket",
    "vxmesh_dataplane_operations_total", "vxmesh_dataplane_in_sync", "vxmesh_store_up",
    "vxmesh_store_errors_total", "vxmesh_endpoint_propagation_seconds_bucket",
    "vxmesh_endpoint_propagation_clock_skew_total", "vxmesh_members_agent_down",
    "vxmesh_host_probes_total",
)


def _snapshot() -> MetricsSnapshot:
    return MetricsSnapshot(
        members_by_state={"alive": 3, "dead": 1},
        gossip_messages={("ping", "sent"): 10, ("ack", "received"): 9},
        gossip_bytes={("ping", "sent"): 800, ("ack", "received"): 700},
        dropped_packets={"auth": 2},
        health_score=1,
        neighbor_entries={"blue": 4},
        dataplane_operations={"ok": 12, "failed": 1},
        in_sync=True,
        store_up=True,
        store_errors=3,
        local_endpoints=2,
    )


def _fetch(url: str) -> tuple[int, str, str]:
    with urllib.request.urlopen(url, timeout=5) as reply:
        return reply.status, reply.headers["Content-Type"], reply.read().decode()


async def test_scrape_over_http_passes_promtool_and_holds_every_metric() -> None:
    metrics = AgentMetrics(_snapshot)
    metrics.probe_rtt.observe(0.002)
    metrics.apply_duration.observe(0.01)
    metrics.propagation.observe(0.2)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_metrics, metrics, "127.0.0.1", 0)
        status, content_type, text = await trio.to_thread.run_sync(
            _fetch, f"http://127.0.0.1:{port}/metrics")
        nursery.cancel_scope.cancel()
    assert status == 200
    assert content_type.startswith("text/plain")
    for name in REQUIRED:
        assert f"\n{name}" in text, name
    assert 'vxmesh_gossip_members{state="alive"} 3.0' in text
    assert 'vxmesh_gossip_dropped_packets_total{reason="auth"} 2.0' in text
    assert 'vxmesh_gossip_dropped_packets_total{reason="decode"} 0.0' in text
    if shutil.which("promtool") is None:
        pytest.skip("promtool (Debian package prometheus) is not installed")
    checked = subprocess.run(["promtool", "check", "metrics"], input=text, text=True,
                             capture_output=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr


async def test_unknown_path_is_a_json_404() -> None:
    metrics = AgentMetrics(MetricsSnapshot)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_metrics, metrics, "127.0.0.1", 0)

        def fetch() -> int:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/nope", timeout=5)
            except urllib.error.HTTPError as exc:
                assert b'"status": 404' in exc.read()
                return exc.code
            return 200

        assert await trio.to_thread.run_sync(fetch) == 404
        nursery.cancel_scope.cancel()
