"""The lab's one wait loop: the time a condition took, the caller's error at the deadline,
and errors the caller calls transient counted as "not yet"."""

from __future__ import annotations

import pytest

from agent.api.client import CliError
from agent.lab.hosts import Lab, LabError
from agent.lab.polling import poll_until
from agent.lab.vm import VmError


def test_a_condition_that_holds_returns_the_time_it_took() -> None:
    answers = iter([False, False, True])
    waited = poll_until(lambda: next(answers), "the third answer", timeout=5.0, interval=0.001,
                        error=LabError)
    assert 0.0 <= waited < 5.0
    assert next(answers, None) is None  # asked exactly three times


def test_the_deadline_raises_the_callers_error_naming_what_was_awaited() -> None:
    with pytest.raises(VmError, match=r"timed out after 0\.0 s waiting for ssh on node1"):
        poll_until(lambda: False, "ssh on node1", timeout=0.0, interval=0.001, error=VmError)


def test_a_transient_error_is_not_yet_and_any_other_escapes() -> None:
    calls: list[int] = []

    def flaky() -> bool:
        calls.append(1)
        if len(calls) < 3:
            raise CliError("agent not listening yet", 1)
        return True

    assert Lab.wait_for(flaky, "the API", timeout=5.0, interval=0.001) >= 0.0
    assert len(calls) == 3

    def broken() -> bool:
        raise ValueError("not a lab condition")

    with pytest.raises(ValueError):
        Lab.wait_for(broken, "the API", timeout=5.0, interval=0.001)
