"""`dmnflow tune` for real: trials are graph runs in real processes, on both engines.

Each study runs as a `dmnflow tune` child process tagged with an environment variable that
every process it starts inherits (host, trials, supervisors, zygotes, workers, Ray's
processes), so a test finds anything left behind by that tag, and kills it by PID at the end
whatever happened. Budgets are tiny: a few trials of short synthetic runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .procs import ROOT, alive, kill_all, wait_until

DATA = Path(__file__).resolve().parent / "data"
SCORE = DATA / "tune_score.yaml"


def tagged(tag: str) -> list[int]:
    """Live processes whose environment carries ``tag`` (a zombie is gone)."""
    needle = f"DMNFLOW_TEST_TAG={tag}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if needle in (entry / "environ").read_bytes().split(b"\0") and alive(int(entry.name)):
                    found.append(int(entry.name))
    return found


class Study:
    """A `dmnflow tune` child process and everything it starts, found by its tag."""

    def __init__(self, tmp: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.tag = uuid.uuid4().hex
        self.out = tmp / "out"
        self.env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200", "DMNFLOW_TEST_TAG": self.tag, **(env or {})}
        self.args = list(args)
        self.proc: subprocess.Popen[str] | None = None
        self.seen: set[int] = set()

    def start(self, *more: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        self.proc = subprocess.Popen([sys.executable, "-m", "dmnflow", "tune", *self.args, *more,
                                      "--set", f"out={self.out}"], cwd=ROOT, env={**self.env, **(env or {})},
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        return self.proc

    def run(self, *more: str, timeout_s: float = 300, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
        proc = self.start(*more, env=env)
        out, err = proc.communicate(timeout=timeout_s)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def left_behind(self) -> list[int]:
        """What still runs once the study has exited (give reaping a moment)."""
        wait_until(lambda: not tagged(self.tag), 10.0)
        return tagged(self.tag)

    def summary(self) -> dict[str, Any]:
        return json.loads((self.out / "summary.json").read_text())

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.seen.update(tagged(self.tag))
            self.proc.kill()
            self.proc.communicate(timeout=30)
        kill_all(sorted(set(tagged(self.tag)) | {p for p in self.seen if alive(p)}))


@contextlib.contextmanager
def study(tmp: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[Study]:
    s = Study(tmp, *args, env=env)
    try:
        yield s
    finally:
        s.close()


def _figures(report: dict[str, Any], node: str) -> dict[str, Any]:
    return report["nodes"][node]["summary"]


# ---------------------------------------------------------------- the embedded engine


SMALL_DMN = ("graphs/tune_dmn.yaml", "--trials", "3", "--set", "set.vars.days=420", "--set", "set.vars.symbols=3",
             "--set", "holdout.set.vars.days=520", "--set", "holdout.set.nodes.dmn/performance.params.start=2001-09-03")


def test_dmn_study_runs_real_trials_and_its_best_overlay_launches_to_the_same_figures(tmp_path: Path) -> None:
    with study(tmp_path, *SMALL_DMN) as s:
        result = s.run()
        assert result.returncode == 0, result.stderr[-3000:]
        assert not s.left_behind(), "a process of the study outlived it"
        summary = s.summary()
        assert summary["counts"].get("complete", 0) + summary["counts"].get("pruned", 0) == 3, summary["counts"]
        (best,) = summary["best"]
        assert best["figures"]["report.startup_s"] > 0
        assert (s.out / "journal.log").is_file() and (s.out / "plots" / "history.png").is_file()
        assert summary["holdout"]["trial"] == best["number"] and summary["holdout"]["state"] == "complete"
        assert "in sample and held out" in result.stdout
        overlay = s.out / "best.yaml"
        assert "dmnflow launch graphs/dmn_backtest.yaml --overlay" in overlay.read_text()
        assert f"vars.out: ${{env:DMNFLOW_TRIAL_DIR:-{s.out}/best}}" in overlay.read_text()  # ${tune.out}: its own
        report = tmp_path / "report.json"
        launched = subprocess.run([sys.executable, "-m", "dmnflow", "launch", "graphs/dmn_backtest.yaml",
                                   "--overlay", str(overlay), "--report", str(report)], cwd=ROOT, env=s.env,
                                  capture_output=True, text=True, timeout=300)
        assert launched.returncode == 0, launched.stderr[-2000:]
        again = _figures(json.loads(report.read_text()), "dmn/performance")
        for key in ("sharpe", "sortino", "max_drawdown", "equity", "turnover", "periods"):
            assert again[key] == best["figures"][f"dmn/performance.{key}"], key  # exactly: the same run
        assert again["sharpe"] == best["values"][0]
        assert not s.left_behind()


def _decisions(out: Path) -> tuple[list[Any], list[int]]:
    """Each trial's values, state, result and every intermediate value; the best trials."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(out / "journal.log")))
    trials = optuna.load_study(study_name="tune_dmn", storage=storage).trials
    summary = json.loads((out / "summary.json").read_text())
    return ([(t.number, json.dumps(t.params, sort_keys=True), t.state.name, t.values,
              sorted(t.intermediate_values.items()), t.user_attrs.get("reason", "")) for t in trials],
            [b["number"] for b in summary["best"]])


