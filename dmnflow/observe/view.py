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

from ..spec.units import format_duration

__all__ = ["FIGURES", "format_value", "live_view", "render_report", "status_line"]

# Summary figures shown first when a node has them (the rest are in the report): what a
# trading graph's operator watches, and what any node's counters are most often called.
FIGURES = ("equity", "pnl", "sharpe", "drawdown", "max_drawdown", "tick_to_trade_p50_us", "tick_to_trade_p99_us",
           "firing_now", "alerts_firing", "alerts_critical", "stale_now", "fills", "accepted", "days")


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
        if abs(value) >= 10 ** digits:  # 31,320, not 3.132e+04: g goes exponential past its digits
            return f"{value:,.0f}"
        if 1e-7 <= abs(value) < 1e-4:  # a drawdown 0.00006762, not 6.762e-05: g goes exponential below 1e-4
            fixed = f"{value:.{digits - 1 - math.floor(math.log10(abs(value)))}f}"
            return fixed.rstrip("0").rstrip(".")
        return f"{value:,.{digits}g}"
    return str(value)


def _rate(value: Any) -> str:
    if value is None:
        return "-"
    if value >= 1e4:
        return f"{value / 1e3:,.1f}k"
    return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def _us(value: Any) -> str:
    """Microseconds (the report's ``*_us``) as a person reads them: ``2.08 s``, ``850 us``."""
    return "-" if value is None else format_duration(value * 1e-6)


def _latency(value_us: float) -> str:
    """A latency in the status line (units.format_duration)."""
    return format_duration(value_us * 1e-6)


def _figure_value(key: str, value: Any) -> str:
    """A node's figure: one named ``*_us`` (``tick_to_trade_p50_us``) is a latency."""
    if key.endswith("_us") and isinstance(value, int | float) and not isinstance(value, bool):
        return _us(value)
    return format_value(value)


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
    return _sized_rows(title, names, columns, rows, width, first)[0]


