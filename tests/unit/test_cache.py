"""The compile cache (dmnflow/cache.py): an answer is reused only while nothing it depends on
has changed; any change of an input compiles again, and an error is never kept."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dmnflow.cache import cache_dir, compiled
from dmnflow.compiler import check
from dmnflow.spec import load_overlay

ROOT = Path(__file__).resolve().parents[2]
_ids = itertools.count()

NODES = '''
from typing import Any

from pydantic import BaseModel, ConfigDict

from dmnflow import Input, Node, Output


class Src(Node):
    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        count: int = 1
        label: str = ""

    out = Output(int)

    def run(self, ctx: Any):
        for n in range(ctx.params.count):
            yield "out", n, n


class Sink(Node):
    value = Input(int)

    def on_value(self, value: int, ctx: Any) -> None:
        pass


class Modelled(Node):
    needs_model = True
    value = Input(int)

    def on_value(self, value: int, ctx: Any) -> None:
        pass

    @classmethod
    def check_model(cls, params: Any, model: Any) -> list[tuple[str, str, str]]:
        with open(model.path, "rb") as f:
            bad = f.read().startswith(b"bad")
        return [("model-mismatch", "the model file is bad", "train it again")] if bad else []
'''


class Graph:
    """A graph over a node module of its own, with an include, a profile, an overlay, an
    environment variable and a model file: every kind of input the cache keys on."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.module = f"cachenodes_{os.getpid()}_{next(_ids)}"
        (root / f"{self.module}.py").write_text(NODES)
        (root / "model.pt").write_bytes(b"good model")
        (root / "sub.yaml").write_text(f"nodes:\n  s2: {{uses: {self.module}:Src}}\n"
                                       f"  k2: {{uses: {self.module}:Sink, inputs: {{value: s2.out}}}}\n")
        (root / "best.yaml").write_text("vars.n: 3\n")
        self.file = root / "g.yaml"
        self.file.write_text(textwrap.dedent(f"""\
            graph: cachetest
            vars: {{n: 1}}
            include:
              sub: {{path: sub.yaml}}
            profiles:
              other: {{vars: {{n: 2}}}}
            nodes:
              src: {{uses: {self.module}:Src, params: {{count: "${{vars.n}}", label: "${{env:CACHETEST_LABEL:-a}}"}}}}
              sink: {{uses: {self.module}:Sink, inputs: {{value: src.out}}}}
              modelled: {{uses: {self.module}:Modelled, inputs: {{value: src.out}}, model: {{path: model.pt}}}}
            """))
        self.sets: list[str] = []
        self.overlays: list[Path] = [root / "best.yaml"]
        self.profile: str | None = None
        self.models = True
        self.compiles = 0

    def compile(self):
        def compute():
            self.compiles += 1
            overrides = [o for f in self.overlays for o in load_overlay(f)[0]] + self.sets
            return check(self.file, overrides, profile=self.profile, models=self.models)

        return compiled(self.file, self.sets, self.overlays, self.profile, self.models, compute)


@pytest.fixture
def graph(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.syspath_prepend(str(tmp_path))
    return Graph(tmp_path)


def test_an_unchanged_graph_is_answered_from_the_cache(graph):
    first = graph.compile()
    assert not first.cached and graph.compiles == 1
    assert not any(i.is_error for i in first.issues)
    again = graph.compile()
    assert again.cached and graph.compiles == 1
    assert again.plan_json == first.plan_json
    assert [i.to_dict() for i in again.issues] == [i.to_dict() for i in first.issues]
    assert again.plan().graph == "cachetest"
    assert len(list(cache_dir().glob("*.json"))) == 1
    assert cache_dir() == graph.root / "cache" / "dmnflow" / "compile"


def _append(path: Path, text: str) -> None:
    with path.open("a") as f:
        f.write(text)


CHANGES = {
    "graph file": lambda g, mp: _append(g.file, "# an edit\n"),
    "included file": lambda g, mp: _append(g.root / "sub.yaml", "# an edit\n"),
    "--set": lambda g, mp: g.sets.append("vars.n=5"),
    "overlay file": lambda g, mp: (g.root / "best.yaml").write_text("vars.n: 4\n"),
    "profile": lambda g, mp: setattr(g, "profile", "other"),
    "models checked": lambda g, mp: setattr(g, "models", False),
    "node class source": lambda g, mp: _append(g.root / f"{g.module}.py", "# an edit\n"),
    "model file": lambda g, mp: (g.root / "model.pt").write_bytes(b"good model, retrained"),
    "environment": lambda g, mp: mp.setenv("CACHETEST_LABEL", "b"),
    "a new module beside the nodes": lambda g, mp: (g.root / "shadow.py").write_text(""),
    "working directory": lambda g, mp: mp.chdir(g.root),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_changing_any_input_compiles_again(graph, monkeypatch, change):
    graph.compile()
    assert graph.compile().cached and graph.compiles == 1
    CHANGES[change](graph, monkeypatch)
    result = graph.compile()
    assert not result.cached and graph.compiles == 2, f"a changed {change} was answered from the cache"
    assert graph.compile().cached and graph.compiles == 2  # the new answer is kept in turn


def test_an_error_is_never_kept(graph):
    (graph.root / "model.pt").write_bytes(b"bad model")
    for n in (1, 2):
        result = graph.compile()
        assert not result.cached and graph.compiles == n
        assert [i.code for i in result.issues if i.is_error] == ["model-mismatch"]
        assert result.plan_json is None
    assert not cache_dir().exists() or not list(cache_dir().glob("*.json"))


def _validate(graph: Graph) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XDG_CACHE_HOME": str(graph.root / "cache"),
           "PYTHONPATH": os.pathsep.join([str(graph.root), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "dmnflow", "validate", "--json", str(graph.file),
                           "--overlay", str(graph.root / "best.yaml")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_a_cached_validate_shows_an_error_a_change_makes(graph):
    """`dmnflow validate` twice clean (the second from the cache), then the node's port renamed
    and the model replaced: the next validate reports both errors, located."""
    for _ in range(2):
        done = _validate(graph)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["valid"] is True
    assert len(list(cache_dir().glob("*.json"))) == 1
    source = graph.root / f"{graph.module}.py"
    source.write_text(NODES.replace("    value = Input(int)\n\n    def on_value(self, value: int, ctx: Any) -> None:"
                                    "\n        pass\n\n\nclass Modelled",
                                    "    values = Input(int)\n\n    def on_values(self, values: int, ctx: Any) -> None:"
                                    "\n        pass\n\n\nclass Modelled", 1))
    (graph.root / "model.pt").write_bytes(b"bad model")
    done = _validate(graph)
    assert done.returncode == 1, done.stdout
    codes = sorted(i["code"] for i in json.loads(done.stdout)["issues"] if i["severity"] == "error")
    assert "model-mismatch" in codes and len(codes) >= 2, codes
