"""Protocol-faithful local fakes of the live vendors, for the live connector tests.

- :class:`FakeMassive`: Massive's (Polygon's) market-data WebSocket: JSON text frames, each a
  list of events; ``connected`` status, ``{"action":"auth","params":KEY}`` answered with
  ``auth_success`` or ``auth_failed``, ``{"action":"subscribe","params":"T.AAPL,AM.AAPL"}``
  answered with one ``success`` status per subscription, then ``ev``-tagged events.
- :class:`FakeAlpacaStream`: Alpaca's market-data WebSocket: msgpack binary frames, each a list
  of messages; ``[{"T":"success","msg":"connected"}]``, ``{"action":"auth","key","secret"}``
  answered with ``authenticated`` or ``{"T":"error","code":402,"msg":"auth failed"}``,
  ``{"action":"subscribe","trades":[...],"bars":[...]}`` answered with a ``subscription``
  message, then ``T``-tagged messages with ``msgpack.Timestamp`` times.
- :class:`FakeAlpacaREST`: the trading REST API (``/v2/account``, ``/v2/orders``,
  ``/v2/orders/{id}``, ``/v2/orders:by_client_order_id``, ``/v2/positions``) on
  ``http.server`` in a thread, with scripted failures (status code, ``Retry-After``).

Every server listens on 127.0.0.1 with an ephemeral port, runs in a daemon thread, and is a
context manager whose exit stops it and joins its thread, also when the test failed.

A WebSocket fake plays one *script* per connection (the last script is reused for later
connections). A script is a list of steps after the handshake: a list of events (sent as one
frame), ``bytes``/``str`` (sent as is), ``("sleep", seconds)``, ``"drop"`` (the TCP
connection ends without a closing handshake), ``"close"`` (a normal close, code 1000) or
``"hang"`` (keep the connection open until the client leaves, the default at the end).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import msgpack
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from dmnflow.node import Context

Script = list[Any]


class FakeWebSocketServer:
    """A websockets server on 127.0.0.1:<ephemeral> in its own thread, one script per connection."""

    def __init__(self, scripts: list[Script] | None = None) -> None:
        self.scripts = scripts or [["hang"]]
        self.port = 0
        self.connections = 0  # connections accepted so far
        self.open = 0  # connections open now
        self.received: list[Any] = []  # every client message, decoded, in order
        self.errors: list[str] = []  # exceptions raised by a session (a bug in the fake or the client)
        self.headers: list[Any] = []  # each connection's request headers (case-insensitive)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> FakeWebSocketServer:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), name="fake-ws", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            self.__exit__()
            raise RuntimeError("the fake WebSocket server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        loop, stopped = self._loop, self._stopped
        if loop is not None and stopped is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stopped.set)
        if self._thread is not None:
            self._thread.join(10)

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        async with serve(self._handle, "127.0.0.1", 0, close_timeout=1) as server:
            self.port = next(iter(server.sockets)).getsockname()[1]
            self._ready.set()
            await self._stopped.wait()

    async def _handle(self, ws: ServerConnection) -> None:
        index = self.connections
        self.connections += 1
        self.open += 1
        self.headers.append(ws.request.headers if ws.request is not None else {})
        script = self.scripts[min(index, len(self.scripts) - 1)]
        try:
            if await self.handshake(ws):
                await self._play(ws, script)
        except ConnectionClosed:
            pass
        except Exception as exc:
            self.errors.append(f"connection {index}: {type(exc).__name__}: {exc}")
        finally:
            self.open -= 1

    def wait_closed(self, timeout_s: float = 5.0) -> bool:
        """Wait (bounded) until no client connection is open; whether that happened."""
        deadline = time.monotonic() + timeout_s
        while self.open and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.open == 0

    async def _play(self, ws: ServerConnection, script: Script) -> None:
        for step in script:
            if step == "drop":
                ws.transport.close()  # sends what is buffered, then FIN: no closing handshake
                return
            if step == "close":
                await ws.close(1000, "bye")
                return
            if step == "hang":
                break
            if isinstance(step, tuple) and step[0] == "sleep":
                await asyncio.sleep(step[1])
            elif isinstance(step, bytes | str):
                await ws.send(step)
            else:
                await ws.send(self.encode(step))
        await ws.wait_closed()

    async def handshake(self, ws: ServerConnection) -> bool:
        """The vendor's greeting, auth and subscribe exchange; False ends the connection."""
        raise NotImplementedError

    def encode(self, events: list[dict[str, Any]]) -> str | bytes:
        raise NotImplementedError

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"


