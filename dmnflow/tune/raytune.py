"""The Ray Tune engine (``--engine ray``): the same trials, scheduled by Ray Tune.

``Tuner`` with ``OptunaSearch`` (the tune file's sampler, define-by-run over the space) and
``ASHAScheduler`` on the intermediate values (one objective; several objectives go to
OptunaSearch as lists and run to the end). Each Ray trial is a small function that starts
the same trial process as the embedded engine (forked by the warm host when the trial
runs on this machine, cold otherwise), passes its intermediate values to ``tune.report``
and reports its figures at the end; the trial process ends when Ray stops the function
(its socket closes), so no graph outlives its Ray trial. Resources per trial come from the
graph's nodes (pinned cores, busy nodes, GPUs) unless the tune file's ``ray:`` sets them.

Ray runs on a local instance started for the run the way ``launch --backend ray`` starts
one (``runtime.backends.ray.start_local_ray``: a private temporary directory, tried twice,
everything it started stopped by PID when it fails and at the end: no raylet, agent,
worker or actor outlives the study) or on an existing cluster (``--address``). Results go into the same Optuna journal
as the embedded engine's, so the table, overlay and plots are the same. ``pbt:`` runs
population-based training of a trainer instead (``PopulationBasedTraining``, checkpoints
every ``perturbation_interval`` steps); its best model is exported and backtested.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shutil
import socket
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ..errors import LaunchError
from .engine import Template, figure_filter, host_modules
from .host import start_host
from .space import Param
from .study import TrialEvent, TuneError, make_sampler, trials_left
from .trial import TrialProcess
from .tunefile import TuneFile

try:
    from ray.tune import Callback
except ImportError:  # run_ray says how to install it
    Callback = object  # type: ignore[assignment,misc]

__all__ = ["check_ray", "plain_error", "quiet_tune", "ray_session", "require_ray", "run_ray"]

_ACTIVE: dict[str, tuple[Any, list[Callable[[TrialEvent], None]]]] = {}  # study -> (optuna study, watchers)


def require_ray() -> Any:
    """ray.tune, or a TuneError saying how to install it."""
    try:
        from ray import tune
    except ImportError:
        raise TuneError("--engine ray needs Ray Tune: pip install -e '.[ray]' (or pip install 'dmnflow[ray]')") \
            from None
    return tune


_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


def plain_error(error: Any) -> str:
    """What a Ray trial raised, as one plain line: the last line of Ray's traceback (the
    exception and its message), terminal colour codes removed."""
    lines = [ln.strip() for ln in _ANSI.sub("", str(error)).splitlines() if ln.strip()]
    return lines[-1] if lines else type(error).__name__


def _check_address(address: str) -> None:
    """Fail fast on an address nothing answers at (ray.init would wait a long while)."""
    if address in ("auto", "local"):
        return
    target = address.split("://", 1)[-1]
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise TuneError(f"--address {address!r} is not host:port, ray://host:port or auto")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=3.0).close()
    except OSError as exc:
        raise TuneError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}; start it with "
                        "`ray start --head`, or leave --address out to run on a local Ray") from None


def check_ray(tune: TuneFile) -> None:
    """Before anything is written: Ray is installed, and the cluster asked for answers."""
    require_ray()
    if tune.spec.ray.address:
        _check_address(tune.spec.ray.address)


@contextlib.contextmanager
def quiet_tune() -> Iterator[None]:
    """While ``Tuner.fit`` runs: Ray Tune's own log of a failed trial (its traceback, colour
    codes and all) stays out of the terminal; the study says why each trial failed, in one
    plain line, and Ray keeps the whole traceback in the trial's ``error.txt``."""
    logger = logging.getLogger("ray.tune")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Consider boosting PBT performance")
            yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def ray_session(tune: TuneFile) -> Iterator[bool]:
    """Ray for the study: connect to ``ray.address``, or start a local instance and stop it
    after. Yields whether the trials run on this machine (the warm host serves them)."""
    require_ray()
    import ray

    address = tune.spec.ray.address
    if address:
        _check_address(address)
    cwd = os.getcwd()
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (cwd, os.environ.get("PYTHONPATH", "")) if p)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    from ..runtime.backends.ray import _first_line, start_local_ray

    local = None
    if address and address != "local":
        try:
            ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
        except Exception as exc:  # a token missing, versions that differ, not a Ray at all
            with contextlib.suppress(Exception):
                ray.shutdown()
            raise TuneError(f"cannot join the Ray cluster at {address}: {_first_line(exc)}") from None
    else:
        try:
            local = start_local_ray(log_to_driver=False, logging_level=logging.ERROR)  # the launch backend's way
        except LaunchError as exc:
            raise TuneError(str(exc)) from None
    try:
        yield not address or address in ("auto", "local")
    finally:
        if local is not None:
            local.stop()
        else:
            ray.shutdown()


