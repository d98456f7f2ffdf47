"""The embedded engine (``--engine optuna``, the default): an Optuna study in a journal file,
driven by ask-and-tell from this process, with up to ``concurrency`` trials running at once
as local processes (forked by the warm host, or cold).

The loop: ask the study for values (define-by-run over the space), start the trial, read
every running trial's events as they come (``select`` on their sockets), report each
intermediate value to the trial and stop it when the pruner says so, stop a trial past its
timeout (and kill it if it does not drain), tell the study how each ended.

A seeded study gives the same trials whatever the machine's speed: with ``concurrency``
c, trial i is asked once trials 0..i-c are told and before any later one is (a trial that
ends early waits for its turn to be told), and its pruner sees only the trials told
before it was asked; with the intermediate values at exact steps (``engine.exact_steps``)
every decision then depends on the data alone. Ctrl-C stops the
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

from ..runtime.processes import ASKED_STOP_S
from .engine import Template, figure_filter, host_modules
from .host import start_host
from .study import TrialEvent, record, trials_left
from .trial import TrialProcess
from .tunefile import TuneFile

__all__ = ["run_embedded"]


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
    index: int = 0  # the order it was asked in, this run
    visible: frozenset[int] = frozenset()  # the trials its pruner sees: those told before it was asked


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
    told = 0  # trials told, in the order they were asked
    pending: dict[int, Callable[[], None]] = {}  # ask index -> the tell of a trial that ended, held for its turn
    width = tune.spec.concurrency

    def emit(event: TrialEvent) -> None:
        for watch in watchers:
            watch(event)

    def tell_ready(everything: bool = False) -> None:
        """Tell ended trials in the order they were asked; trial j only once trial j+c is asked
        (or all are), so trial i is always asked with exactly trials 0..i-c told."""
        nonlocal told
        while told in pending and (everything or launched >= left or told <= launched - width):
            pending.pop(told)()
            told += 1

    def start() -> None:
        nonlocal launched
        visible = frozenset(t.number for t in study.get_trials(deepcopy=False, states=_finished()))
        trial = study.ask()
        params = tune.space.sample(trial)
        slot = min(set(range(width)) - {r.slot for r in running.values()})
        request = template.request(trial.number, params)
        index = launched
        launched += 1
        try:
            proc = host.trial(request) if host is not None and host.alive else TrialProcess.cold(
                request, tune.out_dir / "trials" / str(trial.number) / "log.txt")
        except OSError as exc:
            why = str(exc)

            def tell_failed() -> None:
                trial.set_user_attr("reason", f"the trial could not start: {why}")
                study.tell(trial, state=_fail())

            pending[index] = tell_failed
            emit(TrialEvent("finished", trial.number, params, "fail", reason=why, slot=slot))
            return
        running[trial.number] = _Running(proc, trial, params, slot, index=index, visible=visible)
        selector.register(proc.sock, selectors.EVENT_READ, trial.number)
        emit(TrialEvent("started", trial.number, params, slot=slot))

    def finish(run: _Running, result: dict[str, Any], interrupted: bool = False) -> None:
        with contextlib.suppress(KeyError, ValueError):
            selector.unregister(run.proc.sock)
        run.proc.close()
        running.pop(run.trial.number, None)
        run.trial.set_user_attr("trial_s", round(time.monotonic() - run.started, 3))  # as the engine saw it
        if run.pruned:
            result = {**result, "reason": run.pruned}
        elif run.timed_out and result.get("state") != "complete":
            result = {**result, "state": "fail", "reason": run.timed_out}
        elif interrupted:
            result = {**result, "state": "fail", "reason": "interrupted (Ctrl-C)"}
        elif result.get("state") == "stopped":
            result = {**result, "state": "fail"}
        state = "pruned" if run.pruned else "complete" if result.get("state") == "complete" else "fail"
        pending[run.index] = lambda: record(study, run.trial, result, pruned=bool(run.pruned),
                                            interrupted=interrupted, keep=keep)  # told at its turn: tell_ready
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
            if not tune.multi and _should_prune(study, run):
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
            elif run.proc.overdue(now):
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
                tell_ready(everything=True)
                return True
            tell_ready()
            while len(running) < width and launched < left and told >= launched - width + 1:
                start()
                tell_ready()
            if not running:
                tell_ready(everything=True)
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
        tell_ready(everything=True)
        return True
    finally:
        signal.signal(signal.SIGINT, previous)
        for run in list(running.values()):  # only after an error of our own: nothing is left running
            run.proc.kill()
            finish(run, {"state": "fail", "reason": "the study stopped on an error", "values": None}, True)
        for index in sorted(pending):
            pending.pop(index)()
        selector.close()
        if host is not None:
            host.close()


def _stop_all(running: dict[int, _Running], finish: Callable[..., None]) -> None:
    """Ctrl-C: ask every trial in flight to stop, give them the drain, kill the rest, mark them."""
    for run in running.values():
        run.proc.stop("interrupted")
    deadline = time.monotonic() + ASKED_STOP_S
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


class _Before:
    """The study as one trial's pruner sees it: the trials told before that trial was asked,
    and the trial itself (what the pruner compares it with, whatever ends while it runs)."""

    def __init__(self, study: Any, visible: frozenset[int], own: int) -> None:
        self._study, self._visible, self._own = study, visible, own

    def get_trials(self, deepcopy: bool = True, states: Any = None) -> list[Any]:
        return [t for t in self._study.get_trials(deepcopy=deepcopy, states=states)
                if t.number in self._visible or t.number == self._own]

    @property
    def trials(self) -> list[Any]:
        return self.get_trials()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)


def _should_prune(study: Any, run: _Running) -> bool:
    """``trial.should_prune()``, on the trials told before this one was asked (``_Before``)."""
    frozen = study._storage.get_trial(run.trial._trial_id)
    return bool(study.pruner.prune(_Before(study, run.visible, run.trial.number), frozen))


def _finished() -> tuple[Any, ...]:
    from optuna.trial import TrialState

    return (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def _fail() -> Any:
    from optuna.trial import TrialState

    return TrialState.FAIL
