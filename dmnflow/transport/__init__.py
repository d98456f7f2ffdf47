"""ZeroMQ sockets built from the Plan: the wire format, outlets and inlets, shared memory,
the counts every edge keeps, and CURVE.

- ``wire``: message kinds, header fields, control messages, the checks every frame passes;
- ``link``: what a worker's sockets share, binding, zmq errors translated;
- ``outlet``: the sending side, a fan-out over one channel per bind;
- ``channel``: the ``Channel`` seam and ``channel_for``, where a bind's rules become behaviour:
  ``pub``, ``push`` (coalescing, credit, at-least-once, the ``Flusher``) and ``stream``;
- ``inlet``: the receiving side (validation, gap counting, credit, duplicates);
- ``shm``: shared-memory slots for large payloads on same-host edges;
- ``memory``: in-memory outlets and inlets (``dmnflow.testing.run_node``);
- ``stats``: counters in a mapped file per worker, latency histograms;
- ``security``: CURVE keys, the ZAP allow-list, refused handshakes.

No zmq or msgpack error leaves this package untranslated.
"""

from .channel import Channel, channel_for
from .inlet import Inlet
from .link import Link, zmq_errors
from .outlet import Flusher, Outlet
from .stats import Counters, EdgeStats, Histogram, Layout, NodeCounts
from .wire import BATCH, DATA, EOS

__all__ = ["BATCH", "DATA", "EOS", "Channel", "Counters", "EdgeStats", "Flusher", "Histogram", "Inlet", "Layout",
           "Link", "NodeCounts", "Outlet", "channel_for", "zmq_errors"]
