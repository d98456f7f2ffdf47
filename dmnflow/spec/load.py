"""Loading a graph file with its includes, with every value's file:line:col.

Loading goes, per file: parse YAML (keeping locations) -> overlay the chosen profile ->
apply ``--set`` overrides -> substitute ``${vars.x}`` / ``${env:NAME:-default}`` ->
validate against the schema -> load ``include:``s, each in its own scope, and put their
nodes under ``<include-name>/``. Problems are collected, never raised one at a time,
so one run of ``dmnflow validate`` shows them all.

Replicas are expanded by the compiler, not here: a YAML node stays one entry, so its
mistakes are reported once.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import Issue, IssueList, Location, closest, did_you_mean
from .overrides import Override, _apply_override, _merge
from .schema import Defaults, DrainSpec, GraphSpec, NodeSpec, SecuritySpec
from .source import Path_, SourceMap, _display, _dotted, _suggest, parse_yaml
from .substitution import _FAILED, _Substituter
from .validation import _validate_partial

__all__ = ["LoadedGraph", "NodeEntry", "graph_name", "load_graph"]

NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


@dataclass
class NodeEntry:
    """One YAML node after includes are resolved, with the defaults of its own file."""

    name: str
    spec: NodeSpec
    defaults: Defaults
    base_dir: Path  # relative paths in this node (model files) start here
    invalid: frozenset[str] = frozenset()  # keys dropped for schema errors: checks skip them
    # keys ``resolve_node`` filled in (``"inputs.ticks.policy"``) -> where from (``"defaults.policy"``)
    filled: Mapping[str, str] = field(default_factory=dict)

    @property
    def path(self) -> Path_:
        return ("nodes", self.name)


@dataclass
class LoadedGraph:
    """A graph file and its includes, validated against the schema, with locations."""

    name: str
    file: str
    profile: str | None
    nodes: dict[str, NodeEntry]
    broken: set[str]  # failed nodes, and "name/" of failed includes: not re-reported when referenced
    srcmap: SourceMap
    issues: list[Issue]
    unresolved: set[str] = field(default_factory=set)  # dotted paths of failed ${...}
    security: SecuritySpec = field(default_factory=lambda: SecuritySpec())  # the top file's; includes' are ignored
    base_dir: Path = field(default_factory=Path)  # the top file's directory: relative paths start here
    drain: DrainSpec = field(default_factory=lambda: DrainSpec())  # the top file's defaults.drain

    def is_broken(self, node: str) -> bool:
        """Whether ``node`` failed to load (or lies in an include that did)."""
        return node in self.broken or any(node.startswith(b) for b in self.broken if b.endswith("/"))


def load_graph(path: str | os.PathLike[str], overrides: Sequence[str | Override] = (), *,
               profile: str | None = None, env: Mapping[str, str] | None = None) -> LoadedGraph:
    """Read a graph file with its includes; problems are collected in ``issues``.

    ``overrides`` are ``--set`` texts (``KEY=VALUE``) or ``Override``s already read, with
    their own locations (an overlay file's, from ``load_overlay``)."""
    issues = IssueList()
    parsed = [o for o in (o if isinstance(o, Override) else Override.parse(o, issues) for o in overrides)
              if o is not None]
    file = Path(path)
    graph = _load_file(file, parsed, profile, os.environ if env is None else env, issues, [])
    if graph is None:
        graph = LoadedGraph(file.stem, _display(file), profile, {}, set(), SourceMap(), [])
    elif not graph.nodes and not graph.broken and not issues.has_errors:
        issues.add("empty-graph", "the graph has no nodes", graph.srcmap.at(("nodes",)) or Location(graph.file),
                   path="nodes", hint="add nodes under 'nodes:', or include a graph file that has some")
    graph.issues = issues.issues
    return graph


def graph_name(path: str | os.PathLike[str]) -> str:
    """The graph's name as its file writes it (``graph:``, else the file's stem), read without
    loading anything: what a launch is listed as in ``dmnflow runs`` while it compiles (the
    compiled plan's name, which a ``--set`` or a profile may change, replaces it)."""
    file = Path(path)
    try:
        data = parse_yaml(file.read_text(encoding="utf-8"), _display(file), IssueList())[0]
    except (OSError, UnicodeDecodeError):
        data = None
    name = data.get("graph") if isinstance(data, dict) else None
    return name if isinstance(name, str) and NAME_RE.match(name) else file.stem


def _load_file(path: Path, overrides: Sequence[Override], profile: str | None,
               env: Mapping[str, str], issues: IssueList, stack: list[Path],
               include_loc: Location | None = None, include_key: str = "") -> LoadedGraph | None:
    """One file and, recursively, its includes; None when the file itself could not be read."""
    file = _display(path)
    where = include_loc or Location(file)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        near = _near_file(path)
        if include_loc is None:
            hint = near or "check the path (relative to the working directory)"
        else:
            hint = (f"{near} " if near else "") + "relative include paths start at the including file"
        issues.add("file-not-found", f"graph file {file} does not exist", where, path=include_key, hint=hint)
        return None
    except (OSError, UnicodeDecodeError) as exc:
        issues.add("file-unreadable", f"cannot read {file}: {exc}", where, path=include_key,
                   hint="a graph file is UTF-8 YAML text")
        return None

    unresolved: set[Path_] = set()
    data, srcmap = parse_yaml(text, file, issues, unresolved)
    if data is None:
        if not issues.has_errors:
            issues.add("empty-graph", "the graph file is empty", Location(file, 1, 1),
                       hint="start from graphs/quickstart.yaml")
        return None
    if not isinstance(data, dict):
        issues.add("invalid-value", "a graph file is a mapping with 'nodes:' at the top",
                   srcmap.at(()), hint="start from graphs/quickstart.yaml")
        return None

    # 1. profile overlay: file < profile < --set
    profiles = data.get("profiles")
    if profile is not None:
        if isinstance(profiles, dict) and isinstance(profiles.get(profile), dict):
            overlay = profiles[profile]
            data_wo = {k: v for k, v in data.items() if k != "profiles"}
            _merge(data_wo, overlay, srcmap, ("profiles", profile), ())
            data = {**data_wo, "profiles": profiles}
        elif not stack:  # included files need not define every profile
            names = profiles if isinstance(profiles, dict) else {}
            issues.add("unknown-profile", f"no profile {profile!r} in {file}",
                       srcmap.at(("profiles",), key=True) or Location(file), path="profiles",
                       hint=_suggest(profile, names) or "define it under profiles:")

    # 2. --set / include set:
    for ov in overrides:
        _apply_override(data, srcmap, ov, issues)

    # 3. ${...}; a misspelt `vars:` (reported by the schema) still serves, so its uses are not errors too
    raw_vars = data.get("vars", _misspelt(data, "vars"))
    subst = _Substituter(raw_vars if isinstance(raw_vars, dict) else {}, srcmap, issues, env, unresolved)
    data = {k: (v if k in ("vars", "profiles") else subst.value(v, (k,))) for k, v in data.items()}
    if isinstance(data.get("vars"), dict):
        resolved = {name: subst.var(name, srcmap.at(("vars", name)), ("vars", name)) for name in data["vars"]}
        data["vars"] = {name: (None if v is _FAILED else v) for name, v in resolved.items()}

    # 4. schema: the top level and each node on its own, so one bad key hides nothing else
    raw_nodes = data.pop("nodes", None)
    spec, bad_top = _validate_partial(GraphSpec, data, (), srcmap, issues, unresolved)
    spec = spec or GraphSpec()
    graph = LoadedGraph(spec.graph or path.stem, file, profile, {}, set(), srcmap, [],
                        {_dotted(p) for p in unresolved}, spec.security, path.parent, spec.defaults.drain)
    if "include" in bad_top and isinstance(data.get("include"), dict):
        graph.broken.update(f"{name}/" for name in data["include"])
    if raw_nodes is not None and not isinstance(raw_nodes, dict):
        issues.add("invalid-value", "'nodes' must be a mapping of node name to node",
                   srcmap.at(("nodes",)), path="nodes")
        raw_nodes = None
    for name, raw in (raw_nodes or {}).items():
        if not NAME_RE.match(name):
            issues.add("bad-name", f"node name {name!r} may hold only letters, digits, '_' and '-' "
                       "and must not start with a digit", srcmap.at(("nodes", name), key=True),
                       path=f"nodes.{name}", hint="rename the node")
            graph.broken.add(name)
            continue
        node, bad_keys = _validate_partial(NodeSpec, raw, ("nodes", name), srcmap, issues, unresolved)
        if node is None:
            graph.broken.add(name)
        else:
            graph.nodes[name] = NodeEntry(name, node, spec.defaults, path.parent, bad_keys)

    # 5. includes, each in its own scope
    for inc_name, inc in spec.include.items():
        key = f"include.{inc_name}"
        inc_loc = srcmap.at(("include", inc_name))
        graph.broken.add(f"{inc_name}/")  # until it loads
        if not NAME_RE.match(inc_name):
            issues.add("bad-name", f"include name {inc_name!r} may hold only letters, digits, '_' and '-'",
                       srcmap.at(("include", inc_name), key=True), path=key, hint="rename the include")
            continue
        child_path = (path.parent / inc.path).resolve()
        if child_path in stack or child_path == path.resolve():
            chain = " -> ".join(_display(p) for p in [*stack, path.resolve(), child_path])
            issues.add("include-cycle", f"graph files include each other: {chain}", inc_loc,
                       path=key, hint="remove one of the includes")
            continue
        set_loc = srcmap.at(("include", inc_name, "set"))
        child_ovs = [Override(("vars", k), v, srcmap.at(("include", inc_name, "vars", k)) or Location(file),
                              f"vars.{k}") for k, v in inc.vars.items()]
        child_ovs += [Override(tuple(str(k).split(".")), v, srcmap.at(("include", inc_name, "set", k)) or
                               set_loc or Location(file), f"{k}={v}") for k, v in inc.set.items()]
        child = _load_file(child_path, child_ovs, profile, env, issues, [*stack, path.resolve()],
                           inc_loc, key)
        if child is None:
            continue
        graph.broken.discard(f"{inc_name}/")
        for name, entry in child.nodes.items():
            scoped = f"{inc_name}/{name}"
            graph.srcmap.graft(child.srcmap, ("nodes", name), ("nodes", scoped))
            graph.nodes[scoped] = NodeEntry(scoped, _scope(entry.spec, inc_name), entry.defaults,
                                            entry.base_dir, entry.invalid)
        graph.broken.update(f"{inc_name}/{name}" for name in child.broken)
        graph.unresolved.update(_rescope(p, inc_name) for p in child.unresolved)
    return graph


def _near_file(path: Path) -> str:
    """``did you mean graphs/x.yaml?`` for the graph file next to ``path`` whose name is closest
    to it (a typo), as a person types it, or ``""``. Stems are compared: every name ends in
    ``.yaml``, which would make any two look alike."""
    try:
        names = {p.stem: p.name for p in path.parent.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file()}
    except OSError:
        return ""
    return did_you_mean(path.stem, names, lambda stem: _display(path.parent / names[stem]))


def _misspelt(data: dict[str, Any], key: str) -> Any:
    """The value of a top-level key that looks like a typo of ``key`` (``var:`` for ``vars:``)."""
    near = closest(key, [k for k in data if k not in GraphSpec.model_fields])
    return data[near] if near else None


def _scope(spec: NodeSpec, prefix: str) -> NodeSpec:
    """The node with its references put under ``prefix/``; ``/name.port`` stays at the root."""
    inputs = {
        port: inp.model_copy(update={"from_": [r if r.startswith("/") else f"{prefix}/{r}" for r in inp.from_]})
        for port, inp in spec.inputs.items()
    }
    group = f"{prefix}/{spec.group}" if spec.group else None
    budget = spec.budget
    if budget is not None and not budget.from_.startswith("/"):
        budget = budget.model_copy(update={"from_": f"{prefix}/{budget.from_}"})
    return spec.model_copy(update={"inputs": inputs, "group": group, "budget": budget})


def _rescope(dotted: str, prefix: str) -> str:
    return f"nodes.{prefix}/{dotted[len('nodes.'):]}" if dotted.startswith("nodes.") else dotted
