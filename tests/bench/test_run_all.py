"""bench/run_all.py writes RESULTS.md with the machine, load and each bench's table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def test_run_all_writes_results_for_scale(tmp_path: Path) -> None:
    out = tmp_path / "RESULTS.md"
    done = subprocess.run(
        [sys.executable, str(BENCH / "run_all.py"), "--only", "scale", "--scale-nodes", "8",
         "--scale-duration", "20", "--scale-cold-start", "8:1", "--out", str(out), "--json"],
        capture_output=True, text=True, timeout=60, check=True)
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["benches"]["scale"]["ok"] is True
    text = out.read_text()
    assert "## Machine" in text and "nproc" in text and "load before" in text
    assert "| 8 | detect_all_s |" in text
    assert "lan/memberlist" in text
