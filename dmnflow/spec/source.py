"""YAML with locations: plain data plus a SourceMap of where each value and key was written."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import IssueList, Location, did_you_mean

__all__ = ["Path_", "SourceMap", "parse_yaml"]

Path_ = tuple[str | int, ...]


@dataclass
class SourceMap:
    """Where each value (and each mapping key) of a loaded document was written."""

    values: dict[Path_, Location] = field(default_factory=dict)
    keys: dict[Path_, Location] = field(default_factory=dict)
    # a `--set` VALUE as typed where YAML read it as something else: ``host=::`` is a mapping to
    # YAML and a host to a person; a field that wants text takes it as typed
    texts: dict[Path_, str] = field(default_factory=dict)

    def at(self, path: Path_, *, key: bool = False) -> Location | None:
        """The location of ``path``, or of its nearest written ancestor."""
        if key and path in self.keys:
            return self.keys[path]
        for end in range(len(path), -1, -1):
            loc = self.values.get(path[:end])
            if loc is not None:
                return loc
        return None

    def graft(self, other: SourceMap, src: Path_, dst: Path_) -> None:
        """Copy ``other``'s locations under ``src`` to this map under ``dst``."""
        n = len(src)
        for table, into in ((other.values, self.values), (other.keys, self.keys)):
            for path, loc in list(table.items()):
                if path[:n] == src:
                    into[dst + path[n:]] = loc

    def mark(self, path: Path_, loc: Location) -> None:
        """Attribute ``path`` and everything under it to ``loc`` (a ``--set`` argument)."""
        n = len(path)
        for table in (self.values, self.keys, self.texts):
            for p in [p for p in table if p[:n] == path]:
                del table[p]
        self.values[path] = loc

    def as_typed(self, raw: Any, base: Path_, errors: list[Any]) -> bool:
        """Put back, as typed, each ``--set`` value under ``base`` that failed only for not being
        text (pydantic's ``string_type`` at its path); True when one was, so validate again."""
        changed = False
        for err in errors:
            rel = tuple(p for p in err["loc"] if not _is_union_tag(p))
            text = self.texts.get(base + rel)
            if err["type"] != "string_type" or text is None or not rel:
                continue
            target = raw
            for part in rel[:-1]:
                target = target[part] if isinstance(target, dict | list) else None
            if isinstance(target, dict) and target.get(rel[-1]) != text:
                target[rel[-1]] = text
                changed = True
        return changed


def _loc(file: str, mark: yaml.Mark) -> Location:
    return Location(file, mark.line + 1, mark.column + 1)


class _TextDates(yaml.SafeLoader):
    """YAML as graph files read it: a date is the text written (`2016-01-01`), not a datetime."""


