"""Changes to a graph file before it is validated: ``--set KEY=VALUE``, an include's
``vars:`` and ``set:``, overlay files (``--overlay``), and the chosen profile's overlay."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..errors import Issue, IssueList, Location
from .source import _TOO_LONG_HINT, Path_, SourceMap, _display, _suggest, _TextDates, _too_long, parse_yaml

__all__ = ["Override", "load_overlay"]

@dataclass(frozen=True)
class Override:
    """One ``path=value`` setting, from ``--set`` or an include's ``set:``."""

    path: tuple[str, ...]
    value: Any
    loc: Location
    text: str
    written: str | None = None  # VALUE as typed, where YAML read it as something else (``::`` is a mapping)

    @classmethod
    def parse(cls, text: str, issues: IssueList) -> Override | None:
        loc = Location(f"--set {text}")
        key, sep, raw = text.partition("=")
        segments = tuple(s.strip() for s in key.split("."))
        if not sep or not key.strip() or not all(segments):
            issues.add("bad-override", f"{text!r} is not KEY=VALUE with a dotted KEY", loc,
                       hint="e.g. --set nodes.counter.params.count=10 or --set vars.count=10")
            return None
        try:
            value = yaml.load(raw, Loader=_TextDates) if raw.strip() else ""  # noqa: S506 - a SafeLoader
        except yaml.YAMLError:
            value = raw
        except ValueError as exc:  # an integer longer than Python reads
            issues.add("invalid-value", _too_long(exc), loc, path=key.strip(), hint=_TOO_LONG_HINT)
            return None
        return cls(segments, value, loc, text, None if isinstance(value, str) else raw.strip())


def load_overlay(path: str | os.PathLike[str]) -> tuple[list[Override], list[Issue]]:
    """An overlay file's settings, in file order: a YAML mapping of dotted keys to values,
    each applied exactly like ``--set KEY=VALUE`` and located where it is written (so a
    mistake is reported in the overlay file, not in the graph). ``dmnflow tune`` writes its
    best trial as one; ``dmnflow launch g.yaml --overlay FILE`` applies it."""
    issues = IssueList()
    file = _display(Path(path))
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        issues.add("file-not-found", f"overlay file {file} does not exist", Location(file),
                   hint="check the path (dmnflow tune writes best.yaml in its output directory)")
        return [], issues.issues
    except (OSError, UnicodeDecodeError) as exc:
        issues.add("file-unreadable", f"cannot read {file}: {exc}", Location(file),
                   hint="an overlay file is UTF-8 YAML text")
        return [], issues.issues
    data, srcmap = parse_yaml(text, file, issues)
    if data is None:
        return [], issues.issues
    if not isinstance(data, dict):
        issues.add("invalid-value", "an overlay file is a mapping of dotted keys to values "
                   "(e.g. `nodes.risk.params.target_vol: 0.1`)", srcmap.at(()))
        return [], issues.issues
    out = []
    for key, value in data.items():
        segments = tuple(s.strip() for s in str(key).split("."))
        loc = srcmap.at((key,), key=True) or Location(file)
        if not all(segments):
            issues.add("bad-override", f"{key!r} is not a dotted key", loc, path=str(key),
                       hint="write it as the KEY of --set KEY=VALUE, e.g. nodes.lstm.params.hidden")
            continue
        out.append(Override(segments, value, loc, f"{key}={value!r}"))
    return out, issues.issues


def _apply_override(data: dict[str, Any], srcmap: SourceMap, ov: Override, issues: IssueList) -> None:
    """Set one dotted path; routes ``nodes.<inc>/<node>...`` into include ``<inc>``'s set.

    An override may only set what exists: a variable the file declares (a misspelt one would
    otherwise be a new variable nothing reads), a node of the file (keys below it are checked
    by the schema and the node's class). Keys it creates are located at the override, so
    their errors point there and not into the graph file.
    """
    path = ov.path
    if path[0] == "profiles":  # applied before overrides: setting one changes nothing
        issues.add("bad-override", "a profile is applied before --set overrides, so setting it changes nothing",
                   ov.loc, path=".".join(path),
                   hint="set the value itself, or choose the profile with --profile")
        return
    if path[0] == "vars" and len(path) >= 2 and not _var_exists(data, srcmap, ov, issues):
        return
    if path[0] == "nodes" and len(path) >= 2:
        name = path[1]
        nodes = data.get("nodes") if isinstance(data.get("nodes"), dict) else {}
        if "/" in name and name not in nodes:
            inc, rest = name.split("/", 1)
            includes = data.get("include") if isinstance(data.get("include"), dict) else {}
            if inc not in includes:
                issues.add("bad-override", f"no include {inc!r} for node {name!r}", ov.loc,
                           path=".".join(path), hint=_suggest(inc, includes))
                return
            entry = includes[inc]
            if isinstance(entry, str):
                entry = includes[inc] = {"path": entry}
            inner = ".".join(("nodes", rest) + path[2:])
            if isinstance(entry, dict):
                entry.setdefault("set", {})[inner] = ov.value
            srcmap.mark(("include", inc, "set", inner), ov.loc)  # each setting keeps its own location
            return
        if name not in nodes:
            issues.add("bad-override", f"no node {name!r} to set {'.'.join(path)} on", ov.loc,
                       path=".".join(path), hint=_suggest(name, nodes))
            return
    target: Any = data
    for depth, seg in enumerate(path[:-1]):
        nxt = target.get(seg) if isinstance(target, dict) else None
        if nxt is None:
            nxt = target[seg] = {}
            srcmap.values[path[: depth + 1]] = srcmap.keys[path[: depth + 1]] = ov.loc  # made by the override
        if not isinstance(nxt, dict):
            issues.add("bad-override", f"{'.'.join(path[: depth + 1])} is not a mapping, "
                       f"so {'.'.join(path)} cannot be set", ov.loc, path=".".join(path))
            return
        target = nxt
    target[path[-1]] = ov.value
    srcmap.mark(path, ov.loc)
    srcmap.keys[path] = ov.loc
    if ov.written is not None:  # where the schema wants text, the value is taken as typed
        srcmap.texts[path] = ov.written


def _var_exists(data: dict[str, Any], srcmap: SourceMap, ov: Override, issues: IssueList) -> bool:
    """Whether ``vars.a.b...`` names a declared variable (or a key of a mapping one); reports it if not."""
    current: Any = data.get("vars")
    where = srcmap.at(()) or ov.loc
    for depth, seg in enumerate(ov.path[1:], start=1):
        if isinstance(current, dict) and seg in current:
            current = current[seg]
            continue
        owner = "vars" if depth == 1 else ".".join(ov.path[:depth])
        options = current if isinstance(current, dict) else {}
        what = f"{where.file} has no variable {seg!r}" if depth == 1 else f"{owner} has no {seg!r}"
        hint = _suggest(seg, options) if options else (
            "the file declares no vars" if depth == 1 else f"{owner} is not a mapping")
        issues.add("bad-override", f"{what} to set", ov.loc, path=".".join(ov.path[: depth + 1]), hint=hint)
        return False
    return True


def _merge(base: dict[str, Any], overlay: dict[str, Any], srcmap: SourceMap, src: Path_,
           dst: Path_) -> None:
    """Deep-merge a profile overlay: mappings merge, anything else replaces."""
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value, srcmap, src + (key,), dst + (key,))
        else:
            base[key] = value
            srcmap.mark(dst + (key,), srcmap.at(src + (key,)) or Location(""))
            srcmap.graft(srcmap, src + (key,), dst + (key,))
