"""Live market data from Polygon.io ("Massive"): the ``MassiveStream`` source node.

Also home of :class:`LiveStream`, the base of every live WebSocket source in ``nodes.market``
(``MassiveStream`` here, ``AlpacaStream`` in ``nodes.market.alpaca``). A vendor's client is
asyncio based and owns its socket; the node is a generator the worker steps. So the client
runs in a background thread that feeds a bounded queue, and the node's ``run`` drains the
queue, checks each record with :class:`nodes.market.common.MarketGuard` and publishes Bars
and Ticks on ``market_data.<SYMBOL>`` (docs/dmn/messages.md), with the exchange time as
event time. Stopping the node (or the stream giving up) cancels the client's task, closes
its socket and joins the thread. How to run it: docs/dmn/live.md.

The vendor clients (``massive``, ``alpaca-py``) are imported when a node is set up, not when
this module is imported, so graphs that use them validate without the ``live`` extra.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import math
import os
import queue
import random
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from dmnflow import ConfigError, Node, Output
from nodes.support import check_url, package_version

from .common import MarketGuard, RateLimitedLog, make_bar, make_tick, topic_for

__all__ = ["Feed", "LiveStream", "MassiveStream", "StreamError", "massive_record", "massive_subscriptions", "to_float",
           "to_ns"]

_GUARD_COUNTERS = ("bad_price", "duplicate", "out_of_order", "unknown_symbol", "malformed")


class StreamError(RuntimeError, ConfigError):
    """A live stream cannot go on: keys missing or refused, or the server unreachable for good."""


def to_ns(value: Any) -> int | None:
    """An exchange timestamp in int nanoseconds since the epoch; None when it is not one.

    Numbers are read by magnitude, as vendors mix units: below 1e11 seconds, below 1e14
    milliseconds (Polygon's trades and aggregates), below 1e17 microseconds, else nanoseconds.
    ``msgpack.Timestamp`` (Alpaca's wire format), ``datetime`` and ISO-8601 text are also read.
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return _scale(value, value) if value > 0 else None
    if isinstance(value, float):
        return _scale(value, int(round(value))) if math.isfinite(value) and value > 0 else None
    to_unix_nano = getattr(value, "to_unix_nano", None)  # msgpack.Timestamp
    if callable(to_unix_nano):
        return int(to_unix_nano())
    if hasattr(value, "timestamp") and hasattr(value, "microsecond"):  # datetime (naive = UTC)
        import datetime as _dt

        if value.tzinfo is None:
            value = value.replace(tzinfo=_dt.UTC)
        delta = value - _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)
        return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000
    if isinstance(value, str):
        return _iso_ns(value)
    return None


def _scale(value: float, as_int: int) -> int:
    magnitude = abs(value)
    if magnitude < 1e11:
        return int(round(value * 1e9))
    if magnitude < 1e14:
        return as_int * 1_000_000
    if magnitude < 1e17:
        return as_int * 1_000
    return as_int


def _iso_ns(text: str) -> int | None:
    """``2024-01-02T14:30:00.123456789Z`` (any fraction, ``Z`` or ``+HH:MM``) in nanoseconds."""
    import datetime as _dt

    text = text.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    fraction_ns = 0
    if "." in text:
        head, _, rest = text.partition(".")
        digits = len(rest) - len(rest.lstrip("0123456789"))
        frac, tail = rest[:digits], rest[digits:]
        fraction_ns = int((frac + "000000000")[:9]) if frac else 0
        text = head + tail
    try:
        parsed = _dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=_dt.UTC)
    delta = parsed - _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + fraction_ns


def to_float(value: Any) -> float | None:
    """A float from a wire value (numbers or numeric text); None when it is missing or not a number."""
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _bad_amount(value: float) -> bool:
    """A size or volume that cannot be: NaN, infinite or negative."""
    return not math.isfinite(value) or value < 0


