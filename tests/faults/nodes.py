"""Node classes the faults suite injects: a stage that stalls, a sink whose teardown raises."""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from dmnflow import Input, Node, Output
from nodes.basic import Collect
from tests.integration.nodes import Boom


class Stall(Node):
    """Passes numbers on; after passing its ``at``-th it stalls for ``stall_s``: a stage that
    stops moving (a drain behind it has nothing to wait for)."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        at: int = Field(1000, ge=1)
        stall_s: float = Field(60.0, ge=0)

    value = Input(float)
    out = Output(float)

    def setup(self, ctx: Any) -> None:
        self.n = 0

    def on_value(self, value: float, ctx: Any) -> None:
        ctx.emit("out", value)  # emitted first: a SIGTERM during the stall need not wait for it
        self.n += 1
        if self.n == ctx.params.at:
            time.sleep(ctx.params.stall_s)


class BadTeardown(Collect):
    """A Collect whose teardown raises after writing its file, as a full disk or a bad path would."""

    def teardown(self, ctx: Any) -> None:
        super().teardown(ctx)
        raise OSError(36, "File name too long", ctx.params.path)


class RaiseOnce(Boom):
    """Boom, but in its first incarnation only: an error that its restart policy recovers from."""

    class Params(Boom.Params):
        at: int = Field(100, ge=1)

    def on_value(self, value: float, ctx: Any) -> None:
        if ctx.incarnation:
            ctx.emit("out", value)
        else:
            super().on_value(value, ctx)
