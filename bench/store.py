"""Benchmark of the etcd store against a real local etcd: what blocks buy over one txn per address.

Usage: .venv/bin/python bench/store.py [--json] [--endpoints 1000] [--networks 50] [--claims 50]
       [--failovers 3]

Measures, in one run on one fresh etcd (agent.lab.etcd_local, loopback, temporary directory):
- network create latency (median, ms): validated network, allocated VNI, one guard transaction;
- block claim latency (median, ms): one transaction per claimed block;
- local address allocations per second (from blocks already held: no etcd call);
- etcd round trips per 1,000 endpoint creations with per-host blocks (pool open, claims,
  flushes), against the baseline: the same 1,000 allocations done one transaction each
  (compare-and-put of the address key, as an IPAM without blocks does), in the same run;
- the same 1,000 endpoint creations against a three-member cluster over mutual TLS (lab CA):
  TLS and failover support must add no round trip;
- failover (on that cluster, `--failovers` rounds): SIGKILL the leader while an agent's store
  writes; the time to the agent's first successful write after the kill, against etcd's own
  election time in the same round (`etcdctl endpoint status` polled until a surviving member
  reports a new leader). Target: failover <= election + 1 s. Medians of the rounds.
Prints a table; with --json the last line is one JSON object with network_create_ms,
block_claim_ms, allocs_per_s, roundtrips_per_1000, roundtrips_per_1000_baseline,
roundtrips_per_1000_tls, failover_s, election_s (and timings, every round's pair).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from agent.config import StoreConfig, build_config
from agent.lab.etcd_local import LocalCluster, LocalEtcd
from agent.store.connect import open_store
from agent.store.errors import StoreUnavailable
from agent.store.etcd_client import Compare, Put
from agent.store.ipam import iter_blocks, reserved_addresses
from agent.store.schema import validate_network
from agent.store.service import Store

BASELINE_PREFIX = "/vxmesh/bench/baseline/"


async def bench_network_create(store: Store, count: int) -> float:
    latencies = []
    for i in range(count):
        network = validate_network(name=f"bench{i}", subnet=f"10.{100 + i // 256}.{i % 256}.0/24")
        start = time.perf_counter()
        await store.create_network(network)
        latencies.append(time.perf_counter() - start)
    return statistics.median(latencies) * 1000


async def bench_block_claims(store: Store, count: int) -> float:
    await store.create_network(validate_network(name="claims", subnet="10.64.0.0/16"))
    pool = await store.open_address_pool("claims", "claimer")
    latencies = []
    for _ in range(count):
        start = time.perf_counter()
        await pool.claim_block()
        latencies.append(time.perf_counter() - start)
    return statistics.median(latencies) * 1000


async def bench_local_allocations(store: Store, blocks: int) -> tuple[float, int]:
    await store.create_network(validate_network(name="local", subnet="10.65.0.0/16"))
    pool = await store.open_address_pool("local", "allocator")
    for _ in range(blocks):
        await pool.claim_block()
    capacity = pool.statistics().free
    start = time.perf_counter()
    for i in range(capacity):
        if pool.allocate_nowait(f"ep{i}") is None:
            raise RuntimeError(f"held blocks ran out after {i} of {capacity} allocations")
    elapsed = time.perf_counter() - start
    return capacity / elapsed, capacity


async def bench_endpoint_creations(store: Store, endpoints: int) -> tuple[int, float]:
    """Round trips and seconds for `endpoints` allocations through blocks, flushed."""
    await store.create_network(validate_network(name="blocks", subnet="10.66.0.0/16"))
    before = store.client.round_trips
    start = time.perf_counter()
    pool = await store.open_address_pool("blocks", "host1")
    for i in range(endpoints):
        await pool.allocate(f"ep{i}")
    await pool.flush()
    elapsed = time.perf_counter() - start
    if pool.statistics().allocated != endpoints:
        raise RuntimeError("block allocation lost addresses")
    return store.client.round_trips - before, elapsed


async def bench_baseline(store: Store, endpoints: int) -> tuple[int, float]:
    """The same allocations, one compare-and-put transaction per address."""
    network = validate_network(name="baseline", subnet="10.67.0.0/16")
    reserved = reserved_addresses(network)
    addresses = (a for cidr in iter_blocks(network) for a in cidr if a not in reserved)
    before = store.client.round_trips
    start = time.perf_counter()
    done = 0
    for address in addresses:
        if done == endpoints:
            break
        key = f"{BASELINE_PREFIX}{address}"
        result = await store.txn([Compare(key, "create", "=", 0)], [Put(key, f"ep{done}".encode())])
        if result.succeeded:
            done += 1
    elapsed = time.perf_counter() - start
    return store.client.round_trips - before, elapsed


def tls_config(cluster: LocalCluster, **extra: float) -> StoreConfig:
    """[store] for the cluster's members with its client certificate (mutual TLS)."""
    assert cluster.ca is not None and cluster.client_cert is not None
    return build_config({"store": {
        "endpoints": cluster.urls, "ca_file": str(cluster.ca.cert_path),
        "cert_file": str(cluster.client_cert.cert), "key_file": str(cluster.client_cert.key),
        **extra}}).store