class Feed:
    """A vendor client running in a background thread, feeding a bounded queue.

    The node hands it ``session``, a coroutine function that connects, authenticates,
    subscribes and reconnects (with :meth:`backoff`), calling :meth:`put` for each record.
    Counters written by the thread live here; the node's thread only reads them.
    """

    def __init__(self, name: str, session: Callable[[Feed], Awaitable[None]], queue_size: int,
                 log: logging.Logger, log_every_s: float, reconnect_delay_s: float,
                 reconnect_max_delay_s: float, max_reconnects: int) -> None:
        self.name = name
        self.queue: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue(queue_size)
        self.log = log
        self.warn = RateLimitedLog(log, log_every_s)
        self.reconnect_delay_s = reconnect_delay_s
        self.reconnect_max_delay_s = reconnect_max_delay_s
        self.max_reconnects = max_reconnects
        self.stopping = threading.Event()
        self.error: str | None = None
        self.received = 0  # records taken off the wire (before the guard)
        self.overflow = 0  # records dropped because the queue was full
        self.malformed = 0  # frames or records the thread could not read
        self.reconnects = 0
        self.connections = 0  # sessions that got through authentication
        self.server_errors = 0  # error/status messages the server sent
        self._session = session
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._main, name=f"dmnflow-{self.name}", daemon=True)
        self._thread.start()

    def put(self, kind: str, record: dict[str, Any]) -> None:
        """Queue one record (from the client's thread); count it as lost when the queue is full."""
        self.received += 1
        try:
            self.queue.put_nowait((kind, record))
        except queue.Full:
            self.overflow += 1
            self.warn("queue_overflow", "%s: the node is not keeping up; dropped a %s record for %r",
                      self.name, kind, record.get("symbol"))

    def bad(self, fmt: str, *args: Any) -> None:
        """Count one frame or record the thread could not read."""
        self.malformed += 1
        self.warn("malformed", fmt, *args)

    def fail(self, message: str) -> None:
        """The stream cannot go on: the node raises ``StreamError(message)`` once the queue is drained."""
        if self.error is None:
            self.error = message

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before reconnect ``attempt`` (1, 2, ...): exponential, capped, with equal jitter."""
        capped = min(self.reconnect_max_delay_s, self.reconnect_delay_s * 2 ** (attempt - 1))
        return capped / 2 + random.random() * capped / 2

    def reconnecting(self, attempt: int, reason: str) -> float | None:
        """Count a lost connection; the delay before trying again, or None (and :meth:`fail`) past the limit."""
        if attempt > self.max_reconnects:
            self.fail(f"{self.name}: gave up after {attempt - 1} consecutive reconnect attempts "
                      f"(max_reconnects={self.max_reconnects}); last error: {reason}")
            return None
        self.reconnects += 1
        delay = self.backoff(attempt)
        if self.log.isEnabledFor(logging.WARNING):
            self.log.warning("%s: connection lost (%s); reconnecting in %.2fs (attempt %d of %d)",
                             self.name, reason, delay, attempt, self.max_reconnects)
        return delay

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # the thread must not die silently: the node reports it
            self.fail(f"{self.name}: the client thread failed: {type(exc).__name__}: {exc}")

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        if self.stopping.is_set():
            return
        try:
            await self._session(self)
        except asyncio.CancelledError:
            if not self.stopping.is_set():
                raise
            return
        if not self.stopping.is_set():
            self.fail(f"{self.name}: the client stopped on its own")

    def stop(self, timeout_s: float = 5.0) -> None:
        """Cancel the client's task (which closes its socket) and join the thread."""
        self.stopping.set()
        loop, task = self._loop, self._task
        if loop is not None and task is not None:
            with contextlib.suppress(RuntimeError):  # the loop has already closed: the thread is ending
                loop.call_soon_threadsafe(task.cancel)
        thread = self._thread
        if thread is not None:
            thread.join(timeout_s)
            if thread.is_alive():
                self.log.warning("%s: the client thread did not stop within %.1fs", self.name, timeout_s)


