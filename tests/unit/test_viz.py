"""Exports of a plan: text formats are checked structurally, pictures by decoding them."""

from __future__ import annotations

import io
import json
import re
import shutil
import time
import xml.etree.ElementTree as ET
from typing import Any

import networkx as nx
import numpy as np
import pytest
from PIL import Image

from dmnflow import viz
from dmnflow.compiler.limits import LIMITS
from dmnflow.plan import (
    BindPlan,
    ConnectPlan,
    EdgePlan,
    InputPlan,
    ModelPlan,
    NodePlan,
    OutputPlan,
    Plan,
    ProcessPlan,
    RestartPlan,
)

SVG = "{http://www.w3.org/2000/svg}"


def make_plan(graph: str, nodes: list[dict[str, Any]], edges: list[tuple[Any, ...]]) -> Plan:
    """A consistent Plan from short specs: nodes as NodePlan fields (name, uses, layer, ...),
    edges as ("src.port", "dst.port"[, codec[, transport[, feedback]]])."""
    edge_plans = []
    for k, (src, dst, *opts) in enumerate(edges):
        codec, transport, feedback = (*opts, *("msgpack", "ipc", False)[len(opts):])
        (s, sp), (d, dp) = src.rsplit(".", 1), dst.rsplit(".", 1)
        edge_plans.append(EdgePlan(
            id=k, src=s, src_port=sp, dst=d, dst_port=dp, type="Any", codec=codec,
            transport=transport, endpoint=f"ipc://{{run_dir}}/{k}.sock", bind=f"{s}.{sp}", pattern="pub",
            policy="block", queue=64, topics=[], feedback=feedback, delivery="at-most-once", credit=0,
            block_timeout_s=None))
    node_plans = []
    for spec in nodes:
        name = spec["name"]
        outs: dict[str, list[EdgePlan]] = {}
        ins: dict[str, list[EdgePlan]] = {}
        for e in edge_plans:
            if e.src == name:
                outs.setdefault(e.src_port, []).append(e)
            if e.dst == name:
                ins.setdefault(e.dst_port, []).append(e)
        fields: dict[str, Any] = {
            "spec_name": name.split("[")[0], "params": {}, "layer": None, "process": name,
            "cpus": [], "gpu": None, "replica": None, "replicas": 1, "model": None,
            "restart": RestartPlan(when="never", max_restarts=0, backoff_s=0.1,
                                   backoff_max_s=1.0),
            "busy": False, "source": not ins, "loc": "g.yaml:1:1", **spec,
            "inputs": [InputPlan(port=p, type="Any", policy="block", queue=64, topics=[],
                                 feedback=any(e.feedback for e in es), batch=None,
                                 connects=[ConnectPlan(edge=e.id, bind=e.bind, node=e.src, port=e.src_port,
                                                       endpoint=e.endpoint,
                                                       transport=e.transport, pattern="pub", hwm=64,
                                                       credit_every=0, control_hwm=0)
                                           for e in es])
                       for p, es in ins.items()],
            "outputs": [OutputPlan(port=p, type="Any", codec=es[0].codec, compress_above=None,
                                   binds=[BindPlan(id=es[0].bind, counter=0, endpoint=es[0].endpoint,
                                                   transport=es[0].transport, pattern="pub",
                                                   hwm=1000, control_hwm=0, edges=[e.id for e in es])])
                        for p, es in outs.items()],
        }
        node_plans.append(NodePlan(**fields))
    return Plan(graph=graph, file="g.yaml", profile=None, machine_cpus=[0, 1], nodes=node_plans,
                edges=edge_plans,
                processes=[ProcessPlan(name=n.process, nodes=[n.name], cpus=n.cpus)
                           for n in node_plans],
                warnings=[], limits=LIMITS)


