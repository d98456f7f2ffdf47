"""The admin channel's client: find runs by name, ask a run for its status, send a node a
command, ask anything else of ``protocol.ADMIN``.

``dmnflow runs``, ``swap``, ``top``, ``echo``/``hz``/``bw`` use this. A run is a directory
``dmnflow-*`` in the temp directory (mode 0700, so only its user reaches it) holding the
supervisor's pid, the run's name and its ``admin`` socket (``protocol.ADMIN_SOCKET``). A
launch that is still compiling its graph (no supervisor yet: nothing to ask) registers a run
directory of its own with ``STARTING`` in it (``starting``; ``starting_runs`` lists them), so
``dmnflow runs`` shows it and ``top``/``dashboard`` say it is starting. The
server (``server.py``) forwards a command to every instance of the node and answers once
each has.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from ...errors import ControlError, LaunchError, did_you_mean
from .. import protocol
from ..processes import LAUNCH_PID, RUN_DIR_PREFIX
from ..protocol import ADMIN_SOCKET, Answer

__all__ = ["STARTING", "Answer", "RunInfo", "StartingRun", "ask", "claim_run_name", "find_run", "list_runs",
           "run_status", "send_command", "starting", "starting_message", "starting_runs"]

STARTING = "starting.json"  # in a launch's run directory while it compiles: its name, graph and phase

log = logging.getLogger("dmnflow.supervisor")


@dataclass(frozen=True)
class RunInfo:
    """A graph running now: its name, supervisor pid, graph name and run directory."""

    name: str
    pid: int
    graph: str
    run_dir: str


def list_runs() -> list[RunInfo]:
    """The runs of this user whose supervisor is alive, oldest first."""
    return [run for run in _runs() if (Path(run.run_dir) / ADMIN_SOCKET).exists()]


def _runs() -> list[RunInfo]:
    """Every run directory of this user with a name and a live supervisor (starting ones too)."""
    runs = []
    for path in sorted(Path(tempfile.gettempdir()).glob(RUN_DIR_PREFIX + "*"), key=_mtime):
        try:
            if path.stat().st_uid != os.getuid():
                continue
            pid = int((path / "supervisor.pid").read_text())
            name = (path / "name").read_text()
            graph = json.loads((path / "plan.json").read_text()).get("graph", "")
            os.kill(pid, 0)
        except (OSError, ValueError):  # gone, just starting, or not a run of ours
            continue
        runs.append(RunInfo(name, pid, graph, str(path)))
    return runs


@dataclass(frozen=True)
class StartingRun:
    """A launch still compiling its graph: its supervisor is not up, so it answers nothing yet."""

    name: str
    pid: int
    graph: str
    phase: str  # compiling
    phase_detail: str  # what the compile does: "validating, checking the models"
    run_dir: str


def starting_runs() -> list[StartingRun]:
    """The launches of this user still compiling (alive, their supervisor not answering yet), oldest first."""
    up = {run.pid for run in list_runs()}
    found = []
    for path in sorted(Path(tempfile.gettempdir()).glob(RUN_DIR_PREFIX + "*"), key=_mtime):
        try:
            if path.stat().st_uid != os.getuid():
                continue
            data = json.loads((path / STARTING).read_text())
            pid = int(data["pid"])
            os.kill(pid, 0)
            entry = StartingRun(str(data["name"]), pid, str(data["graph"]), str(data["phase"]),
                                str(data.get("phase_detail", "")), str(path))
        except (OSError, ValueError, KeyError, TypeError):  # gone, being written, or not ours
            continue
        if pid not in up:  # once its supervisor answers (its admin socket is there), that one is the run
            found.append(entry)
    return found


class _Starting:
    """The entry of a launch that compiles (``starting``): its phase, said again as it changes."""

    def __init__(self, run_dir: str, name: str, graph: str) -> None:
        self.run_dir, self.name, self.graph = run_dir, name, graph

    def set(self, phase: str, detail: str = "", name: str | None = None, graph: str | None = None) -> None:
        """Say the launch's phase (and, once compiled, the name and graph the plan gives it)."""
        self.name, self.graph = name or self.name, graph or self.graph
        if not self.run_dir:
            return
        tmp = Path(self.run_dir, STARTING + ".tmp")
        with contextlib.suppress(OSError):  # a listing is a help: a full disk does not stop the launch
            tmp.write_text(json.dumps({"name": self.name, "pid": os.getpid(), "graph": self.graph,
                                       "phase": phase, "phase_detail": detail}))
            os.replace(tmp, Path(self.run_dir, STARTING))


@contextlib.contextmanager
def starting(name: str, graph: str, phase: str = "compiling", detail: str = "") -> Iterator[_Starting]:
    """List a launch in ``dmnflow runs`` from before its compile until its supervisor is up (or
    the launch fails, or is interrupted): the entry goes when the block ends. A launch killed
    with -9 leaves it to ``processes.sweep_run_dirs`` (its ``LAUNCH_PID`` is dead)."""
    run_dir = ""
    with contextlib.suppress(OSError):  # no temp directory to write in: unlisted until its supervisor is up
        run_dir = tempfile.mkdtemp(prefix=RUN_DIR_PREFIX)
        Path(run_dir, LAUNCH_PID).write_text(str(os.getpid()))  # what sweep_run_dirs reads after a kill -9
    entry = _Starting(run_dir, name, graph)
    entry.set(phase, detail)
    try:
        yield entry
    finally:
        if run_dir:
            shutil.rmtree(run_dir, ignore_errors=True)