class LiveStream(Node):
    """Base of the live WebSocket sources: thread, bounded queue, guard, reconnect limits, counters.

    A subclass implements ``_open(ctx)`` (read keys, build the client: runs at setup, so a
    missing key fails the node before the graph starts) and ``_session(feed)`` (the client's
    coroutine: connect, authenticate, subscribe, reconnect with ``feed.reconnecting``).
    """

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        symbols: list[str] = Field(default_factory=lambda: ["SPY"],
                                   description="symbols to subscribe to; ['*'] takes every symbol the feed sends")
        channels: list[Literal["trades", "quotes", "bars"]] = Field(
            default_factory=lambda: ["bars"], min_length=1,
            description="what to subscribe to: bars (minute aggregates) become Bars, trades and quotes Ticks; "
                        "one kind per graph keeps each symbol's event times in order downstream")
        queue_size: int = Field(10_000, ge=1, description="records held between the client thread and the node; "
                                "when full, new records are dropped and counted as queue_overflow")
        max_reconnects: int = Field(10, ge=0, description="consecutive failed reconnects before the node fails; "
                                    "the count restarts once a connection delivers data")
        reconnect_delay_s: float = Field(1.0, gt=0, description="first reconnect delay; doubles on each "
                                         "consecutive failure (equal jitter)")
        reconnect_max_delay_s: float = Field(30.0, gt=0, description="cap of the reconnect delay")
        max_records: int = Field(0, ge=0, description="end the stream after publishing this many records; "
                                 "0 runs until the graph is stopped")
        poll_s: float = Field(0.02, gt=0, le=1, description="longest wait on an empty queue before the worker "
                              "gets a turn (it reads its control messages then)")
        batch: int = Field(256, ge=1, description="most records published per turn of the worker")
        log_every_s: float = Field(10.0, gt=0, description="at most one log line per kind of problem in this period")
        stop_timeout_s: float = Field(5.0, gt=0, description="how long stopping waits for the client thread")
        insecure: bool = Field(False, description="allow a ws:// url (keys sent in clear text): a local test "
                               "server only")

        # on ``url``, which each vendor's Params declares (after ``insecure``, so its value is known here)
        @field_validator("url", check_fields=False)
        @classmethod
        def _url_is_safe(cls, url: str | None, info: ValidationInfo) -> str | None:
            return check_url(url, bool(info.data.get("insecure")), "wss", "ws")

    market_data = Output(dict, codec="msgpack", doc="Bar or Tick per symbol on topic market_data.<SYMBOL>")

    vendor = "live"

    def __init__(self) -> None:
        self._feed: Feed | None = None
        self._guards: dict[str, MarketGuard] = {}
        self.counts: dict[str, int] = {"published": 0, "trades": 0, "quotes": 0, "bars": 0, "bad_size": 0}

    # -- what a vendor implements ---------------------------------------------------------

    def _open(self, ctx: Any) -> None:
        raise NotImplementedError

    async def _session(self, feed: Feed) -> None:
        raise NotImplementedError

    # -- the node -------------------------------------------------------------------------

    def setup(self, ctx: Any) -> None:
        p = ctx.params
        universe = None if "*" in p.symbols else p.symbols
        self._guards = {kind: MarketGuard(universe, ctx.log, what=kind, interval_s=p.log_every_s)
                        for kind in ("trades", "quotes", "bars")}
        self._warn = RateLimitedLog(ctx.log, p.log_every_s)
        self._open(ctx)
        self._feed = Feed(f"{self.vendor} stream", self._session, p.queue_size, ctx.log, p.log_every_s,
                          p.reconnect_delay_s, max(p.reconnect_max_delay_s, p.reconnect_delay_s), p.max_reconnects)

    def run(self, ctx: Any) -> Iterator[None]:
        feed = self._feed
        if feed is None:
            raise StreamError(f"{type(self).__name__}.run called before setup")
        p = ctx.params
        topics: dict[str, str] = {}
        feed.start()
        try:
            while True:
                try:
                    item = feed.queue.get(timeout=p.poll_s)
                except queue.Empty:
                    if feed.error is not None:
                        raise StreamError(feed.error) from None
                    yield None
                    continue
                for n in range(p.batch):
                    if n:
                        try:
                            item = feed.queue.get_nowait()
                        except queue.Empty:
                            break
                    kind, record = item
                    if not self._accept(kind, record):
                        continue
                    symbol = record["symbol"]
                    topic = topics.get(symbol)
                    if topic is None:
                        topic = topics[symbol] = topic_for(symbol)
                    ctx.emit("market_data", record, topic=topic, event_time=record["t"])
                    self.counts["published"] += 1
                    self.counts[kind] += 1
                    if p.max_records and self.counts["published"] >= p.max_records:
                        return
                yield None
        finally:
            feed.stop(p.stop_timeout_s)

    def _accept(self, kind: str, record: dict[str, Any]) -> bool:
        """Whether a record passes the guard (per kind, so a minute bar is not "older" than a trade)."""
        amount = record.get("volume" if kind == "bars" else "size", 0.0)
        if _bad_amount(amount):
            self.counts["bad_size"] += 1
            self._warn("bad_price", "skipped %s for %r at t=%s: %s %r", kind, record.get("symbol"), record.get("t"),
                       "volume" if kind == "bars" else "size", amount)
            return False
        return self._guards[kind].check_record(record) is not None

    def teardown(self, ctx: Any) -> None:
        if self._feed is not None:
            self._feed.stop(ctx.params.stop_timeout_s)

    def summary(self) -> dict[str, int]:
        """What the stream did: records published (by kind), skipped (by reason), dropped, reconnects."""
        out = dict(self.counts)
        for name in _GUARD_COUNTERS:
            out[name] = sum(guard.counts[name] for guard in self._guards.values())
        out["bad_price"] += out.pop("bad_size")
        feed = self._feed
        out["malformed"] += feed.malformed if feed else 0
        out["received"] = feed.received if feed else 0
        out["queue_overflow"] = feed.overflow if feed else 0
        out["reconnects"] = feed.reconnects if feed else 0
        out["connections"] = feed.connections if feed else 0
        out["server_errors"] = feed.server_errors if feed else 0
        return out


