"""A trial as a process: the graph with the trial's values applied exactly like ``--set``,
compiled, launched by the runtime, and its report's figures the trial's values.

Both ends of one trial live here. The **child** (``run_child``) is a process of its own:
forked by the warm host (``host.py``: torch and the nodes already imported, so the
graph's workers start warm) or started cold as ``python -m dmnflow.tune.trial FD``. It
talks to whoever asked for it over one stream socket, in JSON lines::

    parent -> child: the request (first line), then {"stop": reason} to drain it early
    child -> parent: {"event": "started", "pid"}, {"event": "progress", "step", "value", ...},
                     {"event": "done", "state": complete|fail|stopped, "values", "figures", "reason", ...}

The child is the run's supervisor: its workers die with it, so killing the child by PID
(``TrialProcess.kill``) leaves nothing behind. It drains and ends when the parent asks, or
when the parent goes away (the socket closes).

The **parent** end is ``TrialProcess``: start one (through a host or cold), read its
events without blocking, stop it, kill it. The Optuna engine and the Ray trainable both
use it, so a trial is the same process whichever engine runs it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import Location
from ..runtime.processes import ASKED_STOP_S, CLOSED_WAIT_S, ByPid, stop, wait_exit
from ..spec import Override
from .objectives import Objective, report_figures, value_of

__all__ = ["TrialProcess", "TrialRequest", "read_request", "run_child"]


@dataclass
class TrialRequest:
    """Everything a trial process needs, as JSON: the graph, the settings, what to read."""

    number: int | str  # the study's trial number (a Ray trial id on the Ray engine)
    graph: str  # absolute; "" when the trial only trains
    profile: str | None
    overrides: list[dict[str, Any]]  # Override fields: applied in order, like --set
    objectives: list[dict[str, Any]]
    cwd: str  # relative paths in the graph (out/...) resolve here, as for `dmnflow launch`
    workdir: str  # the trial's directory: its report, log and trained model
    name: str = ""  # the run's name while it runs (dmnflow runs / swap)
    intermediate: dict[str, Any] | None = None  # {"value": objective, "step": objective, "every": n}
    train: dict[str, Any] | None = None  # {"uses", "params", "iterations", "model_key"}
    warm: bool = True
    grace_s: float | None = None  # None: the plan's drain.idle_s

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str | bytes) -> TrialRequest:
        return cls(**json.loads(text))


def pack_overrides(overrides: list[Override]) -> list[dict[str, Any]]:
    return [{"path": list(o.path), "value": o.value, "text": o.text,
             "loc": [o.loc.file, o.loc.line, o.loc.col] if o.loc else None} for o in overrides]


def unpack_overrides(packed: list[dict[str, Any]]) -> list[Override]:
    return [Override(tuple(o["path"]), o["value"], Location(*o["loc"]) if o["loc"] else Location(o["text"]),
                     o["text"]) for o in packed]


def pack_objective(o: Objective) -> dict[str, Any]:
    return {"name": o.name, "direction": o.direction, "node": o.node, "figure": o.figure}


def unpack_objective(d: dict[str, Any]) -> Objective:
    return Objective(d["name"], d["direction"], d["node"], d["figure"])


# ---------------------------------------------------------------------------- the child


class _Channel:
    """The child's end of the socket: events out; stop (or the parent gone) in, on a thread
    that turns it into SIGTERM, which the supervisor drains on."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.stop_reason: str | None = None
        self.lock = threading.Lock()
        self.signal = False  # only while the graph runs: before, the trial checks stop_reason itself

    def send(self, **event: Any) -> None:
        with self.lock, contextlib.suppress(OSError):
            self.sock.sendall(json.dumps(event, default=_jsonable).encode() + b"\n")

    def watch(self) -> None:
        threading.Thread(target=self._read, name="dmnflow-trial-stop", daemon=True).start()

    def _read(self) -> None:
        buffer = b""
        while True:
            try:
                chunk = self.sock.recv(4096)
            except OSError:
                chunk = b""
            if not chunk:
                self._stop("the study stopped asking for it")
                return
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                with contextlib.suppress(ValueError):
                    msg = json.loads(line)
                    if isinstance(msg, dict) and "stop" in msg:
                        self._stop(str(msg["stop"]))

    def _stop(self, reason: str) -> None:
        first = self.stop_reason is None
        self.stop_reason = self.stop_reason or reason
        if self.signal and (first or reason == "kill"):
            os.kill(os.getpid(), signal.SIGTERM)  # the supervisor drains on the first, stops waiting on the second

    def arm(self) -> bool:
        """From now on a stop signals the supervisor; False when a stop came already."""
        self.signal = True
        return self.stop_reason is None


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


