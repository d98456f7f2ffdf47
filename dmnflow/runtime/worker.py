"""A worker process: hosts the nodes of one process of the plan and runs their loop.

Started only by the supervisor: forked by its zygote (``runtime/zygote.py``), or as
``python -m dmnflow.runtime.worker RUN_DIR PROCESS INC PID`` when there is none.
It dies with the supervisor (parent-death signal), ignores Ctrl-C (the supervisor drives
shutdown), and talks to the supervisor over a DEALER socket:

    worker -> supervisor: bound {endpoint: actual}, connected, ready, hb {...}, done {...}, error text,
                          reply token node ok result
    supervisor -> worker: connect {endpoint: actual}, start, stop, rehello, report,
                          command node name args token

A node ends when every (non-feedback) input has received end-of-stream from every
producer, or, for a source, when its ``run`` generator returns; it then runs
``teardown`` and sends end-of-stream on each output. The process exits when all its
nodes have ended.
"""

from __future__ import annotations

import contextlib
import ctypes
import heapq
import inspect
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import zmq

from ..codecs import Limits, get_codec
from ..errors import ConfigError, NodeError, TransportError
from ..importing import load_object
from ..node import Context, Message
from ..observe.taps import Taps
from ..plan import RUN_DIR, NodePlan, Plan
from ..transport import Counters, Flusher, Histogram, Inlet, Link, Outlet
from ..transport.security import Curve, KeyError_, Watch, load_curve
from ..transport.stats import (
    ACKED,
    N_CONFLATED,
    N_HANDLING,
    N_HANDLING_OUT,
    N_IN,
    N_JOIN_INCOMPLETE,
    N_OUT,
    SENT,
    Layout,
)
from ..transport.wire import read_token, shm_tag
from . import protocol
from .files import counters_path, layout_of, read_control, read_endpoints

LINGER_S = 5.0
SOURCE_STEPS = 64  # items taken from a source's generator per turn of the loop


def _die_with_parent(supervisor: int) -> None:
    """Ask Linux to SIGKILL this process when the supervisor dies, so no worker is orphaned."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != supervisor:  # it died before we asked (we were reparented)
        os._exit(1)


def _pin(cpus: list[int]) -> None:
    """Run this process on ``cpus`` only; numeric libraries get one thread per pinned core."""
    try:
        os.sched_setaffinity(0, cpus)
    except OSError as exc:  # a plan compiled for another machine: run, but say so
        sys.stderr.write(f"dmnflow worker (pid {os.getpid()}): cannot pin to cores {cpus}: {exc}; running unpinned\n")
        return
    threads = str(len(cpus))
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, threads)  # before the node's modules import numpy/torch


class _Join:
    """Aligns inputs by event time: releases an event time once every joined input has
    delivered it, in event-time order, so the node sees the same calls on every run.

    An event time is given up on (and counted) when an input that lacks it has moved past it
    (each producer's stream arrives in event-time order: an input fed by several producers,
    such as the replicas of a node sharing the work, has moved past a time once every one
    of them has), has ended, or after ``timeout_s`` (live graphs).
    """

    def __init__(self, ports: list[str], timeout_s: float | None) -> None:
        self.ports = ports
        self.timeout_s = timeout_s
        self.pending: dict[Any, dict[str, Any]] = {}
        self.first_seen: dict[Any, float] = {}
        self.times: list[Any] = []  # a heap of the pending event times
        self.producers: dict[str, set[int]] = {p: set() for p in ports}  # filled by the worker
        self.latest: dict[tuple[str, int], Any] = {}  # (port, producer) -> its newest event time
        self.ended: set[str] = set()
        self.incomplete = 0

    def add(self, port: str, src: int, event_time: Any, value: Any) -> list[tuple[Any, dict[str, Any]]]:
        group = self.pending.get(event_time)
        if group is None:
            group = self.pending[event_time] = {}
            self.first_seen[event_time] = time.monotonic()
            heapq.heappush(self.times, event_time)
        group[port] = value
        self.latest[(port, src)] = event_time
        return self.release()

    def passed(self, port: str, t: Any) -> bool:
        """Whether every producer of ``port`` has sent something later than ``t``."""
        latest = self.latest
        producers = self.producers[port] or {src for p, src in latest if p == port}
        return bool(producers) and all((port, s) in latest and latest[(port, s)] > t for s in producers)

    def release(self, final: bool = False) -> list[tuple[Any, dict[str, Any]]]:
        ready = []
        now = time.monotonic()
        while self.times:
            t = self.times[0]
            group = self.pending[t]
            if len(group) < len(self.ports):
                missing = [p for p in self.ports if p not in group]
                gone = final or any(p in self.ended or self.passed(p, t) for p in missing)
                late = self.timeout_s is not None and now - self.first_seen[t] > self.timeout_s
                if not (gone or late):
                    break
                self.incomplete += 1
            else:
                ready.append((t, group))
            heapq.heappop(self.times)
            del self.pending[t], self.first_seen[t]
        return ready


class _StopSource(Exception):
    """Raised inside a plain-loop source's ``emit`` when the graph is being stopped."""


