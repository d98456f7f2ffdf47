"""Pictures of a compiled plan: mermaid, dot, svg, png, html and json, all from the `Plan`.

Nothing here needs a run, the network or a system package. svg and png use Graphviz's
``dot`` when it is on PATH (its layout is the better one) and otherwise the layered layout
below; the html page always uses the layout below, because its script relies on the
element structure we write. Text is DejaVu Sans: the png is rasterised by resvg with the
subset fonts bundled in ``dmnflow/fonts`` (a fresh machine may have no font at all, and
resvg then draws no text), the html page embeds them, and box sizes come from their
advance widths, so labels fit on every machine.
"""

from __future__ import annotations

import base64
import html
import json
import re
import shutil
import subprocess
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path, PurePosixPath

import networkx as nx
import resvg_py

from .plan import EdgePlan, NodePlan, Plan
from .spec import format_cpus

__all__ = ["FORMATS", "font_faces", "live_svg", "render"]

FORMATS: tuple[str, ...] = ("mermaid", "dot", "svg", "png", "html", "json")

_FONT_FILES = tuple(Path(__file__).with_name("fonts") / name
                    for name in ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf"))
_PAGE = Path(__file__).with_name("viz.html")  # the html export's page: style and script
_FAMILY = "'DejaVu Sans', 'Bitstream Vera Sans', Verdana, sans-serif"
# Advance widths of ' '..'~' in DejaVu Sans and its bold, in hundredths of an em, rounded up
# (read from the bundled fonts), so that estimated label widths never fall short.
_REGULAR = bytes.fromhex(
    "20292e5440604e1c282832542025202240404040404040404040222254545436644545464e403a4e"
    "4c1e1e4238574b4f3d4f46403e4a4563453e452822285432323e4037403e2440401c1c3a1c62403e"
    "40402a3528403c523c3c3540224054"
)
_BOLD = bytes.fromhex(
    "232e35544665581f2e2e3554262a26254646464646464646464628285454543b644e4d4a54454553"
    "5426264e406454564a564e4945524e6f4e49492e252e54323244483c48442c484823234323694845"
    "4848323c3048425d41423b48254854"
)
_OTHER = {"·": 38, "→": 84, "…": 100}

_PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1", "#9c755f",
            "#edc948", "#ff9da7", "#bab0ac")
_NEUTRAL = "#7b8794"
_INK, _INK2, _INK3 = "#1f2933", "#52606d", "#7b8794"

# Geometry of our own drawing, in px.
_MARGIN, _HEADER = 24.0, 40.0
_PAD, _TITLE = 12.0, 20.0  # cluster padding, cluster title strip
_GAP_X, _GAP_BAND = 32.0, 14.0
_SEP_NODE, _SEP_EDGE = 16.0, 6.0
_NODE_MIN_W, _DUMMY_H = 120.0, 6.0
_NODE_LINES = ((13.0, True, _INK, 17.0), (12.0, False, _INK2, 15.0), (11.0, False, _INK3, 14.0))
_SWEEPS = 8


def render(plan: Plan, fmt: str) -> str | bytes:
    """The plan drawn as ``fmt``, one of `FORMATS`: bytes for png, text for the others."""
    renderers = {"mermaid": _mermaid, "dot": _dot, "svg": _svg, "png": _png, "html": _html,
                 "json": _json}
    if fmt not in renderers:
        raise ValueError(f"unknown format {fmt!r}; expected one of: {', '.join(FORMATS)}")
    return renderers[fmt](plan)


# ---- what every format shows -------------------------------------------------------------


def _short(uses: str) -> str:
    return uses.rpartition(":")[2] or uses


def _node_lines(node: NodePlan) -> list[str]:
    """Name, class, placement, model file: what a reader of the picture asks first."""
    lines = [node.name, _short(node.uses)]
    place = ([f"cpus {format_cpus(node.cpus)}"] if node.cpus else []) + (
        [f"gpu {node.gpu}"] if node.gpu is not None else [])
    if place:
        lines.append(" · ".join(place))
    if node.model:
        lines.append(PurePosixPath(node.model.path.replace("\\", "/")).name)
    return lines


