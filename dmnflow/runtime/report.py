"""The report of a run: per node, per edge, per socket, end to end, and how it ended.

The counts come from the workers' counters files (``transport.stats``), one per worker
incarnation, which stay exact when a worker is killed. So the report never contradicts
itself: on every edge ``received + lost == sent`` once the run has drained, and what a
sink misses is the sum of what its path lost on edges and inside killed nodes. Latency
histograms, node summaries and cpu time come from heartbeats.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..plan import Plan
from ..transport.stats import (
    ACKED,
    B_DISCONNECTS,
    B_JUNK,
    B_REFUSED,
    DECODE_ERRORS,
    DROPPED,
    GAPS,
    N_COMMIT_BEGIN,
    N_COMMIT_END,
    N_COMMITTED,
    N_COMMITTED_PREV,
    N_CONFLATED,
    N_HANDLING,
    N_HANDLING_OUT,
    N_IN,
    N_JOIN_INCOMPLETE,
    N_OUT,
    POS_RECEIVED,
    POS_SENT,
    RECEIVED,
    REDELIVERED,
    REFUSED,
    RESENT,
    RESTARTS_SEEN,
    SENT,
    Histogram,
    Layout,
)

__all__ = ["EdgeReport", "Incarnation", "NodeReport", "Report", "SocketReport", "build_report"]


@dataclass
class NodeReport:
    name: str
    messages_in: int = 0
    messages_out: int = 0
    cpu_s: float = 0.0
    restarts: int = 0
    join_incomplete: int = 0  # event times given up on: an input never delivered them
    conflated: int = 0  # messages a `latest` input skipped for a newer one
    lost: int = 0  # messages a killed incarnation was handling and had emitted nothing for
    status: str = "pending"  # running while it runs; then done, failed or stopped
    host: str = ""  # where it ran (the distributed backend runs nodes on several hosts)
    summary: dict[str, Any] | None = None  # what the node's own ``summary()`` reported last
    progress: dict[str, Any] | None = None  # a finite source's ``progress()``: {done, total, unit}
    rss_bytes: int = 0  # resident memory of its process (shared by the nodes of a group)


@dataclass
class EdgeReport:
    id: int
    src: str
    dst: str
    sent: int = 0
    received: int = 0
    dropped: int = 0
    gaps: int = 0
    decode_errors: int = 0
    restarts_seen: int = 0
    delivery: str = "at-most-once"
    # at-least-once (sent and received count each sequence number once, whichever incarnation):
    resent: int = 0  # copies sent again: to a restarted consumer, or emitted again by a restarted producer
    redelivered: int = 0  # copies that arrived again: dropped (handled before) or handed over (a killed one had it)
    unacked: int = 0  # at-least-once: records a live producer still held at the end
    refused: int = 0  # CURVE handshakes the consumer failed (a peer on its producer's address without the key)
    p50_us: float | None = None
    p99_us: float | None = None

    @property
    def lost(self) -> int:
        """Messages that did not arrive: refused at the sender, plus sent but never received
        (whatever a killed worker held in its queues included). Exact once the run has
        drained. On an at-least-once edge both count sequence numbers, each once: a record
        lost is one that never reached any incarnation of the consumer."""
        return self.dropped + max(self.sent - self.received, 0)


@dataclass
class SocketReport:
    """A socket an output bound, as it ran (the placed plan: on the ray backend an edge that
    crosses nodes is tcp), and what peers the plan does not know did to it."""

    bind: str
    endpoint: str  # the address it bound (a tcp port chosen at bind time included)
    pattern: str
    outputs: list[str]
    transport: str = ""  # ipc, tcp, inproc
    host: str = ""  # where its process ran
    curve: bool = False  # tcp with CURVE: only the run's keys connect
    junk: int = 0  # frames without the run's token, or from an unknown identity: ignored
    refused: int = 0  # CURVE handshakes refused (no key, or a key not admitted)
    disconnects: int = 0  # connections ended before the end was acknowledged (a consumer died, an oversize frame)


@dataclass
class Report:
    """What a run did: per node, per edge, end to end, and how it ended."""

    graph: str
    status: str  # finished, stopped, failed (a node failed, a teardown raised, or a cut drain lost records)
    exit_code: int  # ExitCode: OK, or NODE_FAILED when the status is failed
    duration_s: float
    startup_s: float
    nodes: dict[str, NodeReport]
    edges: list[EdgeReport]
    e2e: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    sockets: list[SocketReport] = field(default_factory=list)
    control_junk: int = 0  # messages to the supervisor's control and admin sockets it did not trust
    budgets: list[dict[str, Any]] = field(default_factory=list)  # latency budgets: limits, measured, misses
    # the drain was cut: {reason, after_s, workers (terminated), lost (records in flight or held by them)}
    cut: dict[str, Any] | None = None
    live: dict[str, Any] | None = None  # while it runs: windowed rates, latencies, cpu, progress (runtime/live.py)
    # the cumulative latency histograms behind p50/p99 (not in the JSON): per edge id, per (source, sink)
    latency: dict[int, Histogram] = field(default_factory=dict, repr=False)
    e2e_latency: dict[tuple[str, str], Histogram] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The report as plain data (what ``to_json`` writes)."""
        def edge(e: EdgeReport) -> dict[str, Any]:
            return {**e.__dict__, "lost": e.lost}

        out = {"graph": self.graph, "status": self.status, "exit_code": self.exit_code,
               "duration_s": self.duration_s, "startup_s": self.startup_s,
               "nodes": {n: dict(v.__dict__) for n, v in self.nodes.items()},
               "edges": [edge(e) for e in self.edges], "e2e": self.e2e, "errors": self.errors,
               "sockets": [s.__dict__ for s in self.sockets], "control_junk": self.control_junk,
               "budgets": self.budgets, "cut": self.cut}
        if self.live is not None:
            out["live"] = self.live
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