class _Batch:
    """Messages of one input waiting to be handed over together (``batch: {max, wait}``)."""

    __slots__ = ("max", "wait_s", "values", "headers", "due")

    def __init__(self, max_: int, wait_s: float) -> None:
        self.max, self.wait_s = max_, wait_s
        self.values: list[Any] = []
        self.headers: list[list[Any]] = []
        self.due = 0.0


def _message(port: str, header: list[Any]) -> Message:
    """The ``ctx.message`` view of a received header (the inlet appends the topic to it)."""
    return Message(port, header[10].decode("utf-8", "replace"), header[3], header[4], header[7], header[9], header[5])


class NodeRunner:
    """One node instance inside the worker: its object, context, handlers and counters."""

    def __init__(self, plan_node: NodePlan, index: int, counters: Counters | None = None) -> None:
        self.plan = plan_node
        self.index = index
        if counters is None:  # on its own (dmnflow.testing): counts in private memory
            counters = Counters(_one_node_layout(index))
        self.mv = counters.mv
        self.nbase = counters.layout.node(index)
        self.cls = load_object(plan_node.uses)
        params = self.cls.Params.model_validate(plan_node.params)
        self.ports = self.cls.ports(params)
        self.outlets: dict[str, Outlet] = {}  # filled by the worker as it binds
        self.node = self.cls()
        self.ctx = Context(plan_node.name, params, self._emit, replica=plan_node.replica, model=plan_node.model,
                           alloc=self._alloc)
        self.origin_ns = 0
        self.origin = -1
        self.e2e: dict[int, Histogram] = {}  # per origin source, at sinks
        self.topic_bytes, self.topic = b"", ""  # the last topic seen, decoded
        self.is_sink = not plan_node.outputs
        self.handlers = {i.port: getattr(self.node, f"on_{i.port}", None) for i in plan_node.inputs}
        self.on_message = getattr(self.node, "on_message", None)
        self.gen: Iterator[Any] | None = None
        self.loop_source = False  # a source whose run() is a plain loop, not a generator
        self.stopping = False
        self.check_control: Callable[[], None] = lambda: None
        self.next_check = 0.0
        self.done = False
        self.join = None if plan_node.join is None else _Join(plan_node.join.inputs, plan_node.join.timeout_s)
        self.batches = {i.port: _Batch(i.batch.max, i.batch.wait_s) for i in plan_node.inputs if i.batch}
        self.latest = {i.port for i in plan_node.inputs if i.policy == "latest"}
        self.alo_inlets: dict[str, Inlet] = {}  # at-least-once inputs: say `done` once handled
        self.custody: list[Any] = []  # at-least-once: (inlet, header, out marks) waiting for downstream
        self.alo_routers: list[Any] = []  # this node's at-least-once outputs (their consumers' `done`)
        now = time.monotonic()
        self.timers = [[now + period, period, getattr(self.node, f"on_{name}"), name]
                       for name, period in plan_node.timers.items()]
        # inputs that end it: a node whose inputs are all feedback (a loop its timer drives) runs until stopped
        self.forward_inputs = any(not i.feedback for i in plan_node.inputs)

    def setup(self) -> None:
        if hasattr(self.node, "setup"):
            self.node.setup(self.ctx)
        if self.plan.source:
            run = self.node.run  # type: ignore[attr-defined]
            if inspect.isgeneratorfunction(run):
                self.gen = run(self.ctx)  # creating it runs nothing yet
            else:
                self.loop_source = True  # a plain loop calling ctx.emit: it runs once the graph starts

    def run_loop(self, check_control: Callable[[], None]) -> None:
        """Run a plain-loop source to its end; its ``emit`` looks at the control socket every
        ~20 ms, and a stop ends the loop from inside ``emit``."""
        self.check_control = check_control
        try:
            result = self.node.run(self.ctx)  # type: ignore[attr-defined]
            for item in result if hasattr(result, "__next__") else ():
                self._emit_yielded(item)
        except _StopSource:
            pass
        finally:
            self.loop_source = False

    def _emit(self, port: str, value: Any, topic: str | None, event_time: Any, attrs: Any = None,
              of: Message | None = None) -> None:
        if self.loop_source:
            now = time.monotonic()
            if now >= self.next_check:
                self.next_check = now + 0.02
                self.check_control()
            if self.stopping:
                raise _StopSource
        outlet = self.outlets.get(port)
        if outlet is None:
            raise KeyError(f"{self.cls.__name__} has no output {port!r}; outputs: {sorted(self.outlets)}")
        if of is not None and of.origin >= 0:  # derived from one message of a batch
            origin_ns, origin = of.origin_ns, of.origin
            if event_time is None:
                event_time = of.event_time
        elif self.origin < 0:  # a source (or a timer): the data enters the graph now
            origin_ns, origin = time.time_ns(), self.index
        else:
            origin_ns, origin = self.origin_ns, self.origin
            if event_time is None:
                event_time = self.ctx.message.event_time
        self.mv[self.nbase + N_OUT] += 1  # before the outlet has it: a kill between the two is a loss, counted
        outlet.send(value, topic.encode() if topic is not None else None, origin_ns, origin, event_time, attrs)

    def _alloc(self, port: str, shape: Any, dtype: Any) -> Any:
        outlet = self.outlets.get(port)
        if outlet is None:
            raise KeyError(f"{self.cls.__name__} has no output {port!r}; outputs: {sorted(self.outlets)}")
        return outlet.alloc(shape, dtype)

    def deliver(self, port: str, value: Any, header: list[Any]) -> None:
        batch = self.batches.get(port)
        if batch is not None:
            batch.values.append(value)
            batch.headers.append(header)
            if len(batch.values) == 1:
                batch.due = time.monotonic() + batch.wait_s
            if len(batch.values) >= batch.max:
                self.flush(port, batch)
            return
        self.handle(port, value, header)

    def flush(self, port: str, batch: _Batch) -> None:
        """Hand the handler the batch as one list; ``ctx.batch`` holds each value's message,
        and ``ctx.message`` is the last one's."""
        values, headers = batch.values, batch.headers
        batch.values, batch.headers = [], []
        self.ctx.batch = [_message(port, h) for h in headers]
        try:
            self.handle(port, values, headers[-1], len(values))
        finally:
            self.ctx.batch = []

    def flush_due(self, now: float, force: bool = False) -> None:
        for port, batch in self.batches.items():
            if batch.values and (force or now >= batch.due):
                self.flush(port, batch)

    def handle(self, port: str, value: Any, header: list[Any], count: int = 1) -> None:
        message = self.ctx.message
        topic = header[10]
        if topic != self.topic_bytes:  # most messages repeat the topic before them
            self.topic_bytes, self.topic = topic, topic.decode("utf-8", "replace")
        message.port, message.seq, message.topic = port, header[3], self.topic
        message.origin_ns, message.event_time, message.attrs = header[4], header[7], header[9]
        self.origin_ns = message.origin_ns
        self.origin = message.origin = header[5]
        mv, nbase = self.mv, self.nbase
        mv[nbase + N_IN] += count
        # what a kill would interrupt: the report counts a message whose handler emitted nothing yet as lost
        mv[nbase + N_HANDLING_OUT] = mv[nbase + N_OUT]
        mv[nbase + N_HANDLING] = count
        try:
            if self.join is not None and port in self.join.ports:
                for event_time, values in self.join.add(port, header[1], header[7], (value, header)):
                    self.call_join(event_time, values)
            elif (handler := self.handlers.get(port)) is not None:
                handler(value, self.ctx)
            else:
                self.on_message(port, value, self.ctx)  # type: ignore[misc]
        except Exception as exc:
            raise NodeError(f"{type(exc).__name__}: {exc}", node=self.plan.name, port=port,
                            seq=header[3]) from exc
        mv[nbase + N_HANDLING] = 0
        inlet = self.alo_inlets.get(port) if self.alo_inlets else None
        if inlet is not None:
            self.handled(inlet, header)
        if self.is_sink and header[5] >= 0:
            hist = self.e2e.get(header[5])
            if hist is None:
                hist = self.e2e[header[5]] = Histogram()
            hist.add(time.time_ns() - header[4])
        self.origin = -1

    def handled(self, inlet: Inlet, header: list[Any]) -> None:
        """At-least-once: a record is done once its handler returned and everything it emitted
        on this node's at-least-once outputs is handled downstream too (their `done` came)."""
        if not self.alo_routers:
            inlet.handled(header)
            return
        marks = [(router.mv, router.base[edge] + ACKED, router.mv[router.base[edge] + SENT])
                 for router in self.alo_routers for edge in router.held]
        self.custody.append((inlet, header, marks))

    def release_custody(self) -> None:
        """Say `done` upstream for every record whose outputs downstream has handled."""
        custody = self.custody
        released = 0
        for inlet, header, marks in custody:
            if not all(mv[acked] >= sent for mv, acked, sent in marks):
                break
            inlet.handled(header)
            released += 1
        if released:
            del custody[:released]

    def call_join(self, event_time: Any, group: dict[str, tuple[Any, list[Any]]]) -> None:
        """``on_join`` with one value per input; ``ctx.joined`` holds the message behind each."""
        self.ctx.message.port, self.ctx.message.event_time = "", event_time
        self.ctx.joined = {port: _message(port, header) for port, (_, header) in group.items()}
        try:
            self.node.on_join({port: value for port, (value, _) in group.items()}, self.ctx)  # type: ignore
        except Exception as exc:
            raise NodeError(f"{type(exc).__name__} in on_join at event time {event_time!r}: {exc}",
                            node=self.plan.name, port="join") from exc

    def input_ended(self, port: str) -> None:
        """An input delivered its end-of-stream: its batch goes out; event times still waiting
        for it never complete."""
        batch = self.batches.get(port)
        if batch is not None and batch.values:
            self.flush(port, batch)
        if self.join is not None and port in self.join.ports and port not in self.join.ended:
            self.join.ended.add(port)
            for event_time, values in self.join.release():
                self.call_join(event_time, values)

    def fire_timers(self, now: float) -> float:
        """Call the timers that are due; the time until the next one is due."""
        for timer in self.timers:
            if now >= timer[0]:
                timer[0] = max(timer[0] + timer[1], now)  # late ticks are skipped, not bunched
                try:
                    timer[2](self.ctx)
                except Exception as exc:
                    raise NodeError(f"{type(exc).__name__} in timer on_{timer[3]}: {exc}", node=self.plan.name,
                                    port=f"timer {timer[3]}") from exc
        return min(t[0] for t in self.timers) - now

    def step(self, steps: int) -> None:
        """Take up to ``steps`` items from the source's generator; end the stream when it returns."""
        for _ in range(steps):
            try:
                item = next(self.gen)  # type: ignore[arg-type]
            except StopIteration:
                self.gen = None
                return
            self._emit_yielded(item)

    def _emit_yielded(self, item: Any) -> None:
        """What a source yields: ``(port, value)``, ``(port, value, event_time)`` or None (a turn)."""
        if item is not None:
            self._emit(item[0], item[1], None, item[2] if len(item) > 2 else None)

    def stop_source(self) -> None:
        self.stopping = True
        if self.gen is not None:
            self.gen.close()  # type: ignore[attr-defined]  # made by a generator function
            self.gen = None

    def finish(self) -> None:
        """The node's inputs (or its source) ended: teardown, then end-of-stream downstream."""
        self.done = True
        self.flush_due(0.0, force=True)
        if self.join is not None:
            for event_time, values in self.join.release(final=True):
                self.call_join(event_time, values)
        if hasattr(self.node, "teardown"):
            self.node.teardown(self.ctx)
        for outlet in self.outlets.values():
            outlet.send_eos()

    @property
    def messages_in(self) -> int:
        return self.mv[self.nbase + N_IN]

    @property
    def messages_out(self) -> int:
        return self.mv[self.nbase + N_OUT]

    def stats(self) -> dict[str, Any]:
        """What a heartbeat carries of this node; its counts are in the counters file."""
        if self.join is not None:
            self.mv[self.nbase + N_JOIN_INCOMPLETE] = self.join.incomplete
        summary = getattr(self.node, "summary", None)
        progress = getattr(self.node, "progress", None)
        return {"e2e": {origin: h.to_sparse() for origin, h in self.e2e.items()},
                "summary": summary() if callable(summary) else None,
                "progress": _progress(progress()) if callable(progress) else None}

    def on_budget(self, event: dict[str, Any]) -> None:
        """A latency budget was missed, or is met again: the node's ``on_budget``, if it has one."""
        handler = getattr(self.node, "on_budget", None)
        if handler is None or self.done:
            return
        try:
            handler(event, self.ctx)
        except Exception as exc:
            raise NodeError(f"{type(exc).__name__} in on_budget: {exc}", node=self.plan.name,
                            port="on_budget") from exc


