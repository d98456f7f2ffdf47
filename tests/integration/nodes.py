"""Node classes only the runtime tests use: a sink that is slow to start."""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from nodes.basic import Collect


class SlowSink(Collect):
    """A Collect whose setup takes ``delay_s``: a subscriber that joins late."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        path: str | None = None
        delay_s: float = Field(1.0, ge=0)

    def setup(self, ctx: Any) -> None:
        time.sleep(ctx.params.delay_s)
        super().setup(ctx)


class Tap(Collect):
    """A Collect that also appends each value to ``path`` as it arrives, so a test can watch."""

    def setup(self, ctx: Any) -> None:
        super().setup(ctx)
        self.file = open(ctx.params.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in teardown

    def on_values(self, value: Any, ctx: Any) -> None:
        self.received.append(value)
        self.file.write(f"{value}\n")
        self.file.flush()

    def teardown(self, ctx: Any) -> None:
        self.file.close()
