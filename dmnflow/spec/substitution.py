"""``${vars.a.b}``, ``${env:NAME}`` and ``${env:NAME:-default}`` in a graph file's values."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping
from typing import Any

import yaml

from ..errors import IssueList, Location
from .source import Path_, SourceMap, _dotted, _suggest

_SUBST_RE = re.compile(r"\$(\$?)\{([^}]*)\}")
_ENV_RE = re.compile(r"^env:([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?$", re.S)


_FAILED = object()


class _Substituter:
    """Resolves ``${vars.a.b}``, ``${env:NAME}`` and ``${env:NAME:-default}``; ``$${`` escapes.

    A whole-value reference keeps the variable's type (a list stays a list); inside text
    it is formatted in. Variables may refer to other variables; loops are reported.
    """

    def __init__(self, raw_vars: dict[str, Any], srcmap: SourceMap, issues: IssueList,
                 env: Mapping[str, str], unresolved: set[Path_]) -> None:
        self.raw = raw_vars
        self.done: dict[str, Any] = {}
        self.stack: list[str] = []
        self.srcmap = srcmap
        self.issues = issues
        self.env = env
        self.unresolved = unresolved  # paths whose ${...} failed; reported once, where written

    def var(self, name: str, loc: Location | None, path: Path_) -> Any:
        """The variable's value with its own references resolved, or ``_FAILED``."""
        if name in self.done:
            return self.done[name]
        if name in self.stack:
            cycle = " -> ".join(self.stack[self.stack.index(name):] + [name])
            self.issues.add("var-cycle", f"variables refer to each other in a loop: {cycle}", loc,
                            path=_dotted(path), hint="give one of them a plain value")
            return _FAILED
        self.stack.append(name)
        value = self.value(self.raw[name], ("vars", name))
        self.stack.pop()
        if any(p[:2] == ("vars", name) for p in self.unresolved):
            value = _FAILED
        self.done[name] = value
        return value

    def lookup(self, expr: str, loc: Location | None, path: Path_) -> tuple[bool, Any]:
        env = _ENV_RE.match(expr)
        if env:
            name, default = env[1], env[2]
            if name in self.env:
                return True, self.env[name]
            if default is not None:
                return True, default
            self.issues.add("unset-env", f"environment variable {name} is not set", loc,
                            path=_dotted(path),
                            hint=f"export {name}=..., or give a default: ${{env:{name}:-value}}")
            return False, None
        parts = expr.strip().split(".")
        if parts[0] != "vars" or len(parts) < 2 or not all(parts):
            self.issues.add("bad-substitution", f"${{{expr}}} is not ${{vars.NAME}} or ${{env:NAME}}",
                            loc, path=_dotted(path), hint="write ${vars.NAME} or ${env:NAME:-default}")
            return False, None
        if parts[1] not in self.raw:
            self.issues.add("unknown-var", f"no variable {parts[1]!r} in vars", loc,
                            path=_dotted(path), hint=_suggest(parts[1], self.raw))
            return False, None
        value = self.var(parts[1], loc, path)
        if value is _FAILED:
            return False, None  # reported where the variable is defined
        for i, part in enumerate(parts[2:], start=2):
            if isinstance(value, dict) and part in value:
                value = value[part]
            elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
                value = value[int(part)]
            else:
                self.issues.add("unknown-var", f"vars.{'.'.join(parts[1:i])} has no {part!r}", loc,
                                path=_dotted(path))
                return False, None
        return True, value

    def value(self, data: Any, path: Path_) -> Any:
        if isinstance(data, dict):
            return {k: self.value(v, path + (k,)) for k, v in data.items()}
        if isinstance(data, list):
            return [self.value(v, path + (i,)) for i, v in enumerate(data)]
        if not isinstance(data, str) or "${" not in data:
            return data
        loc = self.srcmap.at(path)
        whole = _SUBST_RE.fullmatch(data)
        if whole and not whole[1]:
            ok, value = self.lookup(whole[2], loc, path)
            if ok and whole[2].startswith("env:") and isinstance(value, str):
                with contextlib.suppress(yaml.YAMLError, ValueError):  # RATE=1000 reads as a number (not 5000 digits)
                    value = yaml.safe_load(value) if value.strip() else value
            if not ok:
                self.unresolved.add(path)
            return value if ok else data

        def repl(match: re.Match[str]) -> str:
            if match[1]:
                return "${" + match[2] + "}"
            ok, value = self.lookup(match[2], loc, path)
            if not ok:
                self.unresolved.add(path)
            return str(value) if ok else match[0]

        return _SUBST_RE.sub(repl, data)
