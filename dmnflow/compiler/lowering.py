"""Graph file -> networkx graph -> every check -> Plan.

The compiler imports each node class named by ``uses:``, validates its params, matches
ports, types, codecs, pins and model files, finds loops, and lays out the sockets. It
reports *every* problem in one pass, each with file:line:col and a fix; a node that fails
one check is still checked for the others, and references to a broken node are not
reported again. ``validate`` returns the issues; ``compile_graph`` raises them.
"""

from __future__ import annotations

import difflib
import hashlib
import inspect
import ipaddress
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx
from pydantic import BaseModel, ValidationError

from ..codecs import codec_names, get_codec
from ..errors import CompileError, Issue, IssueList, Location, SpecError, sort_issues
from ..importing import ImportPathError, load_object, subclass_of, user_frame
from ..node import Input, Node, Output, Ports, check_types, describe_type
from ..observe.budgets import check_budgets, plan_budgets
from ..plan import (
    RUN_DIR,
    BatchPlan,
    BindPlan,
    CoalescePlan,
    ConnectPlan,
    EdgePlan,
    InputPlan,
    JoinPlan,
    ModelPlan,
    NodePlan,
    OutputPlan,
    Plan,
    ProcessPlan,
    RestartPlan,
    SecurityPlan,
    push_hwm,
)
from ..spec import CoalesceSpec, LoadedGraph, ModelSpec, NodeEntry, Override, SourceMap, format_cpus, load_graph
from ..transport.security import check_key_dir

__all__ = ["compile_graph", "validate"]

_REPLICA_RE = re.compile(r"^(?P<base>.+)\[(?P<index>\d+)\]$")


def validate(path: str | os.PathLike[str], overrides: Sequence[str | Override] = (), *,
             profile: str | None = None, machine_cpus: Sequence[int] | None = None,
             models: bool = True) -> list[Issue]:
    """Every problem in a graph file, errors and warnings, in file order. Empty when clean.

    ``models=False`` skips loading model files to check them against their ports.
    """
    _, issues, _ = _compile(path, overrides, profile, machine_cpus, models)
    return sort_issues(issues)


def compile_graph(path: str | os.PathLike[str], overrides: Sequence[str | Override] = (), *,
                  profile: str | None = None, machine_cpus: Sequence[int] | None = None,
                  models: bool = True, transform: Callable[[LoadedGraph], None] | None = None) -> Plan:
    """Compile a graph file into a Plan.

    ``transform`` may change the loaded graph before it is compiled (``dmnflow replay``
    swaps producers for a recording's replayer, observe/replay.py).

    Raises:
        SpecError: the file cannot be read as a graph (YAML, schema, substitution).
        CompileError: it reads, but does not hold together (imports, ports, types, pins).
    """
    plan, issues, spec_issues = _compile(path, overrides, profile, machine_cpus, models, transform)
    if plan is None:
        only_spec = all(i in spec_issues for i in issues if i.is_error)  # the file itself is the problem
        raise (SpecError if only_spec else CompileError)(issues)
    return plan


def _compile(path: str | os.PathLike[str], overrides: Sequence[str | Override], profile: str | None,
             machine_cpus: Sequence[int] | None, models: bool = True,
             transform: Callable[[LoadedGraph], None] | None = None) -> tuple[Plan | None, list[Issue], list[Issue]]:
    """The plan (None when there are errors), every issue, and those found reading the file."""
    graph = load_graph(path, overrides, profile=profile)
    if transform is not None and not any(i.is_error for i in graph.issues):
        transform(graph)
    cpus = sorted(machine_cpus if machine_cpus is not None else os.sched_getaffinity(0))
    compiler = _Compiler(graph, cpus, models)
    plan = compiler.run()
    return plan, compiler.issues.issues, graph.issues


@dataclass
class _Node:
    """What the compiler knows of one YAML node."""

    entry: NodeEntry
    cls: type[Node] | None = None
    params: BaseModel | None = None
    ports: Ports | None = None
    instances: list[str] = field(default_factory=list)

    @property
    def usable(self) -> bool:
        return self.ports is not None


@dataclass
class _Edge:
    src: str  # YAML node names
    src_port: str
    dst: str
    dst_port: str
    replica: int | None  # the producer replica named in the reference, if any
    type: str
    feedback: bool


