"""Journal: the end of the monitoring layer, where alerts and health reports are kept.

Alerts that nobody reads are not alerts: the journal logs each firing alert (a warning, or
an error for ``critical``) and, with ``path``, appends every message it gets to a JSON-lines
file as it arrives, so a live run leaves a record even when it is killed. It keeps nothing
in memory but counts.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import IO, Any

from pydantic import BaseModel, ConfigDict, Field

from dmnflow import Input, Node

__all__ = ["Journal"]


class Journal(Node):
    """Logs firing alerts; writes every message (alerts, health, anything) to a JSON-lines file."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        path: str | None = Field(None, description="JSON-lines file to append to; none only logs alerts")
        flush_every: int = Field(1, ge=1, description="flush the file after this many messages")

    entries = Input(Any, doc="alerts, health reports, metrics: anything msgpack-able")

    def setup(self, ctx: Any) -> None:
        self.log = ctx.log
        self.file: IO[str] | None = None
        if ctx.params.path:
            Path(ctx.params.path).parent.mkdir(parents=True, exist_ok=True)
            self.file = open(ctx.params.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in teardown
        self.flush_every = ctx.params.flush_every
        self.counts: dict[str, int] = {"messages": 0, "alerts_firing": 0, "alerts_critical": 0}

    def on_entries(self, entry: Any, ctx: Any) -> None:
        self.counts["messages"] += 1
        if isinstance(entry, dict) and entry.get("state") == "firing":
            self.counts["alerts_firing"] += 1
            critical = entry.get("severity") == "critical"
            self.counts["alerts_critical"] += critical
            level = logging.ERROR if critical else logging.WARNING
            if self.log.isEnabledFor(level):
                self.log.log(level, "alert %s: %s", entry.get("rule"), entry.get("message"))
        if self.file is not None:
            self.file.write(json.dumps({"topic": ctx.message.topic, "event_time": ctx.message.event_time,
                                        "value": entry}, default=str) + "\n")
            if self.counts["messages"] % self.flush_every == 0:
                self.file.flush()

    def summary(self) -> dict[str, Any]:
        return dict(getattr(self, "counts", {}))

    def teardown(self, ctx: Any) -> None:
        if self.file is not None:
            self.file.close()
