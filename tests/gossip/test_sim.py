"""The simulator at 200 nodes, one test per scenario, asserting the issue's properties."""

from __future__ import annotations

import dataclasses
import json

import pytest

from gossip.config import SwimConfig
from gossip.sim import Simulation, main, run_scenario
from gossip.swim import MemberJoined, MembershipEvent

pytestmark = pytest.mark.slow

N = 200
LAN = SwimConfig.lan()


def test_join_converges_fast() -> None:
    result = run_scenario("join", N, seed=11, duration=15.0)
    assert result.converged_s is not None and result.converged_s <= 5.0
    assert result.false_positives == 0


def test_a_cold_start_through_one_seed_converges_by_join_push_pulls() -> None:
    """All but one node start at once through node 0 (simulated seconds, not wall time):
    the push-pulls after a join spread whole views; without them (the memberlist profile)
    every alive message crawls through piggybacks."""
    ours = run_scenario("join", N, seed=4, duration=12.0, joiners=N - 1)
    theirs = run_scenario("join", N, seed=4, duration=12.0, joiners=N - 1, profile="memberlist")
    assert ours.converged_s is not None and ours.converged_s <= 3.0
    assert theirs.converged_s is None or theirs.converged_s > ours.converged_s
    assert ours.false_positives == 0


def test_news_during_a_cold_start_still_reaches_everyone_by_gossip() -> None:
    """In a cold start the queues are full and what push-pulls teach about third parties is
    no longer queued (PULLED_NEWS_ROOM): a genuinely new fact, a metadata change made
    half a second in, still reaches every node within the second or two gossip takes, and
    the views converge."""
    sim = Simulation(N, seed=3, config=LAN, formed=1)
    sim.run_until(1.0)
    for index in range(1, N):
        sim.start_node(index, [0])
    sim.run_until(1.5)
    mover = sim.nodes[7].swim
    assert mover is not None
    mover.set_meta(b"moved", sim.now)
    sim.sync_node(7)

    def everyone_saw_it() -> bool:
        for node in sim.nodes:
            assert node.swim is not None
            seen = node.swim.member(mover.name)
            if node.index != 7 and (seen is None or seen.meta != b"moved"):
                return False
        return True

    t = sim.now
    while t < 3.5 and not everyone_saw_it():
        t += 0.1
        sim.run_until(t)
    assert everyone_saw_it()
    sim.run_until(5.0)
    assert sim.views_converged()
    assert sum(n.swim.statistics().pulled_unqueued for n in sim.nodes if n.swim) > 0


def test_joins_through_one_seed_reach_everyone_by_gossip_alone() -> None:
    """What tests/gossip_shell does on loopback: four nodes join one seed, one after another,
    with the `local` preset (each broadcast sent 2 times at n = 5). Every join must reach
    every member by gossip, before any push-pull round (15 s) could repair a lost one: news is
    never spent on the member it is about, on the member that told us, or twice on one."""
    late = []
    gossip_only = dataclasses.replace(SwimConfig.local(), join_sync_rounds=0)
    for seed in range(50):
        sim = Simulation(5, seed=seed, config=gossip_only, formed=1)
        now = 0.5
        sim.run_until(now)
        for index in range(1, 5):
            sim.start_node(index, [0])
            now += 0.01
            sim.run_until(now)
        sim.run_until(now + 3.0)
        if not sim.views_converged():
            late.append(seed)
    assert late == []


def test_a_crash_is_detected_by_everyone_in_time() -> None:
    result = run_scenario("fail", N, seed=12, duration=30.0)
    assert result.detect_first_s is not None and result.detect_all_s is not None
    assert result.detect_first_s <= result.detect_all_s <= 12.0
    assert result.false_positives == 0
    assert result.bytes_per_node_s <= 2048


def test_no_false_positives_at_ten_percent_loss() -> None:
    result = run_scenario("loss", N, seed=13, loss=0.1, duration=60.0)
    assert result.false_positives == 0
    assert result.detect_all_s is not None and result.detect_all_s <= 20.0


def test_a_partition_is_seen_and_heals_to_one_view() -> None:
    result = run_scenario("partition", N, seed=14, cut_s=60.0, duration=5.0 + 60.0 + 60.0)
    assert result.detect_all_s is not None          # each side saw the other fail
    assert result.converged_s is not None and result.converged_s <= 60.0
    assert result.false_positives == 0


def test_the_memberlist_baseline_stays_split() -> None:
    """Once every node saw the other side fail, nothing brings it back without re-joins
    (a node still suspecting one member at the heal would: hence the first assertion)."""
    result = run_scenario("partition", 60, seed=15, profile="memberlist", cut_s=60.0,
                          duration=5.0 + 60.0 + 60.0)
    assert result.detect_all_s is not None
    assert result.converged_s is None