def test_a_seeded_study_makes_the_same_trials_and_decisions_on_a_loaded_machine(tmp_path: Path) -> None:
    """Intermediate values come from the graph at exact steps (every 63 periods here), trials
    are asked and told in a fixed order, so the same seeded study on a quiet and on a loaded
    machine draws the same values, gets the same steps, prunes the same trials, picks the
    same best."""
    from tests.faults.load import loaded

    args = ("graphs/tune_dmn.yaml", "--trials", "7", "--no-plots", "--set", "set.vars.days=600",
            "--set", "set.vars.symbols=3", "--set", "holdout=null", "--set", "intermediate.every=63",
            "--set", "pruner={median: {n_startup_trials: 2, n_warmup_steps: 0}}")
    runs = []
    for load in (False, True):
        with loaded(load), study(tmp_path / ("loaded" if load else "quiet"), *args) as s:
            result = s.run()
            assert result.returncode == 0, result.stderr[-3000:]
            assert not s.left_behind()
            runs.append(_decisions(s.out))
    (quiet, best), (busy, busy_best) = runs
    assert busy == quiet and busy_best == best
    states = [t[2] for t in quiet]
    assert "PRUNED" in states and "COMPLETE" in states, states  # the budget exercises the pruner
    steps = {t[0]: [k for k, _ in t[4]] for t in quiet if t[2] == "COMPLETE"}
    assert all(s == list(range(s[0], 10)) for s in steps.values()), steps  # every step to 567 of 600 periods


def test_crashed_hung_nan_and_refused_trials_fail_with_their_reason(tmp_path: Path) -> None:
    args = (str(SCORE), "--trials", "4", "--timeout", "4s", "--set", "sampler=grid", "--set", "pruner=none",
            "--set", "space={nodes.score.params.mode: {choice: [ok, nan, crash, hang]}}")
    with study(tmp_path, *args) as s:
        result = s.run()
        assert result.returncode == 0, result.stderr[-3000:]
        assert not s.left_behind()
        rows = {t["params"]["nodes.score.params.mode"]: t for t in s.summary()["trials"]}
        assert rows["ok"]["state"] == "complete" and rows["ok"]["values"] == [-10.0]
        assert rows["nan"]["state"] == "fail" and "NaN" in rows["nan"]["reason"]
        assert rows["crash"]["state"] == "fail" and "crashing on purpose" in rows["crash"]["reason"]
        assert rows["hang"]["state"] == "fail" and "timed out after 4s" in rows["hang"]["reason"]
    refused = (str(SCORE), "--trials", "3", "--set", "sampler=grid", "--set", "pruner=none",
               "--set", "set.nodes.score.params.gap=[2, 4]",
               "--set", "space={nodes.score.params.x: {float: [0, 6], step: 3}}")
    with study(tmp_path / "refused", *refused) as s:
        result = s.run()
        assert result.returncode == 0, result.stderr[-3000:]
        rows = {t["params"]["nodes.score.params.x"]: t for t in s.summary()["trials"]}
        assert rows[3.0]["state"] == "fail" and "the graph refuses this trial's values" in rows[3.0]["reason"]
        assert "lies in the gap" in rows[3.0]["reason"]
        assert rows[0.0]["state"] == rows[6.0]["state"] == "complete"  # the study went on


