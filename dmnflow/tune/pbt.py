"""Population-based training on Ray Tune (a tune file with ``pbt:`` and ``train:``).

``population`` members train the trainer at once, each from values drawn from the space
(``train.<param>`` keys). Every ``perturbation_interval`` steps a member reports its metric
with a checkpoint (``tune.report(..., checkpoint=...)``); ``PopulationBasedTraining`` has a
lagging member continue from a leading member's checkpoint with mutated values (the member
function restores from ``tune.get_checkpoint()``: the trainer loads the donor's state and
goes on under its own new params). At the end the best member's last checkpoint is
exported as the model file (with its provenance sidecar), and, when the tune file says
where the graph takes it (``train.model_key``), backtested through the graph like any
trial; the overlay then points the graph at that model, and ``dmnflow swap`` can load it
into a running graph.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .engine import Template, figure_filter
from .raytune import _ACTIVE, Callback, plain_error, quiet_tune, ray_session, require_ray
from .space import Param
from .study import TrialEvent, TuneError
from .trial import TrialProcess
from .tunefile import TuneFile

__all__ = ["run_pbt"]


def _domain(param: Param) -> Any:
    """The Ray search domain of a space key: what PBT draws and resamples from."""
    from ray import tune as rt

    if param.kind == "choice":
        return rt.choice(list(param.choices))
    if param.kind == "int":
        step = int(param.step or 1)
        return (rt.lograndint(int(param.low), int(param.high) + 1) if param.log  # type: ignore[arg-type]
                else rt.qrandint(int(param.low), int(param.top), step))  # type: ignore[arg-type]
    if param.log:
        return rt.loguniform(float(param.low), float(param.high))  # type: ignore[arg-type]
    if param.step is not None:
        return rt.quniform(float(param.low), float(param.top), float(param.step))  # type: ignore[arg-type]
    return rt.uniform(float(param.low), float(param.high))  # type: ignore[arg-type]


def run_pbt(tune: TuneFile, study: Any, watchers: Sequence[Callable[[TrialEvent], None]] = (), *,
            resume: bool = False) -> bool:
    """Train the population, record each member in the study, export and backtest the best."""
    rt = require_ray()
    from ray.tune.schedulers import PopulationBasedTraining

    assert tune.trainer is not None and tune.spec.pbt is not None
    if study.get_trials(deepcopy=False) and not resume:
        return False
    spec = tune.spec.pbt
    objective = tune.objectives[0]
    mode = "max" if objective.direction == "maximize" else "min"
    names = {f"p{i}": p.key for i, p in enumerate(tune.space)}
    domains = {f"p{i}": _domain(p) for i, p in enumerate(tune.space)}
    path = tune.out_dir.resolve() / "ray"
    member = {"uses": tune.trainer.uses, "params": tune.trainer.params, "iterations": tune.trainer.iterations,
              "cwd": os.getcwd(), "out_dir": str(tune.out_dir.resolve()), "names": names,
              "figure": objective.figure, "interval": spec.perturbation_interval}
    recorder = _PbtRecorder(tune.study, names)
    with ray_session(tune):
        import ray

        _ACTIVE[tune.study] = (study, list(watchers))
        # every member exists from the start, `concurrency` of them running at once by their share of the
        # CPUs: a max_concurrent_trials would create the later members only once earlier ones had ended,
        # splitting the population into groups that never meet
        cpus = tune.spec.ray.cpus or max(float(ray.cluster_resources().get("CPU", 1.0)) / tune.spec.concurrency,
                                         0.01)
        try:
            trainable = rt.with_resources(rt.with_parameters(_member, spec=member), {"CPU": cpus})
            experiment = path / tune.study
            if resume and rt.Tuner.can_restore(str(experiment)):
                tuner = rt.Tuner.restore(str(experiment), trainable=trainable, resume_unfinished=True)
            else:
                scheduler = PopulationBasedTraining(
                    time_attr="training_iteration", metric="objective_0", mode=mode,
                    perturbation_interval=spec.perturbation_interval, hyperparam_mutations=domains,
                    quantile_fraction=spec.quantile_fraction, resample_probability=spec.resample_probability,
                    synch=spec.synch, log_config=True)
                # every checkpoint is kept: an exploit restores the donor's checkpoint of that interval, which a
                # num_to_keep would have deleted by then (the member then dies: "does not exist on storage")
                tuner = rt.Tuner(trainable, param_space=domains, tune_config=rt.TuneConfig(
                    scheduler=scheduler, num_samples=spec.population, reuse_actors=False), run_config=rt.RunConfig(
                    name=tune.study, storage_path=str(path), verbose=0, callbacks=[recorder],
                    stop={"training_iteration": tune.trainer.iterations},  # the last step: an end, no exploit
                    checkpoint_config=rt.CheckpointConfig(num_to_keep=None),
                    failure_config=rt.FailureConfig(max_failures=0)))
            with quiet_tune():
                grid = tuner.fit()
        finally:
            _ACTIVE.pop(tune.study, None)
        interrupted = recorder.interrupted
        grid = sorted(grid, key=recorder.slot_of)  # members numbered as the progress lines number them
        failed = [(i, r) for i, r in enumerate(grid) if r.error is not None]
        best = _best(grid, mode)
        figures = _export_and_backtest(tune, best) if best is not None and not interrupted and not failed else {}
    exploits = _exploits(path / tune.study)
    study.set_user_attr("pbt", {"exploits": len(exploits), "policy": [json.dumps(e) for e in exploits[:100]]})
    _record_members(tune, study, grid, names, best, figures)
    if failed and not interrupted:  # a population that lost a member is not the study asked for
        raise TuneError(f"{len(failed)} of {len(grid)} PBT members failed (the study stops; its members are in the "
                        "journal): " + "; ".join(f"member {i}: {plain_error(r.error)}" for i, r in failed))
    return interrupted


def _exploits(experiment: Path) -> list[Any]:
    """Ray's PBT policy log (``pbt_global.txt``): one line per exploit, [target trial, donor
    trial, target step, donor step, old config, new config]."""
    out = []
    for log in sorted(experiment.rglob("pbt_global.txt")) if experiment.is_dir() else ():
        for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def _member(config: dict[str, Any], spec: dict[str, Any]) -> None:
    """One member of the population: restore, train, report, checkpoint every interval."""
    from ray import tune as rt

    from .trainer import load_trainer

    os.chdir(spec["cwd"])
    if spec["cwd"] not in sys.path:
        sys.path.insert(0, spec["cwd"])
    cls = load_trainer(spec["uses"])
    values = {spec["names"][k].split(".", 1)[1]: v for k, v in config.items() if k in spec["names"]}
    params = cls.Params.model_validate({**spec["params"], **values})
    trial_id = rt.get_context().get_trial_id()
    trainer = cls(params, Path(spec["out_dir"]) / "pbt" / trial_id)
    start = 0
    checkpoint = rt.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            trainer.load(Path(directory))
            start = json.loads((Path(directory) / "step.json").read_text())["step"]
    for step in range(start + 1, int(spec["iterations"]) + 1):
        metrics = trainer.step()
        report = {**{f"train.{k}": float(v) for k, v in metrics.items()},
                  "objective_0": float(metrics[spec["figure"]]), "step": step}
        if step % int(spec["interval"]) == 0 or step == int(spec["iterations"]):
            with tempfile.TemporaryDirectory() as directory:
                trainer.save(Path(directory))
                (Path(directory) / "step.json").write_text(json.dumps({"step": step}))
                rt.report(report, checkpoint=rt.Checkpoint.from_directory(directory))
        else:
            rt.report(report)


def _best(grid: Any, mode: str) -> Any:
    done = [r for r in grid if r.error is None and r.metrics and math.isfinite(r.metrics.get("objective_0", math.nan))]
    if not done:
        return None
    sign = 1.0 if mode == "max" else -1.0
    return max(done, key=lambda r: sign * r.metrics["objective_0"])


def _export_and_backtest(tune: TuneFile, best: Any) -> dict[str, Any]:
    """The best member's model file (and sidecar); its figures through the graph."""
    from .trainer import load_trainer

    assert tune.trainer is not None
    cls = load_trainer(tune.trainer.uses)
    names = {f"p{i}": p.key for i, p in enumerate(tune.space)}
    values = {names[k].split(".", 1)[1]: v for k, v in best.config.items() if k in names}
    trainer = cls(cls.Params.model_validate({**tune.trainer.params, **values}), tune.out_dir / "best_model")
    if best.checkpoint is None:
        raise TuneError("the best member has no checkpoint to export")
    with best.checkpoint.as_directory() as directory:
        trainer.load(Path(directory))
    model = trainer.export((tune.out_dir / "best_model.pt").resolve())
    figures: dict[str, Any] = {k: v for k, v in best.metrics.items() if k.startswith("train.")}
    figures["train.model"] = str(model)
    if not tune.trainer.model_key:
        return figures
    from ..errors import Location
    from ..spec import Override

    key = tune.trainer.model_key
    template = Template.of(tune)
    template.train = None
    template.graph = str(tune.graph)
    request = template.request("backtest", {}, workdir=tune.out_dir / "best_backtest", warm=False, extra=[
        Override(tuple(key.split(".")), str(model), Location(f"--set {key}"), f"{key}={model}")],
        label=f"the PBT study's best model ({model.name}) through the graph")
    proc = TrialProcess.cold(request, tune.out_dir / "best_backtest" / "log.txt")
    try:
        result = proc.wait(tune.spec.timeout)
    finally:
        proc.close()
    keep = figure_filter(tune)
    figures.update({k: v for k, v in (result.get("figures") or {}).items() if keep(k)})
    if result.get("state") != "complete":
        figures["backtest.reason"] = result.get("reason", "")
    return figures


