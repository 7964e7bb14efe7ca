"""overlay.liveness: verdicts about failed members' hosts, driven by time and probe answers."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from gossip.swim import Member, MemberFailed, MemberJoined, MemberSuspected
from overlay.dissemination import TableDelegate
from overlay.liveness import (
    HostLiveness,
    HostVerdict,
    LivenessConfig,
    LivenessError,
    VerdictChanged,
)
from overlay.table import EndpointChanged, NeighborTable, OwnerStatus

CONFIG = LivenessConfig(grace=60.0, probe_interval=0.5, host_timeout=2.0)
RTT = 0.001


class Hosts:
    """Drives a core like the shell does: timers at their deadline, probes answered after
    RTT while `up(vtep, now)` says the host forwards."""

    def __init__(self, core: HostLiveness, up: Callable[[str, float], bool]) -> None:
        self.core = core
        self.up = up
        self.now = 0.0
        self.sent: list[tuple[float, str]] = []
        self._answers: list[tuple[float, str]] = []
        self.events: list[tuple[float, VerdictChanged]] = []

    def run_until(self, end: float) -> None:
        for _ in range(100_000):
            answer_at = min((t for t, _ in self._answers), default=math.inf)
            when = min(self.core.next_deadline(), answer_at)
            if when > end:
                break
            self.now = max(self.now, when)
            if answer_at <= self.now:
                due = [a for a in self._answers if a[0] <= self.now]
                self._answers = [a for a in self._answers if a[0] > self.now]
                for _, vtep in due:
                    self.core.probe_answered(vtep, self.now)
            else:
                self.core.handle_timeout(self.now)
            self._collect()
        self.now = end
        self._collect()

    def _collect(self) -> None:
        for vtep in self.core.probes_to_send():
            self.sent.append((self.now, vtep))
            if self.up(vtep, self.now):
                self._answers.append((self.now + RTT, vtep))
        while (event := self.core.next_event()) is not None:
            self.events.append((self.now, event))

    def verdicts(self) -> list[HostVerdict]:
        return [e.current for _, e in self.events]


def test_a_failed_agent_on_a_forwarding_host_is_kept_as_agent_down() -> None:
    core = HostLiveness(CONFIG)
    hosts = Hosts(core, lambda vtep, now: True)
    core.member_suspected("b", "10.0.0.2", 0.0)
    hosts.run_until(5.0)
    assert hosts.events == []  # suspicion only: nothing for the table
    assert [t for t, _ in hosts.sent] == [0.5 * i for i in range(11)]  # at once, then every 0.5
    core.member_failed("b", "10.0.0.2", 5.0)
    hosts._collect()
    assert hosts.verdicts() == [HostVerdict.AGENT_DOWN]
    assert hosts.events[0][1].reason == "host answers"
    assert core.kept() == {"b": "10.0.0.2"}
    hosts.run_until(50.0)
    assert hosts.verdicts() == [HostVerdict.AGENT_DOWN]  # still answering: still kept


def test_a_host_silent_through_the_suspicion_is_withdrawn_on_failure() -> None:
    core = HostLiveness(CONFIG)
    hosts = Hosts(core, lambda vtep, now: False)  # cut off: agent alive or not, no answer
    core.member_suspected("b", "10.0.0.2", 0.0)
    hosts.run_until(4.0)
    core.member_failed("b", "10.0.0.2", 4.0)
    hosts._collect()
    assert hosts.verdicts() == [HostVerdict.WITHDRAWN]
    assert hosts.events[0] == (4.0, VerdictChanged("b", "10.0.0.2", HostVerdict.SUSPECT,
                                                   HostVerdict.WITHDRAWN, "host silent"))
    sent = len(hosts.sent)
    hosts.run_until(30.0)
    assert len(hosts.sent) == sent  # withdrawn: no more probes
    assert core.next_deadline() == math.inf


def test_a_failure_without_suspicion_checks_for_host_timeout_then_decides() -> None:
    for up, verdicts, decided_at in ((True, [HostVerdict.CHECKING, HostVerdict.AGENT_DOWN], RTT),
                                     (False, [HostVerdict.CHECKING, HostVerdict.WITHDRAWN], 2.0)):
        core = HostLiveness(CONFIG)
        hosts = Hosts(core, lambda vtep, now, up=up: up)
        core.member_failed("b", "10.0.0.2", 0.0)
        hosts._collect()
        assert core.kept() == {"b": "10.0.0.2"}  # kept while checking
        hosts.run_until(10.0)
        assert hosts.verdicts() == verdicts
        assert hosts.events[-1][0] == pytest.approx(decided_at)


def test_an_agent_down_host_that_stops_answering_is_withdrawn_host_timeout_later() -> None:
    core = HostLiveness(CONFIG)
    hosts = Hosts(core, lambda vtep, now: now < 20.0)  # the host dies at 20 s
    core.member_suspected("b", "10.0.0.2", 0.0)
    hosts.run_until(3.0)
    core.member_failed("b", "10.0.0.2", 3.0)
    hosts.run_until(40.0)
    assert hosts.verdicts() == [HostVerdict.AGENT_DOWN, HostVerdict.WITHDRAWN]
    withdrawn_at, event = hosts.events[-1]
    last_answer = max(t for t, _ in hosts.sent if t < 20.0) + RTT
    assert withdrawn_at == pytest.approx(last_answer + CONFIG.host_timeout)
    assert event.reason == "host silent"
    assert core.statistics().kept_then_withdrawn == 1


def test_the_grace_ends_keeping() -> None:
    core = HostLiveness(LivenessConfig(grace=30.0, probe_interval=0.5, host_timeout=2.0))
    hosts = Hosts(core, lambda vtep, now: True)
    core.member_failed("b", "10.0.0.2", 1.0)
    hosts.run_until(100.0)
    assert hosts.verdicts() == [HostVerdict.CHECKING, HostVerdict.AGENT_DOWN,
                                HostVerdict.WITHDRAWN]
    assert hosts.events[-1][0] == pytest.approx(31.0)
    assert hosts.events[-1][1].reason == "grace over"
    assert core.statistics().grace_expired == 1


def test_grace_zero_withdraws_at_once_and_probes_nothing() -> None:
    core = HostLiveness(LivenessConfig(grace=0.0))
    hosts = Hosts(core, lambda vtep, now: True)
    core.member_suspected("b", "10.0.0.2", 0.0)
    core.member_failed("b", "10.0.0.2", 5.0)
    hosts.run_until(20.0)
    assert hosts.verdicts() == [HostVerdict.WITHDRAWN]
    assert hosts.events[0][1].reason == "grace off"
    assert hosts.sent == []


def test_the_agent_coming_back_ends_probing_and_a_new_episode_starts_fresh() -> None:
    core = HostLiveness(CONFIG)
    hosts = Hosts(core, lambda vtep, now: True)
    core.member_failed("b", "10.0.0.2", 0.0)
    hosts.run_until(5.0)
    core.member_alive("b")
    assert core.verdict("b") is None and core.kept() == {}
    sent = len(hosts.sent)
    hosts.run_until(20.0)
    assert len(hosts.sent) == sent
    # Answers from before a new episode prove nothing: it checks again.
    core.member_failed("b", "10.0.0.2", 20.0)
    assert core.verdict("b") is HostVerdict.CHECKING


def test_answers_from_addresses_not_probed_are_counted_and_ignored() -> None:
    core = HostLiveness(CONFIG)
    core.member_failed("b", "10.0.0.2", 0.0)
    core.probe_answered("10.0.0.9", 0.1)
    assert core.verdict("b") is HostVerdict.CHECKING
    assert core.statistics().answers_unmatched == 1


def test_timers_stay_bounded_while_a_host_is_kept() -> None:
    core = HostLiveness(CONFIG)
    hosts = Hosts(core, lambda vtep, now: True)
    core.member_failed("b", "10.0.0.2", 0.0)
    hosts.run_until(55.0)
    assert len(core._timers) <= 3


@pytest.mark.parametrize(("fields", "message"), [
    ({"grace": -1.0}, "grace"), ({"probe_interval": 0.0}, "probe_interval"),
    ({"host_timeout": 0.25}, "host_timeout"), ({"grace": math.inf}, "grace")])
def test_bad_settings_name_the_field(fields: dict[str, float], message: str) -> None:
    with pytest.raises(LivenessError, match=message):
        LivenessConfig(**fields)


# -- the neighbor table's side -----------------------------------------------------------


def _table_with_peer() -> NeighborTable:
    table = NeighborTable("a", "10.0.0.1")
    table.join_network("blue", 0.0)
    table.member_alive("b", ("10.0.0.2", 7946), 0.0)
    for ip in ("10.9.0.2", "10.9.0.3"):
        peer = NeighborTable("b", "10.0.0.2")
        peer.join_network("blue", 0.0)
        entry = peer.put_endpoint("blue", ip, "02:42:0a:09:00:02", 0.0)
        table.merge(entry, 0.0)
    while table.next_event() is not None:
        pass
    return table


def test_an_agent_down_owner_keeps_its_entries_visible_and_its_return_changes_nothing(
        ) -> None:
    table = _table_with_peer()
    table.member_agent_down("b", 1.0)
    assert table.owner_status("b") is OwnerStatus.AGENT_DOWN
    assert {e.ip for e in table.endpoints("blue") if e.owner == "b"} == {"10.9.0.2", "10.9.0.3"}
    assert table.next_event() is None
    assert table.statistics().agent_down_owners == 1
    table.handle_timeout(10_000.0)  # no failed_grace runs for a kept owner
    assert len(table.endpoints("blue")) == 2
    table.member_alive("b", ("10.0.0.2", 7946), 10_001.0)
    assert table.owner_status("b") is OwnerStatus.ALIVE
    assert table.next_event() is None


def test_an_agent_down_owner_whose_host_goes_silent_is_withdrawn() -> None:
    table = _table_with_peer()
    table.member_agent_down("b", 1.0)
    table.member_failed("b", 5.0)
    events = []
    while (event := table.next_event()) is not None:
        events.append(event)
    withdrawn = [e for e in events if isinstance(e, EndpointChanged) and e.current is None]
    assert {e.ip for e in withdrawn} == {"10.9.0.2", "10.9.0.3"}
    assert table.owner_status("b") is OwnerStatus.FAILED
    table.member_agent_down("b", 6.0)  # too late: a failed owner is not brought back by this
    assert table.owner_status("b") is OwnerStatus.FAILED


# -- the delegate maps membership events through liveness onto the table ------------------


def _delegate_with_peer() -> tuple[TableDelegate, Member]:
    from gossip.wire import MemberState

    table = _table_with_peer()
    member = Member("b", ("10.0.0.2", 7946), b"", MemberState.ALIVE, 1)
    delegate = TableDelegate(table, now=0.0, liveness=HostLiveness(CONFIG),
                             vtep_of=lambda m: "10.0.0.2" if m.name == "b" else None)
    return delegate, member


def test_the_delegate_keeps_a_failed_member_whose_host_answers_and_clears_it_on_return(
        ) -> None:
    delegate, member = _delegate_with_peer()
    liveness = delegate.liveness
    assert liveness is not None
    assert delegate.member_event(MemberSuspected(member), 1.0) == []
    liveness.handle_timeout(1.0)
    assert liveness.probes_to_send() == ["10.0.0.2"]
    liveness.probe_answered("10.0.0.2", 1.01)
    changes = delegate.member_event(MemberFailed(member), 2.5)  # answered 1.49 s ago
    assert [c.current for c in changes] == [HostVerdict.AGENT_DOWN]
    assert delegate.table.owner_status("b") is OwnerStatus.AGENT_DOWN
    assert len(delegate.table.endpoints("blue")) == 2
    delegate.member_event(MemberJoined(member), 9.0)
    assert delegate.table.owner_status("b") is OwnerStatus.ALIVE
    assert liveness.verdict("b") is None


def test_the_delegate_withdraws_a_failed_member_whose_host_is_silent() -> None:
    delegate, member = _delegate_with_peer()
    delegate.member_event(MemberSuspected(member), 1.0)
    changes = delegate.member_event(MemberFailed(member), 6.0)  # probed 5 s, never answered
    assert [(c.current, c.reason) for c in changes] == [(HostVerdict.WITHDRAWN, "host silent")]
    assert delegate.table.owner_status("b") is OwnerStatus.FAILED
    assert delegate.table.endpoints("blue") == []


def test_without_liveness_a_failed_member_is_withdrawn_at_once() -> None:
    table = _table_with_peer()
    delegate = TableDelegate(table, now=0.0)
    from gossip.wire import MemberState

    delegate.member_event(MemberFailed(Member("b", ("10.0.0.2", 7946), b"",
                                              MemberState.DEAD, 1)), 1.0)
    assert table.endpoints("blue") == []
