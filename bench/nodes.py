"""Nodes for benchmarks: a paced source, a relay, a counting sink.

Referenced from generated YAML as ``uses: bench.nodes:Ping`` (run the benchmarks from the
repository root: the compiler and the workers put the current directory on ``sys.path``).

A node cannot hand data back to the benchmark, so each writes a small JSON file at
teardown when its ``result`` param names one: what it counted, when, its RSS, and the CPUs
it ran on. The per-edge and end-to-end latencies come from the run's ``Report``.

``pin`` is a stop-gap: the runtime applies a node's ``cpus:`` to the worker's main thread
only, after the ZeroMQ context (and its I/O thread, which does the socket work) exists, so
a bench node with ``pin`` pins every thread of its process in ``setup`` when any thread is
not pinned yet. The result file records each thread's cores as ``setup`` found them
(``affinity_at_setup``), so the benchmarks show who pinned what.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from dmnflow import Input, Node, Output, Ports, Tensor


def _rss_kib() -> dict[str, int]:
    """VmRSS, VmHWM (peak) and Pss of this process, in KiB."""
    out: dict[str, int] = {}
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0])
    # proportional: a page shared with other processes counts a share of it
    with contextlib.suppress(OSError), open("/proc/self/smaps_rollup", encoding="ascii") as f:
        for line in f:
            if line.startswith("Pss:"):
                out["Pss"] = int(line.split()[1])
    return out


def pin_process(cpus: list[int]) -> None:
    """Pin every thread of this process (not only the caller, as sched_setaffinity(0) would)."""
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(ProcessLookupError, PermissionError):  # a thread that just ended
            os.sched_setaffinity(int(tid), cpus)


def thread_affinities() -> dict[str, list[int]]:
    """The cores each thread of this process may run on, by ``name/tid`` (the ZeroMQ I/O
    thread included: ``sched_setaffinity(0)`` after ``zmq.Context()`` leaves it unpinned)."""
    out = {}
    for tid in sorted(os.listdir("/proc/self/task"), key=int):
        with contextlib.suppress(OSError):
            name = Path(f"/proc/self/task/{tid}/comm").read_text(encoding="utf-8").strip()
            out[f"{name}/{tid}"] = sorted(os.sched_getaffinity(int(tid)))
    return out


class _Bench(Node):
    """What every bench node shares: optional self-pinning and a result file."""

    def setup(self, ctx: Any) -> None:
        self.affinity_at_setup = thread_affinities()
        pin = ctx.params.pin
        if pin and any(set(cpus) != set(pin) for cpus in self.affinity_at_setup.values()):
            pin_process(pin)
        self.t_setup_ns = time.time_ns()

    def result(self, ctx: Any, **extra: Any) -> None:
        if not ctx.params.result:
            return
        data = {"node": ctx.name, "pid": os.getpid(), "affinity_at_setup": self.affinity_at_setup,
                "affinity": thread_affinities(), "t_setup_ns": self.t_setup_ns, **_rss_kib(), **extra}
        path = Path(ctx.params.result)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data), encoding="utf-8")
        tmp.replace(path)


class _Common(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pin: list[int] | None = Field(None, description="pin this node's process (every thread) to these cores")
    result: str | None = Field(None, description="JSON file written at teardown")


class Ping(_Bench):
    """``count`` payloads of ``size`` bytes at ``rate_hz`` (0: flat out).

    ``kind: bytes`` sends one ``bytes`` object (codec raw); ``kind: tensor`` a float32 array of
    ``size // 4`` numbers (codec tensor). The same object is sent every time, so the benchmark
    times the framework, not the allocator; with ``alloc: true`` a tensor is copied into a
    fresh ``ctx.alloc`` array (a shared-memory slot on push edges) before each emit, as a
    node producing its data there would.
    """

    class Params(_Common):
        count: int = Field(1000, ge=0)
        size: int = Field(64, ge=4)
        rate_hz: float = Field(0.0, ge=0)
        kind: Literal["bytes", "tensor"] = "bytes"
        alloc: bool = Field(False, description="tensor: write each message into ctx.alloc's array, then emit it")

    out = Output(Any)

    @classmethod
    def ports(cls, params: BaseModel) -> Ports:
        kind = getattr(params, "kind", "bytes")
        out = Output(Tensor("float32", shape=(None,)) if kind == "tensor" else bytes)
        out.name = "out"
        return Ports({}, {"out": out})

    def run(self, ctx: Any) -> Iterator[tuple[str, Any]]:
        p = ctx.params
        if p.kind == "tensor":
            import numpy as np  # only tensor pings load numpy (RSS is measured on the others)

            payload: Any = np.arange(p.size // 4, dtype=np.float32)
        else:
            payload = bytes(range(256)) * (p.size // 256) + bytes(p.size % 256)
        period = 1.0 / p.rate_hz if p.rate_hz else 0.0
        self.t_first_ns = time.time_ns()
        due = time.perf_counter()
        for _ in range(p.count):
            if period:
                due += period
                delay = due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            if p.alloc:  # the node writes its data where the message will live: a shared-memory slot
                out = ctx.alloc("out", payload.shape, payload.dtype)
                out[...] = payload  # (standing for producing the data; before emit, so not in the hop)
                yield "out", out
                del out
            else:
                yield "out", payload
        self.t_last_ns = time.time_ns()

    def teardown(self, ctx: Any) -> None:
        self.result(ctx, sent=ctx.params.count, t_first_ns=getattr(self, "t_first_ns", 0),
                    t_last_ns=getattr(self, "t_last_ns", 0))


class Relay(_Bench):
    """Passes every value on unchanged (a frame in, the same frame out)."""

    Params = _Common

    inp = Input(Any)
    out = Output(Any)

    def on_inp(self, value: Any, ctx: Any) -> None:
        ctx.emit("out", value)

    def teardown(self, ctx: Any) -> None:
        self.result(ctx)


class Sink(_Bench):
    """Counts what arrives; keeps the first and last receive times (``time.time_ns``).

    It also keeps every message's exact end-to-end latency (receipt in the handler minus
    ``ctx.message.origin_ns``, the source's emit time, so encode, header, send, receive,
    decode and dispatch are all in it) and writes its exact p50/p99, which the report's
    ~9%-wide histogram buckets cannot resolve.
    """

    class Params(_Common):
        latencies: bool = Field(True, description="keep each message's latency for exact percentiles")

    inp = Input(Any)

    def setup(self, ctx: Any) -> None:
        super().setup(ctx)
        self.n = 0
        self.nbytes = 0
        self.t_first_ns = 0
        self.t_last_ns = 0
        self.lat: list[int] | None = [] if ctx.params.latencies else None

    def on_inp(self, value: Any, ctx: Any) -> None:
        now = time.time_ns()
        if not self.n:
            self.t_first_ns = now
        self.t_last_ns = now
        self.n += 1
        self.nbytes += value.nbytes if hasattr(value, "nbytes") else len(value) if hasattr(value, "__len__") else 8
        if self.lat is not None:
            self.lat.append(now - ctx.message.origin_ns)

    def teardown(self, ctx: Any) -> None:
        span = (self.t_last_ns - self.t_first_ns) / 1e9
        exact = exact_us(self.lat) if self.lat else {}
        self.result(ctx, received=self.n, bytes=self.nbytes, t_first_ns=self.t_first_ns, t_last_ns=self.t_last_ns,
                    msgs_per_s=(self.n - 1) / span if span > 0 else None, **exact)


def exact_us(latencies_ns: list[int]) -> dict[str, float]:
    """Exact p50/p99 (microseconds) of latencies in nanoseconds, interpolated as numpy's
    default; no numpy, so a sink's RSS is the framework's, not the benchmark's."""
    xs = sorted(latencies_ns)

    def q(p: float) -> float:
        pos = p * (len(xs) - 1)
        lo = int(pos)
        hi = min(lo + 1, len(xs) - 1)
        return (xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)) / 1e3

    return {"exact_p50_us": round(q(0.5), 1), "exact_p99_us": round(q(0.99), 1)}