def run_ray(tune: TuneFile, study: Any, watchers: Sequence[Callable[[TrialEvent], None]] = (), *,
            resume: bool = False) -> bool:
    """Run the study's remaining trials on Ray Tune; True when it was interrupted."""
    if tune.spec.pbt is not None:
        from .pbt import run_pbt

        return run_pbt(tune, study, watchers, resume=resume)
    left = trials_left(study, tune.spec.trials)
    path = tune.out_dir.resolve() / "ray"
    if left == 0 and not resume:
        return False
    rt = require_ray()
    with ray_session(tune) as local:
        host = start_host(host_modules(tune), os.getcwd(), tune.out_dir / "host.log") if (
            tune.spec.warm and local) else None
        recorder = _Recorder(tune)
        _ACTIVE[tune.study] = (study, list(watchers))
        try:
            trainable = rt.with_resources(
                rt.with_parameters(_graph_trial, template=Template.of(tune), names=recorder.names,
                                   metrics=recorder.metrics, host=host.path if host is not None else "",
                                   timeout_s=tune.spec.timeout, multi=tune.multi),
                resources(tune))
            experiment = path / tune.study
            if resume and rt.Tuner.can_restore(str(experiment)):
                tuner = rt.Tuner.restore(str(experiment), trainable=trainable, resume_unfinished=True)
            else:
                if left == 0:
                    return False
                shutil.rmtree(experiment, ignore_errors=True)  # ours, from a study whose journal is gone
                tuner = rt.Tuner(trainable, tune_config=_tune_config(tune, recorder, left),
                                 run_config=rt.RunConfig(name=tune.study, storage_path=str(path), verbose=0,
                                                         callbacks=[recorder],
                                                         failure_config=rt.FailureConfig(max_failures=0)))
            with quiet_tune():
                tuner.fit()
        finally:
            _ACTIVE.pop(tune.study, None)
            if host is not None:
                host.close()
    return recorder.mark_unfinished(study)


def resources(tune: TuneFile) -> Any:
    """The trial's placement group: CPUs and GPUs from the graph's nodes, unless ``ray:`` says."""
    from ray.tune import PlacementGroupFactory

    cpus, gpus = tune.spec.ray.cpus, tune.spec.ray.gpus
    if tune.plan is not None:
        nodes = {n.name: n for n in tune.plan.nodes}
        if cpus is None:
            pinned = {c for p in tune.plan.processes for c in p.cpus}
            busy = sum(1 for p in tune.plan.processes if not p.cpus and any(nodes[n].busy for n in p.nodes))
            cpus = float(max(1, len(pinned) + busy))
        if gpus is None:
            gpus = float(len({n.gpu for n in tune.plan.nodes if n.gpu is not None}))
    bundle = {"CPU": cpus or 1.0}
    if gpus:
        bundle["GPU"] = gpus
    return PlacementGroupFactory([bundle], strategy="PACK")


def _tune_config(tune: TuneFile, recorder: _Recorder, samples: int) -> Any:
    rt = require_ray()
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.optuna import OptunaSearch

    modes = ["max" if d == "maximize" else "min" for d in tune.directions]
    search = OptunaSearch(space=_DefineByRun(list(tune.space), list(recorder.names)),
                          metric=recorder.metrics if tune.multi else recorder.metrics[0],
                          mode=modes if tune.multi else modes[0], sampler=make_sampler(tune))
    if tune.multi or tune.intermediate is None or tune.spec.pruner == "none":
        scheduler = FIFOScheduler()
    else:
        scheduler = ASHAScheduler(time_attr="step", metric=recorder.metrics[0], mode=modes[0], max_t=10**6,
                                  grace_period=tune.spec.ray.grace_period,
                                  reduction_factor=tune.spec.ray.reduction_factor)
    return rt.TuneConfig(search_alg=search, scheduler=scheduler, num_samples=samples,
                         max_concurrent_trials=tune.spec.concurrency)


