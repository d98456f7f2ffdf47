"""The docs keep up with the code: every schema key and issue code is documented, every yaml and
python snippet of README.md and docs/ works as its page says, every inline command exists,
and every param of every shipped node is in its docs table (tools/docs.py does the checking;
tests/integration/test_docs_run.py runs the commands and the sample outputs).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel

from dmnflow import spec
from tools import docs

ROOT = Path(__file__).resolve().parents[2]
PAGES = docs.pages()
BLOCKS = docs.all_blocks()
YAML = [b for b in BLOCKS if b.kind == "yaml"]
CHAINS = docs.python_chains(BLOCKS)


@pytest.fixture(scope="module")
def ws() -> Iterator[docs.Workspace]:
    with docs.Workspace() as workspace:
        yield workspace


def _models() -> list[type[BaseModel]]:
    return [spec.GraphSpec, spec.Defaults, spec.NodeSpec, spec.InputSpec, spec.OutputSpec,
            spec.RestartSpec, spec.ModelSpec, spec.BatchSpec, spec.IncludeSpec]


def test_every_graph_key_is_in_the_reference():
    text = (ROOT / "docs" / "graph-reference.md").read_text()
    missing = [f"{m.__name__}.{f.alias or n}" for m in _models() for n, f in m.model_fields.items()
               if f"`{f.alias or n}`" not in text and f"`batch.{n}`" not in text]
    assert missing == []


def _emitted_codes() -> set[str]:
    found: set[str] = set()
    for path in (ROOT / "dmnflow").rglob("*.py"):
        text = path.read_text()
        found |= set(re.findall(r'(?:issues|self)\.add\(\s*"([a-z][a-z-]+)"', text))
        found |= set(re.findall(r'return "([a-z]+-mismatch)"', text))
        found |= set(re.findall(r'\("(model-[a-z]+)",', text))  # returned by a runner's check_model
    return found


def test_every_issue_code_is_documented_and_every_documented_code_exists():
    documented = set(re.findall(r"^\| `([a-z][a-z-]+)` \|", (ROOT / "docs" / "errors.md").read_text(), re.M))
    emitted = _emitted_codes()
    assert len(emitted) > 30
    assert emitted - documented == set(), "codes without docs"
    assert documented - emitted == set(), "documented codes nothing emits"


def test_the_readme_shows_the_real_quickstart_graph():
    readme = (ROOT / "README.md").read_text()
    shown = readme.split("`graphs/quickstart.yaml`:\n\n```yaml\n", 1)[1].split("```", 1)[0].strip()
    real = "\n".join(line for line in (ROOT / "graphs" / "quickstart.yaml").read_text().splitlines()
                     if not line.startswith("#")).strip()
    assert shown == real


# ---------------------------------------------------------------------- every page, every block


def test_the_docs_have_snippets_of_every_kind():
    kinds = {b.kind for b in BLOCKS}
    assert {"yaml", "python", "commands", "output"} <= kinds
    assert len(YAML) >= 15 and len(CHAINS) >= 5


@pytest.mark.parametrize("page", PAGES)
def test_markers_are_well_formed_and_outputs_are_marked(page):
    assert docs.read_page(page).problems == []


@pytest.mark.parametrize("page", PAGES)
def test_inline_commands_exist_and_validate(page, ws):
    assert docs.check_inline(docs.read_page(page), ws) == []


@pytest.mark.parametrize("block", YAML, ids=lambda b: b.id)
def test_yaml_snippet_gives_the_errors_its_page_says(block, ws, monkeypatch):
    monkeypatch.chdir(ws.path)
    assert docs.check_yaml(block, ws) == []


@pytest.mark.parametrize("chain", CHAINS, ids=lambda c: c[0].id)
def test_python_snippet_runs(chain, ws):
    assert docs.check_python(chain, ws) == []


def test_commands_in_graph_files_comments_name_real_graphs_sets_and_profiles(ws):
    assert docs.check_graph_comments(ws) == []


def test_every_param_of_every_shipped_node_is_in_its_docs_table():
    assert docs.check_node_params() == []


def test_the_marker_syntax_is_documented_for_page_authors():
    guide = (ROOT / "docs" / "contributing.md").read_text()
    for kind in docs.KINDS:
        assert f"docs: {kind}" in guide, kind
    assert "python -m tools.docs --write" in guide


# ---------------------------------------------------------------------- the checks catch what they should


def _block(text: str, lang: str = "yaml", marker: str | None = None) -> docs.Block:
    parsed = docs.Marker.parse(marker, 1) if marker else None
    return docs.Block("docs/example.md", 2, lang, text, "", (2, 2 + text.count("\n")), parsed)


def test_a_broken_yaml_snippet_fails_and_says_why(ws, monkeypatch):
    monkeypatch.chdir(ws.path)
    good = "counter:\n  uses: nodes.basic:Counter\n  params: {count: 10}\n"
    assert docs.check_yaml(_block(good, marker="fragment graphs/quickstart.yaml at=nodes"), ws) == []
    bad = good.replace("count: 10", "cuont: 10")
    [problem] = docs.check_yaml(_block(bad, marker="fragment graphs/quickstart.yaml at=nodes"), ws)
    assert "expected no errors, got ['unknown-param']" in problem and "did you mean 'count'" in problem
    expected = docs.check_yaml(_block(bad, marker="fragment graphs/quickstart.yaml at=nodes expect=unknown-param"),
                               ws)
    assert expected == []  # the page says so: then it is right


def test_a_fragment_replaces_the_node_it_defines_and_merges_elsewhere():
    base = {"nodes": {"a": {"uses": "x:A", "params": {"p": 1}}, "b": {"uses": "x:B"}}, "vars": {"v": 1}}
    merged = docs._merge_at(base, [], {"nodes": {"a": {"uses": "x:C"}}, "vars": {"w": 2}})
    assert merged["nodes"] == {"a": {"uses": "x:C"}, "b": {"uses": "x:B"}}
    assert merged["vars"] == {"v": 1, "w": 2}
    inside = docs._merge_at({"nodes": {"a": {"uses": "x:A", "params": {"p": 1}}}}, ["nodes", "a"],
                            {"params": {"q": 2}})
    assert inside["nodes"]["a"] == {"uses": "x:A", "params": {"p": 1, "q": 2}}


def test_a_broken_python_snippet_fails(ws):
    [problem] = docs.check_python([_block("import nodes.basic\nnodes.basic.Countr\n", "python")], ws)
    assert "exit 1" in problem and "AttributeError" in problem


def test_unmarked_outputs_stray_markers_and_unknown_kinds_are_problems(tmp_path, monkeypatch):
    page = tmp_path / "docs" / "page.md"
    page.parent.mkdir()
    page.write_text("text\n\n```\nx.yaml:1:1: error[unknown-key] a: b\n```\n\n<!-- docs: skip -->\n\nprose\n\n"
                    "<!-- docs: ouput \"dmnflow schema\" -->\n```\n$ dmnflow schema\n```\n")
    monkeypatch.setattr(docs, "ROOT", tmp_path)
    problems = docs.read_page("docs/page.md").problems
    assert any("this block shows output" in p for p in problems)
    assert any("must be the line before a fenced block" in p for p in problems)
    assert any("unknown marker 'ouput'; did you mean 'output'?" in p for p in problems)


def test_commands_are_read_as_a_shell_reads_them():
    block = _block("$ python3 -m venv .venv && . .venv/bin/activate && pip install x && dmnflow launch g.yaml\n"
                   "dmnflow launch g.yaml --name live &   # in the background\n"
                   "dmnflow schema > out/s.json\n"
                   "dmnflow launch g.yaml \\\n  --set 'nodes.m.params={a: [1, 2]}'\n", "bash")
    found = [(c.argv, c.background, c.stdout) for c in docs.commands(block) if c.argv[0] == "dmnflow"]
    assert found == [(["dmnflow", "launch", "g.yaml"], False, None),
                     (["dmnflow", "launch", "g.yaml", "--name", "live"], True, None),
                     (["dmnflow", "schema"], False, "out/s.json"),
                     (["dmnflow", "launch", "g.yaml", "--set", "nodes.m.params={a: [1, 2]}"], False, None)]


def test_inline_commands_with_unknown_commands_or_options_are_problems(ws):
    page = docs.Page("docs/x.md", [], [], [], [(3, "dmnflow tap live"), (4, "dmnflow validate g.yaml --sett k=v"),
                                               (5, "dmnflow plan graphs/nope.yaml"),
                                               (6, "dmnflow validate graphs/quickstart.yaml --set vars.cout=5"),
                                               (7, "python -m nodes.models.trian")], [])
    problems = docs.check_inline(page, ws)
    assert len(problems) == 5, problems
    assert "no command 'tap'" in problems[0] and "no option --sett" in problems[1]
    assert "graphs/nope.yaml does not exist" in problems[2] and "did you mean 'count'" in problems[3]
    assert "no module nodes.models.trian" in problems[4]


def test_module_flags_are_checked_against_help():
    assert docs.check_module_flags(["nodes.models.train", "--data", "synthetic", "--train-end", "x"]) == []
    assert docs.check_module_flags(["nodes.models.train", "--trian-end", "x"]) == [
        "`python -m nodes.models.train` has no option --trian-end"]


def test_outputs_are_compared_with_what_changes_between_runs_masked():
    a = "worker boom (pid 19642) exited; core 7 does not exist (cores: 0-1)\nok in 1.80s\n│ a │  0.57 │"
    b = "worker boom (pid 31) exited; core 7 does not exist (cores: 0-15)\nok in 12.01s\n│ a │ 10.25 │"
    assert docs.normalise(a) != docs.normalise(b)
    assert docs.normalise(a, volatile=True) == docs.normalise(b, volatile=True)
    assert docs.normalise(a.replace("exited", "failed"), volatile=True) != docs.normalise(b, volatile=True)


def test_a_param_missing_from_its_table_is_reported(monkeypatch):
    real = docs._param_tables

    def without_history(lines: list[str]) -> list[list[str]]:
        return [[row for row in table if "`history`" not in row] for table in real(lines)]

    monkeypatch.setattr(docs, "_param_tables", without_history)
    assert any(p.startswith("nodes.market:Synthetic: params missing") and p.endswith("history")
               for p in docs.check_node_params())
