"""What a terminal shows of a run: the live view, a status line for logs, the final report.

All three read a ``Report`` (with its ``live`` figures while the graph runs), so
``dmnflow launch`` and ``dmnflow top`` show the same thing. Tables fit the console's
width: names wrap, nothing is cut (a report in a log file is read at 80 columns).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

__all__ = ["FIGURES", "format_value", "live_view", "render_report", "status_line"]

# Summary figures shown first when a node has them (the rest are in the report): what a
# trading graph's operator watches, and what any node's counters are most often called.
FIGURES = ("equity", "pnl", "sharpe", "drawdown", "max_drawdown", "tick_to_trade_p50_us", "tick_to_trade_p99_us",
           "firing_now", "alerts_firing", "alerts_critical", "stale_now", "fills", "accepted", "days")
LIVE_FIGURES = 6  # per node in the live view


def _num(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "-"
        if abs(value) >= 1e5:
            return f"{value:,.0f}"
        return f"{value:,.{digits}g}"
    return str(value)


def _rate(value: Any) -> str:
    if value is None:
        return "-"
    if value >= 1e4:
        return f"{value / 1e3:,.1f}k"
    return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def _us(value: Any) -> str:
    """Microseconds, for columns headed "us"."""
    return "-" if value is None else f"{value:,.1f}"


def _latency(value_us: float) -> str:
    """A latency as a person reads it: us below a millisecond, ms below a second."""
    if value_us >= 1e6:
        return f"{value_us / 1e6:.3g}s"
    if value_us >= 1e3:
        return f"{value_us / 1e3:.3g}ms"
    return f"{value_us:.3g}us"


def _duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def _edge_name(e: Any) -> str:
    return f"{e.src} → {e.dst}"


def _table(title: str, columns: Iterable[tuple[str, str]]) -> Table:
    table = Table(title=title, title_justify="left", expand=False, pad_edge=False, box=None, padding=(0, 1),
                  header_style="bold")
    for name, justify in columns:
        if justify == "name":
            table.add_column(name, justify="left", overflow="fold", ratio=1)
        else:
            table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    return table


def _rows(title: str, names: list[str], columns: list[str], rows: list[list[Any]], width: int,
          first: str = "edge") -> RenderableType:
    """A table of named rows; when the names do not fit beside the numbers at ``width``, each
    row is stacked instead: its name on a line of its own, its numbers below (nothing cut)."""
    def plain(cell: Any) -> str:
        return cell.plain if isinstance(cell, Text) else str(cell)
    name_w = max([len(n) for n in names] + [len(first)])
    nums_w = sum(max([len(c)] + [len(plain(r[i])) for r in rows]) + 2 for i, c in enumerate(columns))
    if name_w + 1 + nums_w <= width:  # (each column is padded by a space on either side)
        table = _table(title, [(first, "name"), *((c, "right") for c in columns)])
        for name, row in zip(names, rows, strict=True):
            table.add_row(Text(name), *row)
        return table
    lines: list[RenderableType] = [Text(title, style="italic")]
    for name, row in zip(names, rows, strict=True):
        lines.append(Text(name, overflow="fold"))
        text, used = Text("    "), 4
        for column, cell in zip(columns, row, strict=True):
            value = cell if isinstance(cell, Text) else Text(str(cell))
            size = len(column) + 1 + len(value.plain) + 2
            if used + size > width and used > 4:  # the next figure on a line of its own: never split
                lines.append(text)
                text, used = Text("    "), 4
            text.append(f"{column} ", style="dim")
            text.append(value)
            text.append("  ")
            used += size
        lines.append(text)
    return Group(*lines)


def figures(summary: dict[str, Any] | None, limit: int | None = None) -> list[tuple[str, str]]:
    """A node summary's scalar figures, the well-known ones first; ``limit`` of them."""
    if not summary:
        return []
    keys = [k for k in FIGURES if k in summary] + [k for k in summary if k not in FIGURES]
    out = []
    for key in keys:
        value = summary[key]
        if isinstance(value, dict | list):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            continue
        out.append((key, _num(value)))
        if limit is not None and len(out) >= limit:
            break
    return out


def _progress_line(progress: dict[str, Any] | None, width: int = 30) -> RenderableType | None:
    if not progress or progress.get("fraction") is None:
        return None
    frac = float(progress["fraction"])
    unit = progress.get("unit") or ""
    text = Text(f" {_num(progress['done'])}/{_num(progress['total'])} {unit} {frac * 100:.0f}%")
    if progress.get("eta_s") is not None:
        text.append(f"  ETA {_duration(progress['eta_s'])}")
    grid = Table.grid(padding=(0, 0))
    grid.add_column(width=width)
    grid.add_column()
    grid.add_row(ProgressBar(total=1.0, completed=frac, width=width), text)
    return grid