def etcdctl_leader(cluster: LocalCluster, members: list[LocalEtcd]) -> bool:
    """True when one of `members` says (etcdctl endpoint status) that it leads."""
    assert cluster.ca is not None and cluster.client_cert is not None
    answer = subprocess.run(
        ["etcdctl", f"--endpoints={','.join(m.client_url for m in members)}",
         "--dial-timeout=1s", "--command-timeout=1s", f"--cacert={cluster.ca.cert_path}",
         f"--cert={cluster.client_cert.cert}", f"--key={cluster.client_cert.key}",
         "endpoint", "status", "-w", "json"],
        capture_output=True, text=True, timeout=10, env={**os.environ, "ETCDCTL_API": "3"},
        check=False)
    try:
        rows = json.loads(answer.stdout or "[]")
    except ValueError:
        return False
    return any(r["Status"].get("leader") == r["Status"]["header"]["member_id"] for r in rows)


async def _time_new_leader(cluster: LocalCluster, survivors: list[LocalEtcd], since: float,
                           out: list[float]) -> None:
    """Append the seconds from `since` until a survivor reports a leader (bounded: 30 s)."""
    deadline = since + 30
    while time.monotonic() < deadline:
        if await trio.to_thread.run_sync(etcdctl_leader, cluster, survivors):
            out.append(time.monotonic() - since)
            return


async def bench_failover(cluster: LocalCluster, rounds: int) -> list[tuple[float, float]]:
    """(agent failover s, etcd election s) per round: the leader is SIGKILLed each round."""
    # The agent's defaults: timeout 2 s, member_timeout 0.5 s.
    store = await open_store(tls_config(cluster), rng=random.Random(3))
    results = []
    try:
        for round_ in range(rounds):
            statuses = store.client.member_statuses()
            leader = next(m for m, st in zip(cluster.members, statuses, strict=True)
                          if not st.error and st.leader_id == st.member_id)
            survivors = [m for m in cluster.members if m is not leader]
            backoff = store.new_backoff()
            key = f"/vxmesh/bench/failover/{round_}"
            await store.txn([], [Put(key, b"before")])
            election: list[float] = []
            async with trio.open_nursery() as nursery:
                killed_at = time.monotonic()
                leader.kill()
                nursery.start_soon(_time_new_leader, cluster, survivors, killed_at, election)
                while True:  # as the agent's services do: retry with backoff until it lands
                    try:
                        await store.txn([], [Put(key, b"after")])
                        break
                    except StoreUnavailable:
                        await trio.sleep(backoff.next_delay())
                failover = time.monotonic() - killed_at
            results.append((failover, election[0] if election else float("nan")))
            await trio.to_thread.run_sync(leader.start)
    finally:
        store.close()
    return results


