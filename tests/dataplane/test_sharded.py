"""ShardedDict behaves as a dict: every operation sequence leaves it equal to a plain dict
given the same operations (hypothesis), and its views and errors are a dict's."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from overlay.sharded import SHARDS, ShardedDict

keys = st.one_of(st.integers(-3, 200), st.tuples(st.sampled_from(["a", "b"]), st.integers(0, 9)))
operations = st.lists(st.one_of(
    st.tuples(st.just("set"), keys, st.integers()),
    st.tuples(st.just("del"), keys, st.none()),
    st.tuples(st.just("pop"), keys, st.none()),
    st.tuples(st.just("setdefault"), keys, st.integers()),
    st.tuples(st.just("clear"), st.none(), st.none()),
), max_size=60)


@given(operations)
def test_every_operation_sequence_matches_a_plain_dict(steps: list[tuple[str, object, object]]
                                                        ) -> None:
    sharded: ShardedDict[object, object] = ShardedDict()
    plain: dict[object, object] = {}
    for name, key, value in steps:
        if name == "set":
            sharded[key] = plain[key] = value
        elif name == "del":
            if key in plain:
                del plain[key]
                del sharded[key]
            else:
                with pytest.raises(KeyError):
                    del sharded[key]
        elif name == "pop":
            assert sharded.pop(key, "none") == plain.pop(key, "none")
        elif name == "setdefault":
            assert sharded.setdefault(key, value) == plain.setdefault(key, value)
        else:
            sharded.clear()
            plain.clear()
        assert len(sharded) == len(plain)
        assert dict(sharded) == plain
        assert dict(sharded.items()) == plain == sharded.copy_to_dict()
        assert sorted(map(repr, sharded.values())) == sorted(map(repr, plain.values()))
        assert all(k in sharded and sharded[k] == v and sharded.get(k) == v
                   for k, v in plain.items())


def test_missing_keys_and_construction_as_a_dict() -> None:
    sharded = ShardedDict({i: str(i) for i in range(SHARDS * 4)})
    assert len(sharded) == SHARDS * 4 and sharded[7] == "7"
    assert sharded.get(-1) is None and sharded.get(-1, "x") == "x" and -1 not in sharded
    with pytest.raises(KeyError):
        sharded.pop(-1)
    with pytest.raises(KeyError):
        sharded[-1]
    assert ShardedDict([(1, "a"), (1, "b")]) == {1: "b"}
    assert sharded.pop(7) == "7" and len(sharded) == SHARDS * 4 - 1
    assert set(sharded) == set(range(SHARDS * 4)) - {7}
