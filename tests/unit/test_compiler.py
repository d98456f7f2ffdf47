"""Compiling graphs into plans: topology, sockets, replicas, groups, pins, and the errors."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

import dmnflow
from dmnflow import CompileError, Plan, SpecError, Tensor
from dmnflow.node import check_types


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


CHAIN = """
    graph: chain
    nodes:
      sink: {uses: nodes.basic:Collect, inputs: {values: b.scaled}, layer: out}
      b: {uses: nodes.basic:Scale, inputs: {value: a.scaled}, params: {factor: 3}}
      a: {uses: nodes.basic:Scale, inputs: {value: src.numbers}}
      src: {uses: nodes.basic:Counter, params: {count: 10}}
    """


def test_plan_is_topological_and_round_trips_through_json(tmp_path):
    plan = dmnflow.compile_graph(write(tmp_path / "g.yaml", CHAIN), machine_cpus=[0, 1])
    assert plan.order == ["src", "a", "b", "sink"]
    assert plan.graph == "chain" and plan.machine_cpus == [0, 1]
    assert [(e.src, e.dst) for e in plan.edges] == [("src", "a"), ("a", "b"), ("b", "sink")]
    assert plan.node("b").params == {"factor": 3.0, "offset": 0.0}
    assert plan.node("src").source and not plan.node("a").source
    assert Plan.from_json(plan.to_json()) == plan


def test_every_edge_has_a_bind_and_a_matching_connect(tmp_path):
    plan = dmnflow.compile_graph(write(tmp_path / "g.yaml", CHAIN))
    for edge in plan.edges:
        assert edge.transport == "ipc" and edge.pattern == "pub" and edge.codec == "msgpack"
        assert edge.endpoint.startswith("ipc://{run_dir}/")
        [out] = [o for o in plan.node(edge.src).outputs if o.port == edge.src_port]
        assert any(edge.id in b.edges and b.endpoint == edge.endpoint for b in out.binds)
        [inp] = [i for i in plan.node(edge.dst).inputs if i.port == edge.dst_port]
        assert [(c.edge, c.endpoint) for c in inp.connects] == [(edge.id, edge.endpoint)]
    assert len({e.endpoint for e in plan.edges}) == len(plan.edges)


def test_groups_share_a_process_and_talk_inproc(tmp_path):
    g = write(tmp_path / "g.yaml", """
        nodes:
          src: {uses: nodes.basic:Counter, group: front, cpus: 0}
          a: {uses: nodes.basic:Scale, inputs: {value: src.numbers}, group: front, cpus: 1}
          sink: {uses: nodes.basic:Collect, inputs: {values: [a.scaled, src.numbers]}}
        """)
    plan = dmnflow.compile_graph(g, machine_cpus=[0, 1])
    procs = {p.name: p for p in plan.processes}
    assert procs["front"].nodes == ["src", "a"] and procs["front"].cpus == [0, 1]
    assert procs["sink"].nodes == ["sink"]
    kinds = {(e.src, e.dst): e.transport for e in plan.edges}
    assert kinds == {("src", "a"): "inproc", ("src", "sink"): "ipc", ("a", "sink"): "ipc"}
    # one output, two transports: two PUB binds
    [numbers] = plan.node("src").outputs
    assert sorted(b.transport for b in numbers.binds) == ["inproc", "ipc"]


def test_fixed_tcp_port_and_block_policy(tmp_path):
    g = write(tmp_path / "g.yaml", """
        defaults: {queue: 50}
        nodes:
          src:
            uses: nodes.basic:Counter
            outputs: {numbers: {port: 5601, send_limit: 10}}
          live: {uses: nodes.basic:Collect, inputs: {values: src.numbers}}
          careful:
            uses: nodes.basic:Collect
            inputs: {values: {from: src.numbers, policy: block, queue: 7}}
        """)
    plan = dmnflow.compile_graph(g)
    [out] = plan.node("src").outputs
    [bind] = out.binds  # the fixed port carries every edge of the output, whatever its policy
    assert (bind.pattern, bind.endpoint, sorted(bind.edges)) == ("stream", "tcp://127.0.0.1:5601", [0, 1])
    assert bind.hwm == 2 * 50 + 64  # twice the largest consumer queue (its credit), and some
    edges = {e.dst: e for e in plan.edges}
    assert (edges["live"].pattern, edges["live"].policy, edges["live"].queue) == ("stream", "drop", 50)
    assert (edges["careful"].pattern, edges["careful"].policy, edges["careful"].queue) == ("stream", "block", 7)
    assert edges["live"].bind == edges["careful"].bind == bind.id


def test_unconsumed_output_with_fixed_port_still_binds_and_draws_no_warning(tmp_path):
    g = write(tmp_path / "g.yaml", """
        nodes:
          src: {uses: nodes.basic:Counter, outputs: {numbers: {port: 5602}}}
        """)
    assert dmnflow.validate(g) == []
    [out] = dmnflow.compile_graph(g).node("src").outputs
    assert [b.endpoint for b in out.binds] == ["tcp://127.0.0.1:5602"]


def test_replicas_share_or_broadcast(tmp_path):
    g = write(tmp_path / "g.yaml", """
        nodes:
          src: {uses: nodes.basic:Counter}
          work: {uses: nodes.basic:Scale, inputs: {value: src.numbers}, replicas: 3}
          echo: {uses: nodes.basic:Scale, inputs: {value: src.numbers}, replicas: 2, dispatch: broadcast}
          sink: {uses: nodes.basic:Collect, inputs: {values: [work.scaled, "echo[1].scaled"]}}
        """)
    plan = dmnflow.compile_graph(g)
    assert [n.name for n in plan.nodes if n.spec_name == "work"] == ["work[0]", "work[1]", "work[2]"]
    assert plan.node("work[2]").replica == 2 and plan.node("work[2]").replicas == 3
    [out] = plan.node("src").outputs
    push = [b for b in out.binds if b.pattern == "push"]
    pub = [b for b in out.binds if b.pattern == "pub"]
    assert len(push) == 1 and len(push[0].edges) == 3  # one PUSH spreads the load over the replicas
    assert len(pub) == 1 and len(pub[0].edges) == 2  # broadcast replicas subscribe
    [sink_in] = plan.node("sink").inputs
    assert sorted(c.node for c in sink_in.connects) == ["echo[1]", "work[0]", "work[1]", "work[2]"]


def test_feedback_input_allows_a_loop(tmp_path):
    g = write(tmp_path / "g.yaml", """
        nodes:
          src: {uses: nodes.basic:Counter}
          loop:
            uses: tests.unit.test_compiler:Adder
            inputs: {a: src.numbers, b: {from: loop.total, feedback: true}}
        """)
    plan = dmnflow.compile_graph(g)
    [loop_edge] = [e for e in plan.edges if e.src == "loop"]
    assert loop_edge.feedback and loop_edge.dst == "loop"


def test_a_loop_without_feedback_is_an_error_naming_the_nodes(tmp_path):
    g = write(tmp_path / "g.yaml", """
        nodes:
          a: {uses: nodes.basic:Scale, inputs: {value: c.scaled}}
          b: {uses: nodes.basic:Scale, inputs: {value: a.scaled}}
          c: {uses: nodes.basic:Scale, inputs: {value: b.scaled}}
        """)
    [issue] = dmnflow.validate(g)
    assert issue.code == "cycle" and "a -> b -> c -> a" in issue.message
    assert issue.loc.line in (2, 3, 4) and "feedback: true" in issue.hint


class Adder(dmnflow.Node):
    """Adds its two inputs; its sum may feed back into ``b``."""

    a = dmnflow.Input(float)
    b = dmnflow.Input(float, optional=True)
    total = dmnflow.Output(float)

    def on_message(self, port: str, value: float, ctx: Any) -> None:
        ctx.emit("total", value)


def test_optional_inputs_may_stay_unconnected(tmp_path):
    g = write(tmp_path / "g.yaml", """
        nodes:
          src: {uses: nodes.basic:Counter}
          add: {uses: tests.unit.test_compiler:Adder, inputs: {a: src.numbers}}
        """)
    issues = dmnflow.validate(g)
    assert [i.code for i in issues] == ["unused-output"]


def test_errors_raise_spec_or_compile_error(tmp_path):
    with pytest.raises(SpecError) as spec_err:
        dmnflow.compile_graph(write(tmp_path / "a.yaml", "nodes: {a: {use: x:Y}}\n"))
    [issue] = spec_err.value.issues  # `use:` for `uses:` is one mistake, not also a missing key
    assert issue.code == "unknown-key" and issue.hint == "did you mean 'uses'?"
    with pytest.raises(CompileError) as compile_err:
        dmnflow.compile_graph(write(tmp_path / "b.yaml", "nodes: {a: {uses: nodes.basic:Nope}}\n"))
    assert compile_err.value.errors[0].code == "import-error"
    assert "b.yaml:1:" in str(compile_err.value)


def test_tensor_ports_default_to_the_tensor_codec(tmp_path):
    g = write(tmp_path / "g.yaml", """
        nodes:
          noise: {uses: nodes.basic:Noise, params: {size: 4}}
          mean: {uses: nodes.basic:Mean, inputs: {vectors: noise.vectors}}
          sink: {uses: nodes.basic:Collect, inputs: {values: mean.mean}}
        """)
    plan = dmnflow.compile_graph(g)
    assert {(e.src, e.codec) for e in plan.edges} == {("noise", "tensor"), ("mean", "msgpack")}
    assert plan.edges[0].type == "tensor[float32, (?,)]"


def test_busy_nodes_on_one_core_warn(tmp_path):
    g = write(tmp_path / "g.yaml", """
        nodes:
          src: {uses: nodes.basic:Counter, cpus: 0, busy: true}
          spin: {uses: nodes.basic:Scale, inputs: {value: src.numbers}, cpus: 0, busy: true}
          sink: {uses: nodes.basic:Collect, inputs: {values: spin.scaled}, cpus: 0}
        """)
    issues = dmnflow.validate(g, machine_cpus=[0])
    assert [(i.code, i.severity) for i in issues] == [("pin-shared", "warning")]
    assert "src, spin" in issues[0].message


def test_many_independent_mistakes_are_all_reported(tmp_path):
    g = write(tmp_path / "g.yaml", """
        nodes:
          src: {uses: nodes.basic:Counter, params: {cuont: 3}, cpus: 64}
          a: {uses: nodes.basic:Scale, inputs: {value: srcc.numbers}}
          b: {uses: nodes.basic:Scale, inputs: {value: src.numbers}, outputs: {scaled: {codec: tensor}}}
          sink: {uses: nodes.basic:Collect, inputs: {values: [a.scaled, b.scaledd]}, replicas: 0}
        """)
    issues = dmnflow.validate(g, machine_cpus=[0, 1])
    found = sorted((i.code, i.loc.line) for i in issues if i.is_error)
    assert found == [("codec-type", 4), ("invalid-value", 5), ("pin-range", 2), ("unknown-node", 3),
                     ("unknown-param", 2), ("unknown-port", 5)]


@pytest.mark.parametrize(("produced", "accepted", "code"), [
    (int, float, None), (bool, int, None), (float, int, "type-mismatch"), (Any, int, None),
    (dict[str, int], dict, None), (str, bytes, "type-mismatch"),
    (Tensor("float32", (None, 8)), Tensor("float32", (4, 8)), None),
    (Tensor("float32", (4, 8)), Tensor("float64", (4, 8)), "dtype-mismatch"),
    (Tensor("float32", (4, 8)), Tensor("float32", (4, 9)), "shape-mismatch"),
    (Tensor("float32", (8,)), Tensor("float32", (1, 8)), "shape-mismatch"),
    (Tensor(), Tensor("int8", (2,)), None), (Tensor("float32"), float, "type-mismatch"),
])
def test_port_type_rules(produced, accepted, code):
    result = check_types(produced, accepted)
    assert (result[0] if result else None) == code


def test_the_quickstart_graph_compiles_from_the_repo_root(monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    monkeypatch.setenv("DMNFLOW_OUT", "/tmp/dmnflow-test-out")
    plan = dmnflow.compile_graph("graphs/quickstart.yaml")
    assert plan.order == ["counter", "scale", "sink"]
    assert plan.node("sink").params == {"path": "/tmp/dmnflow-test-out/quickstart.jsonl"}
    assert plan.node("counter").loc == "graphs/quickstart.yaml:12:3"


def test_join_inputs_need_no_handlers_of_their_own_but_the_node_needs_on_join(tmp_path):
    g = write(tmp_path / "g.yaml", """
        nodes:
          src: {uses: nodes.basic:Counter}
          add:
            uses: tests.unit.test_compiler:Adder
            inputs: {a: src.numbers, b: src.numbers}
            join: {inputs: [a, b], timeout: 20ms}
        """)
    issues = [i for i in dmnflow.validate(g) if i.is_error]
    assert [(i.code, i.path) for i in issues] == [("missing-handler", "nodes.add.join")]


def test_join_plan(tmp_path):
    g = write(tmp_path / "g.yaml", """
        nodes:
          src: {uses: nodes.basic:Counter}
          pair:
            uses: graphs.invalid.fixture_nodes:Pair
            inputs: {high: src.numbers, low: src.numbers}
            join: {inputs: [high, low], timeout: 20ms}
          sink: {uses: nodes.basic:Collect, inputs: {values: pair.spread}}
        """)
    join = dmnflow.compile_graph(g).node("pair").join
    assert (join.inputs, join.timeout_s) == (["high", "low"], 0.02)


def test_a_joined_input_cannot_also_be_batched(tmp_path):
    g = write(tmp_path / "g.yaml", """
        nodes:
          src: {uses: nodes.basic:Counter}
          pair:
            uses: graphs.invalid.fixture_nodes:Pair
            inputs: {high: {from: src.numbers, batch: {max: 8}}, low: src.numbers}
            join: {inputs: [high, low]}
          sink: {uses: nodes.basic:Collect, inputs: {values: pair.spread}}
        """)
    [issue] = [i for i in dmnflow.validate(g) if i.is_error]
    assert (issue.code, issue.path, issue.loc.line) == ("bad-join", "nodes.pair.inputs.high.batch", 5)


def test_a_params_check_across_fields_is_an_invalid_param_at_the_params_block(tmp_path, monkeypatch):
    """A model-level validator's error has no field to point at: it points at `params:`."""
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    g = write(tmp_path / "g.yaml", """
        nodes:
          src: {uses: nodes.basic:Counter}
          band:
            uses: graphs.invalid.fixture_nodes:Band
            params: {low: 2, high: 1}
            inputs: {value: src.numbers}
          sink: {uses: nodes.basic:Collect, inputs: {values: band.kept}}
        """)
    [issue] = dmnflow.validate(g)
    assert (issue.code, issue.loc.line) == ("invalid-param", 5)
    assert "low (2.0) must be below high (1.0)" in issue.message