class FakeMassive(FakeWebSocketServer):
    """Massive's (Polygon's) market-data WebSocket, JSON text frames."""

    def __init__(self, scripts: list[Script] | None = None, api_key: str = "test-key") -> None:
        super().__init__(scripts)
        self.api_key = api_key

    def encode(self, events: list[dict[str, Any]]) -> str:
        return json.dumps(events)

    async def handshake(self, ws: ServerConnection) -> bool:
        await ws.send(json.dumps([{"ev": "status", "status": "connected", "message": "Connected Successfully"}]))
        auth = json.loads(await ws.recv())
        self.received.append(auth)
        if auth.get("action") != "auth" or auth.get("params") != self.api_key:
            await ws.send(json.dumps([{"ev": "status", "status": "auth_failed", "message": "authentication failed"}]))
            await ws.close()
            return False
        await ws.send(json.dumps([{"ev": "status", "status": "auth_success", "message": "authenticated"}]))
        subscribe = json.loads(await ws.recv())
        self.received.append(subscribe)
        if subscribe.get("action") != "subscribe":
            return False
        await ws.send(json.dumps([{"ev": "status", "status": "success", "message": f"subscribed to: {param}"}
                                  for param in subscribe["params"].split(",")]))
        return True


def massive_trade(sym: str, t_ms: int, price: float, size: float = 100, i: str = "1") -> dict[str, Any]:
    """A Massive stocks trade event (``t`` in milliseconds)."""
    return {"ev": "T", "sym": sym, "x": 4, "i": i, "z": 3, "p": price, "s": size, "c": [12], "t": t_ms, "q": 1}


def massive_quote(sym: str, t_ms: int, bid: float, ask: float) -> dict[str, Any]:
    return {"ev": "Q", "sym": sym, "bx": 4, "bp": bid, "bs": 2, "ax": 7, "ap": ask, "as": 3, "c": 0, "t": t_ms,
            "q": 1, "z": 3}


def massive_agg(sym: str, start_ms: int, o: float, h: float, lo: float, c: float, v: float = 1000,
                ev: str = "AM") -> dict[str, Any]:
    """A Massive aggregate event (minute by default), start and end in milliseconds."""
    return {"ev": ev, "sym": sym, "v": v, "av": v, "op": o, "vw": c, "o": o, "c": c, "h": h, "l": lo, "a": c,
            "z": 10, "s": start_ms, "e": start_ms + 60_000}


class FakeAlpacaStream(FakeWebSocketServer):
    """Alpaca's market-data WebSocket (stocks ``/v2/<feed>``, crypto ``/v1beta3/crypto/us``), msgpack frames."""

    def __init__(self, scripts: list[Script] | None = None, key: str = "test-key-id",
                 secret: str = "test-secret") -> None:
        super().__init__(scripts)
        self.key, self.secret = key, secret

    def encode(self, events: list[dict[str, Any]]) -> bytes:
        return msgpack.packb(events, use_bin_type=True)

    async def handshake(self, ws: ServerConnection) -> bool:
        await ws.send(self.encode([{"T": "success", "msg": "connected"}]))
        auth = msgpack.unpackb(await ws.recv())
        self.received.append(auth)
        if auth.get("action") != "auth" or auth.get("key") != self.key or auth.get("secret") != self.secret:
            await ws.send(self.encode([{"T": "error", "code": 402, "msg": "auth failed"}]))
            await ws.close(1008, "auth failed")
            return False
        await ws.send(self.encode([{"T": "success", "msg": "authenticated"}]))
        subscribe = msgpack.unpackb(await ws.recv())
        self.received.append(subscribe)
        if subscribe.get("action") != "subscribe":
            return False
        channels = ("trades", "quotes", "bars", "updatedBars", "dailyBars", "statuses", "lulds")
        ack = {"T": "subscription", **{c: list(subscribe.get(c, [])) for c in channels},
               "corrections": list(subscribe.get("trades", [])), "cancelErrors": list(subscribe.get("trades", []))}
        await ws.send(self.encode([ack]))
        return True


def alpaca_trade(sym: str, t_ns: int, price: float, size: float = 100, i: int = 1) -> dict[str, Any]:
    """An Alpaca trade message; ``t`` is a msgpack Timestamp, as on the wire."""
    return {"T": "t", "S": sym, "i": i, "x": "V", "p": price, "s": size, "c": ["@"],
            "t": msgpack.Timestamp.from_unix_nano(t_ns), "z": "C"}