def _record_members(tune: TuneFile, study: Any, grid: Any, names: dict[str, str], best: Any,
                    figures: dict[str, Any]) -> None:
    import optuna
    from optuna.trial import TrialState

    params_of = {p.key: p for p in tune.space}
    for result in grid:
        config = {names[k]: v for k, v in (result.config or {}).items() if k in names}
        for key, value in list(config.items()):  # PBT's perturbations can leave a range: clip for the record
            param = params_of[key]
            if param.kind != "choice":
                config[key] = type(value)(min(max(value, param.low), param.high))  # type: ignore[type-var]
        value = (result.metrics or {}).get("objective_0")
        ok = result.error is None and value is not None and math.isfinite(value)
        attrs: dict[str, Any] = {"ray_trial_id": (result.metrics or {}).get("trial_id"), "figures": {
            k: v for k, v in (result.metrics or {}).items() if k.startswith("train.")}}
        if result is best:
            attrs["figures"].update(figures)
        if not ok:
            attrs["reason"] = plain_error(result.error) if result.error else "no finite metric"
        study.add_trial(optuna.trial.create_trial(
            state=TrialState.COMPLETE if ok else TrialState.FAIL, values=[value] if ok else None, params=config,
            distributions={k: params_of[k].distribution() for k in config}, user_attrs=attrs))


