"""The compile cache: what ``dmnflow validate``, ``plan`` and ``launch`` compiled, kept until
any input of that compile changes.

Compiling the trading graph imports torch and every node, and loads and runs each model
once (seconds); the answer depends only on files and a few facts about the process, so a
clean answer is kept under ``$XDG_CACHE_HOME/dmnflow/compile/`` (default
``~/.cache/dmnflow/compile/``; delete the directory to empty it) and used again only when
nothing it depends on has changed:

- the key: the graph path as given, the ``--set`` texts and ``--overlay`` paths in order, the
  profile, whether models are checked; the working directory, ``sys.path``, the interpreter,
  dmnflow's version, the CPUs this process may run on, and the environment (all of it but
  ``_``, ``OLDPWD`` and ``SHLVL``, which the shell changes between commands);
- the manifest, checked on every use: each file the compile opened (the graph, its
  includes, overlays, CURVE keys, whatever a node read) and each model file of the plan,
  by content (SHA-256), size and mode; the source file of every module loaded by then: your
  nodes' and dmnflow's by content, installed packages' (torch, numpy, the standard library)
  by size and mtime, as Python checks a ``.pyc``; and the mtime of every directory listed
  (the imports' searches included), every directory holding one of those modules, and every
  ``sys.path`` entry (a new file there could shadow a module).

Only answers without errors are kept: a graph with an error is compiled again each time, so
its fix shows at once. One entry per key (a new compile replaces it), the newest
``MAX_ENTRIES`` kept. Files are opened during the compile are seen through an audit hook
(``sys.addaudithook``), which stays installed but does nothing outside a compile.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import sysconfig
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__
from .errors import Issue, Location

if TYPE_CHECKING:
    from .plan import Plan

__all__ = ["Compiled", "cache_dir", "compiled"]

FORMAT = 2  # of an entry; a dmnflow that writes another format ignores this one
MAX_ENTRIES = 100
HASHED_MAX_BYTES = 64 << 20  # bigger data files are known by size, mtime and inode instead of content
_VOLATILE_ENV = frozenset({"_", "OLDPWD", "SHLVL"})
_SKIPPED = ("/proc/", "/sys/", "/dev/")


@dataclass
class Compiled:
    """A compile's answer: every issue, and the plan's JSON when there is no error."""

    issues: list[Issue]
    plan_json: str | None
    cached: bool  # whether it came from the cache

    def plan(self) -> Plan:
        """The plan (only when there is no error)."""
        from .plan import Plan

        assert self.plan_json is not None, "a graph with errors has no plan"
        return Plan.from_json(self.plan_json)


def cache_dir() -> Path:
    """Where entries live: ``$XDG_CACHE_HOME/dmnflow/compile``, default ``~/.cache/dmnflow/compile``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base, "dmnflow", "compile")


def compiled(graph: str | os.PathLike[str], sets: Sequence[str], overlays: Sequence[str | os.PathLike[str]],
             profile: str | None, models: bool,
             compute: Callable[[], tuple[Plan | None, list[Issue]]]) -> Compiled:
    """The cached answer for these inputs if none has changed, else ``compute()``'s (kept
    when it has no error). ``compute`` compiles ``graph`` with these inputs."""
    key = _key(graph, sets, overlays, profile, models)
    entry_path = cache_dir() / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"
    hit = _load(entry_path, key)
    if hit is not None:
        return hit
    with _recording() as seen:
        plan, issues = compute()
    result = Compiled(issues, plan.to_json(indent=None) if plan is not None else None, cached=False)
    if plan is not None and not any(i.is_error for i in issues):
        models_of = [n.model.path for n in plan.nodes if n.model is not None]
        with contextlib.suppress(OSError):  # a cache that cannot be written is no cache, not an error
            entry_path.parent.mkdir(parents=True, exist_ok=True)  # before the directories' mtimes are taken
            _store(entry_path, key, result, _manifest(seen, models_of))
    return result


# ---------------------------------------------------------------- the key


def _key(graph: str | os.PathLike[str], sets: Sequence[str], overlays: Sequence[str | os.PathLike[str]],
         profile: str | None, models: bool) -> str:
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = []
    env = {k: v for k, v in os.environ.items() if k not in _VOLATILE_ENV}
    return json.dumps({
        "format": FORMAT, "dmnflow": __version__, "python": sys.version, "executable": sys.executable,
        "cwd": os.getcwd(), "sys_path": sys.path, "cpus": cpus, "env": env,
        "graph": os.fspath(graph), "sets": list(sets), "overlays": [os.path.abspath(o) for o in overlays],
        "profile": profile, "models": models,
    }, sort_keys=True)


# ---------------------------------------------------------------- what a compile read


@dataclass
class _Seen:
    files: set[str] = field(default_factory=set)
    dirs: set[str] = field(default_factory=set)


