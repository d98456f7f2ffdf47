"""The Alpaca broker: market orders through ``alpaca-py``'s ``TradingClient``, fills by polling.

``AlpacaBroker`` implements :class:`nodes.execution.broker.Broker` for the ``Execution`` node
(``broker: alpaca``). It trades on Alpaca's paper endpoint unless told otherwise, reads its
keys from ``APCA_API_KEY_ID`` and ``APCA_API_SECRET_KEY``, and never raises on a bad order or
a failed request: every HTTP error is handled by its kind and counted (``summary()``):

- 403 or 422 on ``POST /orders``: Alpaca rejected the order (buying power, shorting not
  allowed, unknown asset, ...); counted as rejected, not retried, the node goes on;
- 401 (and 403 on any other request): the keys are refused; not retried (at start, this
  fails setup);
- 429: rate limited; retried after ``Retry-After`` (or ``X-RateLimit-Reset``), bounded;
- 5xx and network errors: retried with exponential backoff, bounded.

Orders carry a ``client_order_id``, so a retry after a lost reply cannot place the order
twice: Alpaca refuses the duplicate id (422) and the broker looks the first one up instead.
When the last retry of a submission fails and an earlier try may have reached Alpaca (a
5xx, a timeout, a reply cut short), the broker looks the order up by its
``client_order_id`` once; while Alpaca cannot answer, the order stays *unconfirmed* and is
looked up again at each poll, so an order that went through is never left untracked.
Fills are the increments of each open order's ``filled_qty`` seen by ``poll``. The account
is read from Alpaca at most every ``account_refresh_s`` and marked to the latest prices in
between. How to run it live: docs/dmn/live.md.
"""

from __future__ import annotations

import email.utils
import functools
import logging
import math
import os
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from dmnflow import ConfigError
from nodes.support import RateLimitedLog, check_url

from .broker import Account, Broker, Fill, account_of

__all__ = ["AlpacaBroker", "BrokerError"]

T = TypeVar("T")

_SIDES = {"buy": 1.0, "sell": -1.0}
_DONE = {"filled", "canceled", "expired", "rejected", "done_for_day", "replaced", "stopped", "suspended"}
_COUNTERS = ("orders_submitted", "orders_rejected", "orders_failed", "orders_invalid", "orders_canceled",
             "orders_recovered", "orders_unknown", "fills", "requests", "retries", "rate_limited", "server_errors",
             "auth_errors", "http_errors", "network_errors", "bad_responses", "bad_marks", "account_refresh_failed")
# why a request failed (``AlpacaBroker._failure``); the transient ones are worth asking again later
_TRANSIENT = {"server", "network", "rate_limited"}


class BrokerError(RuntimeError, ConfigError):
    """The broker cannot start: keys missing or refused, or alpaca-py not installed."""


@dataclass
class _Open:
    """An order sent and not finished yet: what has been reported of it."""

    symbol: str
    sign: float
    ref_price: float
    client_order_id: str
    seen_qty: float = 0.0
    seen_cost: float = 0.0