async def bench_tls_endpoint_creations(cluster: LocalCluster, endpoints: int) -> int:
    """Round trips for `endpoints` allocations through blocks on the TLS cluster."""
    store = await open_store(tls_config(cluster, timeout=5.0), rng=random.Random(2))
    try:
        trips, _ = await bench_endpoint_creations(store, endpoints)
    finally:
        store.close()
    return trips


async def run_cluster(args: argparse.Namespace, cluster: LocalCluster
                      ) -> dict[str, float | int | list[list[float]]]:
    tls_trips = await bench_tls_endpoint_creations(cluster, args.endpoints)
    rounds = await bench_failover(cluster, args.failovers)
    return {
        "roundtrips_per_1000_tls": round(tls_trips * 1000 / args.endpoints, 1),
        "failover_s": round(statistics.median(f for f, _ in rounds), 3),
        "election_s": round(statistics.median(e for _, e in rounds), 3),
        "failover_rounds": [[round(f, 3), round(e, 3)] for f, e in rounds],
    }


async def run(args: argparse.Namespace, port: int) -> dict[str, float | int]:
    store = Store.connect("127.0.0.1", port, rng=random.Random(1))
    try:
        create_ms = await bench_network_create(store, args.networks)
        claim_ms = await bench_block_claims(store, args.claims)
        allocs_per_s, allocated = await bench_local_allocations(store, args.local_blocks)
        trips, blocks_s = await bench_endpoint_creations(store, args.endpoints)
        base_trips, base_s = await bench_baseline(store, args.endpoints)
    finally:
        store.close()
    scale = 1000 / args.endpoints
    return {
        "network_create_ms": round(create_ms, 2),
        "block_claim_ms": round(claim_ms, 2),
        "allocs_per_s": round(allocs_per_s),
        "roundtrips_per_1000": round(trips * scale, 1),
        "roundtrips_per_1000_baseline": round(base_trips * scale, 1),
        "endpoint_creations_s": round(blocks_s, 3),
        "endpoint_creations_s_baseline": round(base_s, 3),
        "endpoints": args.endpoints,
        "local_allocations": allocated,
    }


def render(result: dict[str, Any]) -> str:
    rows = [
        ("network create, median", f"{result['network_create_ms']} ms", "-"),
        ("block claim, median", f"{result['block_claim_ms']} ms", "-"),
        ("local allocations", f"{result['allocs_per_s']}/s", "-"),
        (
            "etcd round trips per 1,000 endpoints",
            f"{result['roundtrips_per_1000']}",
            f"{result['roundtrips_per_1000_baseline']} (one txn per address)",
        ),
        (
            f"time for {result['endpoints']} endpoint allocations",
            f"{result['endpoint_creations_s']} s",
            f"{result['endpoint_creations_s_baseline']} s",
        ),
        (
            "round trips per 1,000 endpoints, 3 members + mTLS",
            f"{result['roundtrips_per_1000_tls']}",
            f"{result['roundtrips_per_1000']} (1 plain member, above)",
        ),
        (
            "leader killed: first agent write (median)",
            f"{result['failover_s']} s",
            f"{result['election_s']} s (etcd's election; target +1 s)",
        ),
    ]
    width = max(len(r[0]) for r in rows)
    lines = [f"{'measure':<{width}}  {'vxmesh (blocks)':>16}  baseline", "-" * (width + 40)]
    lines += [f"{name:<{width}}  {ours:>16}  {base}" for name, ours, base in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    parser.add_argument("--endpoints", type=int, default=1000)
    parser.add_argument("--networks", type=int, default=50)
    parser.add_argument("--claims", type=int, default=50)
    parser.add_argument("--local-blocks", type=int, default=160, help="blocks held for allocs/s")
    parser.add_argument("--failovers", type=int, default=3, help="leader kills (rounds)")
    args = parser.parse_args(argv)
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="vxmesh-bench-store-") as tmp:
        server = LocalEtcd(Path(tmp) / "etcd")
        server.start()
        try:
            result.update(trio.run(run, args, server.client_port))
        finally:
            server.stop()
        with LocalCluster(Path(tmp) / "cluster", 3, tls=True) as cluster:
            result.update(trio.run(run_cluster, args, cluster))
    print(render(result))
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
