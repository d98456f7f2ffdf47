"""The DMN models: networks, Sharpe loss, training determinism, windows, strategy returns, shipped files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pd = pytest.importorskip("pandas")

from nodes.models.data import build_panel, make_sequences, scaled_returns  # noqa: E402
from nodes.models.evaluate import figures, predict_positions, strategy_returns  # noqa: E402
from nodes.models.nets import DMNLSTM, LastPosition, MomentumTransformer, build_model  # noqa: E402
from nodes.models.train import TrainConfig, fit, main, sharpe_loss, weights_fingerprint  # noqa: E402
from nodes.models.walkforward import blocks  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _one_thread():
    """Training pins torch to one thread and deterministic kernels: give the process its state back."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


@pytest.mark.parametrize("kind,steps", [("lstm", 63), ("transformer", 126)])
def test_networks_script_and_give_positions_per_step(kind: str, steps: int) -> None:
    torch.manual_seed(0)
    net = build_model(kind, hidden=8, window=steps).eval()
    x = torch.randn(3, steps, 8)
    with torch.no_grad():
        y = net(x)
        assert y.shape == (3, steps) and bool((y.abs() <= 1).all())
        head = torch.jit.script(LastPosition(net))
        last = head(x)
        assert last.shape == (3, 1)
        assert torch.allclose(last, y[:, -1:], atol=1e-6)  # the cheap last-step path is the full pass's last column
        assert head(torch.zeros(0, steps, 8)).shape == (0, 1)  # an empty cross-section


def test_transformer_is_causal() -> None:
    torch.manual_seed(1)
    net = MomentumTransformer(d_model=16, heads=2, layers=2, ff=32, max_len=40).eval()
    x = torch.randn(2, 40, 8)
    later = x.clone()
    later[:, 30:] += 5.0
    with torch.no_grad():
        assert torch.equal(net(x)[:, :30], net(later)[:, :30])
        assert not torch.allclose(net(x)[:, 30:], net(later)[:, 30:])


def test_lstm_is_the_papers_shape() -> None:
    net = DMNLSTM(hidden=16)
    assert net.lstm.num_layers == 1 and net.lstm.hidden_size == 16 and net.dense.out_features == 1


def test_sharpe_loss_matches_a_hand_computation() -> None:
    pos = [[0.5, -1.0, 0.25], [1.0, 0.2, -0.5]]
    tgt = [[0.01, -0.02, 0.005], [-0.01, 0.03, -0.02]]
    sig = [[0.1, 0.2, 0.1], [0.3, 0.3, 0.15]]
    captured = np.array(pos) * np.array(tgt)
    m = captured.mean()
    expected = -m / math.sqrt((captured ** 2).mean() - m * m + 1e-9) * math.sqrt(252)
    got = sharpe_loss(torch.tensor(pos, dtype=torch.float64), torch.tensor(tgt, dtype=torch.float64))
    assert float(got) == pytest.approx(expected, rel=1e-12)
    # with a turnover cost: each step after a window's first pays c * 0.15 * |X_t/s_t - X_{t-1}/s_{t-1}|
    c = 2e-4
    lev = np.array(pos) / np.array(sig)
    costed = captured.copy()
    costed[:, 1:] -= c * 0.15 * np.abs(np.diff(lev, axis=1))
    m = costed.mean()
    expected = -m / math.sqrt((costed ** 2).mean() - m * m + 1e-9) * math.sqrt(252)
    got = sharpe_loss(*(torch.tensor(a, dtype=torch.float64) for a in (pos, tgt, sig)), cost=c)
    assert float(got) == pytest.approx(expected, rel=1e-12)


def _closes(days: int = 520, n: int = 3, seed: int = 3) -> pd.DataFrame:
    """A small random-walk market with a gap in one asset (its own time skips the gap)."""
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range("2001-01-01", periods=days)
    drift = np.linspace(-0.001, 0.001, n)
    prices = 100 * np.exp(np.cumsum(rng.normal(drift, 0.01, (days, n)), axis=0))
    df = pd.DataFrame(prices, index=dates, columns=[f"A{i}" for i in range(n)])
    df.iloc[400:405, 1] = np.nan
    return df


@pytest.fixture(scope="module")
def panel():
    return build_panel(_closes())


