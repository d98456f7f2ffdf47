"""Mutated valid graphs: whatever the mistake, validation reports it with a location, never crashes.

Each example starts from a valid graph, makes one to three everyday mistakes (a dropped key,
a typo, a wrong type, a bad indentation, a duplicated line, a truncated file), then runs
``dmnflow.validate`` and ``dmnflow validate`` in-process. Neither may raise; the command exits
0 or 1, and 1 exactly when there is an error, each located in the mutated file or an include.
"""

from __future__ import annotations

import os
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import dmnflow
from dmnflow.cli import app

ROOT = Path(__file__).resolve().parents[2]

FEED = """\
graph: feed
vars:
  count: 50
nodes:
  counter:
    uses: nodes.basic:Counter
    params: {count: "${vars.count}"}
"""

TENSORS = """\
graph: tensors
description: noise vectors, averaged, collected
defaults:
  transport: ipc
  queue: 100
  restart: {when: on-failure, max_restarts: 3, backoff: 50ms}
include:
  feed:
    path: feed.yaml
    vars: {count: 20}
nodes:
  noise:
    uses: nodes.basic:Noise
    params: {count: 10, size: 4, seed: 7}
    outputs:
      vectors: {codec: tensor, send_limit: 10}
  mean:
    uses: nodes.basic:Mean
    replicas: 2
    inputs:
      vectors: {from: noise.vectors, policy: block, batch: {max: 4, wait: 1ms}}
  scale:
    uses: nodes.basic:Scale
    inputs:
      value: [mean.mean, feed/counter.numbers]
    params: {factor: 0.5}
  sink:
    uses: nodes.basic:Collect
    cpus: 0
    inputs: {values: scale.scaled}
"""

LOOP = """\
graph: loop
vars:
  gain: 0.9
  out: "${env:DMNFLOW_OUT:-out}"
nodes:
  counter:
    uses: nodes.basic:Counter
    params: {count: 5, rate_hz: 0}
  blend:
    uses: nodes.basic:Scale
    inputs:
      value: [counter.numbers, damp.scaled]
  damp:
    uses: nodes.basic:Scale
    inputs:
      value: {from: blend.scaled, feedback: true}
    params: {factor: "${vars.gain}"}
  sink:
    uses: nodes.basic:Collect
    inputs: {values: blend.scaled}
    params: {path: "${vars.out}/loop.jsonl"}
"""

BASES = {
    "quickstart": (ROOT / "graphs" / "quickstart.yaml").read_text(encoding="utf-8"),
    "tensors": TENSORS,
    "loop": LOOP,
}

# Whole-file issues: the file itself is missing or unreadable, so there is no line to show.
FILE_LEVEL = {"file-not-found", "file-unreadable"}

# ---------------------------------------------------------------- text mistakes


def _typo(word: str, data: st.DataObject) -> str:
    """One keyboard slip: a letter dropped, doubled, swapped with the next, or replaced."""
    if not word:
        return "x"
    i = data.draw(st.integers(0, len(word) - 1), label="at")
    kind = data.draw(st.sampled_from(["drop", "double", "swap", "replace"]), label="slip")
    if kind == "drop" and len(word) > 1:
        return word[:i] + word[i + 1:]
    if kind == "swap" and i + 1 < len(word):
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    if kind == "replace":
        return word[:i] + data.draw(st.sampled_from(string.ascii_lowercase), label="letter") + word[i + 1:]
    return word[:i] + word[i] + word[i:]


def _line(text: str, data: st.DataObject) -> tuple[list[str], int]:
    lines = text.splitlines(keepends=True) or [""]
    return lines, data.draw(st.integers(0, len(lines) - 1), label="line")


