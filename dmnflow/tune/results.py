"""What a study leaves: the best trials (or the Pareto front), the best trial as an overlay
file ``dmnflow launch`` takes, a summary JSON, and PNG plots (optimisation history, Pareto
front, parameter importances, intermediate values) drawn by optuna.visualization.matplotlib.

Both engines record into the same Optuna study, so this module serves both.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .tunefile import TuneFile

__all__ = ["IMPORTANCE_TRIALS", "Row", "StudyResult", "best_trials", "importance_caveat", "overlay_text", "plot_study",
           "summarize", "write_overlay"]

# fANOVA importances from fewer complete trials than this rank noise as often as a parameter
# (8 trials of graphs/tune_dmn.yaml put the strategy choice, which decides most, below 0.01)
IMPORTANCE_TRIALS = 20


@dataclass
class Row:
    """One trial as the results table shows it."""

    number: int
    state: str
    values: list[float] | None
    params: dict[str, Any]
    reason: str = ""
    figures: dict[str, Any] = field(default_factory=dict)
    wall_s: float | None = None  # the trial process, start to end
    trial_s: float | None = None  # the trial as the engine saw it: asked, run, told


@dataclass
class StudyResult:
    """The outcome of ``dmnflow tune``: counts, the best trials, and the files written."""

    study: str
    directions: list[str]
    objectives: list[str]
    rows: list[Row]
    best: list[Row]
    counts: dict[str, int]
    overlay: Path | None = None
    summary: Path | None = None
    plots: list[Path] = field(default_factory=list)
    holdout: dict[str, Any] | None = None
    launch_command: str = ""
    interrupted: bool = False
    model: Path | None = None


def _row(trial: Any) -> Row:
    values = list(trial.values) if trial.values is not None else None
    return Row(trial.number, trial.state.name.lower(), values, dict(trial.params), trial.user_attrs.get("reason", ""),
               dict(trial.user_attrs.get("figures") or {}), trial.user_attrs.get("wall_s"),
               trial.user_attrs.get("trial_s"))


def best_trials(study: Any) -> list[Any]:
    """The best trial (one objective) or the Pareto front (several), best first by the first objective."""
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not done:
        return []
    if len(study.directions) == 1:
        return [study.best_trial]
    sign = 1.0 if study.directions[0].name == "MINIMIZE" else -1.0
    return sorted(study.best_trials, key=lambda t: sign * t.values[0])


def overlay_settings(base: list[Any], params: dict[str, Any], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The dotted keys that make a trial's graph, in the order they apply: the tune file's
    overlays and ``set:`` (``base``), then the trial's values (a later key wins)."""
    settings: dict[str, Any] = {}
    for override in base:
        key = ".".join(override.path)
        settings.pop(key, None)
        settings[key] = override.value
    for key, value in {**params, **(extra or {})}.items():
        if key.startswith("train."):
            continue  # the trainer's, not the graph's
        settings.pop(key, None)
        settings[key] = value
    return settings


def overlay_text(base: list[Any], params: dict[str, Any], header: list[str],
                 extra: dict[str, Any] | None = None) -> str:
    lines = [f"# {line}" for line in header]
    body = yaml.safe_dump(overlay_settings(base, params, extra), sort_keys=False, default_flow_style=False,
                          allow_unicode=True, width=1000)
    return "\n".join(lines) + "\n" + body


def launch_command(tune: TuneFile, overlay: Path) -> str:
    profile = f" --profile {tune.profile}" if tune.profile else ""
    return f"dmnflow launch {_near(tune.graph)}{profile} --overlay {_near(overlay)}"


def _near(path: Path) -> str:
    """The path relative to the working directory when it is inside it, else absolute."""
    rel = os.path.relpath(path)
    return str(Path(path).resolve()) if rel.startswith("..") else rel


