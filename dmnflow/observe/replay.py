"""Replaying a recording into a subgraph: ``dmnflow replay FILE GRAPH --into NODE``.

The graph is loaded as usual, then cut: the ``--into`` nodes and everything downstream of
them stay, every other node goes, and a ``Replayer`` source takes the place of the
producers the kept nodes read from outside the cut: one output per recorded output they
read, with that output's codec and topics, so each input gets the same values it got in
the recorded run. Those outputs must be in the recording (``launch --record --edges``).
The replayer sends the records in event-time order (ties in the order they were
recorded), as fast as the graph takes them (``--speed 0``, a backtest's way) or at the
recorded pace (``--speed 1``, from the records' send times).

Replaying a deterministic run's recorded inputs into the same nodes gives the same
results: the test records a backtest's model predictions and signals, replays them into
risk -> portfolio -> execution and gets identical accounts.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..compiler import compile_graph
from ..node import Node, Output, Ports
from ..plan import Plan
from ..spec import LoadedGraph, NodeEntry, NodeSpec, OutputSpec, Override

__all__ = ["Recording", "Replayer", "read_records", "recording_info", "replay_plan"]

REPLAY_NODE = "replay"


class Recording:
    """What a recording holds: per recorded output, its channels, codec and message count."""

    def __init__(self, path: str | Path) -> None:
        from .session import ObserveError

        self.path = Path(path)
        try:
            from mcap.reader import make_reader
        except ImportError:
            raise ObserveError("replay needs mcap: pip install 'dmnflow[observe]'") from None
        try:
            with open(self.path, "rb") as f:
                try:
                    summary = make_reader(f).get_summary()
                except Exception:  # cut short (a killed run): read what it holds, record by record
                    summary = None
            if summary is None:
                channels, counts = {}, {}
                for channel, _ in _scan(self.path):
                    channels[channel.id] = channel
                    counts[channel.id] = counts.get(channel.id, 0) + 1
            else:
                channels = dict(summary.channels)
                counts = dict(summary.statistics.channel_message_counts) if summary.statistics else {}
        except FileNotFoundError:
            raise ObserveError(f"{self.path}: no such file") from None
        except Exception as exc:  # not an MCAP file, or a broken one
            raise ObserveError(f"{self.path}: not a recording dmnflow can read ({type(exc).__name__}: {exc})") \
                from None
        self.outputs: dict[str, dict[str, Any]] = {}
        for cid, ch in channels.items():
            output = ch.metadata.get("output")
            if not output:
                continue
            entry = self.outputs.setdefault(output, {"codec": ch.metadata.get("codec", "msgpack"), "topics": [],
                                                     "messages": 0})
            entry["topics"].append(ch.topic)
            entry["messages"] += counts.get(cid, 0)


def recording_info(path: str | Path) -> dict[str, Any]:
    """What ``dmnflow info FILE.mcap`` shows, as ``ros2 bag info`` does: the file's size, the
    graph it was recorded from, its messages, time range (log time, ns since the epoch) and
    duration, and per channel its topic, output, encoding, schema and count. A file cut short
    (a killed run) is read record by record, up to the cut.

    Raises:
        ObserveError: no such file, not an MCAP file, or the mcap package missing.
    """
    from .session import ObserveError

    recording = Recording(path)  # the same checks and errors as replay
    from mcap.reader import make_reader

    graph: dict[str, str] = {}
    channels: dict[int, Any] = {}
    schemas: dict[int, Any] = {}
    counts: dict[int, int] = {}
    start = end = None
    complete = True
    try:
        with open(recording.path, "rb") as f:
            reader = make_reader(f)
            summary = reader.get_summary()
            if summary is None or summary.statistics is None:
                raise ValueError("no summary")
            channels, schemas = dict(summary.channels), dict(summary.schemas)
            counts = dict(summary.statistics.channel_message_counts)
            if summary.statistics.message_count:
                start, end = summary.statistics.message_start_time, summary.statistics.message_end_time
            graph = next((dict(m.metadata) for m in reader.iter_metadata() if m.name == "dmnflow"), {})
    except Exception:  # cut short: every record up to the cut
        complete = False
        for channel, message in _scan(recording.path):
            channels[channel.id] = channel
            counts[channel.id] = counts.get(channel.id, 0) + 1
            start = message.log_time if start is None else min(start, message.log_time)
            end = message.log_time if end is None else max(end, message.log_time)
    if not channels and not recording.path.stat().st_size:
        raise ObserveError(f"{recording.path}: an empty file, not a recording")
    rows = []
    for cid, ch in sorted(channels.items()):
        schema = schemas.get(ch.schema_id)
        rows.append({"topic": ch.topic, "output": ch.metadata.get("output", ""), "encoding": ch.message_encoding,
                     "schema": f"{schema.name} ({schema.encoding})" if schema is not None else "-",
                     "schema_name": schema.name if schema is not None else "",
                     "schema_encoding": schema.encoding if schema is not None else "",
                     "type": ch.metadata.get("type", ""), "codec": ch.metadata.get("codec", ""),
                     "messages": counts.get(cid, 0)})
    return {"file": str(recording.path), "bytes": recording.path.stat().st_size, "complete": complete,
            "graph": graph.get("graph", ""), "graph_file": graph.get("file", ""),
            "messages": sum(counts.values()), "start_ns": start, "end_ns": end,
            "duration_s": (end - start) / 1e9 if start is not None and end is not None else None,
            "channels": rows}


def _scan(path: str | Path) -> Iterator[tuple[Any, Any]]:
    """Every (channel, message) of the file in the order written; a file cut short (its writer
    was killed) yields what it holds up to the cut."""
    from mcap.records import Channel, Message
    from mcap.stream_reader import StreamReader

    channels: dict[int, Any] = {}
    with open(path, "rb") as f:
        records = StreamReader(f).records
        while True:
            try:
                record = next(records)
            except StopIteration:
                return
            except Exception:  # the cut: the rest of the last chunk is lost
                return
            if isinstance(record, Channel):
                channels[record.id] = record
            elif isinstance(record, Message) and record.channel_id in channels:
                yield channels[record.channel_id], record


def _port_name(output: str) -> str:
    return re.sub(r"\W+", "_", output).strip("_") or "out"


def _instances(ref: str, recorded: dict[str, Any]) -> list[str]:
    """The recorded outputs a reference ``node.port`` reads: that instance, or every replica."""
    node, _, port = ref.removeprefix("/").rpartition(".")
    if ref.removeprefix("/") in recorded:
        return [ref.removeprefix("/")]
    pattern = re.compile(re.escape(node) + r"\[\d+\]\." + re.escape(port) + "$")
    return sorted(o for o in recorded if pattern.match(o))


def _resolve(graph: LoadedGraph, name: str) -> str:
    from .session import ObserveError

    if name in graph.nodes:
        return name
    hits = [n for n in graph.nodes if n.split("/")[-1] == name]
    if len(hits) == 1:
        return hits[0]
    if hits:
        raise ObserveError(f"--into {name!r}: several nodes have that name ({', '.join(hits)}); name one")
    raise ObserveError(f"--into {name!r}: the graph has no such node; nodes: {', '.join(sorted(graph.nodes))}")


def cut(graph: LoadedGraph, into: Sequence[str], recording: Recording, speed: float) -> None:
    """Keep ``into`` and what is downstream of it; feed it from the recording (see the module docstring)."""
    from .session import ObserveError

    starts = [_resolve(graph, n) for n in into]
    consumers: dict[str, set[str]] = {}
    for name, entry in graph.nodes.items():
        for inp in entry.spec.inputs.values():
            for ref in inp.from_:
                consumers.setdefault(ref.removeprefix("/").rpartition(".")[0].split("[")[0], set()).add(name)
    keep, todo = set(starts), list(starts)
    while todo:
        for nxt in consumers.get(todo.pop(), ()):
            if nxt not in keep:
                keep.add(nxt)
                todo.append(nxt)
    feeds: dict[str, list[str]] = {}  # replayer port -> recorded outputs
    codecs: dict[str, str] = {}
    for name in sorted(keep):
        entry = graph.nodes[name]
        inputs = {}
        for port, inp in entry.spec.inputs.items():
            refs = []
            for ref in inp.from_:
                producer = ref.removeprefix("/").rpartition(".")[0].split("[")[0]
                if producer in keep:
                    refs.append(ref)
                    continue
                recorded = _instances(ref, recording.outputs)
                if not recorded:
                    raise ObserveError(f"{name}.{port} reads {ref.removeprefix('/')}, which {recording.path} does "
                                       f"not hold; record it (launch --record FILE --edges "
                                       f"{ref.removeprefix('/')},...) or replay into a node upstream of it")
                out_port = _port_name(ref.removeprefix("/"))
                feeds[out_port] = recorded
                codecs[out_port] = recording.outputs[recorded[0]]["codec"]
                refs.append(f"/{REPLAY_NODE}.{out_port}")
            inputs[port] = inp.model_copy(update={"from_": refs})
        graph.nodes[name] = NodeEntry(name, entry.spec.model_copy(update={"inputs": inputs}), entry.defaults,
                                      entry.base_dir, entry.invalid)
    for name in [n for n in graph.nodes if n not in keep]:
        del graph.nodes[name]
    if REPLAY_NODE in graph.nodes:
        raise ObserveError(f"the graph has a node named {REPLAY_NODE!r}, the name the replayer takes")
    first = graph.nodes[starts[0]]
    spec = NodeSpec(uses="dmnflow.observe.replay:Replayer", layer="replay",
                    description=f"replays {recording.path.name}",
                    params={"file": str(recording.path.resolve()), "outputs": feeds, "speed": speed},
                    outputs={port: OutputSpec(codec=codecs[port]) for port in feeds})
    graph.nodes[REPLAY_NODE] = NodeEntry(REPLAY_NODE, spec, first.defaults, first.base_dir)
    graph.name = f"{graph.name}-replay"


def replay_plan(recording: str | Path, graph: str | Path, into: Sequence[str],
                overrides: Sequence[str | Override] = (), *, profile: str | None = None, speed: float = 0.0,
                models: bool = True) -> Plan:
    """The plan that replays ``recording`` into ``into`` of ``graph`` (see the module docstring).

    Raises:
        ObserveError: the recording cannot be read, a node is unknown, a needed stream was not recorded.
        GraphError: the graph (or the cut one) does not compile.
    """
    rec = Recording(recording)
    failure: list[BaseException] = []

    def transform(loaded: LoadedGraph) -> None:
        try:
            cut(loaded, into, rec, speed)
        except Exception as exc:  # raised after the compiler's own checks would have hidden it
            failure.append(exc)

    try:
        plan = compile_graph(graph, overrides, profile=profile, models=models, transform=transform)
    except Exception:
        if failure:
            raise failure[0] from None
        raise
    if failure:
        raise failure[0]
    return plan


def read_records(path: str | Path, outputs: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Every record of ``outputs`` (all when None) in the file, in event-time order (ties: as
    recorded): dicts with ``output``, ``topic``, ``value``, ``event_time``, ``attrs``, ``send_ns``.
    Reads the ``json`` channels ``launch --record`` writes and the ``cbor`` ones it wrote before."""
    from .record import decode_value

    out: list[dict[str, Any]] = []
    for channel, message in _scan(path):
        output = channel.metadata.get("output")
        if output is None or (outputs is not None and output not in outputs):
            continue
        kind = channel.metadata.get("value", "plain")
        env = decode_value(message.data, kind) if channel.message_encoding == "json" else _cbor(message.data, kind)
        out.append({"output": output, "topic": channel.metadata.get("topic", ""), "value": env["value"],
                    "event_time": env.get("event_time"), "attrs": env.get("attrs"),
                    "send_ns": env.get("send_ns") or message.publish_time, "index": len(out)})
    times = [r["event_time"] for r in out]
    numbers = all(isinstance(t, int | float) and not isinstance(t, bool) for t in times)
    if times and (numbers or all(isinstance(t, str) for t in times)):
        out.sort(key=lambda r: (r["event_time"], r["index"]))
    return out  # mixed or missing event times: in the order they were recorded


