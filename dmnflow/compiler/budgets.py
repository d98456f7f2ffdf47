"""Latency budgets: checked when a graph is compiled, watched while it runs.

A budget sits on an input (``inputs: {x: {from: a.b, budget: {p50: 50us, max: 200us}}}``:
the edges into it, from the producer's send to the consumer's receive) or on a node
(``budget: {from: market, p99: 5ms}``: the path from a source to that node, from the
moment the data entered the graph to its arrival there). ``validate`` refuses a budget
whose limits contradict each other and a path that does not exist.

While the graph runs, the supervisor's observer hands every status tick's report to
``BudgetWatch``: the latency histograms that grew since the last window make a window
(a few seconds), each declared quantile of the window is compared with its limit, and
every message over ``max`` is counted (to within the histograms' ~9% buckets). A window
that misses raises an event (``state: missed``) that the supervisor sends to every node
with an ``on_budget`` hook (the monitoring layer's ``Alerts`` turns it into an alert);
a budget met again for a few windows sends ``state: met``. The windows that close within a
budget's ``warmup_s`` of its first message are its warm-up (start-up, a warm-up burst):
shown, not judged, and left out of what the report measures. The report lists each budget
with its limits, what was measured and how many windows missed.

This module imports nothing heavy: the supervisor (and so every worker) imports it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..errors import IssueList, Location, suggest
from ..plan import BudgetPlan, EdgePlan, Plan
from ..spec.units import format_duration
from ..transport.stats import Histogram

__all__ = ["QUANTILES", "BudgetWatch", "check_budgets", "plan_budgets"]

log = logging.getLogger("dmnflow.budget")

QUANTILES = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))
WINDOW_S = 2.0  # a window closes once this long has passed and its histograms have grown
RESOLVE_AFTER = 3  # windows in a row within budget before a missed budget counts as met again
_ORDER = ("p50", "p90", "p99", "max")


def _limits(budget: Any) -> dict[str, float]:
    return {k: getattr(budget, k) for k in _ORDER if getattr(budget, k) is not None}


def check_budgets(nodes: Mapping[str, Any], edges: Sequence[Any], loc: Callable[..., Location | None],
                  issues: IssueList) -> None:
    """Every budget's limits in order, and every path budget's path real.

    ``nodes``: the compiler's nodes by YAML name (``entry.spec``, ``cls``); ``edges``: its
    edges (``src``, ``dst``, ``feedback``); ``loc(*path)``: where a key is written."""
    forward: dict[str, set[str]] = {}
    for e in edges:
        if not e.feedback:
            forward.setdefault(e.src, set()).add(e.dst)
    for name, node in nodes.items():
        spec = node.entry.spec
        for port, inp in spec.inputs.items():
            if inp.budget is not None:
                _check_order(inp.budget, ("nodes", name, "inputs", port, "budget"), loc, issues)
        budget = spec.budget
        if budget is None:
            continue
        base = ("nodes", name, "budget")
        _check_order(budget, base, loc, issues)
        source = budget.from_.removeprefix("/")
        where, path = loc(*base, "from"), f"nodes.{name}.budget.from"
        if source not in nodes:
            near = [n for n in nodes if n.endswith("/" + source) or n.split("/")[-1] == source.split("/")[-1]]
            issues.add("unknown-node", f"no node {source!r} to start the budget's path at", where, path=path,
                       hint=suggest(near[0]) if near else f"nodes are {', '.join(sorted(nodes))}")
            continue
        cls = nodes[source].cls
        if cls is not None and not cls.is_source():
            issues.add("budget-path", f"{source!r} is not a source: a path's latency is measured from where the "
                       "data entered the graph", where, path=path,
                       hint="start the path at the source it comes from, or budget the input's edge instead "
                            "(inputs: {PORT: {from: ..., budget: {...}}})")
            continue
        if not _reaches(forward, source, name):
            issues.add("budget-path", f"no path leads from {source!r} to {name!r}", where, path=path,
                       hint="name a source whose data reaches this node")


def _check_order(budget: Any, base: tuple[str, ...], loc: Callable[..., Location | None], issues: IssueList) -> None:
    limits = _limits(budget)
    dotted = ".".join(base)
    if not limits:
        issues.add("bad-budget", "a budget without limits checks nothing", loc(*base), path=dotted,
                   hint="give at least one of p50, p90, p99, max (e.g. {p50: 50us, max: 200us})")
        return
    keys = list(limits)
    for lower, upper in zip(keys, keys[1:], strict=False):
        if limits[lower] > limits[upper]:
            low, high = format_duration(limits[lower]), format_duration(limits[upper])
            issues.add("bad-budget", f"{lower} ({low}) is above {upper} ({high}): no latency can meet both",
                       loc(*base, upper), path=f"{dotted}.{upper}",
                       hint=f"a higher quantile needs a limit at least as large: raise {upper} or lower {lower}")


def _reaches(forward: dict[str, set[str]], src: str, dst: str) -> bool:
    seen, todo = {src}, [src]
    while todo:
        for nxt in forward.get(todo.pop(), ()):
            if nxt == dst:
                return True
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return False


def plan_budgets(nodes: Mapping[str, Any], edge_plans: Sequence[EdgePlan], loc: Callable[..., Location | None],
                 instances: Mapping[str, list[str]]) -> list[BudgetPlan]:
    """The budgets lowered onto the plan's edges and node instances."""
    spec_of = {inst: name for name, insts in instances.items() for inst in insts}
    out = []
    for name, node in nodes.items():
        spec = node.entry.spec
        for port, inp in spec.inputs.items():
            if inp.budget is None:
                continue
            ids = [e.id for e in edge_plans if spec_of.get(e.dst) == name and e.dst_port == port]
            producers = ", ".join(r.removeprefix("/") for r in inp.from_)
            out.append(BudgetPlan(name=f"{producers} -> {name}.{port}", kind="edge", edges=ids,
                                  loc=str(loc("nodes", name, "inputs", port, "budget") or ""),
                                  warmup_s=_warmup(inp.budget),
                                  **{f"{k}_s": v for k, v in _limits(inp.budget).items()}))
        if spec.budget is not None:
            source = spec.budget.from_.removeprefix("/")
            out.append(BudgetPlan(name=f"{source} -> {name}", kind="path", sources=list(instances[source]),
                                  sinks=list(instances[name]), loc=str(loc("nodes", name, "budget") or ""),
                                  warmup_s=_warmup(spec.budget),
                                  **{f"{k}_s": v for k, v in _limits(spec.budget).items()}))
    return out


