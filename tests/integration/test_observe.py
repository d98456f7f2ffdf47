"""Seeing a running graph with real processes: top, echo, hz, bw against a live run; taps off
when nobody listens; Prometheus scraped and parsed; status lines without a terminal; budgets
missed and alerted; a timer-driven loop; record and replay."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

import jsonschema
import pytest
from rich.console import Console

import dmnflow
from dmnflow.observe.replay import read_records
from dmnflow.observe.session import watching
from dmnflow.runtime import launch

from .procs import ROOT, launched, wait_until

pytest.importorskip("mcap")


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def counting(tmp_path: Path, *, count: int = 200_000, rate_hz: float = 500, budget: str = "") -> Path:
    return write(tmp_path / "g.yaml", f"""
        graph: counting
        nodes:
          counter: {{uses: nodes.basic:Counter, params: {{count: {count}, rate_hz: {rate_hz}}}}}
          scale:
            uses: nodes.basic:Scale
            inputs: {{value: {{from: counter.numbers{budget}}}}}
            params: {{factor: 2.0}}
          sink: {{uses: nodes.basic:Collect, inputs: {{values: scale.scaled}}, params: {{path: {tmp_path}/out.jsonl}}}}
        """)


def dmnflow_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dmnflow", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "NO_COLOR": "1", "COLUMNS": "100"})


def wait_running(name: str, timeout_s: float = 60) -> None:
    def up() -> bool:
        return dmnflow_cli("top", name, "--once").returncode == 0
    assert wait_until(up, timeout_s, 0.5), f"run {name} did not come up"


def test_top_echo_hz_and_bw_from_another_process(tmp_path: Path) -> None:
    with launched(counting(tmp_path), "--name", "obs-cli") as run:
        wait_running("obs-cli")
        top = dmnflow_cli("top", "obs-cli", "--once")
        assert "counter.numbers → scale.value" in top.stdout and "msg/s" in top.stdout, top.stdout + top.stderr
        echo = dmnflow_cli("echo", "obs-cli", "counter.numbers", "--count", "3", "--json")
        assert echo.returncode == 0, echo.stderr
        lines = [json.loads(line) for line in echo.stdout.splitlines()]
        assert len(lines) == 3 and all(r["output"] == "counter.numbers" for r in lines)
        assert all(r["value"] == r["event_time"] for r in lines)  # the counter's numbers, decoded
        assert lines[0]["count"] < lines[1]["count"] < lines[2]["count"]
        scaled = dmnflow_cli("echo", "obs-cli", "scale.scaled", "--count", "1")
        assert scaled.stdout.startswith("--- scale.scaled  scaled  #"), scaled.stdout
        hz = dmnflow_cli("hz", "obs-cli", "counter.numbers", "--duration", "3s")
        rates = [float(line.split(":")[1].replace(",", "")) for line in hz.stdout.splitlines()
                 if line.startswith("average rate")]
        assert rates and all(400 < r < 600 for r in rates), hz.stdout  # the counter's 500/s
        bw = dmnflow_cli("bw", "obs-cli", "scale.scaled", "--duration", "2s")
        assert "average:" in bw.stdout and "/s" in bw.stdout, bw.stdout + bw.stderr
        # nobody listens any more: the taps are closed (their ipc files go with the sockets)
        run_dir = next(p.parent for p in Path(tempfile.gettempdir()).glob("dmnflow-*/name")
                       if p.read_text() == "obs-cli")
        assert wait_until(lambda: not list(run_dir.glob("tap.*")), 10), list(run_dir.glob("tap.*"))
        # a reader killed mid-way stops renewing its lease: its tap goes within a few seconds
        reader = subprocess.Popen([sys.executable, "-m", "dmnflow", "echo", "obs-cli", "scale.scaled"], cwd=ROOT,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            assert wait_until(lambda: bool(list(run_dir.glob("tap.*"))), 30)
        finally:
            reader.kill()
            reader.wait(10)
        assert wait_until(lambda: not list(run_dir.glob("tap.*")), 15)
        run.proc.send_signal(signal.SIGINT)
        assert run.proc.wait(30) == 0
    missing = dmnflow_cli("echo", "obs-cli", "counter.numbers", "--count", "1")
    assert missing.returncode == 1 and "no run named" in missing.stderr and "Traceback" not in missing.stderr


def test_stop_drains_a_run_from_another_terminal_as_ctrl_c_does(tmp_path: Path) -> None:
    with launched(counting(tmp_path), "--name", "obs-stop") as run:
        wait_running("obs-stop")
        listed = dmnflow_cli("outputs", "obs-stop", "--json")
        assert listed.returncode == 0, listed.stderr
        rows = {r["output"]: r for r in json.loads(listed.stdout)}
        assert set(rows) == {"counter.numbers", "scale.scaled"}
        assert (rows["counter.numbers"]["type"], rows["counter.numbers"]["codec"], rows["scale.scaled"]["to"]) == (
            "int", "msgpack", ["sink.values"])
        assert wait_until(lambda: (json.loads(dmnflow_cli("outputs", "obs-stop", "--json").stdout)[0]["msg_s"]
                                   or 0) > 100, 30, 0.5)  # the counter's 500/s, once a window has passed
        stop = dmnflow_cli("stop", "obs-stop")
        assert stop.returncode == 0 and stop.stdout.strip() == f"stopped obs-stop (pid {run.proc.pid})", stop.stderr
        out, err = run.proc.communicate(timeout=60)
        assert run.proc.returncode == 0, err
        assert "counting stopped" in out + err and "Traceback" not in err
    assert dmnflow_cli("stop", "obs-stop").returncode == 1  # it is gone


def test_echo_names_the_outputs_when_one_is_unknown(tmp_path: Path) -> None:
    with launched(counting(tmp_path), "--name", "obs-typo"):
        wait_running("obs-typo")
        out = dmnflow_cli("echo", "obs-typo", "counter.number", "--count", "1")
        assert out.returncode == 1 and "counter.numbers" in out.stderr and "Traceback" not in out.stderr
        assert "did you mean 'counter.numbers'?" in out.stderr  # as validate says it
        run = dmnflow_cli("hz", "obs-tpyo", "counter.numbers", "--duration", "1s")
        assert run.returncode == 1 and "did you mean 'obs-typo'?" in run.stderr


def test_prometheus_scrape_parses_and_counts_what_the_report_counts(tmp_path: Path, monkeypatch) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    monkeypatch.chdir(ROOT)
    plan = dmnflow.compile_graph(counting(tmp_path, count=600, rate_hz=400))
    scrapes: list[str] = []
    with watching(plan, Console(file=io.StringIO()), metrics="127.0.0.1:0") as session:
        url = session.urls["metrics"]
        early = {f.name: f for f in text_string_to_metric_families(  # before the first report: starting
            urllib.request.urlopen(url, timeout=10).read().decode())}

        def on_status(report: dmnflow.Report) -> None:
            scrapes.append(urllib.request.urlopen(url, timeout=10).read().decode())

        report = launch(session.plan, on_status=on_status, observer=session.observer)
        final = urllib.request.urlopen(url, timeout=10).read().decode()  # served until the session ends
    assert report.status == "finished" and len(scrapes) >= 2
    starting = early.get("dmnflow_run") or early["dmnflow_run_info"]
    assert starting.samples[0].labels == {"graph": "counting", "status": "starting"}
    assert {s.labels["node"]: s.labels["status"] for s in early["dmnflow_node_up"].samples} == {
        n.name: "starting" for n in plan.nodes}
    families = {f.name: f for f in text_string_to_metric_families(final)}
    sent = {s.labels["src"]: s.value for s in families["dmnflow_edge_messages_sent"].samples
            if s.name.endswith("_total")}
    assert sent == {"counter.numbers": 600, "scale.scaled": 600}
    hist = [s for s in families["dmnflow_edge_latency_seconds"].samples if s.name.endswith("_count")]
    assert {s.value for s in hist} == {600.0}
    buckets = [s for s in families["dmnflow_edge_latency_seconds"].samples if s.name.endswith("_bucket")
               and s.labels["edge"] == "counter.numbers -> scale.value"]
    assert buckets[-1].labels["le"] == "+Inf" and [b.value for b in buckets] == sorted(b.value for b in buckets)
    outs = {s.labels["node"]: s.value for s in families["dmnflow_node_messages_out"].samples}
    assert outs["counter"] == 600 and outs["sink"] == 0
    assert any(s.labels["status"] == "done" for s in families["dmnflow_node_up"].samples)
    progress = {s.labels["node"]: s.value for s in families["dmnflow_node_progress_ratio"].samples}
    assert progress == {"counter": 1.0}
    assert families["dmnflow_node_resident_memory_bytes"].samples[0].value > 1e6
    mid = {f.name: f for f in text_string_to_metric_families(scrapes[len(scrapes) // 2])}
    info = mid.get("dmnflow_run") or mid["dmnflow_run_info"]  # an Info family, in the text format a gauge
    assert info.samples[0].labels == {"graph": "counting", "status": "running"}


def test_without_a_terminal_a_run_logs_status_lines_and_an_80_column_report(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "dmnflow", "launch", str(counting(tmp_path, count=1500, rate_hz=500)),
                          "--status-every", "1s"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "NO_COLOR": "1", "COLUMNS": "80"})
    assert out.returncode == 0, out.stderr
    status = [line for line in out.stderr.splitlines() if " counting running " in line]
    assert len(status) >= 2, out.stderr
    assert any("numbers (" in line and "msg/s" in line for line in status), status
    assert all(len(line) <= 80 for line in out.stdout.splitlines()), out.stdout
    assert "counter.numbers → scale.value" in out.stdout and "…" not in out.stdout


def test_a_missed_budget_is_counted_reported_and_alerted(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # the example writes to out/
    g = ROOT / "docs" / "examples" / "over_budget.yaml"
    report = launch(dmnflow.compile_graph(g))
    assert report.status == "finished", report.errors
    budgets = {b["name"]: b for b in report.budgets}
    edge = budgets["counter.numbers -> scale.value"]
    assert edge["status"] == "missed" and edge["missed_windows"] >= 1 and edge["over_max"] > 0
    assert edge["measured_us"]["p50"] > 1.0 and edge["limits_us"] == {"p50": 1.0, "max": 2.0}
    path = budgets["counter -> sink"]
    assert path["kind"] == "path" and path["status"] == "missed" and path["messages"] == 1500
    journal = tmp_path / "out" / "over_budget_journal.jsonl"
    entries = [json.loads(line)["value"] for line in journal.read_text().splitlines()]
    fired = [e for e in entries if e.get("state") == "firing" and str(e.get("rule", "")).startswith("budget ")]
    assert fired, entries
    console = Console(file=io.StringIO(), width=80, color_system=None)
    from dmnflow.observe.view import render_report

    render_report(report, console)
    text = console.file.getvalue()
    assert "latency budgets" in text and "missed" in text and "p50 < 1 us" in text
    assert json.loads(report.to_json())["budgets"][0]["status"] == "missed"


def test_a_loop_driven_by_a_timer_runs_until_stopped(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    g = write(tmp_path / "pingpong.yaml", """
        graph: ping-pong
        nodes:
          ping:
            uses: docs.examples.pingnodes:Ping
            inputs: {back: {from: pong.out, feedback: true}}
            timers: {tick: 50ms}
          pong: {uses: docs.examples.pingnodes:Ping, inputs: {back: ping.out}}
        """)
    assert not [i for i in dmnflow.validate(g) if i.code == "no-driver"]
    start = time.monotonic()
    report = launch(dmnflow.compile_graph(g), duration_s=1.5)
    assert time.monotonic() - start >= 1.5  # it did not end by itself
    assert report.status == "stopped" and report.exit_code == 0, report.errors
    assert report.nodes["ping"].summary["ticks"] >= 3
    assert report.nodes["pong"].summary["answered"] > 0


def test_record_then_replay_into_a_subgraph_gives_the_same_outputs(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    g = counting(tmp_path, count=800, rate_hz=0)
    first = tmp_path / "first.mcap"
    with watching(dmnflow.compile_graph(g), Console(file=io.StringIO()), record=first,
                  edges=["counter.numbers", "scale.scaled"]) as session:
        report = launch(session.plan, observer=session.observer)
    assert report.status == "finished"
    from mcap.reader import make_reader

    with open(first, "rb") as f:  # what Foxglove reads: json channels with a JSON Schema each
        reader = make_reader(f, validate_crcs=True)
        summary = reader.get_summary()
        assert {c.topic for c in summary.channels.values()} == {"/counter.numbers", "/scale.scaled"}
        assert {c.message_encoding for c in summary.channels.values()} == {"json"}
        assert {s.encoding for s in summary.schemas.values()} == {"jsonschema"}
        assert sum(summary.statistics.channel_message_counts.values()) == 1600
        seen = 0
        for schema, channel, message in reader.iter_messages(log_time_order=True):
            envelope = json.loads(message.data)
            assert channel.schema_id == schema.id and schema.name == channel.metadata["output"]
            jsonschema.validate(envelope, json.loads(schema.data))
            assert envelope["event_time"] < 10**17  # the counter's index, not a time: the file's time line
            assert message.log_time == envelope["recorded_ns"] and message.publish_time == envelope["send_ns"]
            assert envelope["recorded_ns"] >= envelope["send_ns"]
            seen += 1
        assert seen == 1600
    from dmnflow.observe.replay import replay_plan

    second = tmp_path / "second.mcap"
    plan = replay_plan(first, g, ["scale"])
    assert {n.name for n in plan.nodes} == {"replay", "scale", "sink"}
    with watching(plan, Console(file=io.StringIO()), record=second, edges=["scale.scaled"]) as session:
        replayed = launch(session.plan, observer=session.observer)
    assert replayed.status == "finished" and replayed.nodes["sink"].messages_in == 800
    want = [(r["value"], r["event_time"]) for r in read_records(first, ["scale.scaled"])]
    got = [(r["value"], r["event_time"]) for r in read_records(second, ["scale.scaled"])]
    assert got == want and len(got) == 800
    cut = tmp_path / "cut.mcap"  # a recording whose run was killed before it was finished
    cut.write_bytes(first.read_bytes()[: first.stat().st_size * 2 // 3])
    partial = read_records(cut)
    assert partial
    for output in ("counter.numbers", "scale.scaled"):  # each output's records up to the cut, as they were
        got = [(r["event_time"], r["value"]) for r in partial if r["output"] == output]
        assert got == [(r["event_time"], r["value"]) for r in read_records(first, [output])][:len(got)]


def test_a_recording_of_an_earlier_version_still_replays(tmp_path: Path) -> None:
    """Recordings made before the json channels: cbor, schemaless."""
    import cbor2
    import numpy as np
    from mcap.writer import Writer

    old = tmp_path / "old.mcap"
    with open(old, "wb") as f:
        writer = Writer(f)
        writer.start(profile="", library="dmnflow")
        plain = writer.register_channel("/scale.scaled", "cbor", 0, {"output": "scale.scaled", "topic": "scaled",
                                                                   "codec": "msgpack", "value": "plain"})
        tensor = writer.register_channel("/f.y", "cbor", 0, {"output": "f.y", "topic": "y", "codec": "tensor",
                                                           "value": "tensor"})
        for i in range(3):
            env = {"value": {"v": i * 0.5}, "event_time": i, "attrs": None, "origin_ns": 1, "send_ns": 100 + i,
                   "count": i}
            writer.add_message(plain, log_time=1000 + i, data=cbor2.dumps(env), publish_time=100 + i)
        array = np.ones((2, 1), dtype=np.float32)
        env = {"value": {"dtype": "float32", "shape": [2, 1], "data": array.tobytes()}, "event_time": 1,
               "attrs": None, "origin_ns": 1, "send_ns": 5, "count": 0}
        writer.add_message(tensor, log_time=2000, data=cbor2.dumps(env), publish_time=5)
        writer.finish()
    records = read_records(old)
    assert [(r["output"], r["event_time"]) for r in records] == [("scale.scaled", 0), ("scale.scaled", 1),
                                                                  ("f.y", 1), ("scale.scaled", 2)]
    assert [r["value"] for r in records if r["output"] == "scale.scaled"] == [{"v": 0.0}, {"v": 0.5}, {"v": 1.0}]
    assert next(r["value"] for r in records if r["output"] == "f.y").tobytes() == array.tobytes()


def test_replay_says_which_stream_the_recording_lacks(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    g = counting(tmp_path, count=50, rate_hz=0)
    rec = tmp_path / "only-scaled.mcap"
    with watching(dmnflow.compile_graph(g), Console(file=io.StringIO()), record=rec, edges=["scale.scaled"]) as s:
        launch(s.plan, observer=s.observer)
    out = dmnflow_cli("replay", str(rec), str(g), "--into", "scale")
    assert out.returncode == 1 and "counter.numbers" in out.stderr and "--edges" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_a_slow_start_up_is_no_stale_feed(tmp_path: Path, monkeypatch) -> None:
    """Health's setup runs as soon as its process is up; the graph starts once every process is
    (here a sink whose setup takes 4 s): a feed is stale only when it is silent after the start."""
    monkeypatch.chdir(ROOT)
    g = tmp_path / "slow.yaml"
    g.write_text(textwrap.dedent(f"""
        graph: slow-start
        nodes:
          counter: {{uses: nodes.basic:Counter, params: {{count: 300, rate_hz: 100}}}}
          sink:
            uses: tests.integration.nodes:SlowSink
            inputs: {{values: counter.numbers}}
            params: {{path: {tmp_path}/out.jsonl, delay_s: 4}}
          health:
            uses: nodes.monitoring:Health
            params: {{stale_after_s: 3, expected: [numbers]}}
            timers: {{check: 200ms}}
            inputs: {{feeds: counter.numbers}}
        """))
    report = launch(dmnflow.compile_graph(g))
    assert report.status == "finished", report.errors
    health = report.nodes["health"].summary
    assert health["messages"] == 300 and health["stale_events"] == 0, health
