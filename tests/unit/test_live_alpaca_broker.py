"""AlpacaBroker against a local fake of Alpaca's trading REST API, with alpaca-py's real TradingClient."""

from __future__ import annotations

import math
import socket
from typing import Any

import pytest

from dmnflow.testing import run_node
from nodes.execution.alpaca import AlpacaBroker, BrokerError, retry_after_s
from nodes.execution.broker import load_broker
from nodes.execution.node import Execution

from .fakes_live import FakeAlpacaREST

T = 1_704_153_600_000_000_000  # 2024-01-02 00:00 UTC

# alpaca-py's package imports websockets' legacy API, which warns on import
pytestmark = pytest.mark.filterwarnings("ignore:websockets.legacy is deprecated:DeprecationWarning")


@pytest.fixture(autouse=True)
def _keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APCA_API_KEY_ID", "test-key-id")
    monkeypatch.setenv("APCA_API_SECRET_KEY", "test-secret")


@pytest.fixture
def rest() -> Any:
    with FakeAlpacaREST(prices={"AAPL": 100.0, "MSFT": 400.0}, slip=0.05) as server:
        yield server


class Sleeps(list):
    """Records the waits the broker asks for instead of sleeping (no wall clock in the asserts)."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def broker(rest: FakeAlpacaREST, sleeps: Sleeps | None = None, **config: Any) -> AlpacaBroker:
    options = {"url": rest.url, "insecure": True, "poll_interval_s": 0.0, "account_refresh_s": 0.0, "timeout_s": 5.0,
               **config}
    return AlpacaBroker(**AlpacaBroker.Config(**options).model_dump(), sleep=sleeps if sleeps is not None else Sleeps())


def test_a_market_order_is_submitted_and_its_fill_comes_from_polling(rest: FakeAlpacaREST) -> None:
    b = broker(rest)
    assert b.capital == 100_000.0  # the account's equity at start
    fills = b.submit([{"symbol": "AAPL", "qty": 10, "side": "buy", "ref_price": 100.0}], T, {"AAPL": 100.0})
    assert fills == []  # accepted, not filled yet
    method, path, body, headers = rest.requests[-1]
    assert (method, path) == ("POST", "/v2/orders")
    assert {k: body[k] for k in ("symbol", "qty", "side", "type", "time_in_force")} == {
        "symbol": "AAPL", "qty": 10.0, "side": "buy", "type": "market", "time_in_force": "day"}
    assert body["client_order_id"].startswith("dmnflow-")
    assert headers["APCA-API-KEY-ID"] == "test-key-id"
    fills = b.poll(T)
    assert len(fills) == 1
    fill = fills[0]
    assert fill["symbol"] == "AAPL" and fill["qty"] == 10.0 and fill["side"] == "buy"
    assert fill["price"] == pytest.approx(100.05)
    assert fill["slippage"] == pytest.approx(10 * 0.05) and fill["commission"] == 0.0
    assert b.poll(T) == []  # a fill is reported once
    b.mark(T, {"AAPL": 101.0})
    account = b.account(T)
    assert account["t"] == T
    assert account["positions"] == {"AAPL": 10.0}
    assert account["cash"] == pytest.approx(100_000.0 - 1000.5)
    assert account["equity"] == pytest.approx(100_000.0 - 1000.5 + 1010.0)
    assert account["pnl"] == pytest.approx(9.5)
    assert account["gross"] == pytest.approx(1010.0)
    assert account["traded"] == pytest.approx(1000.5)
    assert account["unrealized_pnl"] == pytest.approx(9.5) and account["realized_pnl"] == pytest.approx(0.0)
    assert b.summary()["orders_submitted"] == 1 and b.summary()["fills"] == 1 and b.summary()["orders_open"] == 0
    b.close()


def test_sells_are_negative_fills_and_commission_is_booked(rest: FakeAlpacaREST) -> None:
    rest.fill_after_polls = 0  # filled in the POST reply
    b = broker(rest, commission_bps=10.0)
    fills = b.submit([{"symbol": "MSFT", "qty": 2.5, "side": "sell", "ref_price": 400.0}], T)
    assert len(fills) == 1
    assert fills[0]["qty"] == -2.5 and fills[0]["side"] == "sell"
    assert fills[0]["price"] == pytest.approx(399.95)
    assert fills[0]["commission"] == pytest.approx(2.5 * 399.95 * 0.001)
    assert b.account(T)["positions"] == {"MSFT": -2.5}


def test_a_round_trip_realises_its_pnl(rest: FakeAlpacaREST) -> None:
    rest.fill_after_polls = 0
    b = broker(rest)
    b.submit([{"symbol": "AAPL", "qty": 10, "side": "buy", "ref_price": 100.0}], T)
    rest.prices["AAPL"] = 110.0
    fills = b.submit([{"symbol": "AAPL", "qty": 10, "side": "sell", "ref_price": 110.0}], T + 1)
    assert fills[0]["qty"] == -10.0 and fills[0]["price"] == pytest.approx(109.95)
    account = b.account(T + 1)
    assert account["positions"] == {} and account["gross"] == 0.0
    assert account["pnl"] == pytest.approx(10 * (109.95 - 100.05))
    assert account["realized_pnl"] == pytest.approx(account["pnl"]) and account["unrealized_pnl"] == 0.0
    assert account["slippage"] == pytest.approx(2 * 10 * 0.05)
    assert account["traded"] == pytest.approx(10 * 100.05 + 10 * 109.95)


def test_a_429_is_retried_after_retry_after(rest: FakeAlpacaREST) -> None:
    rest.failures.append(("POST", "/v2/orders", 429, {"Retry-After": "2"}))
    sleeps = Sleeps()
    b = broker(rest, sleeps)
    b.submit([{"symbol": "AAPL", "qty": 1, "side": "buy", "ref_price": 100.0}], T)
    assert sleeps == [2.0]
    assert [r[1] for r in rest.requests].count("/v2/orders") == 2
    assert len(rest.orders) == 1
    s = b.summary()
    assert (s["rate_limited"], s["retries"], s["orders_submitted"], s["orders_failed"]) == (1, 1, 1, 0)


def test_a_429_asking_too_long_a_wait_fails_the_order_without_raising(rest: FakeAlpacaREST) -> None:
    rest.failures.append(("POST", "/v2/orders", 429, {"Retry-After": "120"}))
    sleeps = Sleeps()
    b = broker(rest, sleeps, max_retry_after_s=10.0)
    assert b.submit([{"symbol": "AAPL", "qty": 1, "side": "buy", "ref_price": 100.0}], T) == []
    assert sleeps == [] and rest.orders == {}
    assert b.summary()["orders_failed"] == 1 and b.summary()["rate_limited"] == 1


def test_a_422_rejection_is_counted_and_the_other_orders_go_through(rest: FakeAlpacaREST) -> None:
    rest.fill_after_polls = 0
    b = broker(rest)
    fills = b.submit([{"symbol": "ZZZZ", "qty": 1, "side": "buy", "ref_price": 1.0},
                      {"symbol": "AAPL", "qty": 3, "side": "buy", "ref_price": 100.0}], T)
    assert [f["symbol"] for f in fills] == ["AAPL"]
    s = b.summary()
    assert (s["orders_rejected"], s["orders_submitted"], s["orders_failed"], s["retries"]) == (1, 1, 0, 0)


def test_5xx_is_retried_with_exponential_backoff(rest: FakeAlpacaREST) -> None:
    rest.failures += [("POST", "/v2/orders", 503, {}), ("POST", "/v2/orders", 500, {})]
    sleeps = Sleeps()
    b = broker(rest, sleeps, backoff_s=0.25)
    b.submit([{"symbol": "AAPL", "qty": 1, "side": "buy", "ref_price": 100.0}], T)
    assert sleeps == [0.25, 0.5]
    assert len(rest.orders) == 1
    assert b.summary()["server_errors"] == 2 and b.summary()["orders_submitted"] == 1


def test_5xx_past_max_retries_fails_the_order_without_raising(rest: FakeAlpacaREST) -> None:
    rest.failures += [("POST", "/v2/orders", 502, {})] * 3
    sleeps = Sleeps()
    b = broker(rest, sleeps, max_retries=2, backoff_s=0.1)
    assert b.submit([{"symbol": "AAPL", "qty": 1, "side": "buy", "ref_price": 100.0}], T) == []
    assert sleeps == [0.1, 0.2]
    assert b.summary()["orders_failed"] == 1 and b.summary()["server_errors"] == 3


def test_a_lost_reply_does_not_place_the_order_twice(rest: FakeAlpacaREST) -> None:
    rest.lose_submit_replies = 1  # placed, but the client sees a 504
    b = broker(rest)
    b.submit([{"symbol": "AAPL", "qty": 4, "side": "buy", "ref_price": 100.0}], T)
    assert len(rest.orders) == 1  # the retry's duplicate client_order_id was refused, then looked up
    assert any(path == "/v2/orders:by_client_order_id" for _, path, _, _ in rest.requests)
    fills = b.poll(T)
    assert [f["qty"] for f in fills] == [4.0]
    s = b.summary()
    assert (s["orders_submitted"], s["orders_rejected"], s["server_errors"]) == (1, 0, 1)


def test_refused_keys_at_runtime_are_counted_not_raised(rest: FakeAlpacaREST) -> None:
    b = broker(rest)
    rest.failures.append(("POST", "/v2/orders", 401, {}))
    assert b.submit([{"symbol": "AAPL", "qty": 1, "side": "buy", "ref_price": 100.0}], T) == []
    rest.failures.append(("GET", "/v2/account", 403, {}))  # 403 outside an order: the keys
    b.account(T)
    s = b.summary()
    assert (s["auth_errors"], s["orders_failed"], s["orders_rejected"], s["retries"]) == (2, 1, 0, 0)
    assert s["account_refresh_failed"] == 1


def test_a_403_on_an_order_is_a_rejection_and_the_next_orders_go_through(rest: FakeAlpacaREST,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    # Alpaca answers 403 to an order it refuses on the account's grounds: buying power, no shorting
    rest.fill_after_polls = 0
    rest.shorting_enabled = False
    b = broker(rest)
    fills = b.submit([{"symbol": "MSFT", "qty": 1_000, "side": "buy", "ref_price": 400.0},  # 400k > 2 x 100k
                      {"symbol": "AAPL", "qty": 5, "side": "sell", "ref_price": 100.0},  # holds none: a short
                      {"symbol": "AAPL", "qty": 5, "side": "buy", "ref_price": 100.0}], T)
    assert [(f["symbol"], f["qty"]) for f in fills] == [("AAPL", 5.0)]
    assert b.submit([{"symbol": "AAPL", "qty": 5, "side": "sell", "ref_price": 100.0}], T + 1)[0]["qty"] == -5.0
    s = b.summary()
    assert (s["orders_rejected"], s["orders_submitted"], s["orders_failed"]) == (2, 2, 0)
    assert (s["auth_errors"], s["retries"], s["orders_unconfirmed"]) == (0, 0, 0)
    assert [path for method, path, _, _ in rest.requests if method == "GET"].count("/v2/orders:by_client_order_id") == 0
    assert "insufficient buying power" in caplog.text and "refused the keys" not in caplog.text


def test_the_execution_node_goes_on_after_a_403_rejection(rest: FakeAlpacaREST) -> None:
    rest.fill_after_polls = 0
    params = {"broker": "alpaca", "broker_params": {"url": rest.url, "insecure": True, "poll_interval_s": 0.0,
                                                    "timeout_s": 5.0}}
    too_big = {"t": T, "orders": [{"symbol": "MSFT", "qty": 1_000, "side": "buy", "ref_price": 400.0}],
               "prices": {"MSFT": 400.0}}
    fits = {"t": T + 1, "orders": [{"symbol": "AAPL", "qty": 2, "side": "buy", "ref_price": 100.0}],
            "prices": {"AAPL": 100.0}}
    out = run_node(Execution, params=params, inputs=[("orders", too_big), ("orders", fits)])
    assert [f["qty"] for msg in out["fills"] for f in msg["fills"]] == [2.0]
    assert out["account"][-1]["positions"] == {"AAPL": 2.0}


def test_after_the_last_failed_retry_a_placed_order_is_found_by_its_client_order_id(rest: FakeAlpacaREST) -> None:
    rest.failures.append(("POST", "/v2/orders", 503, {}))  # first try: refused before placing
    rest.after_submit = ["lost"]  # the last try places it, but its reply is lost
    b = broker(rest, max_retries=1)
    assert b.submit([{"symbol": "AAPL", "qty": 3, "side": "buy", "ref_price": 100.0}], T) == []
    assert len(rest.orders) == 1
    lookups = [r for r in rest.requests if r[1] == "/v2/orders:by_client_order_id"]
    assert len(lookups) == 1  # once
    (order,) = rest.orders.values()
    assert order["client_order_id"] == rest.requests[-2][2]["client_order_id"]
    s = b.summary()
    assert (s["orders_submitted"], s["orders_recovered"], s["orders_failed"], s["orders_open"]) == (1, 1, 0, 1)
    assert [f["qty"] for f in b.poll(T)] == [3.0]  # tracked: its fill is reported


@pytest.mark.parametrize("fault", ["timeout", "garbage"])
def test_a_reply_that_times_out_or_does_not_parse_is_looked_up_not_forgotten(rest: FakeAlpacaREST,
                                                                             fault: str) -> None:
    rest.fill_after_polls = 0
    rest.after_submit = [fault]
    rest.slow_s = 1.0
    b = broker(rest, max_retries=0, timeout_s=0.3)
    fills = b.submit([{"symbol": "AAPL", "qty": 2, "side": "buy", "ref_price": 100.0}], T)
    assert [f["qty"] for f in fills] == [2.0]  # found by the lookup, already filled
    s = b.summary()
    assert (s["orders_submitted"], s["orders_recovered"], s["orders_failed"]) == (1, 1, 0)
    assert (s["network_errors"], s["bad_responses"]) == ((1, 0) if fault == "timeout" else (0, 1))
    assert b.account(T)["positions"] == {"AAPL": 2.0}


def test_a_failed_submission_that_alpaca_never_placed_is_counted_failed(rest: FakeAlpacaREST) -> None:
    rest.failures += [("POST", "/v2/orders", 500, {})] * 2
    b = broker(rest, max_retries=1)
    assert b.submit([{"symbol": "AAPL", "qty": 1, "side": "buy", "ref_price": 100.0}], T) == []
    assert rest.orders == {}
    assert [r[1] for r in rest.requests].count("/v2/orders:by_client_order_id") == 1  # asked, answered 404
    s = b.summary()
    assert (s["orders_failed"], s["orders_submitted"], s["orders_recovered"], s["orders_unconfirmed"]) == (1, 0, 0, 0)
    assert s["http_errors"] == 0  # the 404 was an answer, not an error


def test_an_order_alpaca_cannot_confirm_yet_is_looked_up_at_each_poll(rest: FakeAlpacaREST) -> None:
    rest.after_submit = ["lost"]
    rest.failures.append(("GET", "/v2/orders:by_client_order_id", 503, {}))  # the lookup fails too
    b = broker(rest, max_retries=0)
    assert b.submit([{"symbol": "AAPL", "qty": 4, "side": "buy", "ref_price": 100.0}], T) == []
    s = b.summary()
    assert (s["orders_unconfirmed"], s["orders_submitted"], s["orders_failed"]) == (1, 0, 0)
    rest.failures.append(("GET", "/v2/orders:by_client_order_id", 502, {}))
    assert b.poll(T) == [] and b.summary()["orders_unconfirmed"] == 1  # still unknown
    assert b.poll(T) == []  # found now, accepted, not filled yet
    s = b.summary()
    assert (s["orders_unconfirmed"], s["orders_submitted"], s["orders_recovered"], s["orders_open"]) == (0, 1, 1, 1)
    assert [f["qty"] for f in b.poll(T)] == [4.0]
    assert [r[1] for r in rest.requests].count("/v2/orders:by_client_order_id") == 3
    assert len(rest.orders) == 1


def test_unconfirmed_orders_are_named_when_the_broker_closes(rest: FakeAlpacaREST,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    rest.after_submit = ["lost"]
    rest.failures.append(("GET", "/v2/orders:by_client_order_id", 503, {}))
    b = broker(rest, max_retries=0)
    b.submit([{"symbol": "AAPL", "qty": 4, "side": "buy", "ref_price": 100.0}], T)
    (cid,) = b.unconfirmed
    b.close()
    assert "never confirmed" in caplog.text and cid in caplog.text


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080", "HTTP://proxy.example"])
def test_a_clear_text_url_needs_insecure(url: str) -> None:
    with pytest.raises(ValueError, match=r"in clear text .*https://.*broker_params.insecure: true"):
        AlpacaBroker.Config(url=url)
    assert AlpacaBroker.Config(url=url, insecure=True).url == url
    assert AlpacaBroker.Config(url="https://proxy.example:8443").url == "https://proxy.example:8443"
    with pytest.raises(ValueError, match="is not a https:// URL"):
        AlpacaBroker.Config(url="ftp://proxy.example")
    with pytest.raises(BrokerError, match="clear text"):  # built directly, not from broker_params
        AlpacaBroker(url=url, check_on_start=False)
    with pytest.raises(ValueError, match=r"broker_params for broker 'alpaca': url: .*insecure: true"):
        Execution.Params(broker="alpaca", broker_params={"url": url})


def test_the_broker_keys_are_what_the_execution_node_declares() -> None:
    assert Execution.environment(Execution.Params(broker="alpaca")) == ("APCA_API_KEY_ID", "APCA_API_SECRET_KEY")
    assert Execution.environment(Execution.Params(broker="paper")) == ()


def test_refused_keys_at_start_fail_with_a_clear_message(rest: FakeAlpacaREST,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APCA_API_SECRET_KEY", "wrong")
    with pytest.raises(BrokerError, match="refused the keys .*APCA_API_KEY_ID and APCA_API_SECRET_KEY"):
        broker(rest)


@pytest.mark.parametrize("unset", [["APCA_API_KEY_ID"], ["APCA_API_SECRET_KEY"]])
def test_missing_keys_fail_naming_the_variable(monkeypatch: pytest.MonkeyPatch, unset: list[str]) -> None:
    for name in unset:
        monkeypatch.delenv(name)
    with pytest.raises(BrokerError, match=f"set the environment variable {unset[0]}"):
        AlpacaBroker(check_on_start=False)


def test_the_paper_endpoint_is_the_default() -> None:
    b = AlpacaBroker(check_on_start=False)  # no request is made
    assert b.base_url == "https://paper-api.alpaca.markets"
    assert AlpacaBroker(paper=False, check_on_start=False).base_url == "https://api.alpaca.markets"


def test_an_unreachable_endpoint_is_counted_and_retried_not_raised() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nobody listens there once the block ends
    sleeps = Sleeps()
    b = AlpacaBroker(url=f"http://127.0.0.1:{port}", insecure=True, max_retries=1, backoff_s=0.1, timeout_s=2.0,
                     sleep=sleeps)
    assert math.isnan(b.capital)  # the account could not be read at start
    assert b.submit([{"symbol": "AAPL", "qty": 1, "side": "buy", "ref_price": 100.0}], T) == []
    s = b.summary()
    assert s["network_errors"] == 4 and s["orders_failed"] == 1  # the account at start, then the order: 2 tries each
    assert s["requests"] == 4  # a refused connection cannot have placed the order: no lookup
    assert s["orders_unconfirmed"] == 0
    assert sleeps == [0.1, 0.1]


def test_invalid_orders_are_counted_not_sent(rest: FakeAlpacaREST) -> None:
    b = broker(rest, whole_shares=True)
    before = len(rest.requests)
    bad = [{"symbol": "AAPL", "qty": -1, "side": "buy"}, {"symbol": "AAPL", "qty": 0.4, "side": "buy"},
           {"symbol": "AAPL", "qty": float("nan"), "side": "sell"}, {"qty": 1, "side": "buy"},
           {"symbol": "AAPL", "qty": 1, "side": "hold"}, "not an order"]
    assert b.submit(bad, T) == []  # type: ignore[arg-type]
    assert len(rest.requests) == before
    assert b.summary()["orders_invalid"] == 6


def test_retry_after_headers() -> None:
    assert retry_after_s({"Retry-After": "3"}) == 3.0
    assert retry_after_s({"Retry-After": "Thu, 01 Jan 1970 00:00:10 GMT"}, now=4.0) == 6.0
    assert retry_after_s({"X-RateLimit-Reset": "105"}, now=100.0) == 5.0
    assert retry_after_s({}) is None and retry_after_s({"Retry-After": "soon"}) is None


def test_the_execution_node_trades_through_alpaca(rest: FakeAlpacaREST) -> None:
    rest.fill_after_polls = 0
    params = {"broker": "alpaca", "broker_params": {"url": rest.url, "insecure": True, "poll_interval_s": 0.0,
                                                       "timeout_s": 5.0}}
    orders = {"t": T, "orders": [{"symbol": "AAPL", "qty": 5, "side": "buy", "ref_price": 100.0}],
              "prices": {"AAPL": 100.0}}
    out = run_node(Execution, params=params, inputs=[("orders", orders)])
    assert [f["qty"] for f in out["fills"][0]["fills"]] == [5.0]
    assert out["account"][-1]["positions"] == {"AAPL": 5.0}
    assert isinstance(load_broker("alpaca", {"url": rest.url, "insecure": True}), AlpacaBroker)
    with pytest.raises(ValueError, match="broker_params"):
        Execution.Params(broker="alpaca", broker_params={"urll": rest.url})
