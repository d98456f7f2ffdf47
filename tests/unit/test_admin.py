"""Run names: what `dmnflow swap NAME` finds is one run, so a live run's name is never reused."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from dmnflow import LaunchError
from dmnflow.runtime.admin import claim_run_name
from dmnflow.runtime.supervisor import RUN_DIR_PREFIX


@pytest.fixture
def run_dirs() -> Iterator[list[str]]:
    """Run directories made by the test (a live supervisor: this process), removed after it."""
    made: list[str] = []
    yield made
    for path in made:
        shutil.rmtree(path, ignore_errors=True)


def _run_dir(made: list[str], name: str | None = None) -> str:
    path = tempfile.mkdtemp(prefix=RUN_DIR_PREFIX)
    made.append(path)
    Path(path, "supervisor.pid").write_text(str(os.getpid()))
    Path(path, "plan.json").write_text(json.dumps({"graph": "g"}))
    if name is not None:
        Path(path, "name").write_text(name)
    return path


def test_a_free_name_is_taken_as_asked(run_dirs):
    mine = _run_dir(run_dirs)
    assert claim_run_name(mine, "doc-free-name", exact=True) == "doc-free-name"
    assert Path(mine, "name").read_text() == "doc-free-name"


def test_a_name_asked_for_that_a_live_run_has_is_refused(run_dirs):
    _run_dir(run_dirs, "doc-live")
    mine = _run_dir(run_dirs)
    with pytest.raises(LaunchError, match=rf"a run named 'doc-live' is running \(pid {os.getpid()}\).*--name"):
        claim_run_name(mine, "doc-live", exact=True)


def test_a_default_name_that_is_taken_gets_the_first_free_suffix(run_dirs, caplog):
    _run_dir(run_dirs, "doc-graph")
    _run_dir(run_dirs, "doc-graph-2")
    mine = _run_dir(run_dirs)
    assert claim_run_name(mine, "doc-graph", exact=False) == "doc-graph-3"
    assert Path(mine, "name").read_text() == "doc-graph-3"
    assert "this one is named 'doc-graph-3'" in caplog.text


def test_the_name_of_a_dead_run_is_free_again(run_dirs):
    dead = _run_dir(run_dirs, "doc-dead")
    Path(dead, "supervisor.pid").write_text("999999999")  # no such process
    assert claim_run_name(_run_dir(run_dirs), "doc-dead", exact=True) == "doc-dead"