def test_replicas_with_a_fixed_port_bind_consecutive_ports_and_collisions_are_reported(tmp_path):
    g = write(tmp_path / "g.yaml", """
        nodes:
          src: {uses: nodes.basic:Counter, outputs: {numbers: {port: 6102}}}
          work:
            uses: nodes.basic:Scale
            replicas: 2
            inputs: {value: src.numbers}
            outputs: {scaled: {port: 6101}}
          sink: {uses: nodes.basic:Collect, inputs: {values: work.scaled}}
        """)
    [issue] = [i for i in dmnflow.validate(g) if i.is_error]
    assert issue.code == "duplicate-port" and "tcp port 6102 is also bound by src.numbers" in issue.message
    ok = write(tmp_path / "ok.yaml", g.read_text().replace("port: 6102", "port: 6100"))
    plan = dmnflow.compile_graph(ok)
    ports = {n.name: [b.endpoint for o in n.outputs for b in o.binds if b.transport == "tcp"] for n in plan.nodes}
    assert ports["work[0]"] == ["tcp://127.0.0.1:6101"] and ports["work[1]"] == ["tcp://127.0.0.1:6102"]


def _bind(plan: Plan, node: str, port: str):
    """The output and its one push bind."""
    [out] = [o for o in plan.node(node).outputs if o.port == port]
    [bind] = [b for b in out.binds if b.pattern == "push"]
    return out, bind


