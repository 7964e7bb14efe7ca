"""A dictionary split into shards by key hash, so that no single insertion resizes all of it.

Owns `ShardedDict`: the mapping desired state and the reconciler's delta trackers keep per
endpoint (100,000 entries and more in a large cluster). A Python dict grows by rebuilding its
whole table in one C call when it fills: at 87,000 keys that took 2-7 ms of CPU on our
2-core machine (twice that at 175,000, most of it page faults of the new table), and the
per-endpoint maps all grow in step, so the one endpoint that filled them held the trio loop
for 25-40 ms while every map resized at once (bench/RESULTS.md, "recompute"). Split into
`SHARDS` dicts by key hash, each resize rebuilds 1/64th, and the shards of one map fill at
different moments (their sizes differ by chance), so the resizes spread over many slices.

Rules: a `MutableMapping` with the dict methods the hot paths use written out (`get`, `pop`,
`setdefault`, `in`) rather than the slower mixins. Iteration visits shard by shard, each in
insertion order (nothing may rely on the insertion order of the whole). Pure: the standard
library only.
"""

from __future__ import annotations

from collections.abc import ItemsView, Iterable, Iterator, Mapping, MutableMapping, ValuesView
from typing import TypeVar, overload

K = TypeVar("K")
V = TypeVar("V")
D = TypeVar("D")

SHARDS = 64  # a power of two: the shard of a key is hash(key) & (SHARDS - 1)
_MASK = SHARDS - 1
_MISSING = object()


class ShardedDict(MutableMapping[K, V]):
    """A dict of dicts by `hash(key) & (SHARDS - 1)` (module docstring)."""

    __slots__ = ("_len", "_shards")

    def __init__(self, values: Mapping[K, V] | Iterable[tuple[K, V]] = ()) -> None:
        self._shards: tuple[dict[K, V], ...] = tuple({} for _ in range(SHARDS))
        self._len = 0
        items = values.items() if isinstance(values, Mapping) else values
        for key, value in items:
            self[key] = value

    def __getitem__(self, key: K) -> V:
        return self._shards[hash(key) & _MASK][key]

    def __setitem__(self, key: K, value: V) -> None:
        shard = self._shards[hash(key) & _MASK]
        size = len(shard)
        shard[key] = value
        self._len += len(shard) - size

    def __delitem__(self, key: K) -> None:
        del self._shards[hash(key) & _MASK][key]
        self._len -= 1

    def __contains__(self, key: object) -> bool:
        return key in self._shards[hash(key) & _MASK]

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[K]:
        for shard in self._shards:
            yield from shard

    @overload
    def get(self, key: K, /) -> V | None: ...

    @overload
    def get(self, key: K, default: V | D, /) -> V | D: ...

    def get(self, key: K, default: object = None, /) -> object:
        return self._shards[hash(key) & _MASK].get(key, default)

    @overload
    def pop(self, key: K, /) -> V: ...

    @overload
    def pop(self, key: K, default: V | D, /) -> V | D: ...

    def pop(self, key: K, default: object = _MISSING, /) -> object:
        shard = self._shards[hash(key) & _MASK]
        if key in shard:
            self._len -= 1
            return shard.pop(key)
        if default is _MISSING:
            raise KeyError(key)
        return default

    def setdefault(self, key: K, default: V = None, /) -> V:  # type: ignore[assignment]
        shard = self._shards[hash(key) & _MASK]
        size = len(shard)
        value = shard.setdefault(key, default)
        self._len += len(shard) - size
        return value

    def clear(self) -> None:
        for shard in self._shards:
            shard.clear()
        self._len = 0

    def copy_to_dict(self) -> dict[K, V]:
        """A plain dict of the same items (one C-level update per shard)."""
        out: dict[K, V] = {}
        for shard in self._shards:
            out.update(shard)
        return out

    def items(self) -> ItemsView[K, V]:
        return _Items(self)

    def values(self) -> ValuesView[V]:
        return _Values(self)

    def __repr__(self) -> str:
        return f"ShardedDict({self.copy_to_dict()!r})"


class _Items(ItemsView[K, V]):
    """`items()` read shard by shard (the mixin looks every key up again)."""

    _mapping: ShardedDict[K, V]

    def __iter__(self) -> Iterator[tuple[K, V]]:
        for shard in self._mapping._shards:
            yield from shard.items()


class _Values(ValuesView[V]):
    _mapping: ShardedDict[object, V]

    def __iter__(self) -> Iterator[V]:
        for shard in self._mapping._shards:
            yield from shard.values()