def read_request(sock: socket.socket, timeout_s: float | None = None) -> TrialRequest:
    """The trial's request: one JSON line on ``sock`` (from the study, or the warm host)."""
    sock.settimeout(timeout_s)
    buffer = b""
    while b"\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the request never came")
        buffer += chunk
    sock.settimeout(None)
    line, _ = buffer.split(b"\n", 1)
    return TrialRequest.from_json(line)


def run_child(sock: socket.socket, request: TrialRequest | None = None) -> int:
    """Run one trial and tell the parent how it went; the process's exit code."""
    from ..compiler import compile_graph
    from ..errors import GraphError, LaunchError, format_issues
    from ..runtime import launch

    chan = _Channel(sock)
    try:
        request = request or read_request(sock)
    except (OSError, ValueError, TypeError) as exc:
        chan.send(event="done", state="fail", reason=f"bad trial request: {exc}", values=None, figures={})
        return 1
    chan.send(event="started", pid=os.getpid(), number=request.number)
    chan.watch()
    os.chdir(request.cwd)
    if request.cwd not in sys.path:
        sys.path.insert(0, request.cwd)
    workdir = Path(request.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ["DMNFLOW_TRIAL_DIR"] = str(workdir)  # ${env:DMNFLOW_TRIAL_DIR:-...}: a file of the trial's own
    objectives = [unpack_objective(o) for o in request.objectives]
    overrides = unpack_overrides(request.overrides)
    figures: dict[str, Any] = {}
    t0 = time.monotonic()

    def done(state: str, reason: str = "", values: list[float] | None = None, **extra: Any) -> int:
        chan.signal = False  # the graph has ended: the parent closing the socket now is no stop
        if state == "complete" and chan.stop_reason is not None:
            state, reason = "stopped", chan.stop_reason
        chan.send(event="done", state=state, reason=reason, values=values, figures=figures,
                  wall_s=round(time.monotonic() - t0, 3), **extra)
        return 0

    try:
        if request.train is not None:
            model = _train(request, workdir, figures, chan)
            if chan.stop_reason is not None:
                return done("stopped", chan.stop_reason)
            if request.train.get("model_key"):
                key = request.train["model_key"]
                overrides.append(Override(tuple(key.split(".")), str(model), Location(f"--set {key}"),
                                          f"{key}={model}"))
                figures["train.model"] = str(model)
        if request.graph:
            try:
                plan = compile_graph(request.graph, overrides, profile=request.profile, models=False)
            except GraphError as exc:
                return done("fail", "the graph refuses this trial's values:\n" +
                            format_issues(exc.issues, source_lines=False))
            progress = _Progress(request, chan)
            if not chan.arm():
                return done("stopped", chan.stop_reason or "stopped")
            try:
                report = launch(plan, warm=request.warm, grace_s=request.grace_s, on_status=progress,
                                name=request.name or None)
            except LaunchError as exc:
                return done("fail", f"the graph did not start: {exc}")
            except KeyboardInterrupt:  # asked twice: the supervisor stopped waiting for the drain
                return done("stopped", chan.stop_reason or "interrupted")
            (workdir / "report.json").write_text(report.to_json(), encoding="utf-8")
            progress.final(report)
            for name, node in report.nodes.items():
                for key, value in (node.summary or {}).items():
                    if isinstance(value, int | float | str | bool) or value is None:
                        figures[f"{name}.{key}"] = value
            figures.update({f"report.{k}": v for k, v in report_figures(report).items()})
            if report.status == "failed":
                return done("fail", "the graph failed: " + "; ".join(report.errors or ["a worker died"]),
                            duration_s=report.duration_s, startup_s=report.startup_s)
            if report.status == "stopped" and chan.stop_reason is not None:
                return done("stopped", chan.stop_reason, duration_s=report.duration_s, startup_s=report.startup_s)
            extra = {"duration_s": report.duration_s, "startup_s": report.startup_s}
        else:
            extra = {}
        values = []
        for objective in objectives:
            value, why = value_of(objective, figures)
            if value is None:
                return done("fail", why, **extra)
            values.append(value)
        return done("complete", "", values, **extra)
    except Exception as exc:
        text = traceback.format_exc()
        sys.stderr.write(text)
        return done("fail", f"{type(exc).__name__}: {exc}")


def _train(request: TrialRequest, workdir: Path, figures: dict[str, Any], chan: _Channel) -> Path:
    """Train the trial's model (``train:``), report each step, export it; its path."""
    from .trainer import load_trainer

    spec = request.train or {}
    cls = load_trainer(spec["uses"])
    trainer = cls(cls.Params.model_validate(spec["params"]), workdir)
    for step in range(1, int(spec["iterations"]) + 1):
        metrics = trainer.step()
        figures.update({f"train.{k}": v for k, v in metrics.items()})
        chan.send(event="progress", step=step, phase="train", metrics=metrics)
        if chan.stop_reason is not None:
            break
    return trainer.export(workdir / "model.pt")


class _Progress:
    """The supervisor's status callback: an intermediate value each time the step figure
    passes another multiple of ``every`` (a year of days measured, say).

    Exact (``intermediate["exact"]``: the step node keeps its figures per step, its
    ``summary()["steps"]``): every step, each with the value its data gave, read from the
    list at each status tick and once more from the final report (``final``), so no step
    is lost and none depends on when a tick came. Otherwise the figures as a tick saw them."""

    def __init__(self, request: TrialRequest, chan: _Channel) -> None:
        inter = request.intermediate
        self.value = unpack_objective(inter["value"]) if inter else None
        self.step = unpack_objective(inter["step"]) if inter else None
        self.every = float(inter["every"]) if inter else 0.0
        self.exact = bool(inter and inter.get("exact"))
        self.chan = chan
        self.last = 0
        self.shown = -1.0

    def _steps(self, report: Any) -> None:
        assert self.value is not None and self.step is not None
        node = report.nodes.get(self.step.node)
        steps = (node.summary or {}).get("steps") if node is not None else None
        for step, figures in steps if isinstance(steps, list) else ():
            index = int(round(float(step) / self.every))
            value, _ = value_of(self.value, {f"{self.value.node}.{k}": v for k, v in figures.items()})
            if index > self.last and value is not None:
                self.last = index
                self.chan.send(event="progress", step=index, value=value, at=step)

    def final(self, report: Any) -> None:
        """The steps the last status tick had not seen (exact mode): before the trial's end."""
        if self.exact:
            self._steps(report)

    def running(self, report: Any) -> None:
        """The graph's progress (its slowest finite source, with the ETA): for the study's
        progress bar; sent when it moved by a percent, at most every status tick."""
        live = getattr(report, "live", None) or {}
        progress = live.get("progress") or {}
        fraction = progress.get("fraction")
        if fraction is None or fraction - self.shown < 0.01:
            return
        self.shown = float(fraction)
        self.chan.send(event="running", fraction=round(float(fraction), 4), eta_s=progress.get("eta_s"),
                       done=progress.get("done"), total=progress.get("total"), unit=progress.get("unit"))

    def __call__(self, report: Any) -> None:
        self.running(report)
        if self.value is None or self.step is None:
            return
        if self.exact:
            self._steps(report)
            return
        figures = {}
        for obj in (self.value, self.step):
            node = report.nodes.get(obj.node)
            if node is not None and node.summary:
                figures[f"{obj.node}.{obj.figure}"] = node.summary.get(obj.figure)
        step, _ = value_of(self.step, figures)
        value, _ = value_of(self.value, figures)
        if step is None or value is None:
            return
        index = int(step // self.every)
        if index > self.last:
            self.last = index
            self.chan.send(event="progress", step=index, value=value, at=step)


def main(argv: list[str] | None = None) -> int:
    """``python -m dmnflow.tune.trial FD``: a cold trial, its request read from socket FD."""
    args = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the study's to handle
    sock = socket.socket(fileno=int(args[0]))
    return run_child(sock)


# ---------------------------------------------------------------------------- the parent


@dataclass
class TrialProcess:
    """The parent's end of one trial process: events, stop, kill."""

    sock: socket.socket
    number: int | str
    popen: subprocess.Popen[bytes] | None = None  # a cold trial is our child; a warm one the host's
    pid: int | None = None
    started_at: float = field(default_factory=time.monotonic)
    buffer: bytes = b""
    result: dict[str, Any] | None = None
    closed: bool = False
    stop_sent: str | None = None
    stop_at: float | None = None

    @classmethod
    def cold(cls, request: TrialRequest, log: Path | None = None) -> TrialProcess:
        """A trial in a new interpreter (no host: the workers import what they need themselves)."""
        ours, theirs = socket.socketpair()
        out = open(log, "ab") if log is not None else subprocess.DEVNULL  # noqa: SIM115 - closed below
        try:
            popen = subprocess.Popen([sys.executable, "-m", "dmnflow.tune.trial", str(theirs.fileno())],
                                     pass_fds=[theirs.fileno()], start_new_session=True, cwd=request.cwd,
                                     stdout=out, stderr=out, env=_child_env(request.cwd))
        finally:
            theirs.close()
            if log is not None:
                out.close()  # type: ignore[union-attr]
        ours.sendall(request.to_json().encode() + b"\n")
        return cls(ours, request.number, popen=popen, pid=popen.pid)

    def fileno(self) -> int:
        return self.sock.fileno()

    def events(self, timeout_s: float = 0.0) -> list[dict[str, Any]]:
        """Events that have arrived (waiting up to ``timeout_s`` for the first); after the
        last one (``done``, or the socket closing) ``result`` is set."""
        if self.closed:
            return []
        self.sock.settimeout(timeout_s if timeout_s > 0 else 0.0)
        out = []
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    self._ended(None)
                    break
                self.buffer += chunk
                self.sock.settimeout(0.0)
        except (BlockingIOError, TimeoutError):
            pass
        except OSError:
            self._ended(None)
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == "started":
                self.pid = int(event["pid"])
            elif event.get("event") == "done":
                self.result = event
            out.append(event)
        if self.closed and self.result is None:
            stopped = self.stop_sent not in (None, "kill")
            self.result = {"event": "done", "state": "stopped" if stopped else "fail", "values": None,
                           "figures": {}, "reason": self.stop_sent if stopped else self._death()}
            out.append(self.result)
        return out

    def _ended(self, _: Any) -> None:
        self.closed = True
        with contextlib.suppress(OSError):
            self.sock.close()

    def _death(self) -> str:
        if self.stop_sent == "kill":
            return "killed"
        code = self.popen.returncode if self.popen is not None and not wait_exit([self.popen], CLOSED_WAIT_S) \
            else None
        return (f"the trial process died (exit code {code})" if code is not None else
                "the trial process died before it reported")

    def stop(self, reason: str) -> None:
        """Ask the trial to drain and end (its figures then count as of the stop)."""
        if self.stop_sent is None:
            self.stop_sent = reason
            self.stop_at = time.monotonic()
            with contextlib.suppress(OSError):
                self.sock.sendall(json.dumps({"stop": reason}).encode() + b"\n")

    def overdue(self, now: float) -> bool:
        """Told to stop more than ``ASKED_STOP_S`` ago (its drain and the runtime's grace) and
        not done: the escalation's next step is ``kill``."""
        return self.stop_at is not None and self.stop_sent != "kill" and now - self.stop_at > ASKED_STOP_S

    def kill(self) -> None:
        """End the trial process at once, by PID, and wait until it is gone (a cold trial is
        reaped here, a warm one by the host); its workers and zygote die with it (parent-death
        signal)."""
        self.stop_sent = "kill"
        target = self.popen if self.popen is not None else ByPid(self.pid) if self.pid is not None else None
        if target is not None:
            with contextlib.suppress(PermissionError):  # its PID is another user's now: it is long gone
                stop([target], signal.SIGKILL)

    def close(self) -> None:
        """Close our end; a cold trial (our child) exits by itself then (``CLOSED_WAIT_S``), or is
        killed."""
        if not self.closed:
            self._ended(None)
        if self.popen is not None and wait_exit([self.popen], CLOSED_WAIT_S):
            self.kill()

    def wait(self, timeout_s: float, on_event: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Read events until the trial is done (at most ``timeout_s``, then it is killed)."""
        deadline = time.monotonic() + timeout_s
        while self.result is None:
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                self.events(0.5)
                break
            for event in self.events(min(left, 0.5)):
                if on_event is not None:
                    on_event(event)
        return self.result or {"event": "done", "state": "fail", "values": None, "figures": {}, "reason": "killed"}


def _child_env(cwd: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (cwd, env.get("PYTHONPATH", "")) if p)
    return env


if __name__ == "__main__":
    sys.exit(main())
