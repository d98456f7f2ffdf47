"""What both engines do alike: turn a trial's values into the request of a trial process
(the graph's overrides, the trainer's params, its directory and overlay file), choose what
the warm host imports, and keep the figures worth storing.

``Template`` holds what a request is made from, as plain data, so the Ray engine can ship
it to its trial actors (it pickles; a ``TuneFile`` need not).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .host import warm_modules
from .results import overlay_text
from .space import overrides_for
from .trial import TrialRequest, pack_objective, pack_overrides, unpack_overrides
from .tunefile import TuneFile

__all__ = ["Template", "figure_filter", "host_modules", "request_for"]


@dataclass
class Template:
    """A study's trials before their values: the graph, fixed settings, what to read, where to write."""

    study: str
    file: str
    graph: str  # "" when the trials train only (no model_key)
    profile: str | None
    base: list[dict[str, Any]]  # packed overrides
    locs: dict[str, list[Any] | None]  # searched key -> [file, line, col]
    objectives: list[dict[str, Any]]
    intermediate: dict[str, Any] | None
    train: dict[str, Any] | None  # uses, params, iterations, model_key
    warm: bool
    cwd: str
    out_dir: str  # absolute

    @classmethod
    def of(cls, tune: TuneFile) -> Template:
        inter = tune.intermediate
        train = None
        if tune.trainer is not None:
            train = {"uses": tune.trainer.uses, "params": dict(tune.trainer.params),
                     "iterations": tune.trainer.iterations, "model_key": tune.trainer.model_key}
        return cls(
            study=tune.study, file=tune.file,
            graph="" if tune.trainer is not None and not tune.trainer.model_key else str(tune.graph),
            profile=tune.profile, base=pack_overrides(tune.base),
            locs={p.key: [p.loc.file, p.loc.line, p.loc.col] if p.loc else None for p in tune.space},
            objectives=[pack_objective(o) for o in tune.objectives],
            intermediate=None if inter is None else {"value": pack_objective(inter.value),
                                                     "step": pack_objective(inter.step), "every": inter.every},
            train=train, warm=tune.spec.warm, cwd=os.getcwd(), out_dir=str(tune.out_dir.resolve()))

    def workdir(self, number: int | str) -> Path:
        return Path(self.out_dir) / "trials" / str(number)

    def request(self, number: int, params: dict[str, Any], *, workdir: Path | None = None,
                extra: list[Any] | None = None, warm: bool | None = None, label: str = "") -> TrialRequest:
        """The trial process's request for these values; the trial's overlay file is written
        in its directory, so any trial can be launched again by hand."""
        from ..errors import Location

        workdir = workdir or self.workdir(number)
        workdir.mkdir(parents=True, exist_ok=True)
        base = unpack_overrides(self.base)
        graph_values = {k: v for k, v in params.items() if not k.startswith("train.")}
        locs = {k: Location(*v) if v else None for k, v in self.locs.items()}
        overrides = [*base, *overrides_for(graph_values, locs), *(extra or [])]
        train = None
        if self.train is not None:
            values = {k.split(".", 1)[1]: v for k, v in params.items() if k.startswith("train.")}
            train = {**self.train, "params": {**self.train["params"], **values}}
        header = [f"dmnflow tune: trial {number} of study {self.study} ({self.file})"] + ([label] if label else [])
        (workdir / "overlay.yaml").write_text(overlay_text(base, params, header), encoding="utf-8")
        return TrialRequest(number=number, graph=self.graph, profile=self.profile,
                            overrides=pack_overrides([*overrides]), objectives=self.objectives, cwd=self.cwd,
                            workdir=str(workdir), name=f"{self.study}-{number}", intermediate=self.intermediate,
                            train=train, warm=self.warm if warm is None else warm)


def request_for(tune: TuneFile, number: int, params: dict[str, Any], **options: Any) -> TrialRequest:
    """The request of trial ``number`` of this tune file (see ``Template.request``)."""
    return Template.of(tune).request(number, params, **options)


def host_modules(tune: TuneFile) -> list[str]:
    """What the warm host imports: the graph's node modules (torch with a model), the trainer's."""
    modules = warm_modules(tune.plan) if tune.plan is not None else ["dmnflow.runtime.worker"]
    if tune.trainer is not None:
        modules += ["torch", tune.trainer.uses.split(":")[0]]
    return list(dict.fromkeys(modules))


def figure_filter(tune: TuneFile) -> Callable[[str], bool]:
    """Which figures a trial stores: those of the nodes its objectives read, of the nodes that
    declare their figures (``summary_keys``: a performance node), the run's, the trainer's."""
    nodes = {o.node for o in tune.objectives} | set(tune.figure_nodes)
    if tune.intermediate is not None:
        nodes |= {tune.intermediate.value.node, tune.intermediate.step.node}
    keep = nodes | {"report", "train"}
    return lambda key: key.split(".", 1)[0] in keep
