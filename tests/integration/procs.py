"""Process helpers for tests that start real graphs: find a launcher's workers, stop them by PID."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def workers_of(parent: int) -> dict[str, int]:
    """The dmnflow worker processes whose parent is ``parent``: process name -> pid."""
    found: dict[str, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and b"dmnflow.runtime.worker" in argv:
            found[argv[argv.index(b"dmnflow.runtime.worker") + 2].decode()] = int(entry.name)
    return found


def alive(pid: int) -> bool:
    """Running (a zombie counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_until(predicate, timeout_s: float, step_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step_s)
    return predicate()


def run_dir_of(pid: int) -> Path | None:
    """The run directory of the supervisor ``pid`` (in this test's temporary directory, which
    is its own under ``-n 2``: tests/conftest.py)."""
    for d in Path(tempfile.gettempdir()).glob("dmnflow-*"):
        try:
            if (d / "supervisor.pid").read_text() == str(pid):
                return d
        except OSError:
            continue
    return None


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


class Launch:
    """A running ``dmnflow launch``: remembers every worker PID it has been seen with."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.seen: set[int] = set()

    def workers(self) -> dict[str, int]:
        found = workers_of(self.proc.pid)
        self.seen.update(found.values())
        return found

    def wait_for_workers(self, names: set[str], timeout_s: float = 30.0) -> dict[str, int]:
        assert wait_until(lambda: names <= set(self.workers()), timeout_s), f"workers {names} did not start"
        return self.workers()


@contextlib.contextmanager
def launched(graph: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[Launch]:
    """``dmnflow launch`` as a child process; it and every worker seen are killed at exit."""
    proc = subprocess.Popen([sys.executable, "-m", "dmnflow", "launch", str(graph), *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200", **(env or {})})
    run = Launch(proc)
    try:
        yield run
    finally:
        if proc.poll() is None:
            run.workers()
            proc.kill()
        proc.communicate(timeout=10)
        kill_all(sorted(p for p in run.seen if alive(p)))
