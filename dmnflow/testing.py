"""Helpers for node and codec authors: run a node without processes, check a codec.

Not imported by ``import dmnflow``: tests import ``dmnflow.testing`` themselves.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
from pydantic import BaseModel

from .codecs import get_codec
from .compiler import plan_model, plan_node_alone
from .errors import DecodeError, NodeError
from .node import Context, Node, Ports
from .plan import ModelPlan, NodePlan
from .runtime.node_runner import NodeRunner, one_node_layout
from .spec import ModelSpec, NodeSpec
from .transport import Counters
from .transport.memory import MemoryInlet, MemoryOutlet
from .transport.stats import N_CONFLATED

__all__ = ["RecordingContext", "Tick", "check_codec", "run_node"]


@dataclass(frozen=True)
class Tick:
    """An item of ``run_node``'s inputs that calls the timer ``name`` (``on_<name>``) at that
    point of the sequence: a test decides when timers fire, so its result does not depend on
    the clock."""

    name: str


def run_node(cls: type[Node], *, params: dict[str, Any] | None = None,
             inputs: Iterable[tuple[Any, ...] | Tick] = (),
             model: str | os.PathLike[str] | dict[str, Any] | None = None,
             join: Sequence[str] = (), batch: Mapping[str, int] | None = None, node: Node | None = None,
             name: str | None = None) -> dict[str, list[Any]]:
    """Run a node in this process, no sockets: what it emitted, per output port.

    The node runs in the worker's own ``NodeRunner``, with in-memory outlets, on the plan the
    compiler gives a graph of this node alone (the same resolver, lowering and ``defaults``
    a YAML graph gets: ``dmnflow.compiler.plan_node_alone``): params are validated as the
    compiler would; ``setup`` runs first and ``teardown`` last; a source's
    ``run`` (a generator, or a plain loop that calls ``ctx.emit``) is taken to its end; each
    ``(port, value)`` or ``(port, value, event_time)`` of ``inputs`` goes to its handler in
    order (``ctx.message`` says which port and event time), and each ``Tick("flush")`` calls
    the timer ``on_flush``. Exceptions from the node propagate.

    ``join`` names the inputs the YAML would join (``join: {inputs: [...]}``): their values
    are aligned by event time exactly as the runtime does and handed to ``on_join``, with
    ``ctx.joined``. ``batch`` maps an input to its ``batch: {max: N}``: its handler gets
    lists of up to N values (``ctx.batch`` their messages), the rest when the input ends.
    ``model`` is a model node's ``model:`` block (a path, or a mapping with ``path``,
    ``device``, ``dtype``...). Pass ``node`` (an instance of ``cls``) to look at its state
    afterwards, e.g. its ``summary()``; ``name`` is the node's name (``ctx.name``).

        out = run_node(Scale, params={"factor": 2}, inputs=[("value", 1.0), ("value", 2.5)])
        assert out["scaled"] == [2.0, 5.0]
    """
    items = list(inputs)
    validated = cls.Params.model_validate(params or {})
    ports = cls.ports(validated)
    batch = dict(batch or {})
    for port in [*join, *batch]:
        if port not in ports.inputs:
            raise KeyError(f"{cls.__name__} has no input {port!r}; inputs: {sorted(ports.inputs)}")
    timers = {item.name: math.inf for item in items if isinstance(item, Tick)}
    for timer in timers:
        if not callable(getattr(cls, f"on_{timer}", None)):
            raise KeyError(f"{cls.__name__} has no timer handler on_{timer}")
    plan = _node_plan(cls, name or cls.__name__, validated, ports, model, join, batch, timers)
    outlets = {port: MemoryOutlet(port) for port in ports.outputs}
    counters = Counters(one_node_layout(0))  # (private memory)
    feeds = {i.port: MemoryInlet(i.port, latest=i.policy == "latest", counters=counters,
                                 conflated=counters.layout.node(0) + N_CONFLATED) for i in plan.inputs}
    # the worker's runner and schedule: only the channels differ (lists here, sockets there)
    runner = NodeRunner(plan, 0, counters, cls=cls, node=node, outlets=outlets, inlets=feeds)
    try:
        runner.setup()
        while runner.gen is not None or runner.loop_source:  # a source runs to its end first
            runner.turn(time.monotonic())
        for item in items:
            if isinstance(item, Tick):
                runner.fire(item.name)
                continue
            port = item[0]
            if port not in feeds:
                raise KeyError(f"{cls.__name__} has no input {port!r}; inputs: {sorted(ports.inputs)}")
            if not (cls.handles(port) or port in join):
                raise KeyError(f"{cls.__name__} has no handler for input {port!r}: "
                               f"define on_{port}(self, value, ctx) or on_message(self, port, value, ctx)")
            feeds[port].put(item[1], item[2] if len(item) > 2 else None)
            runner.read(feeds[port])
            runner.turn(time.monotonic())
        for feed in feeds.values():  # every producer ends: batches and joins hand over the rest
            feed.end()
            runner.read(feed)
        runner.turn(time.monotonic())
        runner.finish_if_ended(stopping=True)  # the test is over: a node that only timers drive ends too
    except NodeError as exc:  # the runner names the node and port; a test wants the node's own exception
        if exc.__cause__ is None:
            raise
        raise exc.__cause__.with_traceback(exc.__cause__.__traceback__) from None
    return {port: [sent.value for sent in outlet.sent] for port, outlet in outlets.items()}


def _node_plan(cls: type[Node], name: str, params: BaseModel, ports: Ports,
               model: str | os.PathLike[str] | dict[str, Any] | None, join: Sequence[str],
               batch: Mapping[str, int], timers: dict[str, float]) -> NodePlan:
    """The plan the compiler gives this node in a graph of its own (nothing connected): every
    input is fed by the test, with the defaults a YAML graph gets."""
    spec = NodeSpec.model_validate({
        "uses": "dmnflow.testing:run_node",  # the class is given, not imported: see below
        "inputs": {port: {"from": f"run_node.{port}", **({"batch": {"max": batch[port], "wait": math.inf}}
                                                        if port in batch else {})} for port in ports.inputs},
        "join": {"inputs": list(join)} if join else None,
        "timers": timers,
        "model": None if model is None else dict(model) if isinstance(model, dict) else {"path": os.fspath(model)},
    }).model_copy(update={"uses": f"{cls.__module__}:{cls.__qualname__}"})
    return plan_node_alone(cls, spec, params, ports, name=name, base_dir=Path.cwd())


class RecordingContext(Context):
    """A real ``Context`` for calling a node's handlers by hand, which records what they emit.

    For nodes whose handlers a test drives one by one (``node.on_join(values, ctx)``), where
    ``run_node`` would run everything at once. ``out[port]`` lists the values emitted on a
    port, ``event_times[port]`` their event times, ``sent`` every emit in full
    ``(port, value, topic, event_time, attrs)``. Set ``ctx.message`` fields to stand for the
    message being handled.

        ctx = RecordingContext(RiskManager, {"target_vol": 0.1})
        node = RiskManager(); node.setup(ctx); node.on_join({...}, ctx)
        assert ctx.out["targets"][0]["weight"] == [...]
    """

    __slots__ = ("out", "event_times", "sent")

    def __init__(self, cls: type[Node], params: dict[str, Any] | None = None, *,
                 model: str | os.PathLike[str] | dict[str, Any] | None = None, name: str | None = None) -> None:
        super().__init__(name or cls.__name__, cls.Params.model_validate(params or {}), self._record,
                         model=_model_plan(model))
        self.out: dict[str, list[Any]] = defaultdict(list)
        self.event_times: dict[str, list[Any]] = defaultdict(list)
        self.sent: list[tuple[str, Any, str | None, Any, Any]] = []

    def _record(self, port: str, value: Any, topic: str | None, event_time: Any, attrs: Any = None,
                of: Any = None) -> None:
        self.out[port].append(value)
        self.event_times[port].append(event_time)
        self.sent.append((port, value, topic, event_time, attrs))


def _model_plan(model: str | os.PathLike[str] | dict[str, Any] | None) -> ModelPlan | None:
    if model is None:
        return None
    block = dict(model) if isinstance(model, dict) else {"path": os.fspath(model)}
    return plan_model(ModelSpec.model_validate(block), Path.cwd())


_BAD_META = (None, 0, -1, 2**40, "", "np", [], [None, None, None], ["np", "float32", [-1]],
             ["torch", "object", [2]], [2**31] * 3)


def check_codec(name: str, samples: Iterable[Any], tp: Any = Any) -> None:
    """Check that the codec called ``name`` carries each sample across a simulated wire.

    Each sample is encoded (uncompressed and with ``compress_above=0``), its meta sent
    through msgpack and its frames through ``bytes``, then decoded and compared with the
    original (arrays by dtype, shape and value). Truncated, garbled, missing and extra
    frames and wrong meta must decode or raise DecodeError, nothing else.

    Raises:
        AssertionError: naming the codec, the sample and what went wrong.

        check_codec("msgpack", [{"px": 1.5}, [1, 2]])
        check_codec("tensor", [np.zeros((2, 3), "float32")], Tensor("float32"))
    """
    codec = get_codec(name)
    samples = list(samples)
    for compress_above in (None, 0):
        encode = codec.encoder(tp, compress_above=compress_above)
        decode = codec.decoder(tp)
        for i, sample in enumerate(samples):
            where = f"codec {name!r}, sample {i} ({type(sample).__name__}), compress_above={compress_above}"
            meta, frames = encode(sample)
            meta, frames = _wire(where, meta, frames)
            got = decode(meta, frames)
            if not _same(got, sample):
                raise AssertionError(f"{where}: decoded {_short(got)}, expected {_short(sample)}")
            for what, bad_meta, bad_frames in _broken(meta, frames):
                try:
                    decode(bad_meta, bad_frames)
                except DecodeError:
                    pass
                except Exception as exc:
                    raise AssertionError(f"{where}: {what} raised {type(exc).__name__}, "
                                         f"not DecodeError: {exc}") from exc


def _wire(where: str, meta: Any, frames: list[Any]) -> tuple[Any, list[memoryview]]:
    """What the receiver gets: meta after a msgpack round trip, frames as read-only memoryviews."""
    try:
        header = msgpack.packb(meta, use_bin_type=True)
    except Exception as exc:
        raise AssertionError(f"{where}: meta {_short(meta)} is not msgpack-able") from exc
    if len(header) > 1024:
        raise AssertionError(f"{where}: meta takes {len(header)} bytes; the header wants a small value")
    if not isinstance(frames, list):
        raise AssertionError(f"{where}: frames must be a list, got {type(frames).__name__}")
    for k, frame in enumerate(frames):
        try:
            contiguous = memoryview(frame).contiguous
        except TypeError as exc:
            raise AssertionError(f"{where}: frame {k} ({type(frame).__name__}) is not a buffer") from exc
        if not contiguous:
            raise AssertionError(f"{where}: frame {k} is not contiguous; zmq cannot send it")
    return msgpack.unpackb(header, raw=False), [memoryview(bytes(frame)) for frame in frames]


def _broken(meta: Any, frames: list[memoryview]) -> Iterable[tuple[str, Any, list[memoryview]]]:
    """Damaged copies of one received message, each named."""
    for k, frame in enumerate(frames):
        data = bytes(frame)
        others = frames[:k], frames[k + 1:]
        for cut in sorted({0, len(data) // 2, max(len(data) - 1, 0)}):
            yield f"frame {k} cut to {cut} bytes", meta, [*others[0], memoryview(data[:cut]), *others[1]]
        head = bytes(b ^ 0xFF for b in data[:64]) + data[64:]
        yield f"frame {k} with its first bytes inverted", meta, [*others[0], memoryview(head), *others[1]]
        yield f"frame {k} as 0xFF bytes", meta, [*others[0], memoryview(b"\xff" * len(data)), *others[1]]
    yield "no frames", meta, []
    yield "the last frame missing", meta, frames[:-1]
    yield "an extra frame", meta, [*frames, memoryview(b"\x00" * 8)]
    for bad in _BAD_META:
        yield f"meta {bad!r}", bad, frames
    if isinstance(meta, list):
        for k in range(len(meta)):
            for bad in (None, -1, "?", 2**40, [2**31, 2**31]):
                yield f"meta[{k}] = {bad!r}", [*meta[:k], bad, *meta[k + 1:]], frames


def _same(got: Any, expected: Any) -> bool:
    """Equal after the wire: tuples may come back as lists, records without a type as dicts."""
    if isinstance(expected, np.ndarray):
        return (isinstance(got, np.ndarray) and got.shape == expected.shape  # byte order may become native
                and got.dtype.newbyteorder("=") == expected.dtype.newbyteorder("=")
                and np.array_equal(got, expected, equal_nan=expected.dtype.kind in "fc"))
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(expected, torch.Tensor):
        return (isinstance(got, torch.Tensor) and got.dtype == expected.dtype and got.shape == expected.shape
                and torch.equal(got, expected))
    if isinstance(expected, BaseModel) and not isinstance(got, BaseModel):
        expected = expected.model_dump(mode="json")
    elif dataclasses.is_dataclass(expected) and not isinstance(expected, type) and not dataclasses.is_dataclass(got):
        expected = dataclasses.asdict(expected)
    if isinstance(expected, list | tuple):
        return (isinstance(got, list | tuple) and len(got) == len(expected)
                and all(_same(g, e) for g, e in zip(got, expected, strict=True)))
    if isinstance(expected, dict):
        return (isinstance(got, dict) and got.keys() == expected.keys()
                and all(_same(got[key], value) for key, value in expected.items()))
    if isinstance(expected, float) and math.isnan(expected):
        return isinstance(got, float) and math.isnan(got)
    return bool(got == expected)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."
