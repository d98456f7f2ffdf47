"""Event-time alignment in the worker: complete event times in order; incomplete ones counted."""

from __future__ import annotations

import time

from dmnflow.runtime.node_runner import Join


def test_releases_complete_event_times_in_order_whatever_the_arrival_order():
    join = Join(["a", "b"], None)
    assert join.add("a", 0, 2, "a2") == []
    assert join.add("a", 0, 1, "a1") == []
    assert join.add("b", 0, 1, "b1") == [(1, {"a": "a1", "b": "b1"})]
    assert join.add("b", 0, 2, "b2") == [(2, {"a": "a2", "b": "b2"})]
    assert join.incomplete == 0


def test_an_input_that_moved_past_an_event_time_gives_it_up():
    join = Join(["a", "b"], None)
    join.add("a", 0, 1, "a1")
    assert join.add("b", 0, 2, "b2") == []  # b skipped 1: event time 1 cannot complete
    assert join.add("a", 0, 2, "a2") == [(2, {"a": "a2", "b": "b2"})]
    assert join.incomplete == 1


def test_an_ended_input_and_the_final_flush_give_up_what_waits_for_it():
    join = Join(["a", "b"], None)
    join.add("a", 0, 5, "a5")
    join.ended.add("b")
    assert join.release() == [] and join.incomplete == 1
    join.add("a", 0, 6, "a6")
    assert join.release(final=True) == [] and join.incomplete == 2


def test_timeout_gives_up_late_event_times():
    join = Join(["a", "b"], 0.01)
    join.add("a", 0, 1, "a1")
    assert join.release() == []
    time.sleep(0.02)
    assert join.release() == [] and join.incomplete == 1


def test_an_input_fed_by_two_producers_moves_past_a_time_only_when_both_have():
    """Replicas sharing the work feed one input; each producer's own stream is in order."""
    join = Join(["x", "s"], None)
    join.producers["x"] = {10, 11}
    for t in (1, 2, 3):
        join.add("s", 0, t, f"s{t}")
    assert join.add("x", 11, 2, "x2") == []  # replica 11 is at 2; replica 10 may still bring 1
    assert join.add("x", 10, 1, "x1") == [(1, {"x": "x1", "s": "s1"}), (2, {"x": "x2", "s": "s2"})]
    assert join.add("x", 11, 4, "x4") == []  # 3 may still come from replica 10
    assert join.add("x", 10, 5, "x5") == []  # now neither can bring 3: it is given up
    assert join.incomplete == 1