def live_view(report: Any, title: str | None = None, width: int = 120) -> RenderableType:
    """The live view: progress, nodes, edges, budgets and figures of a running graph, for a
    console ``width`` wide."""
    live = report.live or {}
    parts: list[RenderableType] = []
    head = Text.assemble((title or report.graph, "bold"), f"  {report.status} {report.duration_s:.1f}s")
    parts.append(head)
    bar = _progress_line(live.get("progress"))
    if bar is not None:
        parts.append(bar)
    lnodes = live.get("nodes", {})
    nodes = _table("nodes", [("node", "name"), ("status", "left"), ("cpu %", "right"), ("in/s", "right"),
                             ("out/s", "right"), ("restarts", "right")])
    for name, n in report.nodes.items():
        row = lnodes.get(name, {})
        status = Text(n.status, style={"running": "green", "failed": "red", "restarting": "yellow"}.get(n.status, ""))
        cpu = row.get("cpu_pct")
        nodes.add_row(Text(name), status, "-" if cpu is None else f"{cpu:.0f}", _rate(row.get("in_s")),
                      _rate(row.get("out_s")), str(n.restarts) if n.restarts else "")
    parts.append(nodes)
    ledges = live.get("edges", {})
    rows = []
    for e in report.edges:
        row = ledges.get(str(e.id), {})
        drops = row.get("drops", 0)
        rows.append([_rate(row.get("msg_s")), _us(row.get("p50_us")), _us(row.get("p99_us")),
                     _num(row.get("queued", 0)), Text(_num(drops), style="red" if drops else "")])
    parts.append(_rows("edges", [_edge_name(e) for e in report.edges],
                       ["msg/s", "p50 us", "p99 us", "queued", "drops"], rows, width))
    if report.budgets:
        parts.append(_budgets(report.budgets, width, live=True))
    shown = [(name, figures(n.summary, LIVE_FIGURES)) for name, n in report.nodes.items() if n.summary]
    shown = [(name, f) for name, f in shown if f]
    if shown:
        grid = _table("figures", [("node", "name"), ("", "left")])
        for name, figs in shown:
            grid.add_row(Text(name), Text("  ".join(f"{k} {v}" for k, v in figs), overflow="fold"))
        parts.append(grid)
    return Group(*parts)


def _budgets(rows: list[dict[str, Any]], width: int, live: bool = False) -> RenderableType:
    names, cells = [], []
    for b in rows:
        limits = b.get("limits_us", {})
        got = b.get("window_us" if live else "measured_us", {}) or {}
        status = b.get("status", "")
        over = f", {b['over_max']:,} over max" if b.get("over_max") else ""
        names.append(b["name"])
        cells.append([" ".join(f"{k}<{_us(v)}" for k, v in limits.items()),
                      " ".join(f"{k} {_us(got[k])}" for k in limits if k in got) or "-",
                      f"{b.get('missed_windows', 0)}/{b.get('windows', 0)}",
                      Text(status + over, style={"missed": "red", "met": "green"}.get(status, ""))])
    return _rows("latency budgets (us)", names, ["limit", "window" if live else "measured", "missed", "status"],
                 cells, width, first="budget")


def status_line(report: Any) -> str:
    """One line for a log: elapsed, progress and ETA, throughput, the slowest edge, figures."""
    live = report.live or {}
    parts = [f"{report.graph} {report.status} {_duration(report.duration_s)}"]
    states: dict[str, int] = {}
    for n in report.nodes.values():
        states[n.status] = states.get(n.status, 0) + 1
    parts.append(", ".join(f"{v} {k}" for k, v in sorted(states.items())))
    prog = live.get("progress")
    if prog and prog.get("fraction") is not None:
        eta = f", ETA {_duration(prog['eta_s'])}" if prog.get("eta_s") is not None else ""
        parts.append(f"{_num(prog['done'])}/{_num(prog['total'])} {prog.get('unit', '')} "
                     f"({prog['fraction'] * 100:.0f}%{eta})")
    ledges = live.get("edges", {})
    rates = [(r.get("msg_s") or 0.0) for r in ledges.values()]
    if rates:
        parts.append(f"{_rate(sum(rates))} msg/s over {len(rates)} edges")
    slow = max(((r.get("p99_us") or 0.0, k) for k, r in ledges.items()), default=(0.0, ""))
    if slow[0]:
        e = next(e for e in report.edges if str(e.id) == slow[1])
        parts.append(f"slowest p99 {_latency(slow[0])} ({e.dst})")
    missed = [b["name"] for b in report.budgets if b.get("firing")]
    if missed:
        parts.append(f"budgets missed: {', '.join(missed)}")
    for name, n in report.nodes.items():
        figs = [(k, v) for k, v in figures(n.summary) if k in FIGURES[:4]]
        if figs:
            parts.append(f"{name} " + " ".join(f"{k} {v}" for k, v in figs))
    return " | ".join(parts)


