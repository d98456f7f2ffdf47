"""Worker processes as the supervisor sees them: started by the zygote (or as new
interpreters), waited for and signalled by PID, and run directories of dead supervisors
swept away. Only the runtime starts processes, and it always stops and reaps them.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

__all__ = ["RUN_DIR_PREFIX", "SPAWN_TIMEOUT_S", "ZYGOTE_ENV", "Forked", "Zygote", "exit_forked", "subreaper",
           "sweep_run_dirs"]

log = logging.getLogger("dmnflow.supervisor")

RUN_DIR_PREFIX = "dmnflow-"
ZYGOTE_ENV = "DMNFLOW_ZYGOTE"  # "0": start each worker as a new interpreter instead of forking it
SPAWN_TIMEOUT_S = 30.0  # the zygote's first answer waits for its imports


def sweep_run_dirs() -> list[str]:
    """Remove run directories whose supervisor is gone (killed with -9, it could not clean up)."""
    removed = []
    for path in Path(tempfile.gettempdir()).glob(RUN_DIR_PREFIX + "*"):
        try:
            if path.stat().st_uid != os.getuid():
                continue
            pid = int((path / "supervisor.pid").read_text())
        except (OSError, ValueError):
            continue  # not ours, or just being created
        try:
            os.kill(pid, 0)
            continue  # still running
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(str(path))
    return removed


PR_SET_CHILD_SUBREAPER, PR_GET_CHILD_SUBREAPER = 36, 37


def exit_forked(code: int) -> None:
    """End a forked child: its output flushed, none of the parent's atexit handlers or
    buffered state run (``os._exit``)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def subreaper(on: bool) -> bool | None:
    """Mark this process a child subreaper (orphaned descendants become its children), or
    unmark it; returns the previous setting, None when the kernel does not offer it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        before = ctypes.c_int(0)
        if libc.prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(before), 0, 0, 0) != 0:
            return None
        if libc.prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) != 0:
            return None
        return bool(before.value)
    except (OSError, AttributeError):
        return None


class Forked:
    """A worker the zygote forked, handed to us (a subreaper) as our child: waited for and
    signalled by PID, with the part of ``Popen``'s interface the supervisor uses."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped by someone else: gone, status unknown (as Popen)
                self.returncode = 0
            else:
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.0005
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"worker pid {self.pid}", timeout or 0.0)
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        return self.returncode  # type: ignore[return-value]

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:  # not reaped yet, so the PID is still this worker's
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class Zygote:
    """The supervisor's end of the zygote (``runtime/zygote.py``): forks workers on request."""

    def __init__(self, run_dir: str, names: list[str], env: dict[str, str]) -> None:
        ours, theirs = socket.socketpair()
        # its argument area must hold the longest worker command line it will write there
        longest = max((len(os.fsencode(n)) for n in names), default=0)
        pad = "-" * (longest + 24)
        try:
            self.popen: subprocess.Popen[bytes] | Forked | None = subprocess.Popen(
                [sys.executable, "-m", "dmnflow.runtime.zygote", run_dir, str(os.getpid()), str(theirs.fileno()),
                 pad], env=env, pass_fds=[theirs.fileno()], start_new_session=True)
        except OSError as exc:
            log.warning("cannot start the zygote (%s); starting workers one interpreter each", exc)
            self.popen = None
        theirs.close()
        self.sock = ours
        self.buffer = b""

    @classmethod
    def forked(cls, run_dir: str, env: dict[str, str]) -> Zygote:
        """A zygote forked from this process instead of started as a new interpreter
        (``launch(warm=True)``): its workers inherit every module this process has imported
        (torch, the nodes' code), so none of them imports it again. Taken before the run
        has a zmq context; from then on it serves exactly as the exec'd one does. Its
        environment is ``env`` (the zygote's: no secret a node did not declare)."""
        zygote = cls.__new__(cls)
        ours, theirs = socket.socketpair()
        pid = os.fork()
        if pid == 0:  # the zygote (and, returning from serve, each worker): never back into our caller
            code = 1
            try:
                ours.close()
                os.environ.clear()
                os.environ.update(env)
                from . import zygote as _zygote

                code = _zygote.main([run_dir, str(os.getppid()), str(theirs.fileno())])
            except BaseException:
                traceback.print_exc()
            finally:
                exit_forked(code)
        theirs.close()
        zygote.popen = Forked(pid)
        zygote.sock = ours
        zygote.buffer = b""
        return zygote

    def spawn(self, name: str, inc: int, timeout_s: float, env: dict[str, str] | None = None) -> Forked | None:
        """A worker forked from the zygote, or None when the zygote cannot (it then stays unused).

        ``env``: variables the worker adds to the zygote's environment after the fork (its secrets).
        """
        if self.popen is None:
            return None
        try:
            self.sock.settimeout(timeout_s)
            request: dict[str, Any] = {"name": name, "inc": inc, **({"env": env} if env else {})}
            self.sock.sendall(json.dumps(request).encode() + b"\n")
            while b"\n" not in self.buffer:
                chunk = self.sock.recv(4096)
                if not chunk:
                    raise ConnectionError("the zygote exited")
                self.buffer += chunk
            line, self.buffer = self.buffer.split(b"\n", 1)
            reply = json.loads(line)
            if "pid" in reply:
                return Forked(int(reply["pid"]))
            log.warning("the zygote cannot fork %s: %s; starting it as a new interpreter", name, reply.get("error"))
            return None
        except (OSError, ValueError) as exc:
            log.warning("the zygote failed (%s); starting workers one interpreter each from now on", exc)
            self.close()
            return None

    def close(self) -> None:
        """Close its socket (it exits at once), wait for it; kill it if it does not."""
        with contextlib.suppress(OSError):
            self.sock.close()
        if self.popen is not None:
            try:
                self.popen.wait(2.0)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
            self.popen = None
