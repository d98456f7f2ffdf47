"""Recording chosen outputs of a run to an MCAP file (``launch --record FILE --edges a.b,c.d``).

Each recorded output's worker mirrors every record to a PUSH socket in the run directory
from before the sources start (``runtime/taps.py``); the recorder, a thread in the
supervisor's process, reads them and writes one MCAP message per record, in an encoding
Foxglove and any MCAP reader open (docs/observe.md, "The file"):

- one channel per output and topic, ``/<node>.<port>`` (``/<node>.<port>/<topic>`` when the
  topic is not the port's name), message encoding ``json`` with a ``jsonschema`` schema made
  from the port's type; channel metadata ``output``, ``topic``, ``codec``, ``type``, ``value``
  (``plain``, ``tensor`` or ``bytes``);
- each message a JSON object: ``value`` (the record as the consumer decodes it: a tensor as
  ``{dtype, shape, data}`` with its bytes in base64, bytes as base64; what JSON cannot hold
  as it is, tagged so that it comes back identical: ``{"$float": "nan"}``, ``{"$bytes": ...}``,
  ``{"$map": [[key, value], ...]}`` for a mapping whose keys are not all text),
  ``event_time``, ``attrs``, ``origin_ns``, ``send_ns`` (where the record has them),
  ``recorded_ns`` (when the recorder got it), ``count`` (the output's running count);
  ``log_time`` is the record's event time where that is an epoch time in ns (an int from
  1973 on), else when it was recorded; ``publish_time`` when the node emitted it, ``sequence`` the count;
- a metadata record ``dmnflow`` with the graph's name, file and the recorded outputs.

``dmnflow replay`` (``observe/replay.py``) feeds such a file into a subgraph; files of
earlier versions (``cbor`` channels) replay too.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import threading
import time
from pathlib import Path
from typing import Any

import msgpack
import zmq

from ..codecs import get_codec
from ..plan import Plan
from ..runtime.observer import find_outputs, no_output_hint
from ..runtime.taps import record_endpoint
from ..transport.wire import ATTRS, EOS, EVENT_TIME, KIND, META, ORIGIN_NS, SEND_NS, SEQ, SRC

__all__ = ["Recorder", "channel_topic", "decode_value", "encode_record", "recordable_outputs", "value_schema"]

log = logging.getLogger("dmnflow.record")

CHUNK_BYTES = 256 << 10
IDLE_S = 2.0  # at the end: stop waiting for outputs that never ended once nothing came for this long


def _needs() -> tuple[Any, Any]:
    from .session import ObserveError

    try:
        from mcap.writer import CompressionType, Writer
    except ImportError:
        raise ObserveError("--record needs mcap: pip install 'dmnflow[observe]'") from None
    return Writer, CompressionType


def recordable_outputs(plan: Plan, refs: list[str] | None) -> list[tuple[str, str]]:
    """The output instances ``refs`` (``node.port``; all of them when None) name, in plan order.

    Raises:
        ObserveError: a ref names no output of the plan, or an output whose codec is pickle.
    """
    from .session import ObserveError

    every = [(n.name, o.port) for n in plan.nodes for o in n.outputs]
    codec = {(n.name, o.port): o.codec for n in plan.nodes for o in n.outputs}
    if refs is None:
        chosen = [key for key in every if codec[key] != "pickle"]
    else:
        chosen = []
        for ref in refs:
            found = find_outputs(plan, ref)
            if not found:
                raise ObserveError(f"--edges {ref!r}: the graph has no output {ref!r}; {no_output_hint(plan, ref)}")
            for key in found:
                if codec[key] == "pickle":
                    raise ObserveError(f"--edges {ref!r}: {key[0]}.{key[1]} is pickled, which is not recorded; "
                                       "give the output another codec (msgpack, tensor, ...)")
                if key not in chosen:
                    chosen.append(key)
    return [key for key in every if key in chosen]


def channel_topic(node: str, port: str, topic: str) -> str:
    return f"/{node}.{port}" if topic == port else f"/{node}.{port}/{topic}"


def _plain(value: Any) -> Any:
    """``value`` as JSON holds it, tagged where JSON alone would lose it (see the module docstring)."""
    if value is None or isinstance(value, bool | str | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"$float": repr(value)}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in value):
            return {k: _plain(v) for k, v in value.items()}
        return {"$map": [[_plain(k), _plain(v)] for k, v in value.items()]}
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$bytes": base64.b64encode(value).decode("ascii")}
    if _is_array(value):
        return {"$tensor": _tensor(value)}
    raise TypeError(f"a {type(value).__name__} cannot be written to the recording")


def _unplain(value: Any) -> Any:
    """``_plain`` undone: the value as it was recorded."""
    if isinstance(value, list):
        return [_unplain(v) for v in value]
    if isinstance(value, dict):
        if len(value) == 1:
            (tag, inner), = value.items()
            if tag == "$float":
                return float(inner)
            if tag == "$bytes":
                return base64.b64decode(inner)
            if tag == "$map":
                return {_key(_unplain(k)): _unplain(v) for k, v in inner}
            if tag == "$tensor":
                return _array(inner)
        return {k: _unplain(v) for k, v in value.items()}
    return value


def _key(key: Any) -> Any:
    return tuple(key) if isinstance(key, list) else key  # (a msgpack map's array key decodes as a tuple)


def _is_array(value: Any) -> bool:
    return hasattr(value, "dtype") and hasattr(value, "shape") and hasattr(value, "tobytes")


def _tensor(value: Any) -> dict[str, Any]:
    return {"dtype": str(value.dtype), "shape": list(value.shape),
            "data": base64.b64encode(value.tobytes()).decode("ascii")}


def _array(tensor: dict[str, Any]) -> Any:
    import numpy as np

    return np.frombuffer(base64.b64decode(tensor["data"]), dtype=tensor["dtype"]).reshape(tensor["shape"])


def encode_record(value: Any, header: list[Any], recorded_ns: int) -> tuple[bytes, str]:
    """A record as the JSON object the file holds, and its value kind (plain, tensor or bytes)."""
    if _is_array(value):
        kind, value = "tensor", _tensor(value)
    elif isinstance(value, bytes | bytearray | memoryview):
        kind, value = "bytes", base64.b64encode(value).decode("ascii")
    else:
        kind, value = "plain", _plain(value)
    envelope: dict[str, Any] = {"value": value}
    for key, field in (("event_time", EVENT_TIME), ("attrs", ATTRS), ("origin_ns", ORIGIN_NS), ("send_ns", SEND_NS)):
        if header[field] is not None:
            envelope[key] = _plain(header[field])
    envelope["recorded_ns"] = recorded_ns
    envelope["count"] = header[SEQ]
    return json.dumps(envelope, separators=(",", ":"), allow_nan=False).encode(), kind


def decode_value(data: bytes, kind: str) -> dict[str, Any]:
    """A message of a ``json`` channel back as its envelope, the value as it was recorded."""
    env = json.loads(data)
    value = env.get("value")
    if kind == "tensor":
        env["value"] = _array(value)
    elif kind == "bytes":
        env["value"] = base64.b64decode(value)
    else:
        env["value"] = _unplain(value)
    for key in ("event_time", "attrs"):
        if key in env:
            env[key] = _unplain(env[key])
    return env


_SCALARS = {"int": {"type": "integer"}, "str": {"type": "string"}, "bool": {"type": "boolean"},
            "dict": {"type": "object"}, "list": {"type": "array"}, "tuple": {"type": "array"},
            "float": {"anyOf": [{"type": "number"}, {"type": "object", "properties": {"$float": {"type": "string"}},
                                                      "required": ["$float"]}]}}


def value_schema(output: str, type_text: str, kind: str) -> dict[str, Any]:
    """The JSON Schema of a recorded output's messages: the envelope, its ``value`` from the
    port's type (``type_text``, as the plan writes it) and the value kind the records have."""
    if kind == "tensor":
        value: dict[str, Any] = {
            "type": "object", "description": f"a {type_text}: dtype, shape and the bytes of the array, row-major",
            "properties": {"dtype": {"type": "string"}, "shape": {"type": "array", "items": {"type": "integer"}},
                           "data": {"type": "string", "contentEncoding": "base64"}},
            "required": ["dtype", "shape", "data"]}
    elif kind == "bytes":
        value = {"type": "string", "contentEncoding": "base64", "description": type_text}
    else:
        value = {**_SCALARS.get(type_text.split("[")[0].lower(), {}), "description": type_text}
    integer = {"type": "integer"}
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": output, "type": "object",
            "properties": {"value": value,
                           "event_time": {"description": "the record's event time, as the graph carries it"},
                           "attrs": {"type": "object"}, "origin_ns": integer, "send_ns": integer,
                           "recorded_ns": integer, "count": integer},
            "required": ["value", "recorded_ns", "count"]}


