"""Small, general nodes: sources, transforms and a sink, for numbers and for tensors.

They are what ``graphs/quickstart.yaml`` wires together, and what tests use to exercise
the framework without any trading logic.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from dmnflow import Input, Node, Output, Tensor


class Counter(Node):
    """Counts from ``start`` upwards, ``count`` numbers at ``rate_hz`` (0: as fast as possible).

    Each number is also its event time, so joins downstream can align on it.
    """

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        count: int = Field(100, ge=0, description="how many numbers to send before ending")
        start: int = Field(0, description="the first number")
        rate_hz: float = Field(0.0, ge=0, description="numbers per second; 0 sends as fast as possible")

    numbers = Output(int)

    def progress(self) -> tuple[int, int, str]:
        """Numbers sent of ``count``: the live view's progress bar and ETA."""
        return getattr(self, "sent", 0), getattr(self, "count", None), "numbers"

    def run(self, ctx: Any) -> Iterator[tuple[str, int, int]]:
        p = ctx.params
        period = 1.0 / p.rate_hz if p.rate_hz else 0.0
        due = time.perf_counter()
        self.count, self.sent = p.count, 0
        for n in range(p.start, p.start + p.count):
            if period:
                due += period
                delay = due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            yield "numbers", n, n
            self.sent += 1


class Scale(Node):
    """Multiplies each number by ``factor`` and adds ``offset``."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        factor: float = Field(1.0, description="multiplier")
        offset: float = Field(0.0, description="added after multiplying")

    value = Input(float)
    scaled = Output(float)

    def on_value(self, value: float, ctx: Any) -> None:
        ctx.emit("scaled", value * ctx.params.factor + ctx.params.offset)


class Collect(Node):
    """Keeps every value it receives, and writes each as a JSON line to ``path`` as it goes.

    Its commit (``Node.commit``: after each turn of the worker, and before an at-least-once
    input says a record is handled) writes the turn's lines and syncs the file, and returns
    the file's length: a restarted incarnation cuts the file back to the length of the last
    commit that held (``ctx.committed``), so after a kill -9 the file holds exactly what the
    report does not count as lost by this node, or, at-least-once, every record once (the
    producer sends it what came after again).
    """

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        path: str | None = Field(None, description="JSON-lines file written as values arrive; none keeps them in "
                                                   "memory only")

    values = Input(Any)

    def setup(self, ctx: Any) -> None:
        self.received: list[Any] = []
        self.file = None
        self.size = 0  # the file's length after the last commit
        self.lines: list[str] = []  # written at the commit, all at once: nothing reaches the file before it
        if ctx.params.path:
            out = Path(ctx.params.path)
            out.parent.mkdir(parents=True, exist_ok=True)
            # unbuffered: a commit's lines go in one write(2)
            self.file = open(out, "ab" if ctx.incarnation else "wb", buffering=0)  # noqa: SIM115 - teardown
            if ctx.incarnation:  # where the killed one's last commit that held left it
                self.size = ctx.committed or 0
                self.file.truncate(self.size)

    def on_values(self, value: Any, ctx: Any) -> None:
        self.received.append(value)
        if self.file is not None:
            self.lines.append(json.dumps(value) + "\n")

    def commit(self, ctx: Any) -> int | None:
        """Write the new lines (one unbuffered write), sync them, and say how long the file is."""
        if self.file is None:
            return None
        data = "".join(self.lines).encode()
        self.lines.clear()
        while data:  # (a regular file takes it whole; a short write goes on)
            written = self.file.write(data)
            self.size += written
            data = data[written:]
        os.fsync(self.file.fileno())
        return self.size

    def teardown(self, ctx: Any) -> None:
        if self.file is not None:
            self.commit(ctx)
            self.file.close()


class Noise(Node):
    """Sends ``count`` float32 vectors of ``size`` Gaussian numbers (seeded, reproducible)."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        count: int = Field(100, ge=0, description="how many vectors to send")
        size: int = Field(8, ge=1, description="length of each vector")
        seed: int = Field(0, description="random seed")

    vectors = Output(Tensor("float32", shape=(None,)))

    def run(self, ctx: Any) -> Iterator[tuple[str, np.ndarray]]:
        rng = np.random.default_rng(ctx.params.seed)
        for _ in range(ctx.params.count):
            yield "vectors", rng.standard_normal(ctx.params.size, dtype=np.float32)


class Mean(Node):
    """The mean of each float32 vector, as a plain number."""

    vectors = Input(Tensor("float32", shape=(None,)))
    mean = Output(float)

    def on_vectors(self, vector: np.ndarray, ctx: Any) -> None:
        ctx.emit("mean", float(vector.mean()))


class Relay(Node):
    """Republishes every message its input receives on one output, its topic behind ``prefix``.

    Why: a fixed tcp port belongs to one process, so several producers in processes of their
    own (the seed's model nodes, all on port 5557) reach outside subscribers through one
    relay that binds the port. Tensors go out as ``{"values": nested lists, "symbols": [...]}``
    so a plain msgpack client reads them; other values as they came.
    """

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        prefix: str = Field("", description="put before each message's topic, e.g. 'predictions.'")

    streams = Input(Any, doc="any number of producers")
    out = Output(Any, codec="msgpack", doc="each input message, on prefix + its topic")

    def on_streams(self, value: Any, ctx: Any) -> None:
        message = ctx.message
        if isinstance(value, np.ndarray):
            symbols = (message.attrs or {}).get("symbols")
            value = {"values": value.tolist(), "symbols": symbols}
        ctx.emit("out", value, topic=ctx.params.prefix + message.topic, attrs=message.attrs)
