"""The neighbor table on the real SWIM core in the gossip simulator, at CI size."""

from __future__ import annotations

import json

import pytest

from overlay.sim import main, run_table_sim


@pytest.mark.slow
@pytest.mark.parametrize("network_size", [0, 10])
def test_churn_with_loss_converges_with_no_stale_entries(network_size: int) -> None:
    result = run_table_sim(40, 10, churn=8.0, loss=0.05, seed=3, duration_s=12.0,
                           network_size=network_size)
    assert result.networks == (1 if network_size == 0 else 4)
    assert result.changes > 50
    assert result.unconverged == 0 and result.stale_entries == 0
    assert result.missing_entries == 0 and result.decode_errors == 0
    assert result.converged_p99_s is not None and result.converged_p99_s <= 2.0
    assert result.detect_all_s is not None and result.withdraw_all_s is not None
    assert result.withdraw_all_s <= result.detect_all_s + 1.0


def test_cli_prints_a_table_and_json_with_the_no_churn_baseline(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--nodes", "12", "--endpoints-per-node", "4", "--churn", "4", "--loss", "0.05",
                 "--seed", "2", "--duration", "4", "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert "converged_p99_s" in "\n".join(lines[:-1])
    payload = json.loads(lines[-1])
    for key in ("nodes", "endpoints", "converged_p50_s", "converged_p99_s", "withdraw_all_s",
                "stale_entries", "bytes_per_node_s", "wall_s"):
        assert key in payload
    assert payload["nodes"] == 12 and payload["stale_entries"] == 0
    assert payload["baseline"]["churn"] == 0.0 and payload["baseline"]["changes"] == 0
    assert payload["bytes_per_node_s"] > payload["baseline"]["bytes_per_node_s"]


def test_cli_refuses_bad_values_naming_them(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--loss", "1.5"])
    assert "loss" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--nodes", "2"])
    assert "nodes" in capsys.readouterr().err