# Massive's event codes (``ev``) by what they become.
_KIND_OF_EVENT = {"T": "trades", "XT": "trades", "Q": "quotes", "XQ": "quotes", "C": "quotes",
                  "A": "bars", "AM": "bars", "XA": "bars", "XAS": "bars", "CA": "bars", "CAS": "bars"}
_OK_STATUSES = {"connected", "auth_success", "success"}
_MARKETS = ("stocks", "options", "indices", "futures", "futures/cme", "futures/cbot", "futures/nymex",
            "futures/comex", "crypto", "forex")


def massive_subscriptions(market: str, channels: list[str], symbols: list[str], bar_interval: str) -> list[str]:
    """The subscription strings for Massive's ``subscribe`` action, e.g. ``["T.AAPL", "AM.AAPL"]``.

    Raises:
        ValueError: a channel the market does not have (forex has no trades, indices no trades or quotes).
    """
    second = bar_interval == "second"
    if market == "crypto":
        codes = {"trades": "XT", "quotes": "XQ", "bars": "XAS" if second else "XA"}
    elif market == "forex":
        codes = {"quotes": "C", "bars": "CAS" if second else "CA"}
    elif market == "indices":
        codes = {"bars": "A" if second else "AM"}
    else:
        codes = {"trades": "T", "quotes": "Q", "bars": "A" if second else "AM"}
    missing = [channel for channel in channels if channel not in codes]
    if missing:
        raise ValueError(f"market {market!r} has no {', '.join(missing)} channel; it has {sorted(codes)}")
    return [f"{codes[channel]}.{symbol}" for channel in dict.fromkeys(channels) for symbol in symbols]


