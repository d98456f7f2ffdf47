"""Event-time alignment in the worker: complete event times in order; incomplete ones counted."""

from __future__ import annotations

import time

from dmnflow.runtime.worker import _Join


def test_releases_complete_event_times_in_order_whatever_the_arrival_order():
    join = _Join(["a", "b"], None)
    assert join.add("a", 2, "a2") == []
    assert join.add("a", 1, "a1") == []
    assert join.add("b", 1, "b1") == [(1, {"a": "a1", "b": "b1"})]
    assert join.add("b", 2, "b2") == [(2, {"a": "a2", "b": "b2"})]
    assert join.incomplete == 0


def test_an_input_that_moved_past_an_event_time_gives_it_up():
    join = _Join(["a", "b"], None)
    join.add("a", 1, "a1")
    assert join.add("b", 2, "b2") == []  # b skipped 1: event time 1 cannot complete
    assert join.add("a", 2, "a2") == [(2, {"a": "a2", "b": "b2"})]
    assert join.incomplete == 1


def test_an_ended_input_and_the_final_flush_give_up_what_waits_for_it():
    join = _Join(["a", "b"], None)
    join.add("a", 5, "a5")
    join.ended.add("b")
    assert join.release() == [] and join.incomplete == 1
    join.add("a", 6, "a6")
    assert join.release(final=True) == [] and join.incomplete == 2


def test_timeout_gives_up_late_event_times():
    join = _Join(["a", "b"], 0.01)
    join.add("a", 1, "a1")
    assert join.release() == []
    time.sleep(0.02)
    assert join.release() == [] and join.incomplete == 1
