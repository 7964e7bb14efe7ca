"""The delta tracker: incremental pending sets always equal a from-scratch diff."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from overlay.delta import DeltaTracker

keys = st.integers(0, 6)
values = st.sampled_from(["a", "b"])
operations = st.lists(st.one_of(
    st.tuples(st.just("set_desired"), keys, values),
    st.tuples(st.just("delete_desired"), keys, values),
    st.tuples(st.just("set_kernel"), keys, values),
    st.tuples(st.just("delete_kernel"), keys, values),
    st.tuples(st.just("replace_desired"), st.dictionaries(keys, values), values),
    st.tuples(st.just("replace_kernel"), st.dictionaries(keys, values), values),
), max_size=40)


@settings(max_examples=300, deadline=None)
@given(operations)
def test_pending_sets_match_a_full_diff(ops: list[tuple[str, object, str]]) -> None:
    tracker: DeltaTracker[int, str] = DeltaTracker()
    for name, arg, value in ops:
        if name in ("set_desired", "set_kernel"):
            getattr(tracker, name)(arg, value)
        elif name in ("delete_desired", "delete_kernel"):
            getattr(tracker, name)(arg)
        else:
            getattr(tracker, name)(arg)
        desired, kernel = tracker.desired(), tracker.kernel()
        assert dict(tracker.pending_updates()) == {
            k: v for k, v in desired.items() if kernel.get(k) != v}
        assert tracker.pending_deletions() == kernel.keys() - desired.keys()
        assert tracker.in_sync() == (dict(desired) == dict(kernel))


def test_acknowledged_write_clears_pending_and_failure_keeps_it() -> None:
    tracker: DeltaTracker[str, str] = DeltaTracker()
    tracker.replace_desired({"x": "1", "y": "2"})
    tracker.replace_kernel({"z": "9"})
    assert dict(tracker.pending_updates()) == {"x": "1", "y": "2"}
    assert tracker.pending_deletions() == {"z"}
    tracker.set_kernel("x", "1")  # acknowledged
    tracker.delete_kernel("z")    # acknowledged
    assert dict(tracker.pending_updates()) == {"y": "2"}  # y failed: still pending
    assert tracker.pending_deletions() == frozenset()
    tracker.forget_kernel(["x"])
    assert dict(tracker.pending_updates()) == {"x": "1", "y": "2"}
