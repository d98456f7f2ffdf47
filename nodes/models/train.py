"""Train a DMN model with the Sharpe loss and export it as TorchScript: ``python -m nodes.models.train``.

What it does, in order: load daily closes (the synthetic market, the ``trendfollowing``
futures or a CSV), compute the reference features (:mod:`nodes.models.data`), cut the
training period into windows, hold out its last 10% (by date) for early stopping, train
with Adam on minus the annualised Sharpe ratio of ``X_t * 0.15 / sigma_t * r_{t+1+delay}``
over each batch (``--delay``: days between the signal and its trade; optionally minus a
turnover cost), keep the weights of the best validation epoch, export ``LastPosition(net)``
to ``--out`` with a JSON sidecar (``<out>.json``) of where it came from, and, given
``--test-end``, score it out of sample against the baselines.

Determinism: one seed drives numpy and torch; torch runs single-threaded (``--threads``)
with deterministic algorithms, batches are shuffled by a seeded generator, and the best
weights are copied, not re-trained; the same command gives the same weights bit for bit on
the same machine (another CPU or torch build gives the figures to two decimals or better,
not the same weights: docs/dmn/models.md, "Determinism").

Example (the shipped LSTM; docs/dmn/models.md lists the exact commands)::

    python -m nodes.models.train --data synthetic --model lstm --train-end 2007-01-01 --out models/dmn_lstm.pt
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from .data import VOL_TARGET, Panel, Sequences, build_panel, make_sequences

__all__ = ["FitResult", "TrainConfig", "Training", "closes_fingerprint", "fit", "load_closes", "main",
           "seed_everything", "sharpe_loss", "weights_fingerprint", "write_sidecar"]

TRADING_DAYS = 252


class TrainConfig(BaseModel):
    """Everything that decides the trained weights (with the data): stored in the sidecar."""

    model_config = ConfigDict(extra="forbid")
    model: Literal["lstm", "transformer"] = Field("lstm", description="the network: DMN LSTM or Momentum Transformer")
    window: int = Field(63, ge=2, description="steps per training window")
    stride: int | None = Field(None, ge=1, description="rows between consecutive windows; none: the window "
                                                       "(non-overlapping, as in the paper)")
    hidden: int = Field(64, ge=1, description="LSTM hidden units")
    d_model: int = Field(32, ge=2, description="Transformer width")
    heads: int = Field(2, ge=1, description="Transformer attention heads")
    layers: int = Field(1, ge=1, le=4, description="Transformer blocks")
    dropout: float = Field(0.2, ge=0, lt=1, description="dropout rate")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate")
    batch: int = Field(64, ge=1, description="windows per batch: the Sharpe ratio of the loss is over one batch")
    epochs: int = Field(30, ge=1, description="most epochs")
    max_windows: int | None = Field(None, ge=1, description="windows drawn (seeded, without replacement) per "
                                                            "epoch when the training set is larger; none: all")
    patience: int = Field(8, ge=1, description="stop after this many epochs without a better validation loss")
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping (global L2 norm)")
    cost_bps: float = Field(0.0, ge=0, description="turnover regularisation: c in bps of c*0.15*|d(X/sigma)|")
    delay: int = Field(0, ge=0, le=5, description="days between the signal (close t) and its trade: the loss "
                                                  "scores X_t on r_{t+1+delay}, the return a trader acting "
                                                  "after the close can take (1: the tradable convention)")
    valid_fraction: float = Field(0.1, gt=0, lt=1, description="the last share of the training period, by "
                                                                "date, held out for early stopping")
    seed: int = Field(0, description="seed of numpy and torch: initial weights, dropout, batch order")
    threads: int = Field(1, ge=1, description="torch threads (1: the same weights bit for bit on the same machine)")


def seed_everything(seed: int, threads: int = 1) -> None:
    """Seed numpy and torch, pin torch's thread count, and ask for deterministic kernels."""
    import torch

    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)


