"""The Node API that node authors write against: ports, params, handlers.

A node class declares its ports as class attributes (``ticks = Input(Tick)``,
``features = Output(Tensor("float32", shape=(8,)))``) and its parameters as a nested
pydantic ``Params`` model. The compiler reads these declarations to check a graph
before any process starts; the runtime calls the handlers (``on_<port>`` or
``on_message``) and a source's ``run``.

This module must not import ``runtime/`` or ``nodes/``.
"""

from __future__ import annotations

import logging
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

__all__ = ["Context", "Input", "Message", "Node", "Output", "Ports", "Tensor", "check_types", "describe_type"]

DTYPES = (
    "bool", "uint8", "int8", "int16", "int32", "int64",
    "float16", "bfloat16", "float32", "float64", "complex64", "complex128",
)


@dataclass(frozen=True)
class Tensor:
    """The type of a port that carries an n-d array (numpy or torch, CPU).

    ``dtype=None`` accepts any dtype; ``shape=None`` any shape; a ``None`` dimension
    accepts any size (``shape=(None, 8)`` is "a batch of rows of 8 features").
    """

    dtype: str | None = None
    shape: tuple[int | None, ...] | None = None

    def __post_init__(self) -> None:
        if self.dtype is not None and self.dtype not in DTYPES:
            raise ValueError(f"unknown tensor dtype {self.dtype!r}; use one of {DTYPES}")
        if self.shape is not None:
            object.__setattr__(self, "shape", tuple(self.shape))

    def __str__(self) -> str:
        dims = "" if self.shape is None else f", {_shape(self.shape)}"
        return f"tensor[{self.dtype or 'any'}{dims}]"


class _Port:
    """A declared port; its name comes from the attribute it is assigned to."""

    kind: ClassVar[str] = "port"

    def __init__(self, type: Any = Any, *, doc: str = "") -> None:  # noqa: A002 - reads well
        self.type = type
        self.doc = doc
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"{type(self).__name__}({describe_type(self.type)}, name={self.name!r})"


class Input(_Port):
    """An input port. ``optional=True`` lets a graph leave it unconnected."""

    kind = "input"

    def __init__(self, type: Any = Any, *, optional: bool = False, doc: str = "") -> None:  # noqa: A002
        super().__init__(type, doc=doc)
        self.optional = optional


class Output(_Port):
    """An output port. ``codec`` is the port's preferred codec when the YAML names none."""

    kind = "output"

    def __init__(self, type: Any = Any, *, codec: str | None = None, doc: str = "") -> None:  # noqa: A002
        super().__init__(type, doc=doc)
        self.codec = codec


@dataclass(frozen=True)
class Ports:
    """The ports of one node as configured: what the compiler checks a graph against."""

    inputs: Mapping[str, Input]
    outputs: Mapping[str, Output]


class NoParams(BaseModel):
    """Params of a node that takes none: any key given in the YAML is an error."""

    model_config = ConfigDict(extra="forbid")