class _Compiler:
    def __init__(self, graph: LoadedGraph, machine_cpus: list[int], models: bool = True) -> None:
        self.graph = graph
        self.models = models  # load model files and check them against the node's ports
        self.srcmap: SourceMap = graph.srcmap
        self.cpus = machine_cpus
        self.issues = IssueList(list(graph.issues))
        self.nodes: dict[str, _Node] = {}
        self.edges: list[_Edge] = []

    # -------------------------------------------------------------- helpers

    def loc(self, *path: str | int, key: bool = False) -> Location | None:
        return self.srcmap.at(path, key=key)

    def key_loc(self, *paths: tuple[str | int, ...]) -> Location | None:
        """Where the first of these keys is written (a node's name when nothing deeper is)."""
        for path in paths:
            if path in self.srcmap.keys:
                return self.srcmap.keys[path]
        return self.srcmap.at(paths[-1])

    def add(self, code: str, message: str, loc: Location | None, path: str, hint: str = "",
            severity: str = "error") -> None:
        self.issues.add(code, message, loc, path=path, hint=hint, severity=severity)  # type: ignore[arg-type]

    # -------------------------------------------------------------- the pass

    def run(self) -> Plan | None:
        for name, entry in self.graph.nodes.items():
            node = self.nodes[name] = _Node(entry)
            node.instances = [name] if entry.spec.replicas == 1 else [
                f"{name}[{i}]" for i in range(entry.spec.replicas)]
            self.resolve_class(node)
            self.check_params(node)
            self.check_ports(node)
            self.check_join(node)
            self.check_timers(node)
            self.check_pins(node)
            self.check_model(node)
        for node in self.nodes.values():
            self.connect(node)
        template = self.template_graph()
        self.check_cycles(template)
        self.check_unused(template)
        codecs = self.check_codecs()
        self.check_tcp_ports()
        self.check_busy_cores()
        self.check_hosts()
        self.check_delivery()
        self.check_drivers()
        check_budgets(self.nodes, self.edges, self.loc, self.issues)
        security = self.check_security()
        if self.issues.has_errors:
            return None
        return self.build_plan(codecs, security)

    # -------------------------------------------------------------- classes, params, ports

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
            near = difflib.get_close_matches(key, sorted(fields), n=1)
            hint = f"did you mean {near[0]!r}?" if near else (
                f"{node.cls.__name__} takes {', '.join(sorted(fields))}" if fields else
                f"{node.cls.__name__} takes no params")
            self.add("unknown-param", f"{node.cls.__name__} has no param {key!r}",
                     self.loc(*base, key, key=True), f"nodes.{name}.params.{key}", hint)
        try:
            node.params = model.model_validate({k: v for k, v in raw.items() if k not in unknown})
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
                    got = f" (got {err['input']!r})" if "input" in err and err["type"] != "value_error" else ""
                    self.add("invalid-param", msg[:1].lower() + msg[1:] + got,
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
        if not callable(getattr(node.cls, "on_join", None)):
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

    # -------------------------------------------------------------- placement and models

    def check_pins(self, node: _Node) -> None:
        cpus = node.entry.spec.cpus
        if cpus is None:
            return
        missing = [c for c in cpus if c not in self.cpus]
        if missing:
            name = node.entry.name
            self.add("pin-range", f"core{'s' * (len(missing) > 1)} {format_cpus(missing)} "
                     f"do{'es' * (len(missing) == 1)} not exist on this machine (cores: {format_cpus(self.cpus)})",
                     self.loc("nodes", name, "cpus"), f"nodes.{name}.cpus",
                     f"pin within {format_cpus(self.cpus)}, or move machine-specific pins into a profile "
                     "and select it with --profile")

    def check_model(self, node: _Node) -> None:
        model = node.entry.spec.model
        name = node.entry.name
        if model is None:
            if node.cls is not None and getattr(node.cls, "needs_model", False):
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
        check = getattr(node.cls, "check_model", None)
        if not (self.models and callable(check) and node.params is not None):
            return
        for code, message, hint in check(node.params, self.model_plan(node)):
            self.add(code, message, self.key_loc(("nodes", name, "model"), ("nodes", name)), f"nodes.{name}.model",
                     hint)

    @staticmethod
    def model_plan(node: _Node) -> ModelPlan | None:
        model = node.entry.spec.model
        return None if model is None else plan_model(model, node.entry.base_dir, node.entry.spec.gpu)

    # -------------------------------------------------------------- connections

    def ref_loc(self, name: str, port: str, index: int) -> Location | None:
        base = ("nodes", name, "inputs", port)
        for path in (base + ("from", index), base + ("from",), base + (index,), base):
            if path in self.srcmap.values:
                return self.srcmap.values[path]
        return self.srcmap.at(base)

    def connect(self, node: _Node) -> None:
        name = node.entry.name
        for port, spec in node.entry.spec.inputs.items():
            declared: Input | None = node.ports.inputs.get(port) if node.ports else None
            for i, ref in enumerate(spec.from_):
                where = self.ref_loc(name, port, i)
                path = f"nodes.{name}.inputs.{port}"
                target, _, out_port = ref.removeprefix("/").rpartition(".")
                replica = None
                match = _REPLICA_RE.match(target)
                if match and match["base"] in self.graph.nodes:
                    target, replica = match["base"], int(match["index"])
                if target not in self.graph.nodes:
                    if not self.graph.is_broken(target):
                        self.add("unknown-node", f"no node {target!r} (in {ref!r})", where, path,
                                 _choices(target, self.graph.nodes, "nodes"))
                    continue
                producer = self.nodes[target]
                if replica is not None and replica >= len(producer.instances):
                    self.add("unknown-node", f"node {target!r} has {len(producer.instances)} "
                             f"replica(s); there is no {target}[{replica}]", where, path,
                             f"use {target}.{out_port} to take every replica")
                    continue
                out_decl: Output | None = None
                if producer.ports is not None:
                    out_decl = producer.ports.outputs.get(out_port)
                    if out_decl is None:
                        self.add("unknown-port", f"node {target!r} has no output {out_port!r}", where, path,
                                 _choices(out_port, producer.ports.outputs, "outputs"))
                        continue
                if out_decl is not None and declared is not None:
                    bad = check_types(out_decl.type, declared.type)
                    if bad:
                        code, reason = bad
                        self.add(code, f"{target}.{out_port} sends {describe_type(out_decl.type)}, "
                                 f"but {name}.{port} takes {describe_type(declared.type)}: {reason}",
                                 where, path, "connect a port of the matching type, or convert it "
                                 "in a node between them")
                        continue
                type_text = describe_type(out_decl.type if out_decl is not None else Any)
                self.edges.append(_Edge(target, out_port, name, port, replica, type_text, spec.feedback))

    def template_graph(self) -> nx.MultiDiGraph:
        graph = nx.MultiDiGraph()
        graph.add_nodes_from(self.nodes)
        for e in self.edges:
            graph.add_edge(e.src, e.dst, key=(e.src_port, e.dst_port), edge=e)
        return graph

    def check_cycles(self, graph: nx.MultiDiGraph) -> None:
        forward = nx.DiGraph()
        forward.add_nodes_from(graph)
        forward.add_edges_from((e.src, e.dst) for e in self.edges if not e.feedback)
        for component in nx.strongly_connected_components(forward):
            sub = forward.subgraph(component)
            if len(component) == 1 and not sub.has_edge(*(2 * list(component))):
                continue
            start = min(component, key=list(self.nodes).index)
            cycle = nx.find_cycle(sub, source=start)
            names = [u for u, _ in cycle] + [cycle[0][0]]
            last_src, last_dst = cycle[-1]
            edge = next(e for e in self.edges if e.src == last_src and e.dst == last_dst and not e.feedback)
            index = self.graph.nodes[edge.dst].spec.inputs[edge.dst_port].from_
            ref_i = next((i for i, r in enumerate(index) if r.removeprefix("/").startswith(edge.src)), 0)
            self.add("cycle", f"these nodes form a loop: {' -> '.join(names)}",
                     self.ref_loc(edge.dst, edge.dst_port, ref_i), f"nodes.{edge.dst}.inputs.{edge.dst_port}",
                     f"if the loop is intended, mark one input on it `feedback: true` "
                     f"(e.g. {edge.dst}.inputs.{edge.dst_port})")

    def check_unused(self, graph: nx.MultiDiGraph) -> None:
        if self.issues.has_errors:
            return  # a broken node or reference may be the missing consumer: warn once it is fixed
        used = {(e.src, e.src_port) for e in self.edges}
        for name, node in self.nodes.items():
            if node.ports is None:
                continue
            for port in node.ports.outputs:
                out = node.entry.spec.outputs.get(port)
                if (name, port) in used or (out is not None and out.port is not None):
                    continue  # a fixed tcp port is for consumers outside the graph
                self.add("unused-output", f"output {port!r} of {name!r} goes nowhere",
                         self.key_loc(("nodes", name, "outputs", port), ("nodes", name)),
                         f"nodes.{name}.outputs.{port}",
                         f"connect it to an input, or give it a fixed tcp port for a consumer outside the graph "
                         f"(outputs: {{{port}: {{port: 5555}}}})",
                         severity="warning")

    # -------------------------------------------------------------- codecs, ports, cores

    def check_codecs(self) -> dict[tuple[str, str], str]:
        """The codec of every output; unknown codecs and codecs that cannot carry the type."""
        chosen: dict[tuple[str, str], str] = {}
        for name, node in self.nodes.items():
            if node.ports is None:
                continue
            for port, decl in node.ports.outputs.items():
                out = node.entry.spec.outputs.get(port)
                if out is not None and out.codec is not None:
                    codec, where = out.codec, self.loc("nodes", name, "outputs", port, "codec")
                elif decl.codec is not None:
                    codec, where = decl.codec, self.loc("nodes", name, "uses")
                elif describe_type(decl.type).startswith("tensor["):
                    codec, where = "tensor", self.loc("nodes", name, "uses")
                else:
                    codec = node.entry.defaults.codec
                    where = self.loc("defaults", "codec") if "/" not in name else None
                    where = where or self.loc("nodes", name, key=True)
                from_defaults = codec == node.entry.defaults.codec and (out is None or out.codec is None) \
                    and decl.codec is None
                path = f"nodes.{name}.outputs.{port}.codec"
                if codec not in codec_names():
                    # an unknown default codec is one mistake, however many outputs use it
                    self.add("unknown-codec", f"no codec {codec!r}", where,
                             "defaults.codec" if from_defaults else path, _choices(codec, codec_names(), "codecs"))
                    continue
                if not get_codec(codec).carries(decl.type):
                    fits = [c for c in codec_names() if get_codec(c).carries(decl.type) and c != "pickle"]
                    self.add("codec-type", f"codec {codec!r} cannot carry {describe_type(decl.type)} "
                             f"({name}.{port})", where, path,
                             f"set outputs.{port}.codec to {' or '.join(fits) or 'pickle'}")
                    continue
                if not get_codec(codec).network_safe and self.output_transport(node, port) == "tcp":
                    self.add("codec-unsafe", f"codec {codec!r} may run code while decoding; it is "
                             "refused on tcp edges", where, path, "use msgpack or tensor on tcp edges")
                    continue
                chosen[(name, port)] = codec
        return chosen

    def output_transport(self, node: _Node, port: str) -> str:
        out = node.entry.spec.outputs.get(port)
        if out is not None and (out.port is not None or out.transport == "tcp"):
            return "tcp"
        if out is not None and out.transport is not None:
            return out.transport
        return node.entry.defaults.transport

    def check_tcp_ports(self) -> None:
        """Each fixed port belongs to one process: the outputs of one node (or of one group)
        may share it, and replica i of a node binds port + i."""
        taken: dict[int, tuple[str, str, Location | None]] = {}  # port -> (process, who, where)
        for name, node in self.nodes.items():
            for port, out in node.entry.spec.outputs.items():
                if out.port is None:
                    continue
                where = self.loc("nodes", name, "outputs", port, "port")
                path = f"nodes.{name}.outputs.{port}.port"
                for i, inst in enumerate(node.instances):  # replica i binds port + i
                    number = out.port + i
                    if number > 65535:
                        self.add("duplicate-port", f"replica {inst} would bind tcp port {number}, past 65535",
                                 where, path, "choose a lower port")
                        break
                    process = node.entry.spec.group or inst
                    if number in taken and taken[number][0] != process:
                        _, other, other_loc = taken[number]
                        also = f" (replica {inst} binds port + {i})" if i else ""
                        self.add("duplicate-port", f"tcp port {number} is also bound by {other}"
                                 + (f" ({other_loc})" if other_loc else "") + also, where, path,
                                 "give each process its own ports (a node's replicas take consecutive ports; "
                                 "outputs of one node or one group may share a port)")
                        break
                    taken.setdefault(number, (process, inst if len(node.instances) > 1 else f"{name}.{port}", where))

    def check_hosts(self) -> None:
        """The nodes of one group run in one process, so on one host: they cannot name two."""
        hosts: dict[str, tuple[str, str]] = {}  # group -> (host, the node that named it first)
        for name, node in self.nodes.items():
            group, host = node.entry.spec.group, node.entry.spec.host
            if group is None or host is None:
                continue
            first = hosts.setdefault(group, (host, name))
            if first[0] != host:
                self.add("host-conflict", f"{name!r} is in group {group!r} with {first[1]!r}, which runs on host "
                         f"{first[0]!r}, but names host {host!r}", self.loc("nodes", name, "host"),
                         f"nodes.{name}.host", "a group is one process: give its nodes one host, or move this "
                         "node out of the group")

    def check_delivery(self) -> None:
        for name, node in self.nodes.items():
            for port, inp in node.entry.spec.inputs.items():
                delivery = inp.delivery or node.entry.defaults.delivery
                policy = inp.policy or node.entry.defaults.policy
                if delivery == "at-least-once" and policy != "block":
                    where = self.loc("nodes", name, "inputs", port, "delivery") if inp.delivery else \
                        self.loc("nodes", name, "inputs", port)
                    self.add("bad-delivery", f"at-least-once delivery needs policy block on input {port!r} "
                             f"(it is {policy!r}): only a blocking edge can hold what it sent", where,
                             f"nodes.{name}.inputs.{port}.delivery", "set policy: block on this input")

    def check_security(self) -> SecurityPlan:
        """CURVE's key directory, and binds beyond loopback: those need CURVE or an explicit
        ``security.insecure``."""
        sec = self.graph.security
        curve_dir: str | None = None
        key = sec.key
        if sec.curve is not None:
            directory = (self.graph.base_dir / sec.curve).resolve()
            key, problems = check_key_dir(directory, sec.key, _display(directory))
            for problem in problems:
                self.add("bad-key", problem, self.loc("security", "curve"), "security.curve",
                         f"`dmnflow keys generate {sec.curve}` writes a keypair (its secret file mode 0600)")
            curve_dir = str(directory)
        if sec.curve is None and not sec.insecure:
            for name, node in self.nodes.items():
                for port in (node.ports.outputs if node.ports else {}):
                    if self.output_transport(node, port) != "tcp":
                        continue
                    out = node.entry.spec.outputs.get(port)
                    host = (out.host if out and out.host else None) or node.entry.defaults.host
                    if not _loopback(host):
                        written = out is not None and out.host is not None
                        where = self.loc("nodes", name, "outputs", port, "host") if written else \
                            self.loc("defaults", "host")
                        self.add("insecure-bind", f"{name}.{port} would bind tcp on {host} without CURVE: any "
                                 "host that reaches it could read the stream and send it frames", where,
                                 f"nodes.{name}.outputs.{port}.host" if written else "defaults.host",
                                 "add `security: {curve: keys/}` (dmnflow keys generate keys/), bind 127.0.0.1, "
                                 "or say `security: {insecure: true}` if the network is yours alone")
        return SecurityPlan(curve=curve_dir, key=key or None, insecure=sec.insecure)

    def check_drivers(self) -> None:
        """A graph whose data nothing starts ends at once, having sent nothing: say so."""
        if self.issues.has_errors or not self.nodes or any(n.cls is None for n in self.nodes.values()):
            return
        forward = {e.dst for e in self.edges if not e.feedback}
        for node in self.nodes.values():
            spec = node.entry.spec
            if node.cls.is_source() or (spec.timers and node.entry.name not in forward):  # type: ignore[union-attr]
                return  # a source, or a node its timer drives (no input that ends it)
        first = next(iter(self.nodes))
        self.add("no-driver", "nothing sends the first message: the graph has no source (a node with `run`) "
                 "and no timer on a node without inputs that end it, so launched it sends nothing (its nodes "
                 "wait until it is stopped)",
                 self.key_loc(("nodes", first)), "nodes",
                 "add a source, or a timer on a node whose inputs are all `feedback: true` (it then runs until "
                 "the graph is stopped)", severity="warning")

    def check_busy_cores(self) -> None:
        on_core: dict[int, list[str]] = {}
        for node in self.nodes.values():
            spec = node.entry.spec
            busy = spec.busy if spec.busy is not None else bool(node.cls and node.cls.busy)
            if busy and spec.cpus is not None and len(spec.cpus) == 1:
                on_core.setdefault(spec.cpus[0], []).extend(node.instances)
        for core, names in sorted(on_core.items()):
            if len(names) > 1:
                last = names[-1].split("[")[0]
                self.add("pin-shared", f"busy nodes {', '.join(names)} are all pinned to core {core}; "
                         "they will take turns on it", self.loc("nodes", last, "cpus"), f"nodes.{last}.cpus",
                         "pin busy nodes to different cores, or mark one `busy: false`", severity="warning")

    # -------------------------------------------------------------- the plan

    def build_plan(self, codecs: dict[tuple[str, str], str], security: SecurityPlan) -> Plan:
        order = {name: i for i, name in enumerate(self.nodes)}
        instances = nx.DiGraph()
        for node in self.nodes.values():
            instances.add_nodes_from(node.instances)
        inst_edges: list[tuple[str, str, _Edge]] = []
        for e in self.edges:
            producers = self.nodes[e.src].instances
            if e.replica is not None:
                producers = [producers[e.replica]]
            for src in producers:
                for dst in self.nodes[e.dst].instances:
                    inst_edges.append((src, dst, e))
                    if not e.feedback:
                        instances.add_edge(src, dst)
        topo = list(nx.lexicographical_topological_sort(
            instances, key=lambda n: (order[_template(n)], n)))
        process_of = {inst: (node.entry.spec.group or inst) for node in self.nodes.values()
                      for inst in node.instances}

        # every instance edge gets an id, a transport, a pattern and a bind
        edge_plans: list[EdgePlan] = []
        binds: dict[tuple[str, str], dict[tuple[str, str, str], list[int]]] = {}
        for i, (src, dst, e) in enumerate(sorted(inst_edges, key=lambda t: (
                topo.index(t[0]), t[2].src_port, topo.index(t[1]), t[2].dst_port))):
            consumer = self.nodes[e.dst]
            inp = consumer.entry.spec.inputs[e.dst_port]
            policy = inp.policy or consumer.entry.defaults.policy
            producer = self.nodes[e.src]
            fixed = producer.entry.spec.outputs.get(e.src_port)
            transport = "inproc" if process_of[src] == process_of[dst] else \
                self.output_transport(producer, e.src_port)
            share = len(consumer.instances) > 1 and consumer.entry.spec.dispatch == "share"
            if transport == "tcp" and fixed is not None and fixed.port is not None:
                pattern, target = "stream", ""  # the fixed port carries every edge of the output
            else:
                pattern = "push" if policy == "block" or share else "pub"
                # a PUB serves all subscribers; a PUSH serves one consumer, or one replica set
                target = "" if pattern == "pub" else (e.dst if share else dst) + "." + e.dst_port
            binds.setdefault((src, e.src_port), {}).setdefault((transport, pattern, target), []).append(i)
            edge_plans.append(EdgePlan(
                id=i, src=src, src_port=e.src_port, dst=dst, dst_port=e.dst_port, type=e.type,
                codec=codecs[(e.src, e.src_port)], transport=transport, endpoint="", bind="", pattern=pattern,
                policy=policy, queue=inp.queue or consumer.entry.defaults.queue, topics=inp.topics,
                feedback=e.feedback, delivery=inp.delivery or consumer.entry.defaults.delivery,
                group=f"{e.dst}.{e.dst_port}" if share else None))

        bind_of: dict[int, tuple[str, str]] = {}  # edge -> (bind id, endpoint)
        counters: dict[str, int] = {}  # bind id -> its counter slot
        node_plans: list[NodePlan] = []
        for inst in topo:
            node = self.nodes[_template(inst)]
            entry, spec = node.entry, node.entry.spec
            assert node.ports is not None and node.cls is not None and node.params is not None
            outputs = []
            for port, decl in node.ports.outputs.items():
                out = spec.outputs.get(port)
                groups = binds.get((inst, port), {})
                fixed = out.port if out is not None else None
                if fixed is not None and len(node.instances) > 1:
                    fixed += node.instances.index(inst)  # replicas take consecutive ports
                if fixed is not None and not any(k[1] == "stream" for k in groups):
                    # a fixed port with no consumer in another process: bound anyway, for clients outside
                    groups = {("tcp", "stream", ""): [], **groups}
                elif not groups:
                    groups = {(self.output_transport(node, port), "pub", ""): []}
                hwm = out.queue if out and out.queue else entry.defaults.queue
                coalesce = _coalesce_plan(out.coalesce if out and out.coalesce is not None
                                          else entry.defaults.coalesce)
                bind_plans = []
                for (transport, pattern, target), ids in groups.items():
                    endpoint = self.endpoint(inst, port, transport, pattern, target, node,
                                             fixed if pattern == "stream" else None)
                    if pattern == "stream":  # one socket per port and process: outputs may share it
                        bind_id = f"{process_of[inst]}@{endpoint.removeprefix('tcp://')}"
                        # a block edge's credit (its queue) never fills its pipe: libzmq learns what the
                        # reader took only every half pipe, so the pipe holds twice the credit
                        window = max([edge_plans[e].queue for e in ids], default=hwm)
                        send_hwm = max(hwm, 2 * window + 64)
                    else:
                        send_hwm = hwm
                        bind_id = f"{inst}.{port}/{pattern}" + (f"/{target}" if target else "") + f"/{transport}"
                    counter = counters.setdefault(bind_id, len(counters))
                    # inside one process the consumer runs in the producer's own loop: a bounded queue
                    # there could only deadlock (the producer waiting for a reader that cannot run)
                    # push: bursts coalesce, except on at-least-once edges (each record is resent alone)
                    merged = coalesce if pattern == "push" and not any(
                        edge_plans[e].delivery == "at-least-once" for e in ids) else None
                    bound = 0 if transport == "inproc" else push_hwm(hwm, merged) if pattern == "push" else send_hwm
                    for edge_id in ids:
                        bind_of[edge_id] = (bind_id, endpoint)
                    bind_plans.append(BindPlan(id=bind_id, counter=counter, endpoint=endpoint, transport=transport,
                                               pattern=pattern, hwm=bound, edges=ids, coalesce=merged))
                codec = codecs[(entry.name, port)]
                outputs.append(OutputPlan(
                    port=port, type=describe_type(decl.type), codec=codec,
                    compress_above=(out.compress_above if out and out.compress_above is not None
                                    else entry.defaults.compress_above) if get_codec(codec).compressible else None,
                    binds=bind_plans,
                    shm_above=entry.defaults.shm_above if get_codec(codec).shm else None,
                    shm_slots=out.shm_slots if out and out.shm_slots else entry.defaults.shm_slots,
                    room_poll_s=entry.defaults.room_poll))
            restart = spec.restart or entry.defaults.restart
            node_plans.append(NodePlan(
                name=inst, spec_name=entry.name, uses=spec.uses, params=node.params.model_dump(mode="json"),
                layer=spec.layer, process=process_of[inst], cpus=spec.cpus or [], gpu=spec.gpu, host=spec.host,
                resources=spec.resources,
                replica=None if len(node.instances) == 1 else node.instances.index(inst),
                replicas=len(node.instances), restart=RestartPlan(
                    policy=restart.policy, max_restarts=restart.max_restarts, backoff_s=restart.backoff,
                    backoff_max_s=restart.backoff_max),
                busy=spec.busy if spec.busy is not None else node.cls.busy, source=node.cls.is_source(),
                model=self.model_plan(node),
                join=None if spec.join is None else JoinPlan(inputs=spec.join.inputs, timeout_s=spec.join.timeout),
                timers=spec.timers, env=list(node.cls.environment(node.params)),
                inputs=[], outputs=outputs, loc=str(self.loc("nodes", entry.name, key=True) or entry.name)))

        edge_plans = [e.model_copy(update={"bind": bind_of[e.id][0], "endpoint": bind_of[e.id][1]})
                      for e in edge_plans]
        bind_by_id = {b.id: b for n in node_plans for o in n.outputs for b in o.binds}
        by_input: dict[tuple[str, str], list[EdgePlan]] = {}
        for e in edge_plans:
            by_input.setdefault((e.dst, e.dst_port), []).append(e)
        final_nodes = []
        for plan_node in node_plans:
            node = self.nodes[plan_node.spec_name]
            inputs = []
            for port, inp in node.entry.spec.inputs.items():
                edges = by_input.get((plan_node.name, port), [])
                declared = node.ports.inputs[port] if node.ports else None
                defaults = node.entry.defaults
                queue = inp.queue or defaults.queue
                inputs.append(InputPlan(
                    port=port, type=describe_type(declared.type if declared else Any),
                    policy=inp.policy or defaults.policy,
                    queue=queue, topics=inp.topics, feedback=inp.feedback,
                    batch=BatchPlan(max=inp.batch.max, wait_s=inp.batch.wait) if inp.batch else None,
                    connects=[ConnectPlan(edge=e.id, bind=e.bind, node=e.src, port=e.src_port, endpoint=e.endpoint,
                                          transport=e.transport, pattern=e.pattern,
                                          hwm=_receive_hwm(e, queue, bind_by_id[e.bind])) for e in edges],
                    delivery=inp.delivery or defaults.delivery,
                    max_bytes=inp.max_message or defaults.max_message, read_batch=defaults.read_batch))
            final_nodes.append(plan_node.model_copy(update={"inputs": inputs}))

        processes: dict[str, list[str]] = {}
        for inst in topo:
            processes.setdefault(process_of[inst], []).append(inst)
        process_plans = [ProcessPlan(name=p, nodes=members, cpus=sorted({
            c for m in members for c in (self.nodes[_template(m)].entry.spec.cpus or [])}))
            for p, members in processes.items()]
        return Plan(graph=self.graph.name, file=self.graph.file, profile=self.graph.profile,
                    machine_cpus=self.cpus, nodes=final_nodes, edges=edge_plans, processes=process_plans,
                    warnings=[i.to_dict() for i in self.issues.issues if not i.is_error], security=security,
                    budgets=plan_budgets(self.nodes, edge_plans, self.loc,
                                         {name: node.instances for name, node in self.nodes.items()}))

    def endpoint(self, inst: str, port: str, transport: str, pattern: str, target: str, node: _Node,
                 fixed: int | None) -> str:
        suffix = "" if pattern == "pub" else "." + _safe(target)
        if transport == "inproc":
            return f"inproc://{inst}.{port}{suffix}"
        if transport == "ipc":
            name = f"{_safe(inst)}.{port}{suffix}"
            if len(name) > 60:  # unix socket paths are limited to ~107 bytes
                name = "e" + hashlib.sha1(name.encode()).hexdigest()[:16]
            return f"ipc://{RUN_DIR}/{name}"
        out = node.entry.spec.outputs.get(port)
        host = (out.host if out and out.host else None) or node.entry.defaults.host
        return f"tcp://{host}:{fixed if fixed is not None else '*'}"


# ---------------------------------------------------------------- small helpers


def plan_model(model: ModelSpec, base_dir: Path, gpu: int | None = None) -> ModelPlan:
    """A `model:` block as a worker needs it: the path made absolute from the YAML's directory."""
    return ModelPlan(path=str((base_dir / model.path).resolve()), device=model.device, dtype=model.dtype,
                     cuda_graphs=model.cuda_graphs, version=model.version, gpu=gpu)


def _display(path: Path) -> str:
    """A path as a person would type it: relative to the working directory when inside it."""
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _loopback(host: str) -> bool:
    """Whether a bind address stays on this machine (``localhost``, 127.0.0.0/8, ::1)."""
    if host in ("localhost", "::1", "[::1]"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # an interface name or a host name: not known to be local


def _template(instance: str) -> str:
    match = _REPLICA_RE.match(instance)
    return match["base"] if match else instance


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def _choices(word: str, options: Any, what: str) -> str:
    names = sorted(options)
    near = difflib.get_close_matches(word, names, n=1, cutoff=0.6)
    if near:
        return f"did you mean {near[0]!r}?"
    return f"{what} are {', '.join(repr(n) for n in names)}" if names else f"there are no {what}"


def _field_hint(model: type[BaseModel], key: str) -> str:
    info = model.model_fields.get(key)
    if info is None:
        return ""
    kind = getattr(info.annotation, "__name__", str(info.annotation))
    doc = f": {info.description}" if info.description else ""
    return f"{key} is {kind}{doc}"


def _coalesce_plan(spec: CoalesceSpec) -> CoalescePlan | None:
    if not spec.enabled:
        return None
    return CoalescePlan(records=spec.records, bytes=spec.bytes, record_max=spec.record_max,
                        gap_ns=round(spec.gap * 1e9), max_age_ns=round(spec.max_age * 1e9))


def _receive_hwm(edge: EdgePlan, queue: int, bind: BindPlan) -> int:
    """The consumer socket's high-water mark, in ZeroMQ messages, for ``queue`` records: a
    pipe inside one process is unbounded (a bound there could only deadlock); a stream's
    reader holds its credit window and the control traffic on top."""
    if edge.transport == "inproc":
        return 0
    if edge.pattern == "push":
        return push_hwm(queue, bind.coalesce)
    return queue + 64 if edge.pattern == "stream" else queue
