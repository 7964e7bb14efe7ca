"""bench/scale.py in its smallest mode: two tiny sizes, JSON last line, a PNG written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def test_smallest_scale_run_prints_rows_and_writes_plot(tmp_path: Path) -> None:
    plot = tmp_path / "scale.png"
    done = subprocess.run(
        [sys.executable, str(BENCH / "scale.py"), "--nodes", "8,16", "--duration", "20",
         "--cold-start", "12:1,12:3", "--plot", str(plot), "--json"],
        capture_output=True, text=True, timeout=60, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert [row["n"] for row in result["rows"]] == [8, 16]
    for row in result["rows"]:
        for profile in ("lan", "memberlist"):
            measured = row[profile]
            assert measured["converged_s"] is not None
            assert 0 < measured["detect_first_s"] <= measured["detect_all_s"] < 15
            assert measured["bytes_per_node_s"] > 0
    assert [(row["n"], row["seeds"]) for row in result["cold_starts"]] == [(12, 1), (12, 3)]
    assert all(row["lan"]["cold_converged_s"] is not None for row in result["cold_starts"])
    assert "| 12 | 3 | cold_converged_s |" in done.stdout
    assert plot.read_bytes().startswith(b"\x89PNG")
    assert "| 16 | detect_all_s |" in done.stdout
