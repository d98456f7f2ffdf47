"""The graph file: its pydantic schema, and loading it with every value's file:line:col.

Loading goes, per file: parse YAML (keeping locations) -> overlay the chosen profile ->
apply ``--set`` overrides -> substitute ``${vars.x}`` / ``${env:NAME:-default}`` ->
validate against the schema -> load ``include:``s, each in its own scope, and put their
nodes under ``<include-name>/``. Problems are collected, never raised one at a time,
so one run of ``dmnflow validate`` shows them all. Unknown keys are errors at every depth.

Replicas are expanded by the compiler, not here: a YAML node stays one entry, so its
mistakes are reported once.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import re
import typing
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from ..errors import Issue, IssueList, Location

__all__ = [
    "BatchSpec",
    "CoalesceSpec",
    "BudgetSpec",
    "Defaults",
    "GraphSpec",
    "IncludeSpec",
    "InputSpec",
    "JoinSpec",
    "LoadedGraph",
    "ModelSpec",
    "NodeEntry",
    "NodeSpec",
    "OutputSpec",
    "Override",
    "PathBudgetSpec",
    "RestartSpec",
    "SecuritySpec",
    "SourceMap",
    "json_schema",
    "load_graph",
    "load_overlay",
    "format_cpus",
    "parse_cpus",
    "parse_duration",
    "parse_size",
    "parse_yaml",
    "validate_section",
]

Path_ = tuple[str | int, ...]
NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
USES_RE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")

# ---------------------------------------------------------------- units and pins

_DURATION_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ns|us|µs|ms|s|m|h)?\s*$")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(B|KB|KiB|MB|MiB|GB|GiB)?\s*$")
_SIZE_UNITS = {"B": 1, "KB": 10**3, "KiB": 2**10, "MB": 10**6, "MiB": 2**20, "GB": 10**9, "GiB": 2**30}


def parse_duration(value: Any) -> float:
    """Seconds from ``"200us"``, ``"1.5ms"``, ``"5s"``, ``"2m"`` or a plain number of seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as '200us', '5ms' or '2s'")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION_RE.match(str(value))
        if not match:
            raise ValueError(f"{value!r} is not a duration; write e.g. '200us', '5ms', '2s', '1m'")
        seconds = float(match[1]) * _DURATION_UNITS[match[2] or "s"]
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def parse_size(value: Any) -> int:
    """Bytes from ``"64KiB"``, ``"1MB"`` or a plain number of bytes."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as '64KiB' or 4096")
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE_RE.match(str(value))
        if not match:
            raise ValueError(f"{value!r} is not a size; write e.g. 4096, '64KiB', '1MB'")
        size = int(float(match[1]) * _SIZE_UNITS[match[2] or "B"])
    if size < 0:
        raise ValueError("a size cannot be negative")
    return size


def parse_cpus(value: Any) -> list[int]:
    """Core numbers from ``3``, ``"0-3"``, ``"0,2,4-5"`` or ``[0, "2-3"]``, sorted, unique."""
    items: Sequence[Any] = value if isinstance(value, list | tuple) else [value]
    cores: set[int] = set()
    for item in items:
        if isinstance(item, bool):
            raise ValueError("cpus are core numbers such as 0, '0-3' or [0, 2]")
        parts = [str(item)] if isinstance(item, int) else [p.strip() for p in str(item).split(",") if p.strip()]
        for part in parts:
            match = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
            if not match:
                raise ValueError(f"{part!r} is not a core or a range of cores (e.g. 2 or '0-3')")
            lo, hi = int(match[1]), int(match[2] if match[2] is not None else match[1])
            if hi < lo:
                raise ValueError(f"range {part!r} runs backwards; write '{hi}-{lo}'")
            cores.update(range(lo, hi + 1))
    if not cores:
        raise ValueError("cpus is empty; leave it out to let the OS place the node")
    return sorted(cores)


def format_cpus(cores: Sequence[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2,5"``: cores the way the YAML writes them (``""`` for none)."""
    parts: list[list[int]] = []
    for core in sorted(set(cores)):
        if parts and core == parts[-1][-1] + 1:
            parts[-1].append(core)
        else:
            parts.append([core])
    return ",".join(str(p[0]) if len(p) == 1 else f"{p[0]}-{p[-1]}" for p in parts)


Duration = Annotated[float, BeforeValidator(parse_duration, json_schema_input_type=str | float)]
Size = Annotated[int, BeforeValidator(parse_size, json_schema_input_type=str | int)]
CpuSet = Annotated[list[int], BeforeValidator(parse_cpus, json_schema_input_type=int | str | list[int | str])]

# ---------------------------------------------------------------- the schema


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


Policy = Literal["drop", "block", "latest"]
Delivery = Literal["at-most-once", "at-least-once"]


class RestartSpec(_Spec):
    """What the supervisor does when a node's process dies."""

    policy: Literal["never", "on-failure", "always"] = "on-failure"
    max_restarts: int = Field(5, ge=0, description="give up after this many restarts")
    backoff: Duration = Field(0.1, description="first wait before a restart; doubles each time")
    backoff_max: Duration = Field(5.0, description="the longest wait between restarts")


def _restart_shorthand(value: Any) -> Any:
    return {"policy": value} if isinstance(value, str) else value


Restart = Annotated[RestartSpec, BeforeValidator(_restart_shorthand, json_schema_input_type=str | RestartSpec)]


class CoalesceSpec(_Spec):
    """Bursts on push edges go several records to one ZeroMQ message (docs/runtime.md,
    "Coalescing"): a record that follows the previous one within ``gap`` waits for the next,
    until ``records`` or ``bytes`` are waiting or the oldest is ``max_age`` old."""

    records: int = Field(64, ge=2, le=4096, description="records in one message at most")
    bytes: Size = Field(64 << 10, ge=1, description="payload bytes in one message at most")
    record_max: Size = Field(8 << 10, ge=1, description="larger records travel alone")
    gap: Duration = Field(20e-6, ge=0, description="a record this soon after the previous one is in a burst")
    max_age: Duration = Field(200e-6, gt=0, description="the oldest waiting record goes at the next emit after this")
    enabled: bool = Field(True, description="false (what `coalesce: false` means): every record alone")


