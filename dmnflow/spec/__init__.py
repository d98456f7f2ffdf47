"""The graph file: its schema, and loading it with every value's file:line:col.

One module per concept: ``units`` (durations, sizes, cores), ``schema`` (the pydantic models
of the YAML contract, ``json_schema``), ``source`` (YAML with locations: ``parse_yaml``,
``SourceMap``), ``overrides`` (``--set``, overlay files, profiles), ``substitution``
(``${vars.x}``, ``${env:NAME}``), ``validation`` (a located document against a model, every
error an issue), ``load`` (``load_graph``: a file and its includes, in that order of
steps) and ``resolve`` (``resolve_node``: the defaults filled in, once, keeping where each
came from). The names below are the ones the rest of dmnflow uses.
"""

from .load import LoadedGraph, NodeEntry, load_graph
from .overrides import Override, load_overlay
from .resolve import resolve_node
from .schema import (
    BatchSpec,
    BudgetSpec,
    CoalesceSpec,
    Defaults,
    DrainSpec,
    GraphSpec,
    IncludeSpec,
    InputSpec,
    JoinSpec,
    ModelSpec,
    NodeSpec,
    OutputSpec,
    PathBudgetSpec,
    RestartSpec,
    SecuritySpec,
    json_schema,
)
from .source import SourceMap, parse_yaml
from .units import Duration, format_cpus, format_duration, parse_cpus, parse_duration, parse_size
from .validation import validate_section

__all__ = [
    "BatchSpec",
    "BudgetSpec",
    "CoalesceSpec",
    "Defaults",
    "DrainSpec",
    "Duration",
    "GraphSpec",
    "IncludeSpec",
    "InputSpec",
    "JoinSpec",
    "LoadedGraph",
    "ModelSpec",
    "NodeEntry",
    "NodeSpec",
    "OutputSpec",
    "Override",
    "PathBudgetSpec",
    "RestartSpec",
    "SecuritySpec",
    "SourceMap",
    "format_cpus",
    "format_duration",
    "json_schema",
    "load_graph",
    "load_overlay",
    "parse_cpus",
    "parse_duration",
    "parse_size",
    "parse_yaml",
    "resolve_node",
    "validate_section",
]
