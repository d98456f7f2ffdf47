"""The study: Optuna storage (a journal file under ``out/`` by default, or an RDB URL), the
sampler and pruner a tune file names, and what both engines record per trial.

One study per storage name. Opening checks that the storage holds this study and no
other, that a study being resumed was made from the same space and objectives, and turns
trials a crash left RUNNING into failures whose values are queued again, so ``--resume``
runs them anew. Every finished trial carries user attributes the results read:
``reason`` (why it failed or was pruned), ``figures`` (the report's figures), ``overrides``
(what it set), ``workdir`` and ``wall_s``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DmnflowError
from .tunefile import PRUNERS, SAMPLERS, TuneFile

__all__ = ["TrialEvent", "TuneError", "fingerprint", "make_pruner", "make_sampler", "open_study", "record",
           "require_optuna", "trials_left"]

INTERRUPTED = "interrupted"


class TuneError(DmnflowError):
    """The study cannot run: a missing extra, a storage that holds another study, an
    unreachable Ray cluster. The message says what to do; the CLI exits 1."""


@dataclass
class TrialEvent:
    """What an engine tells its watchers (the progress bar, the ZeroMQ feed) about a trial."""

    kind: str  # started, running (the graph's progress: figures fraction, eta_s), progress, finished
    number: int
    params: dict[str, Any] = field(default_factory=dict)
    state: str = ""  # finished: complete, pruned, fail
    values: list[float] | None = None
    reason: str = ""
    step: int | None = None
    value: float | None = None
    slot: int = 0
    figures: dict[str, Any] = field(default_factory=dict)


Watcher = Callable[[TrialEvent], None]


try:
    from optuna.samplers import GridSampler as _Grid
except ImportError:  # require_optuna says how to install it
    _Grid = object  # type: ignore[assignment,misc]


class AskTellGrid(_Grid):  # type: ignore[misc,valid-type]
    """Optuna's GridSampler for ask-and-tell: the engine counts the trials, so a finished grid
    does not call ``study.stop()`` (which raises outside ``optimize()``)."""

    def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
        return None


def require_optuna() -> Any:
    """optuna, or a TuneError saying how to install it."""
    try:
        import optuna
    except ImportError:
        raise TuneError("dmnflow tune needs Optuna: pip install -e '.[tune]' "
                        "(or pip install 'dmnflow[tune]')") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def make_sampler(tune: TuneFile, seed: int | None = None) -> Any:
    optuna = require_optuna()
    name, options = _named(tune.spec.sampler)
    options = dict(options)
    if name == "grid":  # every value of every key (each a choice, or a range with a step)
        grid = {p.key: p.grid() for p in tune.space}
        return AskTellGrid(grid, seed=tune.spec.seed if seed is None else seed)
    if name != "random" or "seed" not in options:
        options.setdefault("seed", tune.spec.seed if seed is None else seed)
    if name == "tpe" and tune.space.conditional:
        options.setdefault("multivariate", True)
        options.setdefault("group", True)  # conditional keys: model the space's sub-spaces jointly
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return getattr(optuna.samplers, SAMPLERS[name])(**options)


def make_pruner(tune: TuneFile) -> Any:
    optuna = require_optuna()
    name, options = _named(tune.spec.pruner)
    return getattr(optuna.pruners, PRUNERS[name])(**options)


def _named(raw: str | dict[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    if isinstance(raw, str):
        return raw, {}
    return next(iter(raw.items()))


def fingerprint(tune: TuneFile) -> str:
    """What a study's trials depend on: the graph, fixed settings, space and objectives."""
    data = {"graph": tune.graph.name, "profile": tune.profile, "set": [o.text for o in tune.base],
            "space": [p.key + " " + p.describe() for p in tune.space],
            "objectives": [f"{o.name} {o.direction}" for o in tune.objectives],
            "train": None if tune.trainer is None else [tune.trainer.uses, tune.trainer.iterations,
                                                        json.dumps(tune.trainer.params, sort_keys=True, default=str)]}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def storage_of(tune: TuneFile) -> Any:
    """The Optuna storage: a journal file (made with its directory), or an RDB URL."""
    require_optuna()
    if "://" in tune.storage:
        return tune.storage
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    path = Path(tune.storage)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TuneError(f"cannot make the storage {tune.storage}: {exc.strerror or exc}") from None
    return JournalStorage(JournalFileBackend(str(path)))