class _DefineByRun:
    """The space for OptunaSearch, define-by-run (a key with ``when:`` is drawn only when it
    holds), under Ray-safe names; a class so the searcher's checkpoint can pickle it."""

    def __init__(self, params: list[Param], names: list[str]) -> None:
        self.params = params
        self.names = names

    def __call__(self, trial: Any) -> None:
        values: dict[str, Any] = {}
        for name, param in zip(self.names, self.params, strict=True):
            if param.active(values):
                values[param.key] = _suggest(param, trial, name)


def _suggest(param: Param, trial: Any, name: str) -> Any:
    """``param``'s value drawn under the Ray-safe name (OptunaSearch splits names on '/')."""
    if param.kind == "choice":
        return trial.suggest_categorical(name, list(param.choices))
    if param.kind == "int":
        return trial.suggest_int(name, int(param.low), int(param.top), step=int(param.step or 1),  # type: ignore[arg-type]
                                 log=param.log)
    return trial.suggest_float(name, float(param.low), float(param.top), log=param.log,  # type: ignore[arg-type]
                               step=None if param.step is None else float(param.step))


def _graph_trial(config: dict[str, Any], template: Template, names: dict[str, str], metrics: list[str],
                 host: str, timeout_s: float, multi: bool) -> None:
    """One Ray trial: the trial process, its intermediate values, its figures."""
    from ray import tune as rt

    from .host import connect

    params = {names[k]: v for k, v in config.items() if k in names}
    trial_id = rt.get_context().get_trial_id()
    workdir = Path(template.out_dir) / "trials" / f"ray-{trial_id}"
    request = template.request(trial_id, params, workdir=workdir)  # type: ignore[arg-type]
    proc = connect(host, request) if host and os.path.exists(host) else TrialProcess.cold(
        request, workdir / "log.txt")
    last_step = 0
    try:
        deadline = time.monotonic() + timeout_s
        while proc.result is None:
            now = time.monotonic()
            if now > deadline and proc.stop_sent is None:
                proc.stop(f"timed out after {timeout_s:g}s")
            elif proc.overdue(now):
                proc.kill()
            for event in proc.events(0.5):
                if event.get("event") == "progress" and "value" in event and not multi:
                    last_step = int(event["step"])
                    rt.report({metrics[0]: float(event["value"]), "step": last_step, "final": 0})
        result = proc.result
        final: dict[str, Any] = {"final": 1, "step": last_step, "state": result.get("state"),
                                 "reason": str(result.get("reason") or "")[:4000],
                                 "figures_json": json.dumps(result.get("figures") or {}, default=str),
                                 "wall_s": result.get("wall_s") or 0.0}
        if result.get("state") == "complete":
            final.update(zip(metrics, result["values"], strict=True))
        rt.report(final)
    finally:
        if proc.result is None:
            proc.kill()
        proc.close()