def test_every_bound_is_a_plan_field_coalescing_included(tmp_path):
    """The socket high-water marks, coalescing, shared-memory slots, read batch and back-pressure
    poll the runtime uses are all in the plan (and so in `dmnflow plan`), from defaults or the output."""
    g = write(tmp_path / "g.yaml", """
        defaults: {policy: block, queue: 1000, read_batch: 32, room_poll: 2ms, shm_slots: 4}
        nodes:
          src: {uses: nodes.basic:Counter}
          a:
            uses: nodes.basic:Scale
            inputs: {value: src.numbers}
            outputs: {scaled: {coalesce: {records: 10, gap: 5us}, shm_slots: 8}}
          b: {uses: nodes.basic:Scale, inputs: {value: {from: a.scaled, delivery: at-least-once}}}
          c: {uses: nodes.basic:Scale, inputs: {value: {from: src.numbers, policy: drop}}}
          sink: {uses: nodes.basic:Collect, inputs: {values: [b.scaled, c.scaled]}}
        """)
    plan = dmnflow.compile_graph(g)
    out, bind = _bind(plan, "src", "numbers")
    assert bind.coalesce.records == 64 and bind.hwm == 64  # 1000 records / 64 a message, at least 64
    assert [b.coalesce for b in out.binds if b.pattern == "pub"] == [None] and out.room_poll_s == 0.002
    assert out.shm_slots == 4
    out, bind = _bind(plan, "a", "scaled")
    assert bind.coalesce is None and bind.hwm == 1000  # at-least-once: each record alone, so queue messages
    assert out.shm_slots == 8
    [inp] = plan.node("a").inputs
    assert inp.read_batch == 32 and [c.hwm for c in inp.connects] == [64]

    g2 = write(tmp_path / "g2.yaml", """
        defaults: {policy: block, queue: 5000}
        nodes:
          src: {uses: nodes.basic:Counter, outputs: {numbers: {coalesce: {records: 10, gap: 5us, max_age: 1ms}}}}
          a: {uses: nodes.basic:Scale, inputs: {value: src.numbers}, outputs: {scaled: {coalesce: false}}}
          sink: {uses: nodes.basic:Collect, inputs: {values: a.scaled}}
        """)
    plan = dmnflow.compile_graph(g2)
    _, bind = _bind(plan, "src", "numbers")
    co = bind.coalesce
    assert (co.records, co.gap_ns, co.max_age_ns, bind.hwm) == (10, 5000, 1_000_000, 500)
    _, bind = _bind(plan, "a", "scaled")
    assert bind.coalesce is None and bind.hwm == 5000
    assert [c.hwm for c in plan.node("sink").inputs[0].connects] == [5000]


