"""``delivery: at-least-once`` under kill -9: the sink's file holds every record exactly once,
in order, whichever node is killed, and the books balance on every edge.

A restarted node drops what its previous incarnation handled (its position per edge outlives
it, in its counters file), emits again under the same sequence numbers what it makes of the
records that come again (so its consumers drop what they already have), and the sink says a
record is handled only after its commit (Collect: write, flush, fsync).
"""

from __future__ import annotations

import pytest

from .chain import WINDOW, N, edges_of, run_and_kill


@pytest.mark.parametrize(("victim", "kills"), [("src", 1), ("mid", 1), ("mid", 2), ("sink", 1), ("sink", 2)])
def test_a_killed_node_puts_no_duplicate_and_no_gap_at_the_sink(tmp_path, load, victim, kills):
    report, got = run_and_kill(tmp_path, "at-least-once", victim, kills)
    assert got == [float(i) for i in range(N)]  # every record exactly once, in order
    edges = edges_of(report)
    for (src, dst), e in edges.items():
        # sent and received count sequence numbers, each once, over every incarnation of both ends
        assert e["sent"] == e["received"] == N and e["lost"] == 0 and e["dropped"] == 0, e
        # copies: what went again is what came again, but for copies a kill took from the sockets
        # (each kill: at most the credit window)
        assert 0 <= e["resent"] - e["redelivered"] <= kills * WINDOW, e
        if victim not in (src, dst):
            assert e["resent"] == e["redelivered"] == 0, e
    assert all(n["lost"] == 0 for n in report["nodes"].values()), report["nodes"]
    if victim != "sink":  # what came again was dropped before the node: it handled each record once
        assert report["nodes"]["sink"]["messages_in"] == N
