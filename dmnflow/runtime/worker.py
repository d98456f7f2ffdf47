"""A worker process: hosts the nodes of one process of the plan and runs their loop.

Started only by the supervisor: forked by its zygote (``runtime/zygote.py``), or as
``python -m dmnflow.runtime.worker RUN_DIR PROCESS INC PID`` when there is none.
It dies with the supervisor (parent-death signal), ignores Ctrl-C (the supervisor drives
shutdown), and talks to the supervisor over a DEALER socket; the verbs, both ways, are
named in ``runtime/protocol.py`` (bound, connected, ready, hb, done, error and reply from
the worker; connect, reconnect, start, stop, rehello, report, command, tap and budget to it).
Each node of the process runs in a ``NodeRunner`` (``runtime/node_runner.py``), which the
loop here feeds from the node's inlets.

A node ends when every (non-feedback) input has received end-of-stream from every
producer, or, for a source, when its ``run`` generator returns; it then runs
``teardown`` and sends end-of-stream on each output. The process exits when all its
nodes have ended.

Teardown is owed to every node whose ``setup`` returned, however the worker ends: a node
that raised, a SIGTERM (the supervisor cutting a drain, or anyone else: it is taken between
handler calls, or inside a blocked send), a stop before the start. A teardown that raises is
reported to the supervisor (the run fails; the node is not restarted, its stream is over),
and the node's end-of-stream still goes downstream. Only SIGKILL skips teardown.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import time
import traceback
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import zmq

from ..codecs import Limits, get_codec
from ..errors import ConfigError, NodeError, TransportError
from ..plan import RUN_DIR, Plan
from ..transport import Counters, Flusher, Inlet, Link, Outlet
from ..transport.security import RUN_KEY, RUN_KEYS, Curve, KeyError_, Watch, load_curve
from ..transport.stats import (
    B_DISCONNECTS,
    B_REFUSED,
    N_COMMIT_BEGIN,
    N_COMMIT_END,
    N_CONFLATED,
    N_HANDLING,
    N_HANDLING_OUT,
    N_IN,
    N_MARK,
    N_MARK_PREV,
    N_OUT,
    POS_DONE,
    POS_DONE_PREV,
    POS_OUT,
    POS_OUT_PREV,
    POSITIONS,
    REFUSED,
    Layout,
)
from ..transport.wire import read_token, shm_tag
from . import logs, protocol
from .files import counters_path, layout_of, read_control, read_endpoints
from .node_runner import NodeRunner, node_class
from .taps import Taps

LINGER_S = 5.0


class Terminated(BaseException):
    """SIGTERM arrived: the worker stops where it is, runs its nodes' teardown and exits.

    A BaseException, so that no ``except Exception`` in a node or in dmnflow swallows it."""


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


BLAS_AT_ONE_THREAD = False  # the zygote loaded OpenBLAS (numpy) with one thread: each worker sets its own


def restore_blas_threads() -> None:
    """Give OpenBLAS, loaded by the zygote with one thread, the threads this worker would have
    had loading it itself: ``OPENBLAS_NUM_THREADS`` (its pins set it), else one per core it may
    use. Found in this process's mappings, as threadpoolctl finds it."""
    if not BLAS_AT_ONE_THREAD:
        return
    try:
        wanted = int(os.environ.get("OPENBLAS_NUM_THREADS") or len(os.sched_getaffinity(0)))
        with open("/proc/self/maps", encoding="utf-8") as f:
            libs = sorted({line.split()[-1] for line in f if "openblas" in line.lower() and ".so" in line})
    except (OSError, ValueError):
        return
    for path in libs:
        with contextlib.suppress(OSError):
            lib = ctypes.CDLL(path)
            for symbol in ("scipy_openblas_set_num_threads64_", "openblas_set_num_threads64_",
                           "openblas_set_num_threads"):
                setter = getattr(lib, symbol, None)
                if setter is not None:
                    setter(max(1, wanted))
                    break


