"""The ``Alerts`` node: threshold rules from the YAML, evaluated on the metrics it receives."""

from __future__ import annotations

import math
import operator
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from dmnflow import Input, Node, Output
from nodes.support import RateLimitedLog, event_time_of

__all__ = ["Alerts", "Rule", "lookup"]

OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le, "==": operator.eq, "!=": operator.ne,
}
_MISSING = object()


class Rule(BaseModel):
    """One threshold: ``<metric> <op> <value>`` raises an alert of ``severity``."""

    model_config = ConfigDict(extra="forbid")
    metric: str = Field("drawdown", min_length=1, description="key in the metrics message; dots reach into dicts")
    op: Literal[">", ">=", "<", "<=", "==", "!="] = Field(">", description="comparison, metric on the left")
    value: float = Field(0.0, description="the threshold")
    severity: Literal["info", "warning", "critical"] = Field("warning", description="how bad it is")
    name: str | None = Field(None, description="the alert's name; default '<metric> <op> <value>'")
    message: str | None = Field(None, description="text sent with the alert")

    def label(self) -> str:
        return self.name or f"{self.metric} {self.op} {self.value:g}"


def lookup(record: Mapping[str, Any], path: str) -> Any:
    """``record["a"]["b"]`` for ``path`` ``"a.b"`` (an exact key wins); a sentinel when absent."""
    if path in record:
        return record[path]
    value: Any = record
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return _MISSING
        value = value[part]
    return value


class Alerts(Node):
    """Raises and resolves alerts when metrics cross the thresholds of ``rules``.

    Why: the thresholds that matter (drawdown, stale feeds, latency) differ per deployment,
    so they live in the YAML, not in code. Each metrics message (from Performance, Health or
    any node emitting a flat dict) is checked against every rule whose metric it carries.
    Alerts are edge-triggered: ``state: firing`` when a rule becomes true, ``state:
    resolved`` when it becomes false again (``notify_resolved``), and while it stays true,
    again every ``repeat_every`` messages (0: never). A message without the metric leaves
    the rule as it was; a non-numeric or NaN value is counted and does not fire.

    Alert: ``{t, rule, metric, op, threshold, value, severity, state, message}``.
    """

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        rules: list[Rule] = Field(
            default_factory=lambda: [Rule(metric="drawdown", op=">", value=0.2, severity="critical"),
                                     Rule(metric="stale_count", op=">", value=0, severity="warning")],
            description="threshold rules: [{metric, op, value, severity, name, message}]")
        notify_resolved: bool = Field(True, description="send a resolved alert when a rule stops holding")
        repeat_every: int = Field(0, ge=0, description="re-send a firing alert every this many messages; 0: never")
        budgets: bool = Field(True, description="raise an alert when a latency budget of the graph is missed "
                              "(and resolve it once it is met again)")
        budget_severity: Literal["info", "warning", "critical"] = Field(
            "warning", description="severity of a missed latency budget's alert")
        recent: int = Field(20, ge=0, description="alerts the summary keeps (newest last), for the dashboard")

    metrics = Input(dict, doc="any flat dict of metrics (Performance.metrics, Health.health, ...)")
    alerts = Output(dict, doc="t, rule, metric, op, threshold, value, severity, state, message")

    def setup(self, ctx: Any) -> None:
        self.p = ctx.params
        self.log = RateLimitedLog(ctx.log)
        self.rules = list(self.p.rules)
        self.ops = [OPS[r.op] for r in self.rules]
        self.firing = [False] * len(self.rules)
        self.held_for = [0] * len(self.rules)
        self.counts = {"messages": 0, "bad_messages": 0, "non_numeric": 0, "firing": 0, "resolved": 0,
                       "info": 0, "warning": 0, "critical": 0}
        self.per_rule = [0] * len(self.rules)
        self.recent: list[dict[str, Any]] = []

    def on_metrics(self, metrics: dict, ctx: Any) -> None:
        c = self.counts
        c["messages"] += 1
        if not isinstance(metrics, Mapping):
            c["bad_messages"] += 1
            self.log.warning("bad", "skipped a metrics message that is not a dict: %.200r", metrics)
            return
        t = event_time_of(metrics, ctx)
        for i, rule in enumerate(self.rules):
            raw = lookup(metrics, rule.metric)
            if raw is _MISSING:
                continue
            try:
                value = float(raw)
            except (TypeError, ValueError):
                value = math.nan
            if value != value:
                c["non_numeric"] += 1
                self.log.warning(f"value:{i}", "rule %r: metric %s is %.80r, not a number", rule.label(),
                                 rule.metric, raw)
                continue
            holds = self.ops[i](value, rule.value)
            if holds and not self.firing[i]:
                self.firing[i], self.held_for[i] = True, 0
                self._send(ctx, t, i, value, "firing")
            elif holds:
                self.held_for[i] += 1
                if self.p.repeat_every and self.held_for[i] % self.p.repeat_every == 0:
                    self._send(ctx, t, i, value, "firing")
            elif self.firing[i]:
                self.firing[i] = False
                if self.p.notify_resolved:
                    self._send(ctx, t, i, value, "resolved")

    def _send(self, ctx: Any, t: int | None, i: int, value: float, state: str) -> None:
        rule = self.rules[i]
        self.counts[state] += 1
        if state == "firing":
            self.counts[rule.severity] += 1
            self.per_rule[i] += 1
            if rule.severity != "info":
                self.log.warning(f"alert:{i}", "%s alert %r: %s = %g", rule.severity, rule.label(), rule.metric, value)
        self._alert(ctx, {
            "t": t, "rule": rule.label(), "metric": rule.metric, "op": rule.op, "threshold": rule.value,
            "value": value, "severity": rule.severity, "state": state,
            "message": rule.message or f"{rule.metric} = {value:g} ({rule.op} {rule.value:g})",
        })

    def _alert(self, ctx: Any, alert: dict[str, Any]) -> None:
        if self.p.recent:
            self.recent = [*self.recent[-self.p.recent + 1:], {**alert, "t_ns": time.time_ns()}]
        ctx.emit("alerts", alert)

    def on_budget(self, event: dict[str, Any], ctx: Any) -> None:
        """A latency budget of the graph was missed (``state: missed``) or is met again: an alert
        named after the budget, firing or resolved (the runtime calls this; docs/observe.md)."""
        if not self.p.budgets:
            return
        missed = event.get("state") == "missed"
        if not missed and not self.p.notify_resolved:
            return
        state = "firing" if missed else "resolved"
        severity = self.p.budget_severity
        self.counts[state] += 1
        if missed:  # (the supervisor has logged it; the journal logs the alert)
            self.counts[severity] += 1
        quantile, limit = event.get("quantile", "p99"), event.get("limit_us", 0.0)
        self._alert(ctx, {
            "t": event.get("t_ns"), "rule": f"budget {event.get('budget')} {quantile} <= {limit:g}us",
            "metric": f"latency_{quantile}_us", "op": "<=", "threshold": limit, "value": event.get("measured_us"),
            "severity": severity, "state": state,
            "message": f"{event.get('budget')}: {quantile} {event.get('measured_us')}us, budget {limit:g}us",
        })

    def summary(self) -> dict[str, Any]:
        """Counters: messages, alerts by state and severity, rules firing now; the latest alerts."""
        if not hasattr(self, "counts"):  # asked before setup
            return {}
        out: dict[str, Any] = dict(self.counts)
        out["rules"] = len(self.rules)
        out["firing_now"] = sum(self.firing)
        if self.p.recent:
            out["recent"] = list(self.recent)
        return out
