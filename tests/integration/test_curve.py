"""CURVE on tcp edges: keys made by `dmnflow keys generate`, an authenticated graph that runs,
peers without a key or with one not admitted refused at the handshake and counted, and every
mistake with the keys a clear message, never a traceback or a hang."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import zmq
import zmq.auth

import dmnflow
from dmnflow.runtime import launch

from .procs import ROOT

pytestmark = pytest.mark.skipif(not zmq.has("curve"), reason="libzmq without CURVE")


def keys(directory: Path, *names: str) -> Path:
    out = subprocess.run([sys.executable, "-m", "dmnflow", "keys", "generate", str(directory),
                          *[a for n in names for a in ("--name", n)]], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return directory


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def graph(tmp_path: Path, port: int, n: int = 2000, rate: int = 1000) -> Path:
    path = tmp_path / "secure.yaml"
    path.write_text(textwrap.dedent(f"""
        graph: secure
        security: {{curve: keys}}
        defaults: {{transport: tcp, policy: block}}
        nodes:
          src:
            uses: nodes.basic:Counter
            params: {{count: {n}, rate_hz: {rate}}}
            outputs: {{numbers: {{port: {port}}}}}
          mid: {{uses: nodes.basic:Scale, inputs: {{value: src.numbers}}}}
          sink: {{uses: nodes.basic:Collect, params: {{path: {tmp_path}/out.jsonl}}, inputs: {{values: mid.scaled}}}}
        """).lstrip())
    return path


def test_keys_generate_writes_a_private_secret_and_refuses_to_overwrite(tmp_path):
    d = keys(tmp_path / "keys", "hosta", "hostb")
    assert sorted(p.name for p in d.iterdir()) == ["hosta.key", "hosta.key_secret", "hostb.key", "hostb.key_secret"]
    assert (d / "hosta.key_secret").stat().st_mode & 0o777 == 0o600 and d.stat().st_mode & 0o777 == 0o700
    again = subprocess.run([sys.executable, "-m", "dmnflow", "keys", "generate", str(d), "--name", "hosta"],
                           cwd=ROOT, capture_output=True, text=True)
    assert again.returncode == 1 and "already exists" in again.stderr and "Traceback" not in again.stderr


def test_an_authenticated_graph_runs_and_an_unauthenticated_peer_is_refused_and_counted(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    keys(tmp_path / "keys")
    port = free_port()
    plan = dmnflow.compile_graph(graph(tmp_path, port, n=3000, rate=1000))
    assert plan.security.curve == str((tmp_path / "keys").resolve())
    got: dict[str, list] = {"plain": [], "stranger": []}
    stop = threading.Event()

    def outsiders() -> None:  # a plain SUB, and one with a keypair the graph does not admit
        ctx = zmq.Context()
        plain = ctx.socket(zmq.SUB)
        stranger = ctx.socket(zmq.SUB)
        public, secret = zmq.curve_keypair()
        server_key, _ = zmq.auth.load_certificate(tmp_path / "keys" / "graph.key")
        stranger.curve_publickey, stranger.curve_secretkey, stranger.curve_serverkey = public, secret, server_key
        for sock in (plain, stranger):
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(f"tcp://127.0.0.1:{port}")
            sock.subscribe(b"")
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline:
            for name, sock in (("plain", plain), ("stranger", stranger)):
                if sock.poll(20):
                    got[name].append(sock.recv_multipart())
        plain.close()
        stranger.close()
        ctx.term()

    thread = threading.Thread(target=outsiders, daemon=True)
    thread.start()
    try:
        report = launch(plan, duration_s=60)
    finally:
        stop.set()
        thread.join(30)
    assert report.status == "finished", report.errors
    values = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert values == [float(i) for i in range(3000)]
    assert got == {"plain": [], "stranger": []}  # neither read a single frame
    [stream] = [s for s in report.sockets if s.pattern == "stream"]
    assert stream.refused >= 2  # both handshakes refused, counted on the socket
    assert stream.transport == "tcp" and stream.curve and stream.host  # the report says how it ran
    assert all(not s.curve for s in report.sockets if s.transport != "tcp")


def test_an_admitted_outside_subscriber_reads_the_stream(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    keys(tmp_path / "keys", "graph", "viewer")
    port = free_port()
    plan = dmnflow.compile_graph(graph(tmp_path, port, n=3000, rate=1000), ["security.key=graph"])
    got: list = []
    stop = threading.Event()

    def viewer() -> None:
        ctx = zmq.Context()
        sub = ctx.socket(zmq.SUB)
        sub.curve_publickey, sub.curve_secretkey = zmq.auth.load_certificate(tmp_path / "keys" / "viewer.key_secret")
        sub.curve_serverkey, _ = zmq.auth.load_certificate(tmp_path / "keys" / "graph.key")
        sub.setsockopt(zmq.LINGER, 0)
        sub.connect(f"tcp://127.0.0.1:{port}")
        sub.subscribe(b"numbers")
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline:
            if sub.poll(20):
                got.append(sub.recv_multipart())
        sub.close()
        ctx.term()

    thread = threading.Thread(target=viewer, daemon=True)
    thread.start()
    try:
        report = launch(plan, duration_s=60)
    finally:
        stop.set()
        thread.join(30)
    assert report.status == "finished"
    assert len(got) > 100 and all(m[0] == b"numbers" for m in got)


def test_key_mistakes_are_located_errors(tmp_path):
    port = free_port()
    g = graph(tmp_path, port)
    [missing] = [i for i in dmnflow.validate(g) if i.is_error]
    assert missing.code == "bad-key" and "dmnflow keys generate" in missing.message
    assert (missing.loc.line, missing.path) == (2, "security.curve")
    d = keys(tmp_path / "keys")
    assert not [i for i in dmnflow.validate(g) if i.is_error]
    os.chmod(d / "graph.key_secret", 0o644)
    [open_secret] = [i for i in dmnflow.validate(g) if i.is_error]
    assert "can be read by other users" in open_secret.message and "chmod 600" in open_secret.message
    os.chmod(d / "graph.key_secret", 0o600)
    text = (d / "graph.key").read_text()
    (d / "graph.key").write_text(text.replace('public-key = "', 'public-key = "abc'))
    [short] = [i for i in dmnflow.validate(g) if i.is_error]
    assert "43 characters long" in short.message
    (d / "graph.key").unlink()  # revoked: its own workers would be refused
    [revoked] = [i for i in dmnflow.validate(g) if i.is_error]
    assert "graph.key (this host's public key) is not in" in revoked.message
    for issue in (missing, open_secret, short, revoked):
        assert "secret-key" not in issue.message and "public-key =" not in issue.message  # no key is shown


def test_a_key_revoked_after_validation_fails_start_up_with_a_message_not_a_hang(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    d = keys(tmp_path / "keys")
    plan = dmnflow.compile_graph(graph(tmp_path, free_port()))
    shutil.move(d / "graph.key", tmp_path / "graph.key.revoked")
    with pytest.raises(dmnflow.LaunchError, match="graph.key"):
        launch(plan, startup_timeout_s=30)


def test_the_cli_validates_a_curve_graph_without_a_traceback(tmp_path):
    out = subprocess.run([sys.executable, "-m", "dmnflow", "validate", str(graph(tmp_path, free_port()))], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 1 and "error[bad-key]" in out.stderr and "Traceback" not in out.stderr
