"""The invalid-graph corpus: each file in graphs/invalid/ makes one mistake, reported where it is.

A corpus file's first line is ``# expect: <code> at [<file>:]<line>:<col>``; ``<file>`` is given
only when the issue lands in another file (relative to the corpus file, e.g. an include).
An optional second line ``# with: --profile NAME`` / ``# with: --set KEY=VALUE`` gives the
command-line options the mistake needs.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import dmnflow

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "graphs" / "invalid"
DATA = Path(__file__).resolve().parent / "data"

# Every check the corpus covers. A new check needs a corpus file, then a line here.
CODES = {
    "bad-budget", "bad-delivery", "bad-policy", "bad-join", "bad-key", "bad-name", "bad-override", "bad-substitution",
    "budget-path", "codec-type", "codec-unsafe", "cycle", "insecure-bind",
    "dtype-mismatch", "duplicate-key", "duplicate-port", "empty-graph", "file-not-found",
    "file-unreadable", "host-conflict", "import-error", "include-cycle", "invalid-param", "invalid-value",
    "missing-handler", "missing-input", "missing-key", "missing-param", "model-error", "model-mismatch",
    "model-missing", "no-driver",
    "node-error", "not-a-node", "pin-range", "pin-shared", "shape-mismatch", "type-mismatch",
    "unknown-codec", "unknown-input", "unknown-key", "unknown-node", "unknown-output",
    "unknown-param", "unknown-port", "unknown-profile", "unknown-var", "unset-env", "renamed-key",
    "unused-output", "var-cycle", "yaml-syntax",
}
WARNINGS = {"no-driver", "pin-shared", "unused-output"}
# Issues about the file as a whole have no key path.
FILE_LEVEL = {"yaml-syntax", "empty-graph"}

_EXPECT_RE = re.compile(r"^# expect: (?P<code>[a-z0-9-]+) at (?:(?P<file>[^\s:]+):)?(?P<line>\d+):(?P<col>\d+)\s*$")


@dataclass(frozen=True)
class Case:
    path: Path  # the corpus file
    code: str
    file: Path  # where the issue must be
    line: int
    col: int
    overrides: tuple[str, ...] = ()
    profile: str | None = None

    @property
    def rel(self) -> str:
        return str(self.path.relative_to(ROOT))

    @property
    def cli_args(self) -> list[str]:
        args = [f"--set={o}" for o in self.overrides]
        return args + ([f"--profile={self.profile}"] if self.profile else [])


def _expects(path: Path) -> list[tuple[str, Path, int, int]]:
    found = []
    for text in path.read_text(encoding="utf-8").splitlines():
        match = _EXPECT_RE.match(text)
        if match:
            file = (path.parent / match["file"]).resolve() if match["file"] else path.resolve()
            found.append((match["code"], file, int(match["line"]), int(match["col"])))
    return found


def _case(path: Path) -> Case:
    lines = path.read_text(encoding="utf-8").splitlines()
    head = _EXPECT_RE.match(lines[0]) if lines else None
    assert head, f"{path.name}: first line must be '# expect: <code> at <line>:<col>'"
    ((code, file, line, col),) = _expects(path)
    overrides: list[str] = []
    profile = None
    if len(lines) > 1 and lines[1].startswith("# with: "):
        words = shlex.split(lines[1].removeprefix("# with: "))
        for flag, value in zip(words[::2], words[1::2], strict=True):
            if flag == "--set":
                overrides.append(value)
            elif flag == "--profile":
                profile = value
            else:
                raise AssertionError(f"{path.name}: unknown option {flag} in '# with:'")
    return Case(path, code, file, line, col, tuple(overrides), profile)


CASES = [_case(p) for p in sorted(CORPUS.glob("*.yaml"))]
BY_CODE = {c.code: c for c in CASES}


def _at(issue: dmnflow.Issue) -> tuple[Path | None, int, int]:
    if issue.loc is None:
        return None, 0, 0
    return (ROOT / issue.loc.file).resolve(), issue.loc.line, issue.loc.col


def _show(issues: list[dmnflow.Issue]) -> str:
    return "\n".join(str(i) for i in issues) or "(no issues)"


@pytest.fixture(autouse=True)
def _repo_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # `uses: graphs.invalid.fixture_nodes:X` resolves from here
    monkeypatch.delenv("DMNFLOW_SURELY_UNSET_VAR", raising=False)


def _validate(case: Case) -> list[dmnflow.Issue]:
    return dmnflow.validate(case.rel, list(case.overrides), profile=case.profile)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.path.name)
def test_corpus_file_reports_its_one_mistake_where_it_is(case: Case) -> None:
    issues = _validate(case)
    assert case.path.stem == case.code, "a corpus file is named after the code it expects"
    hits = [i for i in issues if i.code == case.code and _at(i) == (case.file, case.line, case.col)]
    assert hits, f"expected {case.code} at {case.file.name}:{case.line}:{case.col}; got\n{_show(issues)}"
    issue = hits[0]
    assert issue.message.strip()
    errors = [i for i in issues if i.is_error]
    if case.code in WARNINGS:
        assert issue.severity == "warning"
        assert not errors, f"a warning file must validate cleanly otherwise; got\n{_show(issues)}"
    else:
        assert errors == [issue], f"one mistake, one error; got\n{_show(issues)}"


@pytest.mark.parametrize("case", [c for c in CASES if c.code not in FILE_LEVEL], ids=lambda c: c.path.name)
def test_corpus_issue_names_its_key(case: Case) -> None:
    (issue,) = [i for i in _validate(case) if i.code == case.code]
    assert issue.path


def test_corpus_covers_every_check() -> None:
    assert {c.code for c in CASES} == CODES
    assert len(CASES) == len(CODES), "one file per check"


def test_every_check_in_the_source_has_a_corpus_file() -> None:
    source = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "dmnflow").rglob("*.py"))
    emitted = set(re.findall(r"\b(?:issues|self)\.add\(\s*\"([a-z][a-z0-9-]+)\"", source))
    emitted |= set(re.findall(r"\"([a-z]+-mismatch)\"", source))  # returned by node.check_types
    emitted |= set(re.findall(r"\(\"(model-[a-z]+)\",", source))  # returned by a runner's check_model
    assert emitted, "the pattern no longer finds the checks; update this test"
    tune_codes = {p.stem for p in (CORPUS / "tune").glob("*.yaml")}  # tune files' checks: tests/unit/test_tune.py
    assert emitted - CODES - tune_codes == set(), "add a graphs/invalid/[tune/]<code>.yaml for each new check"


# ---------------------------------------------------------------- the command line


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DMNFLOW_SURELY_UNSET_VAR"}
    env.update(NO_COLOR="1", COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "dmnflow.cli", "validate", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("code", ["yaml-syntax", "unknown-port", "missing-param", "include-cycle"])
def test_cli_reports_the_mistake_with_its_location(code: str) -> None:
    case = BY_CODE[code]
    result = _run_cli(case.rel, *case.cli_args)
    assert result.returncode == dmnflow.ExitCode.INVALID, result.stderr
    where = f"{case.file.relative_to(ROOT)}:{case.line}:{case.col}:"
    assert where in result.stderr
    assert f"error[{code}]" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_cli_warning_only_graph_exits_zero() -> None:
    case = BY_CODE["pin-shared"]
    result = _run_cli(case.rel)
    assert result.returncode == dmnflow.ExitCode.OK, result.stderr
    assert f"{case.rel}:{case.line}:{case.col}: warning[pin-shared]" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


# ---------------------------------------------------------------- several mistakes at once


def test_five_mistakes_in_five_nodes_are_each_reported_at_their_place() -> None:
    path = DATA / "five_mistakes.yaml"
    expected = {(code, file, line, col) for code, file, line, col in _expects(path)}
    assert len(expected) == 5
    issues = dmnflow.validate(path.relative_to(ROOT))
    got = {(i.code, *_at(i)) for i in issues if i.is_error}
    assert got == expected, _show(issues)
    assert [i for i in issues if i.is_error] == sorted((i for i in issues if i.is_error),
                                                      key=lambda i: (i.loc.line, i.loc.col)), "file order"


# ---------------------------------------------------------------- one mistake, one error
# Each graph holds one mistake that used to draw follow-on errors; it must draw exactly one.

_CASCADES = {
    "input-typo-also-missing-input": """
