"""Lowering the checked graph to the Plan: replicas expanded, instances in topological
order, every instance edge given a transport, a pattern and a bind, each bind its endpoint,
high-water mark and coalescing, each input its connects, and the processes."""

from __future__ import annotations

import hashlib
import re
from typing import Any

import networkx as nx

from ..codecs import get_codec
from ..node import describe_type
from ..plan import (
    RUN_DIR,
    BatchPlan,
    BindPlan,
    CoalescePlan,
    ConnectPlan,
    DrainPlan,
    EdgePlan,
    InputPlan,
    JoinPlan,
    NodePlan,
    OutputPlan,
    Plan,
    ProcessPlan,
    RestartPlan,
    SecurityPlan,
)
from ..spec import CoalesceSpec
from ..transport.iox import available as iox_available
from . import limits
from .binding import model_plan
from .budgets import plan_budgets
from .state import _Compilation, _Edge, _Node, _template


class _Lowering(_Compilation):
    """``build_plan``: run once every check has passed."""

    def build_plan(self, security: SecurityPlan) -> Plan:
        """Each value is read from the resolved spec (spec/resolve.py); only keys that
        ``defaults`` alone holds (``shm_above``, ``room_poll``, ``read_batch``) are read there."""
        order = {name: i for i, name in enumerate(self.nodes)}
        instances = nx.DiGraph()
        for node in self.nodes.values():
            instances.add_nodes_from(node.instances)
        inst_edges: list[tuple[str, str, _Edge]] = []
        for e in self.edges:
            producers = self.nodes[e.src].instances
            if e.replica is not None:
                producers = [producers[e.replica]]
            for src in producers:
                for dst in self.nodes[e.dst].instances:
                    inst_edges.append((src, dst, e))
                    if not e.feedback:
                        instances.add_edge(src, dst)
        topo = list(nx.lexicographical_topological_sort(
            instances, key=lambda n: (order[_template(n)], n)))
        process_of = {inst: (node.entry.spec.group or inst) for node in self.nodes.values()
                      for inst in node.instances}
        spins = self.spinning(process_of)
        iox = iox_available()
        iox_missing: list[str] = []  # edges that would be iox, were iceoryx2 installed

        # every instance edge gets an id, a transport, a pattern and a bind
        edge_plans: list[EdgePlan] = []
        binds: dict[tuple[str, str], dict[tuple[str, str, str], list[int]]] = {}
        for i, (src, dst, e) in enumerate(sorted(inst_edges, key=lambda t: (
                topo.index(t[0]), t[2].src_port, topo.index(t[1]), t[2].dst_port))):
            consumer = self.nodes[e.dst]
            inp = consumer.entry.spec.inputs[e.dst_port]
            policy, queue = inp.policy, inp.queue
            assert policy is not None and queue is not None  # resolved
            fixed = self.nodes[e.src].entry.spec.outputs[e.src_port]
            transport = "inproc" if process_of[src] == process_of[dst] else fixed.transport
            share = len(consumer.instances) > 1 and consumer.entry.spec.dispatch == "share"
            if transport == "tcp" and fixed.port is not None:
                pattern, target = "stream", ""  # the fixed port carries every edge of the output
            else:
                pattern = "push" if policy == "block" or share else "pub"
                # a PUB serves all subscribers; a PUSH serves one consumer, or one replica set
                target = "" if pattern == "pub" else (e.dst if share else dst) + "." + e.dst_port
                # latency mode: both processes spin, on one host: iceoryx2 shared memory, a bind per edge
                if transport == "ipc" and spins[process_of[src]] and spins[process_of[dst]] and not share \
                        and not e.feedback and inp.delivery == "at-most-once" \
                        and self.nodes[e.src].entry.spec.host == consumer.entry.spec.host:
                    if iox:
                        transport, target = "iox", dst + "." + e.dst_port
                    else:
                        iox_missing.append(f"{src}.{e.src_port} -> {dst}.{e.dst_port}")
            binds.setdefault((src, e.src_port), {}).setdefault((transport, pattern, target), []).append(i)
            edge_plans.append(EdgePlan(
                id=i, src=src, src_port=e.src_port, dst=dst, dst_port=e.dst_port, type=e.type,
                codec=fixed.codec, transport=transport, endpoint="", bind="", pattern=pattern,
                policy=policy, queue=queue, topics=inp.topics, feedback=e.feedback, delivery=inp.delivery,
                credit=limits.credit(transport, pattern, policy, queue),
                block_timeout_s=inp.block_timeout if policy == "block" else None,
                group=f"{e.dst}.{e.dst_port}" if share else None))

        bind_of: dict[int, tuple[str, str]] = {}  # edge -> (bind id, endpoint)
        counters: dict[str, int] = {}  # bind id -> its counter slot
        node_plans: list[NodePlan] = []
        for inst in topo:
            node = self.nodes[_template(inst)]
            entry, spec = node.entry, node.entry.spec
            assert node.ports is not None and node.cls is not None and node.params is not None
            outputs = []
            for port, decl in node.ports.outputs.items():
                out = spec.outputs[port]
                groups = binds.get((inst, port), {})
                fixed = out.port
                if fixed is not None and len(node.instances) > 1:
                    fixed += node.instances.index(inst)  # replicas take consecutive ports
                if fixed is not None and not any(k[1] == "stream" for k in groups):
                    # a fixed port with no consumer in another process: bound anyway, for clients outside
                    groups = {("tcp", "stream", ""): [], **groups}
                elif not groups:
                    groups = {(out.transport, "pub", ""): []}
                hwm, codec = out.send_limit, out.codec
                assert hwm is not None and codec is not None and out.coalesce is not None  # resolved
                coalesce = _coalesce_plan(out.coalesce)
                bind_plans = []
                for (transport, pattern, target), ids in groups.items():
                    endpoint = self.endpoint(inst, port, transport, pattern, target, node,
                                             fixed if pattern == "stream" else None)
                    if pattern == "stream":  # one socket per port and process: outputs may share it
                        bind_id = f"{process_of[inst]}@{endpoint.removeprefix('tcp://')}"
                    else:
                        bind_id = f"{inst}.{port}/{pattern}" + (f"/{target}" if target else "") + f"/{transport}"
                    counter = counters.setdefault(bind_id, len(counters))
                    # push: bursts coalesce, except on at-least-once edges (each record is resent alone)
                    # and iox ones (each record is its own sample)
                    merged = coalesce if pattern == "push" and transport != "iox" and not any(
                        edge_plans[e].delivery == "at-least-once" for e in ids) else None
                    window = max([edge_plans[e].queue for e in ids], default=hwm)  # a stream's credit
                    if transport == "iox":  # its one consumer's buffer, which both ends size alike
                        hwm = edge_plans[ids[0]].queue
                    for edge_id in ids:
                        bind_of[edge_id] = (bind_id, endpoint)
                    bind_plans.append(BindPlan(
                        id=bind_id, counter=counter, endpoint=endpoint, transport=transport, pattern=pattern,
                        hwm=limits.send_hwm(transport, pattern, hwm, merged, window),
                        control_hwm=limits.control_hwm(transport, pattern), edges=ids, coalesce=merged))
                # large payloads through shared memory: a codec that allows it, between processes of one host
                shm_above = entry.defaults.shm_above if get_codec(codec).shm else None
                if shm_above is not None:
                    bind_plans = [b.model_copy(update={"shm": True}) if b.transport == "ipc"
                                  and b.pattern in ("pub", "push") else b for b in bind_plans]
                    if not any(b.shm for b in bind_plans):
                        shm_above = None
                outputs.append(OutputPlan(
                    port=port, type=describe_type(decl.type), codec=codec,
                    compress_above=out.compress_above if get_codec(codec).compressible else None,
                    binds=bind_plans,
                    shm_above=shm_above,
                    shm_slots=out.shm_slots,
                    room_poll_s=entry.defaults.room_poll))
            restart = spec.restart
            assert restart is not None  # resolved
            node_plans.append(NodePlan(
                name=inst, spec_name=entry.name, uses=spec.uses, params=node.params.model_dump(mode="json"),
                layer=spec.layer, process=process_of[inst], cpus=spec.cpus or [], gpu=spec.gpu, host=spec.host,
                resources=spec.resources,
                replica=None if len(node.instances) == 1 else node.instances.index(inst),
                replicas=len(node.instances), restart=RestartPlan(
                    when=restart.when, max_restarts=restart.max_restarts, backoff_s=restart.backoff,
                    backoff_max_s=restart.backoff_max),
                busy=spec.busy if spec.busy is not None else node.cls.busy, source=node.cls.is_source(),
                model=model_plan(node),
                join=None if spec.join is None else JoinPlan(inputs=spec.join.inputs, timeout_s=spec.join.timeout),
                timers=spec.timers, env=list(node.cls.environment(node.params)),
                inputs=[], outputs=outputs, loc=str(self.loc("nodes", entry.name, key=True) or entry.name)))

        edge_plans = [e.model_copy(update={"bind": bind_of[e.id][0], "endpoint": bind_of[e.id][1]})
                      for e in edge_plans]
        bind_by_id = {b.id: b for n in node_plans for o in n.outputs for b in o.binds}
        by_input: dict[tuple[str, str], list[EdgePlan]] = {}
        for e in edge_plans:
            by_input.setdefault((e.dst, e.dst_port), []).append(e)
        final_nodes = []
        for plan_node in node_plans:
            node = self.nodes[plan_node.spec_name]
            inputs = []
            for port, inp in node.entry.spec.inputs.items():
                edges = by_input.get((plan_node.name, port), [])
                declared = node.ports.inputs[port] if node.ports else None
                queue = inp.queue
                assert queue is not None and inp.policy is not None and inp.max_message is not None  # resolved
                inputs.append(InputPlan(
                    port=port, type=describe_type(declared.type if declared else Any),
                    policy=inp.policy, queue=queue, topics=inp.topics, feedback=inp.feedback,
                    batch=BatchPlan(max=inp.batch.max, wait_s=inp.batch.wait) if inp.batch else None,
                    connects=[ConnectPlan(edge=e.id, bind=e.bind, node=e.src, port=e.src_port, endpoint=e.endpoint,
                                          transport=e.transport, pattern=e.pattern,
                                          hwm=limits.receive_hwm(e.transport, e.pattern, queue,
                                                                 bind_by_id[e.bind].coalesce),
                                          credit_every=limits.credit_every(e.pattern, queue),
                                          control_hwm=limits.connect_control_hwm(e.transport)) for e in edges],
                    delivery=inp.delivery, max_bytes=inp.max_message, read_batch=node.entry.defaults.read_batch))
            final_nodes.append(plan_node.model_copy(update={"inputs": inputs}))

        notes = []
        if iox_missing:  # a note, not a warning: the graph runs as it did, only without the faster edges
            notes.append(f"{len(iox_missing)} edge{'s' * (len(iox_missing) > 1)} between spinning (busy) processes "
                         f"stay{'s' * (len(iox_missing) == 1)} on ipc ({', '.join(iox_missing[:3])}"
                         f"{', ...' if len(iox_missing) > 3 else ''}): iceoryx2 is not installed; "
                         "pip install 'dmnflow[iox]' for the latency mode's shared-memory edges")
        processes: dict[str, list[str]] = {}
        for inst in topo:
            processes.setdefault(process_of[inst], []).append(inst)
        process_plans = [ProcessPlan(name=p, nodes=members, cpus=sorted({
            c for m in members for c in (self.nodes[_template(m)].entry.spec.cpus or [])}))
            for p, members in processes.items()]
        return Plan(graph=self.graph.name, file=self.graph.file, profile=self.graph.profile,
                    machine_cpus=self.cpus, nodes=final_nodes, edges=edge_plans, processes=process_plans,
                    warnings=[i.to_dict() for i in self.issues.issues if not i.is_error], notes=notes,
                    security=security,
                    drain=DrainPlan(idle_s=self.graph.drain.idle, max_s=self.graph.drain.max), limits=limits.LIMITS,
                    budgets=plan_budgets(self.nodes, edge_plans, self.loc,
                                         {name: node.instances for name, node in self.nodes.items()}))

    def spinning(self, process_of: dict[str, str]) -> dict[str, bool]:
        """Which processes spin (latency mode): those whose every node is ``busy``."""
        spins: dict[str, bool] = {}
        for node in self.nodes.values():
            spec = node.entry.spec
            busy = spec.busy if spec.busy is not None else bool(node.cls and node.cls.busy)
            for inst in node.instances:
                spins[process_of[inst]] = spins.get(process_of[inst], True) and busy
        return spins

    def endpoint(self, inst: str, port: str, transport: str, pattern: str, target: str, node: _Node,
                 fixed: int | None) -> str:
        if transport == "iox":  # names the edge's iceoryx2 services (transport/iox.py), one bind per edge
            return f"iox://{_safe(inst)}.{port}.{_safe(target)}"
        suffix = "" if pattern == "pub" else "." + _safe(target)
        if transport == "inproc":
            return f"inproc://{inst}.{port}{suffix}"
        if transport == "ipc":
            name = f"{_safe(inst)}.{port}{suffix}"
            if len(name) > 60:  # unix socket paths are limited to ~107 bytes
                name = "e" + hashlib.sha1(name.encode()).hexdigest()[:16]
            return f"ipc://{RUN_DIR}/{name}"
        host = node.entry.spec.outputs[port].host
        return f"tcp://{host}:{fixed if fixed is not None else '*'}"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def _coalesce_plan(spec: CoalesceSpec) -> CoalescePlan | None:
    if not spec.enabled:
        return None
    return CoalescePlan(records=spec.records, bytes=spec.bytes, record_max=spec.record_max,
                        gap_ns=round(spec.gap * 1e9), max_age_ns=round(spec.max_age * 1e9))

