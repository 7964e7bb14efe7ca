"""The data-plane benchmarks run and end with the JSON line their docstrings promise."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.kernel


def last_json(argv: list[str], timeout: float) -> dict[str, Any]:
    done = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stdout + done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_netlink_rate_small() -> None:
    result = last_json(["bench/netlink_rate.py", "--entries", "300", "--json"], 120)
    assert result["entries"] == 300
    for key in ("fdb_add_per_s", "fdb_add_per_s_iproute2", "neigh_add_per_s",
                "neigh_add_per_s_iproute2", "ratio_min"):
        assert isinstance(result[key], (int, float)) and result[key] > 0, key


@pytest.mark.slow
def test_dataplane_short() -> None:
    result = last_json(["bench/dataplane.py", "--seconds", "1", "--repeats", "1",
                        "--settings", "gro_veth,udp_csum", "--json"], 300)
    for path in ("overlay_reconciler", "overlay_hand", "host", "overlay_nonf", "overlay_tc",
                 "overlay_routed", "overlay_macvlan"):
        figures = result[path]
        assert isinstance(figures, dict)
        assert figures["gbps_p1"] > 0 and figures["gbps_p4"] > 0 and figures["rr_us"] > 0
        low, high = figures["gbps_p1_spread"]
        assert low <= figures["gbps_p1"] <= high
    for key in ("ratio_throughput", "ratio_latency", "ratio_to_host_throughput"):
        assert isinstance(result[key], float) and result[key] > 0
        assert len(result[f"{key}_spread"]) == 2
    assert set(result["to_host"]) == {"overlay_reconciler", "overlay_nonf", "overlay_tc",
                                      "overlay_routed", "overlay_macvlan"}
    for ratios in [*result["to_host"].values(), *result["to_reconciler"].values()]:
        assert ratios["throughput"] > 0 and ratios["latency"] > 0
        assert len(ratios["latency_spread"]) == 2
    assert set(result["settings"]) == {"gro_veth", "udp_csum"}
    for setting in result["settings"].values():
        assert isinstance(setting["default"], bool)
        assert setting["switched"]["gbps_p1"] > 0 and setting["default_row"]["rr_us"] > 0
        assert setting["ratio_throughput"] > 0 and setting["ratio_latency"] > 0
