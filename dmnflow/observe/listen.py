"""Reading a running graph's output through its tap: ``dmnflow echo``, ``hz`` and ``bw``.

A ``Listener`` takes a lease on the output's tap (renewed every second while it reads;
``runtime/taps.py`` says what the worker does), subscribes to every instance's tap socket
and decodes each record with the output's codec, as its consumers would. Each record's
header carries the output's running count, so a reader knows how many records it did not
get (the tap samples above ``max_rate``): ``hz`` gives the exact rate from the counts, and
the spread of the periods between the consecutive records it saw.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import secrets
import statistics
import sys
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import msgpack
import zmq

from ..codecs import get_codec
from ..errors import ControlError
from ..plan import Plan
from ..runtime import protocol
from ..runtime.admin import RunInfo, ask
from ..spec.units import format_duration
from ..transport.wire import ATTRS, EOS, EVENT_TIME, KIND, META, SEND_NS, SEQ, SRC

__all__ = ["Listener", "Record", "bw", "echo", "format_event_time", "hz", "outputs"]

RENEW_S = 1.0


class Record:
    """One record read from a tap."""

    __slots__ = ("count", "event_time", "output", "send_ns", "size", "skipped", "topic", "value", "attrs")

    def __init__(self, output: str, topic: str, header: list[Any], value: Any, size: int, skipped: int) -> None:
        self.output, self.topic, self.value, self.size, self.skipped = output, topic, value, size, skipped
        self.count, self.send_ns = header[SEQ], header[SEND_NS]
        self.event_time, self.attrs = header[EVENT_TIME], header[ATTRS]


class Listener:
    """Records of one output (every instance of a replicated node) while it is open."""

    def __init__(self, run: RunInfo, output: str, *, max_rate: int = 100, topic: str = "") -> None:
        self.run, self.ref, self.max_rate, self.topic = run, output, max_rate, topic
        self.client = secrets.token_hex(8)
        plan = Plan.from_json(Path(run.run_dir, "plan.json").read_bytes())
        answer = self._lease(True)
        self.outputs = {o["id"]: f"{o['node']}.{o['port']}" for o in answer["outputs"]}
        codec = {ids: o.codec for (n, p), ids in plan.output_ids().items() for o in plan.node(n).outputs
                 if o.port == p}
        self.decoders = {src: get_codec(codec[src]).decoder(Any) for src in self.outputs}
        self.zctx = zmq.Context()
        self.sub = self.zctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.RCVHWM, plan.limits.viewer_hwm)
        self.sub.subscribe(topic.encode())
        self.sub.subscribe(b"\x00eos")
        for o in answer["outputs"]:
            self.sub.connect(o["endpoint"])
        self.renewed = time.monotonic()
        self.last: dict[int, int] = {}
        self.ended: set[int] = set()

    def _lease(self, on: bool) -> dict[str, Any]:
        answer = ask(self.run, protocol.TAP, {"output": self.ref, "client": self.client, "max_rate": self.max_rate,
                                       "topic": self.topic, "on": on})
        if not answer.ok:
            raise ControlError(str(answer.message))
        return answer.message

    def records(self, timeout_s: float | None = None) -> Iterator[Record]:
        """Records as they come, until every instance's output ended or ``timeout_s`` passed."""
        end = None if timeout_s is None else time.monotonic() + timeout_s
        while len(self.ended) < len(self.outputs):
            now = time.monotonic()
            if end is not None and now >= end:
                return
            if now - self.renewed >= RENEW_S:
                self._lease(True)
                self.renewed = now
            if not self.sub.poll(100):
                continue
            frames = self.sub.recv_multipart(copy=False)
            header = msgpack.unpackb(frames[1].bytes, raw=False, strict_map_key=False)
            src = header[SRC]
            if src not in self.outputs:
                continue
            if header[KIND] == EOS:
                self.ended.add(src)
                continue
            skipped = header[SEQ] - self.last[src] - 1 if src in self.last else 0
            self.last[src] = header[SEQ]
            value = self.decoders[src](header[META], [f.buffer for f in frames[2:]])
            yield Record(self.outputs[src], frames[0].bytes.decode("utf-8", "replace"), header, value,
                         sum(len(f.buffer) for f in frames[2:]), max(0, skipped))

    def close(self) -> None:
        with contextlib.suppress(ControlError):  # the run ended meanwhile: its taps went with it
            self._lease(False)
        self.sub.close()
        self.zctx.term()