def _rss() -> int:
    """This process's resident memory, bytes (0 where /proc is not there)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


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
        restore_blas_threads()
        self.token = read_token(run_dir)
        self.zctx = zmq.Context()
        self.flusher = Flusher(self.plan.limits.flush_delay_s, self.plan.limits.flush_delay_max_s)  # push outputs
        # coalesce bursts; its lock guards their sockets
        self.control = self.zctx.socket(zmq.DEALER)
        self.control.setsockopt(zmq.LINGER, int(LINGER_S * 1000))
        self.control.setsockopt(zmq.IDENTITY, protocol.worker_identity(self.token, process))
        control, server_key = read_control(run_dir)
        if control.startswith("tcp://") and self.plan.security.curve is not None:  # a supervisor on another host
            self.curve().dial(self.control, server_key)
        self.control.connect(control)
        layout = layout_of(self.plan)
        before = None  # at-least-once positions and commit marks survive a restart: the last predecessor
        for k in range(inc - 1, -1, -1):  # that got as far as its counters file has them
            if (before := Counters.read(counters_path(run_dir, process, k), layout)) is not None:
                break
        self.counters = Counters(layout, counters_path(run_dir, process, inc),
                                 initial=None if before is None else carried(self.plan, layout, before))
        self.link = Link(self.zctx, run_dir, self.token, shm_tag(self.token), self.counters)
        self.watch = Watch()
        self.auth: Any = None
        self.outlets: dict[tuple[str, str], Outlet] = {}
        self.inlets: list[tuple[NodeRunner, Inlet]] = []
        self.runners: list[NodeRunner] = []
        self.started = False  # the supervisor said start: failures are no longer start-up failures
        self.stopping = False
        self.terminating = False  # SIGTERM came while a handler ran: taken at the end of the loop's turn
        self.failed: list[str] = []  # nodes whose teardown raised: the run fails, they are not restarted
        self.next_beat = time.monotonic() + 1.0
        self.pending: list[tuple[Future[Any], Any, str]] = []  # commands still running: (future, token, node)
        self.refusals: list[str] = []  # CURVE handshakes our inputs' producers refused (start-up fails on them)
        self.taps = Taps(self.zctx, run_dir, self.counters.mv, self.plan.limits.tap_live_hwm,
                         self.plan.limits.tap_record_hwm)  # outputs mirrored while someone listens

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
        self.link.security = security
        if security.curve is None and not security.run_keys:
            return
        self.link.curve = self.curve()
        if security.keys:  # a keypair per host: dial each producer with its host's public key
            self.link.server_keys = {b.id: security.keys[n.process] for n in self.plan.nodes
                                     if n.process in security.keys for o in n.outputs for b in o.binds}
        tcp_binds = any(security.curved(b.transport, b.pattern) for n in self.plan.nodes if n.process == self.process
                        for o in n.outputs for b in o.binds)
        if tcp_binds:
            self.auth = self.link.curve.authenticator(self.zctx)

    def curve(self) -> Curve:
        """This process's keypair (``security.keys`` names it where hosts differ) and the admitted keys."""
        security = self.plan.security
        if security.curve is None:  # run_keys: the keypair the launch made for this run
            directory, key = str(Path(self.run_dir, RUN_KEYS)), RUN_KEY
        else:
            directory = security.curve.replace(RUN_DIR, self.run_dir)
            key = security.keys.get(self.process, security.key)
        try:
            return load_curve(directory, key)
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
        declared = {name: node_class(self.plan.node(name)) for name in proc.nodes}
        outlets: dict[str, dict[str, Outlet]] = {}
        for name in proc.nodes:
            plan_node, (_, ports) = self.plan.node(name), declared[name]
            outlets[name] = {}
            for out in plan_node.outputs:
                codec = get_codec(out.codec)
                encoder = codec.encoder(ports.outputs[out.port].type, compress_above=out.compress_above)
                edges = {e: self.plan.edges[e] for b in out.binds for e in b.edges}
                outlet = Outlet(self.link, ids[(name, out.port)], self.inc, name, out.port, out.binds, edges,
                                encoder, accepted=layout.output(ids[(name, out.port)]), shm_above=out.shm_above,
                                shm_slots=out.shm_slots, room_poll_s=out.room_poll_s, flusher=self.flusher,
                                loans=codec.shm and codec.zero_copy)
                outlets[name][out.port] = self.outlets[(name, out.port)] = outlet
                bound.update(outlet.bound)
                if f"{name}.{out.port}" in self.plan.record:  # launch --record: every record, from the start
                    self.taps.record(outlet)
        for outlet in self.outlets.values():  # refused handshakes (CURVE), connections cut (any transport)
            for sock in outlet.sockets():
                self.watch.add(sock, f"output {outlet.name}", lambda _e, o=outlet, s=sock: self._refused(o, s),
                               lambda _e, o=outlet, s=sock: self._disconnected(o, s))
        if proc.cpus and "torch" in sys.modules:  # imported by a node: one thread per pinned core
            sys.modules["torch"].set_num_threads(len(proc.cpus))
        self.tell(protocol.BOUND, bound)

        resolved = self.expect(protocol.CONNECT)[1]
        if not protocol.endpoints_ok(resolved):
            raise TransportError("the supervisor sent a malformed endpoint map")
        self.link.resolved.update(resolved)
        for name in proc.nodes:
            plan_node, (cls, ports) = self.plan.node(name), declared[name]
            inlets: dict[str, Inlet] = {}
            for inp in plan_node.inputs:
                edges = {c.edge: self.plan.edges[c.edge] for c in inp.connects}
                limits = Limits(max_bytes=inp.max_bytes)
                decoders = {e: get_codec(edge.codec).decoder(ports.inputs[inp.port].type, limits)
                            for e, edge in edges.items()}
                src_of_edge = {e: ids[(edge.src, edge.src_port)] for e, edge in edges.items()}
                inlet = inlets[inp.port] = Inlet(
                    self.link, inp.port, name, inp.connects, src_of_edge, inp.topics, inp.queue, decoders,
                    feedback=inp.feedback, max_bytes=inp.max_bytes, inc=self.inc, delivery=inp.delivery,
                    read_batch=inp.read_batch, zero_copy=any(get_codec(e.codec).zero_copy for e in edges.values()),
                    latest=inp.policy == "latest", conflated=layout.node(index[name]) + N_CONFLATED)
                if self.link.curve is not None:
                    for c in inp.connects:
                        if self.link.curved(c.transport, c.pattern):
                            self.watch.add(inlet.socket_of(c), f"input {name}.{inp.port}",
                                           lambda ev, c=c: self._rejected(c, ev))
            # a path budget that ends here measures it
            sink = True if any(name in b.sinks for b in self.plan.budgets) else None
            runner = NodeRunner(plan_node, index[name], self.counters, cls=cls, incarnation=self.inc,
                                outlets=outlets[name], inlets=inlets, check_control=self.check_control, sink=sink)
            self.runners.append(runner)
            self.inlets.extend((runner, inlet) for inlet in inlets.values())
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
        # (an iox edge's consumer is seen without a socket event: look again soon)
        joining_ms = 5 if any(o.spun for o in self.outlets.values()) else 200
        while any(o.waiting_for() for o in self.outlets.values()):
            events = dict(poller.poll(joining_ms))
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
        counter = self._bind_counter(outlet, sock)
        if counter >= 0:
            self.counters.mv[self.counters.layout.bind(counter) + B_REFUSED] += 1

    def _bind_counter(self, outlet: Outlet, sock: zmq.Socket) -> int:
        channel = outlet.channel_of(sock)
        return channel.bind.counter if channel is not None else -1

    def _disconnected(self, outlet: Outlet, sock: zmq.Socket) -> None:
        """A connection to one of our binds ended before the output's end went out: a consumer
        that died, or a peer libzmq cut off (an oversize message ends its connection, and the
        frames queued behind it go unread): counted on the socket, next to its junk."""
        counter = self._bind_counter(outlet, sock)
        if counter >= 0 and not outlet.ended and not self.stopping:
            self.counters.mv[self.counters.layout.bind(counter) + B_DISCONNECTS] += 1

    def _rejected(self, c: Any, event: dict[str, Any]) -> None:
        """The producer of one of our tcp inputs refused our key (or we refused its). At
        start-up that is a key mistake, and fails the worker with a message; once running,
        whatever answers at the producer's address without the key (a peer that took the port
        of a killed producer) is counted on the edge, and the socket keeps dialling until the
        producer is back (there, or at the new address the supervisor sends)."""
        if self.started:
            self.counters.mv[self.counters.layout.edge(c.edge) + REFUSED] += 1
            return
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
        """Poll every socket of the process, hand what came to its runner, then give each
        runner its turn (``NodeRunner.turn``): the schedule is the runners', the waiting is ours."""
        inlet_of: dict[zmq.Socket, tuple[NodeRunner, Inlet]] = {}
        for runner, inlet in self.inlets:
            for sock in inlet.socks:
                poller.register(sock, zmq.POLLIN)
                inlet_of[sock] = (runner, inlet)
        timed = [r for r in self.runners if r.timers]
        ending: list[Outlet] = []  # outputs whose end-of-stream some consumer has not acknowledged
        next_flush = 0.0
        check_end = True  # something may have ended: look for nodes to finish (not every turn)
        all_done = False
        flusher = self.flusher
        coalescing = flusher.channels
        runners = self.runners
        # latency mode: when every node of the process is `busy`, the loop never sleeps in poll;
        # it spins on its (pinned) core, so a message is read when it lands, without a wake-up.
        # Its iox edges (transport/iox.py, shared memory) have no socket: read and serviced every turn
        polled = [(runner, inlet, sock) for runner, inlet in self.inlets for sock in inlet.polled]
        spun = [o for o in self.outlets.values() if o.spun]
        spin = all(r.plan.busy for r in runners) or bool(polled or spun)
        sources = [r for r in runners if r.gen is not None or r.loop_source]  # (a source that ended leaves it)
        batched = [r for r in runners if r.batches]
        while True:
            wait_ms = 0 if sources or spin else 1 if batched and any(r.batching for r in batched) \
                else 2 if ending else 100
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
                    for channel in coalescing:  # what the last turn coalesced goes before we wait
                        while channel.pending:
                            channel.send_batch()
                    events = dict(poller.poll(wait_ms))
            for sock in events:
                if sock is self.control:
                    while (msg := self.hear(0)) is not None:
                        self.command(msg)
                    check_end = True
                elif sock in inlet_of:
                    runner, inlet = inlet_of[sock]
                    check_end |= runner.read(inlet, sock)
                elif sock in outlet_of:
                    outlet_of[sock].service(sock)
                else:  # a handshake event: refusals of strangers are counted; one of our inputs refused fails
                    self.watch.read(sock)
                    self.check_refusals()
            for runner, inlet, sock in polled:
                if sock.get(0):  # something waits (and a hello nobody heard goes again)
                    check_end |= runner.read(inlet, sock)
            for outlet in spun:
                outlet.spin()
            now = time.monotonic()
            for runner in runners:
                if runner.turn(now):
                    check_end = True
                    sources = [r for r in sources if r.gen is not None or r.loop_source]
            if check_end:
                check_end = False
                for runner in runners:
                    try:
                        finished = runner.finish_if_ended(self.stopping)
                    except NodeError as exc:
                        if not runner.torn_down:  # a batch or join it was handed at the end raised
                            raise
                        self.teardown_failed(runner, exc)  # its end-of-stream went: the graph drains
                        finished = True
                    if finished:
                        ending.extend(runner.outlets.values())
                        if runner in timed:
                            timed.remove(runner)
                all_done = all(r.done for r in runners)
            if ending and time.monotonic() >= next_flush:  # re-send the end every ~2ms until acknowledged
                ending = [o for o in ending if not o.flush_eos()]
                next_flush = time.monotonic() + 0.002
            if all_done and not ending:
                break
            if self.terminating:
                raise Terminated
            self.beat()
        self.tell(protocol.DONE, {**self.stats(), "failed": self.failed})
        return 1 if self.failed else 0

    def in_handler(self) -> bool:
        """Whether a node's handler is running and has emitted nothing yet (a SIGTERM waits for
        it to return, so that what the node was handed is either handled or counted lost)."""
        mv = self.counters.mv
        layout = self.counters.layout
        for runner in self.runners:
            b = layout.node(runner.index)
            if mv[b + N_IN] != mv[b + N_HANDLING] and mv[b + N_OUT] == mv[b + N_HANDLING_OUT]:
                return True
        return False

    def teardown_failed(self, runner: NodeRunner, exc: NodeError) -> None:
        """A node's teardown raised: say so here and to the supervisor (the run fails)."""
        self.failed.append(runner.plan.name)
        text = _user_traceback(exc)
        sys.stderr.write(f"dmnflow: process {self.process} (pid {os.getpid()}): {exc}\n{text}")
        with contextlib.suppress(zmq.ZMQError):
            self.tell(protocol.ERROR, str(exc), text)

    def teardown_rest(self) -> None:
        """Teardown for every node that was set up and has not had it (the worker is ending early)."""
        for runner in self.runners:
            try:
                runner.teardown()
            except NodeError as exc:
                self.teardown_failed(runner, exc)

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
        elif verb == protocol.TAP:  # dmnflow echo / hz / bw listen to an output, or stopped (runtime/taps.py)
            outlet = self.outlets.get((msg[1], msg[2]))
            if outlet is not None:
                self.taps.set(outlet, msg[3])
        elif verb == protocol.BUDGET:  # a latency budget was missed or is met again (compiler/budgets.py)
            for runner in self.runners:
                runner.on_budget(msg[1])

    def run_command(self, node: str, name: str, args: dict[str, Any], token: Any) -> None:
        """A command for one node (``dmnflow swap`` and friends) goes to its ``on_command``;
        a result that is a Future is answered when it completes (see ``answer_done``)."""
        runner = next((r for r in self.runners if r.plan.name == node), None)
        handler = runner.node.on_command if runner is not None and runner.cls.defines("on_command") else None
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


