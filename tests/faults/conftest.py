"""The faults suite: every scenario runs with and without a concurrent load (``load`` fixture)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .load import loaded


@pytest.fixture(params=[False, True], ids=["quiet", "loaded"])
def load(request: pytest.FixtureRequest) -> Iterator[bool]:
    """Runs the test twice: once on a quiet machine, once beside a process that spins on a core."""
    with loaded(request.param):
        yield request.param
