"""How often the agent looks at its seeds again (agent.runtime.gossip_link.seed_refresh_after)."""

from __future__ import annotations

from agent.runtime.gossip_link import (
    SEED_REFRESH_MAX,
    SEED_REFRESH_MIN,
    SEED_RETRY,
    seed_refresh_after,
)


def test_every_second_until_a_peer_answered() -> None:
    assert seed_refresh_after(SEED_REFRESH_MAX, synced=False, joined_someone=True) == SEED_RETRY
    assert seed_refresh_after(SEED_RETRY, synced=False, joined_someone=False) == SEED_RETRY


def test_an_idle_member_backs_off_to_the_maximum_and_a_join_brings_it_back() -> None:
    pause, pauses = SEED_RETRY, []
    for _ in range(6):
        pause = seed_refresh_after(pause, synced=True, joined_someone=False)
        pauses.append(pause)
    assert pauses == [SEED_REFRESH_MIN, 10.0, 20.0, SEED_REFRESH_MAX, SEED_REFRESH_MAX,
                      SEED_REFRESH_MAX]
    # The registry named a node we do not see alive (a group that started apart): soon again.
    assert seed_refresh_after(pause, synced=True, joined_someone=True) == SEED_REFRESH_MIN