def _coalesce_switch(value: Any) -> Any:
    """``coalesce: false`` / ``true``: off, or the default figures."""
    if value is False:
        return {"enabled": False}
    return {} if value is True else value


Coalesce = Annotated[CoalesceSpec, BeforeValidator(_coalesce_switch, json_schema_input_type=CoalesceSpec | bool)]


class Defaults(_Spec):
    """Graph-wide defaults; each node, input and output may override them."""

    transport: Literal["ipc", "tcp"] = Field("ipc", description="between processes on one host")
    host: str = Field("127.0.0.1", description="address tcp outputs bind to")
    codec: str = Field("msgpack", description="codec of outputs whose port names none")
    compress_above: Size = Field(1024, description="msgpack+lz4 compresses payloads above this")
    shm_above: Size | None = Field(2**20, description="tensors this large on same-host push edges go "
                                   "through shared memory; none: always the socket")
    queue: int = Field(1000, ge=1, description="records buffered per edge (the plan shows the ZeroMQ high-water "
                       "mark it becomes)")
    coalesce: Coalesce = Field(default_factory=CoalesceSpec, description="push edges: records of a burst share "
                               "a message; false: each alone")
    shm_slots: int = Field(16, ge=1, le=4096, description="shared-memory slots per output (large payloads in "
                           "flight at once before emit falls back to the socket)")
    read_batch: int = Field(256, ge=1, description="messages read from one input before the worker looks at the "
                            "others")
    room_poll: Duration = Field(0.01, gt=0, description="a blocked output looks at its consumers again at least "
                                "this often")
    policy: Policy = Field("drop", description="when a queue is full: drop (counted), block, or keep latest")
    delivery: Delivery = Field("at-most-once", description="at-least-once: a block edge's producer keeps each "
                               "record until its consumer has handled it, and resends it to a restarted one")
    max_message: Size = Field(256 * 2**20, ge=1, description="the largest message an input accepts; larger "
                              "ones are refused (counted as decode errors) before they are decoded")
    restart: Restart = Field(default_factory=RestartSpec)


class BatchSpec(_Spec):
    """Hand a handler up to ``max`` queued messages at once, waiting at most ``wait``."""

    max: int = Field(ge=1)
    wait: Duration = 200e-6


class BudgetSpec(_Spec):
    """How long a message may take: each quantile is checked over every window of the run
    (a few seconds), ``max`` against every message (docs/observe.md, "Latency budgets")."""

    p50: Duration | None = Field(None, description="the median may not exceed this, e.g. '50us'")
    p90: Duration | None = Field(None, description="the 90th percentile may not exceed this")
    p99: Duration | None = Field(None, description="the 99th percentile may not exceed this")
    max: Duration | None = Field(None, description="no message may take longer (counted per message)")


class PathBudgetSpec(BudgetSpec):
    """A budget on the path from a source to this node: from the moment the data entered the
    graph (the source's emit) to its arrival here."""

    from_: str = Field(alias="from", description="the source node the path starts at")


def _input_shorthand(value: Any) -> Any:
    if isinstance(value, str | list):
        return {"from": value}
    return value


def _one_or_many(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


class InputSpec(_Spec):
    """Where an input's messages come from and how they queue."""

    from_: Annotated[list[str], BeforeValidator(_one_or_many, json_schema_input_type=str | list[str])] = Field(
        alias="from", description="producer 'node.port' (or a list of them)")
    topics: Annotated[list[str], BeforeValidator(_one_or_many, json_schema_input_type=str | list[str])] = Field(
        default_factory=list, description="topic prefixes to receive; empty receives all")
    queue: int | None = Field(None, ge=1)
    policy: Policy | None = None
    feedback: bool = Field(False, description="this input closes a loop; allowed in a cycle")
    batch: BatchSpec | None = None
    delivery: Delivery | None = None
    max_message: Size | None = Field(None, ge=1, description="the largest message this input accepts")
    budget: BudgetSpec | None = Field(None, description="latency budget of this input's edges (send to receive)")

    @field_validator("from_")
    @classmethod
    def _refs(cls, refs: list[str]) -> list[str]:
        if not refs:
            raise ValueError("name at least one producer as 'node.port'")
        for ref in refs:
            if "." not in ref.lstrip("/"):
                raise ValueError(f"{ref!r} is not 'node.port' (e.g. 'market.ticks')")
        return refs


Input = Annotated[InputSpec, BeforeValidator(_input_shorthand, json_schema_input_type=str | list[str] | InputSpec)]


class JoinSpec(_Spec):
    """Hand the node one call per event time, with a value from each of these inputs."""

    inputs: list[str] = Field(min_length=2, description="the inputs to align")
    by: Literal["event_time"] = "event_time"
    timeout: Duration | None = Field(None, description="give up on an incomplete event time after "
                                     "this long (live graphs); none waits for the data or its end")


class OutputSpec(_Spec):
    """How an output is sent: codec, compression, transport, fixed port."""

    codec: str | None = None
    compress_above: Size | None = None
    transport: Literal["ipc", "tcp"] | None = None
    port: int | None = Field(None, ge=1, le=65535, description="fixed tcp port (implies transport: tcp): the "
                             "output's stream for in-graph consumers and outside subscribers alike; outputs "
                             "of one process may share a port")
    host: str | None = Field(None, description="address the tcp output binds to (default: defaults.host); "
                             "beyond loopback it needs security.curve (or security.insecure)")
    queue: int | None = Field(None, ge=1)
    coalesce: Coalesce | None = None
    shm_slots: int | None = Field(None, ge=1, le=4096)


class ModelSpec(_Spec):
    """The model file a model node runs, and where and how it runs."""

    path: str = Field(description="TorchScript (.pt) or torch.export (.pt2) file, relative to this YAML")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$",
                        description="auto: the node's `gpu:` (or the first GPU) when CUDA is there, else cpu")
    dtype: Literal["float32", "float16", "bfloat16"] = Field("float32", description="the precision it runs in")
    cuda_graphs: bool = Field(False, description="capture CUDA graphs for static shapes (CUDA only)")
    version: str | None = Field(None, description="the model_version its outputs carry; default: "
                                "the file's name and the start of its SHA-256")


