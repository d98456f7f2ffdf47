"""Loading a tune file: its schema, then every check that needs the graph, each problem an
issue at ``file:line:col`` of the tune file, all of them in one pass.

Checks, in order: the YAML and its schema; the graph, its overlays and the fixed ``set:``
keys compile; every searched key exists in the graph (a var of the graph, a node and its
class's param, a node key) with a did-you-mean; every range is accepted by the graph (both
ends, or every choice, compiled with the graph as ``--set`` would: so a value the param's
pydantic type refuses is reported at that end of the range); ``when:`` conditions refer to
earlier keys and possible values; objectives name figures the report has; the sampler and
pruner exist and take their options; the trainer, holdout and publishing settings hold.
"""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..compiler import compile_graph
from ..errors import GraphError, Issue, IssueList, Location, SpecError, did_you_mean, suggest
from ..importing import ImportPathError, load_object
from ..node import Node
from ..plan import Plan
from ..spec import (
    GraphSpec,
    NodeSpec,
    Override,
    SourceMap,
    load_overlay,
    parse_yaml,
    validate_section,
)
from ..spec.source import _display, _suggest
from .objectives import REPORT_FIGURES, Objective, match_node
from .schema import ParamSpec, TuneSpec
from .space import Param, Space, last_step
from .trainer import Trainer, load_trainer

__all__ = ["PRUNERS", "SAMPLERS", "Intermediate", "TrainerRef", "TuneFile", "load_tune"]

SAMPLERS = {"tpe": "TPESampler", "nsga2": "NSGAIISampler", "gp": "GPSampler", "random": "RandomSampler",
            "grid": "GridSampler"}
PRUNERS = {"none": "NopPruner", "median": "MedianPruner", "percentile": "PercentilePruner",
           "asha": "SuccessiveHalvingPruner", "hyperband": "HyperbandPruner"}
_DIRECTIONS = {"max": "maximize", "maximize": "maximize", "min": "minimize", "minimize": "minimize"}


@dataclass
class Intermediate:
    """What a running trial reports: ``value`` each time ``step`` passes a multiple of ``every``."""

    value: Objective
    step: Objective
    every: float


@dataclass
class TrainerRef:
    """The trainer of the tune file's ``train:``, checked."""

    uses: str
    cls: type[Trainer]
    params: dict[str, Any]
    iterations: int
    model_key: str | None
    loc: Location | None = None


@dataclass
class TuneFile:
    """A checked tune file: everything a study needs, with where each part is written."""

    path: Path
    file: str  # as shown in messages
    spec: TuneSpec
    study: str
    graph: Path
    profile: str | None
    base: list[Override]  # the overlays' settings, then `set:`: applied to every trial
    space: Space
    objectives: list[Objective]
    out_dir: Path
    storage: str  # a journal file path or an RDB URL
    plan: Plan | None  # the graph with `base` applied (None with the trainer alone)
    srcmap: SourceMap
    intermediate: Intermediate | None = None
    holdout: list[Override] | None = None
    trainer: TrainerRef | None = None
    engine: str = "optuna"
    issues: list[Issue] = field(default_factory=list)  # warnings
    figure_nodes: list[str] = field(default_factory=list)  # nodes whose class declares its figures

    def declared(self, node: str) -> tuple[str, ...]:
        """The figures a node of the plan declares (``summary_keys``)."""
        if self.plan is None:
            return ()
        plan_node = next((n for n in self.plan.nodes if n.name == node), None)
        cls = _node_class(plan_node.uses) if plan_node is not None else None
        return tuple(getattr(cls, "summary_keys", ()) or ())

    @property
    def directions(self) -> list[str]:
        return [o.direction for o in self.objectives]

    @property
    def multi(self) -> bool:
        return len(self.objectives) > 1

    def locs(self) -> dict[str, Location | None]:
        """Where each searched key is written (trial values are reported there)."""
        return {p.key: p.loc for p in self.space}

    def graph_keys(self) -> list[Param]:
        return [p for p in self.space if not p.key.startswith("train.")]