@dataclass
class Incarnation:
    """One worker incarnation's counts and its last heartbeat."""

    counts: list[int] | None
    beat: dict[str, Any]
    killed: bool  # it died (crash, signal): what it held is lost


def _lost_in(plan: Plan, layout: Layout, ids: dict[tuple[str, str], int], name: str, counts: list[int],
             b: int) -> int:
    """What a killed incarnation of node ``name`` held: messages its inputs had taken but it had
    not handled (a batch, say), the ones it was handling and had emitted nothing for, and an
    emit its outlet never got, and what it handled after its last commit (Node.commit). A node
    whose edges are all at-least-once loses nothing: its producers send it all again."""
    edges = [e for e in plan.edges if name in (e.src, e.dst)]
    if edges and all(e.delivery == "at-least-once" for e in edges):
        return 0
    taken = -counts[b + N_CONFLATED]
    for e in plan.edges:
        if e.dst == name:
            taken += counts[layout.edge(e.id) + RECEIVED] - counts[layout.edge(e.id) + DECODE_ERRORS]
    waiting = max(0, taken - counts[b + N_IN])
    accepted = sum(counts[layout.output(ids[(name, o.port)])] for o in plan.node(name).outputs)
    unsent = max(0, counts[b + N_OUT] - accepted)
    committed = counts[b + N_COMMITTED]
    if counts[b + N_COMMIT_BEGIN] != counts[b + N_COMMIT_END]:  # killed inside a commit: it did not hold
        committed = counts[b + N_COMMITTED_PREV]  # (the restarted incarnation cut the output back to before it)
    if committed >= 0:  # a commit step: everything that came in after the last is lost
        return waiting + counts[b + N_IN] - committed + unsent
    being_handled = counts[b + N_IN] - counts[b + N_HANDLING]
    handling = being_handled if counts[b + N_OUT] == counts[b + N_HANDLING_OUT] else 0
    return waiting + handling + unsent


