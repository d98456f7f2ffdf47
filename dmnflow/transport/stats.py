"""What edges and nodes count, in one schema from the worker to the supervisor to the report.

A worker keeps its counts in a small file-backed array (``Counters``), one per worker
incarnation in the run directory: the hot path adds to it directly, and when a worker is
killed (even with SIGKILL) the supervisor still reads exactly what it had counted, since
the kernel keeps the pages of a mapped file. So the report can say how many messages the
dead incarnation received and sent, not what its last heartbeat knew. Latency histograms,
which need no such exactness, travel in heartbeats.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["EDGE_FIELDS", "NODE_FIELDS", "Counters", "EdgeStats", "Histogram", "Layout", "NodeCounts"]

# per edge: the producer fills the first group, the consumer the second
EDGE_FIELDS = ("sent", "dropped", "resent", "received", "gaps", "decode_errors", "restarts_seen", "redelivered",
               "acked", "pos_sent", "pos_out", "pos_received", "pos_done", "refused", "pos_done_prev",
               "pos_out_prev")
SENT, DROPPED, RESENT, RECEIVED, GAPS, DECODE_ERRORS, RESTARTS_SEEN, REDELIVERED, ACKED = range(9)
# at-least-once positions (sequence numbers + 1), carried from each incarnation to the next (the
# worker copies them from its predecessor's file at start): not counts, never summed. Producer:
# the highest sent, and its next sequence number when the input it last said `done` for was
# handled (where a restarted one numbers again); consumer: the highest received, and handled
# (written before each `done`, after the node's commit)
POS_SENT, POS_OUT, POS_RECEIVED, POS_DONE = range(9, 13)
POSITIONS = (POS_SENT, POS_OUT, POS_RECEIVED, POS_DONE)
REFUSED = 13  # CURVE handshakes the consumer failed with whatever answered at its producer's address
# pos_done and pos_out as the node's transaction in progress began (a kill inside it goes back to them):
# the consumer's commit, or a middle node's release of what downstream handled, which moves both
POS_DONE_PREV, POS_OUT_PREV = 14, 15
# per node instance; "committed": `in` as the node's last commit began (a kill loses what came in
# after it; one store per record, so no moment in between escapes the count), -1 without a commit step
# A commit is a transaction over "mark" (what Node.commit returned: a file sink's length), "committed",
# the node's at-least-once inputs' pos_done and outputs' pos_out: "commit_begin" counts transactions
# begun, "commit_end" those whose new values are all stored; while they differ the "_prev" values are
# the state, and a restarted incarnation goes back to them (what the killed one was writing is cut off
# at the mark)
NODE_FIELDS = ("in", "out", "handling", "handling_out", "conflated", "join_incomplete", "committed", "mark",
               "mark_prev", "committed_prev", "commit_begin", "commit_end")
(N_IN, N_OUT, N_HANDLING, N_HANDLING_OUT, N_CONFLATED, N_JOIN_INCOMPLETE, N_COMMITTED, N_MARK, N_MARK_PREV,
 N_COMMITTED_PREV, N_COMMIT_BEGIN, N_COMMIT_END) = range(len(NODE_FIELDS))
# per bound socket: frames from peers the plan does not know; handshakes refused (CURVE);
# connections that ended before the output's end went out (a consumer that died, an outside subscriber
# that left, or a peer whose frame broke the protocol: an oversize one ends its connection, and what
# was queued behind it)
BIND_FIELDS = ("junk", "refused", "disconnects")
B_JUNK, B_REFUSED, B_DISCONNECTS = range(len(BIND_FIELDS))


class Histogram:
    """Latencies in log-spaced buckets (8 per power of two, within ~9%); cheap to add to."""

    __slots__ = ("counts", "n")
    SUB = 3  # 2**SUB buckets per octave

    def __init__(self, counts: list[int] | None = None) -> None:
        self.counts = counts if counts is not None else [0] * (64 << self.SUB)
        self.n = sum(self.counts)

    def add(self, ns: int) -> None:
        if ns < 16:
            index = max(ns, 0)
        else:
            bits = ns.bit_length()
            index = (bits << self.SUB) | ((ns >> (bits - 1 - self.SUB)) & ((1 << self.SUB) - 1))
        self.counts[index] += 1
        self.n += 1

    def quantile(self, q: float) -> float | None:
        """The q-quantile in nanoseconds (the bucket's midpoint), None when empty."""
        if not self.n:
            return None
        rank = q * (self.n - 1)
        seen = 0
        for index, count in enumerate(self.counts):
            seen += count
            if seen > rank:
                return self._value(index)
        return None  # pragma: no cover - unreachable while n counts the buckets

    def _value(self, index: int) -> float:
        if index < 16:
            return float(index)
        bits, sub = index >> self.SUB, index & ((1 << self.SUB) - 1)
        low = (1 << (bits - 1)) + (sub << (bits - 1 - self.SUB))
        return low + (1 << (bits - 1 - self.SUB)) / 2

    def merge(self, other: Histogram) -> None:
        for i, c in enumerate(other.counts):
            self.counts[i] += c
        self.n += other.n

    def to_sparse(self) -> dict[int, int]:
        return {i: c for i, c in enumerate(self.counts) if c}

    @classmethod
    def from_sparse(cls, sparse: dict[Any, Any]) -> Histogram:
        """From ``to_sparse``'s form; keys and counts outside the histogram are ignored."""
        hist = cls()
        size = len(hist.counts)
        for i, c in sparse.items():
            with contextlib.suppress(TypeError, ValueError, OverflowError):
                index, count = int(i), int(c)
                if 0 <= index < size and count > 0:
                    hist.counts[index] += count
        hist.n = sum(hist.counts)
        return hist


@dataclass(frozen=True)
class Layout:
    """Where each count lives in a worker's array: the same for every worker of a plan."""

    edges: int
    nodes: int
    outputs: int
    binds: int

    @property
    def size(self) -> int:
        return self.edges * len(EDGE_FIELDS) + self.nodes * len(NODE_FIELDS) + self.outputs + \
            self.binds * len(BIND_FIELDS)

    def edge(self, e: int) -> int:
        return e * len(EDGE_FIELDS)

    def node(self, n: int) -> int:
        return self.edges * len(EDGE_FIELDS) + n * len(NODE_FIELDS)

    def output(self, o: int) -> int:
        """Records a node handed to that output (emits): what the outlet accepted."""
        return self.edges * len(EDGE_FIELDS) + self.nodes * len(NODE_FIELDS) + o

    def bind(self, b: int) -> int:
        return self.edges * len(EDGE_FIELDS) + self.nodes * len(NODE_FIELDS) + self.outputs + b * len(BIND_FIELDS)


class Counters:
    """One worker incarnation's counts: int64s in a mapped file (or plain memory in tests)."""

    def __init__(self, layout: Layout, path: str | os.PathLike[str] | None = None,
                 initial: list[int] | None = None) -> None:
        """``initial``: the counts it starts from (a restarted worker's carried positions); the
        file appears with them in it, never without (written aside, then renamed)."""
        self.layout = layout
        self.path = None if path is None else str(path)
        nbytes = max(8, layout.size * 8)
        if path is None:
            self._buf: Any = bytearray(nbytes)
            self._map = None
        else:
            aside = self.path if initial is None else f"{self.path}.new"
            fd = os.open(aside, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.ftruncate(fd, nbytes)
                if initial is not None:
                    os.pwrite(fd, array("q", initial[: layout.size]).tobytes(), 0)
                    os.replace(aside, self.path)
                self._map = mmap.mmap(fd, nbytes)
            finally:
                os.close(fd)
            self._buf = self._map
        self.mv = memoryview(self._buf).cast("q")
        if path is None and initial is not None:
            self.mv[: len(initial[: layout.size])] = array("q", initial[: layout.size])

    @staticmethod
    def read(path: str | os.PathLike[str], layout: Layout) -> list[int] | None:
        """A dead (or live) worker's counts, from its file; None when it is not (yet) there."""
        try:
            data = Path(path).read_bytes()
        except OSError:
            return None
        if len(data) < layout.size * 8:
            return None
        return list(memoryview(data).cast("q")[: layout.size])

    def snapshot(self) -> list[int]:
        return list(self.mv[: self.layout.size])

    def edge_stats(self, e: int) -> EdgeStats:
        return EdgeStats(self.mv, self.layout.edge(e))

    def node_counts(self, n: int) -> NodeCounts:
        return NodeCounts(self.mv, self.layout.node(n))

    def close(self) -> None:
        self.mv.release()
        if self._map is not None:
            self._map.close()


class _Field:
    """A named count in a Counters array, read and written through an attribute."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index

    def __get__(self, obj: Any, owner: Any = None) -> Any:
        if obj is None:
            return self
        return obj.mv[obj.base + self.index]

    def __set__(self, obj: Any, value: int) -> None:
        obj.mv[obj.base + self.index] = value


class EdgeStats:
    """What one edge saw, as a view over its counts: the sender counts sent and dropped, the
    receiver the rest. Hot paths write ``mv[base + FIELD]`` themselves; the attributes are
    for everything else. ``latency`` is the receiver's histogram of send-to-receive times."""

    __slots__ = ("base", "latency", "mv")

    def __init__(self, mv: memoryview | None = None, base: int = 0) -> None:
        if mv is None:  # on its own (tests, dmnflow.testing): a private array
            mv, base = memoryview(bytearray(8 * len(EDGE_FIELDS))).cast("q"), 0
        self.mv, self.base = mv, base
        self.latency = Histogram()

    sent = _Field(SENT)
    dropped = _Field(DROPPED)
    resent = _Field(RESENT)  # at-least-once: records sent again to a restarted consumer
    received = _Field(RECEIVED)
    gaps = _Field(GAPS)  # messages missing in the sequence, as seen by the receiver
    decode_errors = _Field(DECODE_ERRORS)
    restarts_seen = _Field(RESTARTS_SEEN)  # the sender came back with a new incarnation
    redelivered = _Field(REDELIVERED)  # at-least-once: duplicates the receiver dropped by sequence
    acked = _Field(ACKED)  # at-least-once: records the producer holds no more (handled downstream)

    def as_dict(self) -> dict[str, int]:
        return {name: self.mv[self.base + i] for i, name in enumerate(EDGE_FIELDS)}


class NodeCounts:
    """A node instance's counts (messages in and out, and what it was handling)."""

    __slots__ = ("base", "mv")

    def __init__(self, mv: memoryview | None = None, base: int = 0) -> None:
        if mv is None:
            mv, base = memoryview(bytearray(8 * len(NODE_FIELDS))).cast("q"), 0
        self.mv, self.base = mv, base

    messages_in = _Field(N_IN)
    messages_out = _Field(N_OUT)
    handling = _Field(N_HANDLING)  # `in` when the last handler returned: in - handling are being handled
    handling_out = _Field(N_HANDLING_OUT)  # messages_out when that handler started
    conflated = _Field(N_CONFLATED)
    join_incomplete = _Field(N_JOIN_INCOMPLETE)
