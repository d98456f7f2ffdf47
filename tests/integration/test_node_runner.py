"""One NodeRunner: the same node, run in a graph by the worker and by dmnflow.testing.run_node,
gives the same outputs (batches, joins, timers, a plain-loop source and teardown emits included)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import dmnflow
from dmnflow.runtime import launch
from dmnflow.testing import Tick, run_node
from tests.integration.nodes import Feed, Subject

from .procs import ROOT

N = 403  # not a multiple of the batch size: the last batch goes out when its input ends


def test_the_worker_and_run_node_run_a_node_the_same_way(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    ports = ("batches", "joined", "flushed", "labels")
    sinks = "".join(f"\n  {port}_sink: {{uses: nodes.basic:Collect, inputs: {{values: subject.{port}}}, "
                    f"params: {{path: {tmp_path}/{port}.jsonl}}}}" for port in ports)
    graph = tmp_path / "runner.yaml"
    graph.write_text(textwrap.dedent(f"""
        defaults: {{policy: block}}
        nodes:
          feed: {{uses: tests.integration.nodes:Feed, params: {{count: {N}}}}}
          subject:
            uses: tests.integration.nodes:Subject
            inputs:
              value: {{from: feed.value, batch: {{max: 4, wait: 1h}}}}
              x: feed.x
              y: feed.y
              label: feed.label
            join: {{inputs: [x, y]}}
            timers: {{flush: 2ms}}""").rstrip() + sinks + "\n")
    report = launch(dmnflow.compile_graph(graph))
    assert report.status == "finished", report.errors
    in_graph = {port: [json.loads(line) for line in Path(tmp_path, f"{port}.jsonl").read_text().splitlines()]
                for port in ports}

    fed = run_node(Feed, params={"count": N})  # the plain-loop source, on its own
    assert fed["value"] == [float(t) for t in range(1, N + 1)] and fed["label"][-1] == f"t{N}"
    inputs: list = []
    for t in range(1, N + 1):
        inputs += [("value", float(t), t), ("x", float(t), t), ("y", 10.0 * t, t), ("label", f"t{t}", t)]
        if t % 50 == 0:
            inputs.append(Tick("flush"))
    alone = run_node(Subject, inputs=inputs, join=["x", "y"], batch={"value": 4})

    assert len(alone["batches"]) == -(-N // 4) and alone["batches"][-1][0] == N % 4
    assert alone["batches"][0] == [4, 10.0, [1, 2, 3, 4], 4]
    assert alone["joined"][:2] == [[1, 1.0, 10.0, 1], [2, 2.0, 20.0, 2]]
    for port in ("batches", "joined", "labels"):
        assert in_graph[port] == alone[port], port
    # when a timer fires depends on the clock; what it flushes in all does not
    assert len(alone["flushed"]) == N // 50 + 1
    assert sum(in_graph["flushed"]) == sum(alone["flushed"]) == N * (N + 1) / 2
    assert report.nodes["subject"].join_incomplete == 0
