"""Taps: an output mirrored to a socket of its own in the run directory, only while someone
listens, and the clients that read it (``dmnflow echo``, ``hz``, ``bw``).

The data plane never changes: a tap is not an edge. ``dmnflow echo RUN node.port`` asks the
supervisor (admin socket, verb ``tap``) for a lease on the output, renewed every second
while the client runs; the supervisor tells the worker (control verb ``tap``) to mirror the
output to an ipc PUB at ``{run_dir}/tap.<output id>``, and to stop once the last lease has
lapsed (a client that was killed stops renewing). Mirroring costs the producer one
comparison per record while no copy is due: a live tap forwards at most ``max_rate``
records a second (its first record at once), so a flat-out output is sampled, never slowed
by a terminal; ``max_rate: 0`` forwards every record. Records go on in dmnflow's wire format
(``docs/wire.md``), with one difference: ``seq`` is the output's running count of records
(all topics), so a reader knows exactly how many it did not get.

Recording (``launch --record``) uses a PUSH socket per recorded output instead,
``{run_dir}/rec.<output id>``, bound before the sources start and sending every record
(blocking: a recording that drops is no recording); the recorder in the supervisor's
process reads it (``observe/record.py``).

The worker side (``Taps``) needs only zmq, msgpack and the transport: every worker loads it.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import msgpack
import zmq

from ..transport.link import send_parts
from ..transport.wire import DATA, EOS, EOS_TOPIC

__all__ = ["TapPoint", "Taps", "record_endpoint", "tap_endpoint"]



def tap_endpoint(run_dir: str, output: int) -> str:
    return f"ipc://{run_dir}/tap.{output}"


def record_endpoint(run_dir: str, output: int) -> str:
    return f"ipc://{run_dir}/rec.{output}"


class TapPoint:
    """What one output mirrors: to the recorder (every record), to live readers (sampled).

    ``due`` (ns since the epoch) is when the next record is to be copied: the outlet
    compares its send time with it and calls ``send`` only then."""

    __slots__ = ("accepted", "due", "gap_ns", "inc", "live", "live_next", "mv", "packer", "prefix", "record", "src")

    NEVER = 1 << 62

    def __init__(self, src: int, inc: int, mv: Any, accepted: int) -> None:
        self.src, self.inc = src, inc
        self.mv, self.accepted = mv, accepted
        self.packer = msgpack.Packer(use_bin_type=True)
        self.live: zmq.Socket | None = None
        self.record: zmq.Socket | None = None
        self.prefix = b""
        self.gap_ns = 0
        self.live_next = 0
        self.due = self.NEVER

    def retime(self) -> None:
        """``due`` after a change: every record while recording, else the live tap's next."""
        if self.record is not None:
            self.due = 0
        elif self.live is not None:
            self.due = self.live_next
        else:
            self.due = self.NEVER

    def _header(self, kind: int, origin_ns: int, origin: int, now: int, event_time: Any, meta: Any,
                attrs: Any) -> bytes:
        count = self.mv[self.accepted] if self.accepted >= 0 else 0
        return self.packer.pack((kind, self.src, self.inc, count, origin_ns, origin, now, event_time, meta, attrs))

    def send(self, topic: bytes, meta: Any, frames: list[Any], origin_ns: int, origin: int, now: int,
             event_time: Any, attrs: Any) -> None:
        live = self.live
        copy = live is not None and now >= self.live_next and (not self.prefix or topic.startswith(self.prefix))
        if self.record is None and not copy:
            return  # a record of another topic: the next one is looked at again
        header = self._header(DATA, origin_ns, origin, now, event_time, meta, attrs)
        if self.record is not None:
            send_parts(self.record, [topic, header, *frames], 0)  # every record, waiting for the recorder if it must
        if copy:
            with contextlib.suppress(zmq.Again):
                send_parts(live, [topic, header, *frames], zmq.NOBLOCK)  # type: ignore[arg-type]
            self.live_next = now + self.gap_ns
            if self.record is None:
                self.due = self.live_next

    def eos(self) -> None:
        """The output ended: readers and the recorder learn it, with its final count."""
        header = self._header(EOS, 0, -1, 0, None, None, None)
        for sock in (self.record, self.live):
            if sock is not None:
                with contextlib.suppress(zmq.ZMQError):
                    sock.send_multipart([EOS_TOPIC, header], 0 if sock is self.record else zmq.NOBLOCK)


class Taps:
    """A worker's tap points: created on demand, one per tapped output."""

    def __init__(self, zctx: zmq.Context, run_dir: str, mv: Any, live_hwm: int, record_hwm: int) -> None:
        self.zctx, self.run_dir, self.mv = zctx, run_dir, mv
        # the plan's limits: records a slow live reader may be behind before the tap drops for it
        # (a PUB drops), and records queued for the recorder before the worker waits for it
        self.live_hwm, self.record_hwm = live_hwm, record_hwm
        self.points: dict[int, TapPoint] = {}

    def _point(self, outlet: Any) -> TapPoint:
        point = self.points.get(outlet.src)
        if point is None:
            point = self.points[outlet.src] = TapPoint(outlet.src, outlet.inc, self.mv, outlet.accepted)
            outlet.tap = point
        return point

    def record(self, outlet: Any) -> None:
        """Mirror every record of ``outlet`` to the recorder, from before the sources start."""
        point = self._point(outlet)
        sock = self.zctx.socket(zmq.PUSH)
        sock.setsockopt(zmq.SNDHWM, self.record_hwm)
        sock.setsockopt(zmq.LINGER, -1)  # what is queued reaches the recorder before the worker exits
        sock.bind(record_endpoint(self.run_dir, outlet.src))
        point.record = sock
        point.retime()

    def set(self, outlet: Any, settings: dict[str, Any]) -> None:
        """Start (``settings``: ``max_rate`` records/s, 0 every one; ``topic`` prefix) or, with
        ``{}``, stop mirroring ``outlet`` to live readers."""
        point = self._point(outlet)
        if not settings:
            if point.live is not None:
                point.live.close(0)
                point.live = None
                with contextlib.suppress(OSError):  # libzmq leaves the ipc file behind
                    os.unlink(tap_endpoint(self.run_dir, outlet.src).removeprefix("ipc://"))
            point.retime()
            return
        if point.live is None:
            sock = self.zctx.socket(zmq.PUB)
            sock.setsockopt(zmq.SNDHWM, self.live_hwm)
            sock.setsockopt(zmq.LINGER, 0)
            sock.bind(tap_endpoint(self.run_dir, outlet.src))
            point.live = sock
        rate = settings.get("max_rate", 0)
        point.gap_ns = int(1e9 / rate) if isinstance(rate, int | float) and rate > 0 else 0
        topic = settings.get("topic", "")
        point.prefix = topic.encode() if isinstance(topic, str) else b""
        point.live_next = 0
        point.retime()

    def close(self) -> None:
        for point in self.points.values():
            for sock in (point.live, point.record):
                if sock is not None:
                    sock.close()
            point.live = point.record = None