def massive_record(kind: str, event: Any) -> dict[str, Any]:
    """A Bar or Tick record (docs/dmn/messages.md) from one of the ``massive`` client's event models.

    Trades become Ticks; a quote becomes a Tick at the mid price with size 0 and its
    ``bid``, ``ask``, ``bid_size``, ``ask_size``; an aggregate becomes a Bar stamped with
    its start time. Prices are passed on as they are (the guard judges them).

    Raises:
        ValueError: the event lacks its symbol, its time or a price.
    """
    symbol = getattr(event, "symbol", None) or getattr(event, "pair", None)
    if not isinstance(symbol, str) or not symbol:
        raise ValueError("no symbol")
    if kind == "bars":
        t = to_ns(getattr(event, "start_timestamp", None)) or to_ns(getattr(event, "end_timestamp", None))
        prices = [to_float(getattr(event, name, None)) for name in ("open", "high", "low", "close")]
        if t is None or any(price is None for price in prices):
            raise ValueError("an aggregate needs s (start time) and o, h, l, c")
        volume = to_float(getattr(event, "volume", None))
        return make_bar(symbol, t, *prices, 0.0 if volume is None else volume)  # type: ignore[arg-type]
    t = to_ns(getattr(event, "timestamp", None)) or to_ns(getattr(event, "sip_timestamp", None))
    if t is None:
        raise ValueError("no timestamp t")
    if kind == "trades":
        price = to_float(getattr(event, "price", None))
        if price is None:
            raise ValueError("a trade needs a price p")
        size = to_float(getattr(event, "size", None))
        return make_tick(symbol, t, price, 0.0 if size is None else size)
    bid, ask = to_float(getattr(event, "bid_price", None)), to_float(getattr(event, "ask_price", None))
    if bid is None or ask is None:
        raise ValueError("a quote needs bp and ap")
    both = math.isfinite(bid) and math.isfinite(ask) and bid > 0 and ask > 0
    record = make_tick(symbol, t, (bid + ask) / 2 if both else math.nan, 0.0)
    record.update(bid=bid, ask=ask, bid_size=to_float(getattr(event, "bid_size", None)) or 0.0,
                  ask_size=to_float(getattr(event, "ask_size", None)) or 0.0)
    return record


class _ConnectFailed(Exception):
    """A connection attempt failed (the cause is its ``__context__``): our loop, not the library's, retries."""


def _fail_fast() -> Iterator[float]:
    """``reconnect_delays`` for websockets' ``connect``: do not retry inside the client, tell us."""
    raise _ConnectFailed("connection attempt failed")
    yield 0.0  # pragma: no cover - makes this a generator function


