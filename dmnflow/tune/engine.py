"""What both engines do alike: turn a trial's values into the request of a trial process
(the graph's overrides, the trainer's params, its directory and overlay file), choose what
the warm host imports, and keep the figures worth storing."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .host import warm_modules
from .results import overlay_text
from .space import overrides_for
from .trial import TrialRequest, pack_objective, pack_overrides
from .tunefile import TuneFile

__all__ = ["figure_filter", "host_modules", "request_for", "trial_dir"]


def trial_dir(tune: TuneFile, number: int | str) -> Path:
    return (tune.out_dir / "trials" / str(number)).resolve()


def request_for(tune: TuneFile, number: int, params: dict[str, Any], *, workdir: Path | None = None,
                extra: list[Any] | None = None, warm: bool | None = None, label: str = "") -> TrialRequest:
    """The trial process's request for these values; the trial's overlay file is written
    in its directory, so any trial can be launched again by hand."""
    workdir = workdir or trial_dir(tune, number)
    workdir.mkdir(parents=True, exist_ok=True)
    graph_values = {k: v for k, v in params.items() if not k.startswith("train.")}
    overrides = [*tune.base, *overrides_for(graph_values, tune.locs()), *(extra or [])]
    train = None
    if tune.trainer is not None:
        train_values = {k.split(".", 1)[1]: v for k, v in params.items() if k.startswith("train.")}
        train = {"uses": tune.trainer.uses, "params": {**tune.trainer.params, **train_values},
                 "iterations": tune.trainer.iterations, "model_key": tune.trainer.model_key}
    (workdir / "overlay.yaml").write_text(overlay_text(
        tune, params, [f"dmnflow tune: trial {number} of study {tune.study} ({tune.file})"]
        + ([label] if label else [])), encoding="utf-8")
    inter = tune.intermediate
    return TrialRequest(
        number=number, graph="" if tune.trainer is not None and not tune.trainer.model_key else str(tune.graph),
        profile=tune.profile, overrides=pack_overrides(overrides),
        objectives=[pack_objective(o) for o in tune.objectives], cwd=os.getcwd(), workdir=str(workdir),
        name=f"{tune.study}-{number}",
        intermediate=None if inter is None else {"value": pack_objective(inter.value),
                                                 "step": pack_objective(inter.step), "every": inter.every},
        train=train, warm=tune.spec.warm if warm is None else warm)


def host_modules(tune: TuneFile) -> list[str]:
    """What the warm host imports: the graph's node modules (torch with a model), the trainer's."""
    modules = warm_modules(tune.plan) if tune.plan is not None else ["dmnflow.runtime.worker"]
    if tune.trainer is not None:
        modules += ["torch", tune.trainer.uses.split(":")[0]]
    return list(dict.fromkeys(modules))


def figure_filter(tune: TuneFile) -> Callable[[str], bool]:
    """Which figures a trial stores: those of the nodes its objectives read, the run's, the trainer's."""
    nodes = {o.node for o in tune.objectives}
    if tune.intermediate is not None:
        nodes |= {tune.intermediate.value.node, tune.intermediate.step.node}
    return lambda key: key.split(".", 1)[0] in nodes | {"report", "train"}
