"""Binding each YAML node to its code: the class ``uses:`` names, its params, its ports
(inputs connected, handlers present), its join and timers, and its model file."""

from __future__ import annotations

import inspect
from pathlib import Path

from pydantic import BaseModel, ValidationError

from ..errors import did_you_mean, got
from ..importing import ImportPathError, load_object, subclass_of, user_frame
from ..node import Input, Node, Output, Ports, describe_type
from ..plan import ModelPlan
from ..spec import ModelSpec, resolve_node
from .state import _choices, _Compilation, _Node

__all__ = ["class_codec", "model_plan", "plan_model"]


class _Binding(_Compilation):
    """Checks of each node on its own; a node whose class or ports fail keeps ``ports`` None."""

    def resolve_class(self, node: _Node) -> None:
        uses = node.entry.spec.uses
        where = self.loc("nodes", node.entry.name, "uses")
        path = f"nodes.{node.entry.name}.uses"
        try:
            obj = load_object(uses, kind=subclass_of(Node), what="node classes")
        except ImportPathError as exc:
            self.add("import-error", exc.message, where, path, exc.hint)
            return
        if not (inspect.isclass(obj) and issubclass(obj, Node)):
            self.add("not-a-node", f"{uses} is not a dmnflow Node class", where, path,
                     "subclass dmnflow.Node and declare its ports")
            return
        if not (inspect.isclass(obj.Params) and issubclass(obj.Params, BaseModel)):
            self.add("node-error", f"{obj.__name__}.Params is not a pydantic model", where, path,
                     "declare `class Params(pydantic.BaseModel)` inside the node class")
            return
        node.cls = obj

    def check_params(self, node: _Node) -> None:
        if node.cls is None or "params" in node.entry.invalid:
            return
        name = node.entry.name
        raw = node.entry.spec.params
        model = node.cls.Params
        base = ("nodes", name, "params")
        fields = {f.alias or n for n, f in model.model_fields.items()} | set(model.model_fields)
        extra_ok = model.model_config.get("extra") == "allow"
        unknown = [] if extra_ok else [k for k in raw if k not in fields]
        for key in unknown:
            hint = did_you_mean(key, fields) or (
                f"{node.cls.__name__} takes {', '.join(sorted(fields))}" if fields else
                f"{node.cls.__name__} takes no params")
            self.add("unknown-param", f"{node.cls.__name__} has no param {key!r}",
                     self.loc(*base, key, key=True), f"nodes.{name}.params.{key}", hint)
        given = {k: v for k, v in raw.items() if k not in unknown}
        try:
            try:
                node.params = model.model_validate(given)
            except ValidationError as exc:  # `--set ...params.name=yes` where it wants text: as typed
                if not self.graph.srcmap.as_typed(given, base, exc.errors()):
                    raise
                node.params = model.model_validate(given)
        except ValidationError as exc:
            for err in exc.errors():
                parts = tuple(err["loc"])
                where = self.loc(*base, *parts)
                dotted = ".".join(str(p) for p in ("nodes", name, "params", *parts))
                if any(dotted == u or dotted.startswith(u + ".") for u in self.graph.unresolved):
                    continue  # a failed ${...} was reported where it was written
                hint = _field_hint(model, str(parts[0])) if parts else ""  # no loc: a model-level validator
                if err["type"] == "missing":
                    self.add("missing-param", f"{node.cls.__name__} needs param {parts[-1]!r}",
                             self.key_loc(base, ("nodes", name)), dotted, hint)
                else:
                    msg = err["msg"].removeprefix("Value error, ")
                    shown = got(err["input"]) if "input" in err and err["type"] != "value_error" else ""
                    self.add("invalid-param", msg[:1].lower() + msg[1:] + shown,
                             where if parts else self.key_loc(base, ("nodes", name)), dotted, hint)
            return
        except Exception as exc:  # a validator in the user's Params raised something else
            self.add("node-error", f"validating params of {node.cls.__name__} raised {type(exc).__name__}: "
                     f"{exc}{user_frame(exc)}", self.loc(*base) or self.loc("nodes", name, "uses"),
                     f"nodes.{name}.params", "fix the Params model: validators should raise ValueError")
            return
        if unknown:
            node.params = None  # the node itself is fine; its params are not

    def check_ports(self, node: _Node) -> None:
        if node.cls is None:
            return
        name = node.entry.name
        spec = node.entry.spec
        params = node.params
        if params is None and node.cls.ports.__func__ is not Node.ports.__func__:  # type: ignore[attr-defined]
            return  # this class's ports depend on params that did not validate
        try:
            ports = node.cls.ports(params)  # type: ignore[arg-type]
        except Exception as exc:
            self.add("node-error", f"{node.cls.__name__}.ports() raised {type(exc).__name__}: {exc}"
                     f"{user_frame(exc)}", self.loc("nodes", name, "uses"), f"nodes.{name}", "fix the node class")
            return
        if not (isinstance(ports, Ports) and all(isinstance(v, Input) for v in ports.inputs.values())
                and all(isinstance(v, Output) for v in ports.outputs.values())):
            self.add("node-error", f"{node.cls.__name__}.ports() returned {type(ports).__name__}, not Ports "
                     "of Input and Output", self.loc("nodes", name, "uses"), f"nodes.{name}",
                     "return dmnflow.Ports(inputs={...: Input(...)}, outputs={...: Output(...)})")
            return
        node.ports = ports
        cls_name = node.cls.__name__
        misnamed = [port for port in spec.inputs if port not in ports.inputs]
        for port in misnamed:
                self.add("unknown-input", f"{cls_name} has no input {port!r}",
                         self.loc("nodes", name, "inputs", port, key=True), f"nodes.{name}.inputs.{port}",
                         _choices(port, ports.inputs, "inputs"))
        for port in spec.outputs:
            if port not in ports.outputs:
                self.add("unknown-output", f"{cls_name} has no output {port!r}",
                         self.loc("nodes", name, "outputs", port, key=True), f"nodes.{name}.outputs.{port}",
                         _choices(port, ports.outputs, "outputs"))
        for port, decl in ports.inputs.items():
            if port not in spec.inputs and not decl.optional and not misnamed and not node.entry.invalid:
                self.add("missing-input", f"input {port!r} of {cls_name} has no producer",
                         self.key_loc(("nodes", name, "inputs"), ("nodes", name)),
                         f"nodes.{name}.inputs.{port}",
                         f"connect it: inputs: {{{port}: <node>.<output>}} ({describe_type(decl.type)})")
            joined = spec.join is not None and port in spec.join.inputs
            misjoined = spec.join is not None and not set(spec.join.inputs) <= set(spec.inputs)  # bad-join says it
            if port in spec.inputs and not joined and not misjoined and not node.cls.handles(port):
                self.add("missing-handler", f"{cls_name} has no on_{port}() or on_message() for input "
                         f"{port!r}", self.loc("nodes", name, "uses"), f"nodes.{name}.inputs.{port}",
                         f"add `def on_{port}(self, value, ctx)` to {cls_name}")

    def resolve_defaults(self, node: _Node) -> None:
        """Fill the node's defaults in, once (spec/resolve.py), with the codec each declared
        output's class names: every later pass reads the filled fields, and ``entry.filled``
        says which came from ``defaults`` (or the class)."""
        codecs = None if node.ports is None else {port: class_codec(decl) for port, decl in node.ports.outputs.items()}
        node.entry = self.graph.nodes[node.entry.name] = resolve_node(node.entry, codecs)

    def check_join(self, node: _Node) -> None:
        join = node.entry.spec.join
        if join is None or node.ports is None or node.cls is None:
            return
        name = node.entry.name
        for i, port in enumerate(join.inputs):
            if port not in node.entry.spec.inputs:
                self.add("bad-join", f"join names {port!r}, which is not a connected input of {name!r}",
                         self.loc("nodes", name, "join", "inputs", i), f"nodes.{name}.join.inputs",
                         _choices(port, node.entry.spec.inputs, "connected inputs"))
        for port in join.inputs:
            spec_in = node.entry.spec.inputs.get(port)
            if spec_in is not None and spec_in.batch is not None:
                self.add("bad-join", f"input {port!r} is both joined and batched", self.loc(
                    "nodes", name, "inputs", port, "batch"), f"nodes.{name}.inputs.{port}.batch",
                         "a join aligns single messages by event time: drop the batch, or the input from the join")
        if len(set(join.inputs)) != len(join.inputs):
            self.add("bad-join", "join names an input twice", self.loc("nodes", name, "join", "inputs"),
                     f"nodes.{name}.join.inputs", "list each input once")
        if not node.cls.defines("on_join"):
            self.add("missing-handler", f"{node.cls.__name__} has no on_join() for its join",
                     self.loc("nodes", name, "join"), f"nodes.{name}.join",
                     f"add `def on_join(self, values: dict, ctx)` to {node.cls.__name__}")

    def check_timers(self, node: _Node) -> None:
        name = node.entry.name
        for timer, period in node.entry.spec.timers.items():
            where, path = self.loc("nodes", name, "timers", timer, key=True), f"nodes.{name}.timers.{timer}"
            if period <= 0:
                self.add("invalid-value", f"timer {timer!r} needs a period above zero", self.loc(
                    "nodes", name, "timers", timer), path, "write e.g. 10ms or 1s")
            if node.cls is not None and not callable(getattr(node.cls, f"on_{timer}", None)):
                self.add("missing-handler", f"{node.cls.__name__} has no on_{timer}() for timer {timer!r}",
                         where, path, f"add `def on_{timer}(self, ctx)` to {node.cls.__name__}")
            if node.ports is not None and timer in node.ports.inputs:
                self.add("bad-name", f"timer {timer!r} has the name of an input; on_{timer} would serve both",
                         where, path, "rename the timer")

    def check_model(self, node: _Node) -> None:
        model = node.entry.spec.model
        name = node.entry.name
        if model is None:
            if node.cls is not None and node.cls.needs_model:
                self.add("model-missing", f"{node.cls.__name__} runs a model, but the node has no `model:` block",
                         self.key_loc(("nodes", name, "uses"), ("nodes", name)), f"nodes.{name}",
                         "add `model: {path: models/my_model.pt}` (a TorchScript or torch.export file)")
            return
        file = (node.entry.base_dir / model.path)
        if not file.is_file():
            self.add("model-missing", f"model file {model.path!r} does not exist (looked for {file})",
                     self.loc("nodes", name, "model", "path"), f"nodes.{name}.model.path",
                     "paths are relative to the YAML file; train or export the model first")
            return
        if not (self.models and node.cls.defines("check_model") and node.params is not None):
            return
        for code, message, hint in node.cls.check_model(node.params, model_plan(node)):
            self.add(code, message, self.key_loc(("nodes", name, "model"), ("nodes", name)), f"nodes.{name}.model",
                     hint)


def class_codec(decl: Output) -> str | None:
    """The codec an output's class picks when the YAML names none: the port's own, else
    tensor for a tensor type; None leaves it to ``defaults.codec``."""
    if decl.codec is not None:
        return decl.codec
    return "tensor" if describe_type(decl.type).startswith("tensor[") else None


def model_plan(node: _Node) -> ModelPlan | None:
    """The plan of the node's `model:` block (None without one)."""
    model = node.entry.spec.model
    return None if model is None else plan_model(model, node.entry.base_dir, node.entry.spec.gpu)


def plan_model(model: ModelSpec, base_dir: Path, gpu: int | None = None) -> ModelPlan:
    """A `model:` block as a worker needs it: the path made absolute from the YAML's directory."""
    return ModelPlan(path=str((base_dir / model.path).resolve()), device=model.device, dtype=model.dtype,
                     cuda_graphs=model.cuda_graphs, version=model.version, gpu=gpu)


def _field_hint(model: type[BaseModel], key: str) -> str:
    info = model.model_fields.get(key)
    if info is None:
        return ""
    kind = getattr(info.annotation, "__name__", str(info.annotation))
    doc = f": {info.description}" if info.description else ""
    return f"{key} is {kind}{doc}"
