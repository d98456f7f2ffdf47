"""Talking to a running graph from outside it: find runs by name, send a node a command.

``dmnflow runs`` and ``dmnflow swap`` use this. A run is a directory ``dmnflow-*`` in the
temp directory (mode 0700, so only its user reaches it) holding the supervisor's pid, the
run's name and its ``admin`` socket; the supervisor forwards a command to every instance
of the node and answers once each has.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import zmq

from ..errors import ControlError
from .supervisor import ADMIN_SOCKET, RUN_DIR_PREFIX

__all__ = ["Answer", "RunInfo", "find_run", "list_runs", "run_status", "send_command"]


@dataclass(frozen=True)
class RunInfo:
    """A graph running now: its name, supervisor pid, graph name and run directory."""

    name: str
    pid: int
    graph: str
    run_dir: str


@dataclass(frozen=True)
class Answer:
    """What a command got back: ``ok`` when every instance accepted it; per instance
    ``[ok, result-or-reason]``."""

    ok: bool
    message: Any
    nodes: dict[str, list[Any]]


def list_runs() -> list[RunInfo]:
    """The runs of this user whose supervisor is alive, oldest first."""
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
        if (path / ADMIN_SOCKET).exists():
            runs.append(RunInfo(name, pid, graph, str(path)))
    return runs


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
        running = ", ".join(f"{r.name} (pid {r.pid})" for r in runs) or "none"
        raise ControlError(f"no run named {ref!r} is running; running now: {running}")
    pids = ", ".join(str(r.pid) for r in hits)
    raise ControlError(f"{len(hits)} runs are named {ref!r} (pids {pids}); name one by its pid, "
                       "or start runs with distinct `--name`s")


def send_command(run: RunInfo, node: str, name: str, args: dict[str, Any], *, timeout_s: float = 150.0) -> Answer:
    """Send ``name`` with ``args`` to ``node`` (every replica of it) and wait for the answer.

    Raises:
        ControlError: the run did not answer within ``timeout_s`` (it may have ended).
    """
    return _request(run, ["command", node, name, args], timeout_s)


def run_status(run: RunInfo, *, timeout_s: float = 5.0) -> Answer:
    """The run's graph, name, pid and the state of each node instance."""
    return _request(run, ["status"], timeout_s)


def _request(run: RunInfo, request: list[Any], timeout_s: float) -> Answer:
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(f"ipc://{run.run_dir}/{ADMIN_SOCKET}")
        sock.send(msgpack.packb(request, use_bin_type=True))
        if not sock.poll(int(timeout_s * 1000)):
            raise ControlError(f"run {run.name!r} (pid {run.pid}) did not answer within {timeout_s:.0f}s; "
                               "it may have ended")
        ok, message, nodes = msgpack.unpackb(sock.recv(), raw=False)
        return Answer(bool(ok), message, nodes)
    finally:
        sock.close()


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
