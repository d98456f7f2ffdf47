"""Fixtures the unit tests of the transport share."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import zmq

WIRED: list[Any] = []  # the Outlets test_transport.wire() made: closed after each test (their flusher threads too)


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    """A ZeroMQ context for one test; what was wired on it is closed with it."""
    context = zmq.Context()
    yield context
    while WIRED:
        WIRED.pop().close()
    context.destroy(linger=0)
