"""SwimConfig: the presets' numbers and the formulas they give, pinned in one table."""

from __future__ import annotations

import dataclasses

import pytest

from gossip.config import SwimConfig, SwimConfigError, suspicion_timeout

PRESETS = {"lan": SwimConfig.lan(), "wan": SwimConfig.wan(), "local": SwimConfig.local(),
           "memberlist": SwimConfig.memberlist_lan()}

# preset, n -> retransmit limit, suspicion min s, suspicion max s, confirmations k, push-pull s
TABLE = [
    ("lan", 1, 4, 2.0, 12.0, 0, 30.0),
    ("lan", 10, 8, 2.0, 12.0, 3, 30.0),
    ("lan", 100, 12, 4.0, 24.0, 3, 90.0),
    ("lan", 1000, 16, 6.0, 36.0, 3, 180.0),
    ("wan", 10, 8, 30.0, 180.0, 3, 60.0),
    ("wan", 1000, 16, 90.0, 540.0, 3, 360.0),
    ("local", 10, 4, 3.0, 18.0, 3, 15.0),
    ("local", 1000, 8, 9.0, 54.0, 3, 90.0),
    ("memberlist", 3, 4, 4.0, 24.0, 0, 30.0),
    ("memberlist", 40, 8, 6.408, 38.449, 2, 60.0),
    ("memberlist", 1000, 16, 12.0, 72.0, 2, 180.0),
]


@pytest.mark.parametrize(("preset", "n", "retransmit", "smin", "smax", "k", "push_pull"), TABLE)
def test_formulas_give_the_pinned_numbers(preset: str, n: int, retransmit: int, smin: float,
                                          smax: float, k: int, push_pull: float) -> None:
    config = PRESETS[preset]
    assert config.retransmit_limit(n) == retransmit
    assert config.suspicion_min_s(n) == pytest.approx(smin, abs=1e-3)
    assert config.suspicion_max_s(n) == pytest.approx(smax, abs=1e-3)
    assert config.confirmations_needed(n) == k
    assert config.push_pull_interval_for(n) == push_pull


def test_preset_timings() -> None:
    lan, wan, local, ml = (PRESETS[p] for p in ("lan", "wan", "local", "memberlist"))
    assert (lan.probe_interval_s, lan.probe_timeout_s, lan.indirect_checks) == (1.0, 0.5, 4)
    assert (ml.indirect_checks, ml.suspicion_mult, ml.suspicion_confirmations) == (3, 4.0, 2)
    assert (lan.gossip_interval_s, lan.gossip_nodes, lan.udp_budget, lan.meta_limit) == (
        0.2, 3, 1400, 512)
    assert lan.reconnect_interval_s == 30.0 and ml.reconnect_interval_s is None
    assert (wan.probe_interval_s, wan.probe_timeout_s, wan.gossip_nodes) == (5.0, 3.0, 4)
    assert (local.probe_timeout_s, local.indirect_checks, local.retransmit_mult) == (0.2, 1, 2)
    for config in PRESETS.values():
        assert config.validate() is config


def test_suspicion_timeout_shrinks_from_max_to_min() -> None:
    values = [suspicion_timeout(6.0, 36.0, 3, c) for c in range(5)]
    assert values[0] == 36.0
    assert values == sorted(values, reverse=True)
    assert values[3] == pytest.approx(6.0) and values[4] == 6.0
    assert suspicion_timeout(6.0, 36.0, 0, 0) == 6.0


@pytest.mark.parametrize(("field", "value"), [
    ("probe_interval_s", 0.0), ("probe_timeout_s", 2.0), ("gossip_nodes", -1),
    ("udp_budget", 100), ("meta_limit", 5000), ("reconnect_interval_s", 0.0),
    ("retransmit_mult", float("nan")), ("indirect_checks", True),
])
def test_bad_values_are_refused_naming_the_field(field: str, value: object) -> None:
    config = dataclasses.replace(SwimConfig.lan(), **{field: value})  # type: ignore[arg-type]
    with pytest.raises(SwimConfigError, match=field) as info:
        config.validate()
    assert repr(value) in str(info.value) or field == "probe_timeout_s"
