"""One node instance and how the framework calls it: handlers, batches, joins, timers,
sources, ``setup``/``teardown``, and what it counts. The worker (``runtime/worker.py``)
drives it from its sockets; ``dmnflow.testing.run_node`` drives the same class from a
list, with in-memory outlets (``transport/memory.py``), so a node behaves the same in a
test as in a graph.

A runner sends through its ``outlets`` (``send``, ``alloc``, ``send_eos``: a
``transport.Outlet`` or a ``transport.memory.MemoryOutlet``) and receives ``(port, value,
header)`` with the header in the wire's layout (``transport/wire.py``).
"""

from __future__ import annotations

import heapq
import inspect
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import NodeError
from ..importing import load_object
from ..node import Context, Message, Node, Ports
from ..plan import NodePlan
from ..transport.stats import (
    N_COMMIT_BEGIN,
    N_COMMIT_END,
    N_COMMITTED,
    N_COMMITTED_PREV,
    N_HANDLING,
    N_HANDLING_OUT,
    N_IN,
    N_JOIN_INCOMPLETE,
    N_MARK,
    N_MARK_PREV,
    N_OUT,
    POS_OUT,
    POS_OUT_PREV,
    Counters,
    Histogram,
    Layout,
)
from ..transport.wire import ATTRS, EVENT_TIME, ORIGIN, ORIGIN_NS, SEQ, SRC, TOPIC

if TYPE_CHECKING:
    from ..transport.inlet import Inlet

__all__ = ["SOURCE_STEPS", "Batch", "Join", "NodeRunner", "Receiver", "Sender", "StopSource", "message_of",
           "node_class", "progress_of"]


SOURCE_STEPS = 64  # items taken from a source's generator per turn


class Sender(Protocol):
    """What a runner sends through, per output port: a socket outlet or an in-memory one."""

    def send(self, value: Any, topic: bytes | None, origin_ns: int, origin: int, event_time: Any,
             attrs: Any) -> None: ...

    def alloc(self, shape: Any, dtype: Any) -> Any: ...

    def send_eos(self) -> None: ...


class Receiver(Protocol):
    """What a runner reads from, per input port: a socket inlet or an in-memory one."""

    port: str
    delivery: str
    read_batch: int  # records taken from one of its sockets at a time
    sources: Iterable[int]  # the output ids of its producers
    done_pending: dict[int, int]  # at-least-once: handled, not yet said `done`

    @property
    def ended(self) -> bool: ...

    def receive(self, sock: Any, limit: int) -> Iterator[tuple[Any, list[Any]]]: ...

    def handled(self, header: list[Any]) -> None: ...

    def after_turn(self) -> None:
        """What the input owes its producers after a turn (shared-memory slots the node let go)."""

    def send_done(self) -> None: ...


class Join:
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
        self.newest_time: dict[tuple[str, int], Any] = {}  # (port, producer) -> its newest event time
        self.ended: set[str] = set()
        self.incomplete = 0

    def add(self, port: str, src: int, event_time: Any, value: Any) -> list[tuple[Any, dict[str, Any]]]:
        group = self.pending.get(event_time)
        if group is None:
            group = self.pending[event_time] = {}
            self.first_seen[event_time] = time.monotonic()
            heapq.heappush(self.times, event_time)
        group[port] = value
        self.newest_time[(port, src)] = event_time
        return self.release()

    def passed(self, port: str, t: Any) -> bool:
        """Whether every producer of ``port`` has sent something later than ``t``."""
        newest = self.newest_time
        producers = self.producers[port] or {src for p, src in newest if p == port}
        return bool(producers) and all((port, s) in newest and newest[(port, s)] > t for s in producers)

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


class StopSource(Exception):
    """Raised inside a plain-loop source's ``emit`` when the graph is being stopped."""


class Batch:
    """Messages of one input waiting to be handed over together (``batch: {max, wait}``)."""

    __slots__ = ("max", "wait_s", "values", "headers", "due")

    def __init__(self, max_: int, wait_s: float) -> None:
        self.max, self.wait_s = max_, wait_s
        self.values: list[Any] = []
        self.headers: list[list[Any]] = []
        self.due = 0.0