def carried(plan: Plan, layout: Layout, before: list[int]) -> list[int]:
    """What a restarted incarnation starts from: the at-least-once positions of every edge and
    each node's commit mark, from its predecessor's counts (a file outlives a kill -9: the kernel
    keeps a mapped file's pages). A node killed inside a transaction (a commit, a release of
    what downstream handled) goes back to the state before it: its mark, its at-least-once
    inputs' `done`, which it had not yet said upstream, and its outputs' numbering."""
    counts = [0] * layout.size
    for e in range(layout.edges):
        base = layout.edge(e)
        for field in POSITIONS:
            counts[base + field] = before[base + field]
    for index, node in enumerate(plan.nodes):
        b = layout.node(index)
        counts[b + N_MARK] = before[b + N_MARK]
        if before[b + N_COMMIT_BEGIN] != before[b + N_COMMIT_END]:
            counts[b + N_MARK] = before[b + N_MARK_PREV]
            for e in plan.edges:
                if e.delivery != "at-least-once":
                    continue
                if e.dst == node.name:
                    counts[layout.edge(e.id) + POS_DONE] = before[layout.edge(e.id) + POS_DONE_PREV]
                if e.src == node.name:
                    counts[layout.edge(e.id) + POS_OUT] = before[layout.edge(e.id) + POS_OUT_PREV]
    return counts


