"""The embedded engine (``--engine optuna``, the default): an Optuna study in a journal file,
driven by ask-and-tell from this process, with up to ``concurrency`` trials running at once
as local processes (forked by the warm host, or cold).

The loop: ask the study for values (define-by-run over the space), start the trial, read
every running trial's events as they come (``select`` on their sockets), report each
intermediate value to the trial and stop it when the pruner says so, stop a trial past its
timeout (and kill it if it does not drain), tell the study how each ended. Ctrl-C stops the
trials in flight (Ctrl-C only sets a flag the loop reads, so the journal is never written
half-way), marks them interrupted, and returns; ``--resume`` runs them again; a second
Ctrl-C stops waiting for them to drain.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .engine import Template, figure_filter, host_modules
from .host import start_host
from .study import TrialEvent, record, trials_left
from .trial import TrialProcess
from .tunefile import TuneFile

__all__ = ["run_embedded"]

KILL_AFTER_S = 10.0  # after a stop, a trial that has not drained (plus the runtime's grace) is killed


@dataclass
class _Running:
    proc: TrialProcess
    trial: Any
    params: dict[str, Any]
    slot: int
    started: float = field(default_factory=time.monotonic)
    pruned: str = ""
    timed_out: str = ""
    reported: set[int] = field(default_factory=set)


def run_embedded(tune: TuneFile, study: Any, watchers: Sequence[Callable[[TrialEvent], None]] = ()) -> bool:
    """Run the study's remaining trials; True when it was interrupted (Ctrl-C)."""
    left = trials_left(study, tune.spec.trials)
    if left == 0:
        return False
    host = start_host(host_modules(tune), os.getcwd(), tune.out_dir / "host.log") if tune.spec.warm else None
    running: dict[int, _Running] = {}
    keep = figure_filter(tune)
    template = Template.of(tune)
    selector = selectors.DefaultSelector()
    launched = 0

    def emit(event: TrialEvent) -> None:
        for watch in watchers:
            watch(event)

    def start() -> None:
        nonlocal launched
        trial = study.ask()
        params = tune.space.sample(trial)
        slot = min(set(range(tune.spec.concurrency)) - {r.slot for r in running.values()})
        request = template.request(trial.number, params)
        try:
            proc = host.trial(request) if host is not None and host.alive else TrialProcess.cold(
                request, tune.out_dir / "trials" / str(trial.number) / "log.txt")
        except OSError as exc:
            trial.set_user_attr("reason", f"the trial could not start: {exc}")
            study.tell(trial, state=_fail())
            emit(TrialEvent("finished", trial.number, params, "fail", reason=str(exc), slot=slot))
            launched += 1
            return
        running[trial.number] = _Running(proc, trial, params, slot)
        selector.register(proc.sock, selectors.EVENT_READ, trial.number)
        launched += 1
        emit(TrialEvent("started", trial.number, params, slot=slot))

    def finish(run: _Running, result: dict[str, Any], interrupted: bool = False) -> None:
        with contextlib.suppress(KeyError, ValueError):
            selector.unregister(run.proc.sock)
        run.proc.close()
        running.pop(run.trial.number, None)
        if run.pruned:
            result = {**result, "reason": run.pruned}
        elif run.timed_out and result.get("state") != "complete":
            result = {**result, "state": "fail", "reason": run.timed_out}
        elif interrupted:
            result = {**result, "state": "fail", "reason": "interrupted (Ctrl-C)"}
        elif result.get("state") == "stopped":
            result = {**result, "state": "fail"}
        run.trial.set_user_attr("trial_s", round(time.monotonic() - run.started, 3))  # as the engine saw it
        state = record(study, run.trial, result, pruned=bool(run.pruned), interrupted=interrupted, keep=keep)
        emit(TrialEvent("finished", run.trial.number, run.params, state, result.get("values"),
                        str(result.get("reason") or ""), slot=run.slot,
                        figures={k: v for k, v in (result.get("figures") or {}).items() if keep(k)}))

    def handle(run: _Running, event: dict[str, Any]) -> None:
        if event.get("event") == "progress" and "value" in event and not run.pruned:
            step, value = int(event["step"]), float(event["value"])
            if step not in run.reported:
                run.reported.add(step)
                run.trial.report(value, step)
            emit(TrialEvent("progress", run.trial.number, run.params, step=step, value=value, slot=run.slot))
            if not tune.multi and run.trial.should_prune():
                run.pruned = f"pruned at step {step} ({tune.intermediate.value.name if tune.intermediate else ''} " \
                             f"{value:.4g})"
                run.proc.stop(run.pruned)
        elif event.get("event") == "running":
            emit(TrialEvent("running", run.trial.number, run.params, slot=run.slot,
                            figures={k: event.get(k) for k in ("fraction", "eta_s", "done", "total", "unit")}))
        elif event.get("event") == "done":
            finish(run, event)

    def overdue(now: float) -> None:
        for run in list(running.values()):
            if run.proc.stop_at is None and now - run.started > tune.spec.timeout:
                run.timed_out = f"timed out after {tune.spec.timeout:g}s"
                run.proc.stop(run.timed_out)
            elif run.proc.stop_at is not None and now - run.proc.stop_at > KILL_AFTER_S:
                run.proc.kill()

    asked: list[bool] = []

    def on_ctrl_c(signum: int, frame: Any) -> None:  # the loop stops the trials; a second Ctrl-C forces it
        if asked:
            raise KeyboardInterrupt
        asked.append(True)

    previous = signal.signal(signal.SIGINT, on_ctrl_c)
    try:
        while True:
            if asked:
                _stop_all(running, finish)
                return True
            while len(running) < tune.spec.concurrency and launched < left:
                start()
            if not running:
                return False
            for key, _ in selector.select(timeout=0.25):
                run = running.get(key.data)
                if run is None:
                    continue
                for event in run.proc.events():
                    handle(run, event)
            overdue(time.monotonic())
    except KeyboardInterrupt:
        _stop_all(running, finish)
        return True
    finally:
        signal.signal(signal.SIGINT, previous)
        for run in list(running.values()):  # only after an error of our own: nothing is left running
            run.proc.kill()
            finish(run, {"state": "fail", "reason": "the study stopped on an error", "values": None}, True)
        selector.close()
        if host is not None:
            host.close()


def _stop_all(running: dict[int, _Running], finish: Callable[..., None]) -> None:
    """Ctrl-C: ask every trial in flight to stop, give them the drain, kill the rest, mark them."""
    for run in running.values():
        run.proc.stop("interrupted")
    deadline = time.monotonic() + KILL_AFTER_S
    try:
        while running and time.monotonic() < deadline:
            for run in list(running.values()):
                for event in run.proc.events(0.05):
                    if event.get("event") == "done":
                        finish(run, event, True)
    except KeyboardInterrupt:
        pass  # a second Ctrl-C: no more waiting
    for run in list(running.values()):
        run.proc.kill()
        finish(run, {"state": "fail", "values": None, "figures": {}}, True)


def _fail() -> Any:
    from optuna.trial import TrialState

    return TrialState.FAIL
