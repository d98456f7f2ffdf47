"""The pydantic schema of the graph file: every key, its type, its default and its doc.

Unknown keys are errors at every depth (``extra="forbid"``). ``json_schema`` is the same
schema for editors.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from .units import CpuSet, Duration, Size

__all__ = [
    "BatchSpec",
    "BudgetSpec",
    "CoalesceSpec",
    "Defaults",
    "DrainSpec",
    "GraphSpec",
    "IncludeSpec",
    "InputSpec",
    "JoinSpec",
    "ModelSpec",
    "RENAMED",
    "NodeSpec",
    "OutputSpec",
    "PathBudgetSpec",
    "RestartSpec",
    "SecuritySpec",
    "json_schema",
]

USES_RE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


Policy = Literal["drop", "block", "latest"]
Delivery = Literal["at-most-once", "at-least-once"]


class RestartSpec(_Spec):
    """What the supervisor does when a node's process dies."""

    when: Literal["never", "on-failure", "always"] = Field("on-failure", description="when a dead node is started "
                                                           "again: never, on-failure (a non-zero exit), always")
    max_restarts: int = Field(5, ge=0, description="give up after this many restarts")
    backoff: Duration = Field(0.1, description="first wait before a restart; doubles each time")
    backoff_max: Duration = Field(5.0, description="the longest wait between restarts")


def _restart_shorthand(value: Any) -> Any:
    return {"when": value} if isinstance(value, str) else value


Restart = Annotated[RestartSpec, BeforeValidator(_restart_shorthand, json_schema_input_type=str | RestartSpec)]


class DrainSpec(_Spec):
    """How long a stop (Ctrl-C, ``--duration``) waits for the graph to drain (docs/runtime.md,
    "Stopping"): as long as records still move, up to ``max``; it is cut once nothing has moved
    for ``idle``. A cut drain terminates the workers (each runs its nodes' ``teardown``) and
    fails the run if records were lost."""

    idle: Duration = Field(5.0, gt=0, description="cut the drain once no record has moved for this long")
    max: Duration | None = Field(300.0, gt=0, description="cut the drain after this long even while records "
                                 "move; none: wait as long as they move")

    @model_validator(mode="after")
    def _max_covers_idle(self) -> DrainSpec:
        # a max below idle would cut every drain before idle could ever be reached
        if self.max is not None and self.max < self.idle:
            raise ValueError(f"max ({self.max:g}s) is shorter than idle ({self.idle:g}s): make max at least idle, "
                             "or none")
        return self


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
    shm_above: Size | None = Field(2**20, description="payloads this large on same-host (ipc) edges go "
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
    block_timeout: Duration | None = Field(None, gt=0, description="policy block: how long a producer waits for "
                                           "room before its emit raises SendTimeout; none: as long as it takes")
    delivery: Delivery = Field("at-most-once", description="at-least-once: a block edge's producer keeps each "
                               "record until its consumer has handled it, and resends it to a restarted one")
    max_message: Size = Field(256 * 2**20, ge=1, description="the largest message an input accepts; larger "
                              "ones are refused (counted as decode errors) before they are decoded")
    restart: Restart = Field(default_factory=RestartSpec)
    budget_warmup: Duration = Field(10.0, ge=0, description="latency budgets' warm-up: the windows of this long "
                                    "after a budget's first message are not judged (start-up, a warm-up burst)")
    drain: DrainSpec = Field(default_factory=DrainSpec, description="how long a stop waits for the graph to "
                             "drain (the top file's; includes' are ignored)")


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
    warmup: Duration | None = Field(None, ge=0, description="the windows of this long after the budget's "
                                    "first message are not judged (default: defaults.budget_warmup)")


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
    block_timeout: Duration | None = Field(None, gt=0, description="policy block: how long the producer waits "
                                           "for room before its emit raises SendTimeout (default: "
                                           "defaults.block_timeout, else forever)")
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
    send_limit: int | None = Field(None, ge=1, description="messages a send socket holds before the output's "
                                   "policy applies (default: defaults.queue)")
    coalesce: Coalesce | None = None
    shm_slots: int | None = Field(None, ge=1, le=4096)


# Keys renamed so that each word names one concept (issue #19): the old spelling is refused
# with a located ``renamed-key`` error naming the new one, rather than a bare "unknown key".
# (model, old key) -> (new key, where the key sits, why the old word was taken)
RENAMED: dict[tuple[type[BaseModel], str], tuple[str, str, str]] = {
    (RestartSpec, "policy"): ("when", "restart", "an input's `policy` is its full-queue rule"),
    (OutputSpec, "queue"): ("send_limit", "an output", "an input's `queue` is the records it buffers"),
}


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
                            "secret key, or `graph` among several)")
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
