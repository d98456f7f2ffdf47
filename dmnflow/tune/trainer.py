"""Trainers: a model trained inside a trial (or by population-based training) before the graph
runs it. The tune file names one by import path (``train: {uses: package.module:Class}``),
exactly as a graph names a node, so dmnflow never imports the trading library.

A trainer is stepwise so that Ray Tune can report, checkpoint, and (PBT) hand a member
another member's state with new hyperparameters: ``step()`` trains one iteration and
returns its metrics, ``save``/``load`` write and read a checkpoint directory, ``export``
writes the model file a graph runs (with its provenance sidecar).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from ..importing import ImportPathError, load_object, subclass_of

__all__ = ["Trainer", "load_trainer"]


class _NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Trainer:
    """Base class of model trainers that ``dmnflow tune`` drives.

    Subclasses declare ``Params`` (a pydantic model: what ``train.<name>`` keys search) and
    ``metrics`` (the names ``step()`` returns: what ``train.<name>`` objectives read).
    """

    Params: ClassVar[type[BaseModel]] = _NoParams
    metrics: ClassVar[tuple[str, ...]] = ()

    def __init__(self, params: BaseModel, workdir: Path) -> None:
        self.params = params
        self.workdir = workdir  # a directory of this trial's own, for anything it writes

    def step(self) -> dict[str, float]:
        """Train one iteration (an epoch); its metrics."""
        raise NotImplementedError

    def save(self, directory: Path) -> None:
        """Write everything needed to continue training into ``directory``."""
        raise NotImplementedError

    def load(self, directory: Path) -> None:
        """Continue from what ``save`` wrote (PBT: maybe another member's, under this one's params)."""
        raise NotImplementedError

    def export(self, path: Path) -> Path:
        """Write the trained model where a graph can load it (and its provenance next to it)."""
        raise NotImplementedError


def load_trainer(uses: str) -> type[Trainer]:
    """The trainer class named ``package.module:Class``.

    Raises:
        ValueError: it cannot be imported, or it is not a Trainer subclass (the message says which).
    """
    try:
        obj = load_object(uses, kind=subclass_of(Trainer), what="trainers")
    except ImportPathError as exc:
        raise ValueError(f"{exc.message}; {exc.hint}" if exc.hint else exc.message) from exc
    if not (inspect.isclass(obj) and issubclass(obj, Trainer)):
        raise ValueError(f"{uses} is not a dmnflow.tune.Trainer subclass")
    return obj
