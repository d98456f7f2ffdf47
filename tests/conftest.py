"""What every test shares: the tiers (``slow``) and what makes a parallel run (``-n 2``, pytest-xdist)
safe.

- Tiers: a test under ``tests/integration``, ``tests/e2e`` or ``tests/faults`` starts real
  processes and is marked ``slow``; ``pytest -m "not slow"`` is the fast tier
  (docs/contributing.md). A unit test that launches a graph says so with ``@pytest.mark.slow``.
- Parallel: each xdist worker gets a temporary directory of its own (``TMPDIR``, inherited by
  every process a test starts), so runs in ``dmnflow runs``, their run directories and their
  names never meet another worker's. Tests that need the machine's fixed resources (a Ray
  cluster, the seed's tcp ports 5555-5567, headless Chromium) run in one group each
  (``--dist loadgroup``): one at a time, on one worker.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

_SLOW_DIRS = ("integration", "e2e", "faults")
# the files whose tests hold one of the machine's fixed resources, and the group each runs in
_GROUPS = {
    "test_ray.py": "ray",
    "test_tune.py": "ray",  # the Ray Tune engine and PBT start Ray clusters
    "test_network.py": "seed-ports",
    "test_docs_run.py": "seed-ports",  # the docs launch the seed-ports profile too
    "test_viz_browser.py": "browser",
    "test_dashboard_browser.py": "browser",
}


def pytest_configure(config: pytest.Config) -> None:
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker:  # short: a run directory holds ipc socket paths (108 bytes at most)
        own = Path(tempfile.gettempdir(), f"dmnt-{worker}")
        own.mkdir(mode=0o700, exist_ok=True)
        os.environ["TMPDIR"] = str(own)
        tempfile.tempdir = None  # gettempdir() reads TMPDIR again


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    root = Path(__file__).parent
    for item in items:
        path = Path(str(item.fspath))
        try:
            tier = path.relative_to(root).parts[0]
        except ValueError:
            continue
        if tier in _SLOW_DIRS:
            item.add_marker(pytest.mark.slow)
            if path.name in _GROUPS:
                item.add_marker(pytest.mark.xdist_group(_GROUPS[path.name]))