def trading_plan() -> Plan:
    """The seed's shape: data -> features -> models (2 replicas + meta) -> risk -> portfolio
    -> execution, a monitoring layer, a node name with '/', and a feedback edge."""
    lstm = {"uses": "dmnflow.runners:TorchScriptModel", "layer": "models", "replicas": 2,
            "spec_name": "lstm", "gpu": 0,
            "model": ModelPlan(path="/srv/models/dmn_lstm.pt", device="cpu", dtype="float32")}
    nodes = [
        {"name": "trading/market", "uses": "nodes.market.synthetic:SyntheticMarket",
         "layer": "data", "cpus": [0], "params": {"symbols": ["ES", "NQ"], "note": "<&\">"}},
        {"name": "features", "uses": "nodes.features.momentum:MomentumFeatures",
         "layer": "features", "cpus": [0, 1]},
        {"name": "lstm[0]", "replica": 0, **lstm},
        {"name": "lstm[1]", "replica": 1, **lstm},
        {"name": "meta", "uses": "nodes.models.meta:MetaLearner", "layer": "models"},
        {"name": "risk", "uses": "nodes.risk.manager:RiskManager", "layer": "risk"},
        {"name": "portfolio", "uses": "nodes.portfolio.optimizer:Optimizer",
         "layer": "portfolio"},
        {"name": "execution", "uses": "nodes.execution.broker:PaperBroker",
         "layer": "execution"},
        {"name": "monitor", "uses": "nodes.monitoring.health:Health", "layer": "monitoring"},
    ]
    edges = [
        ("trading/market.ticks", "features.ticks", "msgpack+lz4"),
        ("features.features", "lstm[0].x", "tensor"),
        ("features.features", "lstm[1].x", "tensor"),
        ("lstm[0].y", "meta.signals"),
        ("lstm[1].y", "meta.signals"),
        ("meta.signal", "risk.signal"),
        ("trading/market.ticks", "risk.prices", "msgpack+lz4", "ipc"),
        ("risk.orders", "portfolio.orders"),
        ("portfolio.targets", "execution.targets", "msgpack", "tcp"),
        ("execution.fills", "portfolio.fills", "msgpack", "ipc", True),
        ("execution.fills", "monitor.fills", "json", "ipc"),
        ("risk.orders", "monitor.orders", "json", "inproc"),
    ]
    return make_plan("dmn-trading", nodes, edges)


def chain_plan() -> Plan:
    nodes = [{"name": "source", "uses": "pkg.mod:Source", "layer": "in", "cpus": [0]},
             {"name": "transform", "uses": "pkg.mod:Double", "layer": "work", "cpus": [1]},
             {"name": "sink", "uses": "pkg.mod:Sink", "layer": "out"}]
    return make_plan("chain", nodes, [("source.out", "transform.x"), ("transform.y", "sink.in")])


@pytest.fixture(params=[trading_plan, chain_plan], ids=["trading", "chain"])
def plan(request: pytest.FixtureRequest) -> Plan:
    return request.param()


@pytest.fixture
def no_dot(monkeypatch: pytest.MonkeyPatch) -> None:
    real = shutil.which
    monkeypatch.setattr(shutil, "which", lambda cmd, *a, **k: None if cmd == "dot" else real(cmd))