def render_report(report: Any, console: Console, errors: Console | None = None) -> None:
    """The report at the end of a run, readable at 80 columns; its errors on ``errors``
    (the CLI's stderr), so a script reading the tables is not handed them."""
    colour = {"finished": "green", "stopped": "yellow", "failed": "red"}.get(report.status, "")
    console.print(Text.assemble((report.graph, "bold"), " ", (report.status, colour),
                                f" in {report.duration_s:.2f}s (start-up {report.startup_s:.2f}s)"))
    prog = (report.live or {}).get("progress")
    if prog and prog.get("fraction") is not None:
        console.print(f"progress: {_num(prog['done'])}/{_num(prog['total'])} {prog.get('unit', '')} "
                      f"({prog['fraction'] * 100:.0f}%)")
    hosts = len({n.host for n in report.nodes.values()}) > 1  # several hosts (--backend ray): say where
    nodes = _table("nodes", [("node", "name"), ("in", "right"), ("out", "right"), ("cpu s", "right"),
                             ("restarts", "right"), ("status", "left")] + ([("host", "left")] if hosts else []))
    # the names are what a reader looks for: never squeezed out by the host column, which shows the
    # host's label or name (its address and Ray node id are in the sockets of the --report JSON)
    nodes.columns[0].min_width = min(max((len(n) for n in report.nodes), default=4), max(console.width // 3, 12))
    short = _short_hosts({n.host for n in report.nodes.values()})
    for n in report.nodes.values():
        nodes.add_row(Text(n.name), _num(n.messages_in), _num(n.messages_out), f"{n.cpu_s:.2f}", str(n.restarts),
                      n.status, *((short[n.host],) if hosts else ()))
    console.print(nodes)
    rows = [[_num(e.sent), _num(e.received), Text(_num(e.lost), style="red" if e.lost else ""),
             _num(e.decode_errors), _us(e.p50_us), _us(e.p99_us)] for e in report.edges]
    console.print(_rows("edges", [_edge_name(e) for e in report.edges],
                        ["sent", "received", "lost", "decode err", "p50 us", "p99 us"], rows, console.width))
    if report.e2e:
        e2e = _table("end to end", [("source → sink", "name"), ("messages", "right"), ("p50 us", "right"),
                                    ("p99 us", "right")])
        for row in report.e2e:
            e2e.add_row(Text(f"{row['source']} → {row['sink']}"), _num(row["messages"]), _us(row["p50_us"]),
                        _us(row["p99_us"]))
        console.print(e2e)
    if report.budgets:
        console.print(_budgets(report.budgets, console.width))
    summaries = [(n.name, n.summary) for n in report.nodes.values() if n.summary]
    if summaries:
        table = _table("node summaries", [("node", "name"), ("figure", "name"), ("value", "right")])
        for name, summary in summaries:
            first = True
            for key, value in summary.items():
                text = format_value(value)
                table.add_row(Text(name if first else ""), Text(str(key)), Text(text))
                first = False
        console.print(table)
    for line in report.errors:
        (errors or console).print(Text(f"error: {line}", style="red"), soft_wrap=True)


def _short_hosts(hosts: set[str]) -> dict[str, str]:
    """Each host as the nodes table shows it: its label or name ("gpu1" of "gpu1 (10.0.0.2, ray
    node 1a2b3c4d)"), with the Ray node id where several nodes share one (a one-machine cluster)."""
    short = {h: h.split(" (", 1)[0] for h in hosts}
    if len(set(short.values())) == len(hosts):
        return short
    return {h: f"{s} {h.rsplit('ray node ', 1)[1].rstrip(')')}" if "ray node " in h else h for h, s in short.items()}


def format_value(value: Any) -> str:
    """A figure in a table cell: numbers with separators, a long list or mapping pointed at the JSON."""
    if isinstance(value, dict | list):
        return f"({len(value)} items: --report JSON)" if len(json.dumps(value, default=str)) > 30 else \
            json.dumps(value, default=str)
    return _num(value)
