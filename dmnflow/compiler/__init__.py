"""Graph file -> networkx graph -> every check -> Plan.

The compiler imports each node class named by ``uses:``, validates its params, matches
ports, types, codecs, pins and model files, finds loops, and lays out the sockets. It
reports *every* problem in one pass, each with file:line:col and a fix; a node that fails
one check is still checked for the others, and references to a broken node are not
reported again. ``validate`` returns the issues; ``compile_graph`` raises them.

The passes live in their own modules: ``binding`` (classes, params, ports, joins, timers,
models), ``wiring`` (edges, types, loops, codecs, transports, tcp ports, delivery,
security), ``placement`` (cores, busy cores, hosts) and ``lowering`` (the Plan: instance
edges, binds, endpoints, high-water marks, coalescing, processes), over the shared state of
``state``. ``_Compiler`` below runs them in order.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from pydantic import BaseModel

from ..errors import CompileError, Issue, SpecError, sort_issues
from ..node import Node, Ports
from ..plan import NodePlan, Plan, SecurityPlan
from ..spec import Defaults, LoadedGraph, NodeEntry, NodeSpec, Override, SourceMap, load_graph
from .binding import _Binding, plan_model
from .budgets import check_budgets
from .lowering import _Lowering
from .placement import _Placement
from .state import _Node
from .wiring import _Wiring

__all__ = ["check", "compile_graph", "plan_model", "plan_node_alone", "validate"]


def validate(path: str | os.PathLike[str], overrides: Sequence[str | Override] = (), *,
             profile: str | None = None, machine_cpus: Sequence[int] | None = None,
             models: bool = True) -> list[Issue]:
    """Every problem in a graph file, errors and warnings, in file order. Empty when clean.

    ``models=False`` skips loading model files to check them against their ports.
    """
    return check(path, overrides, profile=profile, machine_cpus=machine_cpus, models=models)[1]


def check(path: str | os.PathLike[str], overrides: Sequence[str | Override] = (), *,
          profile: str | None = None, machine_cpus: Sequence[int] | None = None,
          models: bool = True) -> tuple[Plan | None, list[Issue]]:
    """The plan (None when there are errors) and every issue, in file order: one compile that
    both ``dmnflow validate`` and ``launch`` can keep (``dmnflow.cache``)."""
    plan, issues, _ = _compile(path, overrides, profile, machine_cpus, models)
    return plan, sort_issues(issues)


def compile_graph(path: str | os.PathLike[str], overrides: Sequence[str | Override] = (), *,
                  profile: str | None = None, machine_cpus: Sequence[int] | None = None,
                  models: bool = True, transform: Callable[[LoadedGraph], None] | None = None) -> Plan:
    """Compile a graph file into a Plan.

    ``transform`` may change the loaded graph before it is compiled (``dmnflow replay``
    swaps producers for a recording's replayer, observe/replay.py).

    Raises:
        SpecError: the file cannot be read as a graph (YAML, schema, substitution).
        CompileError: it reads, but does not hold together (imports, ports, types, pins).
    """
    plan, issues, spec_issues = _compile(path, overrides, profile, machine_cpus, models, transform)
    if plan is None:
        only_spec = all(i in spec_issues for i in issues if i.is_error)  # the file itself is the problem
        raise (SpecError if only_spec else CompileError)(issues)
    return plan


def _compile(path: str | os.PathLike[str], overrides: Sequence[str | Override], profile: str | None,
             machine_cpus: Sequence[int] | None, models: bool = True,
             transform: Callable[[LoadedGraph], None] | None = None) -> tuple[Plan | None, list[Issue], list[Issue]]:
    """The plan (None when there are errors), every issue, and those found reading the file."""
    graph = load_graph(path, overrides, profile=profile)
    if transform is not None and not any(i.is_error for i in graph.issues):
        transform(graph)
    cpus = sorted(machine_cpus if machine_cpus is not None else os.sched_getaffinity(0))
    compiler = _Compiler(graph, cpus, models)
    plan = compiler.run()
    return plan, compiler.issues.issues, graph.issues


def plan_node_alone(cls: type[Node], spec: NodeSpec, params: BaseModel, ports: Ports, *,
                    name: str, base_dir: Path) -> NodePlan:
    """The plan a graph of this one node, nothing connected, gets: the same resolver and
    lowering as a YAML graph, with ``graph`` defaults, so ``dmnflow.testing.run_node`` runs a
    node as the worker would. The class, its validated params and its ports are given, not
    imported and checked (a test's class need not be importable by ``uses``)."""
    entry = NodeEntry(name, spec, Defaults(), base_dir)
    graph = LoadedGraph(name, name, None, {name: entry}, set(), SourceMap(), [])
    compiler = _Compiler(graph, [], models=False)
    node = compiler.nodes[name] = _Node(entry, cls=cls, params=params, ports=ports, instances=[name])
    compiler.resolve_defaults(node)
    return compiler.build_plan(SecurityPlan()).nodes[0]


class _Compiler(_Binding, _Wiring, _Placement, _Lowering):
    """Every pass over one loaded graph, in order; ``run`` returns the Plan, or None when
    there are errors (then ``issues`` has them all)."""

    def run(self) -> Plan | None:
        for name, entry in self.graph.nodes.items():
            node = self.nodes[name] = _Node(entry)
            node.instances = [name] if entry.spec.replicas == 1 else [
                f"{name}[{i}]" for i in range(entry.spec.replicas)]
            self.resolve_class(node)
            self.check_params(node)
            self.check_ports(node)
            self.resolve_defaults(node)  # from here on every pass reads filled fields, never `defaults`
            self.check_join(node)
            self.check_timers(node)
            self.check_pins(node)
            self.check_model(node)
        for node in self.nodes.values():
            self.connect(node)
        template = self.template_graph()
        self.check_cycles(template)
        self.check_unused(template)
        self.check_codecs()
        self.check_tcp_ports()
        self.check_busy_cores()
        self.check_hosts()
        self.check_delivery()
        self.check_drivers()
        check_budgets(self.nodes, self.edges, self.loc, self.issues)
        security = self.check_security()
        if self.issues.has_errors:
            return None
        return self.build_plan(security)
