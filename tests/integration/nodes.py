"""Node classes only the runtime and tune tests use: slow and watchable sinks, jitter, a join, a score."""

from __future__ import annotations

import ctypes
import math
import os
import random
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from dmnflow import ConfigError, Input, Node, Output, Tensor, Trainer
from nodes.basic import Collect


class SlowSink(Collect):
    """A Collect whose setup takes ``delay_s``: a subscriber that joins late."""

    class Params(Collect.Params):
        delay_s: float = Field(1.0, ge=0)

    def setup(self, ctx: Any) -> None:
        time.sleep(ctx.params.delay_s)
        super().setup(ctx)


class Tap(Collect):
    """A Collect that also appends each value to ``path`` as it arrives, so a test can watch."""

    def setup(self, ctx: Any) -> None:
        self.received: list[Any] = []
        self.file = open(ctx.params.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in teardown

    def on_values(self, value: Any, ctx: Any) -> None:
        self.received.append(value)
        self.file.write(f"{value}\n")
        self.file.flush()

    def commit(self, ctx: Any) -> None:
        """Nothing to do: each value is flushed as it arrives."""

    def teardown(self, ctx: Any) -> None:
        self.file.close()


class Talk(Node):
    """Passes numbers on and logs each (``ctx.log.info``): what ``dmnflow logs RUN talk`` shows."""

    value = Input(float)
    out = Output(float)

    def setup(self, ctx: Any) -> None:
        self.n = 0

    def on_value(self, value: float, ctx: Any) -> None:
        self.n += 1
        ctx.log.info("talked %d", self.n)
        ctx.emit("out", value)


class Jitter(Node):
    """Multiplies by ``factor`` after a random pause: scheduling noise for determinism tests."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        factor: float = 1.0
        max_delay_s: float = Field(0.002, ge=0)

    value = Input(float)
    out = Output(float)

    def on_value(self, value: float, ctx: Any) -> None:
        time.sleep(random.random() * ctx.params.max_delay_s)  # unseeded on purpose
        ctx.emit("out", value * ctx.params.factor)


class Combine(Node):
    """Joins three inputs by event time and emits ``[event_time, a, b, c]``."""

    a = Input(float)
    b = Input(float)
    c = Input(float)
    combined = Output(list)

    def on_join(self, values: dict[str, float], ctx: Any) -> None:
        ctx.emit("combined", [ctx.message.event_time, values["a"], values["b"], values["c"]])


class BatchSizes(Node):
    """Emits the size of each batch its batched input hands it, and the values in order."""

    value = Input(float)
    sizes = Output(list)

    def on_value(self, values: list[float], ctx: Any) -> None:
        ctx.emit("sizes", [len(values), values[0], values[-1]])


class Slow(Node):
    """Passes values on after ``delay_s``: a consumer that cannot keep up."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        delay_s: float = Field(0.005, ge=0)

    value = Input(float)
    out = Output(float)

    def on_value(self, value: float, ctx: Any) -> None:
        time.sleep(ctx.params.delay_s)
        ctx.emit("out", value)


class Ticker(Node):
    """Emits 0, 1, 2, ... each time its ``tick`` timer fires; has no inputs, runs until stopped."""

    ticks = Output(int)

    def setup(self, ctx: Any) -> None:
        self.n = 0

    def on_tick(self, ctx: Any) -> None:
        ctx.emit("ticks", self.n)
        self.n += 1


class Boom(Node):
    """Raises on its ``at``-th message: user code that fails at run time."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        at: int = Field(50, ge=1)

    value = Input(float)
    out = Output(float)

    def setup(self, ctx: Any) -> None:
        self.n = 0

    def on_value(self, value: float, ctx: Any) -> None:
        self.n += 1
        if self.n == ctx.params.at:
            raise ValueError(f"cannot handle {value}")
        ctx.emit("out", value)


class NeedsKey(Node):
    """A source whose setup needs an environment variable, as a vendor's API key."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        variable: str = "DMNFLOW_TEST_KEY"

    out = Output(float)

    def setup(self, ctx: Any) -> None:
        if ctx.params.variable not in os.environ:
            raise ConfigError(f"test vendor: no API key: set the environment variable {ctx.params.variable}")

    def run(self, ctx: Any) -> Any:
        yield "out", 1.0


class LoopCounter(Node):
    """A source written as a plain loop that calls ctx.emit (not a generator)."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        count: int = 100
        rate_hz: float = 0.0

    numbers = Output(int)

    def run(self, ctx: Any) -> None:
        for n in range(ctx.params.count):
            if ctx.params.rate_hz:
                time.sleep(1 / ctx.params.rate_hz)
            ctx.emit("numbers", n)


class Frames(Node):
    """Sends ``count`` float32 frames of ``size`` values, frame i filled with i."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        count: int = 40
        size: int = 1 << 20

    frames = Output(Tensor("float32", shape=(None,)))

    def run(self, ctx: Any) -> Any:
        import numpy as np

        for i in range(ctx.params.count):
            yield "frames", np.full(ctx.params.size, i, dtype=np.float32)


class Relay(Node):
    """Passes every frame on as it got it (a received slot's lease is forwarded, not copied)."""

    frames = Input(Tensor("float32", shape=(None,)))
    out = Output(Tensor("float32", shape=(None,)))

    def on_frames(self, frame: Any, ctx: Any) -> None:
        ctx.emit("out", frame)


class Keeper(Node):
    """Keeps every frame it receives and, at the end, checks none changed under it."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        path: str

    frames = Input(Tensor("float32", shape=(None,)))

    def setup(self, ctx: Any) -> None:
        self.kept: list[Any] = []

    def on_frames(self, frame: Any, ctx: Any) -> None:
        self.kept.append(frame)

    def teardown(self, ctx: Any) -> None:
        import json

        intact = [bool((f == i).all()) for i, f in enumerate(self.kept)]
        shared = sum(_leased(f) for f in self.kept)
        with open(ctx.params.path, "w", encoding="utf-8") as out:
            json.dump({"received": len(self.kept), "intact": all(intact), "via_shm": shared}, out)


def _leased(array: Any) -> bool:
    """Whether an array lies over a shared-memory slot (its buffer's exporter is a ctypes lease)."""
    base = array.base
    while base is not None and hasattr(base, "base") and not isinstance(base, memoryview):
        base = base.base
    return isinstance(getattr(base, "obj", None), ctypes.Array)


class Samples(Node):
    """Sends ``count`` seeded float32 samples of ``shape``; sample i has event time i and topic
    ``samples.<i % topics>``."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        count: int = 100
        shape: list[int] = [5, 3]
        seed: int = 0
        topics: int = 3
        rate_hz: float = 0.0

    samples = Output(Tensor("float32"))

    def run(self, ctx: Any) -> Any:
        import numpy as np

        p = ctx.params
        rng = np.random.default_rng(p.seed)
        data = rng.standard_normal((p.count, *p.shape)).astype(np.float32)
        due = time.perf_counter()
        for i in range(p.count):
            if p.rate_hz:
                due += 1 / p.rate_hz
                while (delay := due - time.perf_counter()) > 0:
                    time.sleep(min(delay, 0.005))
            ctx.emit("samples", data[i], topic=f"samples.{i % p.topics}", event_time=i)
            yield None


class Record(Node):
    """Appends ``[event_time, topic, model_version, values]`` per message to ``path`` (JSON lines),
    flushed every 64 messages so a test can watch the run progress."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        path: str

    values = Input(Tensor("float32"))

    def setup(self, ctx: Any) -> None:
        self.file = open(ctx.params.path, "w", encoding="utf-8")  # noqa: SIM115 - closed in teardown
        self.n = 0

    def on_values(self, value: Any, ctx: Any) -> None:
        import json

        m = ctx.message
        self.file.write(json.dumps([m.event_time, m.topic, (m.attrs or {}).get("model_version"),
                                    value.tolist()]) + "\n")
        self.n += 1
        if self.n % 64 == 0:
            self.file.flush()

    def teardown(self, ctx: Any) -> None:
        self.file.close()


class EnvProbe(Node):
    """Writes what its worker's environment holds of ``names`` to ``<dir>/<node>.json``, both
    ``os.environ`` and the process's initial environment block (``/proc/self/environ``, what a
    forked worker inherits from the zygote); declares the variables in ``declare``."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        dir: str
        names: list[str]
        declare: list[str] = []

    values = Input(Any)

    @classmethod
    def environment(cls, params: BaseModel) -> tuple[str, ...]:
        return tuple(params.declare)  # type: ignore[attr-defined]

    def setup(self, ctx: Any) -> None:
        import json
        import os

        with open("/proc/self/environ", "rb") as f:
            initial = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
        seen = {"environ": {n: os.environ.get(n) for n in ctx.params.names},
                "initial": {n: n.encode() in initial for n in ctx.params.names}}
        with open(os.path.join(ctx.params.dir, f"{ctx.name}.json"), "w", encoding="utf-8") as f:
            json.dump(seen, f)

    def on_values(self, value: Any, ctx: Any) -> None:
        pass


class Score(Node):
    """A sink whose summary is a known function of its params: the objective of the tune tests.

    ``score = -(x - 3)^2 - (y + 1)^2`` (best at x=3, y=-1); ``mode`` makes the trial go wrong
    on purpose: ``nan`` reports NaN, ``crash`` raises after a few values, ``hang`` stops
    reading. ``gap`` refuses an x inside it at compile time (a value the ends of a range do not show).
    """

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        x: float = 0.0
        y: float = 0.0
        mode: Literal["ok", "nan", "crash", "hang"] = "ok"
        gap: list[float] | None = Field(None, description="[low, high]: x may not lie inside")

        @model_validator(mode="after")
        def _outside_gap(self) -> Score.Params:
            if self.gap is not None and self.gap[0] < self.x < self.gap[1]:
                raise ValueError(f"x {self.x} lies in the gap {self.gap}")
            return self

    values = Input(float)
    summary_keys = ("score", "seen")

    def setup(self, ctx: Any) -> None:
        self.p = ctx.params
        self.seen = 0

    def on_values(self, value: float, ctx: Any) -> None:
        self.seen += 1
        if self.p.mode == "crash" and self.seen > 5:
            raise RuntimeError("score: crashing on purpose")
        if self.p.mode == "hang":
            time.sleep(3600)

    def summary(self) -> dict[str, Any]:
        if not hasattr(self, "p"):
            return {}
        score = math.nan if self.p.mode == "nan" else -(self.p.x - 3) ** 2 - (self.p.y + 1) ** 2
        return {"score": score, "seen": self.seen}


class Feed(Node):
    """A plain-loop source (``run`` calls ``ctx.emit``): for t = 1..count, ``t`` on ``value``,
    ``x`` and ``y`` and ``"t<t>"`` on ``label``, event time t."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        count: int = 100

    value = Output(float)
    x = Output(float)
    y = Output(float)
    label = Output(str)

    def run(self, ctx: Any) -> None:
        for t in range(1, ctx.params.count + 1):
            ctx.emit("value", float(t), event_time=t)
            ctx.emit("x", float(t), event_time=t)
            ctx.emit("y", 10.0 * t, event_time=t)
            ctx.emit("label", f"t{t}", event_time=t)


class Subject(Node):
    """Every kind of dispatch at once: a batched input, two joined inputs, a timer,
    ``on_message`` and emits from ``teardown``: what the worker and ``run_node`` must agree on."""

    value = Input(float)
    x = Input(float)
    y = Input(float)
    label = Input(str)
    batches = Output(list)
    joined = Output(list)
    flushed = Output(float)
    labels = Output(list)

    def setup(self, ctx: Any) -> None:
        self.pending = 0.0

    def on_value(self, values: list[float], ctx: Any) -> None:
        ctx.emit("batches", [len(values), sum(values), [m.event_time for m in ctx.batch], ctx.message.event_time])
        self.pending += sum(values)

    def on_join(self, values: dict[str, float], ctx: Any) -> None:
        ctx.emit("joined", [ctx.message.event_time, values["x"], values["y"], ctx.joined["y"].event_time])

    def on_message(self, port: str, value: str, ctx: Any) -> None:  # `label`: the one input without its own
        ctx.emit("labels", [value.upper(), ctx.message.event_time, port])

    def on_flush(self, ctx: Any) -> None:
        if self.pending:
            ctx.emit("flushed", self.pending)
            self.pending = 0.0

    def teardown(self, ctx: Any) -> None:
        if self.pending:
            ctx.emit("flushed", self.pending)


class Blobs(Node):
    """Sends ``count`` payloads of ``size`` bytes, payload i filled with ``i % 251``: bytes, or
    a uint8 tensor."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        count: int = 40
        size: int = 1 << 20
        kind: Literal["bytes", "tensor"] = "bytes"

    @classmethod
    def ports(cls, params: BaseModel) -> Any:
        from dmnflow import Ports

        out = Output(bytes if getattr(params, "kind", "bytes") == "bytes" else Tensor("uint8", shape=(None,)))
        out.name = "blobs"
        return Ports({}, {"blobs": out})

    def run(self, ctx: Any) -> Any:
        import numpy as np

        for i in range(ctx.params.count):
            data = np.full(ctx.params.size, i % 251, dtype=np.uint8)
            yield "blobs", data.tobytes() if ctx.params.kind == "bytes" else data


class Digest(Node):
    """Keeps every payload it receives (bytes or a tensor) and, at the end, writes which fill
    values arrived, whether each payload is still uniform, and how many lie in shared memory."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        path: str

    blobs = Input(Any)

    def setup(self, ctx: Any) -> None:
        self.kept: list[Any] = []

    def on_blobs(self, value: Any, ctx: Any) -> None:
        self.kept.append(value)

    def teardown(self, ctx: Any) -> None:
        import json

        import numpy as np

        arrays = [np.frombuffer(v, dtype=np.uint8) for v in self.kept]
        shared = sum(_leased(a) or isinstance(getattr(v, "obj", None), ctypes.Array)
                     for a, v in zip(arrays, self.kept, strict=True))
        path = ctx.params.path + (f".{ctx.replica}" if ctx.replica is not None else "")  # replicas: one each
        with open(path, "w", encoding="utf-8") as out:
            json.dump({"fills": sorted(int(a[0]) for a in arrays),
                       "intact": all(bool((a == a[0]).all()) for a in arrays), "via_shm": int(shared)}, out)


class GatedCollect(Collect):
    """A Collect whose setup waits until the file ``gate`` exists: a start held open for as
    long as a test needs to look at it (at most ``wait_s``)."""

    class Params(Collect.Params):
        gate: str
        wait_s: float = Field(60.0, gt=0)

    def setup(self, ctx: Any) -> None:
        deadline = time.monotonic() + ctx.params.wait_s
        while not os.path.exists(ctx.params.gate) and time.monotonic() < deadline:
            time.sleep(0.02)
        super().setup(ctx)


def openblas_threads() -> int | None:
    """The thread count of the OpenBLAS this process has loaded (numpy's), None if none is."""
    with open("/proc/self/maps", encoding="utf-8") as f:
        libs = sorted({line.split()[-1] for line in f if "openblas" in line.lower() and ".so" in line})
    for path in libs:
        lib = ctypes.CDLL(path)
        for symbol in ("scipy_openblas_get_num_threads64_", "openblas_get_num_threads64_", "openblas_get_num_threads"):
            getter = getattr(lib, symbol, None)
            if getter is not None:
                return int(getter())
    return None


class BlasProbe(Collect):
    """A Collect that writes, at setup, its OpenBLAS thread count, whether numpy was already
    imported when the worker started, and the cores it may use, to ``path`` + ``.blas``."""

    def setup(self, ctx: Any) -> None:
        import json

        import numpy as np

        np.ones((64, 64)) @ np.ones((64, 64))  # OpenBLAS in use
        with open(f"{ctx.params.path}.blas", "w", encoding="utf-8") as out:
            json.dump({"threads": openblas_threads(), "cores": len(os.sched_getaffinity(0))}, out)
        super().setup(ctx)


class Breaks(Trainer):
    """A trainer whose members fail at a given step with Ray-style colour codes in the message
    (PBT tests: a member failure must fail the study with a plain reason)."""

    class Params(BaseModel):
        lr: float = 0.1
        fail_at: int = 2

    metrics = ("score",)

    def __init__(self, params: BaseModel, workdir: Any) -> None:
        super().__init__(params, workdir)
        self.done = 0

    def step(self) -> dict[str, float]:
        self.done += 1
        if self.done >= self.params.fail_at:  # type: ignore[attr-defined]
            raise RuntimeError(f"\x1b[31mthe member broke\x1b[0m at step {self.done}")
        return {"score": float(self.params.lr) * self.done}  # type: ignore[attr-defined]

    def save(self, directory: Any) -> None:
        (directory / "done").write_text(str(self.done))

    def load(self, directory: Any) -> None:
        self.done = int((directory / "done").read_text())

    def export(self, path: Any) -> Any:
        path.write_text(str(self.done))
        return path
