"""What one compilation knows, shared by its passes: the YAML nodes with their classes and
ports, the edges between them, the issues found so far, and where each key is written.

The passes (``binding``, ``wiring``, ``placement``, ``lowering``) are mixins over
``_Compilation``; ``dmnflow.compiler._Compiler`` puts them together and runs them in order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from ..errors import IssueList, Location, did_you_mean
from ..node import Node, Ports
from ..spec import LoadedGraph, NodeEntry, SourceMap

_REPLICA_RE = re.compile(r"^(?P<base>.+)\[(?P<index>\d+)\]$")


@dataclass
class _Node:
    """What the compiler knows of one YAML node."""

    entry: NodeEntry
    cls: type[Node] | None = None
    params: BaseModel | None = None
    ports: Ports | None = None
    instances: list[str] = field(default_factory=list)

    @property
    def usable(self) -> bool:
        return self.ports is not None


@dataclass
class _Edge:
    src: str  # YAML node names
    src_port: str
    dst: str
    dst_port: str
    replica: int | None  # the producer replica named in the reference, if any
    type: str
    feedback: bool


class _Compilation:
    """The state every pass reads and adds to, and how a pass reports an issue."""

    def __init__(self, graph: LoadedGraph, machine_cpus: list[int], models: bool = True) -> None:
        self.graph = graph
        self.models = models  # load model files and check them against the node's ports
        self.srcmap: SourceMap = graph.srcmap
        self.cpus = machine_cpus
        self.issues = IssueList(list(graph.issues))
        self.nodes: dict[str, _Node] = {}
        self.edges: list[_Edge] = []

    def loc(self, *path: str | int, key: bool = False) -> Location | None:
        return self.srcmap.at(path, key=key)

    def key_loc(self, *paths: tuple[str | int, ...]) -> Location | None:
        """Where the first of these keys is written (a node's name when nothing deeper is)."""
        for path in paths:
            if path in self.srcmap.keys:
                return self.srcmap.keys[path]
        return self.srcmap.at(paths[-1])

    def add(self, code: str, message: str, loc: Location | None, path: str, hint: str = "",
            severity: str = "error") -> None:
        self.issues.add(code, message, loc, path=path, hint=hint, severity=severity)  # type: ignore[arg-type]


def _template(instance: str) -> str:
    match = _REPLICA_RE.match(instance)
    return match["base"] if match else instance


def _choices(word: str, options: Any, what: str) -> str:
    names = sorted(options)
    if near := did_you_mean(word, names):
        return near
    return f"{what} are {', '.join(repr(n) for n in names)}" if names else f"there are no {what}"