def node_class(plan_node: NodePlan, cls: type[Node] | None = None) -> tuple[type[Node], Ports]:
    """The node's class (``uses``, unless given) and the ports its params declare: what the
    worker needs to bind its outputs and decode its inputs before the runner exists."""
    cls = cls if cls is not None else load_object(plan_node.uses)
    return cls, cls.ports(cls.Params.model_validate(plan_node.params))


def message_of(port: str, header: list[Any]) -> Message:
    """The ``ctx.message`` view of a received header (the inlet appends the topic to it)."""
    return Message(port, header[TOPIC].decode("utf-8", "replace"), header[SEQ], header[ORIGIN_NS], header[EVENT_TIME],
                   header[ATTRS], header[ORIGIN])


class NodeRunner:
    """One node instance inside the worker: its object, context, handlers and counters."""

    def __init__(self, plan_node: NodePlan, index: int, counters: Counters | None = None, *,
                 cls: type[Node] | None = None, node: Node | None = None, incarnation: int = 0,
                 outlets: Mapping[str, Sender] | None = None, inlets: Mapping[str, Receiver] | None = None,
                 check_control: Callable[[], None] | None = None, sink: bool | None = None) -> None:
        """``outlets`` and ``inlets`` are its channels, one per port: sockets in a worker,
        lists in ``dmnflow.testing.run_node``; nothing else differs between the two.
        ``check_control`` is what a plain-loop source's ``emit`` calls now and then (the
        worker's control socket); ``sink`` measures end-to-end latency here (default: a node
        without outputs). ``cls`` (else loaded from ``uses``) and ``node`` (else a new
        instance) let a test run a class it defined in place, and look at the instance
        afterwards; ``incarnation``: how many times its worker was restarted
        (``ctx.incarnation``)."""
        self.plan = plan_node
        self.index = index
        if counters is None:  # on its own (dmnflow.testing): counts in private memory
            counters = Counters(one_node_layout(index))
        self.counters = counters
        self.mv = counters.mv
        self.nbase = counters.layout.node(index)
        self.cls, self.ports = node_class(plan_node, cls)
        params = self.cls.Params.model_validate(plan_node.params)
        self.outlets: dict[str, Sender] = dict(outlets or {})
        self.inlets: dict[str, Receiver] = dict(inlets or {})
        self.node = node if node is not None else self.cls()
        self.ctx = Context(plan_node.name, params, self._emit, replica=plan_node.replica, model=plan_node.model,
                           alloc=self._alloc, incarnation=incarnation,
                           committed=self.mv[self.nbase + N_MARK] - 1 if self.mv[self.nbase + N_MARK] else None)
        self.origin_ns = 0
        self.origin = -1
        self.e2e: dict[int, Histogram] = {}  # per origin source, at sinks
        self.topic_bytes, self.topic = b"", ""  # the last topic seen, decoded
        self.is_sink = not plan_node.outputs if sink is None else sink
        self.handlers = {i.port: getattr(self.node, f"on_{i.port}", None) for i in plan_node.inputs}
        self.on_message = self.node.on_message if self.cls.defines("on_message") else None
        self.gen: Iterator[Any] | None = None
        self.loop_source = False  # a source whose run() is a plain loop, not a generator
        self.stopping = False
        self.check_control: Callable[[], None] = check_control or (lambda: None)
        self.next_check = 0.0
        self.done = False
        self.set_up = False  # setup returned: teardown is owed, whatever ends the node
        self.torn_down = False
        self.join = None if plan_node.join is None else Join(plan_node.join.inputs, plan_node.join.timeout_s)
        self.batches = {i.port: Batch(i.batch.max, i.batch.wait_s) for i in plan_node.inputs if i.batch}
        # at-least-once inputs: say `done` once handled
        self.alo_inlets = {p: i for p, i in self.inlets.items() if i.delivery == "at-least-once"}
        self.custody: list[Any] = []  # at-least-once: (inlet, header, out marks) waiting for downstream
        # this node's at-least-once output channels (their consumers' `done`)
        self.alo_routers: list[Any] = [ch for o in self.outlets.values() for ch in getattr(o, "held", ())]
        if self.join is not None:  # a join tells producers apart by their output ids
            for port in self.join.producers:
                if port in self.inlets:
                    self.join.producers[port] = set(self.inlets[port].sources)
        self.timed_join = self.join is not None and self.join.timeout_s is not None
        self.turn_inlets = list(self.inlets.values())  # (a list: one turn per wake-up, kept cheap)
        self.commits = self.cls.defines("commit")  # a declared commit step: see Node.commit
        if not self.commits:
            self.mv[self.nbase + N_COMMITTED] = -1
        now = time.monotonic()
        self.timers = [[now + period, period, getattr(self.node, f"on_{name}"), name]
                       for name, period in plan_node.timers.items()]
        # inputs that end it: a node whose inputs are all feedback (a loop its timer drives) runs until stopped
        self.forward_inputs = any(not i.feedback for i in plan_node.inputs)

    def setup(self) -> None:
        self.node.setup(self.ctx)
        self.set_up = True
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
        except StopSource:
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
                raise StopSource
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

    # -- the schedule: what its process's loop (or run_node) calls, and in what order
    def read(self, inlet: Receiver, sock: Any = None) -> bool:
        """What ``inlet`` has waiting (on ``sock``), to the handlers; True when the input ended."""
        self.take(inlet.port, inlet.receive(sock, inlet.read_batch))
        if inlet.ended:
            self.input_ended(inlet.port)
            return True
        return False

    def turn(self, now: float) -> bool:
        """The rest of one turn, after the inputs were read: the source's next items, the
        slots given back, the commit step, at-least-once ``done`` (after the commit: a record
        is handled once what it made is durable), batches and live joins that are due. True
        when the source ended (the node may be finished)."""
        ended = False
        if self.loop_source:
            self.run_loop(self.check_control)
            ended = True
        elif self.gen is not None:
            self.step(SOURCE_STEPS)
            ended = self.gen is None
        for inlet in self.turn_inlets:
            inlet.after_turn()
        if self.commits:
            self.commit()
        if self.alo_inlets:
            if self.custody:
                self.release_custody()
            for inlet in self.alo_inlets.values():
                if inlet.done_pending:
                    inlet.send_done()
        if self.batches:
            self.flush_due(now)
        if self.timed_join:
            for event_time, values in self.join.release():  # type: ignore[union-attr]
                self.call_join(event_time, values)
        return ended

    @property
    def batching(self) -> bool:
        """Whether a batch waits for its ``wait`` (the loop then looks again within a millisecond)."""
        return any(b.values for b in self.batches.values())

    def finish_if_ended(self, stopping: bool) -> bool:
        """Finish (teardown, then end-of-stream) once the source and every input ended; True if
        it finished now. A node whose inputs are all feedback runs until the graph stops."""
        if self.done or self.gen is not None or self.loop_source:
            return False
        if not all(i.ended for i in self.inlets.values()):
            return False
        if not (self.forward_inputs or self.plan.source or stopping):
            return False
        self.finish()
        return True

    def take(self, port: str, records: Iterable[tuple[Any, list[Any]]]) -> None:
        """What one input has waiting, ``(value, header)`` pairs in arrival order (a ``latest``
        input's channel hands over only the newest): a batched one gathers them, any other
        calls its handler for each."""
        deliver = self.deliver if port in self.batches else self.handle
        for value, header in records:
            deliver(port, value, header)

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

    def flush(self, port: str, batch: Batch) -> None:
        """Hand the handler the batch as one list; ``ctx.batch`` holds each value's message,
        and ``ctx.message`` is the last one's."""
        values, headers = batch.values, batch.headers
        batch.values, batch.headers = [], []
        self.ctx.batch = [message_of(port, h) for h in headers]
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
        topic = header[TOPIC]
        if topic != self.topic_bytes:  # most messages repeat the topic before them
            self.topic_bytes, self.topic = topic, topic.decode("utf-8", "replace")
        message.port, message.seq, message.topic = port, header[SEQ], self.topic
        message.origin_ns, message.event_time, message.attrs = header[ORIGIN_NS], header[EVENT_TIME], header[ATTRS]
        self.origin_ns = message.origin_ns
        self.origin = message.origin = header[ORIGIN]
        mv, nbase = self.mv, self.nbase
        # what a kill would interrupt: the report counts a message whose handler emitted nothing yet
        # as lost. One store takes it from "waiting" (received, not in) to "being handled" (in, not
        # yet handled through), so no moment between two stores escapes the count
        mv[nbase + N_HANDLING_OUT] = mv[nbase + N_OUT]
        mv[nbase + N_IN] += count
        try:
            if self.join is not None and port in self.join.ports:
                for event_time, values in self.join.add(port, header[SRC], header[EVENT_TIME], (value, header)):
                    self.call_join(event_time, values)
            elif (handler := self.handlers.get(port)) is not None:
                handler(value, self.ctx)
            else:
                self.on_message(port, value, self.ctx)  # type: ignore[misc]
        except Exception as exc:
            raise NodeError(f"{type(exc).__name__}: {exc}", node=self.plan.name, port=port,
                            seq=header[SEQ]) from exc
        mv[nbase + N_HANDLING] = mv[nbase + N_IN]  # handled through here
        inlet = self.alo_inlets.get(port) if self.alo_inlets else None
        if inlet is not None:
            self.handled(inlet, header)
        if self.is_sink and (origin := header[ORIGIN]) >= 0:
            hist = self.e2e.get(origin)
            if hist is None:
                hist = self.e2e[origin] = Histogram()
            hist.add(time.time_ns() - header[ORIGIN_NS])
        self.origin = -1

    def handled(self, inlet: Inlet, header: list[Any]) -> None:
        """At-least-once: a record is done once its handler returned and everything it emitted
        on this node's at-least-once outputs is handled downstream too (their `done` came)."""
        if not self.alo_routers:
            inlet.handled(header)
            return
        # per output edge: its next sequence number now; everything below it must be handled downstream
        marks = [(router, edge, router.seq[edge].get(b"", 0)) for router in self.alo_routers for edge in router.held]
        self.custody.append((inlet, header, marks))

    def release_custody(self) -> None:
        """Say `done` upstream for every record whose outputs downstream has handled, and keep
        (in the counters file, which outlives a kill) where each output's numbering stood when
        it was handled: a restarted incarnation, which gets the records after it again, numbers
        what it emits for them from there, so its consumers recognise what they already have.
        Both move in one transaction: an output's numbering ahead of its input's `done` would
        number the records that come again as new ones."""
        custody = self.custody
        released = 0
        for _, _, marks in custody:
            if not all(router.done_top[edge] >= mark for router, edge, mark in marks):
                break
            released += 1
        if not released:
            return
        self.begin()
        for inlet, header, marks in custody[:released]:
            for router, edge, mark in marks:
                router.mv[router.base[edge] + POS_OUT] = mark
            inlet.handled(header)
        del custody[:released]
        self.end()

    def begin(self) -> None:
        """A transaction over this node's positions and commit: what a kill inside it goes back to."""
        mv, nbase = self.mv, self.nbase
        mv[nbase + N_MARK_PREV] = mv[nbase + N_MARK]
        mv[nbase + N_COMMITTED_PREV] = mv[nbase + N_COMMITTED]
        for inlet in self.alo_inlets.values():
            inlet.keep_prev()
        for router in self.alo_routers:
            for edge in router.held:
                router.mv[router.base[edge] + POS_OUT_PREV] = router.mv[router.base[edge] + POS_OUT]
        mv[nbase + N_COMMIT_BEGIN] += 1  # one store: from here a kill goes back to the _prev values

    def end(self) -> None:
        """The transaction holds: its inputs' `done` is kept (and said after it)."""
        for inlet in self.alo_inlets.values():
            inlet.keep_done()
        self.mv[self.nbase + N_COMMIT_END] = self.mv[self.nbase + N_COMMIT_BEGIN]  # one store: it holds

    def commit(self) -> None:
        """The node's commit step, when it handled records since the last one: one transaction
        over what ``Node.commit`` returns (its mark: a file sink's length), the records counted
        committed and, at-least-once, the `done` of each input (kept here, said after). A kill
        -9 inside it leaves the state before it, which a restarted incarnation takes up: it cuts
        its file back to that mark, and the producer sends it the records after it again; with
        the default delivery the report counts them lost by this node."""
        mv, nbase = self.mv, self.nbase
        handled = mv[nbase + N_IN]
        if handled == mv[nbase + N_COMMITTED]:
            return
        self.begin()
        try:
            mark = self.node.commit(self.ctx)
        except Exception as exc:
            raise NodeError(f"{type(exc).__name__} in commit: {exc}", node=self.plan.name, port="commit") from exc
        if mark is not None:
            if type(mark) is not int or mark < 0:
                raise NodeError(f"commit returned {mark!r}: a commit returns None or an int >= 0 (its mark, say "
                                "the file's length), which ctx.committed gives a restarted incarnation",
                                node=self.plan.name, port="commit")
            mv[nbase + N_MARK] = mark + 1  # (0: no mark yet)
            self.ctx.committed = mark
        mv[nbase + N_COMMITTED] = handled
        self.end()

    def call_join(self, event_time: Any, group: dict[str, tuple[Any, list[Any]]]) -> None:
        """``on_join`` with one value per input; ``ctx.joined`` holds the message behind each."""
        self.ctx.message.port, self.ctx.message.event_time = "", event_time
        self.ctx.joined = {port: message_of(port, header) for port, (_, header) in group.items()}
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
                self.call_timer(timer[2], timer[3])
        return min(t[0] for t in self.timers) - now

    def fire(self, name: str) -> None:
        """Call the timer ``name`` now, whatever its period (``dmnflow.testing.Tick``)."""
        timer = next((t for t in self.timers if t[3] == name), None)
        if timer is None:
            raise KeyError(f"{self.cls.__name__} has no timer {name!r}; timers: {sorted(t[3] for t in self.timers)}")
        self.call_timer(timer[2], name)

    def call_timer(self, handler: Callable[[Context], None], name: str) -> None:
        """What a timer emits enters the graph now: it derives from no message."""
        self.origin = -1
        try:
            handler(self.ctx)
        except Exception as exc:
            raise NodeError(f"{type(exc).__name__} in timer on_{name}: {exc}", node=self.plan.name,
                            port=f"timer {name}") from exc

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
        try:
            self.teardown()
        finally:  # a failed teardown still ends the stream: downstream drains, the run reports the failure
            for outlet in self.outlets.values():
                outlet.send_eos()

    def teardown(self) -> None:
        """The node's ``teardown``, once, if its ``setup`` returned; what it raises names the node.

        Raises:
            NodeError: the node's teardown raised (port ``teardown``).
        """
        if not self.set_up or self.torn_down:
            return
        self.torn_down = True
        try:
            if self.commits:  # what the node handled is committed before it is torn down
                self.commit()
            self.node.teardown(self.ctx)
        except Exception as exc:
            raise NodeError(f"{type(exc).__name__} in teardown: {exc}", node=self.plan.name) from exc

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
        node = self.node
        return {"e2e": {origin: h.to_sparse() for origin, h in self.e2e.items()},
                "summary": node.summary(), "progress": progress_of(node.progress())}

    def on_budget(self, event: dict[str, Any]) -> None:
        """A latency budget was missed, or is met again: the node's ``on_budget``, if it has one."""
        if self.done or not self.cls.defines("on_budget"):
            return
        try:
            self.node.on_budget(event, self.ctx)
        except Exception as exc:
            raise NodeError(f"{type(exc).__name__} in on_budget: {exc}", node=self.plan.name,
                            port="on_budget") from exc


def progress_of(value: Any) -> dict[str, Any] | None:
    """A node's ``progress()``: ``(done, total)`` or ``(done, total, unit)``, total None when unknown."""
    if not isinstance(value, tuple | list) or len(value) not in (2, 3):
        return None
    done, total = value[0], value[1]
    if not isinstance(done, int | float) or not (total is None or isinstance(total, int | float)):
        return None
    return {"done": done, "total": total, "unit": str(value[2]) if len(value) == 3 else ""}


def one_node_layout(index: int) -> Layout:
    return Layout(edges=0, nodes=index + 1, outputs=0, binds=0)
