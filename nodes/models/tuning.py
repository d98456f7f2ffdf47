"""The DMN models as ``dmnflow tune`` trainers: ``train: {uses: nodes.models.tuning:DMNTrainer}``.

A trainer is ``nodes.models.train``'s training, an epoch per ``step()``: a tune file can
retrain the LSTM (or the Transformer) in every trial with the trial's hidden size,
dropout, learning rate, window, turnover cost and trading delay, then backtest the exported model
through the graph (``model_key: vars.lstm_model``); or run population-based training of it
on Ray Tune (``pbt:``), each member checkpointed every few epochs and, when it lags,
continued from a better member's checkpoint with mutated settings (``load`` then the new
params). The exported model carries the provenance sidecar ``python -m nodes.models.train``
writes, plus the study that chose it. See docs/tune.md.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from dmnflow import Trainer

__all__ = ["DMNTrainer"]


class DMNTrainer(Trainer):
    """Trains a DMN model on one data set and period, an epoch per step."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        data: Literal["synthetic", "trendfollowing"] = Field("synthetic", description="where the closes come from")
        market_seed: int | None = Field(None, description="synthetic: the market's seed (default: the graph's, 7)")
        symbols: int | None = Field(None, ge=1, description="synthetic: assets (default: the graph's, 12)")
        days: int | None = Field(None, ge=100, description="synthetic: business days (default: the graph's, 2520)")
        train_start: str | None = Field(None, description="first date trained on (default: the first usable)")
        train_end: str = Field(description="training (with its validation tail) uses dates before this")
        model: Literal["lstm", "transformer"] = "lstm"
        window: int = Field(63, ge=2, description="steps per window (the graph's features: 63 and 126)")
        hidden: int = Field(64, ge=1)
        d_model: int = Field(32, ge=2)
        heads: int = Field(2, ge=1)
        layers: int = Field(1, ge=1, le=4)
        dropout: float = Field(0.2, ge=0, lt=1)
        lr: float = Field(1e-3, gt=0)
        batch: int = Field(64, ge=2)
        max_windows: int | None = Field(None, ge=1, description="windows drawn per epoch (none: all)")
        cost_bps: float = Field(0.0, ge=0, description="turnover regularisation in the loss")
        delay: int = Field(0, ge=0, le=5, description="days between the signal and its trade the loss scores "
                                                      "(1: the tradable convention, r_{t+2})")
        valid_fraction: float = Field(0.1, gt=0, lt=1)
        max_grad_norm: float = Field(1.0, gt=0)
        seed: int = 0
        threads: int = Field(1, ge=1)

    metrics = ("epoch", "train_loss", "valid_loss", "valid_sharpe", "best_valid_sharpe", "best_epoch")

    def __init__(self, params: Any, workdir: Path) -> None:
        super().__init__(params, workdir)
        from .data import build_panel
        from .train import load_closes

        p = params
        self.closes, self.source = load_closes(p.data, market_seed=p.market_seed, symbols=p.symbols, days=p.days,
                                               end=None if p.data == "synthetic" else p.train_end)
        self.panel = build_panel(self.closes)
        self.run = self._training(self.config_of(p))

    def config_of(self, p: Any) -> Any:
        from .train import TrainConfig

        fields = set(TrainConfig.model_fields) - {"epochs", "patience", "stride"}
        return TrainConfig(**{k: getattr(p, k) for k in fields if hasattr(p, k)}, epochs=10**6, patience=10**6)

    def _training(self, config: Any) -> Any:
        from .train import Training

        return Training(self.panel, config, self.params.train_start, self.params.train_end)

    def step(self) -> dict[str, float]:
        row = self.run.step()
        best = -self.run.best if math.isfinite(self.run.best) else math.nan
        return {"epoch": float(row["epoch"]), "train_loss": row["train_loss"], "valid_loss": row["valid_loss"],
                "valid_sharpe": -row["valid_loss"], "best_valid_sharpe": best, "best_epoch": float(self.run.best_epoch)}

    def save(self, directory: Path) -> None:
        import torch

        directory.mkdir(parents=True, exist_ok=True)
        torch.save(self.run.state(), directory / "training.pt")
        (directory / "params.json").write_text(self.params.model_dump_json())

    def load(self, directory: Path) -> None:
        """Continue from a checkpoint, under this trainer's own params (PBT: the donor's weights and
        optimiser, this member's mutated learning rate and dropout)."""
        import torch

        state = torch.load(directory / "training.pt", weights_only=False)
        donor = self.Params.model_validate_json((directory / "params.json").read_text())
        shape = ("model", "window", "hidden", "d_model", "heads", "layers")
        if any(getattr(donor, k) != getattr(self.params, k) for k in shape):
            raise ValueError(f"checkpoint of another network shape: {donor.model_dump(include=set(shape))}")
        self.run.load_state(state)
        self.run.retune(self.config_of(self.params))

    def export(self, path: Path) -> Path:
        from .nets import export_torchscript
        from .train import write_sidecar

        result = self.run.result()
        path.parent.mkdir(parents=True, exist_ok=True)
        export_torchscript(result.net, str(path))
        write_sidecar(path, result, self.source, self.panel, self.params.train_start, self.params.train_end, None,
                      f"dmnflow tune (nodes.models.tuning:DMNTrainer) {json.dumps(self.params.model_dump())}",
                      trainer_params=self.params.model_dump())
        return path