class NodeSpec(_Spec):
    """One node of the graph, as written in YAML."""

    uses: str = Field(description="the node class, 'package.module:Class'")
    description: str = ""
    params: dict[str, Any] = Field(default_factory=dict)
    inputs: dict[str, Input] = Field(default_factory=dict)
    outputs: dict[str, OutputSpec] = Field(default_factory=dict)
    layer: str | None = Field(None, description="a label grouping nodes in pictures")
    group: str | None = Field(None, description="nodes of one group share one process (inproc)")
    cpus: CpuSet | None = None
    gpu: int | None = Field(None, ge=0)
    host: str | None = Field(None, min_length=1, description="the ray backend: run on a Ray node whose label "
                             "`host` is this (or whose address or host name is); nodes naming one host share "
                             "one node of it")
    resources: dict[str, float] = Field(default_factory=dict, description="the ray backend: Ray custom resources "
                                        "the node's process needs, e.g. {gpu_box: 1}")
    replicas: int = Field(1, ge=1)
    dispatch: Literal["share", "broadcast"] = Field(
        "share", description="replicas share the inputs' messages, or each gets them all")
    restart: Restart | None = None
    busy: bool | None = Field(None, description="keeps a core busy; overrides the class's flag")
    model: ModelSpec | None = None
    join: JoinSpec | None = None
    timers: dict[str, Duration] = Field(default_factory=dict, description="name: period; calls on_<name>(ctx)")
    budget: PathBudgetSpec | None = Field(None, description="latency budget of the path from a source "
                                          "(`from`) to this node")

    @field_validator("resources")
    @classmethod
    def _resources(cls, resources: dict[str, float]) -> dict[str, float]:
        for name, amount in resources.items():
            if name in ("CPU", "GPU"):
                raise ValueError(f"{name!r} is Ray's own resource, not a custom one: say how many cores with `cpus:` "
                                 "and which GPU with `gpu:`")
            if amount <= 0:
                raise ValueError(f"resource {name!r} needs an amount above zero (got {amount})")
        return resources

    @field_validator("uses")
    @classmethod
    def _uses(cls, uses: str) -> str:
        if not USES_RE.match(uses):
            raise ValueError(f"{uses!r} is not 'package.module:Class' (e.g. 'nodes.basic:Counter')")
        return uses


class IncludeSpec(_Spec):
    """Another graph file whose nodes join this graph under ``<include-name>/``."""

    path: str
    vars: dict[str, Any] = Field(default_factory=dict, description="the included file's vars")
    set: dict[str, Any] = Field(default_factory=dict, description="dotted overrides inside it")


def _include_shorthand(value: Any) -> Any:
    return {"path": value} if isinstance(value, str) else value


Include = Annotated[IncludeSpec, BeforeValidator(_include_shorthand, json_schema_input_type=str | IncludeSpec)]


class SecuritySpec(_Spec):
    """Who may talk to the graph's tcp ports."""

    curve: str | None = Field(None, description="a key directory (`dmnflow keys generate DIR`), relative to "
                              "this file: CURVE on every tcp edge, clients admitted by their public key")
    key: str | None = Field(None, description="this host's keypair in the directory (default: its only "
                            "secret key)")
    insecure: bool = Field(False, description="allow tcp binds beyond loopback without CURVE")


class GraphSpec(_Spec):
    """A dmnflow graph file."""

    graph: str | None = Field(None, description="the graph's name (default: the file name)")
    description: str = ""
    vars: dict[str, Any] = Field(default_factory=dict)
    defaults: Defaults = Field(default_factory=Defaults)
    include: dict[str, Include] = Field(default_factory=dict)
    profiles: dict[str, dict[str, Any]] = Field(default_factory=dict)
    security: SecuritySpec = Field(default_factory=SecuritySpec)
    nodes: dict[str, NodeSpec] = Field(default_factory=dict)


def json_schema() -> dict[str, Any]:
    """JSON Schema of the graph file, for editors. Any value may also be a ``${...}``."""
    schema = GraphSpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "dmnflow graph"
    _allow_substitution(schema)
    return schema


_SUBST_SCHEMA = {"type": "string", "pattern": r"\$\{[^}]+\}"}


def _allow_substitution(schema: Any) -> None:
    """Let every property also be a ``${...}`` string: it is substituted before validation."""
    if isinstance(schema, dict):
        for key in ("properties", "$defs"):
            for name, sub in list(schema.get(key, {}).items()):
                _allow_substitution(sub)
                if key == "properties" and sub.get("type") != "string":
                    schema[key][name] = {"anyOf": [sub, _SUBST_SCHEMA]}
                    for meta in ("description", "default", "title"):
                        if meta in sub:
                            schema[key][name][meta] = sub[meta]
        for key in ("additionalProperties", "items"):
            if isinstance(schema.get(key), dict):
                _allow_substitution(schema[key])
        for key in ("anyOf", "oneOf", "allOf"):
            for sub in schema.get(key, []):
                _allow_substitution(sub)


# ---------------------------------------------------------------- YAML with locations


@dataclass
class SourceMap:
    """Where each value (and each mapping key) of a loaded document was written."""

    values: dict[Path_, Location] = field(default_factory=dict)
    keys: dict[Path_, Location] = field(default_factory=dict)

    def at(self, path: Path_, *, key: bool = False) -> Location | None:
        """The location of ``path``, or of its nearest written ancestor."""
        if key and path in self.keys:
            return self.keys[path]
        for end in range(len(path), -1, -1):
            loc = self.values.get(path[:end])
            if loc is not None:
                return loc
        return None

    def graft(self, other: SourceMap, src: Path_, dst: Path_) -> None:
        """Copy ``other``'s locations under ``src`` to this map under ``dst``."""
        n = len(src)
        for table, into in ((other.values, self.values), (other.keys, self.keys)):
            for path, loc in list(table.items()):
                if path[:n] == src:
                    into[dst + path[n:]] = loc

    def mark(self, path: Path_, loc: Location) -> None:
        """Attribute ``path`` and everything under it to ``loc`` (a ``--set`` argument)."""
        n = len(path)
        for table in (self.values, self.keys):
            for p in [p for p in table if p[:n] == path]:
                del table[p]
        self.values[path] = loc


def _loc(file: str, mark: yaml.Mark) -> Location:
    return Location(file, mark.line + 1, mark.column + 1)


class _TextDates(yaml.SafeLoader):
    """YAML as graph files read it: a date is the text written (`2016-01-01`), not a datetime."""