def test_churn_converges_without_false_positives() -> None:
    result = run_scenario("churn", N, seed=15, duration=70.0)
    assert result.false_positives == 0
    assert result.converged_s is not None and result.converged_s <= 30.0
    assert result.left_all_s is not None and result.left_all_s <= 3.0


def test_runs_are_reproducible_from_the_seed() -> None:
    first = run_scenario("fail", 50, seed=3, duration=20.0).as_dict()
    second = run_scenario("fail", 50, seed=3, duration=20.0).as_dict()
    for measured in ("wall_s", "cpu_ms_per_node_s"):
        first.pop(measured)
        second.pop(measured)
    assert first == second


def test_signing_keeps_detection_time_and_costs_push_pull_bytes() -> None:
    plain = run_scenario("fail", 30, seed=4, duration=30.0)
    signed = run_scenario("fail", 30, seed=4, duration=30.0, signed=True)
    assert signed.signed and signed.detect_all_s == plain.detect_all_s is not None
    assert signed.push_pull_bytes_per_node_s > plain.push_pull_bytes_per_node_s


def test_cli_prints_a_table_then_one_json_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--nodes", "20", "--scenario", "fail", "--seed", "1", "--duration", "20",
                 "--profile", "both", "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    payload = json.loads(lines[-1])
    for key in ("nodes", "scenario", "seed", "converged_s", "detect_first_s", "detect_all_s",
                "false_positives", "msgs_per_node_s", "bytes_per_node_s", "wall_s"):
        assert key in payload
    assert payload["baseline"]["profile"] == "memberlist"
    assert any("detect_all_s" in line for line in lines[:-1])


def test_progress_lines_report_a_long_run_without_changing_it(
        capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--nodes", "20", "--scenario", "loss", "--seed", "3", "--duration", "25", "--json"]
    assert main(args) == 0
    plain = capsys.readouterr()
    assert main([*args, "--progress", "10"]) == 0
    reported = capsys.readouterr()
    progress = [line for line in reported.err.splitlines() if line.startswith("progress:")]
    assert [line.split()[2] for line in progress] == ["t=10", "t=20"]
    assert all("false_positives=" in line and "peak_rss=" in line for line in progress)
    timing = ("wall_s", "cpu_ms_per_node_s")
    before, after = (json.loads(out.out.strip().splitlines()[-1]) for out in (plain, reported))
    assert {k: v for k, v in before.items() if k not in timing} == \
        {k: v for k, v in after.items() if k not in timing}


def test_cli_refuses_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--nodes", "10", "--scenario", "fail", "--loss", "1.5"])
    assert "--loss" in capsys.readouterr().err


class CountingDelegate:
    """A per-node delegate, as overlay/sim.py plugs the neighbor table in."""

    def __init__(self) -> None:
        self.merged = 0
        self.messages: list[bytes] = []

    def notify_user_msg(self, payload: bytes, now: float) -> None:
        self.messages.append(payload)

    def get_broadcasts(self, overhead: int, limit: int, to: str | None) -> list[bytes]:
        return []

    def gossip_targets(self, count: int) -> list[str]:
        return []

    def local_state(self, join: bool, to: str | None) -> list[bytes]:
        return [b"table"]

    def merge_remote_state(self, chunk: bytes, join: bool, now: float) -> None:
        self.merged += 1


def test_simulation_is_reusable_with_delegates_and_observers() -> None:
    delegates: dict[int, CountingDelegate] = {}

    def factory(index: int, name: str) -> CountingDelegate:
        delegates[index] = CountingDelegate()
        return delegates[index]

    seen: list[tuple[int, MembershipEvent]] = []
    sim = Simulation(30, seed=5, config=LAN, delegate_factory=factory, formed=29)
    sim.add_observer(lambda i, event, now: seen.append((i, event)))
    sim.at(1.0, lambda: sim.start_node(29, [0, 1, 2]))
    sim.run_until(3.0)
    assert sim.views_converged()
    assert sum(1 for _, e in seen if isinstance(e, MemberJoined)) == 29 + 29
    swim0 = sim.nodes[0].swim
    assert swim0 is not None
    swim0.broadcast_user(b"hello table", sim.now)
    sim.sync_node(0)
    sim.run_until(6.0)
    # the core sends a user broadcast retransmit_limit(n) times; spreading further is the
    # delegate's choice (as with memberlist/serf)
    reached = sum(b"hello table" in d.messages for i, d in delegates.items() if i != 0)
    assert 3 <= reached <= LAN.retransmit_limit(30)
    assert delegates[29].merged >= 1


def test_cli_without_a_scenario_runs_every_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--nodes", "8", "--seed", "2", "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    payload = json.loads(lines[-1])
    assert set(payload["scenarios"]) == {"join", "fail", "loss", "partition", "churn"}
    assert payload["scenarios"]["fail"]["detect_all_s"] is not None
    assert payload["scenarios"]["partition"]["converged_s"] is not None
    assert sum(line.startswith("scenario=") for line in lines) == 5