def _float(value: Any) -> float:
    """A float from Alpaca's decimal strings; NaN when missing or not a number."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _usable(price: Any) -> float:
    """A usable price as float, else NaN (missing, not a number, NaN, inf, <= 0)."""
    p = _float(price)
    return p if 0 < p < math.inf else math.nan


def retry_after_s(headers: Mapping[str, str] | None, now: float | None = None) -> float | None:
    """Seconds a 429 asks us to wait: ``Retry-After`` (seconds or an HTTP date), else Alpaca's
    ``X-RateLimit-Reset`` (epoch seconds); None when neither is readable."""
    if not headers:
        return None
    now = time.time() if now is None else now
    value = headers.get("Retry-After")
    if value is not None:
        try:
            return max(0.0, float(value))
        except ValueError:
            try:
                return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - now)
            except (TypeError, ValueError):
                pass
    reset = headers.get("X-RateLimit-Reset")
    if reset is not None:
        try:
            return max(0.0, float(reset) - now)
        except ValueError:
            return None
    return None


class AlpacaBroker(Broker):
    """Market orders on Alpaca (paper by default); fills, positions and cash from Alpaca's REST API."""

    name = "alpaca"

    class Config(BaseModel):
        """``broker_params`` of the Execution node when ``broker: alpaca``."""

        model_config = ConfigDict(extra="forbid")
        paper: bool = Field(True, description="trade on Alpaca's paper endpoint (paper-api.alpaca.markets); "
                            "false trades real money on api.alpaca.markets")
        insecure: bool = Field(False, description="allow an http:// url (keys and orders sent in clear text): a "
                               "local test server only")
        url: str | None = Field(None, description="base URL overriding the endpoint (a proxy, or a local test "
                                "server), e.g. https://proxy.example; http:// needs insecure: true")
        time_in_force: Literal["day", "gtc", "opg", "cls", "ioc", "fok"] = Field(
            "day", description="time in force of the market orders (crypto takes gtc or ioc)")
        whole_shares: bool = Field(False, description="round quantities down to whole shares, for assets "
                                   "Alpaca does not trade fractionally; orders rounding to 0 are skipped")
        commission_bps: float = Field(0.0, ge=0, description="commission booked per fill, in bps of its "
                                      "notional (Alpaca's stock trades are commission-free; crypto pays a fee)")
        capital: float | None = Field(None, gt=0, description="starting capital for pnl; none: the account's "
                                      "equity when the broker starts")
        max_retries: int = Field(3, ge=0, description="retries of a request answered 429 or 5xx, or lost on the "
                                 "network; then the request fails and is counted")
        backoff_s: float = Field(0.5, ge=0, description="first wait before retrying a 5xx or network error; "
                                 "doubles per retry")
        max_backoff_s: float = Field(8.0, ge=0, description="cap of that wait")
        max_retry_after_s: float = Field(10.0, ge=0, description="longest wait a 429 may ask for; a longer "
                                         "Retry-After fails the request at once")
        timeout_s: float = Field(10.0, gt=0, description="HTTP timeout of one request (connect and read)")
        poll_interval_s: float = Field(1.0, ge=0, description="least time between two polls of the open orders")
        account_refresh_s: float = Field(5.0, ge=0, description="least time between two reads of the account "
                                         "and positions; in between, the account is marked to the latest prices")
        check_on_start: bool = Field(True, description="read the account when the broker starts, so refused "
                                     "keys fail the node's setup with a clear message")

        @field_validator("url")
        @classmethod
        def _url_is_safe(cls, url: str | None, info: ValidationInfo) -> str | None:
            return check_url(url, bool(info.data.get("insecure")), "https", "http", "broker_params.insecure: true")

    env = ("APCA_API_KEY_ID", "APCA_API_SECRET_KEY")  # the only secrets the Execution node's worker gets

    def __init__(self, paper: bool = True, url: str | None = None, time_in_force: str = "day",
                 whole_shares: bool = False, commission_bps: float = 0.0, capital: float | None = None,
                 max_retries: int = 3, backoff_s: float = 0.5, max_backoff_s: float = 8.0,
                 max_retry_after_s: float = 10.0, timeout_s: float = 10.0, poll_interval_s: float = 1.0,
                 account_refresh_s: float = 5.0, check_on_start: bool = True, insecure: bool = False, *,
                 log: logging.Logger | None = None, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        try:
            check_url(url, insecure, "https", "http", "broker_params.insecure: true")
        except ValueError as exc:
            raise BrokerError(f"alpaca broker: {exc}") from None
        key, secret = os.environ.get("APCA_API_KEY_ID"), os.environ.get("APCA_API_SECRET_KEY")
        missing = [name for name, value in (("APCA_API_KEY_ID", key), ("APCA_API_SECRET_KEY", secret)) if not value]
        if missing:
            plural = "s" if len(missing) > 1 else ""
            raise BrokerError(f"alpaca broker: no API keys: set the environment variable{plural} "
                              f"{' and '.join(missing)} (paper keys for the paper endpoint)")
        try:
            import requests
            import urllib3
            from alpaca.common.exceptions import APIError
            from alpaca.trading.client import TradingClient
            from alpaca.trading.enums import OrderSide, TimeInForce
            from alpaca.trading.requests import MarketOrderRequest
        except ImportError as exc:
            raise BrokerError("alpaca broker: the 'alpaca-py' package is not installed: "
                              "pip install 'dmnflow[live]'") from exc
        self._APIError, self._RequestException = APIError, requests.RequestException
        self._ConnectTimeout, self._NewConnectionError = requests.ConnectTimeout, urllib3.exceptions.NewConnectionError
        self._BadJSON = requests.JSONDecodeError  # a RequestException too, but the reply did arrive
        self._MarketOrderRequest, self._OrderSide = MarketOrderRequest, OrderSide
        self._tif = TimeInForce(time_in_force)
        self.client = TradingClient(key, secret, paper=paper, url_override=url)
        # alpaca-py retries 429/504 itself, 3 times with a fixed 3 s sleep, ignoring Retry-After,
        # and its requests have no timeout: this broker does both itself.
        self.client._retry = 0
        self.client._retry_codes = []
        self.client._session = _timeout_session(timeout_s)
        self.base_url = str(getattr(self.client._base_url, "value", self.client._base_url))
        self.whole_shares = whole_shares
        self.comm = commission_bps / 1e4
        self.max_retries = max_retries
        self.backoff_s, self.max_backoff_s = backoff_s, max(max_backoff_s, backoff_s)
        self.max_retry_after_s = max_retry_after_s
        self.poll_interval_s = poll_interval_s
        self.account_refresh_s = account_refresh_s
        self._sleep, self._clock = sleep, clock
        self._log = log or logging.getLogger("dmnflow.broker.alpaca")
        self._warn = RateLimitedLog(self._log).warning  # (key, fmt, *args): one line per key per 10 s
        self.counts = dict.fromkeys(_COUNTERS, 0)
        self.open: dict[str, _Open] = {}  # order id -> what has been reported of it
        # client_order_id -> (the order, Alpaca's rejection if the last try got one): submissions that may
        # have gone through, looked up at each poll until Alpaca says whether they did
        self.unconfirmed: dict[str, tuple[_Open, str | None]] = {}
        self._failure = ""  # why the last _call failed: rejected, duplicate, auth, not_found, http, + _TRANSIENT
        self._message = ""  # and what Alpaca said
        self._uncertain = False  # whether a try of the last _call may have done its work (reply lost)
        self.cash = 0.0
        self.qty: dict[str, float] = {}
        self.avg_entry: dict[str, float] = {}
        self.last: dict[str, float] = {}
        self.commission = 0.0
        self.slippage = 0.0
        self.traded = 0.0
        self.t: int | None = None
        self.capital = capital
        self._polled_at = -math.inf
        self._refresh_tried_at = -math.inf
        self._refreshed = False  # cash and positions have been read from Alpaca at least once
        self._auth_refused = False
        if check_on_start and not self._refresh(force=True) and self._auth_refused:
            raise BrokerError(f"alpaca broker: {self.base_url} refused the keys (HTTP 401/403): check "
                              "APCA_API_KEY_ID and APCA_API_SECRET_KEY (paper keys for the paper endpoint)")
        if self.capital is None:
            self.capital = self._equity() if self._refreshed else math.nan

    # -- requests ------------------------------------------------------------------------

    def _call(self, what: str, fn: Callable[[], T], client_order_id: str | None = None,
              retries: int | None = None, missing_ok: bool = False) -> T | None:
        """``fn()`` with Alpaca's errors handled by kind, counted and logged; None when it failed.

        ``client_order_id``: ``fn`` submits that order (a 403 or 422 is then its rejection).
        On failure, ``_failure`` says why and ``_uncertain`` whether a try may have reached
        Alpaca and done its work. ``missing_ok``: a 404 is an answer (``not_found``), not an error.
        """
        delay = self.backoff_s
        retries = self.max_retries if retries is None else retries
        self._failure, self._message, self._uncertain = "", "", False
        for attempt in range(retries + 1):
            self.counts["requests"] += 1
            last = attempt == retries
            try:
                return fn()
            except self._APIError as exc:
                status = exc.status_code
                message = self._message = _message(exc)
                if status == 429:
                    self.counts["rate_limited"] += 1
                    response = exc.response
                    wait = retry_after_s(response.headers if response is not None else None)
                    wait = delay if wait is None else wait
                    if last or wait > self.max_retry_after_s:
                        self._warn("rate_limited", "%s: rate limited (HTTP 429, wait %.1fs); gave up after %d "
                                   "attempt(s)", what, wait, attempt + 1)
                        self._failure = "rate_limited"
                        return None
                    self._retry(wait)
                    delay = min(self.max_backoff_s, max(delay * 2, self.backoff_s))
                    continue
                if status is not None and status >= 500:
                    self.counts["server_errors"] += 1
                    self._uncertain = True  # a 502/504 can come from a proxy after Alpaca did the work
                    if last:
                        self._warn("server_error", "%s: HTTP %s from Alpaca (%s); gave up after %d attempt(s)",
                                   what, status, message, attempt + 1)
                        self._failure = "server"
                        return None
                    self._retry(delay)
                    delay = min(self.max_backoff_s, delay * 2)
                    continue
                if status == 422 and client_order_id is not None and attempt > 0 and "client_order_id" in message:
                    # our earlier try went through and only its reply was lost: the caller looks that order up
                    self._failure = "duplicate"
                    return None
                if status in (403, 422) and client_order_id is not None:
                    # buying power, shorting not allowed, unknown asset...: Alpaca read the keys, and said no
                    self._failure, self._message = "rejected", f"HTTP {status}: {message}"
                    return None
                if status in (401, 403):
                    self.counts["auth_errors"] += 1
                    self._auth_refused = True
                    self._warn("auth", "%s: Alpaca refused the keys (HTTP %s: %s); check APCA_API_KEY_ID and "
                               "APCA_API_SECRET_KEY", what, status, message)
                    self._failure = "auth"
                    return None
                if status == 404 and missing_ok:
                    self._failure = "not_found"
                    return None
                self.counts["http_errors"] += 1
                self._warn("http_error", "%s: HTTP %s from Alpaca: %s", what, status, message)
                self._failure = "http"
                return None
            except self._BadJSON as exc:
                self._bad_response(what, exc)
                return None
            except self._RequestException as exc:
                self.counts["network_errors"] += 1
                self._uncertain = self._uncertain or self._may_have_arrived(exc)
                if last:
                    self._warn("network", "%s: %s; gave up after %d attempt(s)", what, exc, attempt + 1)
                    self._failure, self._message = "network", str(exc)
                    return None
                self._retry(delay)
                delay = min(self.max_backoff_s, delay * 2)
            except Exception as exc:  # a reply alpaca-py cannot read (a model that does not validate)
                self._bad_response(what, exc)
                return None
        return None

    def _bad_response(self, what: str, exc: Exception) -> None:
        """Count a reply that does not parse: Alpaca answered, so the request may have done its work."""
        self.counts["bad_responses"] += 1
        self._uncertain = True
        self._warn("bad_response", "%s: unreadable reply from Alpaca: %s: %.200s", what, type(exc).__name__, exc)
        self._failure, self._message = "bad_response", f"{type(exc).__name__}: {exc}"

    def _may_have_arrived(self, exc: Exception) -> bool:
        """Whether a request that failed on the network may have reached Alpaca: not when the
        connection was never made (refused, unresolvable host, connect timeout)."""
        if isinstance(exc, self._ConnectTimeout):
            return False
        reason = getattr(exc.args[0], "reason", None) if exc.args else None
        return not isinstance(reason, self._NewConnectionError)

    def _retry(self, wait: float) -> None:
        self.counts["retries"] += 1
        if wait > 0:
            self._sleep(wait)

    # -- orders --------------------------------------------------------------------------

    def submit(self, orders: Sequence[Mapping[str, Any]], t: int,
               prices: Mapping[str, float] | None = None) -> list[Fill]:
        """Send each valid order as a market order; the fills already in Alpaca's replies."""
        self.t = t
        fills: list[Fill] = []
        for order in orders:
            symbol = order.get("symbol") if isinstance(order, Mapping) else None
            sign = _SIDES.get(order.get("side")) if isinstance(order, Mapping) else None  # type: ignore[arg-type]
            qty = _float(order.get("qty")) if isinstance(order, Mapping) else math.nan
            if self.whole_shares:
                qty = math.floor(qty) if math.isfinite(qty) else qty
            if not isinstance(symbol, str) or not symbol or sign is None or not 0 < qty < math.inf:
                self.counts["orders_invalid"] += 1
                self._warn("invalid", "skipped an invalid order (or one rounding to 0 shares): %.200r", order)
                continue
            ref = _usable(prices.get(symbol)) if prices else math.nan
            if ref != ref:
                ref = _usable(order.get("ref_price"))
            cid = f"dmnflow-{uuid.uuid4().hex}"
            request = self._MarketOrderRequest(symbol=symbol, qty=qty, side=self._OrderSide.BUY if sign > 0 else
                                               self._OrderSide.SELL, time_in_force=self._tif, client_order_id=cid)
            what = f"submit {'buy' if sign > 0 else 'sell'} {qty:g} {symbol}"
            opened = _Open(symbol, sign, ref, cid)
            sent = self._call(what, lambda request=request: self.client.submit_order(request), client_order_id=cid)
            if sent is not None:
                self.counts["orders_submitted"] += 1
                self.open[str(sent.id)] = opened
                fills.extend(self._update(str(sent.id), sent))
                continue
            rejection = f"{what}: {self._message}" if self._failure == "rejected" else None
            if self._failure == "duplicate" or self._uncertain:
                # an earlier try may have placed it (its reply was lost): ask Alpaca once
                fills.extend(self._confirm(opened, rejection))
            else:
                self._settle_absent(opened, rejection)
        return fills

    def _settle_absent(self, opened: _Open, rejection: str | None) -> None:
        """An order Alpaca does not have: rejected (with Alpaca's reason) or failed to send."""
        if rejection is not None:
            self.counts["orders_rejected"] += 1
            self._warn("rejected", "Alpaca rejected the order (%s)", rejection)
        else:
            self.counts["orders_failed"] += 1

    def _confirm(self, opened: _Open, rejection: str | None) -> list[Fill]:
        """Look an order whose submission may have gone through up by its ``client_order_id``
        (one request): track it if Alpaca has it; keep it unconfirmed while Alpaca cannot say."""
        cid = opened.client_order_id
        order = self._call(f"look up order {cid}", lambda: self.client.get_order_by_client_id(cid), retries=0,
                           missing_ok=True)
        if order is not None:
            self.unconfirmed.pop(cid, None)
            self.counts["orders_submitted"] += 1
            self.counts["orders_recovered"] += 1
            self._log.info("order %s (%s) went through although its submission failed: tracking it as %s",
                           cid, opened.symbol, order.id)
            self.open[str(order.id)] = opened
            return self._update(str(order.id), order)
        if self._failure == "not_found":
            self.unconfirmed.pop(cid, None)
            self._settle_absent(opened, rejection)
        elif self._failure in _TRANSIENT:
            if cid not in self.unconfirmed:
                self._warn("unconfirmed", "order %s (%s) may have reached Alpaca and the lookup failed (%s); "
                           "looking it up again at each poll", cid, opened.symbol, self._failure)
            self.unconfirmed[cid] = (opened, rejection)
        else:  # Alpaca answered, but not with an order we can read: a person must check
            self.unconfirmed.pop(cid, None)
            self.counts["orders_unknown"] += 1
            self._log.error("order %s (%s): cannot tell whether it was placed (%s: %s); check it in Alpaca's "
                            "dashboard", cid, opened.symbol, self._failure, self._message)
        return []

    def poll(self, t: int | None = None) -> list[Fill]:
        """Fills of the open orders since the last poll (at most every ``poll_interval_s``)."""
        if t is not None:
            self.t = t
        now = self._clock()
        if not (self.open or self.unconfirmed) or now - self._polled_at < self.poll_interval_s:
            return []
        self._polled_at = now
        fills: list[Fill] = []
        polled = list(self.open)
        for opened, rejection in list(self.unconfirmed.values()):
            fills.extend(self._confirm(opened, rejection))
        for order_id in polled:
            order = self._call(f"poll order {order_id}",
                               lambda order_id=order_id: self.client.get_order_by_id(order_id))
            if order is not None:
                fills.extend(self._update(order_id, order))
        return fills

    def _update(self, order_id: str, order: Any) -> list[Fill]:
        """The fill an order's new ``filled_qty`` and ``filled_avg_price`` add; forget finished orders."""
        opened = self.open.get(order_id)
        if opened is None:
            return []
        fills: list[Fill] = []
        filled, avg = _float(order.filled_qty), _usable(order.filled_avg_price)
        delta = filled - opened.seen_qty
        if delta > 1e-12 and avg == avg:
            cost = filled * avg
            price = (cost - opened.seen_cost) / delta
            opened.seen_qty, opened.seen_cost = filled, cost
            fills.append(self._book(opened, delta, price))
        elif delta > 1e-12:
            self.counts["bad_responses"] += 1
            self._warn("bad_response", "order %s: filled_qty %s without a usable filled_avg_price %r",
                       order_id, order.filled_qty, order.filled_avg_price)
        status = str(getattr(order.status, "value", order.status))
        if status in _DONE:
            del self.open[order_id]
            if status == "rejected":
                self.counts["orders_rejected"] += 1
                self._warn("rejected", "order %s for %s was rejected by Alpaca", order_id, opened.symbol)
            elif status != "filled":
                self.counts["orders_canceled"] += 1
                self._warn("canceled", "order %s for %s ended %s with %g of it filled", order_id, opened.symbol,
                           status, opened.seen_qty)
        return fills

    def _book(self, opened: _Open, qty: float, price: float) -> Fill:
        """Book one fill of ``qty`` (> 0) at ``price`` in the local account; the Fill record."""
        signed = opened.sign * qty
        notional = qty * price
        commission = notional * self.comm
        slippage = qty * abs(price - opened.ref_price) if opened.ref_price == opened.ref_price else 0.0
        held = self.qty.get(opened.symbol, 0.0)
        new = held + signed
        if held == 0.0 or (held > 0) == (signed > 0):
            self.avg_entry[opened.symbol] = (self.avg_entry.get(opened.symbol, 0.0) * abs(held) + notional) / abs(new)
        elif new != 0.0 and (new > 0) != (held > 0):
            self.avg_entry[opened.symbol] = price
        if abs(new) <= 1e-12 * max(abs(held), qty):
            self.qty.pop(opened.symbol, None)
            self.avg_entry.pop(opened.symbol, None)
        else:
            self.qty[opened.symbol] = new
        self.cash -= signed * price + commission
        self.last.setdefault(opened.symbol, price)
        self.commission += commission
        self.slippage += slippage
        self.traded += notional
        self.counts["fills"] += 1
        return {"symbol": opened.symbol, "qty": signed, "side": "buy" if signed > 0 else "sell", "price": price,
                "commission": commission, "slippage": slippage}

    # -- prices and account --------------------------------------------------------------

    def mark(self, t: int, prices: Mapping[str, float]) -> None:
        """Take every usable price as its symbol's last (counted when unusable)."""
        self.t = t
        for symbol, value in prices.items():
            p = _usable(value)
            if p == p:
                self.last[symbol] = p
            else:
                self.counts["bad_marks"] += 1

    def _refresh(self, force: bool = False) -> bool:
        """Read cash and positions from Alpaca (tried at most every ``account_refresh_s``); whether it did."""
        now = self._clock()
        if not force and now - self._refresh_tried_at < self.account_refresh_s:
            return False
        self._refresh_tried_at = now
        account = self._call("read the account", self.client.get_account)
        positions = self._call("read the positions", self.client.get_all_positions) if account is not None else None
        if account is None or positions is None:
            self.counts["account_refresh_failed"] += 1
            return False
        cash = _float(account.cash)
        if cash != cash:
            self.counts["bad_responses"] += 1
            return False
        qty: dict[str, float] = {}
        avg: dict[str, float] = {}
        for position in positions:
            q = _float(position.qty)
            if q == q and q != 0:
                qty[position.symbol] = q
                avg[position.symbol] = _float(position.avg_entry_price)
                current = _usable(position.current_price)
                if current == current and position.symbol not in self.last:
                    self.last[position.symbol] = current
        self.cash, self.qty, self.avg_entry = cash, qty, avg
        self._refreshed = True
        return True

    def _equity(self) -> float:
        return self.cash + sum(q * self.last.get(s, math.nan) for s, q in self.qty.items())

    def account(self, t: int | None = None) -> Account:
        """The Account message: Alpaca's cash and positions (refreshed now and then) at the latest prices."""
        self._refresh()
        return account_of(self.t if t is None else t, self.cash, self.qty, self.last, self.avg_entry,
                          self.capital if self.capital is not None else math.nan,
                          commission=self.commission, slippage=self.slippage, traded=self.traded)

    def positions(self) -> dict[str, float]:
        return {s: self.qty[s] for s in sorted(self.qty)}

    def summary(self) -> dict[str, float | int]:
        """Orders sent, rejected, failed; fills; every kind of HTTP trouble; costs and traded notional."""
        return {**self.counts, "orders_open": len(self.open), "orders_unconfirmed": len(self.unconfirmed),
                "commission": self.commission, "slippage": self.slippage, "traded": self.traded}

    def close(self) -> None:
        if self.unconfirmed:
            self._log.error("%d order(s) may be live at Alpaca but were never confirmed (client_order_id %s): "
                            "check them in Alpaca's dashboard", len(self.unconfirmed), ", ".join(self.unconfirmed))
        self.client._session.close()


def _message(exc: Exception) -> str:
    """Alpaca's error message from its JSON body, else the body itself."""
    try:
        return str(exc.message)  # type: ignore[attr-defined]
    except Exception:  # not JSON: the raw text will do
        return str(exc)[:200]


def _timeout_session(timeout_s: float) -> Any:
    """A ``requests.Session`` whose requests time out (alpaca-py sets no timeout)."""
    import requests

    session = requests.Session()
    session.request = functools.partial(session.request, timeout=timeout_s)  # type: ignore[method-assign]
    return session