def build_report(plan: Plan, layout: Layout, procs: dict[str, Any], status: str, code: int, duration_s: float,
                 startup_s: float, errors: list[str], control_junk: int = 0, placed: Plan | None = None,
                 endpoints: dict[str, str] | None = None) -> Report:
    """The report from every incarnation of every worker (``procs``: name -> object with
    ``nodes``, ``restarts``, ``state``, ``host`` and ``incarnations``); its sockets as they ran:
    the ``placed`` plan (the ray backend's) with the addresses the binds took (``endpoints``)."""
    nodes = {n.name: NodeReport(n.name) for n in plan.nodes}
    edges = [EdgeReport(e.id, f"{e.src}.{e.src_port}", f"{e.dst}.{e.dst_port}", delivery=e.delivery)
             for e in plan.edges]
    hist = {e.id: Histogram() for e in plan.edges}
    e2e: dict[tuple[int, str], Histogram] = {}
    index = {n.name: i for i, n in enumerate(plan.nodes)}
    ids = plan.output_ids()
    ran = placed or plan
    binds = ran.binds()
    curve = ran.security.curve is not None
    host_of = {name: getattr(proc, "host", "") for proc in procs.values() for name in proc.nodes}
    sockets = {b.id: SocketReport(b.id, (endpoints or {}).get(b.id, b.endpoint), b.pattern, [], b.transport,
                                  curve=curve and b.transport == "tcp") for b in binds.values()}
    for n in ran.nodes:
        for o in n.outputs:
            for b in o.binds:
                sockets[b.id].outputs.append(f"{n.name}.{o.port}")
                sockets[b.id].host = host_of.get(n.name, "")
    edge_fields = (("sent", SENT), ("dropped", DROPPED), ("resent", RESENT), ("received", RECEIVED),
                   ("gaps", GAPS), ("decode_errors", DECODE_ERRORS), ("restarts_seen", RESTARTS_SEEN),
                   ("redelivered", REDELIVERED), ("refused", REFUSED))
    # at-least-once: the highest sequence sent and received, over every incarnation (positions,
    # carried from each to the next): a count and a position are two stores, and a kill -9 between
    # them would count a record twice, once per incarnation; one position is one store
    top_sent = {e.id: 0 for e in edges if e.delivery == "at-least-once"}
    top_received = dict(top_sent)
    for proc in procs.values():
        share = len(proc.nodes)
        for name in proc.nodes:
            nodes[name].restarts = proc.restarts
            nodes[name].status = proc.state
            nodes[name].host = getattr(proc, "host", "")
        last = len(proc.incarnations) - 1
        for k, inc in enumerate(proc.incarnations):
            beat = inc.beat or {}
            for name in proc.nodes:
                node = nodes[name]
                node.cpu_s += float(beat.get("cpu_s", 0.0) or 0.0) / share
                ns = (beat.get("nodes") or {}).get(name) or {}
                if isinstance(ns.get("summary"), dict):
                    node.summary = ns["summary"]
                if isinstance(ns.get("progress"), dict):
                    node.progress = ns["progress"]
                if k == last and type(beat.get("rss_bytes")) is int:
                    node.rss_bytes = beat["rss_bytes"]
                for origin, sparse in (ns.get("e2e") or {}).items():
                    if isinstance(sparse, dict):
                        e2e.setdefault((int(origin), name), Histogram()).merge(Histogram.from_sparse(sparse))
            for e, sparse in (beat.get("latency") or {}).items():
                if isinstance(sparse, dict) and 0 <= int(e) < len(hist):
                    hist[int(e)].merge(Histogram.from_sparse(sparse))
            counts = inc.counts
            if counts is None or len(counts) < layout.size:
                continue
            for edge in edges:
                b = layout.edge(edge.id)
                for attr, f in edge_fields:
                    setattr(edge, attr, getattr(edge, attr) + counts[b + f])
                if edge.id in top_sent:
                    top_sent[edge.id] = max(top_sent[edge.id], counts[b + POS_SENT])
                    top_received[edge.id] = max(top_received[edge.id], counts[b + POS_RECEIVED])
                if edge.delivery == "at-least-once" and edge.src.rsplit(".", 1)[0] in proc.nodes \
                        and not inc.killed and k == last:
                    edge.unacked += max(0, counts[b + SENT] - counts[b + ACKED])
            for name in proc.nodes:
                node = nodes[name]
                b = layout.node(index[name])
                node.messages_in += counts[b + N_IN]
                node.messages_out += counts[b + N_OUT]
                node.conflated += counts[b + N_CONFLATED]
                node.join_incomplete += counts[b + N_JOIN_INCOMPLETE]
                if inc.killed:
                    node.lost += _lost_in(plan, layout, ids, name, counts, b)
            if inc.killed:  # records a killed producer had accepted but not yet sent (coalescing)
                for name in proc.nodes:
                    for out in plan.node(name).outputs:
                        accepted = counts[layout.output(ids[(name, out.port)])]
                        for bind in out.binds:
                            if bind.pattern != "push" or not bind.edges \
                                    or plan.edges[bind.edges[0]].delivery == "at-least-once":
                                continue  # (at-least-once edges never coalesce; a restart emits again)
                            went = sum(counts[layout.edge(e) + SENT] + counts[layout.edge(e) + DROPPED]
                                       for e in bind.edges)
                            held = accepted - went
                            if held > 0:  # sent into the edge as far as the node knew, never out
                                edges[bind.edges[0]].sent += held
            for bind in binds.values():
                b = layout.bind(bind.counter)
                sockets[bind.id].junk += counts[b + B_JUNK]
                sockets[bind.id].refused += counts[b + B_REFUSED]
                sockets[bind.id].disconnects += counts[b + B_DISCONNECTS]
    for edge in edges:
        if edge.id in top_sent:  # one sequence per edge from 0: each below the top went (or came) once
            edge.sent = top_sent[edge.id]
            edge.received = max(top_received[edge.id] - edge.gaps, 0)  # less those that never came
        p50, p99 = hist[edge.id].quantile(0.5), hist[edge.id].quantile(0.99)
        edge.p50_us = None if p50 is None else round(p50 / 1e3, 1)
        edge.p99_us = None if p99 is None else round(p99 / 1e3, 1)
    names = [n.name for n in plan.nodes]
    sinks = {n.name for n in plan.nodes if not n.outputs}
    paths = []
    by_path: dict[tuple[str, str], Histogram] = {}
    for (origin, sink), h in sorted(e2e.items()):
        if not 0 <= origin < len(names):
            continue
        by_path[(names[origin], sink)] = h
        if sink not in sinks:  # a node measured only for a path budget: in the budgets table, not here
            continue
        p50, p99 = h.quantile(0.5), h.quantile(0.99)
        paths.append({"source": names[origin], "sink": sink, "messages": h.n,
                      "p50_us": round((p50 or 0) / 1e3, 1), "p99_us": round((p99 or 0) / 1e3, 1)})
    return Report(plan.graph, status, code, round(duration_s, 3), round(startup_s, 3), nodes, edges, paths,
                  list(errors), list(sockets.values()), control_junk, latency=hist, e2e_latency=by_path)