def test_a_bad_coalesce_setting_is_located(tmp_path):
    g = write(tmp_path / "g.yaml", """
        defaults: {coalesce: {records: 1}}
        nodes:
          src: {uses: nodes.basic:Counter}
          sink: {uses: nodes.basic:Collect, inputs: {values: src.numbers}}
        """)
    [issue] = [i for i in dmnflow.validate(g) if i.is_error]
    assert (issue.code, issue.loc.line, issue.path) == ("invalid-value", 1, "defaults.coalesce.records")


def test_at_least_once_from_a_fixed_port_is_refused_where_the_input_is(tmp_path):
    g = write(tmp_path / "g.yaml", """
        defaults: {policy: block, transport: tcp}
        nodes:
          src: {uses: nodes.basic:Counter, outputs: {numbers: {port: 5599}}}
          sink: {uses: nodes.basic:Collect, inputs: {values: {from: src.numbers, delivery: at-least-once}}}
        """)
    with pytest.raises(CompileError) as err:
        dmnflow.compile_graph(g)
    [issue] = [i for i in err.value.issues if i.code == "bad-delivery"]
    assert "fixed port (5599)" in issue.message and issue.loc.line == 4
    assert "drop `port:`" in issue.hint
    # the same edge without a fixed port is a push edge that keeps what it sent
    ok = write(tmp_path / "ok.yaml", g.read_text().replace(", outputs: {numbers: {port: 5599}}", ""))
    assert dmnflow.compile_graph(ok).edges[0].delivery == "at-least-once"


