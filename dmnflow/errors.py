"""The one exception tree of dmnflow, and the located validation issues it carries.

    DmnflowError                 anything dmnflow raises on purpose
    ├── GraphError               the graph file is wrong; found before any process starts
    │   ├── SpecError            the YAML itself: syntax, schema, substitution, includes
    │   └── CompileError         what the compiler finds: imports, params, ports, types, pins
    ├── CodecError               a payload could not be encoded or decoded
    │   ├── EncodeError
    │   └── DecodeError
    ├── TransportError           a socket could not do what the plan asked
    │   └── SendTimeout
    ├── NodeError                user code in a node raised
    ├── ConfigError              a node cannot run where it is: a key unset, a package missing
    │   ├── ImportPathError      (importing) a ``module:Name`` that does not load
    │   └── KeyError_            (transport.security) a CURVE key file that cannot be used; also a ValueError
    ├── LaunchError              the runtime could not start or keep the graph running
    │   ├── PlacementError       (runtime.backends) the backend cannot run the plan as written; exit 1
    │   │   └── PortInUse        a fixed tcp port of the graph is taken
    │   ├── HostError            (runtime.backends.ray_host) what a Ray host lacks for its process
    │   ├── SocketPathError      (runtime.files) the run directory is too deep for its unix sockets; exit 1
    │   └── ObserveError         (observe.session) an observing option cannot be served; exit 1
    ├── ControlError             a running graph could not be reached, or refused a command
    └── TuneError                (tune.study) the study cannot run: an extra, its storage, the cluster

The classes with a module in brackets live beside the code that raises them, since this
module imports nothing of dmnflow; tests/unit/test_errors.py checks this drawing holds every public
error. ``StopSource`` (runtime.node_runner) is not an error but the stop signal of a source's
``emit``, and stays out of the tree so that ``except DmnflowError`` in node code cannot swallow it.

A `GraphError` holds every `Issue` found, not only the first: validation collects.
Foreign errors (zmq, msgpack, lz4, yaml, pydantic) are translated where they enter,
chained with ``raise ... from exc``. This module imports nothing else of dmnflow.
"""

from __future__ import annotations

import difflib
import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

__all__ = [
    "CodecError",
    "CompileError",
    "ConfigError",
    "ControlError",
    "DecodeError",
    "DmnflowError",
    "EncodeError",
    "ExitCode",
    "GraphError",
    "Issue",
    "LaunchError",
    "Location",
    "NEAR_CUTOFF",
    "NodeError",
    "SendTimeout",
    "SpecError",
    "TransportError",
    "closest",
    "did_you_mean",
    "format_issues",
    "suggest",
]


class ExitCode(enum.IntEnum):
    """Process exit codes of the `dmnflow` command, defined once."""

    OK = 0
    INVALID = 1  # the graph (or another input the user wrote) is wrong
    USAGE = 2  # the command line is wrong
    NODE_FAILED = 3  # a node failed past its restart policy
    INTERRUPTED = 130  # Ctrl-C before the graph had started (128 + SIGINT, as shells report it)


@dataclass(frozen=True, order=True)
class Location:
    """A place in a file that a person can jump to: 1-based line and column.

    ``line == 0`` means the whole file (or a command-line argument, whose "file" is the
    argument's text).
    """

    file: str
    line: int = 0
    col: int = 0

    def __str__(self) -> str:
        if self.line <= 0:
            return self.file
        return f"{self.file}:{self.line}:{self.col}"


Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Issue:
    """One problem found in a graph: where, which key, a stable code, what, and the fix.

    ``code`` values are stable and listed in docs/errors.md; tests match on them.
    """

    code: str
    message: str
    loc: Location | None = None
    path: str = ""
    hint: str = ""
    severity: Severity = "error"

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    def __str__(self) -> str:
        where = f"{self.loc}: " if self.loc else ""
        key = f"{self.path}: " if self.path else ""
        text = f"{where}{self.severity}[{self.code}] {key}{self.message}"
        if self.hint:
            text += f"\n    help: {self.hint}"
        return text

    def to_dict(self) -> dict[str, object]:
        return {
            "code": self.code,
            "severity": self.severity,
            "message": self.message,
            "hint": self.hint,
            "path": self.path,
            "file": self.loc.file if self.loc else None,
            "line": self.loc.line if self.loc else None,
            "col": self.loc.col if self.loc else None,
        }


NEAR_CUTOFF = 0.6  # difflib ratio from which an option counts as a misspelling: 'n' for 'nn' is 0.67


def closest(word: str, options: Iterable[object]) -> str | None:
    """The option most like ``word`` (a misspelling of it), or None: the one measure of "near"
    every did-you-mean uses (difflib's ratio at `NEAR_CUTOFF`, so all messages agree on it)."""
    near = difflib.get_close_matches(word, sorted({str(o) for o in options}), n=1, cutoff=NEAR_CUTOFF)
    return near[0] if near else None


GOT_CHARS = 80  # the most of a refused value a message repeats