def main(argv: list[str] | None = None, plan: Plan | None = None) -> int:
    """``argv``: RUN_DIR PROCESS INC SUPERVISOR_PID; ``plan``: the plan already read (a worker
    forked by the zygote), else read from the run directory."""
    args = sys.argv[1:] if argv is None else argv
    run_dir, process, inc = args[0], args[1], int(args[2])
    _die_with_parent(int(args[3]))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the supervisor, which drains us
    logs.worker_log(run_dir, process, inc)  # `dmnflow logs RUN NODE`: this process's records, after the run too
    worker = Worker(run_dir, process, inc, plan)

    def on_term(signum: int, frame: Any) -> None:  # the supervisor cut the drain, or someone else stops us
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        worker.terminating = True
        if not worker.in_handler():  # else the loop takes it once the handler has returned
            raise Terminated

    signal.signal(signal.SIGTERM, on_term)
    code = 0
    terminated = False
    try:
        code = worker.run()
    except SystemExit as exc:
        code = int(exc.code or 0)
    except Terminated:
        terminated = True
        code = 128 + signal.SIGTERM
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
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # teardown runs to its end (the supervisor may SIGKILL)
        worker.teardown_rest()
        if worker.failed and code == 0:
            code = 1
        if terminated:  # the graph is being cut: no lingering on sockets whose peers are going
            sys.stderr.flush()
            os._exit(code)
        worker.close()
    return code


if __name__ == "__main__":
    sys.exit(main())