def test_ctrl_c_stops_the_trials_marks_them_and_resume_runs_them_again(tmp_path: Path) -> None:
    with study(tmp_path, str(SCORE), "--trials", "2", "--set", "pruner=none") as s:
        proc = s.start(env={"SCORE_RATE": "20"})  # a minute a trial
        assert wait_until(lambda: len(list((s.out / "trials").glob("*/log.txt"))) == 2 if (
            s.out / "trials").exists() else False, 120), "the trials did not start"
        time.sleep(2.0)
        s.seen.update(tagged(s.tag))
        assert len(s.seen) > 6, "host, trials, their zygotes and workers"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err[-2000:]
        assert "--resume" in out + err
        assert not s.left_behind(), "Ctrl-C left a process running"
        trials = s.summary()["trials"]
        assert [t["state"] for t in trials] == ["fail", "fail"]
        assert all("interrupted" in t["reason"] for t in trials)
        again = s.run("--resume", env={"SCORE_RATE": "600"})
        assert again.returncode == 0, again.stderr[-3000:]
        trials = s.summary()["trials"]
        assert [t["state"] for t in trials][2:] == ["complete", "complete"]  # the interrupted ones, run again
        assert {json.dumps(t["params"]) for t in trials[:2]} == {json.dumps(t["params"]) for t in trials[2:]}
        assert not s.left_behind()


def test_trials_and_results_on_the_seeds_zeromq_layout_read_by_a_raw_sub(tmp_path: Path) -> None:
    import zmq

    ports = _free_ports(4)
    publish = f"publish={{coordinator: {ports[0]}, workers: [{ports[1]}, {ports[2]}], aggregator: {ports[3]}}}"
    got: list[tuple[str, dict[str, Any]]] = []
    stop = threading.Event()
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    for port in ports:
        sub.connect(f"tcp://127.0.0.1:{port}")
    for topic in (b"optimization_trial.", b"optimization_progress.", b"optimization_result."):
        sub.subscribe(topic)

    def listen() -> None:
        while not stop.is_set():
            if sub.poll(100):
                topic, body = sub.recv_multipart()
                got.append((topic.decode(), json.loads(body)))

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    try:
        with study(tmp_path, str(SCORE), "--trials", "2", "--set", publish) as s:
            result = s.run()
            assert result.returncode == 0, result.stderr[-3000:]
        time.sleep(0.5)
    finally:
        stop.set()
        thread.join(5)
        sub.close()
        ctx.term()
    topics = [t for t, _ in got]
    for n in (0, 1):
        assert f"optimization_trial.{n}" in topics and f"optimization_result.{n}" in topics, topics
    result = next(b for t, b in got if t == "optimization_result.0")
    assert result["state"] == "complete" and result["study"] == "tune-score" and len(result["values"]) == 1
    assert "nodes.score.params.x" in next(b for t, b in got if t == "optimization_trial.0")["params"]
    assert any(t.startswith("optimization_progress.") for t in topics), "intermediate values from the workers"