def sharpe_loss(positions: Any, target: Any, sigma: Any = None, cost: float = 0.0, mask: Any = None,
                eps: float = 1e-9) -> Any:
    """Minus the annualised Sharpe ratio of the captured returns over every step of the batch.

    ``positions`` and ``target`` are (batch, steps): ``target = r_{t+1} * 0.15 / sigma_t``, so
    ``positions * target`` is the paper's vol-scaled strategy return. With ``cost`` (a
    fraction, e.g. 2e-4 for 2 bps) each step after a window's first pays
    ``cost * 0.15 * |X_t / sigma_t - X_{t-1} / sigma_{t-1}|`` (``sigma`` annualised, (batch, steps)).
    ``mask`` (bool, (batch, steps)) keeps only some steps in the ratio. As in the paper's code
    the standard deviation is the population one, ``sqrt(E[R^2] - E[R]^2 + eps)``.
    """
    import torch

    captured = positions * target
    if cost:
        lev = positions / sigma
        turnover = torch.abs(lev[:, 1:] - lev[:, :-1])
        captured = torch.cat([captured[:, :1], captured[:, 1:] - cost * VOL_TARGET * turnover], dim=1)
    if mask is not None:
        captured = captured[mask]
    mean = captured.mean()
    var = (captured * captured).mean() - mean * mean
    return -(mean / torch.sqrt(var + eps)) * math.sqrt(TRADING_DAYS)


@dataclass
class FitResult:
    """A trained network and how training went."""

    net: Any
    config: TrainConfig
    best_epoch: int
    epochs_run: int
    valid_sharpe: float
    train_sharpe: float
    train_windows: int
    valid_windows: int
    valid_from: str
    history: list[dict[str, float]] = field(default_factory=list)


def _validation_split(panel: Panel, start: Any, end: Any, fraction: float) -> Any:
    """The first date of the validation part: the last ``fraction`` of the training period,
    counted from its first usable row (warm-up rows are not part of the period)."""
    import pandas as pd

    dates = panel.dates
    usable = panel.valid().any(axis=1)
    if start is not None:
        usable &= dates >= pd.Timestamp(start)
    if end is not None:
        usable &= dates < pd.Timestamp(end)
    rows = np.flatnonzero(usable)
    if rows.size < 2:
        raise ValueError(f"no usable training rows between {start} and {end}")
    first, last = dates[rows[0]], dates[rows[-1]]
    return first + (last - first) * (1.0 - fraction)


def _validation_sequences(panel: Panel, split: Any, end: Any, window: int, delay: int = 0
                          ) -> tuple[Sequences, np.ndarray]:
    """Non-overlapping windows ending in ``[split, end)``, which may start before ``split`` (so a
    short validation period still fills long windows), with a mask scoring only its steps:
    each validation day is scored once, and no training day is."""
    import pandas as pd

    seq = make_sequences(panel, None, end, window, window, delay)
    mask = seq.dates >= np.datetime64(pd.Timestamp(split), "ns")
    keep = mask.any(axis=1)
    return seq.select(keep), mask[keep]


def _score(net: Any, x: Any, target: Any, sigma: Any, cost: float, mask: Any = None, chunk: int = 128) -> float:
    """The loss over all of ``x`` at once (one Sharpe ratio), the positions computed in chunks
    (a long window's attention over thousands of windows would not fit in memory at once)."""
    import torch

    net.eval()
    with torch.no_grad():
        pos = torch.cat([net(x[a:a + chunk]) for a in range(0, len(x), chunk)])
        return float(sharpe_loss(pos, target, sigma, cost, mask))


