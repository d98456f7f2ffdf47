"""`dmnflow schema`: the JSON Schema of graph files accepts every shipped graph and refuses typos."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
import yaml

import dmnflow

ROOT = Path(__file__).resolve().parents[2]
# tune files (tune_*.yaml) are not graphs: tests/unit/test_tune.py checks them against their own schema
VALID = sorted(p for p in (ROOT / "graphs").glob("*.yaml") if not p.name.startswith("tune_"))


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = dmnflow.json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_there_are_shipped_graphs():
    assert ROOT / "graphs" / "quickstart.yaml" in VALID


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_shipped_graphs_validate_against_the_schema(validator, path):
    errors = list(validator.iter_errors(yaml.safe_load(path.read_text())))
    assert errors == []


@pytest.mark.parametrize(("doc", "where"), [
    ({"nodes": {"a": {"uses": "m:C", "parms": {}}}}, "parms"),
    ({"nodes": {"a": {"uses": "m:C", "inputs": {"x": {"form": "b.y"}}}}}, "form"),
    ({"nodes": {"a": {"uses": "m:C", "restart": {"when": "sometimes"}}}}, "sometimes"),
    ({"nodes": {"a": {"uses": "m:C", "replicas": 0}}}, "0"),
    ({"nodes": {"a": {}}}, "uses"),
    ({"defaults": {"transport": "udp"}, "nodes": {}}, "udp"),
])
def test_schema_refuses_mistakes(validator, doc, where):
    errors = list(validator.iter_errors(doc))
    assert errors and any(where in m for m in _messages(errors))


def _messages(errors) -> list[str]:
    """Messages of errors and of the alternatives inside anyOf failures."""
    out = []
    for e in errors:
        out.append(e.message)
        out.extend(_messages(e.context or []))
    return out


def test_substitutions_and_shorthands_are_allowed(validator):
    doc = {"vars": {"n": 2}, "include": {"x": "other.yaml"}, "nodes": {"a": {
        "uses": "m:C", "replicas": "${vars.n}", "cpus": "0-1", "restart": "always",
        "inputs": {"x": "b.y", "z": ["b.y", "c.y"]}}}}
    assert list(validator.iter_errors(doc)) == []