def _plain(value: Any) -> Any:
    if hasattr(value, "dtype") and hasattr(value, "shape") and hasattr(value, "tolist"):
        if getattr(value, "size", 0) > 16:
            flat = value.reshape(-1)[:8].tolist()
            return {"dtype": str(value.dtype), "shape": list(value.shape), "head": flat}
        return value.tolist()
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
        return data.decode("utf-8", "replace") if len(data) <= 64 else f"<{len(data)} bytes>"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return str(value)


def outputs(run: RunInfo) -> list[dict[str, Any]]:
    """Every output of a running graph (ROS 2's ``topic list -t``, with rates): ``node.port``,
    its type and codec, the inputs it feeds, its rate over the live window (msg/s, as its
    consumers receive it) and the messages sent so far. Rates are None while the run starts,
    and for an output nothing in the graph reads."""
    plan = Plan.from_json(Path(run.run_dir, "plan.json").read_bytes())
    answer = ask(run, protocol.SNAPSHOT, {"history": False})
    report = answer.message.get("report", {}) if answer.ok and isinstance(answer.message, dict) else {}
    live = (report.get("live") or {}).get("edges") or {}
    sent = {e["id"]: e.get("sent", 0) for e in report.get("edges", [])}
    rows = []
    for node in plan.nodes:
        for out in node.outputs:
            edges = [e for e in plan.edges if e.src == node.name and e.src_port == out.port]
            rates = [r["msg_s"] for e in edges if (r := live.get(e.id) or live.get(str(e.id))) and
                     r.get("msg_s") is not None]
            rows.append({"output": f"{node.name}.{out.port}", "type": out.type, "codec": out.codec,
                         "to": [f"{e.dst}.{e.dst_port}" for e in edges], "msg_s": max(rates) if rates else None,
                         "sent": max((sent.get(e.id, 0) for e in edges), default=None) if report else None})
    return rows


# epoch timestamps by their size: ns, us, ms or s since 1970 for a date between ~1973 and ~2286
_EPOCH_UNITS = ((1e17, 1e9), (1e14, 1e6), (1e11, 1e3), (1e8, 1.0))