# An epoch time in ns from 1973 on (echo's floor for ns, observe/listen.py): a smaller int is a
# count or an index (the quickstart counter's 0, 1, 2...), which would put the file at 1970.
EPOCH_NS_FROM = 10**17


def _log_time(event_time: Any, recorded_ns: int) -> int:
    """Where a message sits on the file's time line: its event time when that is a time (epoch
    ns), else when it was recorded."""
    if type(event_time) is int and EPOCH_NS_FROM <= event_time < 1 << 64:
        return event_time
    return recorded_ns


class Recorder:
    """Writes the records of ``outputs`` to ``path`` while the run lasts."""

    def __init__(self, path: str | Path, plan: Plan, outputs: list[tuple[str, str]]) -> None:
        self.Writer, self.Compression = _needs()
        self.path = Path(path)
        self.plan = plan
        self.outputs = outputs
        ids = plan.output_ids()
        self.src = {ids[key]: key for key in outputs}
        self.decoders = {}
        self.codec = {}
        for n in plan.nodes:
            for o in n.outputs:
                if (n.name, o.port) in outputs:
                    self.codec[ids[(n.name, o.port)]] = o.codec
                    self.decoders[ids[(n.name, o.port)]] = get_codec(o.codec).decoder(_port_type(plan, n.name, o.port))
        self.channels: dict[tuple[int, bytes], int] = {}
        self.schemas: dict[tuple[int, str], int] = {}
        self.ended: set[int] = set()
        self.messages = 0
        self.errors = 0
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        self.failure: BaseException | None = None

    def open(self, run_dir: str) -> None:
        """Connect to the recorded outputs' sockets (bound by the workers soon) and start writing."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "wb")  # noqa: SIM115 - closed in close()
        # small chunks: a run killed before the file is finished loses at most its last one
        self.writer = self.Writer(self.file, chunk_size=CHUNK_BYTES, compression=self.Compression.ZSTD)
        self.writer.start(profile="", library="dmnflow")
        self.writer.add_metadata("dmnflow", {"graph": self.plan.graph, "file": self.plan.file,
                                             "outputs": ",".join(f"{n}.{p}" for n, p in self.outputs)})
        self.zctx = zmq.Context()
        self.socks = []
        for src in self.src:
            sock = self.zctx.socket(zmq.PULL)
            sock.setsockopt(zmq.RCVHWM, self.plan.limits.viewer_hwm)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(record_endpoint(run_dir, src))
            self.socks.append(sock)
        self.thread = threading.Thread(target=self._run, name="dmnflow-recorder", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        poller = zmq.Poller()
        for sock in self.socks:
            poller.register(sock, zmq.POLLIN)
        idle_since = None
        try:
            while True:
                events = dict(poller.poll(100))
                if not events:
                    if self.stopping.is_set():
                        now = time.monotonic()
                        idle_since = idle_since or now
                        if len(self.ended) == len(self.src) or now - idle_since > IDLE_S:
                            return
                    continue
                idle_since = None
                for sock in events:
                    while True:
                        try:
                            frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        self._write(frames)
        except BaseException as exc:  # reported by close(): the run itself goes on
            self.failure = exc

    def _write(self, frames: list[Any]) -> None:
        topic = frames[0].bytes
        header = msgpack.unpackb(frames[1].bytes, raw=False, strict_map_key=False)
        src = header[SRC]
        if header[KIND] == EOS:
            self.ended.add(src)
            return
        node, port = self.src[src]
        recorded_ns = time.time_ns()
        try:
            value = self.decoders[src](header[META], [f.buffer for f in frames[2:]])
            data, kind = encode_record(value, header, recorded_ns)
        except Exception as exc:
            self.errors += 1
            if self.errors == 1:
                log.warning("the recording skips a record of %s.%s it cannot write: %s", node, port, exc)
            return
        key = (src, topic)
        channel = self.channels.get(key)
        if channel is None:
            text = topic.decode("utf-8", "replace")
            type_text = _port_type_text(self.plan, node, port)
            schema = self.schemas.get((src, kind))
            if schema is None:
                schema = self.schemas[(src, kind)] = self.writer.register_schema(
                    f"{node}.{port}", "jsonschema",
                    json.dumps(value_schema(f"{node}.{port}", type_text, kind)).encode())
            channel = self.channels[key] = self.writer.register_channel(
                channel_topic(node, port, text), "json", schema,
                {"output": f"{node}.{port}", "topic": text, "codec": self.codec[src], "value": kind,
                 "type": type_text})
        count = header[SEQ]
        self.writer.add_message(channel, log_time=_log_time(header[EVENT_TIME], recorded_ns), data=data,
                                publish_time=header[SEND_NS] or recorded_ns, sequence=count & 0xFFFFFFFF)
        self.messages += 1

    def close(self) -> None:
        """After the workers: read what is still queued, then finish the file (its summary and index)."""
        if self.thread is None:
            return
        self.stopping.set()
        self.thread.join()
        self.thread = None
        for sock in self.socks:
            sock.close()
        self.zctx.term()
        self.writer.finish()
        self.file.close()
        if self.failure is not None:
            raise self.failure
        missing = [f"{self.src[s][0]}.{self.src[s][1]}" for s in self.src if s not in self.ended]
        if missing:
            log.warning("the recording %s may miss the end of %s (it never ended)", self.path, ", ".join(missing))
        log.info("recorded %d messages of %d outputs to %s", self.messages, len(self.src), self.path)


def _port_type(plan: Plan, node: str, port: str) -> Any:
    """The decoder's type for an output: any (the recorder decodes what the codec carries)."""
    from typing import Any as _Any

    return _Any


def _port_type_text(plan: Plan, node: str, port: str) -> str:
    for o in plan.node(node).outputs:
        if o.port == port:
            return o.type
    return "any"