class Training:
    """One training run, an epoch at a time: what ``fit`` loops over, and what a tuner steps,
    checkpoints and (population-based training) hands to another member with new settings.

    Built on ``[start, end)`` with early stopping on its last ``valid_fraction`` (by date);
    the best epoch's weights are kept (``best_state``).
    """

    def __init__(self, panel: Panel, config: TrainConfig, start: Any = None, end: Any = None) -> None:
        import torch

        from .nets import build_model

        self.config = config
        seed_everything(config.seed, config.threads)
        self.split = _validation_split(panel, start, end, config.valid_fraction)
        self.train = make_sequences(panel, start, self.split, config.window, config.stride, config.delay)
        valid, vmask = _validation_sequences(panel, self.split, end, config.window, config.delay)
        if not len(self.train) or not len(valid):
            raise ValueError(f"not enough data: {len(self.train)} training and {len(valid)} validation windows of "
                             f"{config.window} days between {start} and {end} (split {self.split.date()})")
        self.valid_windows = len(valid)
        self.net = build_model(config.model, hidden=config.hidden, dropout=config.dropout, d_model=config.d_model,
                               heads=config.heads, layers=config.layers, window=config.window)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=config.lr)
        self.gen = torch.Generator().manual_seed(config.seed)
        self.tx, self.tt, self.ts = (torch.from_numpy(a) for a in (self.train.x, self.train.target, self.train.sigma))
        self.vx, self.vt, self.vs = (torch.from_numpy(a) for a in (valid.x, valid.target, valid.sigma))
        self.vm = torch.from_numpy(vmask)
        self.best, self.best_state, self.best_epoch, self.bad = math.inf, copy.deepcopy(self.net.state_dict()), 0, 0
        self.history: list[dict[str, float]] = []
        self.epoch = 0

    @property
    def cost(self) -> float:
        return self.config.cost_bps * 1e-4

    @property
    def stalled(self) -> bool:
        """``patience`` epochs in a row without a better validation loss."""
        return self.bad >= self.config.patience

    def step(self) -> dict[str, float]:
        """Train one epoch; its losses (minus Sharpe ratios) in the history."""
        import torch

        config = self.config
        self.epoch += 1
        self.net.train()
        order = torch.randperm(len(self.train), generator=self.gen)
        if config.max_windows is not None:
            order = order[:config.max_windows]
        losses = []
        for a in range(0, len(order), config.batch):
            idx = order[a:a + config.batch]
            if idx.numel() < 2:
                continue
            loss = sharpe_loss(self.net(self.tx[idx]), self.tt[idx], self.ts[idx], self.cost)
            self.opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), config.max_grad_norm)
            self.opt.step()
            losses.append(float(loss.detach()))
        vloss = _score(self.net, self.vx, self.vt, self.vs, self.cost, self.vm)
        row = {"epoch": self.epoch, "train_loss": float(np.mean(losses)), "valid_loss": vloss}
        self.history.append(row)
        if vloss < self.best - 1e-6:
            self.best, self.best_state, self.best_epoch, self.bad = vloss, copy.deepcopy(self.net.state_dict()), \
                self.epoch, 0
        else:
            self.bad += 1
        return row

    def retune(self, config: TrainConfig) -> None:
        """Go on under new settings (PBT's explore): learning rate, dropout, cost, batch, clipping."""
        for group in self.opt.param_groups:
            group["lr"] = config.lr
        for module in self.net.modules():
            if type(module).__name__ == "Dropout":
                module.p = config.dropout
        self.config = config

    def state(self) -> dict[str, Any]:
        """Everything to continue from here (a checkpoint)."""
        return {"net": self.net.state_dict(), "opt": self.opt.state_dict(), "gen": self.gen.get_state(),
                "best": self.best, "best_state": self.best_state, "best_epoch": self.best_epoch, "bad": self.bad,
                "epoch": self.epoch, "history": self.history}

    def load_state(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.opt.load_state_dict(state["opt"])
        self.gen.set_state(state["gen"])
        self.best, self.best_state, self.best_epoch = state["best"], state["best_state"], state["best_epoch"]
        self.bad, self.epoch, self.history = state["bad"], state["epoch"], list(state["history"])

    def result(self) -> FitResult:
        """The best epoch's network, and how training went."""
        import torch

        self.net.load_state_dict(self.best_state)
        n = len(self.train)
        sample = torch.from_numpy(np.unique(np.linspace(0, n - 1, min(n, 4096)).astype(np.int64)))
        # up to 4096 windows, evenly spread
        train_sharpe = -_score(self.net, self.tx[sample], self.tt[sample], self.ts[sample], self.cost)
        return FitResult(net=self.net, config=self.config, best_epoch=self.best_epoch, epochs_run=self.epoch,
                         valid_sharpe=-self.best, train_sharpe=train_sharpe, train_windows=n,
                         valid_windows=self.valid_windows, valid_from=str(self.split.date()), history=self.history)


def fit(panel: Panel, config: TrainConfig, start: Any = None, end: Any = None, log: Any = None) -> FitResult:
    """Train ``config.model`` on the windows of ``[start, end)`` with early stopping on its last
    ``valid_fraction`` (by date); the best epoch's weights are kept."""
    say = log or (lambda *_: None)
    run = Training(panel, config, start, end)
    for _ in range(config.epochs):
        row = run.step()
        say(f"epoch {row['epoch']:3d}  train Sharpe {-row['train_loss']:6.3f}  valid Sharpe {-row['valid_loss']:6.3f}")
        if run.stalled:
            break
    return run.result()


# ---------------------------------------------------------------------- data sources and the command line


def load_closes(source: str, *, market_seed: int | None = None, symbols: Any = None, days: int | None = None,
                start: str | None = None, end: str | None = None, csv: str | None = None,
                groups: list[str] | None = None) -> tuple[Any, dict[str, Any]]:
    """Daily closes (wide DataFrame) from ``synthetic``, ``trendfollowing`` or ``csv``, and a
    description of exactly which data it is (for the sidecar)."""
    import pandas as pd

    if source == "synthetic":
        from nodes.market.synthetic import Synthetic, synthetic_closes

        defaults = Synthetic.Params()  # the graph's embedded market, unless told otherwise
        seed = defaults.seed if market_seed is None else market_seed
        n = defaults.symbols if symbols is None else symbols
        first = start or defaults.start
        count = days or defaults.days
        closes = synthetic_closes(seed=seed, symbols=n, start=first, days=count)
        return closes, {"source": "synthetic", "seed": seed, "symbols": n, "start": first, "days": count,
                        "process": defaults.process.model_dump(), "closes_sha256": closes_fingerprint(closes)}
    if source == "trendfollowing":
        from nodes.market.trendfollowing import load_trendfollowing

        closes = load_trendfollowing(start, end, symbols or None, groups or None)
        import importlib.metadata

        return closes, {"source": "trendfollowing", "version": importlib.metadata.version("trendfollowing"),
                        "start": start, "end": end, "symbols": symbols, "groups": groups,
                        "closes_sha256": closes_fingerprint(closes)}
    if source == "csv":
        if not csv:
            raise ValueError("--data csv needs --csv PATH (a wide file: a date column, then one column per symbol)")
        closes = pd.read_csv(csv, index_col=0)
        closes.index = pd.DatetimeIndex(pd.to_datetime(closes.index), name="date")
        closes = closes.sort_index().loc[start:end]
        if symbols:
            closes = closes[list(symbols)]
        return closes, {"source": "csv", "path": str(csv), "sha256": _sha256(csv), "start": start, "end": end,
                        "symbols": symbols}
    raise ValueError(f"unknown data source {source!r}: synthetic, trendfollowing or csv")


def closes_fingerprint(closes: Any) -> str:
    """SHA-256 of the closes (values, dates and symbols): the same data gives the same digest."""
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(closes.to_numpy(np.float64)).tobytes())
    digest.update(closes.index.to_numpy("datetime64[ns]").astype(np.int64).tobytes())
    digest.update("\x00".join(map(str, closes.columns)).encode())
    return digest.hexdigest()


