"""Graphs over tcp: many edges of every kind, fixed ports that outside clients read, a port
already taken, binds beyond loopback, and a restarted producer that keeps its port.

Every process a test starts is stopped by PID, also when the test fails (procs.launched).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import lz4.block
import msgpack
import pytest
import zmq

import dmnflow
from dmnflow.runtime import launch

from .procs import ROOT, alive, launched, run_dir_of, wait_until


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lines(path: Path) -> list[float]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def tcp_mix(tmp_path: Path, n: int, p1: int, p2: int) -> Path:
    """Every kind of tcp edge at once: fixed ports (streams) and automatic ones, block and drop
    policies, replicas sharing a stream, a group (inproc inside, tcp outside), a topic filter
    and a feedback loop over tcp."""
    return write(tmp_path / "mix.yaml", f"""
        graph: tcp-mix
        defaults: {{transport: tcp, policy: block, queue: 300}}
        nodes:
          src:
            uses: nodes.basic:Counter
            params: {{count: {n}}}
            outputs: {{numbers: {{port: {p1}}}}}
          fan:
            uses: nodes.basic:Scale
            replicas: 2
            params: {{factor: 2.0}}
            inputs: {{value: src.numbers}}
          copy:
            uses: nodes.basic:Scale
            inputs: {{value: src.numbers}}
            outputs: {{scaled: {{port: {p2}}}}}
          g1: {{uses: nodes.basic:Scale, group: pair, inputs: {{value: fan.scaled}}}}
          g2: {{uses: nodes.basic:Scale, group: pair, params: {{offset: 1.0}}, inputs: {{value: g1.scaled}}}}
          head:
            uses: tests.integration.test_runtime:Looped
            inputs: {{value: src.numbers, back: {{from: tail.back, feedback: true}}}}
          tail: {{uses: tests.integration.test_runtime:SlowToEnd, inputs: {{value: head.out}}}}
          shared:
            uses: nodes.basic:Collect
            params: {{path: {tmp_path}/shared.jsonl}}
            inputs: {{values: g2.scaled}}
          copied:
            uses: nodes.basic:Collect
            params: {{path: {tmp_path}/copied.jsonl}}
            inputs: {{values: copy.scaled}}
          slow:
            uses: nodes.basic:Counter
            params: {{count: 300, rate_hz: 1000}}
          subs:
            uses: nodes.basic:Collect
            params: {{path: {tmp_path}/subs.jsonl}}
            inputs: {{values: {{from: slow.numbers, policy: drop}}}}
          subs_fixed:
            uses: nodes.basic:Collect
            params: {{path: {tmp_path}/subs_fixed.jsonl}}
            inputs: {{values: {{from: copy.scaled, policy: drop, queue: 100000}}}}
        """)


def test_a_graph_with_many_tcp_edges_of_every_kind_starts_and_delivers_every_message(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    n = 3000
    plan = dmnflow.compile_graph(tcp_mix(tmp_path, n, free_port(), free_port()))
    patterns = {(e.transport, e.pattern) for e in plan.edges}
    assert {("tcp", "stream"), ("tcp", "push"), ("tcp", "pub"), ("inproc", "push")} <= patterns
    assert len({e.bind for e in plan.edges}) > 5 and len(plan.binds()) == len({b.id for b in plan.binds().values()})
    report = launch(plan, duration_s=90)
    assert report.status == "finished", (report.status, report.errors)
    assert sorted(lines(tmp_path / "shared.jsonl")) == sorted(2.0 * i + 1.0 for i in range(n))  # via both replicas
    assert lines(tmp_path / "copied.jsonl") == [float(i) for i in range(n)]  # in order, over the fixed port
    assert lines(tmp_path / "subs.jsonl") == list(range(300))
    assert lines(tmp_path / "subs_fixed.jsonl") == [float(i) for i in range(n)]
    assert report.nodes["tail"].messages_in == n
    feedback = {e.id for e in plan.edges if e.feedback}
    for edge in report.edges:
        if edge.id in feedback:  # a feedback input holds nothing open: echoes still in flight when the
            # loop's head ends are lost, and counted (how many depends on the machine's timing)
            assert (edge.received + edge.lost, edge.dropped, edge.decode_errors) == (edge.sent, 0, 0), edge
            continue
        assert (edge.sent, edge.lost, edge.decode_errors) == (edge.received, 0, 0), edge
    assert sum(s.junk for s in report.sockets) == 0
    fan = [e for e in report.edges if e.src == "src.numbers" and e.dst.startswith("fan")]
    assert sum(e.received for e in fan) == n and all(e.received > 0 for e in fan)  # shared between replicas


@pytest.mark.parametrize("graph", ["graphs/quickstart.yaml"])
def test_the_quickstart_runs_over_tcp(graph, tmp_path):
    out = subprocess.run([sys.executable, "-m", "dmnflow", "launch", graph, "--set", "defaults.transport=tcp",
                          "--report", str(tmp_path / "r.json")], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, env={**os.environ, "DMNFLOW_OUT": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["status"] == "finished"
    assert [(e["sent"], e["received"], e["lost"]) for e in report["edges"]] == [(1000, 1000, 0)] * 2


def _seed_ports_free() -> bool:
    for port in range(5555, 5568):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


@pytest.mark.skipif(not _seed_ports_free(), reason="the seed's ports 5555-5567 are taken on this machine")
def test_a_plain_pyzmq_sub_reads_market_data_from_the_seed_port_5555(tmp_path):
    """The seed-ports profile: an outside SUB on 5555 gets the per-symbol bars, decodable with
    msgpack and lz4 as docs/wire.md says, and on 5556 the per-symbol features."""
    ctx = zmq.Context()
    subs = {}
    for port, prefix in ((5555, b"market_data."), (5556, b"features."), (5557, b"predictions."),
                         (5558, b"account"), (5565, b""), (5567, b"dashboard.")):
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.connect(f"tcp://127.0.0.1:{port}")
        sub.subscribe(prefix)
        subs[port] = sub
    got: dict[int, list[list[bytes]]] = {p: [] for p in subs}
    try:
        with launched(ROOT / "graphs/dmn_trading.yaml", "--profile", "seed-ports", "--duration", "25s",
                      "--report", str(tmp_path / "r.json"), env={"DMNFLOW_OUT": str(tmp_path)}) as run:
            deadline = time.monotonic() + 90
            poller = zmq.Poller()
            for sub in subs.values():
                poller.register(sub, zmq.POLLIN)
            while time.monotonic() < deadline and run.proc.poll() is None:
                for sock, _ in poller.poll(200):
                    port = next(p for p, s in subs.items() if s is sock)
                    got[port].append(sock.recv_multipart())
            run.proc.wait(timeout=60)
            assert run.proc.returncode == 0, run.proc.stderr.read()
    finally:
        for sub in subs.values():
            sub.close()
        ctx.term()
    bars = [m for m in got[5555] if m[0].startswith(b"market_data.")]
    assert len(bars) > 100
    topic, header, payload = bars[-1]
    kind, src, inc, seq, origin_ns, origin, send_ns, event_time, meta, attrs = msgpack.unpackb(header)
    assert kind == 0 and seq >= 0 and isinstance(send_ns, int)
    if isinstance(meta, int):  # msgpack+lz4, compressed above compress_above: meta is the unpacked size
        payload = lz4.block.decompress(payload, uncompressed_size=meta)
    bar = msgpack.unpackb(payload)
    assert topic == b"market_data." + bar["symbol"].encode() and {"t", "close"} <= set(bar)
    assert {m[0].split(b".")[0] for m in got[5556]} == {b"features"}
    feature = msgpack.unpackb(got[5556][-1][2])
    assert len(feature["features"]) == 8 and got[5556][-1][0] == b"features." + feature["symbol"].encode()
    assert {m[0].rsplit(b".", 1)[0] for m in got[5557]} >= {b"predictions"}
    assert got[5558] and got[5565] and got[5567]
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["status"] == "stopped" and not report["errors"]
    fills = report["nodes"]["execution"]["summary"]
    assert fills["broker_fills"] > 0, fills  # it traded
    for edge in report["edges"]:
        assert edge["lost"] == 0, edge


def test_a_fixed_port_in_use_is_a_clear_error_and_nothing_starts(tmp_path):
    port = free_port()
    holder = socket.socket()
    holder.bind(("127.0.0.1", port))
    holder.listen()
    g = write(tmp_path / "taken.yaml", f"""
        nodes:
          src: {{uses: nodes.basic:Counter, params: {{count: 10}}, outputs: {{numbers: {{port: {port}}}}}}}
          sink: {{uses: nodes.basic:Collect, inputs: {{values: src.numbers}}}}
        """)
    try:
        out = subprocess.run([sys.executable, "-m", "dmnflow", "launch", str(g)], cwd=ROOT, capture_output=True,
                             text=True, timeout=60)
    finally:
        holder.close()
    assert out.returncode == 1, (out.returncode, out.stderr)
    assert f"node src, output numbers: tcp port {port}" in out.stderr and "already in use" in out.stderr
    assert "Traceback" not in out.stderr


def test_binding_beyond_loopback_without_curve_is_refused_unless_insecure(tmp_path):
    g = write(tmp_path / "wide.yaml", """
        defaults: {transport: tcp}
        nodes:
          src: {uses: nodes.basic:Counter, outputs: {numbers: {host: 0.0.0.0}}}
          sink: {uses: nodes.basic:Collect, inputs: {values: src.numbers}}
        """)
    [issue] = [i for i in dmnflow.validate(g) if i.is_error]
    assert issue.code == "insecure-bind" and (issue.loc.line, issue.loc.col) == (3, 62)
    assert "security: {curve: keys/}" in issue.hint
    assert not [i for i in dmnflow.validate(g, ["security.insecure=true"]) if i.is_error]
    assert not [i for i in dmnflow.validate(g, ["nodes.src.outputs.numbers.host=127.0.0.2"]) if i.is_error]


def test_a_restarted_producer_takes_back_its_automatic_port_and_its_consumers_follow(tmp_path):
    g = write(tmp_path / "restart.yaml", f"""
        defaults: {{transport: tcp, policy: block}}
        nodes:
          src: {{uses: nodes.basic:Counter, params: {{count: 100000, rate_hz: 2000}}}}
          mid: {{uses: nodes.basic:Scale, inputs: {{value: src.numbers}}, restart: {{when: always, backoff: 0.1}}}}
          sink:
            uses: tests.integration.nodes:Tap
            params: {{path: {tmp_path}/out.txt}}
            inputs: {{values: mid.scaled}}
        """)
    with launched(g, "--duration", "8s", "--report", str(tmp_path / "r.json")) as run:
        mid = run.wait_for_workers({"src", "mid", "sink"})["mid"]
        assert wait_until(lambda: (tmp_path / "out.txt").exists() and
                          len((tmp_path / "out.txt").read_text().splitlines()) > 500, 30)
        run_dir = run_dir_of(run.proc.pid)
        before = json.loads((run_dir / "endpoints.json").read_text())
        os.kill(mid, signal.SIGKILL)
        assert wait_until(lambda: run.workers().get("mid") not in (None, mid), 20)
        count = len((tmp_path / "out.txt").read_text().splitlines())
        assert wait_until(lambda: len((tmp_path / "out.txt").read_text().splitlines()) > count + 500, 30)
        after = json.loads((run_dir / "endpoints.json").read_text())
        assert before == after  # the same automatic ports: consumers still dialling them find it
        run.proc.wait(timeout=60)
        assert not alive(mid)
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["nodes"]["mid"]["restarts"] == 1
    received = len((tmp_path / "out.txt").read_text().splitlines())
    sent = report["nodes"]["src"]["messages_out"]
    lost = sum(e["lost"] for e in report["edges"]) + sum(n["lost"] for n in report["nodes"].values())
    assert received + lost == sent, (received, lost, sent)
