"""The DMN networks: the paper's LSTM and a small Momentum Transformer, plus their inference heads.

Both networks are *time-distributed*: on a window ``(batch, steps, 8)`` of the DMN features
they return one position in ``[-1, 1]`` per step, ``(batch, steps)``. Training uses every
step (the Sharpe loss is taken over all of them, as in Lim et al. 2019), which gives many
more returns per sequence than the last step alone. Serving needs only today's position,
so :class:`LastPosition` wraps a trained network into the module that is exported: its
forward returns the last step's position, ``(batch, 1)``, which is what the model runner
(``dmnflow.runners:TorchScriptModel``, ``batched: true``) emits as a Predictions message.

Everything here is scriptable with ``torch.jit.script`` (tested), so the shipped files are
plain TorchScript with no Python code behind them.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["DMNLSTM", "LastPosition", "MomentumTransformer", "build_model", "export_torchscript"]

N_FEATURES = 8


class DMNLSTM(nn.Module):
    """One LSTM layer over the window, dropout, then a time-distributed ``dense(1, tanh)``.

    Why this shape: it is the paper's best model (63-step windows, one layer); dropout sits
    on the inputs and on the LSTM's outputs (Keras' ``dropout`` on the inputs is what the
    paper's code used; the output dropout regularises the dense head).
    """

    def __init__(self, n_features: int = N_FEATURES, hidden: int = 64, dropout: float = 0.2) -> None:
        super().__init__()
        self.input_dropout = nn.Dropout(dropout)
        self.lstm = nn.LSTM(n_features, hidden, num_layers=1, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.dense = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, steps, features)`` -> positions ``(batch, steps)``."""
        h, _ = self.lstm(self.input_dropout(x))
        return torch.tanh(self.dense(self.dropout(h))).squeeze(-1)

    @torch.jit.export
    def forward_last(self, x: torch.Tensor) -> torch.Tensor:
        """The last step's position, ``(batch, 1)`` (the recurrence needs every step anyway)."""
        return self.forward(x)[:, -1:]


class _Block(nn.Module):
    """A pre-norm Transformer block (attention, then a feed-forward layer, both residual).

    Written out rather than taken from ``nn.TransformerEncoderLayer`` so that serving can ask
    for the last step only: its query alone attends to every key, which is the same number
    as the full pass's last row and ~W times cheaper for the last layer.
    """

    def __init__(self, d_model: int, heads: int, ff: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = nn.MultiheadAttention(d_model, heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(d_model)
        self.ff = nn.Sequential(nn.Linear(d_model, ff), nn.GELU(), nn.Dropout(dropout), nn.Linear(ff, d_model))
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, mask: torch.Tensor, last_only: bool) -> torch.Tensor:
        y = self.norm1(h)
        if last_only:
            q, m, h = y[:, -1:], mask[-1:], h[:, -1:]
        else:
            q, m = y, mask
        a, _ = self.attn(q, y, y, attn_mask=m, need_weights=False)
        h = h + self.dropout(a)
        return h + self.dropout(self.ff(self.norm2(h)))


class MomentumTransformer(nn.Module):
    """A small decoder-only Transformer: causal self-attention over a long window (126/252 days).

    Why: attention can look back to any day of the window (a regime's start, say) instead
    of carrying it through a recurrent state, as in Wood et al. (2021), without their
    variable-selection and LSTM-encoder parts. Small on purpose (``d_model`` 32, 2 heads,
    1-2 layers): the training sets are a few thousand sequences. A causal mask makes the
    output at step ``t`` depend on steps ``<= t`` only, so every step of a training window
    is a legitimate, look-ahead-free position; sinusoidal positional encodings (fixed, not
    learnt) tell the layers how far into the window a day is.
    """

    def __init__(self, n_features: int = N_FEATURES, d_model: int = 32, heads: int = 2, layers: int = 1,
                 ff: int = 64, dropout: float = 0.2, max_len: int = 512) -> None:
        super().__init__()
        self.max_len = max_len
        self.project = nn.Linear(n_features, d_model)
        self.blocks = nn.ModuleList([_Block(d_model, heads, ff, dropout) for _ in range(layers)])
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.dense = nn.Linear(d_model, 1)
        self.register_buffer("pe", _positional_encoding(max_len, d_model), persistent=False)

    def _run(self, x: torch.Tensor, last_only: bool) -> torch.Tensor:
        steps = x.size(1)
        mask = torch.triu(torch.full((steps, steps), float("-inf"), dtype=x.dtype, device=x.device), diagonal=1)
        h = self.dropout(self.project(x) + self.pe[:steps].unsqueeze(0))
        n = len(self.blocks)
        for i, block in enumerate(self.blocks):
            h = block(h, mask, last_only and i == n - 1)
        return torch.tanh(self.dense(self.dropout(self.norm(h)))).squeeze(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, steps, features)`` -> positions ``(batch, steps)``; ``steps <= max_len``."""
        return self._run(x, False)

    @torch.jit.export
    def forward_last(self, x: torch.Tensor) -> torch.Tensor:
        """The last step's position only, ``(batch, 1)``: the full pass's last column, cheaper."""
        return self._run(x, True)


def _positional_encoding(length: int, d_model: int) -> torch.Tensor:
    """The sinusoidal encodings of Vaswani et al.: ``(length, d_model)``."""
    pos = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    div = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    pe = torch.zeros(length, d_model)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)
    return pe


class LastPosition(nn.Module):
    """Serving head: today's position only, ``(batch, steps, 8)`` -> ``(batch, 1)``.

    An empty cross-section (no symbol warmed up yet, ``batch`` 0) answers ``(0, 1)`` without
    running the network, so a graph may forward empty windows safely.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.size(0) == 0:
            return torch.zeros(0, 1, dtype=x.dtype, device=x.device)
        return self.net.forward_last(x)


def build_model(kind: str, hidden: int = 64, dropout: float = 0.2, d_model: int = 32, heads: int = 2,
                layers: int = 1, window: int = 63) -> nn.Module:
    """The network named ``kind`` (``lstm`` or ``transformer``) with its size parameters."""
    if kind == "lstm":
        return DMNLSTM(N_FEATURES, hidden=hidden, dropout=dropout)
    if kind == "transformer":
        return MomentumTransformer(N_FEATURES, d_model=d_model, heads=heads, layers=layers, ff=2 * d_model,
                                   dropout=dropout, max_len=max(window, 1))
    raise ValueError(f"unknown model {kind!r}: lstm or transformer")


def export_torchscript(net: nn.Module, path: str) -> torch.jit.ScriptModule:
    """Script ``LastPosition(net)`` in eval mode and save it to ``path`` (what the runner loads)."""
    net.eval()
    scripted = torch.jit.script(LastPosition(net))
    scripted.save(path)
    return scripted