_active: list[_Seen] = []
_hooked = False


def _audit(event: str, args: tuple[Any, ...]) -> None:
    """Note the files opened for reading and the directories listed while a compile runs."""
    if not _active:
        return
    if event == "open":
        path, mode, flags = args
        if isinstance(path, int) or path is None:
            return
        if mode is not None and any(c in mode for c in "wax+"):
            return
        if mode is None and isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR):
            return
        _active[-1].files.add(os.path.abspath(os.fsdecode(path)))
    elif event in ("os.listdir", "os.scandir"):
        path = args[0]
        if isinstance(path, int):
            return
        _active[-1].dirs.add(os.path.abspath(os.fsdecode(path) if path is not None else "."))


@contextlib.contextmanager
def _recording() -> Iterator[_Seen]:
    global _hooked
    if not _hooked:
        sys.addaudithook(_audit)
        _hooked = True
    seen = _Seen()
    _active.append(seen)
    try:
        yield seen
    finally:
        _active.remove(seen)


def _manifest(seen: _Seen, model_files: list[str]) -> dict[str, Any]:
    """Fingerprints of everything the answer depends on (the module docstring's list)."""
    modules: dict[str, Any] = {}
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if isinstance(path, str) and os.path.isabs(path):
            modules[path] = _source_print(path)
    data: dict[str, Any] = {}
    for path in sorted({*seen.files, *model_files}):
        if path in modules or path.startswith(_SKIPPED) or f"{os.sep}__pycache__{os.sep}" in path:
            continue
        if path.endswith(".py"):  # a source read by inspect or linecache: as a module's
            modules[path] = _source_print(path)
        else:
            data[path] = _data_print(path)
    dirs = {os.path.dirname(p) for p in modules} | seen.dirs
    dirs |= {os.path.abspath(p) for p in sys.path if isinstance(p, str) and os.path.isdir(p or ".")}
    return {"data": {p: f for p, f in data.items() if f is not None},
            "modules": {p: f for p, f in modules.items() if f is not None},
            "dirs": {d: _dir_print(d) for d in sorted(dirs) if not d.startswith(_SKIPPED)}}


_INSTALLED = tuple(sorted({os.path.join(os.path.realpath(p), "") for k, p in sysconfig.get_paths().items()
                           if k in ("stdlib", "platstdlib", "purelib", "platlib")}))


def _source_print(path: str) -> list[Any] | None:
    """An installed module's file by size and mtime; anything else (your nodes, a checkout of
    dmnflow) by content too, since an editor may keep the size and the clock's tick."""
    try:
        st = os.stat(path)
        if os.path.realpath(path).startswith(_INSTALLED):
            return [st.st_size, st.st_mtime_ns]
        with open(path, "rb") as f:
            return [st.st_size, hashlib.file_digest(f, "sha256").hexdigest()]
    except OSError:
        return None


def _data_print(path: str) -> list[Any] | None:
    try:
        st = os.stat(path)
        if st.st_size > HASHED_MAX_BYTES or not os.path.isfile(path):
            return [st.st_size, st.st_mode, st.st_mtime_ns, st.st_ino]
        with open(path, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
    except OSError:
        return None
    return [st.st_size, st.st_mode, digest]


def _dir_print(path: str) -> int | None:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


# ---------------------------------------------------------------- entries


def _load(path: Path, key: str) -> Compiled | None:
    """The entry's answer if it is for ``key`` and its manifest still holds, else None."""
    try:
        entry = json.loads(path.read_bytes())
        if entry.get("format") != FORMAT or entry.get("key") != key:
            return None
        manifest = entry["manifest"]
        if any(_data_print(p) != f for p, f in manifest["data"].items()):
            return None
        if any(_source_print(p) != f for p, f in manifest["modules"].items()):
            return None
        if any(_dir_print(p) != f for p, f in manifest["dirs"].items()):
            return None
        issues = [_issue(d) for d in entry["issues"]]
        return Compiled(issues, entry["plan"], cached=True)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _store(path: Path, key: str, result: Compiled, manifest: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = {"format": FORMAT, "key": key, "manifest": manifest, "plan": result.plan_json,
             "issues": [i.to_dict() for i in result.issues]}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".entry-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(entry, f)
        os.replace(tmp, path)  # readers see the old entry or the new one, never half of one
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    entries = sorted(path.parent.glob("*.json"), key=lambda p: p.stat().st_mtime_ns, reverse=True)
    for old in entries[MAX_ENTRIES:]:
        with contextlib.suppress(OSError):
            old.unlink()


def _issue(d: dict[str, Any]) -> Issue:
    loc = Location(d["file"], d["line"] or 0, d["col"] or 0) if d.get("file") is not None else None
    return Issue(d["code"], d["message"], loc, d["path"], d["hint"], d["severity"])