def _warmup(budget: Any) -> float:
    """A budget's warm-up: its own ``warmup``, else its file's ``defaults.budget_warmup``
    (filled in by spec/resolve.py)."""
    assert budget.warmup is not None  # resolved
    return float(budget.warmup)


class _State:
    """What one budget has seen so far."""

    def __init__(self, budget: BudgetPlan) -> None:
        self.budget = budget
        self.limits = {k: getattr(budget, f"{k}_s") for k in _ORDER if getattr(budget, f"{k}_s") is not None}
        self.last = Histogram()  # the cumulative histogram at the end of the last window
        self.last_at = 0.0
        self.windows = 0
        self.missed_windows = 0
        self.missed: dict[str, int] = dict.fromkeys(self.limits, 0)  # windows (quantiles) / messages (max)
        self.over_max = 0
        self.firing = False
        self.met_run = 0
        self.window: dict[str, float] = {}  # the last window's quantiles, us
        self.total = Histogram()
        self.first_at: float | None = None  # when its first messages were seen: the warm-up starts
        self.warm = Histogram()  # the cumulative histogram when the warm-up ended (not judged)
        self.warmup_windows = 0


class BudgetWatch:
    """The run-time side of budgets: windows, misses, events (see the module docstring)."""

    def __init__(self, plan: Plan, window_s: float = WINDOW_S) -> None:
        self.window_s = window_s
        self.states = [_State(b) for b in plan.budgets]

    def __bool__(self) -> bool:
        return bool(self.states)

    def merged(self, report: Any, budget: BudgetPlan) -> Histogram:
        """The budget's cumulative histogram in ``report`` (every edge or path instance)."""
        hist = Histogram()
        if budget.kind == "edge":
            for e in budget.edges:
                h = report.latency.get(e)
                if h is not None:
                    hist.merge(h)
        else:
            for (source, sink), h in report.e2e_latency.items():
                if source in budget.sources and sink in budget.sinks:
                    hist.merge(h)
        return hist

    def update(self, report: Any, now: float) -> list[dict[str, Any]]:
        """Close the windows that are due; the events (missed, met again) they raise."""
        events = []
        for st in self.states:
            hist = self.merged(report, st.budget)
            st.total = hist
            if hist.n and st.first_at is None:
                st.first_at = now
            if hist.n <= st.last.n or now - st.last_at < self.window_s:
                continue
            delta = Histogram([max(0, a - b) for a, b in zip(hist.counts, st.last.counts, strict=True)])
            st.last, st.last_at = hist, now
            if st.first_at is not None and now - st.first_at < st.budget.warmup_s:
                st.warm, st.warmup_windows = hist, st.warmup_windows + 1  # warm-up: seen, not judged
                st.window = _quantiles(delta)
                continue
            event = self._window(st, delta)
            if event is not None:
                events.append(event)
        return events

    def _window(self, st: _State, delta: Histogram) -> dict[str, Any] | None:
        st.windows += 1
        missed: list[tuple[str, float, float]] = []
        st.window = _quantiles(delta)
        for key, q in QUANTILES:
            value = delta.quantile(q)
            if value is None:
                continue
            limit = st.limits.get(key)
            if limit is not None and value > limit * 1e9:
                st.missed[key] += 1
                missed.append((key, limit, value / 1e9))
        if "max" in st.limits:
            over = _over(delta, st.limits["max"])
            st.window["max"] = round(_top(delta) / 1e3, 1)
            if over:
                st.over_max += over
                st.missed["max"] += over
                missed.append(("max", st.limits["max"], _top(delta) / 1e9))
        if missed:
            st.missed_windows += 1
            st.met_run = 0
            if not st.firing:
                st.firing = True
                key, limit, value = missed[0]
                log.warning("latency budget %s missed: %s %s over its %s (%d messages in the window)",
                            st.budget.name, key, format_duration(value), format_duration(limit), delta.n)
                return self._event(st, "missed", key, limit, value, delta.n)
            return None
        st.met_run += 1
        if st.firing and st.met_run >= RESOLVE_AFTER:
            st.firing = False
            key = next(iter(st.limits))
            measured = st.window.get(key, 0.0) / 1e6
            return self._event(st, "met", key, st.limits[key], measured, delta.n)
        return None

    def _event(self, st: _State, state: str, key: str, limit: float, value: float, n: int) -> dict[str, Any]:
        return {"budget": st.budget.name, "kind": st.budget.kind, "state": state, "quantile": key,
                "limit_us": round(limit * 1e6, 1), "measured_us": round(value * 1e6, 1), "messages": n,
                "window_s": self.window_s, "t_ns": time.time_ns()}

    def table(self) -> list[dict[str, Any]]:
        """Every budget: its limits, the whole run's and the last window's figures, its misses."""
        rows = []
        for st in self.states:
            # what is judged: the run after the warm-up
            total = Histogram([max(0, a - b) for a, b in zip(st.total.counts, st.warm.counts, strict=True)])
            measured: dict[str, float] = {}
            for key, q in QUANTILES:
                value = total.quantile(q)
                if value is not None:
                    measured[key] = round(value / 1e3, 1)
            if total.n:
                measured["max"] = round(_top(total) / 1e3, 1)
            over_total = {k: measured[k] for k in st.limits if k != "max" and k in measured
                          and measured[k] > st.limits[k] * 1e6}
            if not total.n:
                status = "warm-up" if st.warm.n else "no data"
            elif st.missed_windows or st.over_max or over_total:
                status = "missed"
            else:
                status = "met"
            rows.append({"name": st.budget.name, "kind": st.budget.kind,
                         "limits_us": {k: round(v * 1e6, 1) for k, v in st.limits.items()},
                         "measured_us": measured, "window_us": dict(st.window), "messages": total.n,
                         "windows": st.windows, "missed_windows": st.missed_windows, "missed": dict(st.missed),
                         "over_max": st.over_max, "status": status, "firing": st.firing,
                         "warmup_s": st.budget.warmup_s, "warmup_windows": st.warmup_windows,
                         "warmup_messages": st.warm.n})
        return rows


_PROBE = Histogram([0])  # for bucket values only


def _quantiles(hist: Histogram) -> dict[str, float]:
    """A window's quantiles, us."""
    out = {}
    for key, q in QUANTILES:
        value = hist.quantile(q)
        if value is not None:
            out[key] = round(value / 1e3, 1)
    return out


def _over(hist: Histogram, limit_s: float) -> int:
    """Messages whose bucket (its midpoint) lies above ``limit_s``."""
    limit_ns = limit_s * 1e9
    return sum(c for i, c in enumerate(hist.counts) if c and _PROBE._value(i) > limit_ns)


def _top(hist: Histogram) -> float:
    """The largest latency seen (its bucket's midpoint), ns."""
    for i in range(len(hist.counts) - 1, -1, -1):
        if hist.counts[i]:
            return _PROBE._value(i)
    return 0.0

