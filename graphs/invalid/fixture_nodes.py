"""Node classes that only the invalid-graph corpus uses: each models one author's mistake.

``nodes/basic.py`` holds well-made nodes only; the checks below need nodes that lack a
handler, raise in ``ports()``, require a param, or send a tensor of another dtype or shape.
Graphs name them as ``uses: graphs.invalid.fixture_nodes:ClassName``, run from the repo root.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from dmnflow import Input, Node, Output, Ports, Tensor


class Threshold(Node):
    """Passes numbers at or above ``level``; ``level`` has no default, so a graph must set it."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        level: float = Field(description="the smallest number passed on")

    value = Input(float)
    passed = Output(float)

    def on_value(self, value: float, ctx: Any) -> None:
        if value >= ctx.params.level:
            ctx.emit("passed", value)


class Printer(Node):
    """Declares an input but no ``on_lines``/``on_message``: the author forgot the handler."""

    lines = Input(Any)

    def on_line(self, value: Any, ctx: Any) -> None:  # the typo: the port is 'lines'
        print(value)


class Window(Node):
    """Its ``ports()`` raises: the author wrote dtype 'float', which is not a tensor dtype."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        size: int = Field(8, ge=1, description="values per window")

    @classmethod
    def ports(cls, params: BaseModel) -> Ports:
        size = params.size  # type: ignore[attr-defined]
        return Ports({"value": Input(float)}, {"window": Output(Tensor("float", shape=(size,)))})

    def on_value(self, value: float, ctx: Any) -> None:
        ctx.emit("window", np.full(ctx.params.size, value))


class Noise64(Node):
    """Sends float64 vectors (numpy's default dtype), where float32 consumers expect float32."""

    vectors = Output(Tensor("float64", shape=(None,)))

    def run(self, ctx: Any) -> Iterator[tuple[str, np.ndarray]]:
        rng = np.random.default_rng(0)
        for _ in range(10):
            yield "vectors", rng.standard_normal(8)


class Frames(Node):
    """Sends 4x4 float32 frames: 2-D, where vector consumers expect 1-D."""

    frames = Output(Tensor("float32", shape=(4, 4)))

    def run(self, ctx: Any) -> Iterator[tuple[str, np.ndarray]]:
        for i in range(10):
            yield "frames", np.full((4, 4), i, dtype=np.float32)


class Predict(Node):
    """A model node: runs the file named by the graph's ``model:`` key on each vector."""

    vectors = Input(Tensor("float32", shape=(None,)))
    prediction = Output(float)

    def on_vectors(self, vector: np.ndarray, ctx: Any) -> None:
        ctx.emit("prediction", float(vector.sum()))


class Pair(Node):
    """Joins two numbers by event time and emits their difference (used with a join typo)."""

    high = Input(float)
    low = Input(float)
    spread = Output(float)

    def on_join(self, values: dict[str, float], ctx: Any) -> None:
        ctx.emit("spread", values["high"] - values["low"])


class Band(Node):
    """Passes numbers between ``low`` and ``high``; its Params check the two together."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        low: float = 0.0
        high: float = 1.0

        @model_validator(mode="after")
        def _ordered(self) -> Band.Params:
            if self.low >= self.high:
                raise ValueError(f"low ({self.low}) must be below high ({self.high})")
            return self

    value = Input(float)
    kept = Output(float)

    def on_value(self, value: float, ctx: Any) -> None:
        if ctx.params.low <= value <= ctx.params.high:
            ctx.emit("kept", value)

