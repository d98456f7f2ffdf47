"""``IncrementalModel`` answers what the model file answers on the same window, day after day,
whatever came before: symbols entering and leaving, a missed day, a window that does not
continue yesterday's."""

from __future__ import annotations

import functools
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dmnflow.testing import RecordingContext  # noqa: E402
from nodes.features.node import CrossSection  # noqa: E402
from nodes.market.synthetic import SyntheticMarket  # noqa: E402
from nodes.models.incremental import IncrementalModel, LSTMSteps, TransformerSteps, steps_for  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
MODELS = {"lstm": (ROOT / "models" / "dmn_lstm.pt", 63), "transformer": (ROOT / "models" / "dmn_transformer.pt", 126)}
CLOSE = 2e-6  # float rounding: the split network sums in another order than the file's kernels


def feature_days(symbols: int, days: int, length: int) -> list[tuple[np.ndarray, list[str]]]:
    """The windows the features node sends for each day of the synthetic market."""
    market, cs = SyntheticMarket(symbols, seed=7), CrossSection(63, 126)
    out = []
    for _ in range(days):
        bars = market.next_day()
        for day in cs.add_panel({"t": bars.t, "symbols": market.symbols, "close": bars.close.tolist()}):
            out.append(day.windows(length))
    return out


@functools.cache
def _module(path: Path) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.load(str(path)).eval()


def reference(path: Path, x: np.ndarray) -> np.ndarray:
    module = _module(path)
    with torch.inference_mode():
        return module(torch.from_numpy(x)).numpy() if x.shape[0] else np.zeros((0, 1), np.float32)


@pytest.mark.parametrize("kind", ["lstm", "transformer"])
def test_the_split_network_is_the_file_s_network(kind: str) -> None:
    path, length = MODELS[kind]
    steps = steps_for(str(path))
    assert isinstance(steps, LSTMSteps if kind == "lstm" else TransformerSteps)
    x = np.random.default_rng(1).standard_normal((9, length, 8)).astype(np.float32)
    with torch.inference_mode():
        cache = steps.prefix(torch.from_numpy(np.ascontiguousarray(x[:, :-1])))
        got = steps.last(cache, torch.from_numpy(np.ascontiguousarray(x[:, -1]))).numpy()
    np.testing.assert_allclose(got, reference(path, x), atol=CLOSE, rtol=0)


def test_a_file_that_is_not_a_dmn_network_gets_no_split(tmp_path: Path) -> None:
    torch.jit.script(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8 * 4, 1))).save(str(tmp_path / "m.pt"))
    assert steps_for(str(tmp_path / "m.pt")) is None
    assert steps_for(str(tmp_path / "missing.pt")) is None


def run_days(kind: str, days: list[tuple[np.ndarray, list[str]]], incremental: bool = True
             ) -> tuple[list[np.ndarray], IncrementalModel, RecordingContext]:
    path, length = MODELS[kind]
    params = {"input": {"shape": [length, 8]}, "output": {"shape": [1]}, "batched": True, "threads": 1,
              "incremental": incremental}
    ctx = RecordingContext(IncrementalModel, params, model=str(path))
    node = IncrementalModel()
    node.setup(ctx)
    try:
        for x, symbols in days:
            ctx.message.attrs = {"symbols": symbols}
            ctx.message.topic = "windows"
            node.on_x(x, ctx)
    finally:
        node.teardown(ctx)
    return ctx.out["y"], node, ctx


@pytest.mark.parametrize("kind", ["lstm", "transformer"])
def test_day_after_day_it_answers_what_the_model_file_answers(kind: str) -> None:
    path, length = MODELS[kind]
    days = feature_days(12, 520, length)
    # a symbol leaves for a day and comes back (its window then does not continue the cached one),
    # a day is missed altogether, and one day's rows come in another order
    days = [d for d in days if d[0].shape[0]][-30:]
    x, symbols = days[10]
    days[10] = (x[1:], symbols[1:])
    del days[20]
    x, symbols = days[25]
    days[25] = (x[::-1].copy(), symbols[::-1])
    got, node, ctx = run_days(kind, days)
    assert len(got) == len(days)
    for (x, _), y in zip(days, got, strict=True):
        assert y.shape == (x.shape[0], 1) and y.dtype == np.float32
        np.testing.assert_allclose(y, reference(path, x), atol=CLOSE, rtol=0)
    counts = node.summary()
    assert counts["full_rows"] >= days[0][0].shape[0] + 1 + days[20][0].shape[0]  # first day, the return, the gap
    assert counts["incremental_rows"] > 20 * 12  # most rows came from the cache
    assert all(attrs["model_version"].startswith(path.name) and attrs["symbols"] for *_, attrs in ctx.sent)


def test_without_the_cache_and_on_empty_windows_it_is_the_plain_runner() -> None:
    days = [d for d in feature_days(4, 420, 63) if d[0].shape[0]][-5:]
    days.insert(2, (np.zeros((0, 63, 8), np.float32), []))
    plain, node, _ = run_days("lstm", days, incremental=False)
    assert node.summary()["incremental_rows"] == 0
    cached, _, _ = run_days("lstm", days)
    assert [y.shape for y in plain] == [y.shape for y in cached] == [(x.shape[0], 1) for x, _ in days]
    for a, b in zip(plain, cached, strict=True):
        np.testing.assert_allclose(a, b, atol=CLOSE, rtol=0)
