"""The compiler (being split into modules: the whole of it is in lowering.py for now)."""

from .lowering import compile_graph, plan_model, validate

__all__ = ["compile_graph", "plan_model", "validate"]