_TextDates.yaml_implicit_resolvers = {
    first: [(tag, regex) for tag, regex in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}


def parse_yaml(text: str, file: str, issues: IssueList,
               failed: set[Path_] | None = None) -> tuple[Any, SourceMap]:
    """Parse YAML text into plain data plus a SourceMap; syntax errors become issues.

    Mapping keys are taken as written (``on:`` is the name "on", not YAML 1.1's True), and
    so are dates (``start: 2016-01-01`` is the text "2016-01-01", not a ``datetime.date``).
    Paths of values that could not be read are added to ``failed``, so later checks
    do not report them again.
    """
    srcmap = SourceMap()
    loader = _TextDates(text)
    try:
        root = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        loc = _loc(file, mark) if mark else Location(file)
        problem = exc.problem or "invalid YAML"
        context = f" ({exc.context})" if exc.context else ""
        issues.add("yaml-syntax", f"{problem}{context}", loc,
                   hint="check indentation, quotes and ':' on this line and the one above")
        return None, srcmap
    except yaml.YAMLError as exc:
        issues.add("yaml-syntax", str(exc).splitlines()[0], Location(file))
        return None, srcmap
    finally:
        loader.dispose()
    if root is None:
        return None, srcmap

    budget = [_MAX_VALUES]
    ancestors: set[int] = set()

    def _key(key_node: yaml.Node) -> str:
        if isinstance(key_node, yaml.ScalarNode):
            return str(key_node.value)
        return str(loader.construct_object(key_node, deep=True))

    def build(node: yaml.Node, path: Path_) -> Any:
        budget[0] -= 1
        if budget[0] < 0:
            raise _TooLarge(node)
        srcmap.values[path] = _loc(file, node.start_mark)
        if isinstance(node, yaml.MappingNode | yaml.SequenceNode):
            if id(node) in ancestors:
                raise _SelfReference(node)
            ancestors.add(id(node))
            try:
                return build_collection(node, path)
            finally:
                ancestors.discard(id(node))
        try:
            return loader.construct_object(node, deep=True)
        except yaml.constructor.ConstructorError as exc:
            issues.add("yaml-syntax", exc.problem or "cannot read this value", _loc(file, node.start_mark),
                       hint="graph files are plain YAML: no !!python tags")
            if failed is not None:
                failed.add(path)
            return None

    def build_collection(node: yaml.Node, path: Path_) -> Any:
        if isinstance(node, yaml.MappingNode):
            written: set[str] = set()
            for key_node, _ in node.value:  # duplicates among the keys written here, not merged ones
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = _key(key_node)
                if key in written:
                    issues.add("duplicate-key", f"key {key!r} appears twice in this mapping; "
                               "YAML would silently keep only the last",
                               _loc(file, key_node.start_mark), path=_dotted(path + (key,)),
                               hint="remove or rename one of them")
                written.add(key)
            loader.flatten_mapping(node)  # `<<: *anchor` keys first, so written keys win
            out: dict[str, Any] = {}
            for key_node, value_node in node.value:
                key = _key(key_node)
                srcmap.keys[path + (key,)] = _loc(file, key_node.start_mark)
                out[key] = build(value_node, path + (key,))
            return out
        return [build(item, path + (i,)) for i, item in enumerate(node.value)]

    try:
        return build(root, ()), srcmap
    except _SelfReference as exc:
        issues.add("yaml-syntax", "an alias refers to the anchor it is inside of (a value that contains "
                   "itself)", _loc(file, exc.args[0].start_mark), hint="copy the values instead of the alias")
    except _TooLarge as exc:
        issues.add("yaml-syntax", f"the file expands to more than {_MAX_VALUES:,} values (aliases "
                   "repeating aliases?)", _loc(file, exc.args[0].start_mark),
                   hint="a graph file this large is a mistake or an attack; use fewer aliases")
    except yaml.YAMLError as exc:
        issues.add("yaml-syntax", str(exc).splitlines()[0], Location(file))
    return None, srcmap


_MAX_VALUES = 200_000  # a large real graph has a few thousand


class _SelfReference(Exception):
    """A YAML alias inside its own anchor: the value would contain itself."""


class _TooLarge(Exception):
    """The document expands (through aliases) past ``_MAX_VALUES`` values."""


def _dotted(path: Path_) -> str:
    return ".".join(f"[{p}]" if isinstance(p, int) else p for p in path).replace(".[", "[")


def _suggest(word: str, options: Iterator[str] | Sequence[str] | Mapping[str, Any]) -> str:
    """``did you mean 'x'?`` for the closest option, or the list of options when few."""
    choices = sorted(str(o) for o in options)
    near = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if near:
        return f"did you mean {near[0]!r}?"
    if not choices:
        return ""
    shown = ", ".join(repr(c) for c in choices[:12])
    return f"expected one of {shown}{' ...' if len(choices) > 12 else ''}"


# ---------------------------------------------------------------- overrides and profiles


@dataclass(frozen=True)
class Override:
    """One ``path=value`` setting, from ``--set`` or an include's ``set:``."""

    path: tuple[str, ...]
    value: Any
    loc: Location
    text: str

    @classmethod
    def parse(cls, text: str, issues: IssueList) -> Override | None:
        loc = Location(f"--set {text}")
        key, sep, raw = text.partition("=")
        segments = tuple(s.strip() for s in key.split("."))
        if not sep or not key.strip() or not all(segments):
            issues.add("bad-override", f"{text!r} is not KEY=VALUE with a dotted KEY", loc,
                       hint="e.g. --set nodes.counter.params.count=10 or --set vars.count=10")
            return None
        try:
            value = yaml.load(raw, Loader=_TextDates) if raw.strip() else ""  # noqa: S506 - a SafeLoader
        except yaml.YAMLError:
            value = raw
        return cls(segments, value, loc, text)


def load_overlay(path: str | os.PathLike[str]) -> tuple[list[Override], list[Issue]]:
    """An overlay file's settings, in file order: a YAML mapping of dotted keys to values,
    each applied exactly like ``--set KEY=VALUE`` and located where it is written (so a
    mistake is reported in the overlay file, not in the graph). ``dmnflow tune`` writes its
    best trial as one; ``dmnflow launch g.yaml --overlay FILE`` applies it."""
    issues = IssueList()
    file = _display(Path(path))
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        issues.add("file-not-found", f"overlay file {file} does not exist", Location(file),
                   hint="check the path (dmnflow tune writes best.yaml in its output directory)")
        return [], issues.issues
    except (OSError, UnicodeDecodeError) as exc:
        issues.add("file-unreadable", f"cannot read {file}: {exc}", Location(file),
                   hint="an overlay file is UTF-8 YAML text")
        return [], issues.issues
    data, srcmap = parse_yaml(text, file, issues)
    if data is None:
        return [], issues.issues
    if not isinstance(data, dict):
        issues.add("invalid-value", "an overlay file is a mapping of dotted keys to values "
                   "(e.g. `nodes.risk.params.target_vol: 0.1`)", srcmap.at(()))
        return [], issues.issues
    out = []
    for key, value in data.items():
        segments = tuple(s.strip() for s in str(key).split("."))
        loc = srcmap.at((key,), key=True) or Location(file)
        if not all(segments):
            issues.add("bad-override", f"{key!r} is not a dotted key", loc, path=str(key),
                       hint="write it as the KEY of --set KEY=VALUE, e.g. nodes.lstm.params.hidden")
            continue
        out.append(Override(segments, value, loc, f"{key}={value!r}"))
    return out, issues.issues


def _apply_override(data: dict[str, Any], srcmap: SourceMap, ov: Override, issues: IssueList) -> None:
    """Set one dotted path; routes ``nodes.<inc>/<node>...`` into include ``<inc>``'s set.

    An override may only set what exists: a variable the file declares (a misspelt one would
    otherwise be a new variable nothing reads), a node of the file (keys below it are checked
    by the schema and the node's class). Keys it creates are located at the override, so
    their errors point there and not into the graph file.
    """
    path = ov.path
    if path[0] == "profiles":  # applied before overrides: setting one changes nothing
        issues.add("bad-override", "a profile is applied before --set overrides, so setting it changes nothing",
                   ov.loc, path=".".join(path),
                   hint="set the value itself, or choose the profile with --profile")
        return
    if path[0] == "vars" and len(path) >= 2 and not _var_exists(data, srcmap, ov, issues):
        return
    if path[0] == "nodes" and len(path) >= 2:
        name = path[1]
        nodes = data.get("nodes") if isinstance(data.get("nodes"), dict) else {}
        if "/" in name and name not in nodes:
            inc, rest = name.split("/", 1)
            includes = data.get("include") if isinstance(data.get("include"), dict) else {}
            if inc not in includes:
                issues.add("bad-override", f"no include {inc!r} for node {name!r}", ov.loc,
                           path=".".join(path), hint=_suggest(inc, includes))
                return
            entry = includes[inc]
            if isinstance(entry, str):
                entry = includes[inc] = {"path": entry}
            inner = ".".join(("nodes", rest) + path[2:])
            if isinstance(entry, dict):
                entry.setdefault("set", {})[inner] = ov.value
            srcmap.mark(("include", inc, "set", inner), ov.loc)  # each setting keeps its own location
            return
        if name not in nodes:
            issues.add("bad-override", f"no node {name!r} to set {'.'.join(path)} on", ov.loc,
                       path=".".join(path), hint=_suggest(name, nodes))
            return
    target: Any = data
    for depth, seg in enumerate(path[:-1]):
        nxt = target.get(seg) if isinstance(target, dict) else None
        if nxt is None:
            nxt = target[seg] = {}
            srcmap.values[path[: depth + 1]] = srcmap.keys[path[: depth + 1]] = ov.loc  # made by the override
        if not isinstance(nxt, dict):
            issues.add("bad-override", f"{'.'.join(path[: depth + 1])} is not a mapping, "
                       f"so {'.'.join(path)} cannot be set", ov.loc, path=".".join(path))
            return
        target = nxt
    target[path[-1]] = ov.value
    srcmap.mark(path, ov.loc)
    srcmap.keys[path] = ov.loc


def _var_exists(data: dict[str, Any], srcmap: SourceMap, ov: Override, issues: IssueList) -> bool:
    """Whether ``vars.a.b...`` names a declared variable (or a key of a mapping one); reports it if not."""
    current: Any = data.get("vars")
    where = srcmap.at(()) or ov.loc
    for depth, seg in enumerate(ov.path[1:], start=1):
        if isinstance(current, dict) and seg in current:
            current = current[seg]
            continue
        owner = "vars" if depth == 1 else ".".join(ov.path[:depth])
        options = current if isinstance(current, dict) else {}
        what = f"{where.file} has no variable {seg!r}" if depth == 1 else f"{owner} has no {seg!r}"
        hint = _suggest(seg, options) if options else (
            "the file declares no vars" if depth == 1 else f"{owner} is not a mapping")
        issues.add("bad-override", f"{what} to set", ov.loc, path=".".join(ov.path[: depth + 1]), hint=hint)
        return False
    return True


def _merge(base: dict[str, Any], overlay: dict[str, Any], srcmap: SourceMap, src: Path_,
           dst: Path_) -> None:
    """Deep-merge a profile overlay: mappings merge, anything else replaces."""
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value, srcmap, src + (key,), dst + (key,))
        else:
            base[key] = value
            srcmap.mark(dst + (key,), srcmap.at(src + (key,)) or Location(""))
            srcmap.graft(srcmap, src + (key,), dst + (key,))


