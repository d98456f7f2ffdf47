"""Replay of CSV and Parquet files, long and wide, as bars and panels; bad rows skipped and counted."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dmnflow.node import Context
from dmnflow.testing import run_node
from nodes.market.common import day_ns
from nodes.market.replay import Replay, read_market_file

pd = pytest.importorskip("pandas")
pytest.importorskip("pyarrow")

DATES = ["2021-01-04", "2021-01-05", "2021-01-06", "2021-01-07"]


def _long() -> Any:
    rows = []
    for d, date in enumerate(DATES):
        for s, symbol in enumerate(("AAA", "BBB", "CCC")):
            close = 10.0 * (s + 1) + d
            rows.append({"date": date, "symbol": symbol, "open": close - 0.5, "high": close + 1, "low": close - 1,
                         "close": close, "volume": 100.0 * (d + 1)})
    return pd.DataFrame(rows)


def _wide() -> Any:
    return _long().pivot(index="date", columns="symbol", values="close").reset_index()


def _write(df: Any, path: Path) -> Path:
    if path.suffix == ".parquet":
        df.to_parquet(path, index=False)
    else:
        df.to_csv(path, index=False)
    return path


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
@pytest.mark.parametrize("layout", ["long", "wide"])
def test_replay_bars_and_panels(tmp_path: Path, suffix: str, layout: str) -> None:
    path = _write(_long() if layout == "long" else _wide(), tmp_path / f"data{suffix}")
    bars = run_node(Replay, params={"path": str(path), "speed": 0})["market_data"]
    assert len(bars) == 12
    assert [b["symbol"] for b in bars[:3]] == ["AAA", "BBB", "CCC"]
    assert [b["t"] for b in bars[::3]] == [day_ns(d) for d in DATES]
    assert [b["close"] for b in bars] == [10.0 * (s + 1) + d for d in range(4) for s in range(3)]
    if layout == "long":
        assert bars[4] == {"symbol": "BBB", "t": day_ns(DATES[1]), "open": 20.5, "high": 22.0, "low": 20.0,
                           "close": 21.0, "volume": 200.0}
    else:  # closes only: open/high/low are the close, volume 0
        assert bars[4] == {"symbol": "BBB", "t": day_ns(DATES[1]), "open": 21.0, "high": 21.0, "low": 21.0,
                           "close": 21.0, "volume": 0.0}
    panels = run_node(Replay, params={"path": str(path), "mode": "panel"})["market_data"]
    assert [p["t"] for p in panels] == [day_ns(d) for d in DATES]
    assert panels[2]["symbols"] == ["AAA", "BBB", "CCC"] and panels[2]["close"] == [12.0, 22.0, 32.0]
    assert ("volume" in panels[0]) == (layout == "long")


def test_filters_by_date_and_symbol(tmp_path: Path) -> None:
    path = _write(_long(), tmp_path / "data.csv")
    params = {"path": str(path), "start": "2021-01-05", "end": "2021-01-06", "symbols": ["CCC", "AAA", "ZZZ"]}
    out = run_node(Replay, params={**params, "mode": "panel"})
    panels = out["market_data"]
    assert [p["t"] for p in panels] == [day_ns("2021-01-05"), day_ns("2021-01-06")]
    assert [p["symbols"] for p in panels] == [["CCC", "AAA"]] * 2 and panels[0]["close"] == [31.0, 11.0]


def test_bad_rows_are_skipped_and_counted(tmp_path: Path) -> None:
    df = _long()
    df.loc[1, "close"] = float("nan")  # BBB day 0: missing close
    df.loc[4, "close"] = -3.0  # BBB day 1: negative
    df.loc[8, "close"] = 0.0  # CCC day 2: zero
    dup = df.iloc[[6]].copy()
    dup["close"] = 99.0  # AAA day 2 twice
    df = pd.concat([df, dup]).sort_values("date", kind="stable")
    path = _write(df, tmp_path / "bad.csv")
    counts = {}
    for mode in ("bars", "panel"):
        node_out = run_node(Replay, params={"path": str(path), "mode": mode})["market_data"]
        closes = (sorted((b["t"], b["symbol"], b["close"]) for b in node_out) if mode == "bars" else
                  sorted((p["t"], s, c) for p in node_out for s, c in zip(p["symbols"], p["close"], strict=True)
                         if not math.isnan(c)))
        assert len(closes) == 12 - 3
        assert (day_ns(DATES[2]), "AAA", 12.0) in closes and (day_ns(DATES[2]), "AAA", 99.0) not in closes
        counts[mode] = closes
    assert counts["bars"] == counts["panel"]
    node = Replay()
    ctx = Context("replay", Replay.Params(path=str(path)), lambda *a: None)
    node.setup(ctx)
    list(node.run(ctx))
    summary = node.summary()
    assert {k: summary[k] for k in ("accepted", "bad_price", "duplicate", "out_of_order", "bars", "days")} == \
        {"accepted": 9, "bad_price": 3, "duplicate": 1, "out_of_order": 0, "bars": 9, "days": 4}


def test_file_order_replay_drops_rows_older_than_their_symbol(tmp_path: Path) -> None:
    df = _long()
    df = pd.concat([df.iloc[3:6], df.iloc[0:3], df.iloc[6:]])  # day 1 before day 0
    path = _write(df, tmp_path / "shuffled.csv")
    in_order = run_node(Replay, params={"path": str(path)})["market_data"]
    assert [b["t"] for b in in_order[::3]] == [day_ns(d) for d in DATES]  # sort: true (default)
    node_out = run_node(Replay, params={"path": str(path), "sort": False})["market_data"]
    assert [b["t"] for b in node_out[::3]] == [day_ns(d) for d in DATES[1:]]  # day 0 came too late
    frame = read_market_file(path)
    assert frame.symbols == ["AAA", "BBB", "CCC"] and len(frame) == 12


def test_dates_with_times_and_other_column_names(tmp_path: Path) -> None:
    df = pd.DataFrame({"Timestamp": pd.to_datetime(["2021-01-04 21:00", "2021-01-05 21:00"], utc=True),
                       "ES": [1.0, 2.0], "NQ": [3.0, np.nan]})
    path = _write(df, tmp_path / "wide.parquet")
    frame = read_market_file(path)
    assert frame.symbols == ["ES", "NQ"] and frame.t.tolist() == [day_ns("2021-01-04")] * 2 + [day_ns("2021-01-05")]
    indexed = df.set_index("Timestamp")  # a DatetimeIndex written as the parquet index
    indexed.to_parquet(tmp_path / "indexed.parquet")
    again = read_market_file(tmp_path / "indexed.parquet")
    assert again.t.tolist() == frame.t.tolist() and again.close.tolist() == [1.0, 3.0, 2.0]


def test_bad_params_and_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="params.path"):
        Replay.Params()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run_node(Replay, params={"path": str(tmp_path / "missing.csv")})
    (tmp_path / "data.json").write_text("{}")
    with pytest.raises(ValueError, match="not a CSV"):
        run_node(Replay, params={"path": str(tmp_path / "data.json")})
    (tmp_path / "long.csv").write_text("date,symbol,price\n2021-01-04,A,1\n")
    with pytest.raises(ValueError, match="'symbol' and 'close'"):
        run_node(Replay, params={"path": str(tmp_path / "long.csv")})