TCP_CHAIN = CHAIN.replace("graph: chain", "graph: chain\n    defaults: {transport: tcp}")


@pytest.mark.skipif(not __import__("zmq").has("curve"), reason="libzmq without CURVE")
def test_tcp_edges_get_curve_with_the_runs_own_keys_unless_the_graph_says_otherwise(tmp_path):
    ipc = dmnflow.compile_graph(write(tmp_path / "ipc.yaml", CHAIN))
    assert not ipc.security.run_keys  # nothing on tcp: no keys to make
    tcp = dmnflow.compile_graph(write(tmp_path / "tcp.yaml", TCP_CHAIN))
    assert tcp.security.run_keys and tcp.security.curve is None
    assert Plan.from_json(tcp.to_json()).security.run_keys  # the workers read it from plan.json
    bind = tcp.node("src").outputs[0].binds[0]
    assert tcp.security.curved(bind.transport, bind.pattern)
    assert not tcp.security.curved("tcp", "stream")  # a fixed port stays the public, plain door
    assert not tcp.security.curved("ipc", "push")
    plain = dmnflow.compile_graph(write(tmp_path / "plain.yaml", TCP_CHAIN.replace(
        "graph: chain", "graph: chain\n    security: {insecure: true}")))
    assert not plain.security.run_keys and not plain.security.curved("tcp", "push")


