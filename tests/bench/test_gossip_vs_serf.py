"""bench/gossip_vs_serf.py in its smallest mode: a 2-host lab, serf and vxmesh agents, JSON."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.mark.kernel
@pytest.mark.slow
@pytest.mark.etcd
@pytest.mark.skipif(shutil.which("serf") is None, reason="needs the serf binary (Debian serf)")
@pytest.mark.skipif(shutil.which("etcd") is None, reason="needs the etcd server binary")
def test_smallest_run_prints_json_rows() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH / "gossip_vs_serf.py"), "--sizes", "2",
         "--systems", "serf,vxmesh",
         "--loss-window", "1", "--idle-window", "0.5", "--repeats", "1", "--timeout", "20",
         "--json"], capture_output=True, text=True, timeout=110, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    [row] = result["rows"]
    assert row["n"] == 2
    serf = row["serf"]
    assert serf["notes"] == []
    assert 0 <= serf["join_s"] < 5
    # memberlist LAN: suspicion of at least 4 probe periods before anyone declares failure.
    assert 2 < serf["detect_first_s"] <= serf["detect_all_s"] < 20
    assert 0 < serf["dissemination_s"] < 5
    assert serf["false_positives"] == 0
    assert 0 <= serf["cpu_pct"] < 50
    assert 1 < serf["rss_mb"] < 200
    vxmesh = row["vxmesh"]
    assert vxmesh["notes"] == []
    for metric in ("join_s", "detect_first_s", "detect_all_s", "dissemination_s", "cpu_pct",
                   "rss_mb"):
        assert isinstance(vxmesh[metric], float), (metric, vxmesh)
    assert vxmesh["false_positives"] == 0
    assert "| 2 | detect_all_s |" in done.stdout
