"""A located YAML document checked against a pydantic model: each error an issue at its
file:line:col, unknown keys with a did-you-mean, the good keys kept when some are bad."""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ValidationError

from ..errors import IssueList, closest, got
from .schema import RENAMED
from .source import Path_, SourceMap, _dotted, _is_union_tag, _suggest

__all__ = ["validate_section"]

def validate_section(model: type[BaseModel], raw: Any, base: Path_, srcmap: SourceMap,
                     issues: IssueList) -> tuple[Any, frozenset[str]]:
    """Validate a part of a located YAML document (``raw`` at ``base``) against a pydantic
    model the way graph files are: every error an issue at its file:line:col, unknown keys
    with a did-you-mean, and the good keys kept when some are bad. Returns the model (None
    when nothing usable is left) and the keys that failed. Other YAML files dmnflow reads
    (tune files) are checked with it."""
    return _validate_partial(model, raw, base, srcmap, issues, set())


def _validate_partial(model: type[BaseModel], raw: Any, base: Path_, srcmap: SourceMap,
                      issues: IssueList, unresolved: set[Path_]) -> tuple[Any, frozenset[str]]:
    """Validate ``raw``; if some keys are wrong, report them and keep the rest, so they are
    checked too. Returns the model (None if nothing usable is left) and the bad keys."""
    try:
        return model.model_validate(raw), frozenset()
    except ValidationError as exc:
        if srcmap.as_typed(raw, base, exc.errors()):  # `--set defaults.host=::`: text, as typed
            return _validate_partial(model, raw, base, srcmap, issues, unresolved)
        bad = _report(model, exc, base, srcmap, issues, unresolved)
    required = {f.alias or n for n, f in model.model_fields.items() if f.is_required()}
    if not isinstance(raw, dict) or "" in bad or bad & required:
        return None, frozenset(bad)
    try:
        return model.model_validate({k: v for k, v in raw.items() if k not in bad}), frozenset(bad)
    except ValidationError:
        return None, frozenset(bad)


def _report(model: type[BaseModel], exc: ValidationError, base: Path_, srcmap: SourceMap,
            issues: IssueList, unresolved: set[Path_]) -> set[str]:
    """Turn pydantic's errors into issues; returns the top-level keys that had errors."""
    bad: set[str] = set()
    errors = exc.errors()
    unknown: dict[Path_, list[str]] = {}
    for err in errors:
        if err["type"] == "extra_forbidden":
            loc = tuple(p for p in err["loc"] if not _is_union_tag(p))
            unknown.setdefault(loc[:-1], []).append(str(loc[-1]))
    for err in errors:
        rel = tuple(p for p in err["loc"] if not _is_union_tag(p))
        bad.add(str(rel[0]) if rel else "")
        loc_path = base + rel
        if any(loc_path[: len(u)] == u for u in unresolved):
            continue  # a failed ${...} was reported where it was written
        if err["type"] == "missing" and closest(str(rel[-1]), unknown.get(rel[:-1], [])):
            continue  # `use:` for `uses:`: the unknown key's "did you mean" says it all
        _pydantic_issue(model, err, loc_path, base, srcmap, issues)
    return bad


def _pydantic_issue(model: type[BaseModel], err: Any, path: Path_, base: Path_,
                    srcmap: SourceMap, issues: IssueList) -> None:
    kind = err["type"]
    dotted = _dotted(path)
    if kind == "extra_forbidden":
        key = str(path[-1])
        parent = _model_at(model, path[len(base):-1])
        renamed = RENAMED.get((parent, key)) if parent is not None else None
        if renamed is not None:
            new, where, why = renamed
            issues.add("renamed-key", f"key {key!r} was renamed to {new!r}", srcmap.at(path, key=True),
                       path=dotted, hint=f"`{key}:` under {where} is now `{new}:` (one word per concept: {why})")
            return
        known = [f.alias or n for n, f in parent.model_fields.items()] if parent is not None else []
        issues.add("unknown-key", f"unknown key {key!r}", srcmap.at(path, key=True), path=dotted,
                   hint=_suggest(key, known) if known else "")
        return
    if kind == "missing":
        parent = path[:-1]
        issues.add("missing-key", f"missing required key {str(path[-1])!r}",
                   srcmap.keys.get(parent) or srcmap.at(parent), path=_dotted(parent),
                   hint=f"add `{path[-1]}:`")
        return
    message = err["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, "):]
    message = message[:1].lower() + message[1:]
    if kind not in ("value_error", "assertion_error") and "input" in err and not isinstance(err["input"], dict):
        message += got(err["input"])
    issues.add("invalid-value", message, srcmap.at(path), path=dotted)


def _model_at(model: type[BaseModel], rel: Path_) -> type[BaseModel] | None:
    """The model a mapping at ``rel`` (relative to ``model``) is read as: its keys feed the
    did-you-mean hints, and it with the key finds a renamed one."""
    current: Any = model
    for part in rel:
        if isinstance(current, _MapOf):  # a mapping of names: the part is a name, not a key
            current = current.model
            continue
        if not _is_model(current):
            return None
        info = next((f for n, f in current.model_fields.items() if (f.alias or n) == part), None)
        if info is None:
            return None
        current = _unwrap(info.annotation)
    return current if _is_model(current) else None


@dataclass(frozen=True)
class _MapOf:
    model: Any


def _unwrap(annotation: Any) -> Any:
    """The model inside ``X | None`` or ``Annotated[X, ...]``; ``_MapOf(X)`` for ``dict[str, X]``."""
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _unwrap(args[0])
    if origin is dict:
        return _MapOf(_unwrap(args[1]))
    if args:
        models = [a for a in (_unwrap(a) for a in args) if _is_model(a)]
        return models[0] if models else annotation
    return annotation


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)