def _sized_rows(title: str, names: list[str], columns: list[str], rows: list[list[Any]], width: int,
                first: str = "edge") -> tuple[RenderableType, int]:
    """``_rows``, and how many lines it takes at ``width``."""
    def plain(cell: Any) -> str:
        return cell.plain if isinstance(cell, Text) else str(cell)
    name_w = max([len(n) for n in names] + [len(first)])
    nums_w = sum(max([len(c)] + [len(plain(r[i])) for r in rows]) + 2 for i, c in enumerate(columns))
    if name_w + 1 + nums_w <= width:  # (each column is padded by a space on either side)
        table = _table(title, [(first, "name"), *((c, "right") for c in columns)])
        for name, row in zip(names, rows, strict=True):
            table.add_row(Text(name), *row)
        return table, 2 + len(rows)
    lines: list[RenderableType] = [Text(title, style="italic")]
    count = 1
    for name, row in zip(names, rows, strict=True):
        lines.append(Text(name, overflow="fold"))
        count += -(-len(name) // max(1, width))
        text, used = Text("    "), 4
        for column, cell in zip(columns, row, strict=True):
            value = cell if isinstance(cell, Text) else Text(str(cell))
            size = len(column) + 1 + len(value.plain) + 2
            if used + size > width and used > 4:  # the next figure on a line of its own: never split
                lines.append(text)
                count += 1
                text, used = Text("    "), 4
            text.append(f"{column} ", style="dim")
            text.append(value)
            text.append("  ")
            used += size
        lines.append(text)
        count += 1
    return Group(*lines), count


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
        out.append((key, _figure_value(key, value)))
        if limit is not None and len(out) >= limit:
            break
    return out


def _progress_line(progress: dict[str, Any] | None, console_width: int = 120) -> tuple[RenderableType, int] | None:
    """A finite run's progress bar, its count and ETA beside it (below it where the console is
    narrow), and the rows it takes."""
    if not progress or progress.get("fraction") is None:
        return None
    frac = float(progress["fraction"])
    unit = progress.get("unit") or ""
    text = Text(f" {_num(progress['done'])}/{_num(progress['total'])} {unit} {frac * 100:.0f}%")
    if progress.get("eta_s") is not None:
        text.append(f"  ETA {_duration(progress['eta_s'])}")
    width = min(30, console_width - len(text.plain))
    if width < 10:  # the bar on a line of its own
        return Group(ProgressBar(total=1.0, completed=frac, width=min(30, console_width)), text), 2
    grid = Table.grid(padding=(0, 0))
    grid.add_column(width=width)
    grid.add_column(no_wrap=True)
    grid.add_row(ProgressBar(total=1.0, completed=frac, width=width), text)
    return grid, 1


def live_view(report: Any, title: str | None = None, width: int = 120, height: int | None = None) -> RenderableType:
    """The live view of a running graph for a console ``width`` wide and ``height`` tall: the
    head (status, progress, what needs a look), the headline figures, the nodes, then the edges
    and budgets, worst first; what does not fit in ``height`` rows collapses into a summary
    line (None: everything). Nothing is cut: a name or a figure is on one line, whole."""
    live = report.live or {}
    fixed: list[_Block] = [_head(report, title, width)]
    bar = _progress_line(live.get("progress"), width)
    if bar is not None:
        fixed.append(bar)
    heads, rest = _figure_lines(report, width)
    fixed += heads
    sections = [[(Group(), 0), rest], _node_forms(report, width), _edge_forms(report, width)]
    if report.budgets:
        sections.append(_budget_forms(report.budgets, width))
    chosen = [len(forms) - 1 if height is None else 0 for forms in sections]
    used = sum(rows for _, rows in fixed) + sum(forms[k][1] for forms, k in zip(sections, chosen, strict=True))
    grown = height is not None
    while grown:  # a step at a time, section by section: each gets its share of the rows left
        grown = False
        for i, forms in enumerate(sections):
            k = chosen[i]
            if k + 1 < len(forms) and used - forms[k][1] + forms[k + 1][1] <= (height or 0):
                used += forms[k + 1][1] - forms[k][1]
                chosen[i] = k + 1
                grown = True
    return Group(*(part for part, _ in fixed), *(forms[k][0] for forms, k in zip(sections, chosen, strict=True)))


_Block = tuple[RenderableType, int]  # a part of the live view, and the rows it takes


def _head(report: Any, title: str | None, width: int) -> _Block:
    """The first line: the graph, its status and age, and what needs a look."""
    states: dict[str, int] = {}
    for n in report.nodes.values():
        states[n.status] = states.get(n.status, 0) + 1
    items = [Text(", ".join(f"{v} {k}" for k, v in sorted(states.items())),
                  style="red" if "failed" in states else "yellow" if "restarting" in states else "")]
    restarts = sum(n.restarts for n in report.nodes.values())
    if restarts:
        items.append(Text(f"{restarts:,} restarts", style="yellow"))
    drops = sum(r.get("drops", 0) or 0 for r in (report.live or {}).get("edges", {}).values())
    if drops:
        items.append(Text(f"{drops:,} dropped", style="red"))
    missed = sum(1 for b in report.budgets if b.get("firing"))
    if missed:
        items.append(Text(f"{missed} budget{'s' * (missed != 1)} missed", style="red"))
    head = Text.assemble((title or report.graph, "bold"), f"  {report.status} {report.duration_s:.1f}s")
    return _pack(head, items, width)


def _pack(first: Text, items: list[Text], width: int, sep: str = "  ", indent: int = 2) -> _Block:
    """``first`` then ``items`` on as few lines as ``width`` allows, breaking only between items
    (an item wider than the console itself wraps at its spaces); ``first`` may be an indent only."""
    out = first.copy()
    used, lines = len(first.plain), 1
    fresh = not first.plain.strip()  # nothing on the line yet but its indent
    for item in items:
        size = len(item.plain)
        if not fresh and used + len(sep) + size > width:
            out.append("\n" + " " * indent)
            used, lines, fresh = indent, lines + 1, True
        if not fresh:
            out.append(sep)
            used += len(sep)
        out.append_text(item)
        used, fresh = used + size, False
        while used > width:  # an item too wide for any line
            used, lines = used - width, lines + 1
    out.overflow = "fold"
    return out, lines


# The figures a graph's operator reads first: each node with one of these gets a line of its own.
HEADLINE = FIGURES[:7]


def _figure_lines(report: Any, width: int) -> tuple[list[_Block], _Block]:
    """The well-known figures of every node (``FIGURES``): a line for each node with a headline
    figure (those with the first-listed, most figures first), and the other nodes' packed."""
    rows = []
    for order, (name, n) in enumerate(report.nodes.items()):
        figs = [(k, v) for k, v in figures(n.summary) if k in FIGURES]
        if figs:
            top = [FIGURES.index(k) for k, _ in figs if k in HEADLINE]
            rows.append((min(top) if top else len(FIGURES), -len(top), order, name, figs))
    rows.sort()
    heads = [r for r in rows if r[0] < len(FIGURES)]
    name_w = max((len(r[3]) for r in heads), default=0)
    out: list[_Block] = []
    for *_, name, figs in heads:
        cells = [_figure(k, v) for k, v in figs]
        if name_w + 2 + max(len(c.plain) for c in cells) <= width:
            out.append(_pack(Text(name.ljust(name_w), style="bold"), cells, width, indent=name_w + 2))
        else:  # too narrow for a name column: the name on a line of its own
            out.append((Text(name, style="bold", overflow="fold"), -(-len(name) // max(1, width))))
            out.append(_pack(Text("  "), cells, width))
    items = []
    for *_, name, figs in rows[len(heads):]:
        cell = Text(name, style="bold")
        for i, (k, v) in enumerate(figs):
            if i and len(cell.plain) + 1 + len(k) + 1 + len(v) > width:  # the rest of a wide node: items of their own
                items.append(cell)
                cell = Text("")
            if cell.plain:
                cell.append(" ")
            cell.append_text(_figure(k, v))
        items.append(cell)
    rest = _pack(items[0], items[1:], width, sep="  ·  ", indent=0) if items else (Group(), 0)
    return out, rest


def _figure(key: str, value: str) -> Text:
    return Text.assemble((key, "dim"), " ", value)


_COLOUR = {"running": "green", "failed": "red", "restarting": "yellow"}


def _node_forms(report: Any, width: int) -> list[_Block]:
    """The nodes compact (several to a row: name, cpu %, out/s, and the status where it is not
    ``running``), then as a table (a row each)."""
    lnodes = (report.live or {}).get("nodes", {})
    cells = []
    for name, n in report.nodes.items():
        row = lnodes.get(name, {})
        cpu = row.get("cpu_pct")
        cell = Text(name, style="bold")
        if n.status != "running":
            cell.append(f" {n.status}", style=_COLOUR.get(n.status, ""))
        cell.append(f" {'-' if cpu is None else f'{cpu:.0f}'}% {_rate(row.get('out_s'))}/s")
        if n.restarts:
            cell.append(f" {n.restarts} restarts", style="yellow")
        cells.append(cell)
    per_row = max(1, (width + 3) // (max((len(c.plain) for c in cells), default=0) + 3))
    grid = Table.grid(padding=(0, 3, 0, 0))
    for _ in range(min(per_row, len(cells))):
        grid.add_column(no_wrap=True)
    for i in range(0, len(cells), per_row):
        grid.add_row(*cells[i:i + per_row])
    compact = (Group(Text("nodes (cpu %, out/s)", style="italic"), grid), 1 + -(-len(cells) // per_row))
    table = _table("nodes", [("node", "name"), ("status", "left"), ("cpu %", "right"), ("in/s", "right"),
                             ("out/s", "right"), ("restarts", "right")])
    for name, n in report.nodes.items():
        row = lnodes.get(name, {})
        cpu = row.get("cpu_pct")
        table.add_row(Text(name), Text(n.status, style=_COLOUR.get(n.status, "")),
                      "-" if cpu is None else f"{cpu:.0f}", _rate(row.get("in_s")), _rate(row.get("out_s")),
                      str(n.restarts) if n.restarts else "")
    name_w = max([len(n) for n in report.nodes] + [4])
    if name_w + 45 > width:  # the table would fold names: the compact form only
        return [compact]
    return [compact, (table, 2 + len(report.nodes))]


def _edge_forms(report: Any, width: int) -> list[_Block]:
    """The edges worst first (drops, then queued, then p99): a summary line, then a row more at
    a time, the rest summed up below them."""
    ledges = (report.live or {}).get("edges", {})
    edges = [(e, ledges.get(str(e.id), {})) for e in report.edges]
    edges.sort(key=lambda er: (-(er[1].get("drops") or 0), -(er[1].get("queued") or 0),
                               -(er[1].get("p99_us") or 0.0)))
    names = [_edge_name(e) for e, _ in edges]
    cells = []
    for _, row in edges:
        drops = row.get("drops", 0)
        cells.append([_rate(row.get("msg_s")), _us(row.get("p50_us")), _us(row.get("p99_us")),
                      _num(row.get("queued", 0)), Text(_num(drops), style="red" if drops else "")])

    def rest(shown: int) -> _Block:
        left = [r for _, r in edges[shown:]]
        drops = sum(r.get("drops") or 0 for r in left)
        items = [Text(f"{_rate(sum(r.get('msg_s') or 0.0 for r in left))} msg/s"),
                 Text(f"p99 <= {_us(max((r.get('p99_us') or 0.0 for r in left), default=0.0))}"),
                 Text(f"{sum(r.get('queued') or 0 for r in left):,} queued"),
                 Text(f"{drops:,} dropped", style="red" if drops else "")]
        return _pack(Text(f"{len(left)} {'more ' if shown else ''}edges:", style="italic"), items, width)

    return _growing(len(edges), lambda k: _sized_rows("edges" if k == len(edges) else "edges, worst first",
                                                      names[:k], ["msg/s", "p50", "p99", "queued", "drops"],
                                                      cells[:k], width), rest)


def _budget_forms(budgets: list[dict[str, Any]], width: int) -> list[_Block]:
    """The budgets by status (missed now first, then missed before, warm-up or no data, met): a
    summary line, then a row more at a time."""
    rank = {"missed": 0, "warm-up": 1, "no data": 1, "met": 2}
    order = sorted(budgets, key=lambda b: (not b.get("firing"), rank.get(b.get("status", ""), 3)))

    def rest(shown: int) -> _Block:
        counts: dict[str, int] = {}
        for b in order[shown:]:
            counts[b.get("status", "")] = counts.get(b.get("status", ""), 0) + 1
        items = [Text(f"{v} {k}", style={"missed": "red", "met": "green"}.get(k, ""))
                 for k, v in sorted(counts.items(), key=lambda kv: rank.get(kv[0], 3))]
        return _pack(Text(f"{len(order) - shown} {'more ' if shown else ''}latency budgets:", style="italic"),
                     items, width)

    return _growing(len(order), lambda k: _sized_budgets(order[:k], width, live=True), rest)


def _growing(n: int, table: Any, rest: Any) -> list[_Block]:
    """A section's forms from smallest to whole: the first ``k`` rows as a table (``table(k)``),
    the other ``n - k`` summed up in one line (``rest(k)``), for k = 0 .. n."""
    forms: list[_Block] = []
    for k in range(n + 1):
        parts, rows = [], 0
        if k:
            shown, rows = table(k)
            parts.append(shown)
        if k < n:
            line, more = rest(k)
            parts.append(line)
            rows += more
        forms.append((Group(*parts), rows))
    return forms


def _budgets(rows: list[dict[str, Any]], width: int, live: bool = False) -> RenderableType:
    return _sized_budgets(rows, width, live)[0]


def _sized_budgets(rows: list[dict[str, Any]], width: int, live: bool = False) -> tuple[RenderableType, int]:
    names, cells = [], []
    for b in rows:
        limits = b.get("limits_us", {})
        got = b.get("window_us" if live else "measured_us", {}) or {}
        status = b.get("status", "")
        over = f", {b['over_max']:,} over max" if b.get("over_max") else ""
        names.append(b["name"])
        cells.append([", ".join(f"{k} < {_us(v)}" for k, v in limits.items()),
                      ", ".join(f"{k} {_us(got[k])}" for k in limits if k in got) or "-",
                      f"{b.get('missed_windows', 0)}/{b.get('windows', 0)}",
                      Text(status + over, style={"missed": "red", "met": "green"}.get(status, ""))])
    return _sized_rows("latency budgets", names, ["limit", "window" if live else "measured", "missed", "status"],
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
    """The report at the end of a run, readable at 80 columns: a headline block first (how it
    ended, what was lost, the graph's key figures), the details after; its errors on ``errors``
    (the CLI's stderr), so a script reading the tables is not handed them."""
    for part in _headline(report, console.width):
        console.print(part)
    console.print(Text("details", style="bold underline"))
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
                        ["sent", "received", "lost", "decode err", "p50", "p99"], rows, console.width))
    if report.e2e:
        e2e = _table("end to end", [("source → sink", "name"), ("messages", "right"), ("p50", "right"),
                                    ("p99", "right")])
        for row in report.e2e:
            e2e.add_row(Text(f"{row['source']} → {row['sink']}"), _num(row["messages"]), _us(row["p50_us"]),
                        _us(row["p99_us"]))
        console.print(e2e)
    if report.budgets:
        console.print(_budgets(report.budgets, console.width))
    summaries = [(n.name, n.summary) for n in report.nodes.values() if n.summary]
    if summaries:  # every figure of every node, packed under its name (whole, never split)
        console.print(Text("node summaries", style="italic"))
        for name, summary in summaries:
            cells = [_figure(str(key), _figure_value(str(key), value)) for key, value in summary.items()]
            console.print(_pack(Text(name, style="bold"), cells, console.width, indent=4)[0]
                          if len(name) + 2 + max(len(c.plain) for c in cells) <= console.width else
                          Group(Text(name, style="bold"), _pack(Text("    "), cells, console.width, indent=4)[0]))
    cut = getattr(report, "cut", None)
    if cut:  # what a cut drain terminated and lost (runtime/supervisor.py)
        lost = cut.get("lost", 0)
        (errors or console).print(Text(
            f"{'error' if lost else 'warning'}: the drain was cut after {cut['after_s']:.1f}s: {cut['reason']}; "
            f"terminated {', '.join(cut['workers']) or 'no worker'}; "
            + (f"{_num(lost)} records lost (in flight, or held by those workers)" if lost else "no record lost"),
            style="red" if lost else "yellow"), soft_wrap=True)
    for line in report.errors:
        (errors or console).print(Text(f"error: {line}", style="red"), soft_wrap=True)


def _headline(report: Any, width: int) -> list[RenderableType]:
    """What a run's report says first: how it ended, when, what was lost or missed, its progress,
    and the well-known figures of its nodes (the live view's)."""
    colour = {"finished": "green", "stopped": "yellow", "failed": "red"}.get(report.status, "")
    out: list[RenderableType] = [Text.assemble((report.graph, "bold"), " ", (report.status, colour),
                                               f" in {report.duration_s:.2f}s (start-up {report.startup_s:.2f}s)")]
    states: dict[str, int] = {}
    for n in report.nodes.values():
        states[n.status] = states.get(n.status, 0) + 1
    lost = sum(e.lost for e in report.edges) + sum(n.lost for n in report.nodes.values())
    nodes = f"{len(report.nodes)} nodes {next(iter(states))}" if len(states) == 1 else \
        f"{len(report.nodes)} nodes: " + ", ".join(f"{v} {k}" for k, v in sorted(states.items()))
    items = [Text(nodes, style="red" if "failed" in states else ""),
             Text(f"{lost:,} lost", style="red" if lost else "green")]
    decode = sum(e.decode_errors for e in report.edges)
    if decode:
        items.append(Text(f"{decode:,} undecodable", style="red"))
    restarts = sum(n.restarts for n in report.nodes.values())
    if restarts:
        items.append(Text(f"{restarts:,} restarts", style="yellow"))
    if report.budgets:
        missed = sum(1 for b in report.budgets if b.get("status") == "missed")
        items.append(Text(f"{missed} of {len(report.budgets)} latency budgets missed" if missed else
                          f"{len(report.budgets)} latency budgets met", style="red" if missed else "green"))
    if report.errors:
        items.append(Text(f"{len(report.errors)} error{'s' * (len(report.errors) != 1)} (at the end)", style="red"))
    prog = (report.live or {}).get("progress")
    if prog and prog.get("fraction") is not None:
        items.append(Text(f"{_num(prog['done'])}/{_num(prog['total'])} {prog.get('unit', '')} "
                          f"({prog['fraction'] * 100:.0f}%)"))
    out.append(_pack(items[0], items[1:], width, sep="  ·  ")[0])
    heads, (rest, rows) = _figure_lines(report, width)
    return out + [part for part, _ in heads] + ([rest] if rows else [])


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
