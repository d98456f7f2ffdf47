"""Every bound of a run is in its plan: derived in compiler/limits.py, never a literal in the runtime."""

from __future__ import annotations

import ast
from pathlib import Path

import dmnflow
from dmnflow.compiler import limits

ROOT = Path(__file__).resolve().parents[2]
HWM_OPTIONS = {"SNDHWM", "RCVHWM", "HWM"}


def test_no_runtime_socket_bound_is_a_literal() -> None:
    """A high-water mark set in the packages that run a graph comes from the plan, not a number in the code."""
    found = []
    for package in ("transport", "runtime", "observe"):
        for path in sorted((ROOT / "dmnflow" / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "setsockopt" \
                        and len(node.args) == 2 and getattr(node.args[0], "attr", "") in HWM_OPTIONS \
                        and not isinstance(node.args[1], ast.Attribute | ast.Name | ast.Subscript | ast.Call):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not found, found


def test_the_plan_carries_every_derived_number() -> None:
    plan = dmnflow.compile_graph(ROOT / "graphs" / "quickstart.yaml",
                                 ["defaults.transport=tcp", "defaults.policy=drop"])
    assert plan.limits == limits.LIMITS
    binds = plan.binds()
    for edge in plan.edges:
        bind = binds[edge.bind]
        assert edge.credit == limits.credit(edge.transport, edge.pattern, edge.policy, edge.queue)
        assert bind.hwm == limits.send_hwm(bind.transport, bind.pattern, edge.queue, bind.coalesce, edge.queue)
        assert bind.control_hwm == limits.control_hwm(bind.transport, bind.pattern)
    for node in plan.nodes:
        for inp in node.inputs:
            for c in inp.connects:
                assert c.hwm == limits.receive_hwm(c.transport, c.pattern, inp.queue, binds[c.bind].coalesce)
                assert c.credit_every == limits.credit_every(c.pattern, inp.queue)
