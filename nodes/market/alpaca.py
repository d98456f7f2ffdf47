"""Live market data from Alpaca: the ``AlpacaStream`` source node.

Alpaca's market-data WebSocket speaks msgpack: ``{"action":"auth","key":..,"secret":..}``,
``{"action":"subscribe","trades":[..],"bars":[..]}``, then lists of ``T``-tagged messages
(``t`` trades, ``q`` quotes, ``b`` minute bars) stamped with msgpack timestamps. The node
drives ``alpaca-py``'s own ``StockDataStream``/``CryptoDataStream`` in raw mode (so times keep
their nanoseconds) and bounds its reconnects. The thread, queue, guard and counters are
:class:`nodes.market.massive.LiveStream`'s. How to run it: docs/dmn/live.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import math
import os
from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationInfo, field_validator

from nodes.support import package_version

from .common import make_bar, make_tick
from .massive import Feed, LiveStream, StreamError, to_float, to_ns

__all__ = ["AlpacaStream", "alpaca_record"]

_KIND_OF_TYPE = {"t": "trades", "q": "quotes", "b": "bars"}


def alpaca_record(kind: str, msg: dict[str, Any]) -> dict[str, Any]:
    """A Bar or Tick record (docs/dmn/messages.md) from one raw Alpaca stream message.

    Trades become Ticks; a quote a Tick at the mid price with size 0 plus its ``bid``, ``ask``,
    ``bid_size``, ``ask_size``; a bar a Bar stamped with its start time. Prices are passed on
    as they are (the guard judges them).

    Raises:
        ValueError: the message lacks its symbol ``S``, its time ``t`` or a price.
    """
    symbol = msg.get("S")
    if not isinstance(symbol, str) or not symbol:
        raise ValueError("no symbol S")
    t = to_ns(msg.get("t"))
    if t is None:
        raise ValueError("no timestamp t")
    if kind == "bars":
        prices = [to_float(msg.get(k)) for k in ("o", "h", "l", "c")]
        if any(price is None for price in prices):
            raise ValueError("a bar needs o, h, l, c")
        volume = to_float(msg.get("v"))
        return make_bar(symbol, t, *prices, 0.0 if volume is None else volume)  # type: ignore[arg-type]
    if kind == "trades":
        price = to_float(msg.get("p"))
        if price is None:
            raise ValueError("a trade needs a price p")
        size = to_float(msg.get("s"))
        return make_tick(symbol, t, price, 0.0 if size is None else size)
    bid, ask = to_float(msg.get("bp")), to_float(msg.get("ap"))
    if bid is None or ask is None:
        raise ValueError("a quote needs bp and ap")
    both = math.isfinite(bid) and math.isfinite(ask) and bid > 0 and ask > 0
    record = make_tick(symbol, t, (bid + ask) / 2 if both else math.nan, 0.0)
    record.update(bid=bid, ask=ask, bid_size=to_float(msg.get("bs")) or 0.0, ask_size=to_float(msg.get("as")) or 0.0)
    return record


async def _queue(feed: Feed, kind: str, msg: dict[str, Any]) -> None:
    """Queue the record of one raw message (alpaca-py's handler signature is a coroutine)."""
    try:
        record = alpaca_record(kind, msg)
    except Exception as exc:  # one unreadable message, not a dead stream
        feed.bad("%s: an unreadable %s message (%s): %.120r", feed.name, kind, exc, msg)
        return
    feed.put(kind, record)


def _auth_refused(exc: Exception) -> bool:
    """Whether alpaca-py's error from the auth step means the keys were refused (retrying will not help)."""
    text = str(exc).lower()
    return "auth" in text or "not authorized" in text or "forbidden" in text


def _bounded(base: type, feed: Feed, url: str) -> type:
    """``base`` (an alpaca-py data stream class) whose reconnects are counted, bounded and reported.

    alpaca-py reconnects forever and retries refused keys; here a refused key and too many
    consecutive failures end the stream with a message the node raises.
    """

    class BoundedStream(base):  # type: ignore[misc, valid-type]
        async def _auth(self) -> None:
            try:
                await super()._auth()
            except ValueError as exc:
                if _auth_refused(exc):
                    feed.fail(f"alpaca stream: authentication failed at {url}: {exc} "
                              "(check APCA_API_KEY_ID and APCA_API_SECRET_KEY)")
                    self._should_run = False
                raise
            feed.connections += 1

        async def _wait_before_reconnect(self, retries: int) -> None:
            if not self._should_run or feed.stopping.is_set():
                return
            if feed.reconnecting(retries, "the connection failed or was closed (see alpaca-py's log)") is None:
                self._should_run = False  # _run_forever returns; the node raises feed.error
                return
            await super()._wait_before_reconnect(retries)

        async def _dispatch(self, msg: dict[str, Any]) -> None:
            msg_type = msg.get("T")
            if msg_type == "error":
                feed.server_errors += 1
                feed.warn("server_error", "%s: the server says %s (code %s)", feed.name, msg.get("msg"),
                          msg.get("code"))
            kind = _KIND_OF_TYPE.get(msg_type)  # type: ignore[arg-type]
            if kind is not None and "S" in msg:
                handlers = self._handlers[kind]
                if msg["S"] not in handlers and "*" not in handlers:
                    # alpaca-py drops data for symbols it has no handler for; the guard counts it instead
                    await _queue(feed, kind, msg)
                    return
            await super()._dispatch(msg)

    return BoundedStream


class AlpacaStream(LiveStream):
    """Trades, quotes and minute bars from Alpaca's market-data WebSocket, as Ticks and Bars.

    The DMN graph's live path with an Alpaca account: the same keys trade through
    ``nodes.execution.alpaca:AlpacaBroker``. Speaks Alpaca's msgpack protocol through
    ``alpaca-py``'s own stream client (stocks on the ``iex`` or ``sip`` feed, or crypto),
    keys from ``APCA_API_KEY_ID`` and ``APCA_API_SECRET_KEY``. Reconnects with backoff on a
    dead socket, fails with a clear message when a key is missing or refused or the server
    stays away, and skips and counts bad records (``summary()``).
    """

    class Params(LiveStream.Params):
        model_config = ConfigDict(extra="forbid")
        asset_class: Literal["stock", "crypto"] = Field("stock", description="stock (StockDataStream) or crypto "
                                                        "(CryptoDataStream); crypto symbols look like BTC/USD")
        feed: Literal["iex", "sip", "us"] = Field("iex", description="data feed: iex (free) or sip for stocks, "
                                                  "us for crypto")
        url: str | None = Field(None, description="WebSocket URL overriding Alpaca's (a proxy, or a local test "
                                "server), e.g. wss://proxy.example/v2/iex; ws:// needs insecure: true")
        data_timeout_s: float | None = Field(None, gt=0, description="reconnect when no market data arrived for "
                                             "this long (a connected but mute socket); none: never")
        open_timeout_s: float = Field(10.0, gt=0, description="timeout of one connection attempt")

        # a field validator, not a model one: the compiler points at the field (``feed``) it names
        @field_validator("feed")
        @classmethod
        def _feed_fits(cls, feed: str, info: ValidationInfo) -> str:
            asset_class = info.data.get("asset_class", "stock")
            if (asset_class == "crypto") != (feed == "us"):
                raise ValueError(f"feed {feed!r} does not serve {asset_class}: use iex or sip for stocks, "
                                 "us for crypto")
            return feed

    vendor = "alpaca"
    env = ("APCA_API_KEY_ID", "APCA_API_SECRET_KEY")  # the only secrets this node's worker gets

    def _open(self, ctx: Any) -> None:
        key, secret = os.environ.get("APCA_API_KEY_ID"), os.environ.get("APCA_API_SECRET_KEY")
        missing = [name for name, value in (("APCA_API_KEY_ID", key), ("APCA_API_SECRET_KEY", secret)) if not value]
        if missing:
            plural = "s" if len(missing) > 1 else ""
            raise StreamError(f"alpaca stream: no API keys: set the environment variable{plural} "
                              f"{' and '.join(missing)}")
        try:
            from alpaca.data.live.websocket import DataStream  # fail at setup, with the fix, without the extra
        except ImportError as exc:
            raise StreamError("alpaca stream: the 'alpaca-py' package is not installed: "
                              "pip install 'dmnflow[live]'") from exc
        if "data_timeout" not in inspect.signature(DataStream.__init__).parameters or not hasattr(
                DataStream, "_wait_before_reconnect"):
            raise StreamError(f"alpaca stream: alpaca-py {package_version('alpaca-py')} is too old (no data_timeout, "
                              "no bounded reconnects): pip install 'alpaca-py>=0.44' (or 'dmnflow[live]')")
        p = ctx.params
        self._keys = (key, secret)
        self._params = p
        if p.url:
            self._url = p.url
        elif p.asset_class == "crypto":
            self._url = f"wss://stream.data.alpaca.markets/v1beta3/crypto/{p.feed}"
        else:
            self._url = f"wss://stream.data.alpaca.markets/v2/{p.feed}"

    def _client(self, feed: Feed) -> Any:
        """alpaca-py's stream client for these params, bounded, with a handler per channel."""
        from alpaca.data.enums import CryptoFeed, DataFeed
        from alpaca.data.live import CryptoDataStream, StockDataStream

        p = self._params
        options = {"ping_interval": 10, "ping_timeout": 180, "max_queue": 1024, "open_timeout": p.open_timeout_s,
                   "close_timeout": 1}
        key, secret = self._keys
        if p.asset_class == "crypto":
            stream = _bounded(CryptoDataStream, feed, self._url)(
                key, secret, raw_data=True, feed=CryptoFeed(p.feed), url_override=self._url,
                websocket_params=options, data_timeout=p.data_timeout_s)
        else:
            stream = _bounded(StockDataStream, feed, self._url)(
                key, secret, raw_data=True, feed=DataFeed(p.feed), url_override=self._url,
                websocket_params=options, data_timeout=p.data_timeout_s)
        # alpaca-py's backoff: equal jitter between delay/2 and delay, doubling, capped
        stream._reconnect_min_backoff = p.reconnect_delay_s
        stream._reconnect_max_backoff = max(p.reconnect_max_delay_s, p.reconnect_delay_s)
        subscribe = {"trades": stream.subscribe_trades, "quotes": stream.subscribe_quotes,
                     "bars": stream.subscribe_bars}
        for channel in dict.fromkeys(p.channels):
            subscribe[channel](self._handler(feed, channel), *p.symbols)
        return stream

    @staticmethod
    def _handler(feed: Feed, kind: str) -> Any:
        async def handle(msg: dict[str, Any]) -> None:
            await _queue(feed, kind, msg)

        return handle

    async def _session(self, feed: Feed) -> None:
        stream = self._client(feed)
        try:
            await stream._run_forever()  # alpaca-py's own connect/auth/subscribe/consume/reconnect loop
        finally:
            stream._should_run = False
            with contextlib.suppress(Exception):  # closing a broken socket: nothing left to save
                await asyncio.wait_for(stream.close(), 2)
        if feed.error is None and not feed.stopping.is_set():
            feed.fail("alpaca stream: the client ended the stream (see alpaca-py's log: e.g. insufficient "
                      "subscription for this feed)")
