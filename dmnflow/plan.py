"""The compiled plan: everything a worker needs, and nothing that needs the YAML again.

A `Plan` is what `dmnflow plan --json` prints and what the supervisor hands to each
worker. It is plain JSON: params are dumped in JSON mode (the worker re-validates them
against the node's ``Params``), types are carried as text, and ipc endpoints hold the
``{run_dir}`` placeholder that the runtime fills with a fresh per-run directory; tcp
endpoints ending in ``:*`` get their port when the publisher binds.

This module imports nothing of dmnflow but errors-free pydantic models.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

__all__ = [
    "BindPlan",
    "CoalescePlan",
    "BudgetPlan",
    "ConnectPlan",
    "DrainPlan",
    "EdgePlan",
    "InputPlan",
    "LimitsPlan",
    "NodePlan",
    "OutputPlan",
    "Plan",
    "ProcessPlan",
    "RestartPlan",
    "SecurityPlan",
]

# iox: iceoryx2 shared memory, for same-host edges between spinning processes (transport/iox.py)
Transport = Literal["inproc", "ipc", "tcp", "iox", "memory"]  # memory: the test double (transport/memory.py)
Pattern = Literal["pub", "push", "stream"]
Delivery = Literal["at-most-once", "at-least-once"]
Policy = Literal["drop", "block", "latest"]

RUN_DIR = "{run_dir}"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RestartPlan(_Frozen):
    """When a dead worker is started again, how often, and how long to wait between tries."""

    when: Literal["never", "on-failure", "always"]
    max_restarts: int
    backoff_s: float
    backoff_max_s: float


class BatchPlan(_Frozen):
    """Micro-batching of one input: up to ``max`` messages, waiting at most ``wait_s``."""

    max: int
    wait_s: float


class CoalescePlan(_Frozen):
    """How a push bind coalesces bursts (``defaults.coalesce``): up to ``records`` records
    or ``bytes`` payload bytes in one message, records up to ``record_max`` bytes; a record
    within ``gap_ns`` of the previous one waits, the oldest at most ``max_age_ns``."""

    records: int
    bytes: int
    record_max: int
    gap_ns: int
    max_age_ns: int


class LimitsPlan(_Frozen):
    """The bounds no YAML key sets, decided by the compiler (``compiler/limits.py``) and read
    by the runtime from here only (``dmnflow plan`` shows them)."""

    control_hwm: int  # control messages queued per peer at a producer socket
    admin_hwm: int  # requests queued at the run's admin socket (dmnflow runs, swap, top, echo)
    supervisor_hwm: int  # control messages queued at the supervisor's control socket
    flush_delay_s: float  # a held coalesced burst is sent this long after its last record ...
    flush_delay_max_s: float  # ... up to this long while a long burst keeps the sender busy
    tap_live_hwm: int  # records a slow live reader (echo, hz, bw) may be behind before its tap drops
    tap_record_hwm: int  # records queued for the recorder before the worker waits for it
    viewer_hwm: int  # records a viewer or the recorder holds before it drops


class BindPlan(_Frozen):
    """One socket an output binds. A PUB bind serves every subscriber; a PUSH bind serves
    one consumer (or one set of replicas sharing the load); a STREAM bind is a fixed tcp
    port that serves every in-graph consumer of the output and subscribers outside the
    graph (the outputs of one process may share it).

    ``id`` names the bind uniquely in the plan: the address it actually bound (a tcp port
    chosen at bind time) travels keyed by it, at first start and after restarts."""

    id: str
    counter: int  # its place among the plan's binds, for its counts (junk, refused handshakes)
    endpoint: str
    transport: Transport
    pattern: Pattern
    hwm: int  # the socket's send high-water mark, in ZeroMQ messages (0: unbounded, inproc)
    control_hwm: int  # control messages (hellos, credit, acks) it queues per peer (0: a PUB, subscriptions only)
    edges: list[int]
    coalesce: CoalescePlan | None = None  # push binds that coalesce bursts
    shm: bool = False  # payloads of the output's shm_above and more go through shared memory (ipc binds)


class ConnectPlan(_Frozen):
    """One connection an input makes to a producer's bind (``bind`` is the bind's id)."""

    edge: int
    bind: str
    node: str
    port: str
    endpoint: str
    transport: Transport
    pattern: Pattern
    hwm: int  # the receiving socket's high-water mark, in ZeroMQ messages (0: unbounded)
    credit_every: int  # records taken before the consumer tells the producer (credit, acks; 0: never)
    control_hwm: int  # an iox edge's control messages queued for its producer (both ends size them alike; 0: zmq's)


class OutputPlan(_Frozen):
    port: str
    type: str
    codec: str
    compress_above: int | None
    binds: list[BindPlan]
    shm_above: int | None = None  # payloads from this size go through shared memory, on the binds marked shm
    shm_slots: int = 16  # shared-memory slots in flight at once, per bind
    room_poll_s: float = 0.01  # a blocked send looks at its consumers again at least this often


class InputPlan(_Frozen):
    port: str
    type: str
    policy: Policy
    queue: int
    topics: list[str]
    feedback: bool
    batch: BatchPlan | None
    connects: list[ConnectPlan]
    delivery: Delivery = "at-most-once"
    max_bytes: int = 256 * 2**20  # the decode limit of one message on this input
    read_batch: int = 256  # messages read from one of its sockets before the worker looks at the others


class JoinPlan(_Frozen):
    """Inputs aligned by event time into one ``on_join`` call; ``timeout_s`` None waits."""

    inputs: list[str]
    timeout_s: float | None


class ModelPlan(_Frozen):
    """The model a model node runs; ``path`` is absolute."""

    path: str
    device: str
    dtype: str
    cuda_graphs: bool = False
    version: str | None = None
    gpu: int | None = None  # the node's `gpu:`: where `device: auto` puts it


class NodePlan(_Frozen):
    """One running node instance (a replica of a YAML node is an instance of its own)."""

    name: str
    spec_name: str  # the YAML node it comes from (differs for replicas)
    uses: str
    params: dict[str, Any]
    layer: str | None
    process: str
    cpus: list[int]
    gpu: int | None
    host: str | None = None  # the ray backend: the Ray node (label `host`, address or host name) it runs on
    resources: dict[str, float] = {}  # the ray backend: Ray custom resources its process needs
    replica: int | None
    replicas: int
    restart: RestartPlan
    busy: bool
    source: bool
    model: ModelPlan | None
    join: JoinPlan | None = None
    timers: dict[str, float] = {}
    env: list[str] = []  # secret environment variables (names or patterns) the node declares (Node.environment)
    inputs: list[InputPlan]
    outputs: list[OutputPlan]
    loc: str  # file:line:col of the node in its YAML, for run-time messages


class EdgePlan(_Frozen):
    """One connection from an output port to an input port of another node instance."""

    id: int
    src: str
    src_port: str
    dst: str
    dst_port: str
    type: str
    codec: str
    transport: Transport
    endpoint: str
    bind: str
    pattern: Pattern
    policy: Policy
    queue: int
    topics: list[str]
    feedback: bool
    delivery: Delivery
    credit: int  # block edges: records in flight to one consumer incarnation before the producer waits (0: none)
    block_timeout_s: float | None  # block edges: how long the producer waits for room before emit raises
    group: str | None = None  # replicas sharing one input ("node.port"): each message goes to one of them


class BudgetPlan(_Frozen):
    """A latency budget: on the edges into one input (``kind: edge``, send to receive), or on
    a path from a source to a node (``kind: path``, entering the graph to arriving there).
    Quantiles are checked over each window of the run, ``max_s`` per message."""

    name: str  # what it covers, as the report shows it: "features.market_data" or "market -> execution"
    kind: Literal["edge", "path"]
    edges: list[int] = []  # edge budgets: every plan edge into the input
    sources: list[str] = []  # path budgets: the source's instances (where the data entered)
    sinks: list[str] = []  # path budgets: the end node's instances (where the latency is measured)
    p50_s: float | None = None
    p90_s: float | None = None
    p99_s: float | None = None
    max_s: float | None = None
    warmup_s: float = 0.0  # warm-up: windows closing this soon after the budget's first message are not judged
    loc: str = ""


class SecurityPlan(_Frozen):
    """CURVE on tcp edges: the key directory (absolute, or under the ``{run_dir}`` placeholder: the
    per-run keys of the ray backend) and this host's keypair name; or ``run_keys``: no key
    directory, so the launch makes one keypair for the run in the run directory (0700), and
    every tcp bind on an automatic port is CURVE with it (a fixed port stays plain: it is
    the graph's public door, for outside subscribers without keys)."""

    curve: str | None = None
    key: str | None = None
    insecure: bool = False  # binding beyond loopback without CURVE was asked for explicitly
    keys: dict[str, str] = {}  # process -> its keypair's name, where processes differ (one per host: the ray backend)
    run_keys: bool = False  # CURVE with a keypair made at launch (tcp edges, no `security.curve`, not insecure)

    def curved(self, transport: str, pattern: str) -> bool:
        """Whether a bind (or the connects to it) of this transport and pattern is CURVE."""
        if transport != "tcp":
            return False
        return self.curve is not None or (self.run_keys and pattern != "stream")


class DrainPlan(_Frozen):
    """How long a stop waits for the graph to drain: while records move, up to ``max_s``
    (None: no limit); cut once nothing moved for ``idle_s`` (``defaults.drain``)."""

    idle_s: float = 5.0
    max_s: float | None = 300.0


class ProcessPlan(_Frozen):
    """One OS process: the nodes it hosts (several for a ``group``) and its CPU pins."""

    name: str
    nodes: list[str]
    cpus: list[int]


class Plan(_Frozen):
    """The validated, JSON-serialisable form of a graph, ready to launch."""

    version: Literal[1] = 1
    graph: str
    file: str
    profile: str | None
    machine_cpus: list[int]
    nodes: list[NodePlan]  # in topological order (feedback edges ignored)
    edges: list[EdgePlan]
    processes: list[ProcessPlan]
    warnings: list[dict[str, Any]]
    notes: list[str] = []  # what the compiler chose otherwise than it would elsewhere (no iceoryx2: ipc)
    security: SecurityPlan = SecurityPlan()
    budgets: list[BudgetPlan] = []  # latency budgets (compiler/budgets.py)
    record: list[str] = []  # outputs ("node.port" instances) mirrored to the run's recorder from the start
    drain: DrainPlan = DrainPlan()  # how long a stop waits for the graph to drain (runtime/supervisor.py)
    limits: LimitsPlan  # the bounds no YAML key sets (compiler/limits.py)

    def node(self, name: str) -> NodePlan:
        """The node instance called ``name``; KeyError names the known ones."""
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(f"no node {name!r} in plan; nodes: {[n.name for n in self.nodes]}")

    def binds(self) -> dict[str, BindPlan]:
        """Every bind of the plan by id (a port shared by several outputs appears once)."""
        return {b.id: b for n in self.nodes for o in n.outputs for b in o.binds}

    def output_ids(self) -> dict[tuple[str, str], int]:
        """A number for every (node, output port), carried in each message's header."""
        return {(n.name, o.port): i for i, (n, o) in enumerate((n, o) for n in self.nodes for o in n.outputs)}

    @property
    def order(self) -> list[str]:
        return [n.name for n in self.nodes]

    @property
    def layers(self) -> dict[str, list[str]]:
        """Node names per ``layer:`` (nodes without one fall under ``""``), in plan order."""
        out: dict[str, list[str]] = {}
        for node in self.nodes:
            out.setdefault(node.layer or "", []).append(node.name)
        return out

    def to_json(self, indent: int | None = 2) -> str:
        return self.model_dump_json(indent=indent)

    @classmethod
    def from_json(cls, text: str | bytes) -> Plan:
        return cls.model_validate(json.loads(text))