class _Recorder(Callback):
    """Ray trials into the study's journal, and their events to the watchers."""

    def __init__(self, tune: TuneFile) -> None:
        self.key = tune.study
        self.params = list(tune.space)
        self.names = {f"p{i}": p.key for i, p in enumerate(self.params)}
        self.metrics = [f"objective_{i}" for i in range(len(tune.objectives))]
        self.keep_nodes = sorted({k.split(".", 1)[0] for k in _kept(tune)})
        self.intermediate: dict[str, dict[int, float]] = {}
        self.slots: dict[str, int] = {}
        self.numbers: dict[str, int] = {}  # Ray trial id -> the order it started in (what watchers show)
        self.finished: set[str] = set()
        self.started: dict[str, dict[str, Any]] = {}

    def __getstate__(self) -> dict[str, Any]:
        return dict(self.__dict__)  # plain data only: the study and watchers live in _ACTIVE

    def _active(self) -> tuple[Any, list[Callable[[TrialEvent], None]]]:
        return _ACTIVE.get(self.key, (None, []))

    def _emit(self, event: TrialEvent) -> None:
        for watch in self._active()[1]:
            watch(event)

    def _params(self, trial: Any) -> dict[str, Any]:
        return {self.names[k]: v for k, v in trial.config.items() if k in self.names}

    def _n(self, trial: Any) -> int:
        return self.numbers.get(trial.trial_id, -1)

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        free = set(range(len(trials) + 1)) - set(self.slots.values())
        self.slots[trial.trial_id] = min(free)
        self.numbers.setdefault(trial.trial_id, len(self.numbers))
        self.started[trial.trial_id] = self._params(trial)
        self._emit(TrialEvent("started", self._n(trial), self._params(trial), slot=self.slots[trial.trial_id]))

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any],
                        **info: Any) -> None:
        if result.get("final") == 0 and self.metrics[0] in result:
            step, value = int(result["step"]), float(result[self.metrics[0]])
            self.intermediate.setdefault(trial.trial_id, {})[step] = value
            self._emit(TrialEvent("progress", self._n(trial), self._params(trial), step=step, value=value,
                                  slot=self.slots.get(trial.trial_id, 0)))

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        last = trial.last_result or {}
        if last.get("final") == 1:
            state = "complete" if last.get("state") == "complete" else "fail"
            reason = last.get("reason", "")
        else:
            state, reason = "pruned", f"stopped by ASHA at step {last.get('step', 0)}"
        self._record(trial, state, reason, last)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        reason = "the Ray trial failed"
        with contextlib.suppress(OSError, TypeError):
            if trial.error_file:
                reason += ": " + plain_error(Path(trial.error_file).read_text())
        self._record(trial, "fail", reason, trial.last_result or {})

    def _record(self, trial: Any, state: str, reason: str, last: dict[str, Any]) -> None:
        import optuna
        from optuna.trial import TrialState

        if trial.trial_id in self.finished:
            return
        self.finished.add(trial.trial_id)
        study, _ = self._active()
        params = self._params(trial)
        values = [float(last[m]) for m in self.metrics] if state == "complete" else None
        if values is not None and not all(math.isfinite(v) for v in values):
            state, values, reason = "fail", None, "an objective is not a finite number"
        figures = {}
        with contextlib.suppress(ValueError, TypeError):
            figures = {k: v for k, v in json.loads(last.get("figures_json") or "{}").items()
                       if k.split(".", 1)[0] in self.keep_nodes}
        if study is not None:
            dists = {p.key: p.distribution() for p in self.params if p.key in params}
            attrs = {"figures": figures, "ray_trial_id": trial.trial_id, "wall_s": last.get("wall_s"),
                     "trial_s": last.get("time_total_s")}
            if reason:
                attrs["reason"] = reason
            study.add_trial(optuna.trial.create_trial(
                state={"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED}.get(state, TrialState.FAIL),
                values=values, params=params, distributions=dists, user_attrs=attrs,
                intermediate_values=self.intermediate.get(trial.trial_id, {})))
        self.slots.pop(trial.trial_id, None)
        self._emit(TrialEvent("finished", self._n(trial), params, state, values, reason, figures=figures))

    def mark_unfinished(self, study: Any) -> bool:
        """Trials Ray did not finish (Ctrl-C) are recorded as interrupted; True if there were any."""
        import optuna
        from optuna.trial import TrialState

        left = [t for t in self.started if t not in self.finished]
        for trial_id in left:
            params = self.started[trial_id]
            study.add_trial(optuna.trial.create_trial(
                state=TrialState.FAIL, params=params,
                distributions={p.key: p.distribution() for p in self.params if p.key in params},
                user_attrs={"reason": "interrupted (Ctrl-C)", "interrupted": True, "ray_trial_id": trial_id,
                            "requeued": True}))  # Tuner.restore runs it again, not the journal's queue
        return bool(left)



def _kept(tune: TuneFile) -> list[str]:
    keep = figure_filter(tune)
    nodes = {o.node for o in tune.objectives} | {"report", "train"}
    return [f"{n}.x" for n in nodes if keep(f"{n}.x")]