def claim_run_name(run_dir: str, name: str, *, exact: bool) -> str:
    """Give the run in ``run_dir`` a name no other live run of this user has, and return it.

    ``dmnflow swap NAME`` must find one run: a name asked for with ``--name`` (``exact``)
    that a live run holds is refused; the default name (the graph's) gets the first free
    suffix (``quickstart-2``), said in a warning.

    Raises:
        LaunchError: ``exact`` and a live run already has ``name``.
    """
    with _names_lock():
        taken = {run.name: run.pid for run in _runs() if run.run_dir != run_dir}
        chosen = name
        if name in taken:
            if exact:
                raise LaunchError(f"a run named {name!r} is running (pid {taken[name]}); stop it first, or give "
                                  "this one another --name")
            n = 2
            while f"{name}-{n}" in taken:
                n += 1
            chosen = f"{name}-{n}"
            log.warning("a run named %r is running (pid %d), so this one is named %r "
                        "(`dmnflow swap %s ...`; choose a name with --name)", name, taken[name], chosen, chosen)
        Path(run_dir, "name").write_text(chosen)
    return chosen


@contextlib.contextmanager
def _names_lock() -> Iterator[None]:
    """One run at a time picks its name (two launches at once would pick the same one)."""
    path = Path(tempfile.gettempdir()) / f".{RUN_DIR_PREFIX}names-{os.getuid()}.lock"
    try:
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    except OSError:  # someone else's file in the way: no lock, only a narrow race left
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def find_run(ref: str) -> RunInfo:
    """The run called ``ref`` (its ``--name``, default the graph's name), or with pid ``ref``.

    Raises:
        ControlError: no such run, or several runs share the name (pass the pid instead).
    """
    runs = list_runs()
    hits = [r for r in runs if r.name == ref or str(r.pid) == ref]
    if len(hits) == 1:
        return hits[0]
    if not hits:
        compiling = [r for r in starting_runs() if r.name == ref or str(r.pid) == ref]
        if compiling:
            raise ControlError(starting_message(compiling[0]))
        running = ", ".join(f"{r.name} (pid {r.pid})" for r in runs) or "none"
        near = did_you_mean(ref, {r.name for r in runs})
        raise ControlError(f"no run named {ref!r} is running; " + (f"{near} " if near else "")
                           + f"running now: {running}")
    pids = ", ".join(str(r.pid) for r in hits)
    raise ControlError(f"{len(hits)} runs are named {ref!r} (pids {pids}); name one by its pid, "
                       "or start runs with distinct `--name`s")


def starting_message(run: StartingRun) -> str:
    """What a command that asks a run says of one still compiling: it is there, not yet answering."""
    detail = f": {run.phase_detail}" if run.phase_detail else ""
    return (f"run {run.name!r} (pid {run.pid}) is starting ({run.phase}{detail}); it answers once its "
            "supervisor is up: try again in a moment (`dmnflow runs` shows its phase)")


def send_command(run: RunInfo, node: str, name: str, args: dict[str, Any], *, timeout_s: float = 150.0) -> Answer:
    """Send ``name`` with ``args`` to ``node`` (every replica of it) and wait for the answer.

    Raises:
        ControlError: the run did not answer within ``timeout_s`` (it may have ended).
    """
    return ask(run, protocol.COMMAND, node, name, args, timeout_s=timeout_s)


def stop_run(run: RunInfo, *, timeout_s: float = 5.0) -> Answer:
    """Ask the run to drain and stop, as Ctrl-C in its terminal does (``dmnflow stop``)."""
    return ask(run, protocol.STOP, timeout_s=timeout_s)


def wait_ended(run: RunInfo, timeout_s: float, poll_s: float = 0.1) -> bool:
    """Whether the run's supervisor exited within ``timeout_s`` (its drain and report done)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            os.kill(run.pid, 0)
        except ProcessLookupError:
            return True
        except OSError:  # alive, another user's: not ours to wait on
            return False
        if not Path(run.run_dir).exists():  # its run directory goes last, as it exits
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll_s)


def run_status(run: RunInfo, *, timeout_s: float = 5.0) -> Answer:
    """The run's graph, name, pid and the state of each node instance."""
    return ask(run, protocol.STATUS, timeout_s=timeout_s)


def ask(run: RunInfo, verb: str, *args: Any, timeout_s: float = 5.0) -> Answer:
    """One admin request of ``protocol.ADMIN`` (``status``, ``command``, ``snapshot``, ``tap``)
    and its answer.

    Raises:
        ControlError: the run did not answer within ``timeout_s`` (it may have ended), or its
            answer is not one (``protocol.decode_answer``).
    """
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(f"ipc://{run.run_dir}/{ADMIN_SOCKET}")
        sock.send(protocol.encode(verb, *args))
        if not sock.poll(int(timeout_s * 1000)):
            raise ControlError(f"run {run.name!r} (pid {run.pid}) did not answer within {timeout_s:.0f}s; "
                               "it may have ended")
        answer = protocol.decode_answer(sock.recv())
        if answer is None:
            raise ControlError(f"run {run.name!r} (pid {run.pid}) answered {verb!r} with something that is "
                               "not an answer (a dmnflow of another version?)")
        return answer
    finally:
        sock.close()


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