def open_study(tune: TuneFile, resume: bool) -> Any:
    """Create the study, or (``resume``) continue it; refuses a storage that holds another study."""
    optuna = require_optuna()
    storage = storage_of(tune)
    try:
        names = optuna.study.get_all_study_names(storage)
    except Exception as exc:  # a file that is not a journal, an unreachable database
        raise TuneError(f"cannot read the storage {tune.storage}: {type(exc).__name__}: {exc}") from None
    if names and tune.study not in names:
        raise TuneError(f"{tune.storage} holds study {', '.join(repr(n) for n in names)}, not {tune.study!r}: "
                        "give this study its own storage (storage: in the tune file, or --storage), or name it "
                        f"study: {names[0]} to continue that one")
    if tune.study in names:
        study = optuna.load_study(study_name=tune.study, storage=storage, sampler=make_sampler(tune),
                                  pruner=make_pruner(tune))
        made = study.user_attrs.get("dmnflow", {})
        if not resume:
            raise TuneError(f"{tune.storage} already holds study {tune.study!r} ({len(study.trials)} trials): "
                            "pass --resume to continue it, or remove the file to start again")
        if made.get("fingerprint") not in (None, fingerprint(tune)):
            raise TuneError(f"study {tune.study!r} in {tune.storage} was made from another space, objectives or "
                            "settings than this tune file: it cannot be resumed with it; give it another storage")
        _requeue_interrupted(study)
        return study
    study = optuna.create_study(storage=storage, study_name=tune.study, directions=tune.directions,
                                sampler=make_sampler(tune), pruner=make_pruner(tune))
    study.set_user_attr("dmnflow", {"fingerprint": fingerprint(tune), "tune_file": tune.file,
                                    "graph": os.path.relpath(tune.graph), "profile": tune.profile,
                                    "objectives": [o.name for o in tune.objectives]})
    return study


def _requeue_interrupted(study: Any) -> None:
    """Trials a crash left RUNNING become failures; every interrupted trial is queued again."""
    optuna = require_optuna()
    from optuna.trial import TrialState

    for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        live = optuna.trial.Trial(study, frozen._trial_id)
        live.set_user_attr("reason", "the study stopped before the trial ended")
        live.set_user_attr(INTERRUPTED, True)
        study.tell(live, state=TrialState.FAIL)
    trials = study.get_trials(deepcopy=False)
    rerun = {t.user_attrs.get("rerun_of") for t in trials}
    for trial in trials:
        if (trial.state == TrialState.FAIL and trial.user_attrs.get(INTERRUPTED) and trial.number not in rerun
                and not trial.user_attrs.get("requeued")):  # Ray's interrupted trials: Tuner.restore reruns them
            study.enqueue_trial(trial.params, user_attrs={"rerun_of": trial.number}, skip_if_exists=False)


def trials_left(study: Any, total: int) -> int:
    """Trials still to run: finished ones count (interrupted ones do not: they run again)."""
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED,
                                                                  TrialState.FAIL))
            if not t.user_attrs.get(INTERRUPTED)]
    return max(total - len(done), 0)


def record(study: Any, trial: Any, result: dict[str, Any], *, pruned: bool = False, interrupted: bool = False,
           keep: Callable[[str], bool] | None = None) -> str:
    """Tell the study how a trial ended (with its figures and reason); the state told."""
    from optuna.trial import TrialState

    figures = {k: v for k, v in (result.get("figures") or {}).items() if keep is None or keep(k)}
    trial.set_user_attr("figures", {k: _finite(v) for k, v in figures.items()})
    for key in ("wall_s", "duration_s", "startup_s"):
        if result.get(key) is not None:
            trial.set_user_attr(key, result[key])
    reason = str(result.get("reason") or "")
    if reason:
        trial.set_user_attr("reason", reason[:4000])
    if interrupted:
        trial.set_user_attr(INTERRUPTED, True)
    state = result.get("state")
    if state == "complete" and not pruned:
        study.tell(trial, result["values"] if len(result["values"]) > 1 else result["values"][0])
        return "complete"
    if pruned:
        study.tell(trial, state=TrialState.PRUNED)
        return "pruned"
    study.tell(trial, state=TrialState.FAIL)
    return "fail"


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value