# ---------------------------------------------------------------- substitution

_SUBST_RE = re.compile(r"\$(\$?)\{([^}]*)\}")
_ENV_RE = re.compile(r"^env:([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?$", re.S)


_FAILED = object()


class _Substituter:
    """Resolves ``${vars.a.b}``, ``${env:NAME}`` and ``${env:NAME:-default}``; ``$${`` escapes.

    A whole-value reference keeps the variable's type (a list stays a list); inside text
    it is formatted in. Variables may refer to other variables; loops are reported.
    """

    def __init__(self, raw_vars: dict[str, Any], srcmap: SourceMap, issues: IssueList,
                 env: Mapping[str, str], unresolved: set[Path_]) -> None:
        self.raw = raw_vars
        self.done: dict[str, Any] = {}
        self.stack: list[str] = []
        self.srcmap = srcmap
        self.issues = issues
        self.env = env
        self.unresolved = unresolved  # paths whose ${...} failed; reported once, where written

    def var(self, name: str, loc: Location | None, path: Path_) -> Any:
        """The variable's value with its own references resolved, or ``_FAILED``."""
        if name in self.done:
            return self.done[name]
        if name in self.stack:
            cycle = " -> ".join(self.stack[self.stack.index(name):] + [name])
            self.issues.add("var-cycle", f"variables refer to each other in a loop: {cycle}", loc,
                            path=_dotted(path), hint="give one of them a plain value")
            return _FAILED
        self.stack.append(name)
        value = self.value(self.raw[name], ("vars", name))
        self.stack.pop()
        if any(p[:2] == ("vars", name) for p in self.unresolved):
            value = _FAILED
        self.done[name] = value
        return value

    def lookup(self, expr: str, loc: Location | None, path: Path_) -> tuple[bool, Any]:
        env = _ENV_RE.match(expr)
        if env:
            name, default = env[1], env[2]
            if name in self.env:
                return True, self.env[name]
            if default is not None:
                return True, default
            self.issues.add("unset-env", f"environment variable {name} is not set", loc,
                            path=_dotted(path),
                            hint=f"export {name}=..., or give a default: ${{env:{name}:-value}}")
            return False, None
        parts = expr.strip().split(".")
        if parts[0] != "vars" or len(parts) < 2 or not all(parts):
            self.issues.add("bad-substitution", f"${{{expr}}} is not ${{vars.NAME}} or ${{env:NAME}}",
                            loc, path=_dotted(path), hint="write ${vars.NAME} or ${env:NAME:-default}")
            return False, None
        if parts[1] not in self.raw:
            self.issues.add("unknown-var", f"no variable {parts[1]!r} in vars", loc,
                            path=_dotted(path), hint=_suggest(parts[1], self.raw))
            return False, None
        value = self.var(parts[1], loc, path)
        if value is _FAILED:
            return False, None  # reported where the variable is defined
        for i, part in enumerate(parts[2:], start=2):
            if isinstance(value, dict) and part in value:
                value = value[part]
            elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
                value = value[int(part)]
            else:
                self.issues.add("unknown-var", f"vars.{'.'.join(parts[1:i])} has no {part!r}", loc,
                                path=_dotted(path))
                return False, None
        return True, value

    def value(self, data: Any, path: Path_) -> Any:
        if isinstance(data, dict):
            return {k: self.value(v, path + (k,)) for k, v in data.items()}
        if isinstance(data, list):
            return [self.value(v, path + (i,)) for i, v in enumerate(data)]
        if not isinstance(data, str) or "${" not in data:
            return data
        loc = self.srcmap.at(path)
        whole = _SUBST_RE.fullmatch(data)
        if whole and not whole[1]:
            ok, value = self.lookup(whole[2], loc, path)
            if ok and whole[2].startswith("env:") and isinstance(value, str):
                with contextlib.suppress(yaml.YAMLError):  # RATE=1000 reads as a number
                    value = yaml.safe_load(value) if value.strip() else value
            if not ok:
                self.unresolved.add(path)
            return value if ok else data

        def repl(match: re.Match[str]) -> str:
            if match[1]:
                return "${" + match[2] + "}"
            ok, value = self.lookup(match[2], loc, path)
            if not ok:
                self.unresolved.add(path)
            return str(value) if ok else match[0]

        return _SUBST_RE.sub(repl, data)


