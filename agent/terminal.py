"""What the CLI and the lab print for people: aligned tables and one-line progress steps.

May import: the standard library.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any


def render_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """Rows as an aligned text table with an upper-case header."""
    cells = [[render_cell(row.get(col)) for col in columns] for row in rows]
    widths = [max([len(col)] + [len(r[i]) for r in cells]) for i, col in enumerate(columns)]
    lines = ["  ".join(col.upper().ljust(w) for col, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(line.rstrip() for line in lines)


def render_cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ",".join(render_cell(v) for v in value) or "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


class Progress:
    """One line per step on stderr: `step ... ok (0.12 s)`; silent with --json when piped."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet

    def step(self, text: str) -> _Step:
        return _Step(self, text)


class _Step:
    def __init__(self, progress: Progress, text: str) -> None:
        self.progress = progress
        self.text = text
        self.start = 0.0

    def __enter__(self) -> _Step:
        self.start = time.monotonic()
        if not self.progress.quiet:
            print(f"{self.text} ...", end="", file=sys.stderr, flush=True)
        return self

    def __exit__(self, kind: object, exc: object, tb: object) -> None:
        if self.progress.quiet:
            return
        took = time.monotonic() - self.start
        print(f" {'ok' if kind is None else 'FAILED'} ({took:.2f} s)", file=sys.stderr,
              flush=True)
