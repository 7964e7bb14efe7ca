"""The networks this agent knows: the copy in the state directory, then etcd's watched view.

Owns: `KnownNetworks`, read at start from `<state_dir>/networks.json` (so a restart while etcd
is away keeps its data plane), replaced by the store's view once it has listed networks, and
written back on every change.

Rules: a damaged copy stops start-up (`StateReadError` naming the file); a failed write (full
disk) keeps the last good file and is logged by the caller; while etcd has not listed yet the
copy stays as it is.

May import: agent.store, agent.state_files, the standard library.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from agent.state_files import StateReadError
from agent.store.errors import StoreError
from agent.store.network_cache import NetworkCache
from agent.store.schema import Network, decode_network


class KnownNetworks:
    """Networks by name, with their copy in the state directory."""

    def __init__(self, cache: NetworkCache, networks: Mapping[str, Network], *,
                 copied: bool) -> None:
        self._cache = cache
        self._networks = dict(networks)
        self.copied = copied  # a copy was in the state directory: etcd was listed before

    @classmethod
    def load(cls, state_dir: Path) -> KnownNetworks:
        """The copy in `state_dir` (empty on a first start); StateReadError when damaged."""
        cache = NetworkCache.load(state_dir)
        copied = cache.path.exists()
        networks = {}
        for name, raw in cache.networks.items():
            try:
                networks[name] = decode_network(f"/vxmesh/v1/networks/{name}",
                                                json.dumps(raw).encode())
            except StoreError as exc:
                raise StateReadError(f"{cache.path}: network {name!r}: {exc}") from None
        return cls(cache, networks, copied=copied)

    def get(self, name: str) -> Network | None:
        return self._networks.get(name)

    def names(self) -> list[str]:
        return sorted(self._networks)

    def values(self) -> list[Network]:
        """Every network, by name."""
        return [self._networks[name] for name in sorted(self._networks)]

    def items(self) -> list[tuple[str, Network]]:
        return [(name, self._networks[name]) for name in sorted(self._networks)]

    def __len__(self) -> int:
        return len(self._networks)

    def put(self, network: Network) -> None:
        """A network this agent just created (the watch confirms it soon)."""
        self._networks[network.name] = network

    def discard(self, name: str) -> None:
        self._networks.pop(name, None)

    def replace(self, view: Mapping[str, Network]) -> None:
        """etcd's listed view; persisted (StateWriteError when the write fails)."""
        self._networks = dict(view)
        self._cache.save({name: net.to_json() for name, net in view.items()})
        self.copied = True
