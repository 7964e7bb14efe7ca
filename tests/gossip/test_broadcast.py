"""The transmit-limited broadcast queue."""

from __future__ import annotations

from gossip.broadcast import BroadcastQueue, retransmit_limit


def test_retransmit_limit_formula() -> None:
    assert [retransmit_limit(4, n) for n in (1, 9, 10, 99, 100, 1000)] == [4, 4, 8, 8, 12, 16]


def test_each_broadcast_is_sent_exactly_the_limit() -> None:
    queue = BroadcastQueue(retransmit_mult=2)
    queue.queue(b"news", "n1")
    sent = 0
    while queue.take(0, 1400, cluster_size=10):
        sent += 1
    assert sent == retransmit_limit(2, 10) == 4
    assert len(queue) == 0


def test_newer_news_about_a_node_replaces_older() -> None:
    queue = BroadcastQueue(retransmit_mult=4)
    queue.queue(b"alive n1 inc 0", "n1")
    queue.take(0, 1400, 10)
    queue.queue(b"suspect n1 inc 0", "n1")
    queue.queue(b"user", None)
    queue.queue(b"user", None)
    assert len(queue) == 3
    assert queue.pending_for("n1") == b"suspect n1 inc 0"
    assert sorted(queue.take(0, 1400, 10)) == [b"suspect n1 inc 0", b"user", b"user"]


def test_fewest_transmissions_first_then_newest_within_the_limit() -> None:
    queue = BroadcastQueue(retransmit_mult=4)
    queue.queue(b"a" * 10, "a")
    assert queue.take(0, 1400, 10) == [b"a" * 10]
    queue.queue(b"b" * 10, "b")
    queue.queue(b"c" * 10, "c")
    # room for two: the two never sent, newest first
    assert queue.take(2, 24, 10) == [b"c" * 10, b"b" * 10]
    assert queue.take(2, 12, 10) == [b"c" * 10]  # all sent once now: newest first


def test_too_large_items_are_skipped_not_blocking() -> None:
    queue = BroadcastQueue(retransmit_mult=4)
    queue.queue(b"x" * 100, "big")
    queue.queue(b"y" * 5, "small")
    assert queue.take(0, 50, 10) == [b"y" * 5]


def test_the_queue_is_bounded() -> None:
    queue = BroadcastQueue(retransmit_mult=4, max_pending=8)
    for i in range(20):
        queue.queue(bytes([i]), f"n{i}")
    assert len(queue) == 8 and queue.dropped == 12


def test_news_never_goes_to_whoever_knows_it_nor_twice_to_one_member() -> None:
    queue = BroadcastQueue(retransmit_mult=2)
    queue.queue(b"alive n3", "n3", not_to=frozenset({"n3", "n0"}))  # n0 told us; n3 is it
    assert queue.take(0, 1400, cluster_size=5, to="n3") == []
    assert queue.take(0, 1400, cluster_size=5, to="n0") == []
    assert queue.take(0, 1400, cluster_size=5, to="n1") == [b"alive n3"]
    assert queue.take(0, 1400, cluster_size=5, to="n1") == []  # n1 has it now
    # the two passes over n1 and the refusals cost nothing: the second send goes to n2
    assert queue.take(0, 1400, cluster_size=5, to="n2") == [b"alive n3"]
    assert len(queue) == 0


def test_news_every_other_member_has_leaves_the_queue() -> None:
    queue = BroadcastQueue(retransmit_mult=4)  # a limit of 4 at n = 3: never reached here
    queue.queue(b"alive n2", "n2", not_to=frozenset({"n2"}))
    assert queue.take(0, 1400, cluster_size=3, to="n1") == [b"alive n2"]
    assert len(queue) == 0  # n1 and n2 (our two others) have it: nothing stays pending
    queue.queue(b"alive n2", "n2", not_to=frozenset({"n2", "n1"}))
    assert queue.take(0, 1400, cluster_size=3, to="n1") == []
    assert len(queue) == 0 and queue.pending_for("n2") is None