def format_event_time(value: Any) -> str:
    """An event time as a person reads it: an epoch timestamp (ns, us, ms or s, told by its size)
    as a UTC date, with the time of day when it has one (``2016-01-04``,
    ``2016-01-04 14:30:00.25Z``), a ``YYYYMMDD`` int as that date; anything else as it is."""
    if isinstance(value, int) and not isinstance(value, bool) and 19000101 <= value <= 29991231:
        with contextlib.suppress(ValueError):  # 20160104: a bar's date as an int (docs/wire.md)
            return datetime.date(value // 10000, value // 100 % 100, value % 100).isoformat()
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        for floor, per_s in _EPOCH_UNITS:
            if floor <= abs(value) < floor * 1e4:
                whole, frac = divmod(int(value), int(per_s)) if per_s > 1 else (int(value), 0)
                try:
                    when = datetime.datetime.fromtimestamp(whole, datetime.UTC)
                except (OverflowError, OSError, ValueError):
                    break
                if not frac and when.time() == datetime.time():
                    return when.date().isoformat()
                seconds = f"{when.second + frac / per_s:06.3f}".rstrip("0").rstrip(".")
                return f"{when:%Y-%m-%d %H:%M}:{seconds.zfill(2)}Z"
    return str(value)


def echo(run: RunInfo, output: str, out: IO[str] = sys.stdout, *, count: int | None = None, topic: str = "",
         max_rate: int = 100, as_json: bool = False, duration_s: float | None = None) -> int:
    """Print ``output``'s records as they come; the number printed."""
    listener = Listener(run, output, max_rate=max_rate, topic=topic)
    printed = 0
    try:
        for rec in listener.records(duration_s):
            if as_json:
                out.write(json.dumps({"output": rec.output, "topic": rec.topic, "count": rec.count,
                                      "event_time": rec.event_time, "attrs": rec.attrs, "value": rec.value},
                                     default=_plain) + "\n")
            else:
                skipped = f"  ({rec.skipped:,} not shown)" if rec.skipped else ""
                et = f"  event time {format_event_time(rec.event_time)}" if rec.event_time is not None else ""
                out.write(f"--- {rec.output}  {rec.topic}  #{rec.count:,}{et}{skipped}\n")
                out.write(json.dumps(rec.value, default=_plain) + "\n")
            out.flush()
            printed += 1
            if count is not None and printed >= count:
                break
    finally:
        listener.close()
    return printed


class _Window:
    """The records of the last ``window_s`` seconds of the producer's clock."""

    def __init__(self, window_s: float) -> None:
        self.window_ns = int(window_s * 1e9)
        self.recs: deque[tuple[int, int, int, int]] = deque()  # (send_ns, count, size, skipped)

    def add(self, rec: Record) -> None:
        self.recs.append((rec.send_ns, rec.count, rec.size, rec.skipped))
        while self.recs and rec.send_ns - self.recs[0][0] > self.window_ns:
            self.recs.popleft()

    def rate(self) -> float | None:
        """Records per second, exact (from the output's counts), over the window."""
        if len(self.recs) < 2:
            return None
        (t0, c0, *_), (t1, c1, *_) = self.recs[0], self.recs[-1]
        return (c1 - c0) / ((t1 - t0) / 1e9) if t1 > t0 else None

    def periods(self) -> list[float]:
        """Seconds between consecutive records that were both seen."""
        out = []
        for (t0, c0, *_), (t1, c1, *_) in zip(self.recs, list(self.recs)[1:], strict=False):
            if c1 == c0 + 1:
                out.append((t1 - t0) / 1e9)
        return out


def _bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"


def _stats_loop(run: RunInfo, output: str, out: IO[str], window_s: float, topic: str, max_rate: int,
                duration_s: float | None, line: Any) -> int:
    listener = Listener(run, output, max_rate=max_rate, topic=topic)
    windows: dict[str, _Window] = {}
    lines = 0
    next_print = time.monotonic() + 1.0
    end = None if duration_s is None else time.monotonic() + duration_s
    try:
        while end is None or time.monotonic() < end:
            for rec in listener.records(timeout_s=0.2):
                windows.setdefault(rec.output, _Window(window_s)).add(rec)
            if len(listener.ended) == len(listener.outputs):
                break
            if time.monotonic() >= next_print:
                next_print += 1.0
                for name, win in sorted(windows.items()):
                    text = line(win)
                    if text:
                        prefix = f"{name}: " if len(listener.outputs) > 1 else ""
                        out.write(prefix + text + "\n")
                        lines += 1
                out.flush()
    finally:
        listener.close()
    return lines


def hz(run: RunInfo, output: str, out: IO[str] = sys.stdout, *, window_s: float = 10.0, topic: str = "",
       max_rate: int = 1000, duration_s: float | None = None) -> int:
    """Print ``output``'s rate every second (ROS 2's ``topic hz``); the lines printed."""
    def line(win: _Window) -> str:
        rate = win.rate()
        if rate is None:
            return "no new records"
        periods = win.periods()
        text = f"average rate: {rate:,.3f}"
        if len(periods) >= 2:
            text += (f"\n\tmin: {format_duration(min(periods))} max: {format_duration(max(periods))} "
                     f"std dev: {format_duration(statistics.pstdev(periods))} window: {len(periods) + 1}")
        elif any(s for *_, s in win.recs):
            text += f"\n\t(sampled: the tap forwards at most {max_rate}/s, so periods are not measured)"
        return text
    return _stats_loop(run, output, out, window_s, topic, max_rate, duration_s, line)


def bw(run: RunInfo, output: str, out: IO[str] = sys.stdout, *, window_s: float = 10.0, topic: str = "",
       max_rate: int = 1000, duration_s: float | None = None) -> int:
    """Print ``output``'s bandwidth every second (payload bytes, as the codec makes them); the lines printed."""
    def line(win: _Window) -> str:
        rate = win.rate()
        sizes = [s for _, _, s, _ in win.recs]
        if rate is None or not sizes:
            return "no new records"
        mean = sum(sizes) / len(sizes)
        return (f"average: {_bytes(mean * rate)}/s\n\tmean: {_bytes(mean)} min: {_bytes(min(sizes))} "
                f"max: {_bytes(max(sizes))} window: {len(sizes)}")
    return _stats_loop(run, output, out, window_s, topic, max_rate, duration_s, line)
