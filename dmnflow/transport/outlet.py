"""The sending side: one ``Outlet`` per output port, a fan-out over its channels.

The outlet encodes a record once (the port's codec), counts it, mirrors it to a tap while
someone listens (``dmnflow echo``, a recording: ``runtime/taps.py``) and hands it to each
channel, one per bind of the port (``transport/channel.py``): what a full queue, the
delivery, coalescing and shared memory mean is each channel's own. End-of-stream is
acknowledged: ``send_eos`` starts it, ``flush_eos`` repeats it until every consumer has it.

Nothing a peer sends is trusted: control messages must carry the run's token and name an
edge of the socket they arrive on, and on push edges come from the consumer's own
(unguessable) identity. Anything else is junk, counted per socket and ignored.
"""

from __future__ import annotations

import time
from typing import Any

import zmq

from ..codecs import Encoder
from ..plan import BindPlan, EdgePlan
from .channel import Channel, channel_for
from .link import Link
from .pub import PubChannel
from .push import Flusher, PushChannel
from .stats import EdgeStats

__all__ = ["Flusher", "Outlet"]


class Outlet:
    """One output port: encodes once, then sends on every channel the port binds."""

    def __init__(self, link: Link, src: int, inc: int, node: str, port: str, binds: list[BindPlan],
                 edges: dict[int, EdgePlan], encoder: Encoder, *, accepted: int = -1,
                 shm_above: int | None = None, shm_slots: int = 16, room_poll_s: float = 0.01,
                 flusher: Flusher, own_flusher: bool = False, loans: bool = False) -> None:
        self.link = link
        self.src, self.inc, self.port = src, inc, port
        self.name = f"{node}.{port}"
        self.own_flusher = own_flusher  # closed with this output (else the worker's, closed by the worker)
        self.flusher = flusher
        self.topic_default = port.encode()
        self.encoder = encoder
        self.binds = binds
        self.edge_plans = edges
        self.mv = link.counters.mv
        self.accepted = accepted  # index of this output's "records handed to the outlet" count
        layout = link.counters.layout
        self.stats: dict[int, EdgeStats] = {e: EdgeStats(self.mv, layout.edge(e)) for e in edges}
        self.ended = False
        self.feedback = {e for e, p in edges.items() if p.feedback}
        self.loans = loans  # the codec sends an array's own buffer: ``alloc`` may lend shared-memory slots
        self.tap: Any = None  # a TapPoint while the output is mirrored (runtime/taps.py)
        room_ms = max(1, round(room_poll_s * 1000))  # a blocked send looks at its consumers this often
        self.channels: list[Channel] = [
            channel_for(link, bind, [edges[e] for e in bind.edges], src=src, inc=inc, what=f"output {self.name}",
                        shm_above=shm_above, shm_slots=shm_slots, room_ms=room_ms, flusher=flusher)
            for bind in binds]
        self.bound = {ch.bind.id: ch.address for ch in self.channels}  # bind id -> actual address
        self.held = [ch for ch in self.channels if ch.held]  # at-least-once: what consumers have not handled
        self.spun = [ch for ch in self.channels if ch.bind.transport in ("iox", "memory")]  # nothing to poll: ``spin``

    def sockets(self) -> list[zmq.Socket]:
        return [sock for ch in self.channels for sock in ch.sockets()]

    def channel_of(self, sock: zmq.Socket) -> Channel | None:
        """The channel whose consumers reach ``sock``."""
        return next((ch for ch in self.channels if ch.sock is sock), None)

    def alloc(self, shape: Any, dtype: Any) -> Any:
        """A writable numpy array for the node to fill and emit on this output. On an output
        whose one bind is a same-host push or pub edge with shared memory, and large enough
        for it, the array lies in a free slot, so emitting it sends only the slot's name;
        otherwise (or with every slot taken) it is ordinary memory and emit copies as usual.
        Bytes too: ``uint8`` on a raw port typed ``Buffer`` (or emit ``memoryview(array)`` on
        one typed ``memoryview``)."""
        import numpy as np  # only nodes that allocate tensors load numpy

        dtype = np.dtype(dtype)
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        count = 1
        for n in shape:
            count *= n
        alone = self.channels[0] if self.loans and len(self.channels) == 1 else None
        if not isinstance(alone, PushChannel | PubChannel) or alone.pool is None \
                or count * dtype.itemsize < alone.pool.threshold:
            return np.empty(shape, dtype)
        holder = alone.loan(count * dtype.itemsize)
        if holder is None:
            return np.empty(shape, dtype)
        return np.frombuffer(holder, dtype=dtype, count=count).reshape(shape)

    # -- readiness: every consumer edge said hello
    def waiting_for(self) -> set[int]:
        """Edges of this output whose consumer has not joined yet."""
        missing: set[int] = set()
        for ch in self.channels:
            missing |= ch.waiting_for()
        return missing

    def service(self, sock: zmq.Socket) -> None:
        """Read what consumers send to a bind: subscriptions and control messages."""
        for ch in self.channels:
            if ch.sock is sock:
                ch.service()

    def spin(self) -> None:
        """Read what consumers sent on the channels that have no socket to poll (iox edges):
        the spinning loop calls it every turn."""
        for ch in self.spun:
            ch.service()

    # -- the hot path
    def send(self, value: Any, topic: bytes | None, origin_ns: int, origin: int, event_time: Any,
             attrs: Any = None) -> None:
        meta, frames = self.encoder(value)
        topic = topic if topic is not None else self.topic_default
        now = time.time_ns()
        if self.accepted >= 0:
            self.mv[self.accepted] += 1
        tap = self.tap  # someone listens (dmnflow echo, a recording): runtime/taps.py
        if tap is not None and now >= tap.due:
            tap.send(topic, meta, frames, origin_ns, origin, now, event_time, attrs)
        for ch in self.channels:
            ch.send(topic, meta, frames, origin_ns, origin, now, event_time, attrs)

    def flush(self) -> None:
        """Send the records waiting to be coalesced (the worker calls it at the end of each turn)."""
        for ch in self.channels:
            ch.flush()

    def send_eos(self) -> None:
        """Start ending the stream: ``flush_eos`` repeats the end until every consumer has it."""
        self.flush()  # the end follows every record
        self.ended = True
        for ch in self.channels:
            ch.end()
        if self.tap is not None:
            self.tap.eos()
        self.flush_eos()

    def flush_eos(self) -> bool:
        """Send end-of-stream again to consumers that have not acknowledged it; True when all have."""
        done = True
        for ch in self.channels:
            done &= ch.flush_eos(self.feedback)
        return done

    def close(self) -> None:
        if self.own_flusher:
            self.flusher.close()
        for ch in self.channels:
            ch.close()
