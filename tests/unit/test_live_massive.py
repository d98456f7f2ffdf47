"""MassiveStream against a protocol-faithful local Massive (Polygon) WebSocket, with the real client."""

from __future__ import annotations

import logging
import math
import socket
from typing import Any

import msgpack
import pytest

from dmnflow.node import Context
from nodes.market.massive import Feed, MassiveStream, StreamError, massive_subscriptions, to_ns

from .fakes_live import FakeMassive, drive_source, live_threads, massive_agg, massive_quote, massive_trade

T0 = 1_704_205_800_000  # 2024-01-02 14:30:00 UTC, in milliseconds as Massive sends it
MS = 1_000_000


@pytest.fixture(autouse=True)
def _keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MASSIVE_API_KEY", "test-key")
    monkeypatch.delenv("POLYGON_API_KEY", raising=False)


@pytest.fixture(autouse=True)
def _no_leaked_threads() -> Any:
    yield
    assert live_threads() == []


def params(server: FakeMassive, **extra: Any) -> dict[str, Any]:
    return {"symbols": ["AAPL", "MSFT"], "url": f"{server.url}/stocks", "insecure": True, "reconnect_delay_s": 0.01,
            "reconnect_max_delay_s": 0.05, "open_timeout_s": 5.0, "channels": ["trades", "bars"], **extra}


def has(predicate: Any) -> Any:
    return lambda emitted: any(predicate(value) for value in emitted.values())


def test_trades_and_minute_bars_become_ticks_and_bars_on_per_symbol_topics() -> None:
    frames = [[massive_trade("AAPL", T0, 187.5, 100)],
              [massive_agg("AAPL", T0, 187.0, 188.0, 186.5, 187.5, 12_000), massive_trade("MSFT", T0 + 5, 370.25, 7)]]
    with FakeMassive([[*frames, "hang"]]) as server:
        emitted, node = drive_source(MassiveStream, params(server, max_records=3), until=lambda e: False)
        assert server.wait_closed()
    assert [(port, topic, t) for port, _, topic, t in emitted] == [
        ("market_data", "market_data.AAPL", T0 * MS),
        ("market_data", "market_data.AAPL", T0 * MS),
        ("market_data", "market_data.MSFT", (T0 + 5) * MS),
    ]
    assert emitted.values() == [
        {"symbol": "AAPL", "t": T0 * MS, "price": 187.5, "size": 100.0},
        {"symbol": "AAPL", "t": T0 * MS, "open": 187.0, "high": 188.0, "low": 186.5, "close": 187.5,
         "volume": 12_000.0},
        {"symbol": "MSFT", "t": (T0 + 5) * MS, "price": 370.25, "size": 7.0},
    ]
    auth, subscribe = server.received
    assert auth == {"action": "auth", "params": "test-key"}
    assert subscribe["action"] == "subscribe"
    assert set(subscribe["params"].split(",")) == {"T.AAPL", "T.MSFT", "AM.AAPL", "AM.MSFT"}
    summary = node.summary()
    assert (summary["published"], summary["trades"], summary["bars"], summary["received"]) == (3, 2, 1, 3)
    assert summary["reconnects"] == 0 and summary["connections"] == 1


def test_quotes_become_ticks_at_the_mid_with_bid_and_ask() -> None:
    with FakeMassive([[[massive_quote("AAPL", T0, 187.0, 187.5)], "hang"]]) as server:
        emitted, _ = drive_source(MassiveStream, params(server, channels=["quotes"], max_records=1),
                                  until=lambda e: False)
    assert server.received[1]["params"] in ("Q.AAPL,Q.MSFT", "Q.MSFT,Q.AAPL")
    assert emitted.values() == [{"symbol": "AAPL", "t": T0 * MS, "price": 187.25, "size": 0.0,
                                 "bid": 187.0, "ask": 187.5, "bid_size": 2.0, "ask_size": 3.0}]


