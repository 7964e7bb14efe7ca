"""Retry delays: exponential backoff with jitter, from an injected random source (pure).

`Backoff.next_delay()` doubles a base delay from `initial` up to `maximum` and returns a value
drawn uniformly from [base/2, base] ("equal jitter": never zero, so a crowd of agents retrying
etcd together spreads out instead of stampeding). `reset()` after a success.
Imports: stdlib only (listed among the pure cores).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Delays in seconds: `initial`, growing by `multiplier` per failure, capped at `maximum`."""

    rng: random.Random
    initial: float = 0.1
    maximum: float = 5.0
    multiplier: float = 2.0
    failures: int = field(default=0, init=False)

    def next_delay(self) -> float:
        base = min(self.maximum, self.initial * self.multiplier**self.failures)
        self.failures += 1
        return base / 2 + self.rng.random() * base / 2

    def reset(self) -> None:
        self.failures = 0