def truncate(text: str, data: st.DataObject) -> str:
    return text[: data.draw(st.integers(len(text) // 4, len(text)), label="cut")]


def indent(text: str, data: st.DataObject) -> str:
    lines, i = _line(text, data)
    shift = data.draw(st.sampled_from([-2, -1, 1, 2, 3]), label="shift")
    line = lines[i]
    lines[i] = line[min(-shift, len(line) - len(line.lstrip(" "))):] if shift < 0 else " " * shift + line
    return "".join(lines)


def duplicate_line(text: str, data: st.DataObject) -> str:
    lines, i = _line(text, data)
    return "".join(lines[: i + 1] + [lines[i] if lines[i].endswith("\n") else lines[i] + "\n"] + lines[i + 1:])


def delete_line(text: str, data: st.DataObject) -> str:
    lines, i = _line(text, data)
    return "".join(lines[:i] + lines[i + 1:])


def typo_in_line(text: str, data: st.DataObject) -> str:
    """A slip inside one word of one line: a key, a node name, a port, a module."""
    lines, i = _line(text, data)
    words = [w for w in _words(lines[i])]
    if not words:
        return text
    start, word = data.draw(st.sampled_from(words), label="word")
    lines[i] = lines[i][:start] + _typo(word, data) + lines[i][start + len(word):]
    return "".join(lines)


def _words(line: str) -> Iterator[tuple[int, str]]:
    start = None
    for j, ch in enumerate(line + " "):
        if ch.isalnum() or ch == "_":
            start = j if start is None else start
        elif start is not None:
            yield start, line[start:j]
            start = None


TEXT_MUTATIONS = [truncate, indent, duplicate_line, delete_line, typo_in_line]

# ---------------------------------------------------------------- structure mistakes


def _paths(data: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(data, dict):
        for k, v in data.items():
            yield path + (k,)
            yield from _paths(v, path + (k,))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield path + (i,)
            yield from _paths(v, path + (i,))


def _parent(doc: Any, path: tuple[Any, ...]) -> Any:
    for part in path[:-1]:
        doc = doc[part]
    return doc


def _retype(value: Any, data: st.DataObject) -> Any:
    if isinstance(value, bool):
        return "maybe"
    if isinstance(value, int | float):
        return data.draw(st.sampled_from(["many", [value], None]), label="int-as")
    if isinstance(value, str):
        return data.draw(st.sampled_from([[value], {value: value}, 3, None]), label="str-as")
    if isinstance(value, dict):
        return data.draw(st.sampled_from(["x", 1, [value], None]), label="map-as")
    if isinstance(value, list):
        return data.draw(st.sampled_from([value[0] if value else "x", {"x": value}, 0]), label="list-as")
    return {"x": 1}


def mutate_structure(text: str, data: st.DataObject) -> str:
    """Parse, make one mistake at one place, write YAML back."""
    doc = yaml.safe_load(text)
    paths = list(_paths(doc))
    if not paths:
        return text
    path = data.draw(st.sampled_from(paths), label="path")
    parent, key = _parent(doc, path), path[-1]
    kind = data.draw(st.sampled_from(["drop", "rename", "retype", "reference"]), label="kind")
    if kind == "drop":
        del parent[key]
    elif kind == "rename" and isinstance(parent, dict):
        parent[_typo(str(key), data)] = parent.pop(key)
    elif kind == "reference" and isinstance(parent[key], str) and "." in parent[key]:
        node, _, port = parent[key].rpartition(".")
        broken = data.draw(st.sampled_from([f"{_typo(node, data)}.{port}", f"{node}.{_typo(port, data)}",
                                            node, f"{node}.{port}.x"]), label="ref")
        parent[key] = broken
    else:
        parent[key] = _retype(parent[key], data)
    return yaml.safe_dump(doc, sort_keys=False)


# ---------------------------------------------------------------- the property


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Graphs go in a temp folder; validation runs from the repo root, as users run it."""
    folder = tmp_path_factory.mktemp("mutations")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(ROOT)
        mp.delenv("DMNFLOW_OUT", raising=False)
        yield folder


def _check(path: Path, workdir: Path) -> None:
    issues = dmnflow.validate(path)
    errors = [i for i in issues if i.is_error]
    ours = {p.resolve() for p in workdir.glob("*.yaml")}
    for issue in issues:
        assert issue.code and issue.message, issue
        assert issue.loc is not None, f"no location: {issue}"
        assert Path(issue.loc.file).resolve() in ours, f"located outside the graph files: {issue}"
        if issue.code not in FILE_LEVEL:
            assert issue.loc.line >= 1 and issue.loc.col >= 1, f"no line: {issue}"

    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert result.exit_code in (0, 1), result.output
    assert result.exit_code == (1 if errors else 0), result.output
    assert "Traceback" not in result.output


@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(base=st.sampled_from(sorted(BASES)), data=st.data())
def test_a_mutated_graph_is_reported_never_crashes(base: str, data: st.DataObject, workdir: Path) -> None:
    (workdir / "feed.yaml").write_text(FEED, encoding="utf-8")
    text = BASES[base]
    for _ in range(data.draw(st.integers(1, 3), label="mistakes")):
        mutation = data.draw(st.sampled_from([*TEXT_MUTATIONS, mutate_structure]), label="mutation")
        try:
            text = mutation(text, data)
        except yaml.YAMLError:
            continue  # structure mistakes need text that still parses; text ones already broke it
    path = workdir / "graph.yaml"
    path.write_text(text, encoding="utf-8")
    _check(path, workdir)


@pytest.mark.parametrize("base", sorted(BASES))
def test_the_starting_graphs_are_valid(base: str, workdir: Path) -> None:
    (workdir / "feed.yaml").write_text(FEED, encoding="utf-8")
    path = workdir / "graph.yaml"
    path.write_text(BASES[base], encoding="utf-8")
    assert [i for i in dmnflow.validate(path) if i.is_error] == []
    assert os.getcwd() == str(ROOT)