class MassiveStream(LiveStream):
    """Trades, quotes and aggregates from Polygon.io ("Massive") over its WebSocket, as Ticks and Bars.

    The live path of the DMN graph needs real exchange data stamped with exchange time;
    this source speaks Massive's protocol through the vendor's own ``massive.WebSocketClient``
    (auth with ``MASSIVE_API_KEY``, ``subscribe`` to ``T.<SYM>``/``Q.<SYM>``/``AM.<SYM>``)
    and replaces the synthetic market with one ``uses:`` line. Reconnects with backoff on a
    dead socket, fails with a clear message when the key is missing or refused or the
    server stays away, and skips and counts bad records (``summary()``).
    """

    class Params(LiveStream.Params):
        model_config = ConfigDict(extra="forbid")
        market: Literal[_MARKETS] = Field("stocks", description="Massive market (cluster): stocks, options, "  # type: ignore[valid-type]
                                          "indices, futures, crypto, forex, ...")
        feed: str = Field("socket.massive.com", description="feed host: socket.massive.com (real time), "
                          "delayed.massive.com (15-minute delayed) or another Massive feed")
        url: str | None = Field(None, description="full WebSocket URL overriding feed and market (a proxy, or "
                                "a local test server), e.g. wss://proxy.example/stocks; ws:// needs insecure: true")
        bar_interval: Literal["minute", "second"] = Field("minute", description="aggregates to subscribe to: "
                                                          "AM (minute) or A (second)")
        open_timeout_s: float = Field(10.0, gt=0, description="timeout of one connection attempt (TCP, TLS, "
                                      "WebSocket handshake)")

        # a field validator, not a model one: the compiler points at the field (``market``) it names
        @field_validator("market")
        @classmethod
        def _has_channels(cls, market: str, info: ValidationInfo) -> str:
            massive_subscriptions(market, info.data.get("channels") or [], [], "minute")  # raises ValueError
            return market

    vendor = "massive"
    env = ("MASSIVE_API_KEY", "POLYGON_API_KEY")  # the only secrets this node's worker gets

    def _open(self, ctx: Any) -> None:
        p = ctx.params
        key = os.environ.get("MASSIVE_API_KEY") or os.environ.get("POLYGON_API_KEY")
        if not key:
            raise StreamError("massive stream: no API key: set the environment variable MASSIVE_API_KEY "
                              "(POLYGON_API_KEY is read too)")
        try:
            self._subscriptions = massive_subscriptions(p.market, p.channels, p.symbols, p.bar_interval)
        except ValueError as exc:
            raise StreamError(f"massive stream: {exc}") from None
        try:
            import massive  # noqa: F401 - fail at setup, with the fix, when the extra is missing
            from websockets.asyncio.client import connect
        except ImportError as exc:
            raise StreamError("massive stream: the 'massive' package is not installed: "
                              "pip install 'dmnflow[live]'") from exc
        if "reconnect_delays" not in inspect.signature(connect.__init__).parameters:
            # the client's process_exception says "retry" to every failure: without this hook,
            # websockets < 17 retries a dead server forever and the node never learns of it
            raise StreamError(f"massive stream: websockets {package_version('websockets')} is too old (it would retry "
                              "a dead server forever): pip install 'websockets>=17' (or 'dmnflow[live]')")
        self._key = key
        self._params = p
        self._url = p.url or f"wss://{p.feed}/{p.market}"

    async def _session(self, feed: Feed) -> None:
        from massive import WebSocketClient
        from massive.exceptions import AuthError
        from massive.websocket.models import Market, parse_single

        p = self._params
        market = Market(p.market)
        # the massive client retries every failure inside websockets' connect loop; _fail_fast
        # hands each one to our loop instead, which counts and bounds them (websockets >= 17)
        options: dict[str, Any] = {"open_timeout": p.open_timeout_s, "reconnect_delays": _fail_fast}
        vendor_log = logging.getLogger("massive.parse")
        attempt = 0
        while True:
            client = WebSocketClient(api_key=self._key, feed=p.feed, market=market, raw=True,
                                     subscriptions=list(self._subscriptions), max_reconnects=0)
            client.url = self._url
            before = feed.received
            try:
                await client.connect(self._processor(feed, market, parse_single, vendor_log), close_timeout=1,
                                     **options)
                reason = "the server closed the connection"
            except AuthError as exc:
                feed.fail(f"massive stream: authentication failed at {self._url}: {exc} "
                          "(check MASSIVE_API_KEY)")
                return
            except _ConnectFailed as exc:
                reason = f"cannot connect to {self._url}: {exc.__context__}"
            except Exception as exc:  # a dropped socket, a bad handshake, a frame the client choked on
                reason = f"{type(exc).__name__}: {exc}"
            finally:
                await _close(client)
            if feed.received > before:
                attempt = 0  # that connection delivered data: this is a fresh failure
            attempt += 1
            delay = feed.reconnecting(attempt, reason)
            if delay is None:
                return
            await asyncio.sleep(delay)

    def _processor(self, feed: Feed, market: Any, parse_single: Callable[..., Any],
                   vendor_log: logging.Logger) -> Callable[[str | bytes], Awaitable[None]]:
        """The client's callback for one connection: decode a frame, queue its records."""
        first = True

        async def process(frame: str | bytes) -> None:
            nonlocal first
            if first:
                first = False
                feed.connections += 1
            try:
                events = json.loads(frame)
            except ValueError:
                feed.bad("%s: a frame that is not JSON: %.80r", feed.name, frame)
                return
            for event in events if isinstance(events, list) else [events]:
                ev = event.get("ev") if isinstance(event, dict) else None
                if ev == "status":
                    if event.get("status") not in _OK_STATUSES:
                        feed.server_errors += 1
                        feed.warn("server_status", "%s: the server says %s: %s", feed.name,
                                  event.get("status"), event.get("message"))
                    continue
                kind = _KIND_OF_EVENT.get(ev)  # type: ignore[arg-type]
                if kind is None:
                    feed.bad("%s: an event of unknown type %r", feed.name, ev)
                    continue
                try:
                    record = massive_record(kind, parse_single(event, vendor_log, market))
                except Exception as exc:  # a field of the wrong type: one bad event, not a dead stream
                    feed.bad("%s: an unreadable %s event (%s): %.120r", feed.name, ev, exc, event)
                    continue
                feed.put(kind, record)

        return process


async def _close(client: Any) -> None:
    """Close the client's socket if it is still open (bounded: a dead peer cannot hold us)."""
    ws, client.websocket = client.websocket, None
    if ws is not None:
        with contextlib.suppress(Exception):  # closing a broken socket: nothing left to save
            await asyncio.wait_for(ws.close(), 2)
