"""The lab's process checks: an agent the `Lab` started is judged by its `Popen`, not by a
command-line match (which fails between fork and exec, when /proc shows the parent's)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from agent.lab.hosts import Lab, LabHost, LabState


def _lab_with_child(tmp_path: Path, argv: list[str]) -> tuple[Lab, LabState, LabHost]:
    lab = Lab(tmp_path / "lab", prefix="t15p")
    (tmp_path / "lab").mkdir()
    host = LabHost(name="h1", netns="t15ph1", address="10.77.0.11",
                   directory=str(tmp_path / "lab" / "h1"))
    state = LabState(prefix="t15p", switch="t15psw", hosts=[host])
    process = subprocess.Popen(argv)
    host.pid = process.pid
    lab._agents[process.pid] = process
    return lab, state, host


def test_a_started_agent_runs_though_its_command_line_lacks_the_config_path(
        tmp_path: Path) -> None:
    # The command line of this child never names the host's config: a command-line check
    # (what the lab did, racing with exec) would call it exited.
    lab, state, host = _lab_with_child(
        tmp_path, [sys.executable, "-c", "import time; time.sleep(30)"])
    assert str(host.config_path) not in Path(f"/proc/{host.pid}/cmdline").read_text()
    assert lab.agent_runs(host)
    assert lab.stop_agent(state, host, timeout=5) == -15  # SIGTERM, reaped, code returned
    assert host.pid is None
    assert not lab.agent_runs(host)


def test_an_exited_agent_is_seen_exited_and_its_code_kept(tmp_path: Path) -> None:
    lab, state, host = _lab_with_child(tmp_path, [sys.executable, "-c", "raise SystemExit(3)"])
    lab._agents[host.pid or 0].wait(10)
    assert not lab.agent_runs(host)
    assert lab.stop_agent(state, host) == 3


def test_waiting_for_an_exit_does_not_signal(tmp_path: Path) -> None:
    lab, state, host = _lab_with_child(
        tmp_path, [sys.executable, "-c", "import time; time.sleep(0.3); raise SystemExit(0)"])
    assert lab.wait_agent_exit(state, host, 10) == 0
    assert host.pid is None


def test_the_probe_stream_measures_its_longest_outage() -> None:
    from agent.lab.probe_stream import longest_loss_run

    assert longest_loss_run(10, set(range(10))) == 0
    assert longest_loss_run(10, {0, 1, 5, 9}) == 3
    assert longest_loss_run(4, set()) == 4
