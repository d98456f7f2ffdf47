"""The run directory: what the supervisor and its workers share on disk.

A run directory (``dmnflow-*`` in the temp directory, mode 0700) holds the plan, the run's
secret token (0600), the supervisor's pid and the run's name, the control and admin
sockets, the ipc endpoints, ``control.json`` (a supervisor on another host: the ray backend),
``endpoints.json`` (the address each bind actually took, so a
restarted worker binds the same automatic tcp port) and one counters file per worker
incarnation (``counters/PROCESS.INC``), which the supervisor reads even after a kill -9.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import ExitCode, LaunchError
from ..plan import RUN_DIR, Plan
from ..transport.stats import Layout

__all__ = ["IPC_PATH_MAX", "SocketPathError", "check_socket_paths", "counters_path", "layout_of", "read_control",
           "read_endpoints", "write_control", "write_endpoints"]

IPC_PATH_MAX = 107  # bytes of a unix socket's path (sockaddr_un.sun_path, less its NUL)

ENDPOINTS = "endpoints.json"
CONTROL = "control.json"  # where the supervisor is, when it is not this directory's control socket


def layout_of(plan: Plan) -> Layout:
    """The counters layout every worker of ``plan`` uses."""
    return Layout(edges=len(plan.edges), nodes=len(plan.nodes), outputs=len(plan.output_ids()),
                  binds=len(plan.binds()))


class SocketPathError(LaunchError):
    """The temp directory is too deep for the run's unix sockets: found before any worker starts."""

    exit_code = ExitCode.INVALID


def check_socket_paths(plan: Plan, run_dir: str) -> None:
    """Refuse a run directory whose ipc sockets would not fit a unix socket address: each worker
    would fail to bind (and be restarted, again and again) where the run must say it once.

    Raises:
        SocketPathError: the longest socket path of ``plan`` in ``run_dir`` is over ``IPC_PATH_MAX``.
    """
    last = max(len(plan.output_ids()) - 1, 0)
    names = ["control", "admin", f"tap.{last}", f"rec.{last}"]  # admin/, taps.py, backends/local.py
    paths = [f"{run_dir}/{n}" for n in names] + [
        b.endpoint.removeprefix("ipc://").replace(RUN_DIR, run_dir) for b in plan.binds().values()
        if b.endpoint.startswith("ipc://")]
    longest = max(paths, key=lambda p: len(os.fsencode(p)))
    if len(os.fsencode(longest)) > IPC_PATH_MAX:
        tmp = os.path.dirname(run_dir)
        raise SocketPathError(
            f"the temp directory {tmp} is too deep for the run's sockets: {longest} is "
            f"{len(os.fsencode(longest))} bytes, and a unix socket's path holds {IPC_PATH_MAX}; set TMPDIR to a "
            f"directory at most {len(os.fsencode(tmp)) - len(os.fsencode(longest)) + IPC_PATH_MAX} bytes long "
            "(e.g. TMPDIR=/tmp)")


def counters_path(run_dir: str, process: str, inc: int) -> Path:
    folder = Path(run_dir, "counters")
    folder.mkdir(mode=0o700, exist_ok=True)
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in process)
    return folder / f"{safe}.{inc}"


def write_endpoints(run_dir: str, resolved: dict[str, str]) -> None:
    """Atomically, so a worker starting meanwhile reads the old map or the new one."""
    tmp = Path(run_dir, ENDPOINTS + ".tmp")
    tmp.write_text(json.dumps(resolved))
    os.replace(tmp, Path(run_dir, ENDPOINTS))


def read_endpoints(run_dir: str) -> dict[str, str]:
    try:
        data: Any = json.loads(Path(run_dir, ENDPOINTS).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)}


def write_control(run_dir: str, endpoint: str, server_key: str | None = None) -> None:
    """Tell the workers of this directory where the supervisor's control socket is (and which
    public key it holds, under CURVE): a run directory on a host the supervisor is not on."""
    Path(run_dir, CONTROL).write_text(json.dumps({"endpoint": endpoint, "server_key": server_key}))


def read_control(run_dir: str) -> tuple[str, str | None]:
    """The supervisor's control endpoint and its key name; by default the directory's own socket."""
    try:
        data: Any = json.loads(Path(run_dir, CONTROL).read_text())
    except FileNotFoundError:
        return f"ipc://{run_dir}/control", None
    key = data.get("server_key")
    return str(data["endpoint"]), key if isinstance(key, str) else None
