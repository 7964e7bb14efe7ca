"""Backoff delays: exponential, capped, jittered by the injected random source."""

from __future__ import annotations

import random

from agent.store.backoff import Backoff


def test_delays_grow_cap_and_reset() -> None:
    backoff = Backoff(random.Random(3), initial=0.1, maximum=1.0)
    delays = [backoff.next_delay() for _ in range(8)]
    bases = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0, 1.0]
    assert all(base / 2 <= d <= base for d, base in zip(delays, bases, strict=True))
    backoff.reset()
    assert 0.05 <= backoff.next_delay() <= 0.1


def test_jitter_comes_from_the_injected_rng() -> None:
    first = [Backoff(random.Random(9)).next_delay() for _ in range(3)]
    assert first[0] == first[1] == first[2]
    spread = {Backoff(random.Random(seed)).next_delay() for seed in range(20)}
    assert len(spread) == 20
