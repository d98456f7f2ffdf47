"""The in-memory side of the runner's interface: what ``dmnflow.testing.run_node`` gives a
``NodeRunner`` instead of sockets.

``MemoryOutlet`` stands for an ``Outlet`` (the runner's ``Sender``: ``send``, ``alloc``,
``send_eos``) and keeps what was sent; ``MemoryInlet`` stands for an ``Inlet`` (its
``Receiver``) and yields the ``(value, header)`` pairs a socket inlet yields, header in the
wire's layout, so the runner reads the same fields, on the same schedule, in a test as in a
graph. Nothing is encoded: values arrive as sent.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .wire import DATA

__all__ = ["MemoryInlet", "MemoryOutlet", "Sent"]


@dataclass(frozen=True, slots=True)
class Sent:
    """One record an output sent: its value and what travels with it."""

    value: Any
    topic: str
    event_time: Any
    attrs: Any
    origin_ns: int


@dataclass
class MemoryOutlet:
    """An output port whose records stay in a list."""

    port: str
    sent: list[Sent] = field(default_factory=list)
    ended: bool = False

    def send(self, value: Any, topic: bytes | None, origin_ns: int, origin: int, event_time: Any,
             attrs: Any) -> None:
        if self.ended:
            raise RuntimeError(f"output {self.port!r} sent a record after its end-of-stream")
        self.sent.append(Sent(value, topic.decode() if topic is not None else self.port, event_time, attrs, origin_ns))

    def alloc(self, shape: Any, dtype: Any) -> Any:
        return np.empty(shape, dtype)

    def send_eos(self) -> None:
        self.ended = True


class MemoryInlet:
    """One input port fed from a list: what a socket ``Inlet`` is to the runner (its
    ``Receiver``), without a socket. Each value queued with ``put`` gets the header a producer
    would have sent, in the wire's layout, so the runner reads the same fields in a test as in
    a graph; ``end`` is its producer's end-of-stream."""

    delivery = "at-most-once"
    read_batch = 256

    def __init__(self, port: str, src: int = 0, origin: int = 0, *, latest: bool = False,
                 counters: Any = None, conflated: int = -1) -> None:
        """``latest``: a read hands over only the newest of what waits, the rest counted in
        ``counters.mv[conflated]`` (as a socket ``Inlet`` does)."""
        self.port = port
        self.latest, self.counters, self.conflated = latest, counters, conflated
        self.src = src  # the producer's output id: a join tells producers apart by it
        self.sources = (src,)
        self.origin = origin  # the source node the values stand for (end-to-end latency at sinks)
        self.seq = 0
        self.waiting: deque[tuple[Any, list[Any]]] = deque()
        self.closed = False
        self.done_pending: dict[int, int] = {}

    def put(self, value: Any, event_time: Any = None, *, topic: str | None = None, attrs: Any = None) -> None:
        """Queue a value as its producer would have sent it."""
        if self.closed:
            raise RuntimeError(f"input {self.port!r} got a record after its end-of-stream")
        self.seq += 1
        now = time.time_ns()
        self.waiting.append((value, [DATA, self.src, 0, self.seq, now, self.origin, now, event_time, None, attrs,
                                     (topic if topic is not None else self.port).encode()]))

    def end(self) -> None:
        self.closed = True

    @property
    def ended(self) -> bool:
        return self.closed and not self.waiting

    def receive(self, sock: Any, limit: int) -> Iterator[tuple[Any, list[Any]]]:
        """What is queued, up to ``limit`` (``sock``: there is none)."""
        waiting = self.waiting
        n = min(limit, len(waiting))
        if self.latest and n:
            for _ in range(n - 1):
                waiting.popleft()
            if n > 1 and self.counters is not None and self.conflated >= 0:
                self.counters.mv[self.conflated] += n - 1
            n = 1
        for _ in range(n):
            yield waiting.popleft()

    def handled(self, header: list[Any]) -> None:
        """Nothing to acknowledge: no producer keeps the record."""

    def after_turn(self) -> None:
        """No shared memory to give back."""

    def send_done(self) -> None:
        self.done_pending = {}
