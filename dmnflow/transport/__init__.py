"""ZeroMQ sockets built from the Plan: the wire format, outlets and inlets, shared memory,
the counts every edge keeps, and CURVE.

- ``wire``: message kinds, header fields, control messages, the checks every frame passes;
- ``link``: what a worker's sockets share, binding, zmq errors translated;
- ``outlet``: the sending side (pub, push and stream patterns, coalescing, at-least-once);
- ``inlet``: the receiving side (validation, gap counting, credit, duplicates);
- ``shm``: shared-memory slots for large payloads on same-host edges;
- ``memory``: in-memory outlets and inlets (``dmnflow.testing.run_node``);
- ``stats``: counters in a mapped file per worker, latency histograms;
- ``security``: CURVE keys, the ZAP allow-list, refused handshakes.

No zmq or msgpack error leaves this package untranslated.
"""

from .inlet import Inlet
from .link import Link, zmq_errors
from .outlet import Flusher, Outlet
from .stats import Counters, EdgeStats, Histogram, Layout, NodeCounts
from .wire import BATCH, DATA, EOS

__all__ = ["BATCH", "DATA", "EOS", "Counters", "EdgeStats", "Flusher", "Histogram", "Inlet", "Layout", "Link",
           "NodeCounts", "Outlet", "zmq_errors"]
