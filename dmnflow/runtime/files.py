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

from ..plan import Plan
from ..transport.stats import Layout

__all__ = ["counters_path", "layout_of", "read_control", "read_endpoints", "write_control",
           "write_endpoints"]

ENDPOINTS = "endpoints.json"
CONTROL = "control.json"  # where the supervisor is, when it is not this directory's control socket


def layout_of(plan: Plan) -> Layout:
    """The counters layout every worker of ``plan`` uses."""
    return Layout(edges=len(plan.edges), nodes=len(plan.nodes), outputs=len(plan.output_ids()),
                  binds=len(plan.binds()))


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
