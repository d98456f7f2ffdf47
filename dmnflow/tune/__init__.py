"""The optimisation layer: ``dmnflow tune FILE``.

A tune file is a search space of dotted keys over a graph (the keys ``--set`` takes),
report figures to optimise, and how to search; every trial is a real run of the graph
with the trial's values applied like ``--set`` (``trial.py``), started warm from a process
that imported the nodes and torch once (``host.py``). Two engines record into one Optuna
study: the embedded one (``embedded.py``: ask-and-tell, a journal file, local processes)
and Ray Tune (``raytune.py``: OptunaSearch, ASHA, population-based training). Results
(``results.py``): the best trials or the Pareto front, the best trial as an overlay file
``dmnflow launch --overlay`` runs, plots. See docs/tune.md.

This package imports optuna and ray only where it uses them, and never ``nodes``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .results import StudyResult, plot_study, summarize
from .schema import tune_json_schema
from .study import TrialEvent, TuneError, make_sampler, open_study, require_optuna
from .trainer import Trainer
from .tunefile import TuneFile, load_tune

__all__ = ["StudyResult", "Trainer", "TrialEvent", "TuneError", "TuneFile", "dry_run", "load_tune", "run_study",
           "tune_json_schema"]


def run_study(tune: TuneFile, *, resume: bool = False, watchers: Sequence[Callable[[TrialEvent], None]] = (),
              plots: bool = True, holdout: bool = True) -> StudyResult:
    """Run (or continue) the study of a checked tune file on its engine; its results.

    Raises:
        TuneError: the study cannot run (a missing extra, another study's storage, Ray unreachable).
    """
    require_optuna()
    watchers = list(watchers)
    feed = None
    if tune.spec.publish is not None:
        from .feed import Feed
        from .schema import PublishSpec

        spec = PublishSpec() if tune.spec.publish == "seed" else tune.spec.publish
        feed = Feed(spec, tune.study)  # type: ignore[arg-type]
        watchers.append(feed)
    try:
        if tune.engine == "ray":
            from .raytune import check_ray, run_ray

            check_ray(tune)
            study = open_study(tune, resume)
            interrupted = run_ray(tune, study, watchers, resume=resume)
        else:
            from .embedded import run_embedded

            study = open_study(tune, resume)
            interrupted = run_embedded(tune, study, watchers)
        if holdout and not interrupted and tune.holdout is not None:
            run_holdout(tune, study)
        result = summarize(tune, study, interrupted=interrupted)
        if plots:
            result.plots = plot_study(tune, study, tune.out_dir / "plots")
        return result
    finally:
        if feed is not None:
            feed.close()


def run_holdout(tune: TuneFile, study: Any) -> dict[str, Any] | None:
    """Run the chosen trial once more on the held-out settings; stored in the study."""
    from ..errors import Location
    from ..spec import Override
    from .engine import Template
    from .results import best_trials
    from .trial import TrialProcess

    best = best_trials(study)
    if not best:
        return None
    chosen = best[0]
    done = study.user_attrs.get("holdout")
    if done and done.get("trial") == chosen.number:
        return done
    extra = list(tune.holdout or [])
    params = dict(chosen.params)
    model = (chosen.user_attrs.get("figures") or {}).get("train.model")
    template = Template.of(tune)
    if model and tune.trainer is not None and tune.trainer.model_key:  # the chosen trial's own model, not a new one
        key = tune.trainer.model_key
        template.train, template.graph = None, str(tune.graph)
        if all(o.node == "train" for o in tune.objectives):
            template.objectives = []  # trainer metrics are not the graph's: the figures are what is compared
        params = {k: v for k, v in params.items() if not k.startswith("train.")}
        extra.insert(0, Override(tuple(key.split(".")), model, Location(f"--set {key}"), f"{key}={model}"))
    request = template.request(chosen.number, params, workdir=tune.out_dir / "holdout", extra=extra, warm=False,
                               label="with the holdout settings of the tune file (not selected on)")
    proc = TrialProcess.cold(request, tune.out_dir / "holdout" / "log.txt")
    try:
        result = proc.wait(tune.spec.timeout * 2)
    finally:
        proc.close()
    from .engine import figure_filter

    keep = figure_filter(tune)
    stored = {"trial": chosen.number, "state": result.get("state"), "values": result.get("values"),
              "reason": result.get("reason", ""),
              "figures": {k: v for k, v in (result.get("figures") or {}).items() if keep(k)},
              "settings": [o.text for o in tune.holdout or []]}
    study.set_user_attr("holdout", stored)
    return stored


def dry_run(tune: TuneFile, trials: int = 5) -> list[dict[str, Any]]:
    """The first trials' values, as the study's sampler would draw them; nothing runs or is stored."""
    optuna = require_optuna()
    study = optuna.create_study(directions=tune.directions, sampler=make_sampler(tune))
    out = []
    for _ in range(trials):
        trial = study.ask()
        out.append(tune.space.sample(trial))
    return out