def _progress(value: Any) -> dict[str, Any] | None:
    """A node's ``progress()``: ``(done, total)`` or ``(done, total, unit)``, total None when unknown."""
    if not isinstance(value, tuple | list) or len(value) not in (2, 3):
        return None
    done, total = value[0], value[1]
    if not isinstance(done, int | float) or not (total is None or isinstance(total, int | float)):
        return None
    return {"done": done, "total": total, "unit": str(value[2]) if len(value) == 3 else ""}


def _rss() -> int:
    """This process's resident memory, bytes (0 where /proc is not there)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _one_node_layout(index: int) -> Layout:
    return Layout(edges=0, nodes=index + 1, outputs=0, binds=0)


class Worker:
    """The nodes of one process, their sockets, and the control channel to the supervisor."""

    def __init__(self, run_dir: str, process: str, inc: int, plan: Plan | None = None) -> None:
        self.run_dir = run_dir
        self.process = process
        self.inc = inc
        self.plan = plan if plan is not None else Plan.from_json(Path(run_dir, "plan.json").read_bytes())
        self.proc = next(p for p in self.plan.processes if p.name == process)
        if self.proc.cpus:  # before the zmq context: its I/O threads inherit the pins
            _pin(self.proc.cpus)
        self.token = read_token(run_dir)
        self.zctx = zmq.Context()
        self.flusher = Flusher()  # push outputs coalesce bursts; its lock guards their sockets
        self.control = self.zctx.socket(zmq.DEALER)
        self.control.setsockopt(zmq.LINGER, int(LINGER_S * 1000))
        self.control.setsockopt(zmq.IDENTITY, protocol.worker_identity(self.token, process))
        control, server_key = read_control(run_dir)
        if control.startswith("tcp://") and self.plan.security.curve is not None:  # a supervisor on another host
            self.curve().dial(self.control, server_key)
        self.control.connect(control)
        self.counters = Counters(layout_of(self.plan), counters_path(run_dir, process, inc))
        self.link = Link(self.zctx, run_dir, self.token, shm_tag(self.token), self.counters)
        self.watch = Watch()
        self.auth: Any = None
        self.outlets: dict[tuple[str, str], Outlet] = {}
        self.inlets: list[tuple[NodeRunner, Inlet]] = []
        self.runners: list[NodeRunner] = []
        self.started = False  # the supervisor said start: failures are no longer start-up failures
        self.stopping = False
        self.next_beat = time.monotonic() + 1.0
        self.pending: list[tuple[Future[Any], Any, str]] = []  # commands still running: (future, token, node)
        self.refusals: list[str] = []  # CURVE handshakes our inputs' producers refused (start-up fails on them)
        self.taps = Taps(self.zctx, run_dir, self.counters.mv)  # outputs mirrored while someone listens

    def tell(self, *msg: Any) -> None:
        self.control.send(protocol.encode(*msg))

    def hear(self, timeout_ms: int | None) -> list[Any] | None:
        """The supervisor's next message (None if none came, or it was not one)."""
        if self.control.poll(timeout_ms):
            return protocol.decode(self.control.recv(), protocol.SUPERVISOR)
        return None

    def expect(self, kind: str) -> list[Any]:
        """Wait for the supervisor's ``kind`` message; a ``stop`` meanwhile ends the worker."""
        while True:
            msg = self.hear(100)
            if msg and msg[0] == kind:
                return msg
            if msg and msg[0] == protocol.STOP:
                raise SystemExit(0)
            self.check_refusals()

    def secure(self) -> None:
        """CURVE for a plan that asks for it: this host's keys, and the ZAP allow-list started
        before any tcp socket binds (without a ZAP handler libzmq admits any client key)."""
        security = self.plan.security
        if security.curve is None:
            return
        self.link.curve = self.curve()
        if security.keys:  # a keypair per host: dial each producer with its host's public key
            self.link.server_keys = {b.id: security.keys[n.process] for n in self.plan.nodes
                                     if n.process in security.keys for o in n.outputs for b in o.binds}
        tcp_binds = any(b.transport == "tcp" for n in self.plan.nodes if n.process == self.process
                        for o in n.outputs for b in o.binds)
        if tcp_binds:
            self.auth = self.link.curve.authenticator(self.zctx)

    def curve(self) -> Curve:
        """This process's keypair (``security.keys`` names it where hosts differ) and the admitted keys."""
        security = self.plan.security
        try:
            return load_curve(str(security.curve).replace(RUN_DIR, self.run_dir),
                              security.keys.get(self.process, security.key))
        except KeyError_ as exc:
            raise TransportError(f"CURVE keys: {exc}") from exc

    def run(self) -> int:
        index = {n.name: i for i, n in enumerate(self.plan.nodes)}
        ids = self.plan.output_ids()
        proc = self.proc
        self.secure()
        if self.inc > 0:  # a restarted worker takes back the addresses it had (automatic tcp ports)
            self.link.resolved.update(read_endpoints(self.run_dir))
        bound: dict[str, str] = {}
        layout = self.counters.layout
        for name in proc.nodes:
            runner = NodeRunner(self.plan.node(name), index[name], self.counters)
            for out in runner.plan.outputs:
                codec = get_codec(out.codec)
                encoder = codec.encoder(runner.ports.outputs[out.port].type, compress_above=out.compress_above)
                edges = {e: self.plan.edges[e] for b in out.binds for e in b.edges}
                outlet = Outlet(self.link, ids[(name, out.port)], self.inc, name, out.port, out.binds, edges,
                                encoder, accepted=layout.output(ids[(name, out.port)]), shm_above=out.shm_above,
                                shm_slots=out.shm_slots, room_poll_s=out.room_poll_s, flusher=self.flusher,
                                tensor=codec.shm)
                runner.outlets[out.port] = outlet
                runner.alo_routers += [r for r in outlet.routers if r.held]
                self.outlets[(name, out.port)] = outlet
                bound.update(outlet.bound)
                if f"{name}.{out.port}" in self.plan.record:  # launch --record: every record, from the start
                    self.taps.record(outlet)
            if any(name in b.sinks for b in self.plan.budgets):  # a path budget ends here: measure it
                runner.is_sink = True
            self.runners.append(runner)
        if self.link.curve is not None:
            for outlet in self.outlets.values():
                for sock in outlet.sockets():
                    self.watch.add(sock, f"output {outlet.name}", lambda _e, o=outlet, s=sock: self._refused(o, s))
        if proc.cpus and "torch" in sys.modules:  # imported by a node: one thread per pinned core
            sys.modules["torch"].set_num_threads(len(proc.cpus))
        self.tell(protocol.BOUND, bound)

        resolved = self.expect(protocol.CONNECT)[1]
        if not protocol.endpoints_ok(resolved):
            raise TransportError("the supervisor sent a malformed endpoint map")
        self.link.resolved.update(resolved)
        for runner in self.runners:
            declared = runner.ports
            for inp in runner.plan.inputs:
                edges = {c.edge: self.plan.edges[c.edge] for c in inp.connects}
                limits = Limits(max_bytes=inp.max_bytes)
                decoders = {e: get_codec(edge.codec).decoder(declared.inputs[inp.port].type, limits)
                            for e, edge in edges.items()}
                src_of_edge = {e: ids[(edge.src, edge.src_port)] for e, edge in edges.items()}
                inlet = Inlet(self.link, inp.port, runner.plan.name, inp.connects, src_of_edge, inp.topics,
                              inp.queue, decoders, feedback=inp.feedback, max_bytes=inp.max_bytes, inc=self.inc,
                              delivery=inp.delivery, read_batch=inp.read_batch,
                              zero_copy=any(get_codec(e.codec).zero_copy for e in edges.values()))
                self.inlets.append((runner, inlet))
                if inp.delivery == "at-least-once":
                    runner.alo_inlets[inp.port] = inlet
                if runner.join is not None and inp.port in runner.join.producers:
                    runner.join.producers[inp.port] = set(src_of_edge.values())
                if self.link.curve is not None:
                    for c in inp.connects:
                        if c.transport == "tcp":
                            sock = inlet._dialled[c.bind + f"#{c.edge}"][0]
                            self.watch.add(sock, f"input {runner.plan.name}.{inp.port}",
                                           lambda ev, c=c, r=runner, i=inp: self._rejected(c, r, i, ev))
        self.tell(protocol.CONNECTED)

        poller = zmq.Poller()
        poller.register(self.control, zmq.POLLIN)
        for mon in self.watch.monitors:
            poller.register(mon, zmq.POLLIN)
        outlet_of: dict[zmq.Socket, Outlet] = {}
        for outlet in self.outlets.values():
            for sock in outlet.sockets():
                poller.register(sock, zmq.POLLIN)
                outlet_of[sock] = outlet
        # wait until every consumer has joined every output: nothing is sent into the void
        while any(o.waiting_for() for o in self.outlets.values()):
            events = dict(poller.poll(200))
            for sock in events:
                if sock is self.control:
                    msg = self.hear(0)
                    if msg and msg[0] == protocol.STOP:
                        return 0
                elif sock in self.watch.monitors:
                    self.watch.read(sock)
                else:
                    outlet_of[sock].service(sock)
            self.check_refusals()
        for runner in self.runners:
            runner.setup()
        self.tell(protocol.READY)
        self.expect(protocol.START)
        self.started = True
        return self.loop(poller, outlet_of)

    def _refused(self, outlet: Outlet, sock: zmq.Socket) -> None:
        """A peer without an admitted key tried one of our tcp binds: counted on that socket."""
        for stream in outlet.streams:
            if stream.shared.sock is sock:
                stream.shared.refused()
                return
        for holder in [*outlet.pubs, *outlet.routers]:
            if holder.sock is sock:
                layout = self.counters.layout
                self.counters.mv[layout.bind(holder.bind.counter) + 1] += 1  # B_REFUSED
                return

    def _rejected(self, c: Any, runner: NodeRunner, inp: Any, event: dict[str, Any]) -> None:
        """The producer of one of our tcp inputs refused our key (or we refused its)."""
        edge = self.plan.edges[c.edge]
        key = self.plan.security.key or "?"
        self.refusals.append(f"edge {edge.src}.{edge.src_port} -> {edge.dst}.{edge.dst_port}: the CURVE handshake "
                             f"with {self.link.resolved.get(c.bind, c.endpoint)} failed (this host's key {key!r} "
                             "is not admitted there, or the server's key is not the one in our key directory)")

    def check_refusals(self) -> None:
        for mon in list(self.watch.monitors):
            self.watch.read(mon)
        if self.refusals:
            raise TransportError(self.refusals[0])

    def loop(self, poller: zmq.Poller, outlet_of: dict[zmq.Socket, Outlet]) -> int:
        inlet_of: dict[zmq.Socket, tuple[NodeRunner, Inlet]] = {}
        for runner, inlet in self.inlets:
            for sock in inlet.socks:
                poller.register(sock, zmq.POLLIN)
                inlet_of[sock] = (runner, inlet)
        by_runner: dict[int, list[Inlet]] = {}
        for runner, inlet in self.inlets:
            by_runner.setdefault(id(runner), []).append(inlet)
        timed_joins = [r for r in self.runners if r.join is not None and r.join.timeout_s is not None]
        batched = [r for r in self.runners if r.batches]
        timed = [r for r in self.runners if r.timers]
        ending: list[Outlet] = []  # outputs whose end-of-stream some consumer has not acknowledged
        next_flush = 0.0
        sources = [r for r in self.runners if r.gen is not None or r.loop_source]
        check_end = True  # something may have ended: look for nodes to finish (not every turn)
        all_done = False
        flusher = self.flusher
        coalescing = flusher.routers
        alo = [r for r in self.runners if r.alo_inlets]
        alo_inlets = [i for r in alo for i in r.alo_inlets.values()]
        # latency mode: when every node of the process is `busy`, the loop never sleeps in poll;
        # it spins on its (pinned) core, so a message is read when it lands, without a wake-up
        spin = all(r.plan.busy for r in self.runners)
        while True:
            batching = bool(batched) and any(b.values for r in batched for b in r.batches.values())
            wait_ms = 0 if sources or spin else 1 if batching else 2 if ending else 100
            if timed:
                now = time.monotonic()
                wait_ms = min(wait_ms, max(0, int(min(r.fire_timers(now) for r in timed) * 1000)))
            if self.pending:
                self.answer_done()
                wait_ms = min(wait_ms, 10)
            if flusher.thread is None:  # (we start it, on the first coalesced record)
                events = dict(poller.poll(wait_ms))
            else:
                with flusher.lock:  # the poller reads push outputs' sockets too: not while the flusher sends
                    for router in coalescing:  # what the last turn coalesced goes before we wait
                        while router.pending:
                            router.flush()
                    events = dict(poller.poll(wait_ms))
            for sock in events:
                if sock is self.control:
                    while (msg := self.hear(0)) is not None:
                        self.command(msg)
                    check_end = True
                elif sock in inlet_of:
                    runner, inlet = inlet_of[sock]
                    if inlet.port in runner.latest:  # keep only the newest of what is waiting
                        waiting = list(inlet.receive(sock, inlet.read_batch))
                        if waiting:
                            runner.mv[runner.nbase + N_CONFLATED] += len(waiting) - 1
                            runner.deliver(inlet.port, *waiting[-1])
                    else:
                        port = inlet.port
                        deliver = runner.deliver if port in runner.batches else runner.handle
                        for value, header in inlet.receive(sock, inlet.read_batch):
                            deliver(port, value, header)

                    if inlet.ended:
                        runner.input_ended(inlet.port)
                        check_end = True
                elif sock in outlet_of:
                    outlet_of[sock].service(sock)
                else:  # a handshake event: refusals of strangers are counted; one of our inputs refused fails
                    self.watch.read(sock)
                    self.check_refusals()
            if sources:
                for runner in sources:
                    if runner.loop_source:
                        runner.run_loop(self.check_control)
                    elif runner.gen is not None:  # a stop may have ended it during this turn
                        runner.step(SOURCE_STEPS)
                if any(r.gen is None and not r.loop_source for r in sources):
                    sources = [r for r in sources if r.gen is not None or r.loop_source]
                    check_end = True
            for _, inlet in self.inlets:  # arrays over shared memory were dropped: give the slots back
                if inlet.shm.frees:
                    inlet.send_frees()
            if alo:  # at-least-once: say `done` for what is handled (downstream included)
                for runner in alo:
                    if runner.custody:
                        runner.release_custody()
                for inlet in alo_inlets:
                    if inlet.done_pending:
                        inlet.send_done()
            if batching:
                now = time.monotonic()
                for runner in batched:
                    runner.flush_due(now)
            for runner in timed_joins:  # live joins give up on late event times
                for event_time, values in runner.join.release():  # type: ignore[union-attr]
                    runner.call_join(event_time, values)
            if check_end:
                check_end = False
                for runner in self.runners:
                    inputs_ended = all(i.ended for i in by_runner.get(id(runner), []))
                    ended = runner.gen is None and not runner.loop_source and inputs_ended
                    if not runner.done and ended and (runner.forward_inputs or runner.plan.source or self.stopping):
                        runner.finish()  # a node without inputs that end it (timer-driven) runs until stopped
                        ending.extend(runner.outlets.values())
                        if runner in timed:
                            timed.remove(runner)
                all_done = all(r.done for r in self.runners)
            if ending and time.monotonic() >= next_flush:  # re-send the end every ~2ms until acknowledged
                ending = [o for o in ending if not o.flush_eos()]
                next_flush = time.monotonic() + 0.002
            if all_done and not ending:
                break
            self.beat()
        self.tell(protocol.DONE, self.stats())
        return 0

    def beat(self) -> None:
        """A heartbeat with the counts, once a second."""
        now = time.monotonic()
        if now >= self.next_beat:
            self.tell(protocol.HB, self.stats())
            self.next_beat = now + 1.0

    def check_control(self) -> None:
        """What a plain-loop source's emit calls: obey stop, keep the heartbeat going."""
        while (msg := self.hear(0)) is not None:
            self.command(msg)
        if self.pending:
            self.answer_done()
        self.beat()

    def command(self, msg: list[Any]) -> None:
        verb = msg[0]
        if verb == protocol.STOP:  # drain: sources end, and end-of-stream follows the data
            self.stopping = True
            for runner in self.runners:
                runner.stop_source()
        elif verb == protocol.REHELLO:
            for _, inlet in self.inlets:
                inlet.hello()
        elif verb == protocol.RECONNECT:  # a restarted producer is at a new address
            if protocol.endpoints_ok(msg[1]):
                self.link.resolved.update(msg[1])
                for _, inlet in self.inlets:
                    for bind, endpoint in msg[1].items():
                        inlet.redial(bind, endpoint)
        elif verb == protocol.REPORT:  # the run is failing: send what we counted before we are stopped
            self.tell(protocol.HB, self.stats())
        elif verb == protocol.COMMAND:
            self.run_command(*msg[1:])
        elif verb == protocol.TAP:  # dmnflow echo / hz / bw listen to an output, or stopped (observe/taps.py)
            outlet = self.outlets.get((msg[1], msg[2]))
            if outlet is not None:
                self.taps.set(outlet, msg[3])
        elif verb == protocol.BUDGET:  # a latency budget was missed or is met again (observe/budgets.py)
            for runner in self.runners:
                runner.on_budget(msg[1])

    def run_command(self, node: str, name: str, args: dict[str, Any], token: Any) -> None:
        """A command for one node (``dmnflow swap`` and friends) goes to its ``on_command``;
        a result that is a Future is answered when it completes (see ``answer_done``)."""
        runner = next((r for r in self.runners if r.plan.name == node), None)
        handler = getattr(runner.node, "on_command", None) if runner is not None else None
        if handler is None:
            self.tell(protocol.REPLY, token, node, False, f"node {node!r} takes no commands")
            return
        try:
            result = handler(name, args, runner.ctx)  # type: ignore[union-attr]
        except Exception as exc:  # a refused command is an answer, not a crash of the node
            self.tell(protocol.REPLY, token, node, False, f"{type(exc).__name__}: {exc}")
            return
        if isinstance(result, Future):
            self.pending.append((result, token, node))
        else:
            self.tell(protocol.REPLY, token, node, True, result)

    def answer_done(self) -> None:
        for item in [p for p in self.pending if p[0].done()]:
            self.pending.remove(item)
            future, token, node = item
            exc = future.exception()
            if exc is None:
                self.tell(protocol.REPLY, token, node, True, future.result())
            else:
                self.tell(protocol.REPLY, token, node, False, f"{type(exc).__name__}: {exc}" if str(exc) else repr(exc))

    def stats(self) -> dict[str, Any]:
        """A heartbeat: latency histograms, node summaries, cpu, and a snapshot of the counts
        (the supervisor reads the counters file itself where it can; a remote one cannot)."""
        edges = {e: st.latency.to_sparse() for _, inlet in self.inlets for e, st in inlet.stats.items()}
        return {"cpu_s": time.process_time(), "nodes": {r.plan.name: r.stats() for r in self.runners},
                "latency": edges, "counts": self.counters.snapshot(), "rss_bytes": _rss()}

    def close(self) -> None:
        self.taps.close()
        self.flusher.close()
        for _, inlet in self.inlets:
            inlet.close()
        for outlet in self.outlets.values():
            outlet.close()
        self.watch.close()
        if self.auth is not None:
            self.auth.stop()
        self.control.close()
        self.zctx.term()