def test_bad_records_are_skipped_and_counted_and_the_stream_goes_on() -> None:
    script = [
        [massive_trade("AAPL", T0 + 10, 100.0, i="a")],
        [massive_trade("AAPL", T0 + 11, float("nan"), i="b")],  # NaN price
        [massive_trade("AAPL", T0 + 12, -3.0, i="c")],  # negative price
        [massive_trade("AAPL", T0 + 10, 100.0, i="a")],  # duplicate of the first
        [massive_trade("AAPL", T0 + 5, 101.0, i="d")],  # out of order
        [massive_trade("ZZZZ", T0 + 13, 10.0)],  # a symbol we did not ask for
        [massive_trade("AAPL", T0 + 14, 100.5, size=-1)],  # negative size
        [massive_agg("AAPL", T0, 1.0, 2.0, 0.5, 0.0)],  # zero close
        "this is not JSON",
        [{"ev": "T", "sym": "AAPL", "t": T0 + 15}],  # no price
        [{"ev": "XYZ", "sym": "AAPL"}],  # an event type that does not exist
        [{"ev": "status", "status": "error", "message": "not authorized for Q.*"}],
        [massive_trade("AAPL", T0 + 20, 100.25, i="z")],  # the last, good one
        "hang",
    ]
    with FakeMassive([script]) as server:
        emitted, node = drive_source(MassiveStream, params(server), until=has(lambda v: v["t"] == (T0 + 20) * MS))
    assert [v["price"] for v in emitted.values()] == [100.0, 100.25]
    summary = node.summary()
    assert {k: summary[k] for k in ("bad_price", "duplicate", "out_of_order", "unknown_symbol", "malformed",
                                    "server_errors")} == {
        "bad_price": 4, "duplicate": 1, "out_of_order": 1, "unknown_symbol": 1, "malformed": 3, "server_errors": 1}
    assert summary["published"] == 2
    assert summary["received"] == 9  # decoded records; the guard judged them


def test_a_dropped_connection_reconnects_with_backoff_and_resumes() -> None:
    scripts = [
        [[massive_trade("AAPL", T0 + 1, 100.0, i="1")], [massive_trade("AAPL", T0 + 2, 100.5, i="2")], "drop"],
        [[massive_trade("AAPL", T0 + 2, 100.5, i="2")], [massive_trade("AAPL", T0 + 3, 101.0, i="3")], "close"],
        [[massive_trade("AAPL", T0 + 4, 101.5, i="4")], "hang"],
    ]
    with FakeMassive(scripts) as server:
        emitted, node = drive_source(MassiveStream, params(server), until=has(lambda v: v["t"] == (T0 + 4) * MS))
        assert server.wait_closed()
    assert [v["price"] for v in emitted.values()] == [100.0, 100.5, 101.0, 101.5]
    summary = node.summary()
    assert summary["reconnects"] == 2  # one drop without a closing handshake, one normal close
    assert summary["duplicate"] == 1  # the replayed trade after the first reconnect
    assert server.connections == 3
    assert [m["action"] for m in server.received] == ["auth", "subscribe"] * 3  # re-authenticated, re-subscribed


def test_a_server_that_keeps_dropping_makes_the_node_fail_after_max_reconnects() -> None:
    with FakeMassive([["drop"]]) as server, pytest.raises(StreamError, match=r"gave up after 2 consecutive"):
        drive_source(MassiveStream, params(server, max_reconnects=2), until=lambda e: False)
    assert server.connections == 3


def test_an_unreachable_server_fails_after_max_reconnects() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed when the block ends: nobody listens there
    p = {"symbols": ["AAPL"], "url": f"ws://127.0.0.1:{port}/stocks", "insecure": True, "max_reconnects": 1,
         "reconnect_delay_s": 0.01, "open_timeout_s": 2.0}
    with pytest.raises(StreamError, match=r"gave up after 1 .*cannot connect to ws://127\.0\.0\.1"):
        drive_source(MassiveStream, p, until=lambda e: False)


def test_a_refused_key_fails_at_once_with_a_clear_message() -> None:
    with FakeMassive([["hang"]], api_key="another-key") as server, \
            pytest.raises(StreamError, match=r"authentication failed .*MASSIVE_API_KEY"):
        drive_source(MassiveStream, params(server), until=lambda e: False)
    assert server.connections == 1  # not retried: the same key would be refused again


def test_a_missing_key_fails_at_setup_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MASSIVE_API_KEY")
    node = MassiveStream()
    ctx = Context("massive", MassiveStream.Params(), lambda *a: None)
    with pytest.raises(StreamError, match="set the environment variable MASSIVE_API_KEY"):
        node.setup(ctx)
    monkeypatch.setenv("POLYGON_API_KEY", "old-name-key")  # the former name is read too
    node.setup(ctx)
    assert node._key == "old-name-key"


def test_stopping_closes_the_socket_and_joins_the_thread() -> None:
    with FakeMassive([[[massive_trade("AAPL", T0, 100.0)], "hang"]]) as server:
        emitted, _ = drive_source(MassiveStream, params(server), until=lambda e: len(e) == 1)
        assert live_threads() == []
        assert server.wait_closed()
    assert len(emitted) == 1


def test_a_full_queue_drops_and_counts() -> None:
    feed = Feed("test", None, 2, logging.getLogger("test"), 10.0, 0.1, 1.0, 3)  # type: ignore[arg-type]
    for k in range(5):
        feed.put("trades", {"symbol": "AAPL", "t": k + 1, "price": 1.0, "size": 1.0})
    assert (feed.received, feed.overflow, feed.queue.qsize()) == (5, 3, 2)