def _rtt_type(kind: str) -> Any:
    """The port type of a round trip's payload: ``bytes`` (each input gets its own copy),
    ``Buffer`` (bytes emitted, received as read-only views) or a float32 tensor."""
    if kind == "tensor":
        return Tensor("float32", shape=(None,))
    if kind == "buffer":
        from typing_extensions import Buffer

        return Buffer
    return bytes


class RttPing(_Bench):
    """Back-to-back round trips: sends a payload, waits for it to come back on ``back``, sends
    the next at once; keeps every round trip (``time.perf_counter_ns``) and writes p50/p99.

    A source whose generator yields ``None`` (a turn of the worker) while it waits, so the
    worker reads ``back`` between two pings: the ping side spins, as a raw ping that polls
    its socket without blocking does (``bench/rtt.py`` measures raw pyzmq both ways).
    """

    class Params(_Common):
        count: int = Field(2000, ge=1)
        warmup: int = Field(200, ge=0, description="round trips not counted (caches, first connections)")
        size: int = Field(64, ge=4)
        kind: Literal["bytes", "buffer", "tensor"] = Field(
            "bytes", description="buffer: bytes emitted, the ports typed Buffer (received as views)")

    back = Input(Any)
    out = Output(Any)

    @classmethod
    def ports(cls, params: BaseModel) -> Ports:
        tp = _rtt_type(getattr(params, "kind", "bytes"))
        out, back = Output(tp), Input(tp)
        out.name, back.name = "out", "back"
        return Ports({"back": back}, {"out": out})

    def setup(self, ctx: Any) -> None:
        super().setup(ctx)
        self.waiting = False
        self.rtts: list[int] = []

    def on_back(self, value: Any, ctx: Any) -> None:
        self.rtts.append(time.perf_counter_ns() - self.t0)
        self.waiting = False

    def run(self, ctx: Any) -> Iterator[tuple[str, Any] | None]:
        p = ctx.params
        if p.kind == "tensor":
            import numpy as np

            payload: Any = np.arange(p.size // 4, dtype=np.float32)
        else:
            payload = bytes(range(256)) * (p.size // 256) + bytes(p.size % 256)
        for _ in range(p.warmup + p.count):
            self.waiting = True
            self.t0 = time.perf_counter_ns()
            yield "out", payload
            while self.waiting:
                yield None  # a turn: the worker reads `back`
        del self.rtts[: p.warmup]

    def teardown(self, ctx: Any) -> None:
        self.result(ctx, **exact_us(self.rtts), n=len(self.rtts))


class Pong(_Bench):
    """Sends back what it receives."""

    class Params(_Common):
        kind: Literal["bytes", "buffer", "tensor"] = "bytes"

    x = Input(Any)
    y = Output(Any)

    @classmethod
    def ports(cls, params: BaseModel) -> Ports:
        tp = _rtt_type(getattr(params, "kind", "bytes"))
        x, y = Input(tp), Output(tp)
        x.name, y.name = "x", "y"
        return Ports({"x": x}, {"y": y})

    def on_x(self, value: Any, ctx: Any) -> None:
        ctx.emit("y", value)