# ---------------------------------------------------------------- loading


@dataclass
class NodeEntry:
    """One YAML node after includes are resolved, with the defaults of its own file."""

    name: str
    spec: NodeSpec
    defaults: Defaults
    base_dir: Path  # relative paths in this node (model files) start here
    invalid: frozenset[str] = frozenset()  # keys dropped for schema errors: checks skip them

    @property
    def path(self) -> Path_:
        return ("nodes", self.name)


@dataclass
class LoadedGraph:
    """A graph file and its includes, validated against the schema, with locations."""

    name: str
    file: str
    profile: str | None
    nodes: dict[str, NodeEntry]
    broken: set[str]  # failed nodes, and "name/" of failed includes: not re-reported when referenced
    srcmap: SourceMap
    issues: list[Issue]
    unresolved: set[str] = field(default_factory=set)  # dotted paths of failed ${...}
    security: SecuritySpec = field(default_factory=lambda: SecuritySpec())  # the top file's; includes' are ignored
    base_dir: Path = field(default_factory=Path)  # the top file's directory: relative paths start here

    def is_broken(self, node: str) -> bool:
        """Whether ``node`` failed to load (or lies in an include that did)."""
        return node in self.broken or any(node.startswith(b) for b in self.broken if b.endswith("/"))


def load_graph(path: str | os.PathLike[str], overrides: Sequence[str | Override] = (), *,
               profile: str | None = None, env: Mapping[str, str] | None = None) -> LoadedGraph:
    """Read a graph file with its includes; problems are collected in ``issues``.

    ``overrides`` are ``--set`` texts (``KEY=VALUE``) or ``Override``s already read, with
    their own locations (an overlay file's, from ``load_overlay``)."""
    issues = IssueList()
    parsed = [o for o in (o if isinstance(o, Override) else Override.parse(o, issues) for o in overrides)
              if o is not None]
    file = Path(path)
    graph = _load_file(file, parsed, profile, os.environ if env is None else env, issues, [])
    if graph is None:
        graph = LoadedGraph(file.stem, _display(file), profile, {}, set(), SourceMap(), [])
    elif not graph.nodes and not graph.broken and not issues.has_errors:
        issues.add("empty-graph", "the graph has no nodes", graph.srcmap.at(("nodes",)) or Location(graph.file),
                   path="nodes", hint="add nodes under 'nodes:', or include a graph file that has some")
    graph.issues = issues.issues
    return graph


