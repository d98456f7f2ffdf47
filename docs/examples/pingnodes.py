"""Ping, for the ping-pong graph of docs/observe.md ("A graph without a source"): two nodes
answering each other, a timer on one of them starting each exchange."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from dmnflow import Input, Node, Output


class Ping(Node):
    """Sends 0 on each tick of its timer and answers each number it gets with the next one."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        limit: int = Field(1000, description="stop answering past this number")

    back = Input(int)
    out = Output(int)

    def setup(self, ctx: Any) -> None:
        self.ticks = 0
        self.answered = 0

    def on_tick(self, ctx: Any) -> None:
        self.ticks += 1
        ctx.emit("out", 0)

    def on_back(self, value: int, ctx: Any) -> None:
        if value < ctx.params.limit:
            self.answered += 1
            ctx.emit("out", value + 1)

    def summary(self) -> dict[str, int]:
        return {"ticks": getattr(self, "ticks", 0), "answered": getattr(self, "answered", 0)}