def weights_fingerprint(module: Any) -> str:
    """SHA-256 of a module's parameters and buffers (names, dtypes, shapes, bytes), in order.

    A TorchScript file is never byte-identical across saves (its archive carries a random
    serialization id), so reproducibility is checked on this digest instead.
    """
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.numpy().tobytes())
    return digest.hexdigest()


def _sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def git_commit() -> str | None:
    """The repository's HEAD commit, with ``+dirty`` when ``nodes/models`` (the training code) has
    uncommitted or untracked changes; None outside a git checkout."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "nodes/models"],
                               cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def out_of_sample(result: FitResult, panel: Panel, start: Any, end: Any, cost_bps: float = 0.0
                  ) -> dict[str, dict[str, float]]:
    """The model and the baselines (long-only, TSMOM, MACD) on ``[start, end)``: figures at 15% vol."""
    import pandas as pd

    from .evaluate import figures, predict_positions, strategy_returns, turnover

    model = predict_positions(result.net, panel, result.config.window, start, end)
    dates = panel.dates
    in_range = (dates >= pd.Timestamp(start)) & ((dates < pd.Timestamp(end)) if end is not None else True)
    on = np.isfinite(model)  # the same asset-days for every strategy
    base = {"long_only": np.where(on, 1.0, np.nan), "tsmom": np.where(on, panel.tsmom, np.nan),
            "macd": np.where(on, panel.macd, np.nan), result.config.model: model}
    out = {}
    for name, pos in base.items():
        pos = np.where(in_range[:, None], pos, np.nan)
        r, turn = strategy_returns(panel, pos, cost_bps)[in_range], turnover(panel, pos)[in_range].mean()
        out[name] = {k: round(v, 4) for k, v in figures(r).items()}
        out[name]["turnover"] = round(float(turn * 252), 2)  # per year, in units of 0.15 * |d(X/sigma)|
        out[name]["break_even_bps"] = round(float(r.mean() / turn * 1e4), 2) if turn > 0 else math.nan
    return out


class _Defaults(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default where it has one; an option whose default depends on others
    (``None`` here) says so in its own help."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def write_sidecar(out: Path, result: FitResult, source: dict[str, Any], panel: Panel, train_start: Any,
                  train_end: Any, test: dict[str, Any] | None, command: str, **more: Any) -> Path:
    """The model file's provenance, ``<out>.json``: data, dates, config, figures, digests, commit, command."""
    import torch

    config = result.config
    sidecar = {
        "file": out.name, "sha256": _sha256(out), "weights_sha256": weights_fingerprint(result.net),
        "model": config.model,
        "input": {"shape": [config.window, 8], "dtype": "float32"}, "output": {"shape": [1]},
        "data": source, "train": {"start": train_start or str(panel.dates[panel.valid().any(axis=1)][0].date()),
                                  "end": train_end, "valid_from": result.valid_from},
        "config": config.model_dump(), "epochs_run": result.epochs_run, "best_epoch": result.best_epoch,
        "train_sharpe": round(result.train_sharpe, 6), "valid_sharpe": round(result.valid_sharpe, 6),
        "train_windows": result.train_windows, "valid_windows": result.valid_windows,
        "out_of_sample": test, "git_commit": git_commit(), "torch": torch.__version__, "command": command, **more,
    }
    path = Path(str(out) + ".json")
    path.write_text(json.dumps(sidecar, indent=2) + "\n")
    return path