nodes:
  counter: {uses: nodes.basic:Counter}
  sink:
    uses: nodes.basic:Collect
    inputs: {value: counter.numbers}
""",
    "inputs-key-typo-also-missing-input": """
nodes:
  counter: {uses: nodes.basic:Counter}
  scale:
    uses: nodes.basic:Scale
    input: {value: counter.numbers}
  sink: {uses: nodes.basic:Collect, inputs: {values: scale.scaled}}
""",
    "var-cycle-also-invalid-param": """
vars: {count: "${vars.total}", total: "${vars.count}"}
nodes:
  counter: {uses: nodes.basic:Counter, params: {count: "${vars.count}"}}
  sink: {uses: nodes.basic:Collect, inputs: {values: counter.numbers}}
""",
    "missing-include-also-unknown-node": """
include: {feed: feeds/missing.yaml}
nodes:
  sink: {uses: nodes.basic:Collect, inputs: {values: feed/counter.numbers}}
""",
    "python-tag-also-invalid-value": """
nodes:
  counter: {uses: !!python/name:nodes.basic.Counter }
  sink: {uses: nodes.basic:Collect, inputs: {values: counter.numbers}}
""",
    "uses-key-typo-also-missing-key": """
nodes:
  counter: {use: nodes.basic:Counter}
  sink: {uses: nodes.basic:Collect, inputs: {values: counter.numbers}}