def test_windows_never_look_past_the_end(panel) -> None:
    end = panel.dates[450]
    seq = make_sequences(panel, None, end, 20, 7)
    assert len(seq) > 0
    assert (seq.dates < np.datetime64(end)).all()
    assert np.isfinite(seq.x).all() and np.isfinite(seq.target).all()
    # every window is consecutive rows of one asset's own time, its targets are r_{t+1} * 0.15 / sigma_t,
    # and the last target's price is dated before the end
    tgt = scaled_returns(panel)
    for i in range(len(seq)):
        rows = panel.dates.get_indexer(pd.DatetimeIndex(seq.dates[i]))
        j = next(j for j in range(3) if np.allclose(panel.features[rows, j], seq.x[i], rtol=1e-6, equal_nan=False))
        own = np.flatnonzero(panel.priced[:, j])
        assert np.array_equal(np.diff(np.searchsorted(own, rows)), np.ones(19))
        assert np.allclose(tgt[rows, j], seq.target[i], rtol=1e-6)
        assert panel.next_date[rows[-1], j] < np.datetime64(end)


def test_a_delayed_target_is_what_the_evaluation_earns_a_day_late(panel) -> None:
    """The loss of a model trained for a delay scores exactly what ``strategy_returns`` pays
    a position traded that many days after its signal: the training and the headline agree."""
    from nodes.models.data import target_dates
    from nodes.models.evaluate import strategy_returns

    x = np.where(panel.priced, np.sign(np.sin(np.arange(panel.sigma.shape[0]))[:, None] + 0.1), np.nan)
    x = np.where(np.isfinite(panel.sigma) & (panel.sigma > 0), x, np.nan)
    earnings = []
    for delay in (0, 1, 2):
        target = scaled_returns(panel, delay)
        ok = np.isfinite(x) & np.isfinite(target)
        count = np.isfinite(x).sum(axis=1)  # the evaluation's equal weight, 1 / assets held that day
        earned = np.nansum(np.where(ok, x * target, 0.0) / np.maximum(count, 1)[:, None])
        got = strategy_returns(panel, x, 0.0, delay).sum()
        assert earned == pytest.approx(got, rel=1e-9, abs=1e-12), delay
        earnings.append(got)
        # the training never uses a target whose price lies at or after its end
        end = panel.dates[450]
        seq = make_sequences(panel, None, end, 20, 7, delay)
        assert len(seq) > 0 and np.isfinite(seq.target).all()
        due = target_dates(panel, delay)
        for i in range(len(seq)):
            rows = panel.dates.get_indexer(pd.DatetimeIndex(seq.dates[i]))
            j = next(j for j in range(3) if np.allclose(panel.features[rows, j], seq.x[i], rtol=1e-6))
            assert np.allclose(target[rows, j], seq.target[i], rtol=1e-6)
            assert due[rows[-1], j] < np.datetime64(end)
    assert len(set(earnings)) == 3  # (a delay changes what the same positions earn)


def test_a_tiny_training_run_is_deterministic(panel, tmp_path: Path) -> None:
    config = TrainConfig(model="lstm", window=20, stride=10, hidden=4, epochs=3, batch=8, patience=3, seed=5)
    a = fit(panel, config, None, panel.dates[-1])
    b = fit(panel, config, None, panel.dates[-1])
    sa, sb = a.net.state_dict(), b.net.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert weights_fingerprint(a.net) == weights_fingerprint(b.net)
    assert a.history == b.history and a.epochs_run == 3
    other = fit(panel, config.model_copy(update={"seed": 6}), None, panel.dates[-1])
    assert not all(torch.equal(sa[k], other.net.state_dict()[k]) for k in sa)


def test_the_training_command_exports_a_model_and_its_provenance(tmp_path: Path) -> None:
    out = tmp_path / "tiny.pt"
    args = ["--data", "synthetic", "--symbols", "3", "--days", "700", "--train-end", "2002-06-01",
            "--model", "lstm", "--window", "21", "--hidden", "4", "--epochs", "2", "--out", str(out)]
    assert main(args) == 0
    side = json.loads((tmp_path / "tiny.pt.json").read_text())
    assert side["data"]["source"] == "synthetic" and side["data"]["seed"] == 7 and side["data"]["symbols"] == 3
    assert side["config"]["epochs"] == 2 and side["input"]["shape"] == [21, 8] and side["epochs_run"] <= 2
    assert set(side["out_of_sample"]["figures"]) == {"long_only", "tsmom", "macd", "lstm"}
    assert "git_commit" in side and math.isfinite(side["valid_sharpe"])
    loaded = torch.jit.load(str(out))
    assert weights_fingerprint(loaded.net) == side["weights_sha256"]
    assert loaded(torch.zeros(2, 21, 8)).shape == (2, 1)