def _free_ports(n: int) -> list[int]:
    import socket

    socks = [socket.socket() for _ in range(n)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


# ---------------------------------------------------------------- Ray Tune


def test_ray_engine_runs_the_same_study_and_leaves_no_ray_process(tmp_path: Path) -> None:
    pytest.importorskip("ray.tune")
    with study(tmp_path, str(SCORE), "--engine", "ray", "--trials", "2") as s:
        result = s.run(timeout_s=600)
        assert result.returncode == 0, result.stderr[-3000:]
        assert not s.left_behind(), "Ray or a trial outlived the study"
        summary = s.summary()
        assert len(summary["trials"]) == 2 and summary["counts"].get("fail", 0) == 0, summary["counts"]
        assert (s.out / "best.yaml").is_file()


# Ray's own start-up fails after its GCS, monitor and dashboard came up, as on a loaded machine
# ("The current node timed out during startup", a plain Exception)
_NO_RAYLET = ("import sys\nimport ray._private.node as node\n"
              "def boom(self, *args, **kwargs):\n"
              "    raise Exception('The current node timed out during startup. (simulated)')\n"
              "node.Node.start_raylet = boom\nsys.argv[0] = 'dmnflow'\nfrom dmnflow.cli import main\nmain()\n")


@pytest.mark.parametrize(("command", "code"), [
    (["tune", str(SCORE), "--engine", "ray", "--trials", "1", "--no-plots"], 1),
    (["tune", "graphs/tune_dmn_pbt.yaml", "--no-plots"], 1),
    (["launch", str(DATA / "score.yaml"), "--backend", "ray", "--set", "vars.count=10"], 3),
], ids=["tune", "pbt", "launch"])
def test_a_ray_that_does_not_come_up_is_a_clean_error_that_leaves_nothing_behind(
        tmp_path: Path, command: list[str], code: int) -> None:
    """`tune --engine ray`, PBT and `launch --backend ray` start Ray one way: a start that fails
    (tried twice) is a one-line error, the documented exit code, no process and no `dmnray-*`
    directory left."""
    pytest.importorskip("ray.tune")
    import tempfile

    tag, temp = uuid.uuid4().hex, Path(tempfile.mkdtemp(prefix="dmnt-", dir="/tmp"))  # Ray's socket paths: short
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200", "DMNFLOW_TEST_TAG": tag, "TMPDIR": str(temp)}
    more = ["--set", f"out={tmp_path / 'out'}"] if command[0] == "tune" else []
    proc = subprocess.Popen([sys.executable, "-c", _NO_RAYLET, *command, *more], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == code, err[-3000:]
        assert "did not come up (2 tries): The current node timed out during startup" in out + err, err[-3000:]
        assert "Traceback" not in out + err, err[-3000:]
        assert wait_until(lambda: not tagged(tag), 10.0), [Path(f"/proc/{p}/cmdline").read_bytes() for p in tagged(tag)]
        assert list(temp.glob("dmnray-*")) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
        kill_all(tagged(tag))
        shutil.rmtree(temp, ignore_errors=True)


def test_pbt_example_exploits_keeps_every_member_and_backtests_its_best_model(tmp_path: Path) -> None:
    """A budget that exploits (two members ranked at steps 1 and 2: the lower one continues from
    the upper one's checkpoint, Ray's policy log says so); every member lives. (The steps in
    Ray's log are its trials' last results, which a restored member has not made yet: not
    asserted.)"""
    pytest.importorskip("ray.tune")
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    args = ("graphs/tune_dmn_pbt.yaml", "--no-plots", "--set", "pbt.population=2", "--set", "train.iterations=3",
            "--set", "pbt.perturbation_interval=1", "--set", "train.params.max_windows=32",
            "--set", "train.params.hidden=8", "--set", "train.params.days=600",
            "--set", "train.params.train_end=2002-01-01", "--set", "set.vars.days=600",
            "--set", "set.vars.symbols=3", "--set", "train.params.symbols=3", "--set", "holdout.set.vars.days=700",
            "--set", "holdout.set.nodes.dmn/performance.params.start=2002-05-01")
    with study(tmp_path, *args) as s:
        result = s.run(timeout_s=600)
        assert result.returncode == 0, result.stderr[-3000:]
        assert not s.left_behind()
        model = s.out / "best_model.pt"
        sidecar = json.loads(Path(str(model) + ".json").read_text())
        assert sidecar["config"]["hidden"] == 8 and "DMNTrainer" in sidecar["command"]
        summary = s.summary()
        assert [t["state"] for t in summary["trials"]] == ["complete", "complete"], summary["trials"]
        pbt = optuna.load_study(study_name="tune_dmn_pbt", storage=JournalStorage(JournalFileBackend(
            str(s.out / "journal.log")))).user_attrs["pbt"]
        assert pbt["exploits"] >= 1 and len(pbt["policy"]) == pbt["exploits"], pbt
        assert all(len(json.loads(p)) == 6 for p in pbt["policy"])  # target, donor, their steps, old, new values
        (best,) = summary["best"]
        assert best["figures"]["train.model"] == str(model.resolve())
        assert "dmn/performance.sharpe" in best["figures"], "the best model's backtest through the graph"
        overlay = (s.out / "best.yaml").read_text()
        assert f"vars.lstm_model: {model.resolve()}" in overlay
        checked = subprocess.run([sys.executable, "-m", "dmnflow", "validate", "graphs/dmn_backtest.yaml",
                                  "--overlay", str(s.out / "best.yaml")], cwd=ROOT, env=s.env,
                                 capture_output=True, text=True, timeout=300)
        assert checked.returncode == 0, checked.stderr  # the model loads and fits the LSTM node's ports


def test_the_tradable_futures_search_trains_a_day_late_with_costs_and_selects_in_sample(tmp_path: Path) -> None:
    """graphs/tune_futures_dmn.yaml at a tiny budget: the trial's model is trained for a trade a
    day after its signal, net of its trial's cost, selected on its training years' validation
    tail, backtested a day late in sample and on the held-out years (docs/dmn/models.md)."""
    pytest.importorskip("nodes.market.trendfollowing")
    args = ("graphs/tune_futures_dmn.yaml", "--no-plots", "--trials", "1", "--set", "train.iterations=1",
            "--set", "train.params.max_windows=64", "--set", "set.vars.start=2008-01-01",
            "--set", "set.vars.measure_from=2009-01-01")
    with study(tmp_path, *args) as s:
        result = s.run(timeout_s=600)
        assert result.returncode == 0, result.stderr[-3000:]
        assert not s.left_behind()
        (best,) = s.summary()["best"]
        model = Path(best["figures"]["train.model"])
        sidecar = json.loads(Path(str(model) + ".json").read_text())
        config = sidecar["config"]
        assert config["delay"] == 1 and 2.0 <= config["cost_bps"] <= 3.0, config
        assert sidecar["train"]["end"] == "2011-01-01"  # nothing of the held-out years is trained on
        assert "dmn/performance.sharpe" in best["figures"]  # the backtest, a day late, in sample
        overlay = (s.out / "best.yaml").read_text()
        assert "vars.delay: 1" in overlay and f"vars.lstm_model: {model}" in overlay
        holdout = json.loads((s.out / "summary.json").read_text())["holdout"]
        assert holdout["figures"]["dmn/performance.periods"] > 1000, holdout  # 2011-2015, measured once


def test_a_pbt_member_that_fails_fails_the_study_with_a_plain_reason(tmp_path: Path) -> None:
    pytest.importorskip("ray.tune")
    with study(tmp_path, str(DATA / "tune_pbt_breaks.yaml"), "--no-plots") as s:
        result = s.run(timeout_s=600)
        assert result.returncode == 1, result.stderr[-3000:]
        assert "2 of 2 PBT members failed" in result.stderr, result.stderr[-3000:]
        assert "member 0: RuntimeError: the member broke at step 2" in result.stderr, result.stderr[-3000:]
        assert "\x1b[" not in result.stderr and "Traceback" not in result.stderr
        assert not s.left_behind()


# ---------------------------------------------------------------- the runtime's hook


def test_a_warm_launch_forks_its_zygote_from_the_caller_and_runs_the_same_graph(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import dmnflow
    from dmnflow.runtime import launch

    monkeypatch.chdir(ROOT)
    plan = dmnflow.compile_graph(DATA / "score.yaml", ["vars.count=300", "vars.rate=0",
                                                       "nodes.score.params.x=1.5"], models=False)
    before = set(os.listdir("/proc"))
    warm, cold = launch(plan, warm=True), launch(plan)
    for report in (warm, cold):
        assert report.status == "finished" and report.nodes["score"].summary == {"score": -3.25, "seen": 300}
    leftover = [p for p in set(os.listdir("/proc")) - before if p.isdigit() and _ours(int(p))]
    assert leftover == [], "a worker or zygote outlived launch()"


def _ours(pid: int) -> bool:
    """A live dmnflow process this test's launches started (another xdist worker's are not):
    a descendant of this process, or a worker or zygote whose command line names this
    process as its supervisor (``... RUN_DIR [PROCESS INC] PID``: an orphan handed to init)."""
    me = str(os.getpid()).encode()
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    if not alive(pid) or not any(b"dmnflow" in a for a in argv):
        return False
    if any(m in argv for m in (b"dmnflow.runtime.worker", b"dmnflow.runtime.zygote")) and me in argv:
        return True
    while pid > 1:
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return False
        if pid == os.getpid():
            return True
    return False
