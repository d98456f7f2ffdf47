"""The latency mode's iceoryx2 edge in a real run: two spinning (``busy: true``) processes, the
edge between them on shared memory (``transport/iox.py``), the books adding up, the end
acknowledged, and a killed consumer restarted with its loss counted. Skipped without
iceoryx2 (the ``iox`` extra). Each process spins on a core of its own for the run's ~1 s."""

from __future__ import annotations

import json
import os
import signal
import textwrap
from pathlib import Path

import pytest

import dmnflow
from dmnflow.runtime import launch
from dmnflow.transport.iox import available

from .procs import ROOT, launched, wait_until

pytestmark = pytest.mark.skipif(not available(), reason="iceoryx2 is not installed (the iox extra)")


def spinning(tmp_path: Path, count: int, rate_hz: float, sink: str = "nodes.basic:Collect") -> Path:
    path = tmp_path / "spin.yaml"
    path.write_text(textwrap.dedent(f"""
        graph: spin
        defaults: {{policy: block, restart: {{when: always, backoff: 0.05}}}}
        nodes:
          src: {{uses: nodes.basic:Counter, params: {{count: {count}, rate_hz: {rate_hz}}}, busy: true, cpus: 0}}
          sink:
            uses: {sink}
            inputs: {{values: src.numbers}}
            params: {{path: {tmp_path}/out.jsonl}}
            busy: true
            cpus: 1
        """).lstrip())
    return path


def test_an_edge_between_spinning_processes_goes_on_iceoryx2_and_loses_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    n = 3000
    plan = dmnflow.compile_graph(spinning(tmp_path, n, 3000), machine_cpus=[0, 1])
    assert [e.transport for e in plan.edges] == ["iox"]
    report = launch(plan)
    assert report.status == "finished" and report.exit_code == 0, report.errors
    [edge] = report.edges
    assert (edge.sent, edge.received, edge.lost, edge.decode_errors) == (n, n, 0, 0)
    values = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert values == list(range(n))  # every record, in order, and the end after the last


def test_a_killed_consumer_on_an_iox_edge_is_restarted_and_its_loss_counted(tmp_path):
    report_file = tmp_path / "report.json"
    out = tmp_path / "out.jsonl"

    def lines() -> int:
        return len(out.read_text().splitlines()) if out.exists() else 0

    graph = spinning(tmp_path, 4000, 2000, sink="tests.integration.nodes:Tap")
    with launched(graph, "--report", str(report_file)) as run:
        pids = run.wait_for_workers({"src", "sink"})
        assert wait_until(lambda: lines() >= 300, 30.0), "no data flowed"
        os.kill(pids["sink"], signal.SIGKILL)
        assert wait_until(lambda: run.workers().get("sink") not in (None, pids["sink"]), 10.0), "not restarted"
        run.proc.wait(timeout=60)
        assert run.proc.returncode == 0, run.proc.stderr.read() if run.proc.stderr else ""
    report = json.loads(report_file.read_text())
    assert report["status"] == "finished" and report["nodes"]["sink"]["restarts"] == 1
    [edge] = report["edges"]
    assert edge["sent"] + edge["dropped"] == 4000  # sent, or refused while no consumer was there
    assert edge["received"] + edge["lost"] == edge["sent"] + edge["dropped"]  # whatever the kill took is counted
    values = [float(v) for v in out.read_text().splitlines()]
    assert values == sorted(values) and len(values) > 300  # a restart loses, never reorders