def alpaca_bar(sym: str, t_ns: int, o: float, h: float, lo: float, c: float, v: float = 1000) -> dict[str, Any]:
    return {"T": "b", "S": sym, "o": o, "h": h, "l": lo, "c": c, "v": v,
            "t": msgpack.Timestamp.from_unix_nano(t_ns), "n": 12, "vw": c}


def alpaca_quote(sym: str, t_ns: int, bid: float, ask: float) -> dict[str, Any]:
    return {"T": "q", "S": sym, "bx": "V", "bp": bid, "bs": 2, "ax": "V", "ap": ask, "as": 3,
            "t": msgpack.Timestamp.from_unix_nano(t_ns), "c": ["R"], "z": "C"}


# -- REST -------------------------------------------------------------------------------------


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())


class FakeAlpacaREST:
    """Alpaca's trading REST API, enough of it for a broker: account, orders, positions.

    Market orders are accepted as ``new`` and fill at ``prices[symbol]`` (plus
    ``slip`` per share, against the buyer) after ``fill_after_polls`` reads of the order;
    ``fill_after_polls=0`` fills them in the POST reply. As Alpaca does, a buy beyond the
    buying power (2 x equity) or a sell below zero with ``shorting_enabled=False`` is
    answered 403 with Alpaca's message. ``after_submit`` spoils the replies of the next
    orders placed, one entry each: ``"lost"`` (placed, answered 504), ``"timeout"`` (placed,
    answered after ``slow_s`` seconds, past the client's timeout) or ``"garbage"`` (placed,
    answered 200 with a body that is not JSON); ``lose_submit_replies=n`` is ``n`` x
    ``"lost"``. ``failures`` is a list of ``(method, path prefix, status, headers)``
    answered once each, in order, before the real route: e.g. ``("POST", "/v2/orders",
    429, {"Retry-After": "0"})``. Requests are kept in ``requests`` as ``(method, path,
    json body or None, headers)``.
    """

    def __init__(self, key: str = "test-key-id", secret: str = "test-secret", cash: float = 100_000.0,
                 prices: dict[str, float] | None = None, fill_after_polls: int = 1, slip: float = 0.0) -> None:
        self.key, self.secret = key, secret
        self.cash = cash
        self.prices = dict(prices or {})
        self.fill_after_polls = fill_after_polls
        self.slip = slip
        self.positions: dict[str, float] = {}
        self.avg_price: dict[str, float] = {}
        self.orders: dict[str, dict[str, Any]] = {}
        self.polls: dict[str, int] = {}
        self.failures: list[tuple[str, str, int, dict[str, str]]] = []
        self.requests: list[tuple[str, str, Any, dict[str, str]]] = []
        self.reject: Callable[[dict[str, Any]], str | None] = lambda order: None  # -> a 422 message
        self.after_submit: list[str] = []  # "lost", "timeout", "garbage": how the next placed orders' replies fail
        self.slow_s = 1.0
        self.shorting_enabled = True
        self.account_number = "PA0000FAKE"
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def lose_submit_replies(self) -> int:
        return self.after_submit.count("lost")

    @lose_submit_replies.setter
    def lose_submit_replies(self, n: int) -> None:
        self.after_submit = [f for f in self.after_submit if f != "lost"] + ["lost"] * n

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeAlpacaREST:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                fake._serve(self, "GET")

            def do_POST(self) -> None:  # noqa: N802
                fake._serve(self, "POST")

            def do_DELETE(self) -> None:  # noqa: N802
                fake._serve(self, "DELETE")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-rest", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(10)

    # -- the API --------------------------------------------------------------------------

    def _serve(self, h: BaseHTTPRequestHandler, method: str) -> None:
        url = urlparse(h.path)
        length = int(h.headers.get("Content-Length") or 0)
        body = json.loads(h.rfile.read(length)) if length else None
        with self._lock:  # decide the reply under the lock; wait (a slow reply) and send it outside
            status, payload, headers, delay = self._route(h, method, url, body)
        if delay:
            time.sleep(delay)
        with contextlib.suppress(OSError):  # the client gave up waiting
            self._reply(h, status, payload, headers)

    def _route(self, h: BaseHTTPRequestHandler, method: str, url: Any,
               body: Any) -> tuple[int, Any, dict[str, str] | None, float]:
        self.requests.append((method, url.path, body, dict(h.headers)))
        for k, (m, prefix, status, headers) in enumerate(self.failures):
            if m == method and url.path.startswith(prefix):
                del self.failures[k]
                return status, {"code": status * 100, "message": f"scripted {status}"}, headers, 0.0
        if h.headers.get("APCA-API-KEY-ID") != self.key or h.headers.get("APCA-API-SECRET-KEY") != self.secret:
            return 401, {"code": 40110000, "message": "request is not authorized"}, None, 0.0
        if method == "GET" and url.path == "/v2/account":
            return 200, self._account(), None, 0.0
        if method == "GET" and url.path == "/v2/positions":
            return 200, [self._position(s) for s, q in self.positions.items() if q], None, 0.0
        if method == "POST" and url.path == "/v2/orders":
            return self._submit(body or {})
        if method == "GET" and url.path == "/v2/orders:by_client_order_id":
            cid = parse_qs(url.query).get("client_order_id", [""])[0]
            for order in self.orders.values():
                if order["client_order_id"] == cid:
                    return 200, order, None, 0.0
            return 404, {"code": 40410000, "message": "order not found"}, None, 0.0
        if method == "GET" and url.path.startswith("/v2/orders/"):
            order = self.orders.get(url.path.rsplit("/", 1)[1])
            if order is None:
                return 404, {"code": 40410000, "message": "order not found"}, None, 0.0
            self.polls[order["id"]] = self.polls.get(order["id"], 0) + 1
            if order["status"] in ("new", "accepted") and self.polls[order["id"]] >= self.fill_after_polls:
                self._fill(order)
            return 200, order, None, 0.0
        return 404, {"code": 40400000, "message": f"no route {method} {url.path}"}, None, 0.0

    def _submit(self, body: dict[str, Any]) -> tuple[int, Any, dict[str, str] | None, float]:
        cid = body.get("client_order_id") or str(uuid.uuid4())
        if any(o["client_order_id"] == cid for o in self.orders.values()):
            return 422, {"code": 40010001, "message": "client_order_id must be unique"}, None, 0.0
        why = self.reject(body)
        if why is None and body.get("symbol") not in self.prices:
            why = f"asset \"{body.get('symbol')}\" not found"
        if why is not None:
            return 422, {"code": 42210000, "message": why}, None, 0.0
        symbol, qty = body["symbol"], float(body["qty"])
        if body["side"] == "buy" and qty * self.prices[symbol] > 2 * self._equity():
            return 403, {"code": 40310000, "message": "insufficient buying power"}, None, 0.0
        if body["side"] == "sell" and not self.shorting_enabled and qty > self.positions.get(symbol, 0.0):
            return 403, {"code": 40310000, "message": "account is not allowed to short"}, None, 0.0
        now = _now_iso()
        order = {"id": str(uuid.uuid4()), "client_order_id": cid, "created_at": now, "updated_at": now,
                 "submitted_at": now, "filled_at": None, "expired_at": None, "canceled_at": None,
                 "failed_at": None, "replaced_at": None, "replaced_by": None, "replaces": None,
                 "asset_id": str(uuid.uuid5(uuid.NAMESPACE_DNS, body["symbol"])), "symbol": body["symbol"],
                 "asset_class": "us_equity", "notional": None, "qty": str(body["qty"]), "filled_qty": "0",
                 "filled_avg_price": None, "order_class": "simple", "order_type": "market", "type": "market",
                 "side": body["side"], "time_in_force": body["time_in_force"], "limit_price": None,
                 "stop_price": None, "status": "accepted", "extended_hours": False, "legs": None,
                 "trail_percent": None, "trail_price": None, "hwm": None}
        self.orders[order["id"]] = order
        if self.fill_after_polls == 0:
            self._fill(order)
        fault = self.after_submit.pop(0) if self.after_submit else None
        if fault == "lost":
            return 504, {"code": 50400000, "message": "gateway timeout"}, None, 0.0
        if fault == "timeout":
            return 200, order, None, self.slow_s
        if fault == "garbage":
            return 200, b"<html>upstream sent an invalid response</html>", None, 0.0
        return 200, order, None, 0.0

    def _fill(self, order: dict[str, Any]) -> None:
        qty = float(order["qty"])
        sign = 1.0 if order["side"] == "buy" else -1.0
        price = self.prices[order["symbol"]] + sign * self.slip
        symbol = order["symbol"]
        held = self.positions.get(symbol, 0.0)
        new = held + sign * qty
        if new and held * sign >= 0:
            self.avg_price[symbol] = (abs(held) * self.avg_price.get(symbol, price) + qty * price) / abs(new)
        self.positions[symbol] = new
        self.cash -= sign * qty * price
        order.update(status="filled", filled_qty=order["qty"], filled_avg_price=f"{price:.4f}",
                     filled_at=_now_iso(), updated_at=_now_iso())

    def _equity(self) -> float:
        return self.cash + sum(q * self.prices.get(s, 0.0) for s, q in self.positions.items())

    def _account(self) -> dict[str, Any]:
        equity = self._equity()
        long_mv = sum(q * self.prices.get(s, 0.0) for s, q in self.positions.items() if q > 0)
        short_mv = sum(q * self.prices.get(s, 0.0) for s, q in self.positions.items() if q < 0)
        return {"id": str(uuid.uuid5(uuid.NAMESPACE_DNS, self.account_number)), "account_number": self.account_number,
                "status": "ACTIVE", "crypto_status": "ACTIVE", "currency": "USD", "buying_power": f"{2 * equity:.2f}",
                "cash": f"{self.cash:.2f}", "portfolio_value": f"{equity:.2f}", "equity": f"{equity:.2f}",
                "last_equity": f"{equity:.2f}", "long_market_value": f"{long_mv:.2f}",
                "short_market_value": f"{short_mv:.2f}", "pattern_day_trader": False, "trading_blocked": False,
                "transfers_blocked": False, "account_blocked": False, "created_at": "2024-01-02T00:00:00Z",
                "trade_suspended_by_user": False, "multiplier": "2", "shorting_enabled": True,
                "initial_margin": "0", "maintenance_margin": "0", "sma": "0", "daytrade_count": 0}

    def _position(self, symbol: str) -> dict[str, Any]:
        qty = self.positions[symbol]
        price = self.prices.get(symbol, 0.0)
        avg = self.avg_price.get(symbol, price)
        return {"asset_id": str(uuid.uuid5(uuid.NAMESPACE_DNS, symbol)), "symbol": symbol, "exchange": "NASDAQ",
                "asset_class": "us_equity", "avg_entry_price": f"{avg:.4f}", "qty": f"{qty:g}",
                "side": "long" if qty > 0 else "short", "market_value": f"{qty * price:.2f}",
                "cost_basis": f"{qty * avg:.2f}", "unrealized_pl": f"{qty * (price - avg):.2f}",
                "current_price": f"{price:.4f}", "qty_available": f"{qty:g}"}

    @staticmethod
    def _reply(h: BaseHTTPRequestHandler, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            h.send_header(name, value)
        h.end_headers()
        h.wfile.write(data)


# -- driving a source node in the test's thread ---------------------------------------------------


class Emitted(list):
    """What a node emitted: ``(port, value, topic, event_time)`` tuples."""

    def values(self) -> list[Any]:
        return [value for _, value, _, _ in self]


def drive_source(cls: type, params: dict[str, Any], until: Callable[[Emitted], bool],
                 timeout_s: float = 15.0) -> tuple[Emitted, Any]:
    """Step a source node's ``run`` generator here until ``until(emitted)``, its end, or the timeout.

    Topics and event times are kept (``dmnflow.testing.run_node`` keeps values only). The
    generator is closed and ``teardown`` runs whatever happens; exceptions from the node
    propagate.
    """
    node = cls()
    emitted = Emitted()

    def emit(port: str, value: Any, topic: str | None = None, event_time: Any = None, *rest: Any) -> None:
        emitted.append((port, value, topic, event_time))

    ctx = Context(cls.__name__, cls.Params.model_validate(params), emit)
    node.setup(ctx)
    deadline = time.monotonic() + timeout_s
    gen: Iterator[Any] = node.run(ctx)
    try:
        for item in gen:
            assert item is None, "live sources emit with ctx.emit and yield None"
            if until(emitted) or time.monotonic() > deadline:
                break
    finally:
        gen.close()  # type: ignore[attr-defined]
        node.teardown(ctx)
    return emitted, node


def live_threads() -> list[str]:
    """Names of the live sources' client threads still running."""
    return [t.name for t in threading.enumerate() if t.name.startswith("dmnflow-") and t.is_alive()]
