"""Recording chosen outputs of a run to an MCAP file (``launch --record FILE --edges a.b,c.d``).

Each recorded output's worker mirrors every record to a PUSH socket in the run directory
from before the sources start (``observe/taps.py``); the recorder, a thread in the
supervisor's process, reads them and writes one MCAP message per record. The file opens
in Foxglove and in any MCAP reader:

- one channel per output and topic, ``/<node>.<port>`` (``/<node>.<port>/<topic>`` when the
  topic is not the port's name), message encoding ``cbor`` (schemaless), channel metadata
  ``output``, ``topic``, ``codec``, ``type``, ``value`` (``plain``, or ``tensor``);
- each message's data a CBOR map: ``value`` (the record as the consumer decodes it; an
  array as ``{dtype, shape, data}``), ``event_time``, ``attrs``, ``origin_ns``, ``send_ns``,
  ``count`` (the output's running count of records); ``log_time`` is when the recorder got
  it, ``publish_time`` when the node emitted it, ``sequence`` the count;
- a metadata record ``dmnflow`` with the graph's name, file and the recorded outputs.

``dmnflow replay`` (``observe/replay.py``) feeds such a file into a subgraph.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import msgpack
import zmq

from ..codecs import get_codec
from ..plan import Plan
from ..transport.wire import ATTRS, EOS, EVENT_TIME, KIND, META, ORIGIN_NS, SEND_NS, SEQ, SRC
from .observer import find_outputs, no_output_hint
from .taps import record_endpoint

__all__ = ["Recorder", "channel_topic", "encode_record", "recordable_outputs"]

log = logging.getLogger("dmnflow.record")

CHUNK_BYTES = 256 << 10
IDLE_S = 2.0  # at the end: stop waiting for outputs that never ended once nothing came for this long


def _needs() -> tuple[Any, Any]:
    from .session import ObserveError

    try:
        import cbor2
        from mcap.writer import CompressionType, Writer
    except ImportError:
        raise ObserveError("--record needs mcap and cbor2: pip install 'dmnflow[observe]'") from None
    return cbor2, (Writer, CompressionType)


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


def encode_record(cbor2: Any, value: Any, header: list[Any]) -> tuple[bytes, str]:
    """A record as the CBOR envelope the file holds, and its value kind (plain or tensor)."""
    kind = "plain"
    if hasattr(value, "dtype") and hasattr(value, "shape") and hasattr(value, "tobytes"):
        value = {"dtype": str(value.dtype), "shape": list(value.shape), "data": value.tobytes()}
        kind = "tensor"
    elif isinstance(value, memoryview):
        value = value.tobytes()
    envelope = {"value": value, "event_time": header[EVENT_TIME], "attrs": header[ATTRS],
                "origin_ns": header[ORIGIN_NS], "send_ns": header[SEND_NS], "count": header[SEQ]}
    return cbor2.dumps(envelope), kind


class Recorder:
    """Writes the records of ``outputs`` to ``path`` while the run lasts."""

    def __init__(self, path: str | Path, plan: Plan, outputs: list[tuple[str, str]]) -> None:
        self.cbor2, (self.Writer, self.Compression) = _needs()
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
            sock.setsockopt(zmq.RCVHWM, 10_000)
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
        try:
            value = self.decoders[src](header[META], [f.buffer for f in frames[2:]])
            data, kind = encode_record(self.cbor2, value, header)
        except Exception as exc:
            self.errors += 1
            if self.errors == 1:
                log.warning("the recording skips a record of %s.%s it cannot write: %s", node, port, exc)
            return
        key = (src, topic)
        channel = self.channels.get(key)
        if channel is None:
            text = topic.decode("utf-8", "replace")
            channel = self.channels[key] = self.writer.register_channel(
                channel_topic(node, port, text), "cbor", 0,
                {"output": f"{node}.{port}", "topic": text, "codec": self.codec[src], "value": kind,
                 "type": _port_type_text(self.plan, node, port)})
        count = header[SEQ]
        self.writer.add_message(channel, log_time=time.time_ns(), data=data, publish_time=header[SEND_NS] or 0,
                                sequence=count & 0xFFFFFFFF)
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
