"""AlpacaStream against a protocol-faithful local Alpaca market-data WebSocket, with alpaca-py's real client."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from dmnflow.node import Context
from nodes.market.alpaca import AlpacaStream, alpaca_record
from nodes.market.massive import StreamError

from .fakes_live import FakeAlpacaStream, alpaca_bar, alpaca_quote, alpaca_trade, drive_source, live_threads

T0 = 1_704_205_800_123_456_789  # 2024-01-02 14:30:00.123456789 UTC: Alpaca sends nanoseconds
MINUTE = 60 * 10**9

# alpaca-py's stream client is built on websockets' legacy API, which warns on import
pytestmark = pytest.mark.filterwarnings("ignore:websockets.legacy is deprecated:DeprecationWarning")


@pytest.fixture(autouse=True)
def _keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APCA_API_KEY_ID", "test-key-id")
    monkeypatch.setenv("APCA_API_SECRET_KEY", "test-secret")


@pytest.fixture(autouse=True)
def _no_leaked_threads() -> Any:
    yield
    assert live_threads() == []


def params(server: FakeAlpacaStream, **extra: Any) -> dict[str, Any]:
    return {"symbols": ["AAPL", "MSFT"], "url": f"{server.url}/v2/iex", "insecure": True, "reconnect_delay_s": 0.01,
            "reconnect_max_delay_s": 0.05, "open_timeout_s": 5.0, "channels": ["trades", "bars"], **extra}


def has(predicate: Any) -> Any:
    return lambda emitted: any(predicate(value) for value in emitted.values())


def test_trades_and_bars_become_ticks_and_bars_with_nanosecond_exchange_time() -> None:
    bar_t = T0 - T0 % MINUTE
    frames = [[alpaca_trade("AAPL", T0, 187.5, 100)],
              [alpaca_bar("AAPL", bar_t, 187.0, 188.0, 186.5, 187.5, 12_000), alpaca_trade("MSFT", T0 + 7, 370.25, 7)]]
    with FakeAlpacaStream([[*frames, "hang"]]) as server:
        emitted, node = drive_source(AlpacaStream, params(server, max_records=3), until=lambda e: False)
        assert server.wait_closed()
    assert server.errors == []
    assert [(port, topic, t) for port, _, topic, t in emitted] == [
        ("market_data", "market_data.AAPL", T0),
        ("market_data", "market_data.AAPL", bar_t),
        ("market_data", "market_data.MSFT", T0 + 7),
    ]
    assert emitted.values() == [
        {"symbol": "AAPL", "t": T0, "price": 187.5, "size": 100.0},
        {"symbol": "AAPL", "t": bar_t, "open": 187.0, "high": 188.0, "low": 186.5, "close": 187.5,
         "volume": 12_000.0},
        {"symbol": "MSFT", "t": T0 + 7, "price": 370.25, "size": 7.0},
    ]
    auth, subscribe = server.received
    assert auth == {"action": "auth", "key": "test-key-id", "secret": "test-secret"}
    assert subscribe["action"] == "subscribe"
    assert sorted(subscribe["trades"]) == ["AAPL", "MSFT"] and sorted(subscribe["bars"]) == ["AAPL", "MSFT"]
    assert "quotes" not in subscribe
    assert server.headers[0].get("Content-Type") == "application/msgpack"
    summary = node.summary()
    assert (summary["published"], summary["trades"], summary["bars"], summary["connections"]) == (3, 2, 1, 1)


def test_crypto_quotes_become_ticks_at_the_mid() -> None:
    with FakeAlpacaStream([[[alpaca_quote("BTC/USD", T0, 42_000.0, 42_010.0)], "hang"]]) as server:
        p = params(server, asset_class="crypto", feed="us", symbols=["BTC/USD"], channels=["quotes"], max_records=1)
        p["url"] = f"{server.url}/v1beta3/crypto/us"
        emitted, _ = drive_source(AlpacaStream, p, until=lambda e: False)
    assert server.received[1]["quotes"] == ["BTC/USD"]
    assert emitted[0][2] == "market_data.BTC/USD"
    assert emitted.values() == [{"symbol": "BTC/USD", "t": T0, "price": 42_005.0, "size": 0.0,
                                 "bid": 42_000.0, "ask": 42_010.0, "bid_size": 2.0, "ask_size": 3.0}]


def test_bad_records_are_skipped_and_counted_and_the_stream_goes_on() -> None:
    script = [
        [alpaca_trade("AAPL", T0 + 10, 100.0, i=1)],
        [alpaca_trade("AAPL", T0 + 11, float("nan"), i=2)],  # NaN price
        [alpaca_trade("AAPL", T0 + 12, -3.0, i=3)],  # negative price
        [alpaca_trade("AAPL", T0 + 10, 100.0, i=1)],  # duplicate
        [alpaca_trade("AAPL", T0 + 5, 101.0, i=4)],  # out of order
        [alpaca_trade("ZZZZ", T0 + 13, 10.0)],  # a symbol we did not subscribe to
        [alpaca_bar("AAPL", T0 - T0 % MINUTE, 1.0, 2.0, 0.5, 1.5, v=-10)],  # negative volume
        [{"T": "t", "S": "AAPL", "p": 100.0, "s": 1}],  # no time
        [{"T": "error", "code": 405, "msg": "symbol limit exceeded"}],
        [alpaca_trade("AAPL", T0 + 20, 100.25, i=9)],  # the last, good one
        "hang",
    ]
    with FakeAlpacaStream([script]) as server:
        emitted, node = drive_source(AlpacaStream, params(server), until=has(lambda v: v["t"] == T0 + 20))
    assert [v["price"] for v in emitted.values()] == [100.0, 100.25]
    summary = node.summary()
    assert {k: summary[k] for k in ("bad_price", "duplicate", "out_of_order", "unknown_symbol", "malformed",
                                    "server_errors")} == {
        "bad_price": 3, "duplicate": 1, "out_of_order": 1, "unknown_symbol": 1, "malformed": 1, "server_errors": 1}


def test_a_dropped_connection_reconnects_and_resumes() -> None:
    scripts = [
        [[alpaca_trade("AAPL", T0 + 1, 100.0, i=1)], [alpaca_trade("AAPL", T0 + 2, 100.5, i=2)], "drop"],
        [[alpaca_trade("AAPL", T0 + 2, 100.5, i=2)], [alpaca_trade("AAPL", T0 + 3, 101.0, i=3)], "close"],
        [[alpaca_trade("AAPL", T0 + 4, 101.5, i=4)], "hang"],
    ]
    with FakeAlpacaStream(scripts) as server:
        emitted, node = drive_source(AlpacaStream, params(server), until=has(lambda v: v["t"] == T0 + 4))
        assert server.wait_closed()
    assert [v["price"] for v in emitted.values()] == [100.0, 100.5, 101.0, 101.5]
    summary = node.summary()
    assert summary["reconnects"] == 2 and summary["connections"] == 3
    assert summary["duplicate"] == 1
    assert [m["action"] for m in server.received] == ["auth", "subscribe"] * 3


def test_a_server_that_keeps_dropping_makes_the_node_fail_after_max_reconnects() -> None:
    with FakeAlpacaStream([["drop"]]) as server, pytest.raises(StreamError, match="gave up after 2 consecutive"):
        drive_source(AlpacaStream, params(server, max_reconnects=2), until=lambda e: False)
    assert server.connections == 3


def test_refused_keys_fail_at_once_with_a_clear_message() -> None:
    with FakeAlpacaStream([["hang"]], secret="another-secret") as server, \
            pytest.raises(StreamError, match=r"authentication failed .*APCA_API_KEY_ID and APCA_API_SECRET_KEY"):
        drive_source(AlpacaStream, params(server), until=lambda e: False)
    assert server.connections == 1


@pytest.mark.parametrize("unset", [["APCA_API_KEY_ID"], ["APCA_API_SECRET_KEY"],
                                   ["APCA_API_KEY_ID", "APCA_API_SECRET_KEY"]])
def test_missing_keys_fail_at_setup_naming_the_variables(monkeypatch: pytest.MonkeyPatch, unset: list[str]) -> None:
    for name in unset:
        monkeypatch.delenv(name)
    ctx = Context("alpaca", AlpacaStream.Params(), lambda *a: None)
    with pytest.raises(StreamError, match=" and ".join(unset)):
        AlpacaStream().setup(ctx)


def test_a_feed_that_does_not_serve_the_asset_class_is_refused() -> None:
    with pytest.raises(ValueError, match="does not serve crypto"):
        AlpacaStream.Params(asset_class="crypto", feed="iex")
    with pytest.raises(ValueError):
        AlpacaStream.Params(feed="delayed_sip")


def test_records_from_raw_messages() -> None:
    ts = msgpack.Timestamp.from_unix_nano(T0)
    assert alpaca_record("trades", {"T": "t", "S": "X", "p": 1.5, "s": 2, "t": ts}) == \
        {"symbol": "X", "t": T0, "price": 1.5, "size": 2.0}
    assert alpaca_record("trades", {"T": "t", "S": "X", "p": 1.5, "t": "2024-01-02T14:30:00.123456789Z"})["t"] == T0
    for bad in ({"S": "X", "t": ts}, {"p": 1.0, "t": ts}, {"S": "X", "p": "x", "t": ts}, {"S": "X", "p": 1.0}):
        with pytest.raises(ValueError):
            alpaca_record("trades", bad)


def test_an_unreachable_server_fails_after_max_reconnects() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed when the block ends: nobody listens there
    p = {"symbols": ["AAPL"], "url": f"ws://127.0.0.1:{port}/v2/iex", "insecure": True, "max_reconnects": 1,
         "reconnect_delay_s": 0.01, "open_timeout_s": 2.0}
    with pytest.raises(StreamError, match="gave up after 1 consecutive"):
        drive_source(AlpacaStream, p, until=lambda e: False)


@pytest.mark.parametrize("url", ["ws://127.0.0.1:8765/v2/iex", "WS://proxy.example/v2/iex"])
def test_a_clear_text_url_needs_insecure(url: str) -> None:
    with pytest.raises(ValueError, match=r"would send the API keys in clear text .*wss://.*insecure: true"):
        AlpacaStream.Params(url=url)
    assert AlpacaStream.Params(url=url, insecure=True).url == url
    assert AlpacaStream.Params(url="wss://proxy.example/v2/iex").url == "wss://proxy.example/v2/iex"
    for bad in ("https://stream.data.alpaca.markets/v2/iex", "wss:///v2/iex", "stream.data.alpaca.markets"):
        with pytest.raises(ValueError, match="is not a wss:// URL"):
            AlpacaStream.Params(url=bad, insecure=True)


def test_validate_points_at_a_clear_text_url_with_the_fix(tmp_path: Any) -> None:
    import dmnflow

    g = tmp_path / "live.yaml"
    g.write_text("graph: live\n"
                 "nodes:\n"
                 "  market:\n"
                 "    uses: nodes.market.alpaca:AlpacaStream\n"
                 "    params:\n"
                 "      url: ws://127.0.0.1:8765/v2/iex\n"
                 "  sink: {uses: nodes.basic:Collect, inputs: {values: market.market_data}}\n", encoding="utf-8")
    [issue] = [i for i in dmnflow.validate(g) if i.is_error]
    assert (issue.code, issue.path) == ("invalid-param", "nodes.market.params.url")
    assert issue.loc is not None and (issue.loc.line, issue.loc.col) == (6, 12)
    assert "clear text" in issue.message and "insecure: true" in issue.message
    assert "ws:// needs insecure: true" in issue.hint
    g.write_text(g.read_text().replace("      url:", "      insecure: true\n      url:"), encoding="utf-8")
    assert [i for i in dmnflow.validate(g) if i.is_error] == []


def test_an_alpaca_py_without_bounded_reconnects_is_refused_at_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    from alpaca.data.live.websocket import DataStream

    monkeypatch.delattr(DataStream, "_wait_before_reconnect")  # as in alpaca-py < 0.44
    ctx = Context("alpaca", AlpacaStream.Params(), lambda *a: None)
    with pytest.raises(StreamError, match=r"alpaca-py .* is too old .*alpaca-py>=0\.44"):
        AlpacaStream().setup(ctx)


def test_the_keys_are_what_the_node_declares() -> None:
    assert AlpacaStream.environment(AlpacaStream.Params()) == ("APCA_API_KEY_ID", "APCA_API_SECRET_KEY")