""",
    "vars-key-typo-also-unknown-var": """
var: {count: 10}
nodes:
  counter: {uses: nodes.basic:Counter, params: {count: "${vars.count}"}}
  sink: {uses: nodes.basic:Collect, inputs: {values: counter.numbers}}
""",
    "top-level-typo-drops-includes": """
graph: main
descripton: counts, collects
include: {feed: feed.yaml}
nodes:
  sink: {uses: nodes.basic:Collect, inputs: {values: feed/counter.numbers}}
""",
    "default-codec-typo-once-per-output": """
defaults: {codec: mgspack}
nodes:
  counter: {uses: nodes.basic:Counter}
  scale: {uses: nodes.basic:Scale, inputs: {value: counter.numbers}}
  sink: {uses: nodes.basic:Collect, inputs: {values: scale.scaled}}
""",
}


@pytest.mark.parametrize("name", sorted(_CASCADES))
def test_one_mistake_gives_one_error(name: str, tmp_path: Path) -> None:
    (tmp_path / "feed.yaml").write_text("nodes:\n  counter: {uses: nodes.basic:Counter}\n", encoding="utf-8")
    path = tmp_path / f"{name}.yaml"
    path.write_text(_CASCADES[name].lstrip(), encoding="utf-8")
    errors = [i for i in dmnflow.validate(path) if i.is_error]
    assert len(errors) == 1, _show(errors)


# ---------------------------------------------------------------- mistakes that once slipped through


def test_vars_that_is_not_a_mapping_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "graph.yaml"
    path.write_text("vars: [count, 10]\nnodes:\n  counter: {uses: nodes.basic:Counter}\n"
                    "  sink: {uses: nodes.basic:Collect, inputs: {values: counter.numbers}}\n", encoding="utf-8")
    assert [(i.code, i.loc.line if i.loc else 0) for i in dmnflow.validate(path) if i.is_error] == [
        ("invalid-value", 1)]


_CLASS_MISTAKES = {
    "params_dataclass": "from dataclasses import dataclass\nfrom dmnflow import Node, Output\n"
                        "class X(Node):\n    @dataclass\n    class Params:\n        k: int = 1\n"
                        "    out = Output(int)\n",
    "ports_returns_none": "from dmnflow import Node, Output\nclass X(Node):\n    out = Output(int)\n"
                          "    @classmethod\n    def ports(cls, params):\n        cls.cached = 1\n",
    "exits_at_import": "import sys\nsys.exit(2)  # a script's argparse run at import time\n",
}


@pytest.mark.parametrize("name", sorted(_CLASS_MISTAKES))
def test_node_class_mistake_is_an_issue_not_a_crash(name: str, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    module = f"_mistake_{name}"
    (tmp_path / f"{module}.py").write_text(_CLASS_MISTAKES[name], encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, module, raising=False)
    path = tmp_path / "graph.yaml"
    path.write_text(f"nodes:\n  x: {{uses: {module}:X}}\n", encoding="utf-8")
    try:
        issues = dmnflow.validate(path)
    except BaseException as exc:  # SystemExit included: a module may exit while imported
        pytest.fail(f"validate raised {type(exc).__name__}: {exc}")
    assert [i.code for i in issues if i.is_error]
