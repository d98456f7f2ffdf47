"""A node of your own that fails: docs/runtime.md shows what a run prints when it does."""

from pydantic import BaseModel, ConfigDict

from dmnflow import Input, Node, Output


class Boom(Node):
    """Passes values on, and raises on the ``at``-th one."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        at: int = 50

    value = Input(float)
    out = Output(float)

    def setup(self, ctx) -> None:
        self.seen = 0

    def on_value(self, value: float, ctx) -> None:
        self.seen += 1
        if self.seen == ctx.params.at:
            raise ValueError(f"cannot handle {value}")
        ctx.emit("out", value)
