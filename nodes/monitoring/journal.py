"""Journal: the end of the monitoring layer, where alerts and health reports are kept.

Alerts that nobody reads are not alerts: the journal logs each firing alert (a warning, or
an error for ``critical``) and, with ``path``, appends every message it gets to a JSON-lines
file, written at each commit (every turn of its worker that handled messages), so a live run
leaves a record even when it is killed: a restarted incarnation cuts the file back to the end
of its predecessor's last commit that held, so what the report counts as lost by the journal
is exactly what is missing, never a line twice. It keeps nothing in memory but counts and the
turn's lines.
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

    entries = Input(Any, doc="alerts, health reports, metrics: anything msgpack-able")

    def setup(self, ctx: Any) -> None:
        self.log = ctx.log
        self.file: IO[bytes] | None = None
        self.lines: list[str] = []  # this turn's, written at the commit in one write(2)
        if ctx.params.path:
            Path(ctx.params.path).parent.mkdir(parents=True, exist_ok=True)
            self.file = open(ctx.params.path, "ab", buffering=0)  # noqa: SIM115 - closed in teardown
            if ctx.incarnation and ctx.committed is not None:  # a killed predecessor's half-held commit goes
                self.file.truncate(ctx.committed)
            self.size = self.file.seek(0, 2)
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
            self.lines.append(json.dumps({"topic": ctx.message.topic, "event_time": ctx.message.event_time,
                                          "value": entry}, default=str) + "\n")

    def commit(self, ctx: Any) -> int | None:
        """Write the turn's lines; the file's length is the mark a restart cuts back to."""
        if self.file is None:
            return None
        data = "".join(self.lines).encode()
        self.lines.clear()
        while data:
            written = self.file.write(data)
            self.size += written
            data = data[written:]
        return self.size

    def summary(self) -> dict[str, Any]:
        return dict(getattr(self, "counts", {}))

    def teardown(self, ctx: Any) -> None:
        if self.file is not None:
            self.commit(ctx)
            self.file.close()
