"""``dmnflow launch --detach`` and ``dmnflow logs``: a run in the background, listed, followed,
stopped; its logs (the launch's output, the supervisor's, each process's) kept after it ends."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from .procs import ROOT, alive, kill_all, wait_until, workers_of


def dmnflow(env: dict[str, str], *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dmnflow", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout_s)


@pytest.fixture
def env() -> Iterator[dict[str, str]]:
    """A temp directory of its own: this test's runs and logs are the only ones it sees. It is
    short (in the session's, tests/conftest.py): a run directory holds unix sockets, whose paths
    fit 107 bytes, and ``tmp_path`` under pytest-xdist (``.../pytest-NN/popen-gwN/test_.../``)
    left ``counter.numbers`` no room, so the counter never bound and no data flowed."""
    tmp = tempfile.mkdtemp(prefix="dt")
    try:
        yield {**os.environ, "TMPDIR": tmp, "NO_COLOR": "1", "COLUMNS": "200"}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def graph(tmp_path: Path) -> Path:
    """A slow source (a run that lasts until it is stopped), a node that logs, a sink."""
    path = tmp_path / "g.yaml"
    path.write_text(textwrap.dedent(f"""
        graph: detached
        nodes:
          counter: {{uses: nodes.basic:Counter, params: {{count: 100000, rate_hz: 200}}}}
          talk: {{uses: tests.integration.nodes:Talk, inputs: {{value: counter.numbers}}}}
          sink: {{uses: nodes.basic:Collect, inputs: {{values: talk.out}}, params: {{path: {tmp_path}/out.jsonl}}}}
        """))
    return path


@pytest.fixture
def detached(env: dict[str, str], graph: Path) -> Iterator[tuple[str, int]]:
    """A detached run (name, supervisor pid); whatever is left of it is killed by PID at the end."""
    result = dmnflow(env, "launch", str(graph), "--name", "bg", "--detach")
    assert result.returncode == 0, result.stderr
    match = re.search(r"bg is running in the background \(pid (\d+)\)", result.stdout)
    assert match, result.stdout
    pid = int(match.group(1))
    try:
        yield "bg", pid
    finally:
        kill_all(list(workers_of(pid).values()))
        kill_all([pid])


def test_a_detached_run_is_listed_logged_followed_and_stopped(env: dict[str, str], detached: tuple[str, int]
                                                              ) -> None:
    name, pid = detached
    assert alive(pid)
    runs = dmnflow(env, "runs", "--json")
    assert f'"name": "{name}"' in runs.stdout and str(pid) in runs.stdout
    workers = workers_of(pid)
    assert set(workers) == {"counter", "talk", "sink"}
    assert wait_until(lambda: "talked 5" in dmnflow(env, "logs", name, "talk").stdout, 60)
    every = dmnflow(env, "logs", name).stdout
    assert "[launch]" in every and "first message" in every  # the launch's output: the start's phases
    assert "[talk]" in every and "--- process talk, incarnation 0" in every
    only = dmnflow(env, "logs", name, "talk").stdout
    assert "[counter]" not in only and "talked 1" in only  # one process, its lines without a prefix
    # -f follows until the run ends: a stop drains it, and the follower ends by itself
    follower = subprocess.Popen([sys.executable, "-m", "dmnflow", "logs", name, "-f"], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stopped = dmnflow(env, "stop", name)
        assert stopped.returncode == 0, stopped.stderr
        out, _ = follower.communicate(timeout=60)
        assert follower.returncode == 0
        assert "talked" in out and "[launch]" in out and "0 lost" in out, out[-3000:]  # the report, at the end
    finally:
        if follower.poll() is None:
            follower.kill()
    assert wait_until(lambda: not alive(pid), 30)
    assert not any(alive(p) for p in workers.values())
    # the logs outlive the run
    after = dmnflow(env, "logs", name)
    assert after.returncode == 0 and "talked 1" in after.stdout


def test_logs_of_a_wrong_run_or_node_say_what_there_is(env: dict[str, str], detached: tuple[str, int]) -> None:
    name, pid = detached
    wrong = dmnflow(env, "logs", "bgg")
    assert wrong.returncode == 1 and "did you mean 'bg'?" in wrong.stderr and "Traceback" not in wrong.stderr
    node = dmnflow(env, "logs", name, "tallk")
    assert node.returncode == 1 and "did you mean 'talk'?" in node.stderr and "its nodes: counter, sink, talk" \
        in node.stderr
    os.kill(pid, signal.SIGINT)  # Ctrl-C, as in its own terminal: it drains
    assert wait_until(lambda: not alive(pid), 60)


def test_a_detached_run_that_cannot_start_says_why_and_fails(env: dict[str, str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("graph: bad\nnodes:\n  a: {uses: nodes.basic:Countr}\n")
    result = dmnflow(env, "launch", str(bad), "--detach")
    assert result.returncode == 1, result.stderr
    assert "Countr" in result.stderr and "ended before it started" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_temp_directory_too_deep_for_the_sockets_is_said_once_before_any_worker_starts(
        env: dict[str, str], graph: Path) -> None:
    # the run directory (TMPDIR/dmnflow-XXXXXXXX, 97 bytes) fits, and its control socket; counter.numbers does not
    deep = Path(env["TMPDIR"], "d" * (80 - len(env["TMPDIR"]) - 1))
    deep.mkdir()
    result = dmnflow({**env, "TMPDIR": str(deep)}, "launch", str(graph), "--no-models", timeout_s=60)
    assert result.returncode == 1, result.stderr
    assert "too deep for the run's sockets" in result.stderr and "counter.numbers" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and "processes up" not in result.stderr, result.stderr
    assert not [p for p in deep.iterdir() if not p.name.startswith("dmnflow-logs")]  # no run directory left