class Node:
    """Base class of every node. Subclass it, declare ports and ``Params``, add handlers.

    Every hook the framework calls is declared below, with its signature: override the ones
    the node needs. Two kinds are named after the YAML and cannot be declared here:
    ``on_<input>(self, value, ctx)`` for each input (or one ``on_message``), and
    ``on_<timer>(self, ctx)`` for each ``timers:`` entry. A source implements ``run``.
    ``busy = True`` marks a node that keeps a core busy (busy-polls or computes
    continuously): the compiler warns when two such nodes are pinned to the same core, and a
    process whose nodes are all busy spins instead of sleeping.

    ``env`` names the secret environment variables the node reads (``("MY_API_KEY",)``;
    shell-style patterns such as ``"AWS_*"`` work too). A worker's environment keeps every
    variable except secret-looking ones (``*_KEY``, ``*_SECRET``, ``*_TOKEN``, ``*PASSWORD*``,
    ...), which reach only the workers whose nodes declare them (docs/runtime.md).
    A node with a ``summary()`` may list its keys in ``summary_keys``, so a tune file's
    objectives are checked against them before any trial runs. ``summary_steps`` maps a
    step figure of the summary (``periods``) to the ``Params`` field (an int, 0: off) that has
    the node keep its figures at every that many steps, as ``summary()["steps"]``: a list of
    ``[step, {figure: value}]``, each taken when the step's data was final; a tuner reads its
    intermediate values there, at exact steps, whatever the machine's speed. ``needs_model``
    marks a node that cannot run without a ``model:`` block.
    """

    Params: ClassVar[type[BaseModel]] = NoParams
    busy: ClassVar[bool] = False
    summary_keys: ClassVar[tuple[str, ...]] = ()  # what summary() reports: `dmnflow tune` checks objectives by it
    summary_steps: ClassVar[dict[str, str]] = {}  # step figure -> the Params field that keeps figures per step
    env: ClassVar[tuple[str, ...]] = ()
    needs_model: ClassVar[bool] = False

    @classmethod
    def environment(cls, params: BaseModel) -> tuple[str, ...]:
        """The environment variables (names or patterns) this node needs with these (validated) params.

        The compiler puts them in the plan. The base returns ``env``; override it when the
        need depends on params (a node that talks to a vendor in one mode only).
        """
        return (cls.env,) if isinstance(cls.env, str) else tuple(cls.env)

    @classmethod
    def ports(cls, params: BaseModel) -> Ports:
        """The ports for these params. Override when ports depend on params (model nodes).

        The base implementation reads the class's ``Input``/``Output`` attributes and
        ignores ``params``, so the compiler can check a node's connections even when its
        params are wrong.
        """
        inputs: dict[str, Input] = {}
        outputs: dict[str, Output] = {}
        for klass in reversed(cls.__mro__):
            for name, value in vars(klass).items():
                if isinstance(value, Input):
                    inputs[name] = value
                elif isinstance(value, Output):
                    outputs[name] = value
        return Ports(inputs, outputs)

    @classmethod
    def is_source(cls) -> bool:
        """A source produces data on its own (``run``) rather than in reply to inputs."""
        return cls.defines("run")

    @classmethod
    def handles(cls, port: str) -> bool:
        """Whether messages arriving on ``port`` have a handler to go to."""
        return callable(getattr(cls, f"on_{port}", None)) or cls.defines("on_message")

    @classmethod
    def defines(cls, hook: str) -> bool:
        """Whether this class implements ``hook`` itself: the do-nothing versions declared on
        ``Node`` do not count (a node without ``run`` is no source)."""
        mine = getattr(cls, hook, None)
        if not callable(mine):
            return False
        base = getattr(Node, hook, None)
        return base is None or getattr(mine, "__func__", mine) is not getattr(base, "__func__", base)

    # -- the hooks: the framework calls each at the moment its docstring says

    def setup(self, ctx: Context) -> None:
        """Once, before the first message, after every connection of the graph is up (open
        files, load state; a model node loads its model here)."""

    def teardown(self, ctx: Context) -> None:
        """Once, after the last message: every input has ended (or the source's ``run``
        returned). It may still emit; end-of-stream follows what it sends."""

    def commit(self, ctx: Context) -> int | None:
        """Make durable what the records handled so far produced (a file sink writes and
        syncs its file). The runtime calls it at the end of each turn that handled records,
        before teardown, and, on an at-least-once input, before it tells the producer they are
        handled. It may return a mark, an int that says where its output stands (a file's
        length): the runtime keeps it with the commit, in one transaction, and a restarted
        incarnation finds it in ``ctx.committed``. A sink that cuts its output back to it there
        is exact under kill -9: at-least-once, every record lands once (the producer sends the
        rest again); with the default delivery, what the report counts as lost by the node is
        exactly what is missing. Only a class that defines it is committed."""

    def run(self, ctx: Context) -> Iterator[Any] | None:
        """A source's data: best a generator that yields ``(port, value)`` or ``(port, value,
        event_time)`` (or None, to give the worker a turn without emitting); returning ends
        its stream. A plain loop calling ``ctx.emit`` works too (a stop ends it from inside
        ``emit``). Only a class that defines it is a source."""
        raise NotImplementedError

    def on_message(self, port: str, value: Any, ctx: Context) -> None:
        """Every message of an input that has no ``on_<input>`` of its own (``ctx.message``
        says where it came from)."""
        raise NotImplementedError(f"{type(self).__name__} has no handler for input {port!r}")

    def on_join(self, values: dict[str, Any], ctx: Context) -> None:
        """One event time of the YAML's ``join:``: ``values`` has one value per joined input,
        ``ctx.joined`` the message behind each, ``ctx.message.event_time`` the time."""
        raise NotImplementedError(f"{type(self).__name__} has no on_join")

    def on_command(self, name: str, args: dict[str, Any], ctx: Context) -> Any:
        """A command sent to the running node (``dmnflow swap`` sends ``swap``): its result, or
        a ``concurrent.futures.Future`` of it, is the answer; an exception refuses it. A node
        that does not define it takes no commands."""
        raise NotImplementedError(f"{type(self).__name__} takes no commands")

    def on_budget(self, event: dict[str, Any], ctx: Context) -> None:
        """A latency budget of the graph was missed (``event["state"] == "missed"``) or holds
        again (``"met"``), with its name, quantile, limit and measured value
        (docs/observe.md); it may emit, like a timer."""

    def summary(self) -> dict[str, Any] | None:
        """The node's figures for the live view, the report, Prometheus, the dashboard and
        tune objectives, asked about once a second (declare the keys in ``summary_keys``)."""
        return None

    def progress(self) -> tuple[Any, ...] | None:
        """How far a finite source is: ``(done, total)`` or ``(done, total, unit)``, e.g.
        ``(days, 2520, "days")``, total None when unknown; for the progress bar and its ETA."""
        return None

    @classmethod
    def check_model(cls, params: BaseModel, model: Any) -> list[tuple[str, str, str]]:
        """``dmnflow validate`` on a node with a ``model:`` block (its ``ModelPlan``): what is
        wrong with the model for these params, as ``(code, message, hint)``; none by default."""
        return []