def load_tune(path: str | os.PathLike[str], settings: Mapping[str, Any] | None = None,
              overrides: Sequence[str] = ()) -> TuneFile:
    """Read and check a tune file; ``settings`` (from the command line: ``trials``,
    ``concurrency``, ``engine``, ...) and ``overrides`` (``--set KEY=VALUE``, KEY dotted into
    the tune file: ``pbt.population=2``, ``set.vars.days=600``) replace the file's values
    before the checks.

    Raises:
        SpecError: the tune file, or the graph with its settings, is wrong (every issue found).
    """
    issues = IssueList()
    loaded = _Loader(Path(path), dict(settings or {}), issues, list(overrides)).run()
    if loaded is None or issues.has_errors:
        raise SpecError(issues.issues or [Issue("invalid-value", "the tune file is invalid", Location(str(path)))])
    loaded.issues = [i for i in issues.issues if not i.is_error]
    return loaded


_BAD_REF = object()  # a set: value naming an unknown ${tune.X}


class _Loader:
    def __init__(self, path: Path, settings: dict[str, Any], issues: IssueList, overrides: list[str]) -> None:
        self.path = path
        self.overrides = overrides
        self.file = _display(path)
        self.settings = settings
        self.issues = issues
        self.srcmap = SourceMap()
        self.train_broken = False  # train: is there but its trainer did not load: reported once
        self.refs: dict[str, str] = {}  # ${tune.out}, ${tune.study}: what a set: value may name

    def at(self, *path: str | int, key: bool = False) -> Location:
        return self.srcmap.at(path, key=key) or Location(self.file)

    def add(self, code: str, message: str, loc: Location | None, path: str = "", hint: str = "",
            severity: str = "error") -> None:
        self.issues.add(code, message, loc, path=path, hint=hint, severity=severity)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ the pass

    def run(self) -> TuneFile | None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            self.add("file-not-found", f"tune file {self.file} does not exist", Location(self.file),
                     hint="check the path; graphs/tune_dmn.yaml is an example")
            return None
        except (OSError, UnicodeDecodeError) as exc:
            self.add("file-unreadable", f"cannot read {self.file}: {exc}", Location(self.file))
            return None
        data, self.srcmap = parse_yaml(text, self.file, self.issues)
        if data is None:
            if not self.issues.has_errors:
                self.add("empty-graph", "the tune file is empty", Location(self.file, 1, 1),
                         hint="start from graphs/tune_dmn.yaml")
            return None
        if not isinstance(data, dict):
            self.add("invalid-value", "a tune file is a mapping with graph:, space: and objectives:",
                     self.at(), hint="start from graphs/tune_dmn.yaml")
            return None
        for text in self.overrides:
            self.override(data, text)
        for key, value in self.settings.items():  # the command line wins over the file
            if value is None:
                continue
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key] = {**data[key], **value}
                for sub in value:
                    self.srcmap.mark((key, sub), Location(f"--{sub.replace('_', '-')}"))
            else:
                data[key] = value
                self.srcmap.mark((key,), Location(f"--{key.replace('_', '-')}"))
        spec, bad = validate_section(TuneSpec, data, (), self.srcmap, self.issues)
        if spec is None:
            return None
        study = spec.study or self.path.stem
        out_dir = Path(spec.out) if spec.out else Path("out") / study
        storage = spec.storage or str(out_dir / "journal.log")
        self.refs = {"tune.out": str(out_dir), "tune.study": study}  # a renamed study's files follow it
        graph = (self.path.parent / spec.graph).resolve()
        tune = TuneFile(self.path, self.file, spec, study, graph, spec.profile, [], Space(), [], out_dir, storage,
                        None, self.srcmap, engine=spec.engine)
        tune.trainer = self.trainer(spec)
        if not graph.is_file():
            self.add("file-not-found", f"graph file {_display(graph)} does not exist", self.at("graph"), "graph",
                     "the path is relative to the tune file")
            return tune
        tune.base, tune.plan = self.compile(graph, self.base(spec), spec.profile)
        if tune.plan is not None:
            tune.figure_nodes = [n.name for n in tune.plan.nodes if tune.declared(n.name)]
        top_vars = self.graph_vars(graph, spec.profile)
        for key in spec.set:
            if tune.plan is not None:
                self.check_key(key, self.at("set", key, key=True), tune.plan, top_vars, f"set.{key}")
        if tune.trainer is not None and tune.trainer.model_key and tune.plan is not None:
            self.check_key(tune.trainer.model_key, self.at("train", "model_key"), tune.plan, top_vars,
                           "train.model_key")
        tune.space = self.space(spec, tune, top_vars)
        tune.objectives = self.objectives(spec, tune)
        tune.intermediate = self.intermediate(spec, tune)
        self.search(spec, tune)
        tune.holdout = self.holdout(spec, tune)
        self.publishing(spec)
        self.engine_rules(spec, tune)
        return tune

    def override(self, data: dict[str, Any], text: str) -> None:
        """One ``--set KEY=VALUE`` into the tune file. Under ``set:`` and ``holdout.set:``, whose
        keys are themselves dotted graph keys, the rest of KEY is one key."""
        setting = Override.parse(text, self.issues)  # KEY=VALUE, the value read as YAML (dates stay text)
        if setting is None:
            return
        loc, key, value = setting.loc, text.partition("=")[0], setting.value
        parts = list(setting.path)
        target: Any = data
        path: list[str] = []
        while len(parts) > 1:
            if path in (["set"], ["holdout", "set"]):
                parts = [".".join(parts)]
                break
            head = parts.pop(0)
            path.append(head)
            nxt = target.get(head) if isinstance(target, dict) else None
            if nxt is None:
                nxt = target[head] = {}
            if not isinstance(nxt, dict):
                self.add("bad-override", f"{'.'.join(path)} is not a mapping, so {key} cannot be set", loc, key)
                return
            target = nxt
        target[parts[0]] = value
        self.srcmap.mark((*path, parts[0]), loc)

    # ------------------------------------------------------------------ the graph

    def base(self, spec: TuneSpec) -> list[Override]:
        out: list[Override] = []
        for i, name in enumerate(spec.overlays):
            file = self.path.parent / name
            if not file.is_file():
                self.add("file-not-found", f"overlay file {_display(file)} does not exist", self.at("overlays", i),
                         f"overlays[{i}]", "the path is relative to the tune file")
                continue
            settings, problems = load_overlay(file)
            out += settings
            self.issues.issues.extend(problems)
        for key, value in spec.set.items():
            value = self.tune_refs(value, ("set", key))
            if value is _BAD_REF:
                continue  # reported where it is written; the graph need not say it again
            out.append(Override(tuple(key.split(".")), value, self.at("set", key, key=True), f"{key}={value!r}"))
        return out

    def tune_refs(self, value: Any, path: tuple[str, ...]) -> Any:
        """``${tune.out}`` and ``${tune.study}`` in a ``set:`` value: the study's output directory
        and name, as this run of the file has them (``--set study=X`` moves both), so a
        ``${env:DMNFLOW_TRIAL_DIR:-${tune.out}/best}`` default follows a renamed study into its
        best.yaml. Other ``${...}`` are the graph's, left to it. ``_BAD_REF`` when one is unknown."""
        if isinstance(value, dict):
            items = {k: self.tune_refs(v, (*path, k)) for k, v in value.items()}
            return _BAD_REF if _BAD_REF in items.values() else items
        if isinstance(value, list):
            listed = [self.tune_refs(v, path) for v in value]
            return _BAD_REF if any(v is _BAD_REF for v in listed) else listed
        if not isinstance(value, str) or "${tune." not in value:
            return value
        unknown = [name for name in re.findall(r"\$\{(tune\.[^}]*)\}", value) if name not in self.refs]
        for name in unknown:
            self.add("bad-substitution", f"${{{name}}} is not a tune reference", self.at(*path), ".".join(path),
                     did_you_mean(name, self.refs) or f"tune references are {', '.join(sorted(self.refs))}")
        return _BAD_REF if unknown else re.sub(r"\$\{(tune\.[^}]*)\}", lambda m: self.refs[m[1]], value)

    def compile(self, graph: Path, overrides: list[Override], profile: str | None
                ) -> tuple[list[Override], Plan | None]:
        """The graph with these settings, and the settings that apply; its errors join the tune
        file's (they are located in the graph, an overlay, or where the tune file sets the value)."""
        try:
            return overrides, compile_graph(graph, overrides, profile=profile, models=False)
        except GraphError as exc:
            errors = [i for i in exc.issues if i.is_error]
        # A ``set:`` key naming nothing of the graph is reported by check_key (with the tune
        # file's code and the closest key); without it the graph still compiles, so every
        # other mistake of the tune file is found in the same pass.
        own = {id(ov.loc): ov for ov in overrides}
        bad = [i for i in errors if i.code == "bad-override" and id(i.loc) in own]
        if not bad:
            self.issues.issues.extend(errors)
            return overrides, None
        dropped = {id(i.loc) for i in bad}
        kept = [ov for ov in overrides if id(ov.loc) not in dropped]
        try:
            return kept, compile_graph(graph, kept, profile=profile, models=False)
        except GraphError:
            self.issues.issues.extend(errors)
            return kept, None

    def graph_vars(self, graph: Path, profile: str | None) -> set[str]:
        """The graph file's own vars (what ``vars.NAME`` keys may set), its profile's included."""
        data, _ = parse_yaml(graph.read_text(encoding="utf-8"), str(graph), IssueList())
        names: set[str] = set()
        if isinstance(data, dict):
            if isinstance(data.get("vars"), dict):
                names |= set(data["vars"])
            prof = (data.get("profiles") or {}).get(profile) if profile and isinstance(data.get("profiles"),
                                                                                       dict) else None
            if isinstance(prof, dict) and isinstance(prof.get("vars"), dict):
                names |= set(prof["vars"])
        return names

    def check_key(self, key: str, loc: Location, plan: Plan, top_vars: set[str], path: str) -> bool:
        """Whether ``key`` names something of the graph; if not, an issue with the closest key."""
        parts = key.split(".")
        if not all(parts):
            self.add("unknown-key", f"{key!r} is not a dotted key", loc, path, "e.g. nodes.risk.params.target_vol")
            return False
        head = parts[0]
        if head == "vars":
            if len(parts) < 2 or parts[1] not in top_vars:
                name = parts[1] if len(parts) > 1 else ""
                self.add("unknown-key", f"the graph has no variable {name!r}", loc, path,
                         _suggest(name, top_vars) if top_vars else "the graph has no vars:")
                return False
            return True
        if head == "nodes":
            return self.check_node_key(parts, loc, plan, path)
        if head not in GraphSpec.model_fields:
            self.add("unknown-key", f"the graph has no key {head!r}", loc, path,
                     _suggest(head, [*GraphSpec.model_fields, "vars", "nodes"]))
            return False
        if head == "defaults" and len(parts) > 1:
            from ..spec import Defaults

            if parts[1] not in Defaults.model_fields:
                self.add("unknown-key", f"defaults has no key {parts[1]!r}", loc, path,
                         _suggest(parts[1], Defaults.model_fields))
                return False
        return True

    def check_node_key(self, parts: list[str], loc: Location, plan: Plan, path: str) -> bool:
        key = ".".join(parts)
        names = sorted({n.spec_name for n in plan.nodes})
        if len(parts) < 3:
            self.add("unknown-key", f"{key!r} names no node setting", loc, path,
                     "write nodes.NODE.params.PARAM (or another key of the node)")
            return False
        name = parts[1]
        if name not in names:
            ends = [n for n in names if n.rsplit("/", 1)[-1] == name]
            hint = did_you_mean(name, names) or (
                f"{suggest(ends[0])} (included nodes are named <include>/<node>)" if ends else
                _suggest(name, names))
            self.add("unknown-key", f"the graph has no node {name!r}", loc, path, hint)
            return False
        field_name = parts[2]
        aliases = {f.alias or n for n, f in NodeSpec.model_fields.items()}
        if field_name not in aliases:
            self.add("unknown-key", f"a node has no key {field_name!r}", loc, path, _suggest(field_name, aliases))
            return False
        if field_name != "params" or len(parts) < 4:
            return True
        node = next(n for n in plan.nodes if n.spec_name == name)
        cls = _node_class(node.uses)
        if cls is None:
            return True
        model = cls.Params
        fields = {f.alias or n for n, f in model.model_fields.items()}
        if parts[3] not in fields and model.model_config.get("extra") != "allow":
            self.add("unknown-key", f"{cls.__name__} has no param {parts[3]!r}", loc, path,
                     _suggest(parts[3], fields) if fields else f"{cls.__name__} takes no params")
            return False
        return True

    # ------------------------------------------------------------------ the space

    def space(self, spec: TuneSpec, tune: TuneFile, top_vars: set[str]) -> Space:
        space = Space()
        seen: dict[str, Param] = {}
        for key, raw in spec.space.items():
            where = ("space", key)
            loc = self.at(*where, key=True)
            param = self.param(key, raw, where, loc, seen, list(spec.space))
            if param is None:
                continue
            if key.startswith("train."):
                ok = self.check_train_key(key, loc, tune)
            elif tune.plan is None:
                ok = False  # the graph itself failed: its errors say why
            else:
                ok = self.check_key(key, loc, tune.plan, top_vars, f"space.{key}")
            if ok:
                self.probe(param, raw, where, tune)
            seen[key] = param
            space.params.append(param)
        if not space.params and spec.pbt is None and not self.issues.has_errors:
            self.add("invalid-value", "the space is empty: nothing to search", self.at("space"), "space",
                     "add keys, e.g. `nodes.risk.params.target_vol: {float: [0.05, 0.25]}`")
        return space

    def param(self, key: str, raw: ParamSpec, where: tuple[str, ...], loc: Location,
              seen: Mapping[str, Param], keys: list[str]) -> Param | None:
        """The range of one key, checked on its own (kinds, order of bounds, log, step, when)."""
        kinds = [k for k in ("float", "int", "choice") if getattr(raw, {"float": "float_", "int": "int_"}.get(k, k))
                 is not None]
        if isinstance(raw.log, list):
            kinds.append("log")
        path = f"space.{key}"
        if len(kinds) != 1:
            self.add("invalid-value", f"{key}: give exactly one of float, int, log, choice" +
                     (f" (found {', '.join(kinds)})" if kinds else ""), loc, path,
                     "e.g. {float: [0.05, 0.25]}, {int: [21, 252], step: 21}, {log: [1e-4, 1e-2]}, "
                     "{choice: [a, b]}")
            return None
        kind = kinds[0]
        when = self.when(key, raw, where, seen, keys)
        if kind == "choice":
            if not raw.choice:
                self.add("invalid-value", "choice needs at least one value", self.at(*where, "choice"), path)
                return None
            if raw.step is not None or raw.log is not None:
                self.add("invalid-value", "step and log apply to float and int ranges, not choice",
                         self.at(*where, "step" if raw.step is not None else "log", key=True), path)
            return Param(key, "choice", choices=tuple(raw.choice), when=when, loc=loc)
        bounds_key = {"float": "float", "int": "int", "log": "log"}[kind]
        bounds: list[Any] = {"float": raw.float_, "int": raw.int_, "log": raw.log}[kind]  # type: ignore[assignment]
        if len(bounds) != 2:
            self.add("invalid-value", f"{bounds_key} takes [low, high] (got {len(bounds)} value(s))",
                     self.at(*where, bounds_key), path, f"e.g. {{{bounds_key}: [1, 10]}}")
            return None
        low, high = bounds
        log = kind == "log" or raw.log is True
        if not low < high:
            self.add("invalid-value", f"low {low:g} is not below high {high:g}", self.at(*where, bounds_key, 0), path,
                     "write [low, high], low first" if low > high else "a single value belongs in `set:`, not space:")
            return None
        if log and low <= 0:
            self.add("invalid-value", f"a log range starts above 0 (got {low:g})", self.at(*where, bounds_key, 0),
                     path, "use a positive low end, or a uniform range")
            return None
        step = raw.step
        if step is not None and log:
            self.add("invalid-value", "a log range takes no step", self.at(*where, "step"), path,
                     "drop step:, or use a uniform range")
            step = None
        if kind == "int" and step is not None and step != int(step):
            self.add("invalid-value", f"an int range steps by a whole number (got {step:g})", self.at(*where, "step"),
                     path)
            step = None
        if step is not None and step > high - low:
            self.add("invalid-value", f"step {step:g} is larger than the range {high - low:g}",
                     self.at(*where, "step"), path)
        elif step is not None and (top := last_step(low, high, step)) != high:
            self.add("uneven-step", f"step {step:g} does not divide [{low:g}, {high:g}]: the highest value drawn is "
                     f"{top:g}, never {high:g}", self.at(*where, "step"), path,
                     f"make the range end on a step ({bounds_key}: [{low:g}, {top:g}] or [{low:g}, {top + step:g}]), "
                     "or pick a step that divides it", severity="warning")
        kind_out = "int" if kind == "int" else "float"
        if kind_out == "int":
            step = None if step is None else int(step)
        return Param(key, kind_out, low, high, step, log, (), when, loc)  # type: ignore[arg-type]

    def when(self, key: str, raw: ParamSpec, where: tuple[str, ...], seen: Mapping[str, Param], keys: list[str]
             ) -> tuple[tuple[str, tuple[Any, ...]], ...]:
        out = []
        for other, accepted in (raw.when or {}).items():
            loc = self.at(*where, "when", other, key=True)
            values = tuple(accepted) if isinstance(accepted, list) else (accepted,)
            if other not in seen:
                hint = f"{other} is searched after {key}: move it above" if other in keys else _suggest(other, seen)
                self.add("unknown-key", f"when: {other!r} is not a key searched before {key!r}", loc,
                         f"space.{key}.when", hint)
                continue
            cond = seen[other]
            if cond.kind == "choice":
                for value in values:
                    if value not in cond.choices:
                        self.add("invalid-value", f"when: {other} never takes {value!r}", self.at(
                            *where, "when", other), f"space.{key}.when",
                                 f"its choices are {', '.join(repr(c) for c in cond.choices)}")
            out.append((other, values))
        return tuple(out)

    def probe(self, param: Param, raw: ParamSpec, where: tuple[str, ...], tune: TuneFile) -> None:
        """Compile the graph at each end of the range (or with each choice): a value it refuses
        is reported where that end is written."""
        bounds_key = next(k for k in ("float", "int", "log", "choice")
                          if isinstance(getattr(raw, {"float": "float_", "int": "int_"}.get(k, k)), list))
        for i, value in enumerate(param.probes()):
            index = i if param.kind == "choice" else (0 if i == 0 else 1)
            loc = self.at(*where, bounds_key, index)
            end = f"choice {value!r}" if param.kind == "choice" else ("the low end" if i == 0 else "the high end")
            for problem in self.refusals(param, value, loc, tune):
                self.add("invalid-range", f"{value!r} ({end}) is refused: {problem}", loc,
                         f"space.{param.key}", "narrow the range to values the graph accepts")

    def refusals(self, param: Param, value: Any, loc: Location, tune: TuneFile) -> list[str]:
        if param.key.startswith("train."):
            return self.trainer_refusals(param.key.split(".", 1)[1], value, tune)
        probe = Override(tuple(param.key.split(".")), value, loc, f"{param.key}={value!r}")
        try:
            compile_graph(tune.graph, [*tune.base, probe], profile=tune.profile, models=False)
        except GraphError as exc:  # where the graph refused it, when that is not the range itself
            return [i.message if i.loc == loc else f"{i.path}: {i.message} (at {i.loc})" for i in exc.errors]
        return []

    # ------------------------------------------------------------------ the trainer

    def trainer(self, spec: TuneSpec) -> TrainerRef | None:
        if spec.train is None:
            return None
        loc = self.at("train", "uses")
        try:
            cls = load_trainer(spec.train.uses)
        except ValueError as exc:
            self.add("import-error", str(exc), loc, "train.uses", "name a dmnflow.tune.Trainer subclass")
            self.train_broken = True
            return None
        try:
            cls.Params.model_validate(spec.train.params)
        except ValidationError as exc:
            for err in exc.errors():
                parts = tuple(err["loc"])
                where = self.at("train", "params", *parts, key=err["type"] == "extra_forbidden")
                msg = err["msg"].removeprefix("Value error, ")
                code = "unknown-param" if err["type"] == "extra_forbidden" else "invalid-param"
                hint = _suggest(str(parts[-1]), cls.Params.model_fields) if code == "unknown-param" else ""
                self.add(code, f"{cls.__name__}: {msg[:1].lower() + msg[1:]}", where,
                         "train.params." + ".".join(map(str, parts)), hint)
        return TrainerRef(spec.train.uses, cls, dict(spec.train.params), spec.train.iterations, spec.train.model_key,
                          loc)

    def check_train_key(self, key: str, loc: Location, tune: TuneFile) -> bool:
        if self.train_broken:
            return False
        if tune.trainer is None:
            self.add("unknown-key", f"{key!r} searches a trainer param, but the tune file has no train:",
                     loc, f"space.{key}", "add train: {uses: package.module:Trainer}")
            return False
        name = key.split(".", 1)[1]
        fields = tune.trainer.cls.Params.model_fields
        if name.split(".")[0] not in fields:
            self.add("unknown-key", f"{tune.trainer.cls.__name__} has no param {name!r}", loc, f"space.{key}",
                     _suggest(name, fields))
            return False
        return True

    def trainer_refusals(self, name: str, value: Any, tune: TuneFile) -> list[str]:
        assert tune.trainer is not None
        try:
            tune.trainer.cls.Params.model_validate({**tune.trainer.params, name: value})
        except ValidationError as exc:
            return [e["msg"].removeprefix("Value error, ") for e in exc.errors() if tuple(e["loc"])[:1] == (name,)]
        return []

    # ------------------------------------------------------------------ objectives

    def objectives(self, spec: TuneSpec, tune: TuneFile) -> list[Objective]:
        out = []
        for name, direction in spec.objectives.items():
            obj = self.figure(name, self.at("objectives", name, key=True), tune, f"objectives.{name}")
            if obj is not None:
                out.append(Objective(obj.name, _DIRECTIONS[direction], obj.node, obj.figure, obj.loc))  # type: ignore[arg-type]
        if not spec.objectives:
            self.add("missing-key", "no objectives: name at least one report figure to optimise",
                     self.at("objectives", key=True), "objectives", "e.g. objectives: {performance.sharpe: max}")
        return out

    def figure(self, name: str, loc: Location, tune: TuneFile, path: str) -> Objective | None:
        """``NODE.FIGURE``, ``report.FIGURE`` or ``train.FIGURE``, checked against what reports it."""
        node, sep, fig = name.partition(".")
        if not sep or not node or not fig:
            self.add("unknown-objective", f"{name!r} is not NODE.FIGURE", loc, path,
                     "e.g. performance.sharpe, report.duration_s, train.valid_sharpe")
            return None
        if node == "report":
            if fig not in REPORT_FIGURES:
                self.add("unknown-objective", f"the run's report has no figure {fig!r}", loc, path,
                         _suggest(fig, REPORT_FIGURES))
                return None
            return Objective(name, "maximize", "report", fig, loc)
        if node == "train":
            if self.train_broken:
                return None
            if tune.trainer is None:
                self.add("unknown-objective", f"{name!r} reads the trainer, but the tune file has no train:",
                         loc, path, "add train:, or name a report figure")
                return None
            metrics = tune.trainer.cls.metrics
            if metrics and fig not in metrics:
                self.add("unknown-objective", f"{tune.trainer.cls.__name__} reports no metric {fig!r}", loc, path,
                         _suggest(fig, metrics))
                return None
            return Objective(name, "maximize", "train", fig, loc)
        if tune.plan is None:
            return None
        instances = [n.name for n in tune.plan.nodes]
        found = match_node(node, instances)
        if not found:
            found = [n.name for n in tune.plan.nodes if node in (n.spec_name, n.spec_name.rsplit("/", 1)[-1])]
        if not found:
            self.add("unknown-objective", f"the report has no node {node!r}", loc, path,
                     _suggest(node, sorted({n.spec_name.rsplit("/", 1)[-1] for n in tune.plan.nodes})))
            return None
        if len(found) > 1:
            self.add("unknown-objective", f"{node!r} could mean {', '.join(found)}", loc, path,
                     f"name one of them, e.g. {found[0]}.{fig}")
            return None
        plan_node = next(n for n in tune.plan.nodes if n.name == found[0])
        cls = _node_class(plan_node.uses)
        if cls is not None:
            keys = cls.summary_keys
            if not (isinstance(cls, type) and issubclass(cls, Node) and cls.defines("summary")):
                self.add("unknown-objective", f"node {found[0]!r} ({cls.__name__}) reports no figures", loc, path,
                         "name a node with a summary(), e.g. performance")
                return None
            if keys and fig not in keys:
                self.add("unknown-objective", f"{cls.__name__} ({found[0]}) reports no figure {fig!r}", loc, path,
                         _suggest(fig, keys))
                return None
        return Objective(name, "maximize", found[0], fig, loc)

    def intermediate(self, spec: TuneSpec, tune: TuneFile) -> Intermediate | None:
        inter = spec.intermediate
        if inter is None:
            return None
        value = tune.objectives[0] if (inter.value is None and tune.objectives) else (
            self.figure(inter.value, self.at("intermediate", "value"), tune, "intermediate.value")
            if inter.value else None)
        step = self.figure(inter.step, self.at("intermediate", "step"), tune, "intermediate.step")
        if value is None or step is None:
            return None
        return Intermediate(value, step, inter.every)

    # ------------------------------------------------------------------ how to search

    def search(self, spec: TuneSpec, tune: TuneFile) -> None:
        try:
            import optuna
        except ImportError:
            return  # the engine says so, with the install command, before anything runs
        for what, table, default in (("sampler", SAMPLERS, "tpe"), ("pruner", PRUNERS, "none")):
            raw = getattr(spec, what)
            name, options = (raw, {}) if isinstance(raw, str) else (next(iter(raw.items()), (default, {})))
            if isinstance(raw, dict) and len(raw) != 1:
                self.add("invalid-value", f"{what} is a name or {{name: {{options}}}}, one name", self.at(what),
                         what, f"one of {', '.join(table)}")
                continue
            if name not in table:
                self.add("invalid-value", f"no {what} {name!r}", self.at(what) if isinstance(raw, str) else
                         self.at(what, name, key=True), what, _suggest(name, table))
                continue
            module = optuna.samplers if what == "sampler" else optuna.pruners
            cls = getattr(module, table[name])
            accepted = [p for p in inspect.signature(cls).parameters if p not in ("self", "args", "kwargs")]
            unknown = [k for k in options if k not in accepted]
            for key in unknown:
                self.add("invalid-value", f"{what} {name} has no option {key!r}", self.at(what, name, key, key=True),
                         f"{what}.{name}.{key}", _suggest(key, accepted))
            if unknown:
                continue
            if name == "grid":
                self.grid(tune)
                continue
            try:
                cls(**options)
            except (TypeError, ValueError, ImportError) as exc:
                self.add("invalid-value", f"{what} {name}: {exc}", self.at(what, name), f"{what}.{name}",
                         f"see optuna.{'samplers' if what == 'sampler' else 'pruners'}.{table[name]}")
        pruner = spec.pruner if isinstance(spec.pruner, str) else next(iter(spec.pruner), "none")
        if pruner != "none" and len(spec.objectives) > 1:
            self.add("invalid-value", "pruners stop trials on one objective; this study has "
                     f"{len(spec.objectives)}", self.at("pruner"), "pruner", "use pruner: none with several objectives")
        elif pruner != "none" and spec.intermediate is None:
            self.add("invalid-value", f"pruner {pruner} needs intermediate values", self.at("pruner"), "pruner",
                     "add intermediate: {step: performance.periods, every: 252}")

    def grid(self, tune: TuneFile) -> None:
        """A grid sampler needs every key finite: choices, or ranges with a step."""
        for param in tune.space:
            if param.kind == "float" and param.step is None or param.log:
                self.add("invalid-value", f"the grid sampler needs a finite set of values for {param.key}",
                         param.loc, f"space.{param.key}", "give the range a step:, or make it a choice:")

    def holdout(self, spec: TuneSpec, tune: TuneFile) -> list[Override] | None:
        hold = spec.holdout
        if hold is None:
            return None
        out: list[Override] = []
        for i, name in enumerate(hold.overlays):
            file = self.path.parent / name
            settings, problems = load_overlay(file)
            if not file.is_file():
                self.add("file-not-found", f"overlay file {_display(file)} does not exist",
                         self.at("holdout", "overlays", i), f"holdout.overlays[{i}]")
                continue
            out += settings
            self.issues.issues.extend(problems)
        for key, value in hold.set.items():
            value = self.tune_refs(value, ("holdout", "set", key))
            if value is _BAD_REF:
                continue
            out.append(Override(tuple(key.split(".")), value, self.at("holdout", "set", key, key=True),
                                f"{key}={value!r}"))
        if tune.plan is not None and out:
            self.compile(tune.graph, [*tune.base, *out], tune.profile)
        return out

    def publishing(self, spec: TuneSpec) -> None:
        if spec.publish is None:
            return
        workers = 3 if spec.publish == "seed" else len(spec.publish.workers)  # type: ignore[union-attr]
        if spec.concurrency > workers:
            self.add("invalid-value", f"the seed's layout has {workers} worker port(s) and concurrency is "
                     f"{spec.concurrency}", self.at("concurrency"), "concurrency",
                     "lower concurrency, or list more ports under publish.workers")

    def engine_rules(self, spec: TuneSpec, tune: TuneFile) -> None:
        if spec.pbt is not None:
            loc = self.at("pbt", key=True)
            if spec.engine != "ray":
                self.add("invalid-value", "population-based training runs on Ray Tune", loc, "pbt",
                         "add `engine: ray` (or pass --engine ray)")
            if spec.train is None:
                self.add("missing-key", "pbt: trains a model: add train: {uses: ..., params: ...}", loc, "pbt")
            for param in tune.space:
                if not param.key.startswith("train."):
                    self.add("invalid-value", f"PBT mutates the trainer's params; {param.key} is a graph key",
                             param.loc, f"space.{param.key}", "search graph keys in a study of their own")
            if len(tune.objectives) != 1 or (tune.objectives and tune.objectives[0].node != "train"):
                self.add("invalid-value", "PBT ranks members by one trainer metric", self.at("objectives", key=True),
                         "objectives", "e.g. objectives: {train.valid_sharpe: max}")


def _node_class(uses: str) -> Any:
    """The node class a plan names (already imported by the compile)."""
    try:
        return load_object(uses)
    except ImportPathError:
        return None
