"""Nodes bench/runner.py wires around the model runner: a paced source of DMN-sized windows
and a sink that only counts."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from dmnflow import Input, Node, Output, Tensor


class Windows(Node):
    """Sends ``count`` (63, 8) float32 windows at ``rate_hz`` (0: as fast as it can)."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        count: int = Field(1000, ge=1, description="windows to send")
        rate_hz: float = Field(1000.0, ge=0, description="offered rate; 0 sends as fast as possible")
        steps: int = Field(63, ge=1, description="window length")
        features: int = Field(8, ge=1, description="features per step")

    windows = Output(Tensor("float32", shape=(None, None)))

    def run(self, ctx: Any) -> Any:
        p = ctx.params
        pool = np.random.default_rng(0).standard_normal((64, p.steps, p.features)).astype(np.float32)
        period = 1.0 / p.rate_hz if p.rate_hz else 0.0
        due = time.perf_counter()
        for i in range(p.count):
            if period:
                due += period
                while time.perf_counter() < due:  # busy-wait: sleep() cannot pace 50k/s
                    pass
            yield "windows", pool[i % 64], i


class Drop(Node):
    """Receives and forgets: the end of the pipe, with the latency the report measures."""

    values = Input(Tensor("float32"))

    def on_values(self, value: Any, ctx: Any) -> None:
        pass