@dataclass(slots=True)
class Message:
    """Where the message being handled came from: ``ctx.message`` inside a handler.

    ``origin_ns`` is the wall-clock time (``time.time_ns()``) at which the data it derives
    from entered the graph; ``event_time`` the time of the data itself (a bar's date, a
    tick's exchange time), carried unchanged through every node that emits in reply;
    ``attrs`` the producer's annotations of the message (``ctx.emit(..., attrs=...)``), or None.
    """

    port: str = ""
    topic: str = ""
    seq: int = 0
    origin_ns: int = 0
    event_time: Any = None
    attrs: Any = None
    origin: int = -1  # the source node it derives from (the runtime's numbering)


class Context:
    """What a node's handlers receive: its params, ``emit``, a logger, the current message.

    The runtime (or ``dmnflow.testing``) creates it; node code only reads it and calls
    ``emit``. An ``emit`` from a handler carries the handled message's origin time and
    event time forward, so end-to-end latency and event-time joins need no help from the
    author; a source may pass ``event_time`` itself.

    ``batch`` lists the messages behind the values of a batched input (``batch:`` in the
    YAML), in order; it is empty outside a batch. ``joined`` maps each input of an
    ``on_join`` call to the message behind its value (its topic, attrs, origin). ``model`` is
    the node's ``model:`` block (path, device, dtype, ...) or None. ``incarnation`` is 0 the
    first time the node runs in a run and counts its restarts after that: a node that writes
    a file starts it afresh at 0 and appends to it after a restart. ``committed`` is the mark
    its last commit that held returned (``Node.commit``; None before any): a restarted file
    sink cuts its file back to it, and gets the records after it again.
    """

    __slots__ = ("name", "params", "log", "replica", "message", "batch", "joined", "model", "incarnation",
                 "committed", "_emit", "_alloc")

    def __init__(self, name: str, params: BaseModel, emit: Callable[..., None],
                 *, replica: int | None = None, model: Any = None,
                 alloc: Callable[[str, Any, Any], Any] | None = None, incarnation: int = 0,
                 committed: int | None = None) -> None:
        self.name = name
        self.incarnation = incarnation
        self.committed = committed
        self.params = params
        self.log = logging.getLogger(f"dmnflow.node.{name}")
        self.replica = replica
        self.message = Message()
        self.batch: list[Message] = []
        self.joined: dict[str, Message] = {}
        self.model = model
        self._emit = emit
        self._alloc = alloc

    def emit(self, port: str, value: Any, *, topic: str | None = None, event_time: Any = None,
             attrs: dict[str, Any] | None = None, of: Message | None = None) -> None:
        """Send ``value`` on output ``port`` (topic defaults to the port's name).

        ``attrs`` annotate the message (small, msgpack-able values). ``of`` names the message
        the value derives from when it is not the one being handled (one of ``ctx.batch``):
        its origin time and event time go with the value.
        """
        self._emit(port, value, topic, event_time, attrs, of)

    def alloc(self, port: str, shape: int | tuple[int, ...], dtype: Any = "float32") -> Any:
        """A writable numpy array (uninitialised) to fill and then ``emit`` on ``port``.

        On an output whose one bind is a same-host edge (push or pub) with shared memory,
        and at least ``shm_above`` bytes, the array lies in a shared-memory slot: emitting it
        sends only the slot's name, nothing is copied. Once emitted, the array is the
        consumers': do not write to it again (allocate a new one per message). The slot is
        reused only after the consumers and this node have dropped every array over it.
        Anywhere else (tcp edges, an output with several binds, small arrays, all slots
        taken, ``dmnflow.testing``) it is an ordinary array and ``emit`` copies it as usual.
        For bytes, allocate ``uint8`` and emit it on a ``raw`` port typed ``Buffer``.
        """
        if self._alloc is None:
            import numpy as np

            return np.empty(shape, dtype)
        return self._alloc(port, shape, dtype)