def _display(path: Path) -> str:
    """The path as a person would type it: relative to the working directory when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _load_file(path: Path, overrides: Sequence[Override], profile: str | None,
               env: Mapping[str, str], issues: IssueList, stack: list[Path],
               include_loc: Location | None = None, include_key: str = "") -> LoadedGraph | None:
    """One file and, recursively, its includes; None when the file itself could not be read."""
    file = _display(path)
    where = include_loc or Location(file)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        near = _near_file(path)
        if include_loc is None:
            hint = f"did you mean {near}?" if near else "check the path (relative to the working directory)"
        else:
            hint = (f"did you mean {near}? " if near else "") + "relative include paths start at the including file"
        issues.add("file-not-found", f"graph file {file} does not exist", where, path=include_key, hint=hint)
        return None
    except (OSError, UnicodeDecodeError) as exc:
        issues.add("file-unreadable", f"cannot read {file}: {exc}", where, path=include_key,
                   hint="a graph file is UTF-8 YAML text")
        return None

    unresolved: set[Path_] = set()
    data, srcmap = parse_yaml(text, file, issues, unresolved)
    if data is None:
        if not issues.has_errors:
            issues.add("empty-graph", "the graph file is empty", Location(file, 1, 1),
                       hint="start from graphs/quickstart.yaml")
        return None
    if not isinstance(data, dict):
        issues.add("invalid-value", "a graph file is a mapping with 'nodes:' at the top",
                   srcmap.at(()), hint="start from graphs/quickstart.yaml")
        return None

    # 1. profile overlay: file < profile < --set
    profiles = data.get("profiles")
    if profile is not None:
        if isinstance(profiles, dict) and isinstance(profiles.get(profile), dict):
            overlay = profiles[profile]
            data_wo = {k: v for k, v in data.items() if k != "profiles"}
            _merge(data_wo, overlay, srcmap, ("profiles", profile), ())
            data = {**data_wo, "profiles": profiles}
        elif not stack:  # included files need not define every profile
            names = profiles if isinstance(profiles, dict) else {}
            issues.add("unknown-profile", f"no profile {profile!r} in {file}",
                       srcmap.at(("profiles",), key=True) or Location(file), path="profiles",
                       hint=_suggest(profile, names) or "define it under profiles:")

    # 2. --set / include set:
    for ov in overrides:
        _apply_override(data, srcmap, ov, issues)

    # 3. ${...}; a misspelt `vars:` (reported by the schema) still serves, so its uses are not errors too
    raw_vars = data.get("vars", _misspelt(data, "vars"))
    subst = _Substituter(raw_vars if isinstance(raw_vars, dict) else {}, srcmap, issues, env, unresolved)
    data = {k: (v if k in ("vars", "profiles") else subst.value(v, (k,))) for k, v in data.items()}
    if isinstance(data.get("vars"), dict):
        resolved = {name: subst.var(name, srcmap.at(("vars", name)), ("vars", name)) for name in data["vars"]}
        data["vars"] = {name: (None if v is _FAILED else v) for name, v in resolved.items()}

    # 4. schema: the top level and each node on its own, so one bad key hides nothing else
    raw_nodes = data.pop("nodes", None)
    spec, bad_top = _validate_partial(GraphSpec, data, (), srcmap, issues, unresolved)
    spec = spec or GraphSpec()
    graph = LoadedGraph(spec.graph or path.stem, file, profile, {}, set(), srcmap, [],
                        {_dotted(p) for p in unresolved}, spec.security, path.parent)
    if "include" in bad_top and isinstance(data.get("include"), dict):
        graph.broken.update(f"{name}/" for name in data["include"])
    if raw_nodes is not None and not isinstance(raw_nodes, dict):
        issues.add("invalid-value", "'nodes' must be a mapping of node name to node",
                   srcmap.at(("nodes",)), path="nodes")
        raw_nodes = None
    for name, raw in (raw_nodes or {}).items():
        if not NAME_RE.match(name):
            issues.add("bad-name", f"node name {name!r} may hold only letters, digits, '_' and '-' "
                       "and must not start with a digit", srcmap.at(("nodes", name), key=True),
                       path=f"nodes.{name}", hint="rename the node")
            graph.broken.add(name)
            continue
        node, bad_keys = _validate_partial(NodeSpec, raw, ("nodes", name), srcmap, issues, unresolved)
        if node is None:
            graph.broken.add(name)
        else:
            graph.nodes[name] = NodeEntry(name, node, spec.defaults, path.parent, bad_keys)

    # 5. includes, each in its own scope
    for inc_name, inc in spec.include.items():
        key = f"include.{inc_name}"
        inc_loc = srcmap.at(("include", inc_name))
        graph.broken.add(f"{inc_name}/")  # until it loads
        if not NAME_RE.match(inc_name):
            issues.add("bad-name", f"include name {inc_name!r} may hold only letters, digits, '_' and '-'",
                       srcmap.at(("include", inc_name), key=True), path=key, hint="rename the include")
            continue
        child_path = (path.parent / inc.path).resolve()
        if child_path in stack or child_path == path.resolve():
            chain = " -> ".join(_display(p) for p in [*stack, path.resolve(), child_path])
            issues.add("include-cycle", f"graph files include each other: {chain}", inc_loc,
                       path=key, hint="remove one of the includes")
            continue
        set_loc = srcmap.at(("include", inc_name, "set"))
        child_ovs = [Override(("vars", k), v, srcmap.at(("include", inc_name, "vars", k)) or Location(file),
                              f"vars.{k}") for k, v in inc.vars.items()]
        child_ovs += [Override(tuple(str(k).split(".")), v, srcmap.at(("include", inc_name, "set", k)) or
                               set_loc or Location(file), f"{k}={v}") for k, v in inc.set.items()]
        child = _load_file(child_path, child_ovs, profile, env, issues, [*stack, path.resolve()],
                           inc_loc, key)
        if child is None:
            continue
        graph.broken.discard(f"{inc_name}/")
        for name, entry in child.nodes.items():
            scoped = f"{inc_name}/{name}"
            graph.srcmap.graft(child.srcmap, ("nodes", name), ("nodes", scoped))
            graph.nodes[scoped] = NodeEntry(scoped, _scope(entry.spec, inc_name), entry.defaults,
                                            entry.base_dir, entry.invalid)
        graph.broken.update(f"{inc_name}/{name}" for name in child.broken)
        graph.unresolved.update(_rescope(p, inc_name) for p in child.unresolved)
    return graph


def _near_file(path: Path) -> str:
    """The graph file next to ``path`` whose name is closest to it (a typo), as a person types it."""
    try:
        names = [p.name for p in path.parent.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file()]
    except OSError:
        return ""
    near = difflib.get_close_matches(path.name, sorted(names), n=1, cutoff=0.75)
    return _display(path.parent / near[0]) if near else ""


def _misspelt(data: dict[str, Any], key: str) -> Any:
    """The value of a top-level key that looks like a typo of ``key`` (``var:`` for ``vars:``)."""
    near = difflib.get_close_matches(key, [k for k in data if k not in GraphSpec.model_fields], n=1, cutoff=0.7)
    return data[near[0]] if near else None


def _scope(spec: NodeSpec, prefix: str) -> NodeSpec:
    """The node with its references put under ``prefix/``; ``/name.port`` stays at the root."""
    inputs = {
        port: inp.model_copy(update={"from_": [r if r.startswith("/") else f"{prefix}/{r}" for r in inp.from_]})
        for port, inp in spec.inputs.items()
    }
    group = f"{prefix}/{spec.group}" if spec.group else None
    budget = spec.budget
    if budget is not None and not budget.from_.startswith("/"):
        budget = budget.model_copy(update={"from_": f"{prefix}/{budget.from_}"})
    return spec.model_copy(update={"inputs": inputs, "group": group, "budget": budget})


def _rescope(dotted: str, prefix: str) -> str:
    return f"nodes.{prefix}/{dotted[len('nodes.'):]}" if dotted.startswith("nodes.") else dotted


def validate_section(model: type[BaseModel], raw: Any, base: Path_, srcmap: SourceMap,
                     issues: IssueList) -> tuple[Any, frozenset[str]]:
    """Validate a part of a located YAML document (``raw`` at ``base``) against a pydantic
    model the way graph files are: every error an issue at its file:line:col, unknown keys
    with a did-you-mean, and the good keys kept when some are bad. Returns the model (None
    when nothing usable is left) and the keys that failed. Other YAML files dmnflow reads
    (tune files) are checked with it."""
    return _validate_partial(model, raw, base, srcmap, issues, set())


def _validate_partial(model: type[BaseModel], raw: Any, base: Path_, srcmap: SourceMap,
                      issues: IssueList, unresolved: set[Path_]) -> tuple[Any, frozenset[str]]:
    """Validate ``raw``; if some keys are wrong, report them and keep the rest, so they are
    checked too. Returns the model (None if nothing usable is left) and the bad keys."""
    try:
        return model.model_validate(raw), frozenset()
    except ValidationError as exc:
        bad = _report(model, exc, base, srcmap, issues, unresolved)
    required = {f.alias or n for n, f in model.model_fields.items() if f.is_required()}
    if not isinstance(raw, dict) or "" in bad or bad & required:
        return None, frozenset(bad)
    try:
        return model.model_validate({k: v for k, v in raw.items() if k not in bad}), frozenset(bad)
    except ValidationError:
        return None, frozenset(bad)


def _report(model: type[BaseModel], exc: ValidationError, base: Path_, srcmap: SourceMap,
            issues: IssueList, unresolved: set[Path_]) -> set[str]:
    """Turn pydantic's errors into issues; returns the top-level keys that had errors."""
    bad: set[str] = set()
    errors = exc.errors()
    unknown: dict[Path_, list[str]] = {}
    for err in errors:
        if err["type"] == "extra_forbidden":
            loc = tuple(p for p in err["loc"] if not _is_union_tag(p))
            unknown.setdefault(loc[:-1], []).append(str(loc[-1]))
    for err in errors:
        rel = tuple(p for p in err["loc"] if not _is_union_tag(p))
        bad.add(str(rel[0]) if rel else "")
        loc_path = base + rel
        if any(loc_path[: len(u)] == u for u in unresolved):
            continue  # a failed ${...} was reported where it was written
        if err["type"] == "missing" and difflib.get_close_matches(
                str(rel[-1]), unknown.get(rel[:-1], []), n=1, cutoff=0.6):
            continue  # `use:` for `uses:`: the unknown key's "did you mean" says it all
        _pydantic_issue(model, err, loc_path, base, srcmap, issues)
    return bad