class _PbtRecorder(Callback):
    """Members' progress to the watchers (the study records them at the end)."""

    def __init__(self, key: str, names: dict[str, str]) -> None:
        self.key = key
        self.names = names
        self.slots: dict[str, int] = {}
        self.interrupted = False
        self.completed: set[str] = set()

    def _emit(self, event: TrialEvent) -> None:
        for watch in _ACTIVE.get(self.key, (None, []))[1]:
            watch(event)

    def slot_of(self, result: Any) -> int:
        """The number a member's result had in the progress lines (by its Ray trial id)."""
        trial_id = (result.metrics or {}).get("trial_id")
        if trial_id in self.slots:
            return self.slots[trial_id]
        path = str(getattr(result, "path", "") or "")
        return next((n for t, n in self.slots.items() if t in path), len(self.slots))

    def _params(self, trial: Any) -> dict[str, Any]:
        return {self.names[k]: v for k, v in trial.config.items() if k in self.names}

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        if trial.trial_id not in self.slots:
            self.slots[trial.trial_id] = len(self.slots)
            self._emit(TrialEvent("started", self.slots[trial.trial_id], self._params(trial),
                                  slot=self.slots[trial.trial_id]))

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any],
                        **info: Any) -> None:
        self._emit(TrialEvent("progress", self.slots.get(trial.trial_id, 0), self._params(trial),
                              step=int(result.get("training_iteration", 0)),
                              value=float(result.get("objective_0", math.nan)), slot=self.slots.get(trial.trial_id, 0)))

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.completed.add(trial.trial_id)
        value = (trial.last_result or {}).get("objective_0")
        self._emit(TrialEvent("finished", self.slots.get(trial.trial_id, 0), self._params(trial), "complete",
                              [value] if value is not None else None))

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.completed.add(trial.trial_id)
        reason = "the member failed"
        with contextlib.suppress(OSError, TypeError):
            if trial.error_file:
                reason += ": " + plain_error(Path(trial.error_file).read_text())
        self._emit(TrialEvent("finished", self.slots.get(trial.trial_id, 0), self._params(trial), "fail",
                              reason=reason))

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        self.interrupted = any(t.trial_id not in self.completed for t in trials)
