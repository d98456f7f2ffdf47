"""Per-run logs that outlive the run: ``dmnflow logs RUN [NODE] [-f]`` reads them.

A run's directory goes when the run ends, so its logs live beside it, in
``<tempdir>/dmnflow-logs-<uid>/<run name>/`` (mode 0700), the last run of each name kept:

- ``<process>.log``: each worker process's log records (its nodes' ``ctx.log`` and the
  runtime's, INFO and up, stamped, with the logger's name) and whatever it writes to stderr
  (a failure's traceback), every incarnation appended, each one's start marked;
- ``launch.log``: a detached launch's terminal output (``launch --detach``): the start's
  phases, the status lines, the report;
- ``processes.json``: which process runs which node, so ``dmnflow logs RUN NODE`` finds it
  after the run is gone.

The supervisor prepares the folder once the run has its name (``prepare``) and links it
from the run directory (``RUN_DIR/logs``), where a worker on this machine finds it; a
worker on another host (the Ray backend) has no such link and logs to its stderr only.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

from ..plan import Plan

__all__ = ["LAUNCH_LOG", "LOG_LINK", "close_log", "logs_root", "prepare", "processes_of", "run_logs", "supervisor_log",
           "worker_log"]

LOG_LINK = "logs"  # in the run directory: the run's log folder
LAUNCH_LOG = "launch.log"
PROCESSES = "processes.json"
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def logs_root() -> Path:
    """Where every run's logs of this user are kept."""
    return Path(tempfile.gettempdir()) / f"dmnflow-logs-{os.getuid()}"


def run_logs(name: str) -> Path:
    """The log folder of the last run named ``name``."""
    return logs_root() / name


def prepare(run_dir: str, name: str, plan: Plan) -> Path:
    """A fresh log folder for run ``name`` (the last run of that name's goes), linked from its
    run directory (a detached launch moves its terminal log in once the run is listed)."""
    root = logs_root()
    root.mkdir(mode=0o700, exist_ok=True)
    folder = root / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(mode=0o700)
    (folder / PROCESSES).write_text(json.dumps({p.name: p.nodes for p in plan.processes}))
    os.symlink(folder, Path(run_dir, LOG_LINK))
    return folder


def processes_of(folder: Path) -> dict[str, list[str]]:
    """process -> its nodes, as the run's plan had them."""
    try:
        data = json.loads((folder / PROCESSES).read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): [str(n) for n in v] for k, v in data.items()} if isinstance(data, dict) else {}


class _Tee:
    """A worker's stderr, also into its log file (a traceback is where the failure is read)."""

    def __init__(self, stream: TextIO, file: TextIO) -> None:
        self.stream, self.file = stream, file

    def write(self, text: str) -> int:
        self.file.write(text)
        self.file.flush()
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()
        self.file.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


class _LogFile(logging.StreamHandler):  # type: ignore[type-arg]
    """A log file that leaves the terminal as it was: a WARNING or worse that no other handler
    takes still goes where Python sends it without one (``logging.lastResort``: stderr)."""

    def emit(self, record: logging.LogRecord) -> None:
        super().emit(record)
        if record.levelno >= logging.WARNING and logging.lastResort is not None and not self._others(record.name):
            logging.lastResort.handle(record)

    def _others(self, name: str) -> bool:
        logger: logging.Logger | None = logging.getLogger(name)
        while logger is not None:
            if any(h is not self for h in logger.handlers):
                return True
            logger = logger.parent if logger.propagate else None
        return False


