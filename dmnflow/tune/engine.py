"""What both engines do alike: turn a trial's values into the request of a trial process
(the graph's overrides, the trainer's params, its directory and overlay file), choose what
the warm host imports, and keep the figures worth storing.

``Template`` holds what a request is made from, as plain data, so the Ray engine can ship
it to its trial actors (it pickles; a ``TuneFile`` need not).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import Location
from ..spec import Override
from .host import warm_modules
from .results import overlay_text
from .space import overrides_for
from .trial import TrialRequest, pack_objective, pack_overrides, unpack_overrides
from .tunefile import TuneFile, _node_class

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
    steps: list[dict[str, Any]] = field(default_factory=list)  # packed: the step node keeps its figures per step

    @classmethod
    def of(cls, tune: TuneFile) -> Template:
        inter = tune.intermediate
        steps = exact_steps(tune)
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
                                                     "step": pack_objective(inter.step), "every": inter.every,
                                                     "exact": steps is not None},
            train=train, warm=tune.spec.warm, cwd=os.getcwd(), out_dir=str(tune.out_dir.resolve()),
            steps=pack_overrides([steps]) if steps is not None else [])

    def workdir(self, number: int | str) -> Path:
        return Path(self.out_dir) / "trials" / str(number)

    def request(self, number: int, params: dict[str, Any], *, workdir: Path | None = None,
                extra: list[Any] | None = None, warm: bool | None = None, label: str = "") -> TrialRequest:
        """The trial process's request for these values; the trial's overlay file is written
        in its directory, so any trial can be launched again by hand."""
        workdir = workdir or self.workdir(number)
        workdir.mkdir(parents=True, exist_ok=True)
        base = unpack_overrides(self.base)
        graph_values = {k: v for k, v in params.items() if not k.startswith("train.")}
        locs = {k: Location(*v) if v else None for k, v in self.locs.items()}
        overrides = [*base, *overrides_for(graph_values, locs), *unpack_overrides(self.steps), *(extra or [])]
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


def exact_steps(tune: TuneFile) -> Override | None:
    """The setting that has the intermediate values' node keep its figures at every
    ``intermediate.every`` steps (``Node.summary_steps``), so a trial reports each step as
    its data made it, whatever the machine's speed; None when that node cannot (the values
    are then read from the status ticks, about once a second, which is not reproducible)."""
    inter = tune.intermediate
    if inter is None or tune.plan is None or inter.value.node != inter.step.node:
        return None
    node = next((n for n in tune.plan.nodes if n.name == inter.step.node), None)
    cls = _node_class(node.uses) if node is not None else None
    field_name = (getattr(cls, "summary_steps", None) or {}).get(inter.step.figure)
    every = float(inter.every)
    if not field_name or every < 1 or every != int(every):
        return None
    key = f"nodes.{node.spec_name}.params.{field_name}"  # type: ignore[union-attr]
    return Override(tuple(key.split(".")), int(every), Location(f"intermediate.every ({key})"),
                    f"{key}={int(every)}")


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
