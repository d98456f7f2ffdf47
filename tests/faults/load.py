"""A second process that loads the machine while a fault is injected: the faults suite runs every
scenario with and without it, since a fault on a quiet machine hides races a busy one shows."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator

# a busy loop that stops by itself after ``limit_s`` even if the test that started it dies
_BURN = "import time\nend = time.monotonic() + {limit_s}\nwhile time.monotonic() < end:\n    sum(range(1000))\n"


@contextlib.contextmanager
def loaded(on: bool, limit_s: float = 120.0) -> Iterator[None]:
    """While inside, one process spins on a core (when ``on``); it is stopped by its PID at exit."""
    if not on:
        yield
        return
    proc = subprocess.Popen([sys.executable, "-c", _BURN.format(limit_s=limit_s)])
    try:
        yield
    finally:
        proc.kill()
        proc.wait(timeout=10)
