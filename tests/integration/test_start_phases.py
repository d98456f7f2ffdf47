"""A start that talks (issue 21): while a graph starts, `dmnflow runs` lists it with its
phase, and the launch says each phase as it happens (validated, N/M processes up, ready,
first message), in that order."""

from __future__ import annotations

import json
import os
import signal
import tempfile
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


def _gated_compile(tmp_path: Path, name: str) -> tuple[Path, Path, dict[str, str]]:
    """A graph whose compile waits for a gate file: its node module's import blocks on it (the
    compile imports every node), with an empty compile cache so the compile does happen."""
    gate = tmp_path / "compile-gate"
    (tmp_path / "gated_import.py").write_text(textwrap.dedent(f"""\
        import os, time
        _until = time.monotonic() + 120  # a test that fails does not leave this waiting forever
        while not os.path.exists({str(gate)!r}) and time.monotonic() < _until:
            time.sleep(0.05)
        from nodes.basic import Collect
        """))
    graph = tmp_path / f"{name}.yaml"
    graph.write_text(textwrap.dedent(f"""\
        graph: {name}
        nodes:
          counter: {{uses: nodes.basic:Counter, params: {{count: 5}}}}
          sink: {{uses: gated_import:Collect, inputs: {{values: counter.numbers}},
                  params: {{path: "{tmp_path}/out.jsonl"}}}}
        """))
    path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH", "")) if p)
    return gate, graph, {"XDG_CACHE_HOME": str(tmp_path / "cache"), "PYTHONPATH": path}


def _launch_entries() -> list[Path]:
    """The run directories of launches that compile (what `dmnflow runs` reads for them)."""
    return [p.parent for p in Path(tempfile.gettempdir()).glob("dmnflow-*/launch.pid")]


def test_a_compiling_run_is_listed_and_top_and_dashboard_say_it_is_starting(tmp_path: Path) -> None:
    """Issue 21, item 2: a cold compile takes seconds, and the run is in `dmnflow runs` for all of
    them (its phase: compiling); `top` and `dashboard` say it is starting, not "no run named"."""
    gate, graph, env = _gated_compile(tmp_path, "compiled")
    with launched(graph, env=env) as run:  # no --name: listed by the graph's name, read from its file
        mine: list[dict] = []

        def listed() -> bool:
            mine[:] = [r for r in _runs() if r["pid"] == run.proc.pid]
            return bool(mine)

        assert wait_until(listed, 60, step_s=0.1), f"the compiling launch is not listed: {_runs()}"
        assert mine[0]["name"] == "compiled" and mine[0]["graph"] == "compiled", mine
        assert mine[0]["phase"] == "compiling" and "validating" in mine[0]["phase_detail"], mine
        assert run.proc.poll() is None and not gate.exists()  # still in the compile: the gate is closed
        table = CliRunner().invoke(app, ["runs"])
        assert "compiling (validating" in table.output and "compiled" in table.output, table.output
        for command in (["top", "compiled", "--once"], ["top", "--once"], ["dashboard", "compiled", "-d", "1s"]):
            said = CliRunner().invoke(app, command)
            assert said.exit_code == 1, (command, said.output)
            assert "is starting (compiling" in said.output and "no run named" not in said.output, (command, said.output)
        gate.write_text("")
        _, stderr = run.proc.communicate(timeout=120)
        assert run.proc.returncode == 0, stderr
    assert not [r for r in _runs() if r["pid"] == run.proc.pid]
    assert not _launch_entries(), "the compiling launch's entry outlived it"


def test_a_compile_interrupted_or_failed_leaves_no_entry(tmp_path: Path) -> None:
    gate, graph, env = _gated_compile(tmp_path, "interrupted")
    with launched(graph, "--name", "cut", env=env) as run:
        assert wait_until(lambda: any(r["name"] == "cut" and r["phase"] == "compiling" for r in _runs()), 60,
                          step_s=0.1), _runs()
        run.proc.send_signal(signal.SIGINT)  # Ctrl-C while the graph compiles
        _, stderr = run.proc.communicate(timeout=60)
        assert run.proc.returncode == 130, stderr
        assert "interrupted while the graph compiled" in stderr and "Traceback" not in stderr, stderr
    assert not [r for r in _runs() if r["pid"] == run.proc.pid] and not _launch_entries()
    bad = tmp_path / "bad.yaml"
    bad.write_text("graph: bad\nnodes:\n  a: {uses: nodes.basic:Countr}\n")
    with launched(bad, env=env) as run:
        _, stderr = run.proc.communicate(timeout=60)
        assert run.proc.returncode == 1 and "Countr" in stderr, stderr
    assert not _launch_entries(), "a failed compile's entry outlived it"
