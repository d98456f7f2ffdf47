"""The in-memory side of the runner's interface: what ``dmnflow.testing.run_node`` gives a
``NodeRunner`` instead of sockets.

``MemoryOutlet`` stands for an ``Outlet`` (``send``, ``alloc``, ``send_eos``) and keeps
what was sent; ``MemoryInlet`` stands for an ``Inlet`` and turns values into the
``(value, header)`` pairs a socket inlet yields, header in the wire's layout, so the runner
reads the same fields in a test as in a graph. Nothing is encoded: values arrive as sent.
"""

from __future__ import annotations

import time
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
    """One input port fed from a list: each value gets the header a producer would have sent."""

    def __init__(self, port: str, src: int = 0, origin: int = 0) -> None:
        self.port = port
        self.src = src  # the producer's output id: a join tells producers apart by it
        self.origin = origin  # the source node the values stand for (end-to-end latency at sinks)
        self.seq = 0

    def record(self, value: Any, event_time: Any = None, *, topic: str | None = None,
               attrs: Any = None) -> tuple[Any, list[Any]]:
        """``(value, header)`` as ``Inlet.receive`` yields it (the topic appended as bytes)."""
        self.seq += 1
        now = time.time_ns()
        header = [DATA, self.src, 0, self.seq, now, self.origin, now, event_time, None, attrs,
                  (topic if topic is not None else self.port).encode()]
        return value, header