def _parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m nodes.models.train", formatter_class=_Defaults,
                                 description=__doc__.split("\n\n")[0].replace("``", ""))
    ap.add_argument("--data", choices=["synthetic", "trendfollowing", "csv"], default="synthetic",
                    help="where the daily closes come from")
    ap.add_argument("--csv", help="with --data csv: a wide CSV (date column, one column of closes per symbol)")
    ap.add_argument("--market-seed", type=int, help="synthetic: the market's seed (default: the graph's, 7)")
    ap.add_argument("--symbols", help="synthetic: a number of assets; otherwise comma-separated tickers")
    ap.add_argument("--groups", help="trendfollowing: comma-separated asset classes")
    ap.add_argument("--days", type=int, help="synthetic: business days generated (default: the graph's, 2520)")
    ap.add_argument("--data-start", help="first date of the data (synthetic: its first day)")
    ap.add_argument("--train-start", help="first date trained on (default: the first usable one)")
    ap.add_argument("--train-end", required=True, help="training (with its validation tail) uses dates before this")
    ap.add_argument("--test-end", help="score out of sample on [train-end, test-end) (default: to the data's end)")
    ap.add_argument("--no-test", action="store_true", help="skip the out-of-sample scoring")
    ap.add_argument("--model", choices=["lstm", "transformer"], default="lstm",
                    help="the network: the DMN LSTM or the Momentum Transformer")
    ap.add_argument("--out", required=True, help="TorchScript file to write (a JSON sidecar goes next to it)")
    for name, spec in TrainConfig.model_fields.items():
        if name == "model":
            continue
        flag = "--" + name.replace("_", "-")
        kind = int if spec.annotation in (int, int | None) else float
        # None: "not given", so TrainConfig's own default applies (and --window's depends on --model)
        default = "none" if spec.default is None else f"{spec.default:g}" if kind is float else spec.default
        shown = "63; 126 with --model transformer" if name == "window" else default
        ap.add_argument(flag, type=kind, default=None, help=f"{spec.description} (default: {shown})")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """The command line: train, export, write the sidecar, print the figures."""
    args = _parse(argv)
    overrides = {k: getattr(args, k) for k in TrainConfig.model_fields if k != "model"
                 and getattr(args, k, None) is not None}
    if args.model == "transformer" and args.window is None:
        overrides["window"] = 126  # the graph's long windows (graphs/dmn_trading.yaml)
    config = TrainConfig(model=args.model, **overrides)
    symbols: Any = args.symbols
    if symbols is not None:
        symbols = int(symbols) if symbols.isdigit() else [s.strip() for s in symbols.split(",") if s.strip()]
    groups = [g.strip() for g in args.groups.split(",")] if args.groups else None
    began = time.perf_counter()
    closes, source = load_closes(args.data, market_seed=args.market_seed, symbols=symbols, days=args.days,
                                 start=args.data_start, end=None if args.data == "synthetic" else args.test_end,
                                 csv=args.csv, groups=groups)
    panel = build_panel(closes)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    log(f"{source['source']}: {closes.shape[1]} assets, {closes.index[0].date()} .. {closes.index[-1].date()}")
    result = fit(panel, config, args.train_start, args.train_end, log=log)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from .nets import export_torchscript

    export_torchscript(result.net, str(out))
    test = None
    if not args.no_test:
        test = {"start": args.train_end, "end": args.test_end or str(closes.index[-1].date()),
                "vol_target": VOL_TARGET, "cost_bps": 0.0,
                "figures": out_of_sample(result, panel, args.train_end, args.test_end)}
    write_sidecar(out, result, source, panel, args.train_start, args.train_end, test,
                  "python -m nodes.models.train " + " ".join(sys.argv[1:] if argv is None else argv))
    log(f"best epoch {result.best_epoch}/{result.epochs_run}: valid Sharpe {result.valid_sharpe:.3f}; "
        f"wrote {out} ({out.stat().st_size} bytes) in {time.perf_counter() - began:.1f}s")
    if test:
        log(f"out of sample {test['start']} .. {test['end']} (15% vol, no costs):")
        for name, f in test["figures"].items():
            log(f"  {name:11s} Sharpe {f['sharpe']:6.3f}  Sortino {f['sortino']:6.3f}  Calmar {f['calmar']:6.3f}  "
                f"MDD {f['mdd']:6.3f}  turnover/yr {f['turnover']:6.1f}  break-even {f['break_even_bps']:6.1f} bps")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
