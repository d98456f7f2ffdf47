"""The docs keep up with the code: every schema key and every issue code is documented."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel

from dmnflow import spec

ROOT = Path(__file__).resolve().parents[2]


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