def _user_traceback(exc: BaseException) -> str:
    """The traceback of the user's code: dmnflow's own frames are not what they need to read."""
    cause = exc.__cause__ if isinstance(exc, NodeError) and exc.__cause__ is not None else exc
    here = str(Path(__file__).resolve().parents[1])
    frames = [f for f in traceback.extract_tb(cause.__traceback__) if not f.filename.startswith(here)]
    if not frames:  # the error is in dmnflow itself: show everything
        return "".join(traceback.format_exception(cause))
    return ("Traceback (most recent call last):\n" + "".join(traceback.format_list(frames))
            + "".join(traceback.format_exception_only(type(cause), cause)))


def main(argv: list[str] | None = None, plan: Plan | None = None) -> int:
    """``argv``: RUN_DIR PROCESS INC SUPERVISOR_PID; ``plan``: the plan already read (a worker
    forked by the zygote), else read from the run directory."""
    args = sys.argv[1:] if argv is None else argv
    run_dir, process, inc = args[0], args[1], int(args[2])
    _die_with_parent(int(args[3]))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the supervisor, which drains us
    worker = Worker(run_dir, process, inc, plan)
    code = 0
    try:
        code = worker.run()
    except SystemExit as exc:
        code = int(exc.code or 0)
    except BaseException as exc:  # report what broke, with the user's part of the traceback, then fail
        cause = exc.__cause__ if isinstance(exc, NodeError) and exc.__cause__ is not None else exc
        configured = isinstance(cause, ConfigError)  # its message says what to fix: no traceback
        text = "" if configured else _user_traceback(exc)
        summary = str(cause) if configured else str(exc) if isinstance(exc, NodeError) else \
            f"{type(exc).__name__}: {exc}"
        with contextlib.suppress(Exception):  # what this incarnation counted, then why it failed
            worker.tell(protocol.HB, worker.stats())
        with contextlib.suppress(zmq.ZMQError):
            worker.tell(protocol.ERROR, summary, text)
        if not (configured and not worker.started):  # before start, the supervisor's error says it
            sys.stderr.write(f"dmnflow: process {process} (pid {os.getpid()}) failed: {summary}\n{text}")
        code = 1
    finally:
        worker.close()
    return code


if __name__ == "__main__":
    sys.exit(main())