def _is_union_tag(part: Any) -> bool:
    """pydantic names union members and validators in error paths; they are not YAML keys."""
    return isinstance(part, str) and ("[" in part or part in {"str", "list[str]", "int", "float"})


def _pydantic_issue(model: type[BaseModel], err: Any, path: Path_, base: Path_,
                    srcmap: SourceMap, issues: IssueList) -> None:
    kind = err["type"]
    dotted = _dotted(path)
    if kind == "extra_forbidden":
        key = str(path[-1])
        known = _fields_at(model, path[len(base):-1])
        issues.add("unknown-key", f"unknown key {key!r}", srcmap.at(path, key=True), path=dotted,
                   hint=_suggest(key, known) if known else "")
        return
    if kind == "missing":
        parent = path[:-1]
        issues.add("missing-key", f"missing required key {str(path[-1])!r}",
                   srcmap.keys.get(parent) or srcmap.at(parent), path=_dotted(parent),
                   hint=f"add `{path[-1]}:`")
        return
    message = err["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, "):]
    message = message[:1].lower() + message[1:]
    if kind not in ("value_error", "assertion_error") and "input" in err and not isinstance(err["input"], dict):
        message += f" (got {err['input']!r})"
    issues.add("invalid-value", message, srcmap.at(path), path=dotted)


def _fields_at(model: type[BaseModel], rel: Path_) -> list[str]:
    """The keys a mapping at ``rel`` (relative to ``model``) accepts, for did-you-mean hints."""
    current: Any = model
    for part in rel:
        if isinstance(current, _MapOf):  # a mapping of names: the part is a name, not a key
            current = current.model
            continue
        if not _is_model(current):
            return []
        info = next((f for n, f in current.model_fields.items() if (f.alias or n) == part), None)
        if info is None:
            return []
        current = _unwrap(info.annotation)
    if _is_model(current):
        return [f.alias or n for n, f in current.model_fields.items()]
    return []


@dataclass(frozen=True)
class _MapOf:
    model: Any


def _unwrap(annotation: Any) -> Any:
    """The model inside ``X | None`` or ``Annotated[X, ...]``; ``_MapOf(X)`` for ``dict[str, X]``."""
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _unwrap(args[0])
    if origin is dict:
        return _MapOf(_unwrap(args[1]))
    if args:
        models = [a for a in (_unwrap(a) for a in args) if _is_model(a)]
        return models[0] if models else annotation
    return annotation


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)
