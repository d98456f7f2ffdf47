"""``/metrics`` for Prometheus, served from the supervisor's process.

One process, one registry, no multiprocess mode: the supervisor already gathers every
worker's counts, so a custom ``Collector`` turns the latest report into metric families
at each scrape (``launch --metrics 127.0.0.1:9464``). Names follow Prometheus'
conventions: ``_total`` counters, ``_seconds`` and ``_bytes`` units, histograms with
``_bucket``/``_sum``/``_count``. Latency histograms are the report's log-bucket
histograms (~9% wide) folded into fixed ``le`` bounds; ``_sum`` adds bucket midpoints.

    dmnflow_edge_messages_sent_total{edge, src, dst}      and received, dropped, decode errors, gaps;
                                                          edge="counter.numbers -> scale.value", as budgets name it
    dmnflow_edge_lost_messages{edge, src, dst}            dropped + sent but not received (exact once drained)
    dmnflow_edge_queued_messages{edge, src, dst}          sent, not yet received
    dmnflow_edge_latency_seconds{edge, src, dst}          histogram: send to receive
    dmnflow_path_latency_seconds{source, sink}            histogram: entering the graph to a sink
    dmnflow_node_messages_in_total{node} / _out_total, dmnflow_node_cpu_seconds_total, _restarts_total
    dmnflow_node_resident_memory_bytes{node}              its process's (a group's nodes share one)
    dmnflow_node_up{node, status}                         1 for the node's current status
    dmnflow_node_summary{node, figure}                    every number a node's summary() reports
    dmnflow_node_progress_ratio{node}                     a finite source's done / total
    dmnflow_budget_limit_seconds{budget, stat} / _measured_seconds / dmnflow_budget_missed_windows_total
                                                          stat="p50", "p99", "max": a gauge, not a summary's quantile
    dmnflow_run_info{graph, status}, dmnflow_run_duration_seconds
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable, Iterator
from typing import Any

from ..errors import LaunchError

__all__ = ["LATENCY_BUCKETS_S", "ReportCollector", "serve_metrics"]

LATENCY_BUCKETS_S = (10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 0.1,
                     0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _needs() -> Any:
    try:
        import prometheus_client  # noqa: F401
        from prometheus_client import core
    except ImportError:  # the observe extra is not installed
        raise LaunchError("--metrics needs prometheus-client: pip install 'dmnflow[observe]'") from None
    return core


def _histogram(core: Any, family: Any, labels: list[str], hist: Any) -> None:
    from ..transport.stats import Histogram

    probe = Histogram([0])
    cum, total = [0] * len(LATENCY_BUCKETS_S), 0.0
    for i, c in enumerate(hist.counts):
        if not c:
            continue
        value = probe._value(i) / 1e9
        total += value * c
        for j, bound in enumerate(LATENCY_BUCKETS_S):
            if value <= bound:
                cum[j] += c
    buckets = [(_le(b), float(cum[j])) for j, b in enumerate(LATENCY_BUCKETS_S)] + [("+Inf", float(hist.n))]
    family.add_metric(labels, buckets, total)


def _le(bound: float) -> str:
    return repr(float(bound))


def edge_name(src: str, dst: str) -> str:
    """An edge as people and budgets name it: ``counter.numbers -> scale.value`` (its id is the plan's)."""
    return f"{src} -> {dst}"


def _figure(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_:]", "_", name)


class ReportCollector:
    """Metric families from the report ``latest()`` returns, made at each scrape.

    Before the first report (the graph still compiles its models or starts its processes) a
    scrape is not empty: ``dmnflow_run_info{status="starting"}`` and every node of ``plan``
    as ``dmnflow_node_up{status="starting"}``, so a dashboard shows the run from its start."""

    def __init__(self, latest: Callable[[], Any], plan: Any = None) -> None:
        self.latest = latest
        self.plan = plan
        self.core = _needs()

    def describe(self) -> list[Any]:
        return []  # the families depend on the graph: nothing to check at registration

    def collect(self) -> Iterator[Any]:
        report = self.latest()
        core = self.core
        if report is None:
            yield from self._starting()
            return
        info = core.InfoMetricFamily("dmnflow_run", "the graph this supervisor runs", labels=["graph", "status"])
        info.add_metric([report.graph, report.status], {})
        yield info
        yield core.GaugeMetricFamily("dmnflow_run_duration_seconds", "time since the run started",
                                     value=report.duration_s)
        yield from self._edges(report)
        yield from self._nodes(report)
        yield from self._budgets(report)

    def _starting(self) -> Iterator[Any]:
        if self.plan is None:
            return
        core = self.core
        info = core.InfoMetricFamily("dmnflow_run", "the graph this supervisor runs", labels=["graph", "status"])
        info.add_metric([self.plan.graph, "starting"], {})
        yield info
        up = core.GaugeMetricFamily("dmnflow_node_up", "1 for the node's current status", labels=["node", "status"])
        for node in self.plan.nodes:
            up.add_metric([node.name, "starting"], 1)
        yield up

    def _edges(self, report: Any) -> Iterator[Any]:
        core = self.core
        labels = ["edge", "src", "dst"]
        counters = {name: core.CounterMetricFamily(f"dmnflow_edge_{name}", doc, labels=labels) for name, doc in (
            ("messages_sent", "messages the producer sent on the edge"),
            ("messages_received", "messages the consumer received"),
            ("messages_dropped", "messages the producer dropped (queue full, policy drop)"),
            ("decode_errors", "messages the consumer could not decode"),
            ("gaps", "messages missing in the sequence, as the consumer saw it"))}
        lost = core.GaugeMetricFamily("dmnflow_edge_lost_messages", "dropped plus sent but not received "
                                      "(in flight while running; exact once drained)", labels=labels)
        queued = core.GaugeMetricFamily("dmnflow_edge_queued_messages", "sent, not yet received", labels=labels)
        latency = core.HistogramMetricFamily("dmnflow_edge_latency_seconds", "send to receive, per message",
                                             labels=labels)
        for e in report.edges:
            lab = [edge_name(e.src, e.dst), e.src, e.dst]
            for name, value in (("messages_sent", e.sent), ("messages_received", e.received),
                                ("messages_dropped", e.dropped), ("decode_errors", e.decode_errors),
                                ("gaps", e.gaps)):
                counters[name].add_metric(lab, value)
            lost.add_metric(lab, e.lost)
            queued.add_metric(lab, max(0, e.sent - e.received))
            hist = report.latency.get(e.id)
            if hist is not None:
                _histogram(core, latency, lab, hist)
        yield from counters.values()
        yield lost
        yield queued
        yield latency
        path = core.HistogramMetricFamily("dmnflow_path_latency_seconds", "entering the graph (a source's emit) "
                                          "to arriving at a sink", labels=["source", "sink"])
        for (source, sink), hist in report.e2e_latency.items():
            _histogram(core, path, [source, sink], hist)
        yield path

    def _nodes(self, report: Any) -> Iterator[Any]:
        core = self.core
        m_in = core.CounterMetricFamily("dmnflow_node_messages_in", "messages handed to the node", labels=["node"])
        m_out = core.CounterMetricFamily("dmnflow_node_messages_out", "messages the node emitted", labels=["node"])
        cpu = core.CounterMetricFamily("dmnflow_node_cpu_seconds", "cpu time of the node (its share of its "
                                       "process)", labels=["node"])
        restarts = core.CounterMetricFamily("dmnflow_node_restarts", "restarts of the node's process",
                                            labels=["node"])
        rss = core.GaugeMetricFamily("dmnflow_node_resident_memory_bytes", "resident memory of the node's process",
                                     labels=["node"])
        up = core.GaugeMetricFamily("dmnflow_node_up", "1 for the node's current status", labels=["node", "status"])
        summary = core.GaugeMetricFamily("dmnflow_node_summary", "the numbers a node's summary() reports",
                                         labels=["node", "figure"])
        progress = core.GaugeMetricFamily("dmnflow_node_progress_ratio", "a finite source's done / total",
                                          labels=["node"])
        for name, n in report.nodes.items():
            m_in.add_metric([name], n.messages_in)
            m_out.add_metric([name], n.messages_out)
            cpu.add_metric([name], n.cpu_s)
            restarts.add_metric([name], n.restarts)
            rss.add_metric([name], n.rss_bytes)
            up.add_metric([name, n.status], 1)
            for key, value in (n.summary or {}).items():
                if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
                    summary.add_metric([name, _figure(str(key))], float(value))
            if n.progress and n.progress.get("total"):
                progress.add_metric([name], min(1.0, n.progress["done"] / n.progress["total"]))
        yield from (m_in, m_out, cpu, restarts, rss, up, summary, progress)

    def _budgets(self, report: Any) -> Iterator[Any]:
        core = self.core
        labels = ["budget", "stat"]  # p50, p99, max: not the `quantile` of a summary (0.5, 0.99)
        limit = core.GaugeMetricFamily("dmnflow_budget_limit_seconds", "a latency budget's limit", labels=labels)
        measured = core.GaugeMetricFamily("dmnflow_budget_measured_seconds", "over the last window", labels=labels)
        missed = core.CounterMetricFamily("dmnflow_budget_missed_windows", "windows that missed the budget",
                                          labels=["budget"])
        for b in report.budgets:
            for q, v in b.get("limits_us", {}).items():
                limit.add_metric([b["name"], q], v / 1e6)
                if q in b.get("window_us", {}):
                    measured.add_metric([b["name"], q], b["window_us"][q] / 1e6)
            missed.add_metric([b["name"]], b.get("missed_windows", 0))
        yield from (limit, measured, missed)


class MetricsServer:
    """The running ``/metrics`` endpoint; ``close`` stops it."""

    def __init__(self, httpd: Any, thread: threading.Thread, url: str) -> None:
        self.httpd, self.thread, self.url = httpd, thread, url

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5.0)