def _edge_lines(edge: EdgePlan) -> tuple[str, str]:
    port = edge.src_port if edge.src_port == edge.dst_port else f"{edge.src_port} → {edge.dst_port}"
    return port, f"{edge.codec} · {edge.transport}"


def _ids(plan: Plan) -> dict[str, str]:
    """Identifiers safe in mermaid and dot for node names (``n_``) and layers (``layer_``):
    names may hold ``/``, ``[``, ``]`` or ``-``, and ``end`` alone would end a mermaid block."""
    out: dict[str, str] = {}
    taken: set[str] = set()
    keys = [("n_", n.name) for n in plan.nodes] + [("layer_", la) for la in plan.layers if la]
    for prefix, name in keys:
        base = prefix + (re.sub(r"[^0-9A-Za-z_]+", "_", name).strip("_") or "x")
        ident, i = base, 2
        while ident in taken:
            ident, i = f"{base}_{i}", i + 1
        taken.add(ident)
        out[prefix + name] = ident
    return out


def _colors(plan: Plan) -> dict[str, str]:
    """One palette colour per layer, in order of first appearance; unlayered nodes are grey."""
    named = [layer for layer in plan.layers if layer]
    return {layer: _PALETTE[i % len(_PALETTE)] for i, layer in enumerate(named)} | {"": _NEUTRAL}


def _mix(color: str, t: float, other: str = "#ffffff") -> str:
    """``color`` moved a fraction ``t`` towards ``other`` (tints for fills and borders)."""
    a, b = (bytes.fromhex(c[1:]) for c in (color, other))
    return "#" + "".join(f"{round(x + (y - x) * t):02x}" for x, y in zip(a, b, strict=True))


def _esc(text: str) -> str:
    """Escaped for XML/HTML text and double-quoted attributes, and for Graphviz HTML labels
    (which know ``&quot;`` but not ``&#x27;``)."""
    return html.escape(text, quote=False).replace('"', "&quot;")


# ---- mermaid, dot, json ----------------------------------------------------------------------


def _mm(text: str) -> str:
    """Mermaid's entity codes: a quote or ``#`` would end or garble a quoted label."""
    codes = {"#": "#35;", '"': "#quot;", "<": "#lt;", ">": "#gt;", "&": "#amp;"}
    return "".join(codes.get(c, c) for c in text)


def _mermaid(plan: Plan) -> str:
    ids, colors = _ids(plan), _colors(plan)
    nodes = {n.name: n for n in plan.nodes}
    out = ["---", f"title: {json.dumps(plan.graph)}", "---", "flowchart LR"]
    for layer, names in plan.layers.items():
        indent = "    " if layer else "  "
        if layer:
            out.append(f'  subgraph {ids["layer_" + layer]}["{_mm(layer)}"]')
        for name in names:
            first, *rest = (_mm(line) for line in _node_lines(nodes[name]))
            out.append(f'{indent}{ids["n_" + name]}["<b>{first}</b><br/>{"<br/>".join(rest)}"]')
        if layer:
            out.append("  end")
    for edge in plan.edges:
        arrow = "-.->" if edge.feedback else "-->"
        port, codec = (_mm(t) for t in _edge_lines(edge))
        out.append(f'  {ids["n_" + edge.src]} {arrow}|"{port}<br/>{codec}"| {ids["n_" + edge.dst]}')
    for i, (layer, color) in enumerate(colors.items()):
        members = ",".join(ids["n_" + name] for name in plan.layers.get(layer, []))
        if members:
            out.append(f"  classDef c{i} fill:{_mix(color, 0.85)},stroke:{color},color:{_INK}")
            out.append(f"  class {members} c{i}")
        if layer:
            out.append(f"  style {ids['layer_' + layer]} fill:{_mix(color, 0.95)},"
                       f"stroke:{_mix(color, 0.5)}")
    return "\n".join(out) + "\n"


