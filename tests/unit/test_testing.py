"""dmnflow.testing.run_node: a node's behaviour without processes or sockets."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dmnflow.testing import run_node
from nodes.basic import Collect, Counter, Mean, Noise, Scale


def test_transform():
    out = run_node(Scale, params={"factor": 2, "offset": 1}, inputs=[("value", 1.0), ("value", 2.5)])
    assert out == {"scaled": [3.0, 6.0]}


def test_source_runs_to_its_end():
    assert run_node(Counter, params={"count": 4, "start": 10})["numbers"] == [10, 11, 12, 13]


def test_tensor_nodes():
    vectors = run_node(Noise, params={"count": 3, "size": 4, "seed": 1})["vectors"]
    assert [v.shape for v in vectors] == [(4,)] * 3 and vectors[0].dtype == np.float32
    means = run_node(Mean, inputs=[("vectors", v) for v in vectors])["mean"]
    assert means == pytest.approx([float(v.mean()) for v in vectors])


def test_setup_and_teardown_run(tmp_path):
    path = tmp_path / "out.jsonl"
    run_node(Collect, params={"path": str(path)}, inputs=[("values", 1), ("values", {"a": 2})])
    assert [json.loads(line) for line in path.read_text().splitlines()] == [1, {"a": 2}]


def test_mistakes_are_named():
    with pytest.raises(KeyError, match="no input 'vaule'"):
        run_node(Scale, inputs=[("vaule", 1.0)])
    with pytest.raises(ValueError, match="factor"):
        run_node(Scale, params={"factor": "big"})


def test_run_node_aligns_joined_inputs_by_event_time_and_hands_back_the_instance():
    from graphs.invalid.fixture_nodes import Pair

    node = Pair()
    out = run_node(Pair, join=["high", "low"], node=node,
                   inputs=[("high", 5.0, 1), ("high", 7.0, 2), ("low", 1.0, 1), ("low", 2.0, 2), ("high", 9.0, 3)])
    assert out["spread"] == [4.0, 5.0]  # event times 1 and 2; 3 never completes
    assert isinstance(node, Pair)


def test_a_plain_loop_source_timers_and_batches_run_as_in_a_graph():
    from dmnflow.testing import Tick
    from tests.integration.nodes import Feed, Subject

    fed = run_node(Feed, params={"count": 3})
    assert fed == {"value": [1.0, 2.0, 3.0], "x": [1.0, 2.0, 3.0], "y": [10.0, 20.0, 30.0], "label": ["t1", "t2", "t3"]}
    out = run_node(Subject, batch={"value": 2}, join=["x", "y"],
                   inputs=[("value", 1.0, 1), ("value", 2.0, 2), Tick("flush"), ("value", 3.0, 3),
                           ("x", 1.0, 1), ("y", 5.0, 1), ("label", "a", 7)])
    assert out["batches"] == [[2, 3.0, [1, 2], 2], [1, 3.0, [3], 3]]  # the last one when the input ends
    assert out["flushed"] == [3.0, 3.0]  # the tick, then teardown
    assert out["joined"] == [[1, 1.0, 5.0, 1]] and out["labels"] == [["A", 7, "label"]]


def test_run_node_names_a_missing_timer_or_batched_input_and_raises_the_nodes_own_error():
    from dmnflow.testing import Tick

    with pytest.raises(KeyError, match="no timer handler on_flush"):
        run_node(Scale, inputs=[Tick("flush")])
    with pytest.raises(KeyError, match="no input 'vaule'"):
        run_node(Scale, batch={"vaule": 2})
    with pytest.raises(TypeError):  # from the handler itself, not wrapped
        run_node(Scale, inputs=[("value", "text")])


def test_run_node_plans_a_node_as_a_yaml_graph_does(tmp_path):
    """Same resolver, same lowering: the plan run_node builds is the compiled one, connects and
    the YAML's line aside (a YAML input's default policy is drop, its tensor output's codec tensor)."""
    from dmnflow import compile_graph
    from dmnflow.testing import _node_plan

    graph = tmp_path / "g.yaml"
    graph.write_text("nodes:\n  noise: {uses: nodes.basic:Noise}\n  mean: {uses: nodes.basic:Mean, inputs: "
                     "{vectors: noise.vectors}}\n  sink: {uses: nodes.basic:Collect, inputs: {values: mean.mean}, "
                     f"params: {{path: {tmp_path}/out.jsonl}}}}\n")
    plans = {n.name: n for n in compile_graph(graph).nodes}
    for cls, name in ((Noise, "noise"), (Mean, "mean")):
        params = cls.Params.model_validate({})
        alone = _node_plan(cls, name, params, cls.ports(params), None, (), {}, {}).model_dump()
        compiled = plans[name].model_dump()
        for plan in (alone, compiled):
            plan["loc"] = None
            for inp in plan["inputs"]:
                inp["connects"] = []
            for out in plan["outputs"]:
                out["binds"] = []
        assert alone == compiled, name
    assert plans["mean"].inputs[0].policy == "drop" and plans["noise"].outputs[0].codec == "tensor"