_TextDates.yaml_implicit_resolvers = {
    first: [(tag, regex) for tag, regex in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}


def parse_yaml(text: str, file: str, issues: IssueList,
               failed: set[Path_] | None = None) -> tuple[Any, SourceMap]:
    """Parse YAML text into plain data plus a SourceMap; syntax errors become issues.

    Mapping keys are taken as written (``on:`` is the name "on", not YAML 1.1's True), and
    so are dates (``start: 2016-01-01`` is the text "2016-01-01", not a ``datetime.date``).
    Paths of values that could not be read are added to ``failed``, so later checks
    do not report them again.
    """
    srcmap = SourceMap()
    loader = _TextDates(text)
    try:
        root = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        loc = _loc(file, mark) if mark else Location(file)
        problem = exc.problem or "invalid YAML"
        context = f" ({exc.context})" if exc.context else ""
        issues.add("yaml-syntax", f"{problem}{context}", loc,
                   hint="check indentation, quotes and ':' on this line and the one above")
        return None, srcmap
    except yaml.YAMLError as exc:
        issues.add("yaml-syntax", str(exc).splitlines()[0], Location(file))
        return None, srcmap
    finally:
        loader.dispose()
    if root is None:
        return None, srcmap

    budget = [_MAX_VALUES]
    ancestors: set[int] = set()

    def _key(key_node: yaml.Node) -> str:
        if isinstance(key_node, yaml.ScalarNode):
            return str(key_node.value)
        return str(loader.construct_object(key_node, deep=True))

    def build(node: yaml.Node, path: Path_) -> Any:
        budget[0] -= 1
        if budget[0] < 0:
            raise _TooLarge(node)
        srcmap.values[path] = _loc(file, node.start_mark)
        if isinstance(node, yaml.MappingNode | yaml.SequenceNode):
            if id(node) in ancestors:
                raise _SelfReference(node)
            ancestors.add(id(node))
            try:
                return build_collection(node, path)
            finally:
                ancestors.discard(id(node))
        try:
            return loader.construct_object(node, deep=True)
        except yaml.constructor.ConstructorError as exc:
            issues.add("yaml-syntax", exc.problem or "cannot read this value", _loc(file, node.start_mark),
                       hint="graph files are plain YAML: no !!python tags")
            if failed is not None:
                failed.add(path)
            return None
        except ValueError as exc:  # an integer longer than Python reads (sys.get_int_max_str_digits)
            issues.add("invalid-value", _too_long(exc), _loc(file, node.start_mark), path=_dotted(path),
                       hint=_TOO_LONG_HINT)
            if failed is not None:
                failed.add(path)
            return None

    def build_collection(node: yaml.Node, path: Path_) -> Any:
        if isinstance(node, yaml.MappingNode):
            written: set[str] = set()
            for key_node, _ in node.value:  # duplicates among the keys written here, not merged ones
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = _key(key_node)
                if key in written:
                    issues.add("duplicate-key", f"key {key!r} appears twice in this mapping; "
                               "YAML would silently keep only the last",
                               _loc(file, key_node.start_mark), path=_dotted(path + (key,)),
                               hint="remove or rename one of them")
                written.add(key)
            loader.flatten_mapping(node)  # `<<: *anchor` keys first, so written keys win
            out: dict[str, Any] = {}
            for key_node, value_node in node.value:
                key = _key(key_node)
                srcmap.keys[path + (key,)] = _loc(file, key_node.start_mark)
                out[key] = build(value_node, path + (key,))
            return out
        return [build(item, path + (i,)) for i, item in enumerate(node.value)]

    try:
        return build(root, ()), srcmap
    except _SelfReference as exc:
        issues.add("yaml-syntax", "an alias refers to the anchor it is inside of (a value that contains "
                   "itself)", _loc(file, exc.args[0].start_mark), hint="copy the values instead of the alias")
    except _TooLarge as exc:
        issues.add("yaml-syntax", f"the file expands to more than {_MAX_VALUES:,} values (aliases "
                   "repeating aliases?)", _loc(file, exc.args[0].start_mark),
                   hint="a graph file this large is a mistake or an attack; use fewer aliases")
    except yaml.YAMLError as exc:
        issues.add("yaml-syntax", str(exc).splitlines()[0], Location(file))
    return None, srcmap


_MAX_VALUES = 200_000  # a large real graph has a few thousand


class _SelfReference(Exception):
    """A YAML alias inside its own anchor: the value would contain itself."""


class _TooLarge(Exception):
    """The document expands (through aliases) past ``_MAX_VALUES`` values."""


_TOO_LONG_HINT = "write a shorter number, or quote it to keep it as text"


def _too_long(exc: ValueError) -> str:
    """What YAML's integer reading refused, said as a graph author reads it."""
    digits = re.search(r"value has (\d+) digits", str(exc))
    return (f"an integer of {digits[1]} digits is longer than the {sys.get_int_max_str_digits()} digits a number "
            "may have" if digits else f"cannot read this number: {exc}")


def _is_union_tag(part: Any) -> bool:
    """pydantic names union members and validators in error paths; they are not YAML keys."""
    return isinstance(part, str) and ("[" in part or part in {"str", "list[str]", "int", "float"})


def _dotted(path: Path_) -> str:
    return ".".join(f"[{p}]" if isinstance(p, int) else p for p in path).replace(".[", "[")


def _suggest(word: str, options: Iterator[str] | Sequence[str] | Mapping[str, Any]) -> str:
    """``did you mean 'x'?`` for the closest option, or the list of options when few."""
    choices = sorted(str(o) for o in options)
    if near := did_you_mean(word, choices):
        return near
    if not choices:
        return ""
    shown = ", ".join(repr(c) for c in choices[:12])
    return f"expected one of {shown}{' ...' if len(choices) > 12 else ''}"


def _display(path: Path) -> str:
    """The path as a person would type it: relative to the working directory when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