def _dq(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _dot(plan: Plan) -> str:
    ids, colors = _ids(plan), _colors(plan)
    nodes = {n.name: n for n in plan.nodes}
    font = 'fontname="DejaVu Sans"'
    out = [
        f"digraph {_dq(plan.graph)} {{",
        f"  graph [rankdir=LR, label=<<B>{_esc(plan.graph)}</B>>, labelloc=t, labeljust=l, "
        f'fontsize=16, {font}, nodesep=0.3, ranksep=0.5, bgcolor="white", pad=0.3];',
        f'  node [shape=box, style="rounded,filled", fillcolor="white", {font}, fontsize=12, '
        f'fontcolor="{_INK}", penwidth=1.3, margin="0.15,0.06"];',
        f'  edge [{font}, fontsize=10, fontcolor="{_INK2}", color="{_NEUTRAL}", arrowsize=0.7];',
    ]
    for layer, names in plan.layers.items():
        color, indent = colors[layer], "    " if layer else "  "
        if layer:
            out.append(f"  subgraph cluster_{ids['layer_' + layer]} {{")
            out.append(f'    label=<<B>{_esc(layer)}</B>>; labeljust=l; style="rounded,filled"; '
                       f'color="{_mix(color, 0.5)}"; fillcolor="{_mix(color, 0.95)}"; '
                       f'fontcolor="{_mix(color, 0.35, "#000000")}"; fontsize=12;')
        for name in names:
            first, *rest = (_esc(line) for line in _node_lines(nodes[name]))
            small = "".join(f'<BR/><FONT POINT-SIZE="{10 if i else 11}" '
                            f'COLOR="{_INK3 if i else _INK2}">{line}</FONT>'
                            for i, line in enumerate(rest))
            out.append(f'{indent}{ids["n_" + name]} [label=<<B>{first}</B>{small}>, '
                       f'color="{color}"];')
        if layer:
            out.append("  }")
    for edge in plan.edges:
        port, codec = (_esc(t) for t in _edge_lines(edge))
        attrs = f'label=<{port}<BR/><FONT POINT-SIZE="9" COLOR="{_INK3}">{codec}</FONT>>'
        if edge.feedback:  # drawn backwards, and left out of the ranking like in our layout
            attrs += ", style=dashed, constraint=false"
        out.append(f"  {ids['n_' + edge.src]} -> {ids['n_' + edge.dst]} [{attrs}];")
    out.append("}")
    return "\n".join(out) + "\n"


def _json(plan: Plan) -> str:
    """networkx's node-link shape (``edges="edges"``), so ``nx.node_link_graph`` reads it back."""
    nodes = [{"id": n.name, "spec_name": n.spec_name, "uses": n.uses, "class": _short(n.uses),
              "layer": n.layer, "process": n.process, "cpus": n.cpus, "gpu": n.gpu,
              "replica": n.replica, "model": n.model.path if n.model else None,
              "inputs": [i.port for i in n.inputs], "outputs": [o.port for o in n.outputs]}
             for n in plan.nodes]
    edges = [{"source": e.src, "target": e.dst, "key": e.id, "src_port": e.src_port,
              "dst_port": e.dst_port, "type": e.type, "codec": e.codec, "transport": e.transport,
              "endpoint": e.endpoint, "pattern": e.pattern, "policy": e.policy, "queue": e.queue,
              "feedback": e.feedback} for e in plan.edges]
    graph = {"name": plan.graph, "layers": [layer for layer in plan.layers if layer]}
    data = {"directed": True, "multigraph": True, "graph": graph, "nodes": nodes, "edges": edges}
    return json.dumps(data, indent=2) + "\n"


# ---- our own layered layout ------------------------------------------------------------------


def _width(text: str, size: float, bold: bool = False) -> float:
    table = _BOLD if bold else _REGULAR
    units = sum(table[ord(c) - 32] if 32 <= ord(c) < 127
                else _OTHER.get(c, 100 if ord(c) >= 0x2E80 else 70) for c in text)
    return units * size / 100


@dataclass(eq=False)
class _Item:
    """A box in the grid: a node, an edge label, or a bend point of a long edge."""

    col: int
    w: float
    h: float
    layer: str | None  # the cluster it sits in
    node: NodePlan | None = None
    label: tuple[str, str] | None = None
    band: int = 1
    x: float = 0.0
    y: float = 0.0
    order: int = 0
    left: list[_Item] = field(default_factory=list)
    right: list[_Item] = field(default_factory=list)


@dataclass
class _Layout:
    width: float
    height: float
    nodes: dict[str, _Item]
    widths: list[float]  # of each column
    chains: list[tuple[EdgePlan, list[_Item], bool]]  # edge, items by column, drawn backwards
    clusters: dict[str, tuple[float, float, float, float]]


def _ranks(plan: Plan) -> dict[str, int]:
    """Columns by longest path, feedback edges ignored, each layer starting after every layer
    that feeds it, so that one layer's nodes form one block of columns."""
    order = {n.name: i for i, n in enumerate(plan.nodes)}
    group = {n.name: n.layer or "\0" + n.name for n in plan.nodes}  # unlayered: alone
    forward = [(e.src, e.dst) for e in plan.edges if not e.feedback and order[e.src] < order[e.dst]]
    layers = nx.DiGraph()
    layers.add_nodes_from(group.values())
    layers.add_edges_from((group[a], group[b]) for a, b in forward if group[a] != group[b])
    blocks = nx.condensation(layers)  # layers feeding each other (a cycle) share a block
    members: dict[int, list[str]] = defaultdict(list)
    for node in plan.nodes:
        members[blocks.graph["mapping"][group[node.name]]].append(node.name)
    preds: dict[str, list[str]] = defaultdict(list)
    for a, b in forward:
        preds[b].append(a)
    rank: dict[str, int] = {}
    last: dict[int, int] = {}
    for block in nx.lexicographical_topological_sort(blocks, key=lambda b: order[members[b][0]]):
        base = max((last[p] + 1 for p in blocks.predecessors(block)), default=0)
        for name in members[block]:  # plan order is topological
            rank[name] = max([base, *(rank[p] + 1 for p in preds[name])])
        last[block] = max(rank[name] for name in members[block])
    return rank


def _lanes(plan: Plan, rank: dict[str, int]) -> tuple[dict[str, int], dict[str, list[int]]]:
    """Each layer's column span, and a lane (horizontal band) per layer such that layers
    sharing columns get different lanes: greedy interval colouring."""
    spans: dict[str, list[int]] = {}
    for node in plan.nodes:
        if node.layer:
            col = 2 * rank[node.name]
            span = spans.setdefault(node.layer, [col, col])
            span[0], span[1] = min(span[0], col), max(span[1], col)
    lane_of: dict[str, int] = {}
    ends: list[int] = []
    for layer in sorted(spans, key=lambda name: spans[name][0]):
        lane = next((i for i, end in enumerate(ends) if end < spans[layer][0]), len(ends))
        if lane == len(ends):
            ends.append(0)
        ends[lane] = spans[layer][1]
        lane_of[layer] = lane
    return lane_of, spans


def _place(cell: list[_Item], want: list[float], lo: float, hi: float) -> None:
    """Put a column's items, in order, as close to ``want`` as their spacing allows (pool
    adjacent violators on the offsets), then inside [lo, hi]."""
    offs = [0.0]
    for a, b in pairwise(cell):
        sep = _SEP_NODE if a.node and b.node else _SEP_EDGE
        offs.append(offs[-1] + a.h / 2 + sep + b.h / 2)
    pools: list[list[float]] = []  # [sum, count]
    for w, o in zip(want, offs, strict=True):
        pools.append([w - o, 1])
        while len(pools) > 1 and pools[-2][0] / pools[-2][1] > pools[-1][0] / pools[-1][1]:
            total, count = pools.pop()
            pools[-1][0] += total
            pools[-1][1] += count
    base = [s / n for s, n in pools for _ in range(int(n))]
    low, high = lo + cell[0].h / 2, hi - cell[-1].h / 2 - offs[-1]
    for item, b, o in zip(cell, base, offs, strict=True):
        item.y = min(max(b, low), max(low, high)) + o


def _layout(plan: Plan) -> _Layout:
    """Sugiyama-style: ranks, bend points for long edges and an item per edge label in the
    columns between ranks, lanes for layers, barycenter sweeps, then coordinates."""
    rank = _ranks(plan)
    lane_of, spans = _lanes(plan, rank)
    lanes = max(1, len(set(lane_of.values())))
    covered = {(col, lane_of[layer]) for layer, (a, b) in spans.items() for col in range(a, b + 1)}

    def free(item: _Item, band: int) -> bool:  # may a non-member sit in this band and column?
        return band % 2 == 0 or (item.col, band // 2) not in covered

    nodes: dict[str, _Item] = {}
    for node in plan.nodes:
        lines = _node_lines(node)
        specs = [_NODE_LINES[min(i, 2)] for i in range(len(lines))]
        w = max(_width(t, s, b) for t, (s, b, _, _) in zip(lines, specs, strict=True)) + 28
        item = _Item(2 * rank[node.name], max(w, _NODE_MIN_W), sum(s[3] for s in specs) + 16,
                     node.layer or None, node=node)
        item.band = 2 * lane_of[node.layer] + 1 if node.layer else 1
        if not node.layer and not free(item, item.band):
            item.band = 2
        nodes[node.name] = item
    chains: list[tuple[EdgePlan, list[_Item], bool]] = []
    for edge in plan.edges:
        a, b = nodes[edge.src], nodes[edge.dst]
        backwards = a.col > b.col
        if backwards:
            a, b = b, a
        inner_layer = a.layer if a.layer == b.layer else None
        lines = _edge_lines(edge)
        label_w = _label_width(lines)
        # a label item in the column after the low end, bend points in the other columns
        # between the ends; an edge within one column goes out to its label and back
        cols = range(a.col + 1, max(b.col, a.col + 2))
        inner = [_Item(col, label_w if col == a.col + 1 else 0.0, 32.0 if col == a.col + 1
                       else _DUMMY_H, inner_layer, label=lines if col == a.col + 1 else None)
                 for col in cols]
        if inner_layer:
            for item in inner:
                item.band = a.band
        else:  # around the clusters in the way, on the side the edge heads to
            step = 1 if b.band >= a.band else -1
            band = a.band if all(free(i, a.band) for i in inner[1:]) else a.band + step
            for item in inner[1:]:
                item.band = band
            inner[0].band = a.band if free(inner[0], a.band) else a.band + step
        path = [a, *inner, b]
        for u, v in pairwise([a, *inner] if a.col == b.col else path):
            u.right.append(v)
            v.left.append(u)
        if a.col == b.col:
            b.right.append(inner[0])
            inner[0].left.append(b)
        chains.append((edge, path, backwards))

    items = list(nodes.values()) + [i for _, path, _ in chains for i in path[1:-1]]
    columns: list[list[_Item]] = [[] for _ in range(max([i.col + 1 for i in items], default=0))]
    for item in items:
        columns[item.col].append(item)
    for column in columns:
        column.sort(key=lambda i: i.band)
        for k, item in enumerate(column):
            item.order = k

    def mean(values: list[float], default: float) -> float:
        return sum(values) / len(values) if values else default

    for sweep in range(_SWEEPS):  # barycenter ordering, within each band of a column
        down = sweep % 2 == 0
        for column in columns[1:] if down else columns[-2::-1]:
            column.sort(key=lambda i: (i.band, mean([n.order for n in (i.left if down else
                                                                        i.right)], i.order)))
            for k, item in enumerate(column):
                item.order = k

    cells: dict[tuple[int, int], list[_Item]] = defaultdict(list)
    for c, column in enumerate(columns):
        for item in column:
            cells[c, item.band].append(item)

    def stack(cell: list[_Item]) -> float:
        return sum(i.h for i in cell) + sum(_SEP_NODE if a.node and b.node else _SEP_EDGE
                                            for a, b in pairwise(cell))

    need = [0.0] * (2 * lanes + 1)
    for (_, band), cell in cells.items():
        need[band] = max(need[band], stack(cell))
    boxed = {2 * lane + 1 for lane in lane_of.values()}
    top: list[float] = []
    y = _MARGIN + _HEADER
    for band, height in enumerate(need):
        y += _PAD + _TITLE if band in boxed else 0.0
        top.append(y)
        y += height + (_PAD if band in boxed else 0.0) + (_GAP_BAND if height else 0.0)
    for (_, band), cell in cells.items():
        _place(cell, [top[band] + need[band] / 2] * len(cell), top[band], top[band] + need[band])
    for sweep in range(_SWEEPS):  # pull items towards their neighbours, straightening edges
        down = sweep % 2 == 0
        for c in range(len(columns)) if down else range(len(columns) - 1, -1, -1):
            for band in range(2 * lanes + 1):
                cell = cells.get((c, band))
                if cell:
                    both = sweep >= _SWEEPS - 2
                    near = [i.left + i.right if both else i.left if down else i.right
                            for i in cell]
                    want = [mean([n.y for n in ns], i.y) for i, ns in zip(cell, near, strict=True)]
                    _place(cell, want, top[band], top[band] + need[band])

    widths = [max([i.w for i in column], default=0.0) for column in columns]
    for layer, (a, b) in spans.items():  # room for the cluster's title
        short = _width(layer, 12, True) + 24 - (sum(widths[a:b + 1]) + _GAP_X * (b - a) + 2 * _PAD)
        widths[a] += max(short, 0.0)
    centers, x = [], _MARGIN + _PAD
    for w in widths:
        centers.append(x + w / 2)
        x += w + _GAP_X
    for item in items:
        item.x = centers[item.col]
    clusters = {}
    for layer, (a, b) in spans.items():
        inside = [i for i in nodes.values() if i.layer == layer]
        clusters[layer] = (centers[a] - widths[a] / 2 - _PAD,
                           min(i.y - i.h / 2 for i in inside) - _PAD - _TITLE,
                           centers[b] + widths[b] / 2 + _PAD,
                           max(i.y + i.h / 2 for i in inside) + _PAD)
    width = max(x - _GAP_X + _PAD + _MARGIN, _width(plan.graph, 16, True) + 2 * _MARGIN)
    bottom = max([i.y + i.h / 2 for i in items] + [c[3] for c in clusters.values()],
                 default=_MARGIN + _HEADER)
    return _Layout(width, bottom + _MARGIN, nodes, widths, chains, clusters)


# ---- svg from our layout -------------------------------------------------------------------


def _f(v: float) -> str:
    return f"{v:.1f}".removesuffix(".0")


def _curve(points: list[tuple[float, float]]) -> str:
    """Horizontal-tangent cubic segments through the points (straight where level)."""
    (x0, y0), *rest = points
    d = [f"M{_f(x0)},{_f(y0)}"]
    for x1, y1 in rest:
        if abs(y1 - y0) < 0.5:
            d.append(f"L{_f(x1)},{_f(y1)}")
        else:
            xm = (x0 + x1) / 2
            d.append(f"C{_f(xm)},{_f(y0)} {_f(xm)},{_f(y1)} {_f(x1)},{_f(y1)}")
        x0, y0 = x1, y1
    return " ".join(d)


def _text(x: float, y: float, text: str, size: float, color: str, bold: bool = False,
          anchor: str = "middle", cls: str = "") -> str:
    attrs = f' class="{cls}"' if cls else ""
    weight = ' font-weight="bold"' if bold else ""
    return (f'<text{attrs} x="{_f(x)}" y="{_f(y)}" font-size="{_f(size)}"{weight} '
            f'fill="{color}" text-anchor="{anchor}">{_esc(text)}</text>')


def _label_width(lines: tuple[str, str]) -> float:
    return max(_width(lines[0], 11), _width(lines[1], 10)) + 14


def _label(x: float, y: float, lines: tuple[str, str], edge: int) -> list[str]:
    w = _label_width(lines)
    return [f'<g class="elabel" data-edge="{edge}">',
            f'<rect x="{_f(x - w / 2)}" y="{_f(y - 14)}" width="{_f(w)}" height="28" rx="5" '
            f'fill="#ffffff" stroke="#d9e2ec"/>',
            _text(x, y - 2, lines[0], 11, _INK2), _text(x, y + 10, lines[1], 10, _INK3), "</g>"]


def _draw(plan: Plan, lay: _Layout) -> str:
    """Our own svg: clusters, then edges, then edge labels, then nodes on top."""
    colors = _colors(plan)
    ends: dict[tuple[int, int], float] = {}  # (edge, 0 low end | 1 high end) -> y of the port
    sides: dict[tuple[_Item, int], list[tuple[float, int, int]]] = defaultdict(list)
    for k, (_, path, _) in enumerate(lay.chains):
        sides[path[0], 0].append((path[1].y, k, 0))  # side 0: right, 1: left
        sides[path[-1], int(path[0].col != path[-1].col)].append((path[-2].y, k, 1))
    for node in lay.nodes.values():
        for side in (0, 1):
            ports = sorted(sides[node, side])
            step = min(10.0, (node.h - 16) / max(len(ports) - 1, 1))
            for j, (_, k, end) in enumerate(ports):
                ends[k, end] = node.y + (j - (len(ports) - 1) / 2) * step

    paths, labels = [], []
    for k, (edge, path, backwards) in enumerate(lay.chains):
        a, b = path[0], path[-1]
        points = [(a.x + a.w / 2, ends[k, 0])]
        for item in path[1:-1]:  # level across each column, so bends fall between columns
            half = lay.widths[item.col] / 2
            if a.col == b.col:  # in to the label and back out, under the label
                points += [(item.x - half + 6, item.y - 5), (item.x - half + 6, item.y + 5)]
            else:
                points += [(item.x - half, item.y), (item.x + half, item.y)]
            if item.label:
                labels += _label(item.x, item.y, item.label, k)
        points.append((b.x + b.w / 2 if a.col == b.col else b.x - b.w / 2, ends[k, 1]))
        dash = ' class="edge feedback" stroke-dasharray="6 4"' if edge.feedback else ' class="edge"'
        d = _curve(points[::-1] if backwards else points)
        paths.append(f'<path{dash} data-edge="{k}" data-src="{_esc(edge.src)}" '
                     f'data-dst="{_esc(edge.dst)}" d="{d}"/>')

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="dmnflow" width="{_f(lay.width)}" '
        f'height="{_f(lay.height)}" viewBox="0 0 {_f(lay.width)} {_f(lay.height)}" '
        f'font-family="{_FAMILY}">',
        f"<title>{_esc(plan.graph)}</title>",
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="8" '
        'markerHeight="8" markerUnits="userSpaceOnUse" orient="auto">'
        f'<path d="M0,1 L10,5 L0,9 z" fill="{_NEUTRAL}"/></marker></defs>',
        '<rect class="background" width="100%" height="100%" fill="#ffffff"/>',
        '<g class="header">',
        _text(_MARGIN, _MARGIN + 14, plan.graph, 16, _INK, True, "start"),
        _text(_MARGIN + _width(plan.graph, 16, True) + 12, _MARGIN + 14,
              f"{len(plan.nodes)} nodes · {len(plan.edges)} edges · "
              f"{len(plan.processes)} processes", 11, _INK3, anchor="start"), "</g>",
    ]
    for layer, (x0, y0, x1, y1) in lay.clusters.items():
        color = colors[layer]
        out += [f'<g class="cluster" data-layer="{_esc(layer)}">',
                f'<rect x="{_f(x0)}" y="{_f(y0)}" width="{_f(x1 - x0)}" height="{_f(y1 - y0)}" '
                f'rx="10" fill="{_mix(color, 0.94)}" stroke="{_mix(color, 0.55)}"/>',
                _text(x0 + 12, y0 + 17, layer, 12, _mix(color, 0.35, "#000000"), True, "start",
                      "layer-title"), "</g>"]
    out += [f'<g class="edges" fill="none" stroke="{_NEUTRAL}" stroke-width="1.3" '
            f'marker-end="url(#arrow)">', *paths, "</g>", '<g class="labels">', *labels, "</g>",
            '<g class="nodes">']
    for node in plan.nodes:
        item = lay.nodes[node.name]
        color = colors[node.layer or ""]
        out += [f'<g class="node" data-node="{_esc(node.name)}">',
                f'<rect class="box" x="{_f(item.x - item.w / 2)}" y="{_f(item.y - item.h / 2)}" '
                f'width="{_f(item.w)}" height="{_f(item.h)}" rx="6" fill="#ffffff" '
                f'stroke="{color}" stroke-width="1.5"/>']
        y = item.y - item.h / 2 + 8
        for i, line in enumerate(_node_lines(node)):
            size, bold, ink, step = _NODE_LINES[min(i, 2)]
            out.append(_text(item.x, y + step - 4, line, size, ink, bold))
            y += step
        out.append("</g>")
    out += ["</g>", "</svg>"]
    return "\n".join(out) + "\n"


# ---- svg, png, html ----------------------------------------------------------------------------


def _graphviz(plan: Plan, *args: str) -> bytes | None:
    """Graphviz's rendering of our dot text when ``dot`` is installed, else None."""
    exe = shutil.which("dot")
    if exe is None:
        return None
    try:
        done = subprocess.run([exe, *args], input=_dot(plan).encode(), capture_output=True,
                              timeout=60, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        warnings.warn(f"graphviz failed ({exc} {detail.decode(errors='replace').strip()}); "
                      "drawing with dmnflow's own layout", RuntimeWarning, stacklevel=4)
        return None
    return done.stdout


def _svg(plan: Plan) -> str:
    drawn = _graphviz(plan, "-Tsvg")
    return drawn.decode() if drawn is not None else _draw(plan, _layout(plan))


def _png(plan: Plan) -> bytes:
    drawn = _graphviz(plan, "-Tpng", "-Gdpi=144")
    if drawn is not None:
        return drawn
    lay = _layout(plan)
    # System fonts stay loaded as a fallback for characters outside the bundled subset.
    return bytes(resvg_py.svg_to_bytes(svg_string=_draw(plan, lay),
                                       font_files=[str(f) for f in _FONT_FILES],
                                       zoom=2.0 if max(lay.width, lay.height) <= 4096 else 1.0))


def live_svg(plan: Plan) -> tuple[str, list[int]]:
    """Our own svg drawing (the html page's), and the plan edge id behind each drawn edge's
    ``data-edge``: for a page that updates the picture while the graph runs (the dashboard)."""
    lay = _layout(plan)
    return _draw(plan, lay), [edge.id for edge, _, _ in lay.chains]


def font_faces() -> str:
    """CSS ``@font-face`` rules embedding the bundled fonts (pages that work offline)."""
    return "\n".join(
        f'@font-face{{font-family:"DejaVu Sans";font-weight:{weight};src:url(data:font/ttf;base64,'
        f'{base64.b64encode(path.read_bytes()).decode()}) format("truetype")}}'
        for weight, path in zip((400, 700), _FONT_FILES, strict=True))


def _details(plan: Plan) -> dict[str, dict[str, object]]:
    """What the html page shows when a node is clicked, as display strings."""
    edges = {e.id: e for e in plan.edges}
    out: dict[str, dict[str, object]] = {}
    for n in plan.nodes:
        rows = [["uses", n.uses], ["layer", n.layer or "—"], ["process", n.process],
                ["cpus", format_cpus(n.cpus) or "any"], ["gpu", "—" if n.gpu is None else str(n.gpu)]]
        if n.replica is not None:
            rows.append(["replica", f"{n.replica + 1} of {n.replicas} ({n.spec_name})"])
        if n.model:
            rows.append(["model", f"{n.model.path} ({n.model.device}, {n.model.dtype})"])
        inputs = [[f"{i.port}: {i.type}", f"{i.policy}, queue {i.queue}"
                   + (", feedback" if i.feedback else "")]
                  + [f"← {c.node}.{c.port} · {edges[c.edge].codec} · {c.transport} {c.endpoint}"
                     for c in i.connects] for i in n.inputs]
        outputs = [[f"{o.port}: {o.type}", f"codec {o.codec}"]
                   + [f"{b.pattern} {b.transport} {b.endpoint} → "
                      + ", ".join(f"{edges[k].dst}.{edges[k].dst_port}" for k in b.edges)
                      for b in o.binds] for o in n.outputs]
        out[n.name] = {"rows": rows, "params": json.dumps(n.params, indent=2, sort_keys=True),
                       "inputs": inputs, "outputs": outputs}
    return out


def _html(plan: Plan) -> str:
    parts = {"FONTS": font_faces(), "TITLE": _esc(plan.graph), "SVG": _draw(plan, _layout(plan)),
             "DATA": json.dumps(_details(plan), ensure_ascii=False).replace("<", "\\u003c")}
    page = _PAGE.read_text(encoding="utf-8")  # one pass, so inserted text is never rescanned
    return re.sub(r"%(FONTS|TITLE|SVG|DATA)%", lambda m: parts[m.group(1)], page)