def describe_type(tp: Any) -> str:
    """A short, stable text for a port type, as shown in errors and in the plan."""
    if tp is Any:
        return "any"
    if isinstance(tp, Tensor):
        return str(tp)
    if isinstance(tp, type):
        return tp.__name__ if tp.__module__ == "builtins" else f"{tp.__module__}.{tp.__qualname__}"
    return repr(tp)


def _origin(tp: Any) -> Any:
    """The runtime class behind a typing construct (``dict[str, int]`` -> ``dict``)."""
    return typing.get_origin(tp) or tp


def check_types(produced: Any, accepted: Any) -> tuple[str, str] | None:
    """Whether an output of type ``produced`` may feed an input of type ``accepted``.

    Returns None when it may, else ``(code, reason)`` with code ``type-mismatch``,
    ``dtype-mismatch`` or ``shape-mismatch``.
    """
    if accepted is Any or produced is Any:
        return None
    if isinstance(accepted, Tensor) or isinstance(produced, Tensor):
        if not (isinstance(accepted, Tensor) and isinstance(produced, Tensor)):
            return "type-mismatch", f"{describe_type(produced)} cannot feed {describe_type(accepted)}"
        if accepted.dtype and produced.dtype and accepted.dtype != produced.dtype:
            return "dtype-mismatch", f"dtype {produced.dtype} cannot feed dtype {accepted.dtype}"
        if accepted.shape is not None and produced.shape is not None:
            a, p = accepted.shape, produced.shape
            if len(a) != len(p) or any(x is not None and y is not None and x != y for x, y in zip(p, a, strict=True)):
                return "shape-mismatch", f"shape {_shape(p)} cannot feed shape {_shape(a)}"
        return None
    src, dst = _origin(produced), _origin(accepted)
    if isinstance(src, type) and isinstance(dst, type):
        if issubclass(src, dst) or (dst is float and src is int):
            return None
        return "type-mismatch", f"{describe_type(produced)} cannot feed {describe_type(accepted)}"
    return None  # unions and other typing forms: checked at run time by the codec


def _shape(shape: tuple[int | None, ...]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"