def worker_log(run_dir: str, process: str, inc: int) -> TextIO | None:
    """Log this worker process into the run's log folder (appended; its incarnation marked),
    if the run directory links one; the file, or None."""
    link = Path(run_dir, LOG_LINK)
    if not link.exists():
        return None
    try:
        file = open(link / f"{process}.log", "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - the process's life
    except OSError:
        return None
    stamp = time.strftime("%H:%M:%S")
    file.write(f"{stamp} --- process {process}, incarnation {inc} (pid {os.getpid()}) ---\n")
    handler = _LogFile(file)
    handler.setFormatter(logging.Formatter(FORMAT, "%H:%M:%S"))
    handler.setLevel(logging.INFO)
    root = logging.getLogger()
    root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    sys.stderr = _Tee(sys.stderr, file)  # type: ignore[assignment]
    return file


def supervisor_log(folder: Path) -> logging.Handler:
    """The supervisor's own records (``dmnflow.*``: the start's phases, restarts, errors) into
    ``supervisor.log``; the caller removes the handler when the run ends (``close_log``)."""
    handler = _LogFile(open(folder / "supervisor.log", "a", encoding="utf-8", buffering=1))  # noqa: SIM115 - close_log
    handler.setFormatter(logging.Formatter(FORMAT, "%H:%M:%S"))
    handler.setLevel(logging.INFO)
    logging.getLogger("dmnflow").addHandler(handler)
    return handler


def close_log(handler: logging.Handler | None) -> None:
    if handler is not None:
        logging.getLogger("dmnflow").removeHandler(handler)
        handler.close()
        if isinstance(handler, logging.StreamHandler):
            handler.stream.close()


def find_logs(ref: str) -> Path:
    """The log folder of run ``ref`` (its name, or the pid of a run going now).

    Raises:
        ControlError: no run of that name has logs here (the names that have, and the nearest).
    """
    from ..errors import ControlError, did_you_mean
    from .admin.client import list_runs

    folder = run_logs(ref)
    if ref and "/" not in ref and folder.is_dir():
        return folder
    for run in list_runs():
        if str(run.pid) == ref:
            return run_logs(run.name)
    root = logs_root()
    names = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    near = did_you_mean(ref, names)
    raise ControlError(f"no logs for a run named {ref!r}; " + (f"{near} " if near else "")
                       + (f"runs with logs: {', '.join(names)}" if names else "no run has logs yet")
                       + " (the last run of each name keeps its logs, in " + str(root) + ")")


def log_files(folder: Path, node: str | None = None) -> list[Path]:
    """The files ``dmnflow logs`` reads: every one of the run (the launch's, the supervisor's,
    each process's), or the process that runs ``node`` (a node or a process name).

    Raises:
        ControlError: ``node`` is not a node or process of the run (with the nearest name).
    """
    from ..errors import ControlError, did_you_mean

    if node is None:
        first = [folder / LAUNCH_LOG, folder / "supervisor.log"]
        rest = sorted(p for p in folder.glob("*.log") if p not in first)
        return [p for p in first if p.exists()] + rest
    processes = processes_of(folder)
    for process, nodes in processes.items():
        if node == process or node in nodes:
            return [folder / f"{process}.log"]
    names = sorted({n for nodes in processes.values() for n in nodes} | set(processes))
    near = did_you_mean(node, names)
    raise ControlError(f"run {folder.name!r} has no node or process {node!r}; " + (f"{near} " if near else "")
                       + f"its nodes: {', '.join(names)}")


class Reader:
    """What a log file holds beyond what was printed: whole lines, each once (``dmnflow logs -f``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.rest = b""

    def lines(self) -> list[str]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except OSError:  # not there (yet), or the folder of a newer run of the name replaced it
            return []
        self.offset += len(data)
        data = self.rest + data
        *whole, self.rest = data.split(b"\n")
        return [line.decode("utf-8", "replace") for line in whole]


def follow(folder: Path, node: str | None, write: Any, running: Any, poll_s: float = 0.25) -> None:
    """Print the run's log lines (prefixed with their file's name when there are several) as
    they come, until ``running()`` says the run is over and the files hold nothing more."""
    readers: dict[Path, Reader] = {}
    several = node is None
    while True:
        alive = running()
        for path in log_files(folder, node):
            reader = readers.setdefault(path, Reader(path))
            for line in reader.lines():
                write(f"[{path.stem}] {line}" if several else line)
        if not alive:
            return
        time.sleep(poll_s)
