"""Loading graph files: locations, units, substitution, overrides, profiles, includes."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from dmnflow.errors import IssueList, Location
from dmnflow.spec import load_graph, parse_cpus, parse_duration, parse_size, parse_yaml, resolve_node


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def codes(graph) -> list[str]:
    return [i.code for i in graph.issues]


# ------------------------------------------------------------------ units and pins


@pytest.mark.parametrize(("text", "seconds"), [
    ("200us", 200e-6), ("1.5ms", 1.5e-3), ("5s", 5.0), ("2m", 120.0), ("1h", 3600.0),
    ("500ns", 500e-9), (3, 3.0), (0.25, 0.25), ("7", 7.0), ("1e-3s", 1e-3),
])
def test_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["fast", "5 parsecs", "-1s", True, ""])
def test_bad_durations(bad):
    with pytest.raises(ValueError):
        parse_duration(bad)


@pytest.mark.parametrize(("text", "size"), [
    (4096, 4096), ("64KiB", 65536), ("64KB", 64000), ("1MiB", 2**20), ("1.5KiB", 1536), ("10B", 10),
])
def test_sizes(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize(("text", "cores"), [
    (3, [3]), ("0-3", [0, 1, 2, 3]), ("0,2,4-5", [0, 2, 4, 5]), ([0, "2-3"], [0, 2, 3]), ([1, 1], [1]),
])
def test_cpus(text, cores):
    assert parse_cpus(text) == cores


@pytest.mark.parametrize("bad", ["3-1", "a", [], [True], "1-"])
def test_bad_cpus(bad):
    with pytest.raises(ValueError):
        parse_cpus(bad)


# ------------------------------------------------------------------ YAML locations


def test_every_value_and_key_has_its_location():
    issues = IssueList()
    text = "graph: g\nnodes:\n  a:\n    uses: x:Y\n    params: {n: 3, m: [1, 2]}\n"
    data, srcmap = parse_yaml(text, "g.yaml", issues)
    assert not issues.issues
    assert data["nodes"]["a"]["params"]["m"] == [1, 2]
    assert srcmap.at(("nodes", "a", "uses")) == Location("g.yaml", 4, 11)
    assert srcmap.at(("nodes", "a", "uses"), key=True) == Location("g.yaml", 4, 5)
    assert srcmap.at(("nodes", "a", "params", "n")) == Location("g.yaml", 5, 17)
    assert srcmap.at(("nodes", "a", "params", "m", 1)) == Location("g.yaml", 5, 27)
    # a path that was never written falls back to its nearest written ancestor
    assert srcmap.at(("nodes", "a", "params", "zzz", "deep")) == Location("g.yaml", 5, 13)


def test_duplicate_keys_are_reported_not_overwritten():
    issues = IssueList()
    parse_yaml("nodes:\n  a: {uses: x:Y}\n  a: {uses: x:Z}\n", "g.yaml", issues)
    [issue] = issues.issues
    assert (issue.code, issue.loc) == ("duplicate-key", Location("g.yaml", 3, 3))


def test_yaml_syntax_error_is_located():
    issues = IssueList()
    parse_yaml("nodes:\n  a:\n    uses: x:Y\n   params: {\n", "g.yaml", issues)
    [issue] = issues.issues
    assert issue.code == "yaml-syntax"
    assert issue.loc.file == "g.yaml" and issue.loc.line >= 3


def test_anchors_and_merge_keys_work(tmp_path):
    g = write(tmp_path / "g.yaml", """
        base: &base {uses: nodes.basic:Counter, params: {count: 3}}
        nodes:
          a: *base
          b:
            <<: *base
            params: {count: 4}
        """)
    graph = load_graph(g)
    assert codes(graph) == ["unknown-key"]  # 'base' is not a top-level key; the nodes are fine
    assert graph.nodes["a"].spec.params == {"count": 3}
    assert graph.nodes["b"].spec.params == {"count": 4}


# ------------------------------------------------------------------ substitution


def test_vars_keep_their_type_when_whole_and_format_inside_text(tmp_path):
    g = write(tmp_path / "g.yaml", """
        vars: {n: 5, dir: /tmp/x, syms: [ES, NQ], model: {hidden: 64}}
        nodes:
          a:
            uses: nodes.basic:Counter
            params: {count: "${vars.n}", start: "${vars.model.hidden}"}
            description: "to ${vars.dir}/out (${vars.syms.1}) costs $${not.substituted}"
            layer: ${vars.syms}
        """)
    graph = load_graph(g)
    spec = graph.nodes["a"].spec
    assert spec.params == {"count": 5, "start": 64}
    assert spec.description == "to /tmp/x/out (NQ) costs ${not.substituted}"
    assert "invalid-value" in codes(graph)  # layer got a list: substitution kept the type


def test_vars_may_use_vars_and_loops_are_errors(tmp_path):
    g = write(tmp_path / "g.yaml", """
        vars: {a: "${vars.b}/x", b: "${vars.c}", c: root, p: "${vars.q}", q: "${vars.p}"}
        nodes:
          n: {uses: nodes.basic:Counter, description: "${vars.a}"}
        """)
    graph = load_graph(g)
    assert graph.nodes["n"].spec.description == "root/x"
    assert "var-cycle" in codes(graph)


def test_env_substitution(tmp_path):
    g = write(tmp_path / "g.yaml", """
        nodes:
          a:
            uses: nodes.basic:Counter
            params: {count: "${env:N_MSGS}", start: "${env:START:-7}"}
            description: "${env:WHO} was here"
          b: {uses: nodes.basic:Counter, description: "${env:NOPE}"}
        """)
    graph = load_graph(g, env={"N_MSGS": "1000", "WHO": "me"})
    assert graph.nodes["a"].spec.params == {"count": 1000, "start": 7}
    assert graph.nodes["a"].spec.description == "me was here"
    [issue] = graph.issues
    assert issue.code == "unset-env" and issue.loc.line == 6 and "NOPE" in issue.message


def test_unknown_var_suggests_and_does_not_cascade(tmp_path):
    g = write(tmp_path / "g.yaml", """
        vars: {count: 3}
        nodes:
          a:
            uses: nodes.basic:Counter
            params: {count: "${vars.cuont}"}
        """)
    import dmnflow

    issues = dmnflow.validate(g)
    assert [(i.code, i.loc.line, i.loc.col) for i in issues] == [("unknown-var", 5, 21)]
    assert "count" in issues[0].hint


# ------------------------------------------------------------------ --set and profiles


QUICK = """
    vars: {n: 3}
    nodes:
      src: {uses: nodes.basic:Counter, params: {count: "${vars.n}"}}
      sink: {uses: nodes.basic:Collect, inputs: {values: src.numbers}}
    profiles:
      big:
        vars: {n: 100}
        nodes: {src: {params: {start: 5}}, sink: {cpus: 0}}
    """


def test_set_overrides_vars_params_and_creates_keys_below_a_node(tmp_path):
    g = write(tmp_path / "g.yaml", QUICK)
    graph = load_graph(g, ["vars.n=9", "nodes.src.params.start=[1]", "nodes.sink.cpus=0-1"])
    assert graph.nodes["src"].spec.params == {"count": 9, "start": [1]}
    assert graph.nodes["sink"].spec.cpus == [0, 1]
    assert codes(graph) == []


def test_set_errors_point_at_the_argument(tmp_path):
    g = write(tmp_path / "g.yaml", QUICK)
    graph = load_graph(g, ["nodes.scr.params.count=1", "novalue", "nodes.src.uses.x=1"])
    by_code = [(i.code, str(i.loc)) for i in graph.issues]
    assert ("bad-override", "--set nodes.scr.params.count=1") in by_code
    assert ("bad-override", "--set novalue") in by_code
    assert ("bad-override", "--set nodes.src.uses.x=1") in by_code
    assert any("did you mean 'src'" in i.hint for i in graph.issues)


def test_an_invalid_value_from_set_is_located_at_the_set(tmp_path):
    import dmnflow

    g = write(tmp_path / "g.yaml", QUICK)
    [issue] = dmnflow.validate(g, ["nodes.src.params.count=many"])
    assert issue.code == "invalid-param"
    assert str(issue.loc) == "--set nodes.src.params.count=many"


@pytest.mark.parametrize("value", ["::", "yes", "10:20", "a: b"])
def test_a_set_value_yaml_reads_as_something_else_is_text_where_a_string_is_wanted(tmp_path, value):
    """``--set defaults.host=::`` is a mapping to YAML and an address to a person."""
    import dmnflow

    g = write(tmp_path / "g.yaml", QUICK)
    sets = ["defaults.transport=tcp", f"defaults.host={value}", "security.insecure=true", "nodes.sink.params.path=no"]
    graph = load_graph(g, sets)
    assert codes(graph) == []
    assert graph.nodes["sink"].spec.params == {"path": False}  # read as YAML: the node's Params decide
    plan = dmnflow.compile_graph(g, sets, models=False)
    assert plan.node("src").outputs[0].binds[0].endpoint == f"tcp://{value}:*"
    assert plan.node("sink").params["path"] == "no"  # Collect's path wants text: as typed
    assert [i.code for i in dmnflow.validate(g, ["defaults.queue=::"])] == ["invalid-value"]  # a number is no text


def test_an_integer_longer_than_python_reads_is_a_located_error(tmp_path):
    digits = "9" * 5000
    g = write(tmp_path / "g.yaml", QUICK.replace("{n: 3}", "{n: " + digits + "}"))
    [issue] = load_graph(g).issues
    assert (issue.code, issue.loc.line, issue.loc.col, issue.path) == ("invalid-value", 1, 11, "vars.n")
    assert "an integer of 5000 digits" in issue.message and "quote it" in issue.hint
    [issue] = load_graph(write(tmp_path / "q.yaml", QUICK), [f"vars.n={digits}"]).issues
    assert (issue.code, issue.loc.file, issue.path) == ("invalid-value", f"--set vars.n={digits}", "vars.n")
    env = load_graph(write(tmp_path / "e.yaml", QUICK.replace("{n: 3}", '{n: "${env:BIG}"}')), env={"BIG": digits})
    assert codes(env) == [] and env.nodes["src"].spec.params["count"] == digits  # text: its node's Params decide


def test_set_may_only_set_variables_the_file_declares(tmp_path):
    g = write(tmp_path / "g.yaml", QUICK.replace("vars: {n: 3}", "vars: {n: 3, model: {hidden: 8}, xs: [1, 2]}"))
    assert codes(load_graph(g, ["vars.model.hidden=16", "vars.xs=[5]", "vars.model={hidden: 4}"])) == []
    graph = load_graph(g, ["vars.nn=1", "vars.model.hiden=16", "vars.xs.7=0"])
    found = [(i.code, i.path, str(i.loc), i.hint) for i in graph.issues]
    assert found == [
        ("bad-override", "vars.nn", "--set vars.nn=1", "did you mean 'n'?"),
        ("bad-override", "vars.model.hiden", "--set vars.model.hiden=16", "did you mean 'hidden'?"),
        ("bad-override", "vars.xs.7", "--set vars.xs.7=0", "vars.xs is not a mapping"),
    ]


def test_an_include_may_only_pass_variables_the_included_file_declares(tmp_path):
    write(tmp_path / "part.yaml", "vars: {count: 3}\nnodes:\n  src: {uses: nodes.basic:Counter}\n")
    g = write(tmp_path / "root.yaml", "include:\n  p: {path: part.yaml, vars: {cout: 5}}\n")
    [issue] = load_graph(g).issues
    assert (issue.code, issue.loc.file, issue.loc.line, issue.hint) == (
        "bad-override", str(tmp_path / "root.yaml"), 2, "did you mean 'count'?")
    assert "part.yaml has no variable 'cout'" in issue.message


def test_keys_an_override_creates_are_located_at_the_override(tmp_path):
    g = write(tmp_path / "g.yaml", QUICK)
    graph = load_graph(g, ["nodes.src.prams.count=5"])
    [issue] = graph.issues
    assert (issue.code, str(issue.loc)) == ("unknown-key", "--set nodes.src.prams.count=5")


def test_profile_overlays_then_set_wins(tmp_path):
    g = write(tmp_path / "g.yaml", QUICK)
    graph = load_graph(g, ["nodes.src.params.start=6"], profile="big")
    assert graph.nodes["src"].spec.params == {"count": 100, "start": 6}
    assert graph.nodes["sink"].spec.cpus == [0]
    # values from the profile are located in the profile
    assert graph.srcmap.at(("nodes", "sink", "cpus")).line == 8


def test_unknown_profile(tmp_path):
    g = write(tmp_path / "g.yaml", QUICK)
    graph = load_graph(g, profile="bgi")
    [issue] = graph.issues
    assert issue.code == "unknown-profile" and "big" in issue.hint


# ------------------------------------------------------------------ includes


def test_includes_are_scoped_and_nothing_leaks(tmp_path):
    write(tmp_path / "lib" / "part.yaml", """
        vars: {factor: 3.0}
        defaults: {codec: json}
        nodes:
          src: {uses: nodes.basic:Counter, params: {count: 5}}
          scale:
            uses: nodes.basic:Scale
            inputs: {value: src.numbers}
            params: {factor: "${vars.factor}"}
            group: g
        """)
    g = write(tmp_path / "root.yaml", """
        vars: {factor: 100.0}
        include:
          a: lib/part.yaml
          b: {path: lib/part.yaml, vars: {factor: "${vars.factor}"}, set: {nodes.src.params.start: 9}}
        nodes:
          sink:
            uses: nodes.basic:Collect
            inputs: {values: [a/scale.scaled, b/scale.scaled]}
            group: g
        """)
    graph = load_graph(g)
    assert codes(graph) == []
    assert set(graph.nodes) == {"sink", "a/src", "a/scale", "b/src", "b/scale"}
    # the included file's own var, unless the include passes one explicitly
    assert graph.nodes["a/scale"].spec.params["factor"] == 3.0
    assert graph.nodes["b/scale"].spec.params["factor"] == 100.0
    assert graph.nodes["b/src"].spec.params == {"count": 5, "start": 9}
    assert graph.nodes["a/src"].spec.params == {"count": 5}
    # references, groups and defaults stay in their file's scope
    assert graph.nodes["a/scale"].spec.inputs["value"].from_ == ["a/src.numbers"]
    assert graph.nodes["a/scale"].spec.group == "a/g" and graph.nodes["sink"].spec.group == "g"
    assert graph.nodes["a/src"].defaults.codec == "json" and graph.nodes["sink"].defaults.codec == "msgpack"
    # locations of included nodes point into the included file
    assert graph.srcmap.at(("nodes", "a/scale", "uses")).file.endswith("part.yaml")


def test_include_mistakes_are_located_in_the_included_file(tmp_path):
    write(tmp_path / "part.yaml", "nodes:\n  src: {uses: nodes.basic:Counter, parms: {}}\n")
    g = write(tmp_path / "root.yaml", "include: {p: part.yaml, q: nope.yaml}\nnodes: {}\n")
    graph = load_graph(g)
    by_code = {i.code: i for i in graph.issues}
    assert by_code["unknown-key"].loc.file.endswith("part.yaml") and by_code["unknown-key"].loc.line == 2
    assert by_code["file-not-found"].loc.file.endswith("root.yaml")  # the include that names it


def test_set_reaches_into_includes_and_root_references(tmp_path):
    write(tmp_path / "part.yaml", """
        nodes:
          scale: {uses: nodes.basic:Scale, inputs: {value: src.numbers}}
          src: {uses: nodes.basic:Counter}
        """)
    g = write(tmp_path / "root.yaml", """
        include: {p: part.yaml}
        nodes:
          feed: {uses: nodes.basic:Counter}
        """)
    graph = load_graph(g, ["nodes.p/src.params.count=2", "nodes.p/scale.inputs.value=/feed.numbers"])
    assert codes(graph) == []
    assert graph.nodes["p/src"].spec.params == {"count": 2}
    assert graph.nodes["p/scale"].spec.inputs["value"].from_ == ["/feed.numbers"]


def test_include_cycles_are_errors(tmp_path):
    write(tmp_path / "a.yaml", "include: {b: b.yaml}\nnodes: {}\n")
    write(tmp_path / "b.yaml", "include: {a: a.yaml}\nnodes: {}\n")
    graph = load_graph(tmp_path / "a.yaml")
    assert codes(graph) == ["include-cycle"]
    assert graph.issues[0].loc.file.endswith("b.yaml")


def test_self_referencing_alias_is_an_error_not_a_crash(tmp_path):
    g = write(tmp_path / "g.yaml", "a: &a\n  b: *a\nnodes: {}\n")
    graph = load_graph(g)
    assert [(i.code, i.loc.line) for i in graph.issues] == [("yaml-syntax", 1)]


def test_alias_bombs_are_refused(tmp_path):
    rows = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    for prev, name in zip("abcdefg", "bcdefgh", strict=True):
        rows.append(f"{name}: &{name} [{','.join([f'*{prev}'] * 9)}]")
    g = write(tmp_path / "g.yaml", "\n".join(rows) + "\nnodes: {}\n")
    graph = load_graph(g)
    assert [i.code for i in graph.issues] == ["yaml-syntax"] and "more than" in graph.issues[0].message


def test_keys_are_names_as_written_not_yaml_booleans(tmp_path):
    g = write(tmp_path / "g.yaml", "nodes:\n  on: {uses: nodes.basic:Counter}\n  yes: {uses: nodes.basic:Counter}\n")
    assert set(load_graph(g).nodes) == {"on", "yes"}


def test_a_graph_without_nodes_is_an_error(tmp_path):
    graph = load_graph(write(tmp_path / "g.yaml", "graph: nothing\nnodes: {}\n"))
    assert [(i.code, i.loc.line) for i in graph.issues] == [("empty-graph", 2)]


def test_a_file_of_only_includes_needs_no_nodes_key(tmp_path):
    write(tmp_path / "part.yaml", "nodes:\n  src: {uses: nodes.basic:Counter}\n")
    graph = load_graph(write(tmp_path / "g.yaml", "include: {p: part.yaml}\n"))
    assert graph.issues == [] and set(graph.nodes) == {"p/src"}


@pytest.mark.parametrize(("cores", "text"), [([0, 1, 2, 5], "0-2,5"), ([], ""), ([3], "3"), ([7, 1, 2], "1-2,7")])
def test_format_cpus_writes_what_parse_cpus_reads(cores, text):
    from dmnflow.spec import format_cpus

    assert format_cpus(cores) == text
    if cores:
        assert parse_cpus(text) == sorted(set(cores))


def test_dates_stay_text_as_written(tmp_path):
    """`start: 2016-01-01` feeds a `str` param (and a `date` one parses it): no datetime.date surprise."""
    g = tmp_path / "g.yaml"
    g.write_text("vars: {start: 2016-01-01}\nnodes:\n  a: {uses: nodes.basic:Counter, description: 2016-01-02}\n")
    loaded = load_graph(g)
    assert loaded.nodes["a"].spec.description == "2016-01-02"


def test_dates_given_with_set_stay_text_too(tmp_path):
    g = tmp_path / "g.yaml"
    g.write_text("nodes:\n  a: {uses: nodes.basic:Counter}\n")
    loaded = load_graph(g, ["nodes.a.description=2016-01-01"])
    assert loaded.nodes["a"].spec.description == "2016-01-01"


# ------------------------------------------------------------------ defaults, resolved once


def test_resolving_fills_every_default_once_and_says_where_each_came_from(tmp_path):
    graph = load_graph(write(tmp_path / "g.yaml", """
        defaults: {policy: latest, queue: 50, codec: json, host: 0.0.0.0}
        nodes:
          src: {uses: "m:Src", outputs: {a: {send_limit: 7}}}
          dst:
            uses: "m:Dst"
            restart: never
            inputs: {x: {from: src.a, queue: 3, budget: {p99: 1ms}}}
    """))
    src = resolve_node(graph.nodes["src"], {"a": None, "t": "tensor"})
    a, t = src.spec.outputs["a"], src.spec.outputs["t"]  # `t` is declared by the class, not written
    assert (a.codec, a.send_limit, a.host, a.transport, a.shm_slots) == ("json", 7, "0.0.0.0", "ipc", 16)
    assert (t.codec, t.send_limit) == ("tensor", 50)
    assert src.filled["outputs.a.codec"] == "defaults.codec" and src.filled["outputs.t.codec"] == "uses"
    assert "outputs.a.send_limit" not in src.filled and src.filled["outputs.t.send_limit"] == "defaults.queue"
    assert src.spec.restart is not None and src.filled["restart"] == "defaults.restart"
    dst = resolve_node(graph.nodes["dst"])
    x = dst.spec.inputs["x"]
    assert (x.policy, x.queue, x.delivery) == ("latest", 3, "at-most-once")
    assert dst.filled["inputs.x.policy"] == "defaults.policy" and "inputs.x.queue" not in dst.filled
    assert dst.spec.restart is not None and dst.spec.restart.when == "never" and "restart" not in dst.filled
    assert x.budget is not None and x.budget.warmup == 10.0
    assert dst.filled["inputs.x.budget.warmup"] == "defaults.budget_warmup"
    assert graph.nodes["dst"].spec.inputs["x"].policy is None  # the loaded spec is left as written
