"""The ``Health`` node: last-seen times and rates of the feeds it watches; flags stale ones."""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from dmnflow import Input, Node, Output

__all__ = ["Health"]


class _Feed:
    __slots__ = ("last_seen", "count", "count_at_check", "last_event_time", "stale")

    def __init__(self) -> None:
        self.last_seen = -1.0  # monotonic seconds; -1: never
        self.count = 0
        self.count_at_check = 0
        self.last_event_time: Any = None
        self.stale = False


class Health(Node):
    """Watches feeds and says which went quiet.

    Why: a live trading graph fails quietly when a market-data feed stalls (the models keep
    their last positions); a health check turns silence into a message alert rules act on.
    Connect any outputs to ``feeds`` (one input, many producers); each message counts for
    its topic (``market_data.ES``, ``account``...), or its port when it has none. The
    timer ``timers: {check: 1s}`` calls ``on_check``: for every feed, the age of its last
    message, its rate since the previous check, and ``stale`` when the age exceeds
    ``stale_after_s`` (a feed listed in ``expected`` and never seen is stale too, counted from
    the graph's start: the first check or message, since ``setup`` runs while the other
    processes may still be starting, loading models). It emits
    ``{t, ok, stale_count, stale: [...], feeds: {name: {age_s, rate_hz, count, stale,
    event_time}}}`` every check (or only when the stale set changes, ``emit: changes``)
    and logs each change once.

    Ages and rates are wall-clock figures: health messages are not part of a backtest's
    deterministic output.
    """

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        stale_after_s: float = Field(5.0, gt=0, description="a feed silent for longer than this is stale")
        expected: list[str] = Field(default_factory=list, description="feeds (topics) that must be seen")
        emit: Literal["always", "changes"] = Field(
            "always", description="always: a report every check; changes: only when the stale set changes")

    feeds = Input(Any, doc="anything: each message counts for its topic")
    health = Output(dict, doc="t, ok, stale_count, stale, feeds")

    def setup(self, ctx: Any) -> None:
        self.p = ctx.params
        self.tracked: dict[str, _Feed] = {name: _Feed() for name in self.p.expected}
        self.last_check = time.monotonic()
        self.started: float | None = None  # the first message or check: the graph runs (setup may be long before)
        self.last_stale: tuple[str, ...] | None = None
        self.changed = False
        self.checks = 0
        self.stale_events = 0
        self.messages = 0

    def on_feeds(self, value: Any, ctx: Any) -> None:
        msg = ctx.message
        name = getattr(msg, "topic", "") or msg.port or "feeds"
        feed = self.tracked.get(name)
        if feed is None:
            feed = self.tracked[name] = _Feed()
        feed.last_seen = time.monotonic()
        if self.started is None:
            self.started = feed.last_seen
        feed.count += 1
        feed.last_event_time = msg.event_time
        self.messages += 1

    def on_check(self, ctx: Any) -> None:
        """Timer: the report (see the class docstring)."""
        report = self.check(time.monotonic(), ctx)
        if self.changed or self.p.emit == "always":
            ctx.emit("health", report)

    def check(self, now: float, ctx: Any) -> dict[str, Any]:
        """The health report at monotonic time ``now`` (the timer's work, callable from tests)."""
        if self.started is None:
            self.started = self.last_check = now
        dt = now - self.last_check
        stale_after = self.p.stale_after_s
        report: dict[str, dict[str, Any]] = {}
        stale: list[str] = []
        for name in sorted(self.tracked):
            feed = self.tracked[name]
            since = feed.last_seen if feed.last_seen >= 0 else self.started
            age = now - since
            is_stale = age > stale_after
            if is_stale != feed.stale:
                feed.stale = is_stale
                if is_stale:
                    self.stale_events += 1
                    ctx.log.warning("feed %s is stale: nothing for %.1f s", name, age)
                else:
                    ctx.log.info("feed %s is back", name)
            if is_stale:
                stale.append(name)
            report[name] = {
                "age_s": now - feed.last_seen if feed.last_seen >= 0 else None,
                "rate_hz": (feed.count - feed.count_at_check) / dt if dt > 0 else 0.0,
                "count": feed.count, "stale": is_stale, "event_time": feed.last_event_time,
            }
            feed.count_at_check = feed.count
        self.last_check = now
        self.checks += 1
        out = {"t": time.time_ns(), "ok": not stale, "stale_count": len(stale), "stale": stale, "feeds": report}
        key = tuple(stale)
        self.changed, self.last_stale = key != self.last_stale, key
        return out

    def summary(self) -> dict[str, int]:
        """Checks, messages seen, feeds and how often one went stale."""
        if not hasattr(self, "tracked"):  # asked before setup
            return {}
        return {"checks": self.checks, "messages": self.messages, "feeds": len(self.tracked),
                "stale_now": sum(f.stale for f in self.tracked.values()), "stale_events": self.stale_events}
