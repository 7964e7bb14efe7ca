"""The delta tracker: incremental pending sets always equal a from-scratch diff, and its two
views always equal an independent model (two plain dicts the test keeps itself)."""

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
    st.tuples(st.just("forget_kernel"), st.lists(keys, max_size=3), values),
), max_size=40)


def model_step(desired: dict[int, str], kernel: dict[int, str], name: str, arg: object,
               value: str) -> None:
    """What each operation means, written without the tracker's code."""
    if name == "set_desired":
        desired[arg] = value  # type: ignore[index]
    elif name == "delete_desired":
        desired.pop(arg, None)  # type: ignore[call-overload]
    elif name == "set_kernel":
        kernel[arg] = value  # type: ignore[index]
    elif name == "delete_kernel":
        kernel.pop(arg, None)  # type: ignore[call-overload]
    elif name == "replace_desired":
        desired.clear()
        desired.update(arg)  # type: ignore[call-overload]
    elif name == "replace_kernel":
        kernel.clear()
        kernel.update(arg)  # type: ignore[call-overload]
    elif name == "forget_kernel":
        for key in arg:  # type: ignore[attr-defined]
            kernel.pop(key, None)


@settings(max_examples=300, deadline=None)
@given(operations)
def test_pending_sets_match_a_full_diff(ops: list[tuple[str, object, str]]) -> None:
    tracker: DeltaTracker[int, str] = DeltaTracker()
    model_desired: dict[int, str] = {}
    model_kernel: dict[int, str] = {}
    for name, arg, value in ops:
        if name in ("set_desired", "set_kernel"):
            getattr(tracker, name)(arg, value)
        elif name in ("delete_desired", "delete_kernel"):
            getattr(tracker, name)(arg)
        else:
            getattr(tracker, name)(arg)
        model_step(model_desired, model_kernel, name, arg, value)
        assert dict(tracker.desired()) == model_desired
        assert dict(tracker.kernel()) == model_kernel
        assert dict(tracker.pending_updates()) == {
            k: v for k, v in model_desired.items() if model_kernel.get(k) != v}
        assert tracker.pending_deletions() == model_kernel.keys() - model_desired.keys()
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