def _cbor(data: bytes, kind: str) -> dict[str, Any]:
    """A message of a recording of an earlier version (``cbor`` channels)."""
    import cbor2

    env = cbor2.loads(data)
    if kind == "tensor":
        import numpy as np

        value = env["value"]
        env["value"] = np.frombuffer(value["data"], dtype=value["dtype"]).reshape(value["shape"])
    return env


class Replayer(Node):
    """Sends a recording's records on the outputs that stand for the recorded ones (``dmnflow replay``)."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        file: str = Field(description="the MCAP file `launch --record` wrote")
        outputs: dict[str, list[str]] = Field(description="output port -> the recorded outputs it sends")
        speed: float = Field(0.0, ge=0, description="0: as fast as the graph takes them; 1: at the recorded pace")

    @classmethod
    def ports(cls, params: BaseModel) -> Ports:
        assert isinstance(params, Replayer.Params)
        return Ports({}, {port: Output(Any, doc=f"records of {', '.join(rec)}")
                          for port, rec in params.outputs.items()})

    def setup(self, ctx: Any) -> None:
        p = ctx.params
        port_of = {rec: port for port, recs in p.outputs.items() for rec in recs}
        self.records = [(port_of[r["output"]], r) for r in read_records(p.file, list(port_of))]
        self.sent = 0

    def progress(self) -> tuple[int, int, str]:
        return self.sent, len(self.records), "records"

    def run(self, ctx: Any) -> Iterator[None]:
        speed = ctx.params.speed
        start = time.perf_counter()
        first = self.records[0][1]["send_ns"] if self.records else 0
        for port, rec in self.records:
            if speed > 0 and rec["send_ns"]:
                delay = (rec["send_ns"] - first) / 1e9 / speed - (time.perf_counter() - start)
                if delay > 0:
                    time.sleep(delay)
            ctx.emit(port, rec["value"], topic=rec["topic"], event_time=rec["event_time"], attrs=rec["attrs"])
            self.sent += 1
            yield None