def test_the_training_help_shows_every_default(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: None)" not in text
    for shown in ("--hidden HIDDEN LSTM hidden units (default: 64)", "(default: 63; 126 with --model transformer)",
                  "--epochs EPOCHS most epochs (default: 30)", "--lr LR Adam learning rate (default: 0.001)",
                  "--seed SEED seed of numpy and torch: initial weights, dropout, batch order (default: 0)",
                  "(default: synthetic)", "(default: lstm)"):
        assert shown in text, shown


def test_strategy_returns_by_hand(panel) -> None:
    pos = np.where(panel.window_ready(20), 1.0, np.nan)
    r0 = strategy_returns(panel, pos, 0.0)
    r5 = strategy_returns(panel, pos, 5.0)
    assert r0.index.equals(panel.dates)  # every day, as an account marked daily
    first = int(np.argmax(np.isfinite(pos).any(axis=1)))
    assert (r0.iloc[:first + 1] == 0).all()  # nothing held yet: flat (the first trade earns from the next day)
    d = first + 10  # the return earned on day d is the mean over the assets held at the close before
    held = np.isfinite(pos[d - 1]) & np.isfinite(panel.sigma[d - 1])
    assert (panel.next_date[d - 1, held] == panel.dates[d].to_datetime64()).all()  # no gaps in this market
    expected = np.mean(0.15 / panel.sigma[d - 1, held] * panel.next_ret[d - 1, held])
    assert r0.iloc[d] == pytest.approx(expected, rel=1e-12)
    assert (r5 <= r0 + 1e-15).all() and (r5 < r0).any()  # costs only ever subtract (entering, vol changes)
    f = figures(r0.iloc[first + 1:])
    assert f["ann_vol"] == pytest.approx(0.15) and f["mdd"] >= 0


def test_a_delay_trades_the_same_weights_a_day_later(panel) -> None:
    pos = np.where(panel.window_ready(20), np.sign(panel.tsmom), np.nan)
    now, late = strategy_returns(panel, pos, 0.0), strategy_returns(panel, pos, 0.0, delay=1)
    d = int(np.argmax(np.isfinite(pos).any(axis=1))) + 30
    held = np.isfinite(pos[d - 2]) & np.isfinite(panel.sigma[d - 2])
    weight = pos[d - 2, held] * 0.15 / panel.sigma[d - 2, held] / held.sum()  # decided two closes before
    assert late.iloc[d] == pytest.approx(float(weight @ panel.next_ret[d - 1, held]), rel=1e-12)
    assert not np.allclose(now.to_numpy(), late.to_numpy())


def test_predict_positions_equals_the_exported_head(panel) -> None:
    torch.manual_seed(0)
    net = build_model("lstm", hidden=4).eval()
    pos = predict_positions(net, panel, 63)
    d, j = np.argwhere(np.isfinite(pos))[-1]
    own = np.flatnonzero(panel.priced[:, j])
    k = np.searchsorted(own, d)
    window = torch.from_numpy(panel.features[own[k - 62:k + 1], j].astype(np.float32))[None]
    with torch.no_grad():
        assert pos[d, j] == pytest.approx(float(torch.jit.script(LastPosition(net))(window)[0, 0]), abs=1e-6)


def test_walkforward_blocks() -> None:
    assert blocks(1995, 5, pd.Timestamp("2026-07-10")) == [
        ("1995-01-01", "2000-01-01"), ("2000-01-01", "2005-01-01"), ("2005-01-01", "2010-01-01"),
        ("2010-01-01", "2015-01-01"), ("2015-01-01", "2020-01-01"), ("2020-01-01", "2025-01-01"),
        ("2025-01-01", None)]


@pytest.mark.parametrize("name,window", [("dmn_lstm", 63), ("dmn_transformer", 126)])
def test_shipped_models_run_in_the_model_runner(name: str, window: int) -> None:
    from dmnflow.runners import TorchScriptModel
    from dmnflow.testing import run_node

    path = ROOT / "models" / f"{name}.pt"
    sidecar = json.loads((ROOT / "models" / f"{name}.pt.json").read_text())
    assert sidecar["input"]["shape"] == [window, 8]
    windows = np.random.default_rng(0).standard_normal((5, window, 8)).astype(np.float32)
    params = {"input": {"shape": [window, 8]}, "output": {"shape": [1]}, "batched": True, "warmup": 1}
    out = run_node(TorchScriptModel, params=params, model=str(path), inputs=[("x", windows), ("x", windows[:0])])
    y, empty = out["y"]
    assert y.shape == (5, 1) and y.dtype == np.float32 and np.all(np.abs(y) <= 1)
    assert empty.shape == (0, 1)
    direct = torch.jit.load(str(path))(torch.from_numpy(windows)).detach().numpy()
    assert np.allclose(y, direct, atol=1e-5)