def png_pixels(data: bytes) -> np.ndarray:
    """The image's RGB pixels (Pillow decodes what resvg, Graphviz and Chromium write)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def boxes(root: ET.Element, selector: str) -> list[tuple[float, float, float, float]]:
    """x0, y0, x1, y1 of the first rect (of class ``cls``, if given) in each group of class
    ``group``, for ``selector`` = "group/cls"."""
    group, cls = selector.split("/")
    out = []
    for g in root.iter(f"{SVG}g"):
        if group in g.get("class", "").split():
            for r in g.iter(f"{SVG}rect"):
                if not cls or cls in r.get("class", "").split():
                    x, y, w, h = (float(r.get(k)) for k in ("x", "y", "width", "height"))
                    out.append((x, y, x + w, y + h))
                    break
    return out


def overlap(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def own_svg(plan: Plan) -> ET.Element:
    return ET.fromstring(viz.render(plan, "svg"))


# ---- the front door -------------------------------------------------------------------------


def test_formats_are_the_documented_ones() -> None:
    assert viz.FORMATS == ("mermaid", "dot", "svg", "png", "html", "json")


def test_unknown_format_names_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="mermaid, dot, svg, png, html, json"):
        viz.render(chain_plan(), "jpeg")


@pytest.mark.usefixtures("no_dot")
@pytest.mark.parametrize("fmt", ["mermaid", "dot", "svg", "html", "json"])
def test_text_output_is_deterministic(fmt: str) -> None:
    first, second = viz.render(trading_plan(), fmt), viz.render(trading_plan(), fmt)
    assert isinstance(first, str) and first == second


@pytest.mark.usefixtures("no_dot")
@pytest.mark.parametrize("fmt", viz.FORMATS)
def test_every_format_copes_with_tiny_plans(fmt: str) -> None:
    for plan in (make_plan("%SVG%", [], []), make_plan("lone", [{"name": "x", "uses": "m:C"}], [])):
        out = viz.render(plan, fmt)
        assert isinstance(out, bytes if fmt == "png" else str) and out
        if fmt in ("svg", "html"):
            assert str(out).count("<svg") == 1 and f">{plan.graph}</title>" in str(out)


# ---- mermaid ------------------------------------------------------------------------------


def test_mermaid_has_a_subgraph_per_layer_and_every_edge(plan: Plan) -> None:
    text = viz.render(plan, "mermaid")
    layers = [layer for layer in plan.layers if layer]
    titles = re.findall(r'^\s*subgraph (\w+)\["([^"]*)"\]$', text, re.M)
    assert [t for _, t in titles] == layers
    assert text.count("\n  end\n") == len(layers)
    ids = dict(re.findall(r'^\s*(\w+)\["<b>([^<]*)</b>', text, re.M))
    assert sorted(ids.values()) == sorted(n.name for n in plan.nodes)
    by_name = {name: ident for ident, name in ids.items()}
    links = re.findall(r"^  (\w+) (-->|-\.->)\|\"[^\"]*\"\| (\w+)$", text, re.M)
    assert links == [(by_name[e.src], "-.->" if e.feedback else "-->", by_name[e.dst])
                     for e in plan.edges]
    assert text.startswith(f"---\ntitle: \"{plan.graph}\"\n---\nflowchart LR\n")


def test_mermaid_shows_ports_codecs_transports_pins_and_models() -> None:
    text = viz.render(trading_plan(), "mermaid")
    assert '-.->|"fills<br/>msgpack · ipc"| n_portfolio' in text
    assert '|"features → x<br/>tensor · ipc"| n_lstm_0' in text
    assert "n_trading_market[\"<b>trading/market</b><br/>SyntheticMarket<br/>cpus 0\"]" in text
    assert "<br/>cpus 0-1\"]" in text
    assert "<b>lstm[1]</b><br/>TorchScriptModel<br/>gpu 0<br/>dmn_lstm.pt" in text


def test_ids_are_sanitized_and_unique() -> None:
    names = ["trading/market", "trading_market", "lstm[0]", "lstm-0", "end"]
    plan = make_plan("ids", [{"name": n, "uses": "m:C", "layer": "end"} for n in names], [])
    text = viz.render(plan, "mermaid")
    ids = re.findall(r'^\s*(\w+)\["', text, re.M)
    assert ids == ["n_trading_market", "n_trading_market_2", "n_lstm_0", "n_lstm_0_2", "n_end"]
    assert '\n  subgraph layer_end["end"]\n' in text  # a bare `end` would close the block
    dot = viz.render(plan, "dot")
    assert all(f"\n    {ident} [label=" in dot for ident in ids)
    assert "\n  subgraph cluster_layer_end {\n" in dot


def test_labels_are_escaped_for_each_language(no_dot: None) -> None:
    odd = 'a"<b>&#c'
    plan = make_plan("q\"<&>", [{"name": odd, "uses": "m:C", "layer": "l<&>"},
                                 {"name": "sink", "uses": "m:D"}], [(f"{odd}.o", "sink.i")])
    mermaid = viz.render(plan, "mermaid")
    assert "a#quot;#lt;b#gt;#amp;#35;c" in mermaid and odd not in mermaid
    assert 'subgraph layer_l["l#lt;#amp;#gt;"]' in mermaid
    dot = viz.render(plan, "dot")
    assert "<B>a&quot;&lt;b&gt;&amp;#c</B>" in dot and odd not in dot
    assert dot.startswith('digraph "q\\"<&>" {')
    root = own_svg(plan)  # well-formed XML, and the text survives the round trip
    texts = {t.text for t in root.iter(f"{SVG}text")}
    assert {odd, "l<&>", 'q"<&>'} <= texts
    assert {g.get("data-node") for g in root.iter(f"{SVG}g") if g.get("data-node")} == {
        odd, "sink"}
    page = viz.render(plan, "html")
    assert "<title>q&quot;&lt;&amp;&gt;</title>" in page and odd not in page


# ---- dot ----------------------------------------------------------------------------------


def test_dot_is_structurally_sound(plan: Plan) -> None:
    text = viz.render(plan, "dot")
    outside = re.sub(r'"(?:[^"\\]|\\.)*"|<(?:[^<>]|<[^<>]*>)*>', "", text)  # drop strings, labels
    assert outside.count("{") == outside.count("}") >= 1
    assert text.startswith(f'digraph "{plan.graph}" {{') and text.endswith("}\n")
    clusters = re.findall(r"^  subgraph (cluster_\w+) \{$", text, re.M)
    assert len(clusters) == len([layer for layer in plan.layers if layer])
    declared = re.findall(r"^\s+(n_\w+) \[label=<", text, re.M)
    assert len(declared) == len(set(declared)) == len(plan.nodes)
    edges = re.findall(r"^  (n_\w+) -> (n_\w+) \[(.*)\];$", text, re.M)
    assert len(edges) == len(plan.edges)
    assert {a for a, _, _ in edges} | {b for _, b, _ in edges} <= set(declared)
    for (_, _, attrs), edge in zip(edges, plan.edges, strict=True):
        assert ("style=dashed" in attrs) == edge.feedback
        assert f"{edge.codec} · {edge.transport}" in attrs


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")
def test_dot_is_accepted_by_graphviz(plan: Plan) -> None:
    import subprocess

    done = subprocess.run(["dot", "-Tcanon"], input=viz.render(plan, "dot").encode(),
                          capture_output=True, timeout=60)
    assert done.returncode == 0 and not done.stderr, done.stderr


# ---- svg from our own layout ------------------------------------------------------------------


@pytest.mark.usefixtures("no_dot")
def test_own_svg_has_a_box_per_node_a_path_per_edge_and_layer_titles(plan: Plan) -> None:
    root = own_svg(plan)
    assert root.get("class") == "dmnflow"
    nodes = [g for g in root.iter(f"{SVG}g") if g.get("class") == "node"]
    assert [g.get("data-node") for g in nodes] == [n.name for n in plan.nodes]
    assert len(boxes(root, "node/box")) == len(plan.nodes)
    paths = [p for p in root.iter(f"{SVG}path") if "edge" in p.get("class", "").split()]
    assert [(p.get("data-src"), p.get("data-dst")) for p in paths] == [
        (e.src, e.dst) for e in plan.edges]
    assert [p.get("stroke-dasharray") is not None for p in paths] == [
        e.feedback for e in plan.edges]
    titles = [t.text for t in root.iter(f"{SVG}text") if t.get("class") == "layer-title"]
    assert titles == [layer for layer in plan.layers if layer]
    labels = [g for g in root.iter(f"{SVG}g") if g.get("class") == "elabel"]
    assert len(labels) == len(plan.edges)


@pytest.mark.usefixtures("no_dot")
def test_own_layout_keeps_boxes_apart_and_layers_together(plan: Plan) -> None:
    root = own_svg(plan)
    nodes, labels = boxes(root, "node/box"), boxes(root, "elabel/")
    clusters = boxes(root, "cluster/")
    shapes = nodes + labels
    assert not [(a, b) for i, a in enumerate(shapes) for b in shapes[i + 1:] if overlap(a, b)]
    assert not [(a, b) for i, a in enumerate(clusters) for b in clusters[i + 1:] if overlap(a, b)]
    layer_of = {n.name: n.layer for n in plan.nodes}
    names = [n.name for n in plan.nodes]
    for layer, (x0, y0, x1, y1) in zip([la for la in plan.layers if la], clusters, strict=True):
        for name, (a, b, c, d) in zip(names, nodes, strict=True):
            inside = x0 < a and c < x1 and y0 < b and d < y1
            assert inside == (layer_of[name] == layer), (layer, name)
    width, height = float(root.get("width")), float(root.get("height"))
    assert all(min(a, b) >= 0 and c <= width and d <= height for a, b, c, d in shapes + clusters)


@pytest.mark.usefixtures("no_dot")
def test_layers_follow_the_flow_from_left_to_right() -> None:
    root = own_svg(trading_plan())
    left = {t.text: float(r[0]) for t, r in zip(
        (t for t in root.iter(f"{SVG}text") if t.get("class") == "layer-title"),
        boxes(root, "cluster/"), strict=True)}
    flow = ["data", "features", "models", "risk", "portfolio", "execution", "monitoring"]
    assert sorted(left, key=left.__getitem__) == flow


@pytest.mark.usefixtures("no_dot")
def test_boxes_are_wide_enough_for_their_labels() -> None:
    root = own_svg(trading_plan())
    for g in root.iter(f"{SVG}g"):
        if g.get("class") in ("node", "elabel"):
            rect = g.find(f"{SVG}rect")
            for t in g.iter(f"{SVG}text"):
                bold = t.get("font-weight") == "bold"
                need = viz._width(t.text, float(t.get("font-size")), bold)
                assert need + 8 <= float(rect.get("width")), t.text


@pytest.mark.usefixtures("no_dot")
def test_plans_without_layers_with_loops_and_same_rank_feedback() -> None:
    plan = make_plan("odd", [{"name": n, "uses": "m:C"} for n in "abcd"], [
        ("a.o", "b.i"), ("a.o", "c.i"), ("b.o", "d.i"), ("c.o", "d.j"),
        ("d.o", "a.fb", "json", "ipc", True), ("b.o", "b.self", "json", "inproc", True),
        ("c.o", "b.side", "json", "inproc", True)])
    root = own_svg(plan)
    assert len(boxes(root, "node/box")) == 4 and not boxes(root, "cluster/")
    paths = [p.get("d") for p in root.iter(f"{SVG}path") if p.get("data-edge")]
    assert len(paths) == 7 and all(d.startswith("M") for d in paths)
    shapes = boxes(root, "node/box") + boxes(root, "elabel/")
    assert not [(a, b) for i, a in enumerate(shapes) for b in shapes[i + 1:] if overlap(a, b)]


@pytest.mark.usefixtures("no_dot")
def test_a_hundred_nodes_lay_out_quickly() -> None:
    layers = ["data", "features", "models", "risk", "portfolio", "execution"]
    nodes = [{"name": f"n{i}", "uses": "m:C", "layer": layers[i * 6 // 100]} for i in range(100)]
    edges = [(f"n{j}.o", f"n{i}.i{j}") for i in range(1, 100) for j in {i - 1, i * 7 % i, i // 2}]
    plan = make_plan("big", nodes, edges)
    start = time.perf_counter()
    root = own_svg(plan)
    assert time.perf_counter() - start < 20  # seconds on a slow, shared 2-core machine
    assert len(boxes(root, "node/box")) == 100


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")
def test_graphviz_draws_the_svg_when_installed(plan: Plan) -> None:
    text = viz.render(plan, "svg")
    assert "Generated by graphviz" in text and 'class="dmnflow"' not in text
    root = ET.fromstring(text.split("\n", 3)[3] if text.startswith("<?xml") else text)
    assert len([g for g in root.iter(f"{SVG}g") if g.get("class") == "node"]) == len(plan.nodes)


def test_a_failing_graphviz_falls_back_to_our_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda cmd, *a, **k: "/bin/false")
    with pytest.warns(RuntimeWarning, match="graphviz failed"):
        text = viz.render(chain_plan(), "svg")
    assert 'class="dmnflow"' in text


# ---- png ----------------------------------------------------------------------------------


@pytest.mark.usefixtures("no_dot")
def test_own_png_is_a_real_picture() -> None:
    plan = chain_plan()
    data = viz.render(plan, "png")
    assert isinstance(data, bytes)
    root = own_svg(plan)
    pixels = png_pixels(data)
    assert pixels.shape[:2] == (2 * round(float(root.get("height"))),
                                2 * round(float(root.get("width"))))  # zoom 2 for sharpness
    rgb = pixels[..., :3].astype(int)
    assert (rgb > 250).all(axis=2).mean() > 0.5  # a white background ...
    assert (rgb < 128).all(axis=2).mean() > 0.002  # ... with dark text and lines on it
    assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 50  # antialiasing, layer colours
    x0, y0, x1, y1 = (round(2 * v) for v in boxes(root, "node/box")[1])
    inside = rgb[y0 + 6:y1 - 6, x0 + 6:x1 - 6]  # the node's label is drawn in its box
    assert (inside < 128).all(axis=2).sum() > 100


@pytest.mark.usefixtures("no_dot")
def test_png_text_comes_from_the_bundled_fonts(monkeypatch: pytest.MonkeyPatch) -> None:
    real = viz.resvg_py.svg_to_bytes
    monkeypatch.setattr(viz.resvg_py, "svg_to_bytes",
                        lambda **kw: real(**kw, skip_system_fonts=True))  # a machine with no fonts
    # Digits share one advance width, so both plans get the same layout and only text differs.
    one, two = (make_plan("g", [{"name": name, "uses": "m:C"}], [])
                for name in ("n1111", "n2222"))
    assert viz.render(one, "png") != viz.render(two, "png")


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")
def test_graphviz_draws_the_png_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(**kw: object) -> bytes:
        raise AssertionError("resvg used although dot is installed")

    monkeypatch.setattr(viz.resvg_py, "svg_to_bytes", refuse)
    data = viz.render(chain_plan(), "png")
    assert png_info(data)[2] > 50


def test_large_png_is_still_a_png() -> None:
    width, height, distinct = png_info(viz.render(trading_plan(), "png"))
    assert width > 800 and height > 150 and distinct > 50


# ---- html ---------------------------------------------------------------------------------


@pytest.mark.usefixtures("no_dot")
def test_html_is_self_contained(plan: Plan) -> None:
    page = viz.render(plan, "html")
    assert f"<title>{plan.graph}</title>" in page
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", page, re.I)
    assert not re.search(r"url\(\s*['\"]?(?:https?:)?//|@import", page, re.I)
    # the only absolute URL is the SVG namespace, which is a name, not a download
    assert set(re.findall(r"https?://[^\s\"'<>)]+", page)) == {"http://www.w3.org/2000/svg"}
    assert page.count("<svg") == 1 and page.count('class="box"') == len(plan.nodes)
    assert "document.body.dataset.rendered" in page
    data = re.search(r'<script type="application/json" id="details">(.*?)</script>', page, re.S)
    assert data is not None
    details = json.loads(data.group(1))
    assert list(details) == [n.name for n in plan.nodes]


def test_html_details_show_placement_and_wiring() -> None:
    page = viz.render(trading_plan(), "html")
    data = re.search(r'id="details">(.*?)</script>', page, re.S)
    assert data is not None and "</" not in data.group(1)  # the params cannot end the script
    risk = json.loads(data.group(1))["risk"]
    assert ["uses", "nodes.risk.manager:RiskManager"] in risk["rows"]
    assert ["signal: Any", "block, queue 64",
            "← meta.signal · msgpack · ipc ipc://{run_dir}/5.sock"] in risk["inputs"]
    market = json.loads(data.group(1))["trading/market"]
    assert ["cpus", "0"] in market["rows"] and '"note": "<&\\">"' in market["params"]
    assert market["outputs"][0][2].endswith("→ features.ticks, risk.prices")
    lstm = json.loads(data.group(1))["lstm[1]"]
    assert ["replica", "2 of 2 (lstm)"] in lstm["rows"]
    assert ["model", "/srv/models/dmn_lstm.pt (cpu, float32)"] in lstm["rows"]


# ---- json ---------------------------------------------------------------------------------


def test_json_round_trips_through_networkx(plan: Plan) -> None:
    data = json.loads(viz.render(plan, "json"))
    graph = nx.node_link_graph(data, edges="edges")
    assert graph.number_of_nodes() == len(plan.nodes)
    assert graph.number_of_edges() == len(plan.edges)
    for edge in plan.edges:
        attrs = graph.edges[edge.src, edge.dst, edge.id]
        assert (attrs["codec"], attrs["transport"], attrs["feedback"]) == (
            edge.codec, edge.transport, edge.feedback)
    for node in plan.nodes:
        assert graph.nodes[node.name]["layer"] == node.layer
        assert graph.nodes[node.name]["cpus"] == node.cpus
    assert graph.graph["name"] == plan.graph


def png_info(data: bytes) -> tuple[int, int, int]:
    """Width, height and how many distinct colours the image holds: a blank image has a
    handful; antialiased text, boxes and colours give many."""
    pixels = png_pixels(data)
    height, width = pixels.shape[:2]
    return width, height, len(np.unique(pixels.reshape(-1, 3), axis=0))