def got(value: object) -> str:
    """`` (got VALUE)``: the one way a message repeats what it refused, cut to `GOT_CHARS`, so a
    5,000-digit number or a pasted file does not fill the terminal."""
    text = repr(value)
    if len(text) > GOT_CHARS:
        text = f"{text[:GOT_CHARS - 20]}...{text[-8:]} ({len(text):,} characters)"
    return f" (got {text})"


def suggest(option: str, shown: Callable[[str], str] = repr) -> str:
    """``did you mean 'x'?``: the one wording of a suggestion; ``shown`` writes the option as the
    user would type it (a path unquoted, ``module:Name``)."""
    return f"did you mean {shown(option)}?"


def did_you_mean(word: str, options: Iterable[object], shown: Callable[[str], str] = repr) -> str:
    """`suggest` for the option closest to ``word``, or ``""``."""
    near = closest(word, options)
    return suggest(near, shown) if near is not None else ""


def sort_issues(issues: list[Issue]) -> list[Issue]:
    """Issues in file order (errors before warnings at one place), duplicates removed."""
    seen: set[tuple[object, ...]] = set()
    unique: list[Issue] = []
    for issue in issues:
        key = (issue.code, issue.loc, issue.path, issue.message)
        if key not in seen:
            seen.add(key)
            unique.append(issue)

    def order(issue: Issue) -> tuple[object, ...]:
        loc = issue.loc or Location("")
        return (loc.file, loc.line, loc.col, issue.severity != "error", issue.code)

    return sorted(unique, key=order)


def format_issues(issues: list[Issue], *, source_lines: bool = True) -> str:
    """Render issues the way compilers do: location, code, message, the line and a caret."""
    out: list[str] = []
    cache: dict[str, list[str] | None] = {}
    for issue in sort_issues(issues):
        out.append(str(issue))
        loc = issue.loc
        if not (source_lines and loc and loc.line > 0):
            continue
        if loc.file not in cache:
            try:
                cache[loc.file] = Path(loc.file).read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError):
                cache[loc.file] = None
        lines = cache[loc.file]
        if lines and loc.line <= len(lines):
            out.append(f"    | {lines[loc.line - 1]}")
            out.append(f"    | {' ' * max(loc.col - 1, 0)}^")
    errors = sum(1 for i in issues if i.is_error)
    warnings = len(issues) - errors
    out.append(f"{errors} error{'s' * (errors != 1)}, {warnings} warning{'s' * (warnings != 1)}")
    return "\n".join(out)


class DmnflowError(Exception):
    """Base of every error dmnflow raises on purpose."""


class GraphError(DmnflowError):
    """The graph is invalid; ``issues`` lists every problem found, errors and warnings."""

    def __init__(self, issues: list[Issue]) -> None:
        self.issues: list[Issue] = sort_issues(issues)
        errors = [i for i in self.issues if i.is_error]
        first = str(errors[0]).splitlines()[0] if errors else "invalid graph"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        super().__init__(first + more)

    @property
    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.is_error]


class SpecError(GraphError):
    """The graph file cannot be read as a graph: YAML, schema, substitution, includes."""


class CompileError(GraphError):
    """The graph reads fine but does not hold together: imports, params, ports, pins."""


class CodecError(DmnflowError):
    """A payload could not be encoded or decoded."""


class EncodeError(CodecError):
    """A value cannot be encoded by the edge's codec."""


class DecodeError(CodecError):
    """A received frame is malformed or breaks a decoding limit."""


class TransportError(DmnflowError):
    """A socket could not do what the plan asked."""


class SendTimeout(TransportError):
    """A blocking send waited past its timeout: the receiver is not reading."""


@dataclass
class _NodeContext:
    node: str = ""
    port: str = ""
    seq: int | None = None


class NodeError(DmnflowError):
    """User code inside a node raised; the node, port and sequence number are attached."""

    def __init__(self, message: str, *, node: str = "", port: str = "", seq: int | None = None):
        self.where = _NodeContext(node, port, seq)
        parts = [p for p in (f"node {node!r}" if node else "", f"port {port!r}" if port else "",
                             f"seq {seq}" if seq is not None else "") if p]
        super().__init__(f"{', '.join(parts)}: {message}" if parts else message)


class ConfigError(DmnflowError):
    """A node cannot run in this environment: an API key unset, a package or data file missing.

    Node code raises it (or a subclass) with a message that says what to set or install; the
    run reports that message alone, without a traceback, since the code is not at fault.
    """


class LaunchError(DmnflowError):
    """The runtime could not start the graph or keep it running."""


class ControlError(DmnflowError):
    """A running graph could not be found or reached, or it refused a command (``dmnflow swap``)."""


@dataclass
class IssueList:
    """Collects issues during a pass; raises one GraphError subclass at the end if needed."""

    issues: list[Issue] = field(default_factory=list)

    def add(self, code: str, message: str, loc: Location | None = None, *, path: str = "",
            hint: str = "", severity: Severity = "error") -> None:
        self.issues.append(Issue(code, message, loc, path, hint, severity))

    @property
    def has_errors(self) -> bool:
        return any(i.is_error for i in self.issues)
