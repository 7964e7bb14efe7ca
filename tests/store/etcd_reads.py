"""Reads and writes of etcd that only tests need (the agent reads networks through its watch
and never compacts): every network, one network's blocks per host, a compaction.

They go through the store's own call path and decoders (`Store.call`, `Store._decoded`,
`Store.blocks_with_keys`), so malformed records are skipped and counted as the agent does.
"""

from __future__ import annotations

from dataclasses import dataclass

from etcd3 import etcdrpc

from agent.store.schema import NETWORKS, IPNetwork, Network, decode_network, prefix_end
from agent.store.service import Store


@dataclass(frozen=True)
class BlockSummary:
    cidr: IPNetwork
    host: str
    allocated: int


@dataclass(frozen=True)
class NetworkInfo:
    network: Network
    endpoints: int
    blocks: tuple[BlockSummary, ...]


async def list_networks(store: Store) -> list[Network]:
    """Every network in etcd (malformed records skipped and counted)."""
    kvs, _ = await store.call(store.client.range, NETWORKS, prefix_end(NETWORKS))
    return store._decoded(kvs, decode_network)


async def inspect_network(store: Store, name: str) -> NetworkInfo:
    """Network `name` with its blocks (by address) and how many addresses each holds."""
    network_kv, block_kvs, _ = await store._network_and_blocks(name)
    network = decode_network(network_kv.key, network_kv.value)
    blocks = [block for _, block in store.blocks_with_keys(block_kvs, network)]
    summaries = tuple(
        BlockSummary(b.cidr, b.host, len(b.allocations))
        for b in sorted(blocks, key=lambda b: int(b.cidr.network_address))
    )
    return NetworkInfo(network, sum(s.allocated for s in summaries), summaries)


async def compact(store: Store, revision: int) -> None:
    """Compact etcd's history up to `revision` (physically)."""
    request = etcdrpc.CompactionRequest(revision=revision, physical=True)
    await store.call(store.client._rpc, lambda m: m.kv.Compact, request)
