"""A commit is one transaction: a kill -9 at any instant inside it leaves either the state
before it or the one after it, never a mix (the file's length, the records counted
committed, an at-least-once input's `done`), and a restarted ``Collect`` cuts its file back
to the mark that held, so its file never holds a record twice or one the books call lost."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from dmnflow.compiler import compile_graph
from dmnflow.errors import NodeError
from dmnflow.runtime.files import layout_of
from dmnflow.runtime.node_runner import NodeRunner
from dmnflow.runtime.report import Incarnation, build_report
from dmnflow.runtime.worker import carried
from dmnflow.transport.stats import N_COMMITTED, N_IN, POS_DONE, POS_DONE_PREV, Counters
from nodes.basic import Collect


class Killed(BaseException):
    """What a kill -9 does to the code after it: nothing more runs (a BaseException, so no handler takes it)."""


KILL_AT = ["before the write", "after the write", "inside done", "never"]  # inside done: after the count


class Killable(Collect):
    """A Collect that dies at ``kill_at`` inside its commit."""

    kill_at = "never"

    def commit(self, ctx: Any) -> int | None:
        if self.kill_at == "before the write":
            raise Killed
        mark = super().commit(ctx)
        if self.kill_at == "after the write":
            raise Killed
        return mark


class FakeInlet:
    """The two stores an at-least-once inlet makes in a commit, on the real counters."""

    def __init__(self, mv: memoryview, base: int, die: bool) -> None:
        self.mv, self.base, self.die = mv, base, die
        self.done_pending: dict[int, int] = {}

    def keep_prev(self) -> None:
        self.mv[self.base + POS_DONE_PREV] = self.mv[self.base + POS_DONE]

    def keep_done(self) -> None:
        for seq in self.done_pending.values():
            self.mv[self.base + POS_DONE] = seq + 1
            if self.die:
                raise Killed
        self.done_pending = {}


def plan_of(tmp_path: Path, delivery: str) -> Any:
    graph = tmp_path / "g.yaml"
    graph.write_text(textwrap.dedent(f"""
        graph: commit
        defaults: {{policy: block, delivery: {delivery}}}
        nodes:
          src: {{uses: nodes.basic:Counter, params: {{count: 10}}}}
          sink: {{uses: nodes.basic:Collect, params: {{path: {tmp_path}/out.jsonl}}, inputs: {{values: src.numbers}}}}
        """))
    return compile_graph(graph, models=False)


def incarnation(plan: Any, tmp_path: Path, inc: int, initial: list[int] | None, kill_at: str = "never"
                ) -> tuple[NodeRunner, FakeInlet]:
    layout = layout_of(plan)
    counters = Counters(layout, tmp_path / f"c{inc}", initial=initial)
    cls = type("K", (Killable,), {"kill_at": kill_at})
    runner = NodeRunner(plan.node("sink"), sink_index(plan), counters, cls=cls, incarnation=inc)
    inlet = FakeInlet(counters.mv, layout.edge(0), die=kill_at == "inside done")
    if plan.edges[0].delivery == "at-least-once" or kill_at == "inside done":  # (the last store but one)
        runner.alo_inlets = {"values": inlet}  # type: ignore[dict-item]
    runner.setup()
    return runner, inlet


def sink_index(plan: Any) -> int:
    return [n.name for n in plan.nodes].index("sink")


def handle(runner: NodeRunner, inlet: FakeInlet, seqs: range) -> None:
    for seq in seqs:
        runner.node.on_values(float(seq), runner.ctx)
        runner.mv[runner.nbase + N_IN] += 1
        inlet.done_pending[0] = seq


@pytest.mark.parametrize(("delivery", "kill_at"), [(d, k) for d in ("at-least-once", "at-most-once")
                                                     for k in KILL_AT])
def test_a_kill_anywhere_in_a_commit_leaves_the_file_and_the_books_agreeing(tmp_path: Path, delivery: str,
                                                                           kill_at: str) -> None:
    plan = plan_of(tmp_path, delivery)
    layout = layout_of(plan)
    first, inlet = incarnation(plan, tmp_path, 0, None, kill_at if kill_at == "inside done" else "never")
    inlet.die = False
    handle(first, inlet, range(0, 4))
    first.commit()  # a commit that holds: 0-3
    type(first.node).kill_at = kill_at  # the next one is killed at kill_at
    inlet.die = kill_at == "inside done"
    handle(first, inlet, range(4, 7))
    if kill_at == "never":
        first.commit()
    else:
        with pytest.raises(Killed):
            first.commit()
    held = kill_at == "never"
    before = Counters.read(tmp_path / "c0", layout)
    assert before is not None
    second, inlet2 = incarnation(plan, tmp_path, 1, carried(plan, layout, before))
    if delivery == "at-least-once":  # the producer sends again what came after the `done` that held
        done = second.mv[layout.edge(0) + POS_DONE]
        assert done == (7 if held else 4)
        handle(second, inlet2, range(done, 10))
    else:  # what the killed one handled is gone; the stream goes on
        handle(second, inlet2, range(7, 10))
    second.teardown()
    values = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    report = build_report(plan, layout, {"sink": Proc(before)}, "finished", 0, 1.0, 0.0, [])
    if delivery == "at-least-once":
        assert values == [float(i) for i in range(10)]  # every record once, in order
        assert report.nodes["sink"].lost == 0
    else:  # exactly what the report counts as lost by the sink is missing from its file
        assert values == [float(i) for i in range(10) if held or not 4 <= i < 7]
        assert report.nodes["sink"].lost == (0 if held else 3)
        # (killed after its count was kept, the commit still did not hold: the report goes back too)
        assert before[layout.node(sink_index(plan)) + N_COMMITTED] == (7 if held or kill_at == "inside done" else 4)


class Proc:
    """What build_report reads of a process: one killed incarnation of the sink."""

    def __init__(self, counts: list[int]) -> None:
        self.nodes, self.restarts, self.state, self.host = ["sink"], 1, "running", ""
        self.incarnations = [Incarnation(counts, {}, killed=True)]


def test_a_commit_that_returns_what_is_not_a_mark_is_the_node_s_error(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, "at-most-once")

    class Bad(Collect):
        def commit(self, ctx: Any) -> Any:
            return "done"

    runner = NodeRunner(plan.node("sink"), sink_index(plan), Counters(layout_of(plan)), cls=Bad)
    runner.setup()
    runner.node.on_values(1.0, runner.ctx)
    runner.mv[runner.nbase + N_IN] += 1
    with pytest.raises(NodeError, match="commit returned 'done': a commit returns None or an int >= 0"):
        runner.commit()
