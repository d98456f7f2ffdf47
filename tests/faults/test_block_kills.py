"""``policy: block`` under kill -9: any number of kills of a node loses at most what was in
flight to or inside each killed incarnation, and the report accounts for every record.

A block edge runs on credit (docs/runtime.md, "Delivery guarantees under kill -9"): a
producer sends one consumer incarnation records only while fewer than ``2 x queue`` it sent
are not reported taken, so each kill loses at most ``2 x queue - 1`` plus one coalesced batch in the
sockets of each edge it cuts, plus what the killed node had taken and not handled (or, for
the sink, handled after its last commit: a node commits after each turn, and a turn reads at
most ``read_batch`` from a socket), which the report counts as that node's ``lost``.
"""

from __future__ import annotations

import pytest

from .chain import HELD, WINDOW, N, edges_of, run_and_kill


@pytest.mark.parametrize(("victim", "kills"), [("mid", 1), ("mid", 2), ("mid", 3), ("src", 2), ("sink", 2),
                                              ("sink", 3)])
def test_kills_on_a_block_chain_lose_at_most_the_killed_incarnations_window(tmp_path, load, victim, kills):
    report, got = run_and_kill(tmp_path, "at-most-once", victim, kills)
    edges = edges_of(report)
    nodes = report["nodes"]
    for (src, dst), e in edges.items():
        assert e["received"] + e["lost"] == e["sent"], e  # the books balance on every edge
        assert e["dropped"] == 0, e  # block never drops: only kills lose
        if victim in (src, dst):
            assert e["lost"] <= kills * WINDOW, e  # each kill: at most the credit window in the sockets
        else:
            assert e["lost"] == 0, e
    for name, node in nodes.items():
        assert node["lost"] == 0 or name == victim, (name, node)
    assert nodes[victim]["lost"] <= kills * HELD, nodes[victim]  # each kill: at most a turn's read inside it
    # what the sink's file holds is exactly what the source emitted less what the report lost
    # (emitted, not sent: an emit a kill took before its outlet had it is the source's own loss)
    emitted = nodes["src"]["messages_out"]
    assert emitted - nodes["src"]["lost"] == edges[("src", "mid")]["sent"], (nodes, edges)
    lost = sum(e["lost"] for e in edges.values()) + sum(n["lost"] for n in nodes.values())
    assert len(got) == emitted - lost, (len(got), emitted, lost, edges, nodes)
    if victim == "src":  # a restarted source counts from its start again: the sink sees the repeat
        assert emitted > N and sorted(set(got)) == [float(i) for i in range(N)]
    else:  # nothing twice, in order
        assert emitted == N and got == sorted(set(got))
