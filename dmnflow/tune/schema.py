"""The tune file's schema (pydantic): what ``dmnflow tune FILE`` reads, key by key.

A tune file names a graph and a search space of dotted keys into it (the keys of
``--set``), the report figures to optimise, and how to search. ``dmnflow schema --tune``
prints the JSON Schema of this model for editors. Checks that need the graph (does a key
exist, does the param's type take the range, does the report have the figure) are in
``tunefile.py``; this module only says what the YAML may hold. It imports no optuna or ray.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..spec import Duration

__all__ = [
    "HoldoutSpec", "IntermediateSpec", "ParamSpec", "PbtSpec", "PublishSpec", "RaySpec", "TrainSpec", "TuneSpec",
    "tune_json_schema",
]

Scalar = str | int | float | bool | None


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ParamSpec(_Spec):
    """One searched key: exactly one of ``float``, ``int``, ``log`` or ``choice``."""

    float_: list[float] | None = Field(None, alias="float", description="[low, high]: uniform between them")
    int_: list[int] | None = Field(None, alias="int", description="[low, high], both included (with `step`)")
    log: list[float] | bool | None = Field(None, description="[low, high]: log-uniform floats; with `int:`, "
                                           "`log: true` draws the integers log-uniformly")
    choice: list[Scalar] | None = Field(None, description="one of these values (text, numbers, booleans, null)")
    step: float | None = Field(None, gt=0, description="the grid of `float:`/`int:` values (low, low+step, ...)")
    when: dict[str, Scalar | list[Scalar]] | None = Field(
        None, description="searched only when these earlier keys of the space have these values "
                          "(a value, or a list of accepted values); otherwise the graph's own value stays")


class IntermediateSpec(_Spec):
    """Values reported while a trial runs, so a pruner can stop a bad one early."""

    value: str | None = Field(None, description="the figure reported (default: the first objective)")
    step: str = Field(description="a figure that grows as the run goes, e.g. performance.periods (days measured)")
    every: float = Field(gt=0, description="report once each time `step` passes a multiple of this (252: a year)")


class HoldoutSpec(_Spec):
    """The held-out period: the chosen trial is run once more with these settings, and its
    figures are shown beside the in-sample ones. Nothing is selected on it."""

    set: dict[str, Any] = Field(default_factory=dict, description="dotted keys applied after the trial's own")
    overlays: list[str] = Field(default_factory=list, description="overlay files (relative to the tune file)")
    description: str = ""


class PublishSpec(_Spec):
    """ZeroMQ PUB sockets on which outside clients watch the study (the seed's layout)."""

    host: Literal["127.0.0.1", "localhost", "::1"] = Field("127.0.0.1", description="loopback only")
    coordinator: int = Field(5559, ge=1, le=65535, description="optimization_trial.<id>: a trial handed out")
    workers: list[int] = Field([5560, 5561, 5562], min_length=1, description="optimization_progress.<id>: "
                               "intermediate values, one port per concurrent trial slot")
    aggregator: int = Field(5563, ge=1, le=65535, description="optimization_result.<id>: a trial's result")


class RaySpec(_Spec):
    """How ``--engine ray`` runs the study."""

    address: str | None = Field(None, description="an existing cluster (host:port, ray://..., auto); "
                                "none: a local Ray started and stopped for the run")
    cpus: float | None = Field(None, gt=0, description="CPUs reserved per trial; default: from the graph's "
                               "nodes (pinned cores, busy nodes; at least 1)")
    gpus: float | None = Field(None, ge=0, description="GPUs reserved per trial; default: the graph's gpu: pins")
    grace_period: int = Field(1, ge=1, description="ASHA: intermediate steps before a trial can be stopped")
    reduction_factor: float = Field(2.0, gt=1, description="ASHA: keep 1/this of the trials at each rung")


class TrainSpec(_Spec):
    """A model trained in every trial (or by population-based training) before the graph runs."""

    uses: str = Field(description="the trainer class, 'package.module:Class' (see docs/tune.md, Trainers)")
    params: dict[str, Any] = Field(default_factory=dict, description="the trainer's Params; `train.<name>` "
                                   "keys of the space search them")
    iterations: int = Field(10, ge=1, description="training steps (epochs) per trial")
    model_key: str | None = Field(None, description="the graph key that takes the trained model's path, e.g. "
                                  "vars.lstm_model; none: training only (PBT)")


class PbtSpec(_Spec):
    """Population-based training (``--engine ray``): the space's keys are its mutations."""

    population: int = Field(4, ge=2, description="members trained at once")
    perturbation_interval: int = Field(2, ge=1, description="steps between exploit/explore (and checkpoints)")
    quantile_fraction: float = Field(0.25, gt=0, le=0.5, description="bottom share copied from the top share")
    resample_probability: float = Field(0.25, ge=0, le=1, description="chance a mutated value is drawn anew")
    synch: bool = Field(True, description="perturb once every member has reached the interval, so every member "
                        "is ranked at the same step whatever its speed; false: each member when it reports")


class TuneSpec(_Spec):
    """A dmnflow tune file: a search space over a graph, objectives, and how to search."""

    study: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$", description="the study's name (default: the "
                              "file's name); its results go to out/<study>/")
    description: str = ""
    graph: str = Field(description="the graph file tuned, relative to this file")
    profile: str | None = Field(None, description="the graph's profile every trial runs with")
    overlays: list[str] = Field(default_factory=list, description="overlay files applied to every trial "
                                "(relative to this file)")
    set: dict[str, Any] = Field(default_factory=dict, description="dotted keys fixed for every trial, "
                                "applied like --set")
    space: dict[str, ParamSpec] = Field(default_factory=dict, description="dotted key: its range")
    objectives: dict[str, Literal["max", "min", "maximize", "minimize"]] = Field(
        description="report figures, NODE.FIGURE (e.g. performance.sharpe) or report.FIGURE: max or min")
    trials: int = Field(20, ge=1, description="trials in the study (all sessions of it together)")
    concurrency: int = Field(1, ge=1, description="trials running at once")
    sampler: str | dict[str, dict[str, Any]] = Field(
        "tpe", description="tpe, nsga2, gp, random or grid (choices and stepped ranges); or {name: {its options}}")
    pruner: str | dict[str, dict[str, Any]] = Field(
        "none", description="none, median, percentile, asha or hyperband; or {name: {its options}}")
    intermediate: IntermediateSpec | None = None
    timeout: Duration = Field(600.0, description="a trial running longer is stopped and marked failed")
    seed: int | None = Field(None, description="the sampler's seed: the same file gives the same trials")
    storage: str | None = Field(None, description="an Optuna journal file or RDB URL; default: "
                                "out/<study>/journal.log")
    out: str | None = Field(None, description="where results go (default: out/<study>)")
    holdout: HoldoutSpec | None = None
    engine: Literal["optuna", "ray"] = Field("optuna", description="the embedded Optuna engine, or Ray Tune")
    ray: RaySpec = Field(default_factory=RaySpec)
    train: TrainSpec | None = None
    pbt: PbtSpec | None = None
    publish: Literal["seed"] | PublishSpec | None = Field(
        None, description="seed: PUB sockets on 127.0.0.1:5559 (trials), 5560-5562 (progress), 5563 (results)")
    warm: bool = Field(True, description="start trials from one process that has imported the nodes and torch")


def tune_json_schema() -> dict[str, Any]:
    """JSON Schema of tune files, for editors (``dmnflow schema --tune``)."""
    schema = TuneSpec.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "dmnflow tune file"
    return schema
