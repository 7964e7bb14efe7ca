"""A delta tracker: what we want in the kernel versus what we believe the kernel holds.

Owns `DeltaTracker[K, V]` (Calico Felix's deltatracker is the model): two maps, desired and
kernel, and the two sets that follow from them, kept up to date incrementally:
- pending updates: keys whose desired value is missing from, or differs from, the kernel's;
- pending deletions: keys the kernel holds that are not desired.

Rules:
- Setting desired values never touches the kernel view, and the other way round; the
  reconciler moves a key to the kernel view only after the kernel acknowledged the write,
  so a failed key simply stays pending (dirty) and is retried at the next apply.
- `replace_kernel` (after a full dump) and `replace_desired` cost O(size); single-key
  operations cost O(1).

Pure: no I/O, no clock, no trio. May import the standard library and overlay.sharded.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from typing import Generic, TypeVar

from overlay.sharded import ShardedDict

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

_ABSENT: object = object()


class DeltaTracker(Generic[K, V]):
    """Desired and kernel views of one kind of kernel object, and the delta between them."""

    def __init__(self) -> None:
        # Sharded (overlay.sharded): one key more never resizes a whole 100,000-key table.
        self._desired: ShardedDict[K, V] = ShardedDict()
        self._kernel: ShardedDict[K, V] = ShardedDict()
        self._updates: ShardedDict[K, V] = ShardedDict()
        self._deletions: set[K] = set()

    # -- bookkeeping --------------------------------------------------------------------

    def _refresh(self, key: K) -> None:
        desired = self._desired.get(key, _ABSENT)
        kernel = self._kernel.get(key, _ABSENT)
        if desired is not _ABSENT and desired != kernel:
            self._updates[key] = desired  # type: ignore[assignment]
        else:
            self._updates.pop(key, None)
        if desired is _ABSENT and kernel is not _ABSENT:
            self._deletions.add(key)
        else:
            self._deletions.discard(key)

    def _refresh_changed(self, old: Mapping[K, V], new: Mapping[K, V]) -> None:
        """Re-examine the keys a whole-view replacement (`old` -> `new`) changed."""
        for key in old.keys() - new.keys():
            self._refresh(key)
        for key, value in new.items():
            if old.get(key, _ABSENT) != value:
                self._refresh(key)

    # -- desired side -------------------------------------------------------------------

    def set_desired(self, key: K, value: V) -> None:
        self._desired[key] = value
        self._refresh(key)

    def delete_desired(self, key: K) -> None:
        if self._desired.pop(key, _ABSENT) is not _ABSENT:
            self._refresh(key)

    def replace_desired(self, values: Mapping[K, V]) -> None:
        """Make `values` the whole desired view; only changed keys are re-examined."""
        old, self._desired = self._desired, ShardedDict(values)
        self._refresh_changed(old, self._desired)

    # -- kernel side --------------------------------------------------------------------

    def set_kernel(self, key: K, value: V) -> None:
        self._kernel[key] = value
        self._refresh(key)

    def delete_kernel(self, key: K) -> None:
        if self._kernel.pop(key, _ABSENT) is not _ABSENT:
            self._refresh(key)

    def forget_kernel(self, keys: Iterable[K]) -> None:
        """The kernel lost these (e.g. their device was re-created)."""
        for key in list(keys):
            self.delete_kernel(key)

    def replace_kernel(self, values: Mapping[K, V]) -> None:
        """Make `values` (a fresh dump of what we own) the whole kernel view."""
        old, self._kernel = self._kernel, ShardedDict(values)
        self._refresh_changed(old, self._kernel)

    # -- queries ------------------------------------------------------------------------

    def pending_updates(self) -> Mapping[K, V]:
        """Keys to write, with the value to write (a live view; copy before mutating)."""
        return self._updates

    def pending_deletions(self) -> frozenset[K]:
        return frozenset(self._deletions)

    def desired(self) -> Mapping[K, V]:
        return self._desired

    def kernel(self) -> Mapping[K, V]:
        return self._kernel

    def in_sync(self) -> bool:
        return not self._updates and not self._deletions