def test_backoff_doubles_up_to_the_cap_with_equal_jitter() -> None:
    feed = Feed("test", None, 2, logging.getLogger("test"), 10.0, 0.1, 1.0, 3)  # type: ignore[arg-type]
    for attempt, capped in ((1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (9, 1.0)):
        delays = [feed.backoff(attempt) for _ in range(50)]
        assert all(capped / 2 <= d <= capped for d in delays)
    assert feed.reconnecting(3, "x") is not None and feed.reconnecting(4, "boom") is None
    assert feed.error is not None and "gave up after 3" in feed.error and "boom" in feed.error


def test_subscriptions_per_market() -> None:
    assert massive_subscriptions("stocks", ["trades", "bars"], ["AAPL"], "second") == ["T.AAPL", "A.AAPL"]
    assert massive_subscriptions("crypto", ["trades", "quotes"], ["BTC-USD"], "minute") == ["XT.BTC-USD",
                                                                                              "XQ.BTC-USD"]
    with pytest.raises(ValueError, match="no trades channel"):
        massive_subscriptions("forex", ["trades"], ["EUR-USD"], "minute")
    with pytest.raises(ValueError):  # at compile time too: the graph's params are refused
        MassiveStream.Params(market="indices", channels=["quotes"])
    assert MassiveStream.Params().channels == ["bars"]  # one kind by default: minute bars


def test_timestamps_in_any_unit_become_nanoseconds() -> None:
    ns = 1_704_205_800_123_456_789
    assert to_ns(1_704_205_800) == 1_704_205_800 * 10**9
    assert to_ns(1_704_205_800_123) == 1_704_205_800_123 * MS
    assert to_ns(1_704_205_800_123_456) == 1_704_205_800_123_456 * 1000
    assert to_ns(ns) == ns
    assert to_ns(msgpack.Timestamp.from_unix_nano(ns)) == ns
    assert to_ns("2024-01-02T14:30:00.123456789Z") == ns
    assert to_ns("2024-01-02T15:30:00.5+01:00") == 1_704_205_800_500_000_000
    for bad in (None, 0, -5, math.nan, "yesterday", True):
        assert to_ns(bad) is None


def test_graphs_using_the_live_sources_validate(tmp_path: Any) -> None:
    import dmnflow

    graph = """
graph: live
nodes:
  massive:
    uses: nodes.market.massive:MassiveStream
    params: {{symbols: [AAPL, MSFT], market: {market}, channels: [trades]}}
  alpaca:
    uses: nodes.market.alpaca:AlpacaStream
    params: {{symbols: [AAPL], feed: {feed}}}
  a:
    uses: nodes.basic:Collect
    inputs: {{values: massive.market_data}}
  b:
    uses: nodes.basic:Collect
    inputs: {{values: alpaca.market_data}}
"""
    path = tmp_path / "live.yaml"
    path.write_text(graph.format(market="stocks", feed="iex"))
    assert dmnflow.validate(path) == []  # no keys needed to validate: they are read at setup
    path.write_text(graph.format(market="forex", feed="us"))
    issues = dmnflow.validate(path)
    assert sorted((i.code, i.path) for i in issues) == [("invalid-param", "nodes.alpaca.params.feed"),
                                                       ("invalid-param", "nodes.massive.params.market")]


def test_a_clear_text_url_needs_insecure() -> None:
    with pytest.raises(ValueError, match=r"would send the API keys in clear text .*wss://.*insecure: true"):
        MassiveStream.Params(url="ws://127.0.0.1:8765/stocks")
    assert MassiveStream.Params(url="ws://127.0.0.1:8765/stocks", insecure=True).url == "ws://127.0.0.1:8765/stocks"
    assert MassiveStream.Params(url="wss://proxy.example/stocks").url == "wss://proxy.example/stocks"
    with pytest.raises(ValueError, match="is not a wss:// URL"):
        MassiveStream.Params(url="http://127.0.0.1:8765/stocks", insecure=True)
    assert MassiveStream.Params().url is None  # the vendor's own wss:// URL


def test_a_websockets_that_retries_forever_is_refused_at_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    from websockets.asyncio.client import connect

    def old_init(self: Any, uri: str | None = None, *, process_exception: Any = None, **kwargs: Any) -> None:
        """connect() as in websockets < 17: no reconnect_delays hook"""

    monkeypatch.setattr(connect, "__init__", old_init)
    ctx = Context("massive", MassiveStream.Params(), lambda *a: None)
    with pytest.raises(StreamError, match=r"websockets .* is too old .*websockets>=17"):
        MassiveStream().setup(ctx)


def test_the_keys_are_what_the_node_declares() -> None:
    assert MassiveStream.environment(MassiveStream.Params()) == ("MASSIVE_API_KEY", "POLYGON_API_KEY")
