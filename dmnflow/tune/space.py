"""The search space: each searched dotted key as an Optuna distribution, sampled define-by-run
(so a key with ``when:`` is drawn only when its condition holds), and a trial's values as the
``--set`` overrides that make the trial's graph.

Optuna is imported when a distribution is first asked for, never at import.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import Location
from ..spec import Override

__all__ = ["Param", "Space", "last_step", "overrides_for"]

Kind = Literal["float", "int", "choice"]


def last_step(low: float, high: float, step: float) -> float:
    """The highest ``low + n * step`` within ``high`` (what Optuna draws at most; float noise forgiven)."""
    n = math.floor((high - low) / step + 1e-9)
    top = round(low + n * step, 12)  # 0.3, not 0.30000000000000004: Optuna checks the range in decimals
    return high if math.isclose(top, high, rel_tol=1e-9, abs_tol=1e-12) else top


@dataclass(frozen=True)
class Param:
    """One searched key, checked: its kind, bounds, grid, scale, condition and where it is written."""

    key: str  # the dotted key, exactly as --set takes it
    kind: Kind
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()
    when: tuple[tuple[str, tuple[Any, ...]], ...] = ()  # (earlier key, accepted values)
    loc: Location | None = None

    def distribution(self) -> Any:
        """The Optuna distribution of this key."""
        from optuna import distributions as d

        if self.kind == "choice":
            return d.CategoricalDistribution(list(self.choices))
        if self.kind == "int":
            return d.IntDistribution(int(self.low), int(self.top), log=self.log,  # type: ignore[arg-type]
                                     step=int(self.step or 1))
        return d.FloatDistribution(float(self.low), float(self.top), log=self.log,  # type: ignore[arg-type]
                                   step=None if self.step is None else float(self.step))

    @property
    def top(self) -> float | int | None:
        """The highest value drawn: ``high``, or the last step below it (the tune file's
        uneven-step warning said so; Optuna is given it, so it warns no second time)."""
        if self.step is None or self.low is None or self.high is None:
            return self.high
        top = last_step(self.low, self.high, self.step)
        return int(top) if self.kind == "int" else top

    def active(self, values: Mapping[str, Any]) -> bool:
        """Whether the key is searched, given the values drawn before it."""
        return all(key in values and values[key] in accepted for key, accepted in self.when)

    def suggest(self, trial: Any) -> Any:
        """Draw the key's value from an Optuna trial (``Trial.suggest_*``, define-by-run)."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.top), step=int(self.step or 1),  # type: ignore[arg-type]
                                     log=self.log)
        return trial.suggest_float(self.key, float(self.low), float(self.top),  # type: ignore[arg-type]
                                   step=None if self.step is None else float(self.step), log=self.log)

    def probes(self) -> list[Any]:
        """The values that must each be accepted by the graph: both ends, or every choice."""
        if self.kind == "choice":
            return list(self.choices)
        if self.kind == "int":
            return [int(self.low), int(self.top)]  # type: ignore[arg-type]
        return [float(self.low), float(self.top)]  # type: ignore[arg-type]

    def grid(self) -> list[Any]:
        """Every value of the key (a choice, or a range with a step): what a grid sampler walks."""
        if self.kind == "choice":
            return list(self.choices)
        step = self.step or 1
        n = math.floor((float(self.high) - float(self.low)) / float(step) + 1e-9)  # type: ignore[arg-type]
        values = [self.low + i * step for i in range(n + 1)]  # type: ignore[operator]
        return [int(v) for v in values] if self.kind == "int" else [round(float(v), 12) for v in values]

    def describe(self) -> str:
        """The range as a person reads it: ``float [0.05, 0.25]``, ``int [21, 252] step 21``, ``choice a|b``."""
        if self.kind == "choice":
            text = "choice " + " | ".join(json.dumps(c) for c in self.choices)
        else:
            text = f"{'log ' if self.log else ''}{self.kind} [{self.low:g}, {self.high:g}]"
            if self.step is not None:
                text += f" step {self.step:g}"
        if self.when:
            text += "  when " + ", ".join(f"{k} in {list(v)}" for k, v in self.when)
        return text


@dataclass
class Space:
    """Every searched key, in file order (a ``when:`` refers only to keys before it)."""

    params: list[Param] = field(default_factory=list)

    def __iter__(self) -> Any:
        return iter(self.params)

    def __len__(self) -> int:
        return len(self.params)

    def distributions(self) -> dict[str, Any]:
        return {p.key: p.distribution() for p in self.params}

    def sample(self, trial: Any) -> dict[str, Any]:
        """The trial's values, define-by-run: inactive keys are not drawn (the graph keeps its own)."""
        values: dict[str, Any] = {}
        for param in self.params:
            if param.active(values):
                values[param.key] = param.suggest(trial)
        return values

    @property
    def conditional(self) -> bool:
        return any(p.when for p in self.params)


def overrides_for(values: Mapping[str, Any], locs: Mapping[str, Location | None] | None = None) -> list[Override]:
    """A trial's values as ``--set`` overrides, each located where its key is written (so a
    value the graph refuses is reported in the tune file)."""
    out = []
    for key, value in values.items():
        loc = (locs or {}).get(key) or Location(f"--set {key}")
        out.append(Override(tuple(key.split(".")), value, loc, f"{key}={_yaml(value)}"))
    return out


def _yaml(value: Any) -> str:
    """The value as YAML text (JSON is YAML; floats keep every digit)."""
    return json.dumps(value)