def serve_metrics(address: str, latest: Callable[[], Any], plan: Any = None) -> MetricsServer:
    """Serve ``/metrics`` at ``address`` (``HOST:PORT``, port 0 picks one) from ``latest()``'s report
    (before the first one: the run of ``plan`` as starting).

    Raises:
        LaunchError: prometheus-client is not installed, or the address cannot be bound.
    """
    _needs()
    from prometheus_client import CollectorRegistry, start_http_server

    host, port = parse_address(address, "--metrics")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ReportCollector(latest, plan))  # type: ignore[arg-type]
    try:
        httpd, thread = start_http_server(port, host, registry=registry)
    except OSError as exc:
        raise LaunchError(f"--metrics {address}: cannot serve there: {exc.strerror or exc}") from None
    return MetricsServer(httpd, thread, f"http://{host}:{httpd.server_address[1]}/metrics")


def parse_address(address: str, flag: str) -> tuple[str, int]:
    """``HOST:PORT`` (or ``PORT``: loopback) as (host, port).

    Raises:
        LaunchError: it is not one.
    """
    host, sep, port = address.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", address
    try:
        number = int(port)
        if not 0 <= number <= 65535:
            raise ValueError
    except ValueError:
        raise LaunchError(f"{flag} {address!r}: expected HOST:PORT, e.g. 127.0.0.1:9464") from None
    return host.strip("[]") or "127.0.0.1", number