def test_the_drain_bound_is_decided_in_the_plan_and_a_bad_one_is_located(tmp_path):
    plan = dmnflow.compile_graph(write(tmp_path / "g.yaml", CHAIN))
    assert (plan.drain.idle_s, plan.drain.max_s) == (5.0, 300.0)  # the defaults, written down
    g = write(tmp_path / "d.yaml", CHAIN.rstrip() + "\n    defaults: {drain: {idle: 250ms, max: null}}\n")
    assert dmnflow.compile_graph(g).drain.model_dump() == {"idle_s": 0.25, "max_s": None}
    bad = write(tmp_path / "bad.yaml", CHAIN.rstrip() + "\n    defaults:\n      drain: {idle: 10s, max: 2s}\n")
    [issue] = [i for i in dmnflow.validate(bad) if i.is_error]
    assert (issue.code, issue.path, issue.loc.line) == ("invalid-value", "defaults.drain", 8)
    zero = write(tmp_path / "zero.yaml", CHAIN.rstrip() + "\n    defaults:\n      drain: {idle: 0s}\n")
    [issue] = [i for i in dmnflow.validate(zero) if i.is_error]
    assert (issue.code, issue.path, issue.loc.line) == ("invalid-value", "defaults.drain.idle", 8)


SPINNING = """
    nodes:
      src: {uses: nodes.basic:Counter, cpus: 0, busy: true}
      spin: {uses: nodes.basic:Scale, inputs: {value: src.numbers}, cpus: 1, busy: true}
      sink: {uses: nodes.basic:Collect, inputs: {values: [spin.scaled, src.numbers]}}
    """


def test_edges_between_spinning_processes_go_on_iceoryx2_a_bind_each(tmp_path, monkeypatch):
    monkeypatch.setattr("dmnflow.compiler.lowering.iox_available", lambda: True)
    plan = dmnflow.compile_graph(write(tmp_path / "g.yaml", SPINNING), machine_cpus=[0, 1])
    by = {(e.src, e.dst): e for e in plan.edges}
    fast = by[("src", "spin")]
    assert fast.transport == "iox" and fast.endpoint == "iox://src.numbers.spin.value" and fast.credit == 0
    assert by[("src", "sink")].transport == "ipc" and by[("spin", "sink")].transport == "ipc"  # sink sleeps
    [bind] = [b for b in _binds(plan, "src", "numbers") if b.transport == "iox"]
    assert bind.edges == [fast.id] and bind.coalesce is None and not bind.shm and bind.control_hwm == 64
    [inp] = plan.node("spin").inputs
    # one buffer size for the data and one for the control messages, both ends (the plan's, not a constant)
    assert [(c.transport, c.hwm, c.control_hwm) for c in inp.connects] == [("iox", bind.hwm, bind.control_hwm)]
    assert plan.notes == [] and Plan.from_json(plan.to_json()) == plan


def test_without_iceoryx2_spinning_edges_stay_on_ipc_with_a_note(tmp_path, monkeypatch):
    monkeypatch.setattr("dmnflow.compiler.lowering.iox_available", lambda: False)
    plan = dmnflow.compile_graph(write(tmp_path / "g.yaml", SPINNING), machine_cpus=[0, 1])
    assert {e.transport for e in plan.edges} == {"ipc"}
    assert len(plan.notes) == 1 and "src.numbers -> spin.value" in plan.notes[0] and "dmnflow[iox]" in plan.notes[0]
    assert plan.warnings == []


def test_at_least_once_edges_never_go_on_iceoryx2(tmp_path, monkeypatch):
    monkeypatch.setattr("dmnflow.compiler.lowering.iox_available", lambda: True)
    g = write(tmp_path / "g.yaml", """
        nodes:
          src: {uses: nodes.basic:Counter, cpus: 0, busy: true}
          spin:
            uses: nodes.basic:Scale
            inputs: {value: {from: src.numbers, delivery: at-least-once, policy: block}}
            cpus: 1
            busy: true
        """)
    plan = dmnflow.compile_graph(g, machine_cpus=[0, 1])
    assert [e.transport for e in plan.edges] == ["ipc"]


def _binds(plan: Plan, node: str, port: str):
    [out] = [o for o in plan.node(node).outputs if o.port == port]
    return out.binds
