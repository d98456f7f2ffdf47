"""A start that talks (issue 21): while a graph starts, `dmnflow runs` lists it with its
phase, and the launch says each phase as it happens (validated, N/M processes up, ready,
first message), in that order."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

from typer.testing import CliRunner

from dmnflow.cli import app

from .procs import launched, wait_until


def _runs() -> list[dict]:
    result = CliRunner().invoke(app, ["runs", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_a_starting_run_is_listed_with_its_phase_and_the_phases_are_said_in_order(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    graph = tmp_path / "gated.yaml"
    graph.write_text(textwrap.dedent(f"""\
        graph: gated
        nodes:
          counter: {{uses: nodes.basic:Counter, params: {{count: 5}}}}
          sink: {{uses: tests.integration.nodes:GatedCollect, inputs: {{values: counter.numbers}},
                  params: {{gate: "{gate}"}}}}
        """))
    name = f"gated-{os.getpid()}"
    with launched(graph, "--name", name, env={"XDG_CACHE_HOME": str(tmp_path / "cache")}) as run:
        mine: list[dict] = []

        def listed_up() -> bool:  # both processes up; the sink's setup waits for the gate
            mine[:] = [r for r in _runs() if r["name"] == name]
            return bool(mine) and mine[0]["phase_detail"] == "2/2 processes up"

        assert wait_until(listed_up, 60, step_s=0.2), f"{name} not listed as starting: {mine}"
        assert mine[0]["phase"] == "starting"  # no message can have been sent: the sink is not set up
        assert mine[0]["pid"] == run.proc.pid and mine[0]["graph"] == "gated"
        gate.write_text("")
        _, stderr = run.proc.communicate(timeout=60)
        assert run.proc.returncode == 0, stderr
    said = ["validated", "starting 2 processes", "2/2 processes up", "2/2 processes ready", "first message"]
    lines = stderr.splitlines()
    at = [next((i for i, line in enumerate(lines) if f"gated: {what}" in line), -1) for what in said]
    assert f"compiling {graph} ..." in lines[0], stderr
    assert -1 not in at, f"missing phase lines {[s for s, i in zip(said, at, strict=True) if i < 0]}:\n{stderr}"
    assert at == sorted(at) and len(set(at)) == len(at), stderr