def write_overlay(tune: TuneFile, row: Row, path: Path, extra: dict[str, Any] | None = None) -> Path:
    """The trial as an overlay file; ``dmnflow launch GRAPH --overlay FILE`` runs it again."""
    figures = ", ".join(f"{name} {_fmt(v)}" for name, v in zip(
        [o.name for o in tune.objectives], row.values or [], strict=False))
    header = [f"dmnflow tune: trial {row.number} of study {tune.study} ({tune.file}): {figures}",
              "run it again with:", "  " + launch_command(tune, path)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(overlay_text(tune.base, row.params, header, extra), encoding="utf-8")
    return path


def summarize(tune: TuneFile, study: Any, *, interrupted: bool = False) -> StudyResult:
    """Rows, best trials and counts of the study; writes best.yaml and summary.json."""
    rows = [_row(t) for t in study.get_trials(deepcopy=False)]
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.state] = counts.get(row.state, 0) + 1
    best = [_row(t) for t in best_trials(study)]
    result = StudyResult(tune.study, tune.directions, [o.name for o in tune.objectives], rows, best, counts,
                         interrupted=interrupted)
    tune.out_dir.mkdir(parents=True, exist_ok=True)
    if best:
        extra = {}
        model = best[0].figures.get("train.model")
        if model and tune.trainer is not None and tune.trainer.model_key:
            extra[tune.trainer.model_key] = model
            result.model = Path(model)
        result.overlay = write_overlay(tune, best[0], tune.out_dir / "best.yaml", extra)
        result.launch_command = launch_command(tune, result.overlay)
    result.holdout = study.user_attrs.get("holdout")
    result.summary = tune.out_dir / "summary.json"
    result.summary.write_text(json.dumps({
        "study": tune.study, "tune_file": tune.file, "graph": os.path.relpath(tune.graph),
        "objectives": dict(zip(result.objectives, tune.directions, strict=True)), "counts": counts,
        "best": [r.__dict__ for r in best], "overlay": str(result.overlay) if result.overlay else None,
        "holdout": result.holdout, "trials": [r.__dict__ for r in rows]}, indent=2, default=str) + "\n")
    return result


def plot_study(tune: TuneFile, study: Any, out_dir: Path) -> list[Path]:
    """PNG plots of the study (those that its trials allow), with matplotlib's Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import optuna
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as plots

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not done:
        return []
    names = [o.name for o in tune.objectives]
    written: list[Path] = []
    out_dir.mkdir(parents=True, exist_ok=True)

    def save(ax: Any, name: str) -> None:
        fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        fig.set_size_inches(8, 5)
        fig.tight_layout()
        path = out_dir / name
        fig.savefig(path, dpi=80)
        import matplotlib.pyplot as plt

        plt.close(fig)
        written.append(path)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", UserWarning)
        if len(names) == 1:
            save(plots.plot_optimization_history(study, target_name=names[0]), "history.png")
            if any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
                save(plots.plot_intermediate_values(study), "intermediate.png")
        else:
            save(plots.plot_optimization_history(study, target=lambda t: t.values[0], target_name=names[0]),
                 "history.png")
            save(plots.plot_pareto_front(study, target_names=names), "pareto.png")
        varied = {k for t in done for k in t.params}
        if len(done) >= 2 and len(varied) >= 2:
            try:
                target = None if len(names) == 1 else (lambda t: t.values[0])
                ax = plots.plot_param_importances(study, target=target, target_name=names[0])
                caveat = importance_caveat(len(done))
                if caveat is not None and hasattr(ax, "set_title"):
                    ax.set_title(f"{ax.get_title()}\n({caveat})")
                save(ax, "importances.png")
            except (RuntimeError, ValueError, ZeroDivisionError):
                pass  # too few distinct trials for importances
    return written


def importance_caveat(complete: int) -> str | None:
    """What the importance plot cannot say from ``complete`` trials (None from enough of them)."""
    if complete >= IMPORTANCE_TRIALS:
        return None
    return f"from {complete} complete trials: importances mean little under {IMPORTANCE_TRIALS}"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if not math.isfinite(value) else f"{value:.4g}"
    return str(value)
