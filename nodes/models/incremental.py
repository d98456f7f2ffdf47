"""``IncrementalModel``: the DMN networks on sliding windows, with tomorrow's work done today.

Why: the features node sends each model one window a day per symbol, the last ``L`` days of
the 8 features (63 for the LSTM, 126 for the Transformer). Tomorrow's window is today's
without its first row plus one new row, and both networks are causal: the LSTM reads its
window in order from a zero state, and the Transformer's last position attends, through a
causal mask, to rows that do not depend on later ones. So everything but the new row's
share can be computed as soon as today's window is in, off the critical path:

- **LSTM**: the state ``(h, c)`` after the ``L - 1`` known rows of tomorrow's window; when
  tomorrow's window comes, one LSTM step on its last row and the dense head. On the 2-vCPU
  VM of docs/performance.md that takes the 12-symbol LSTM from ~1.5 ms to ~0.1 ms at the
  moment the day closes, the 96-symbol one from ~11 ms to ~0.2 ms (in a loop; a paced graph
  sees 3-10x more on that VM, caches cold).
- **Transformer**: per layer, the keys and values of the ``L - 1`` known rows at their
  positions in tomorrow's window (the positional encoding moves with the window), and,
  below the last layer, their outputs; tomorrow, the new row's query attends to the cached
  keys and its own (a KV cache).

The result is the same function of the same window as the full forward pass of the model
file (``TorchScriptModel``), up to float rounding (the kernels sum in a different order:
differences of ~1e-7 on a position, tests/unit/test_models_incremental.py). Each window is
checked against the rows the cache was made from (an exact comparison): a symbol whose
history does not continue yesterday's (its first ready day, a day it missed, a different
window length) runs the full pass, so the output never depends on what came before it.

The precomputation runs in a thread of its own at the lowest CPU priority (``SCHED_IDLE``)
right after the day's output is emitted, so on a shared core it takes only the time the
critical path leaves idle; the next window waits for it if it is not done (a backtest
replaying flat out). Anything else runs as ``TorchScriptModel``: a model file of another
architecture, a GPU, another dtype, micro-batches, unbatched inputs, windows without
``attrs["symbols"]``; ``dmnflow swap`` works as there (a swapped-in model gets its own cache).
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
from pydantic import Field

from dmnflow.runners import TorchScriptModel

__all__ = ["IncrementalModel", "LSTMSteps", "TransformerSteps", "steps_for"]


def _idle_priority() -> None:
    """This thread runs only when its core has nothing else to run: ``SCHED_IDLE`` (a woken
    idle-class thread never preempts the critical path, whose wake-up preempts it at once;
    ``nice 19`` alone still takes up to a scheduler tick, ~4 ms, on waking), else nice 19."""
    tid = threading.get_native_id()
    try:
        os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
    except (OSError, AttributeError):
        with contextlib.suppress(OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, tid, 19)


class LSTMSteps:
    """The DMN LSTM (one LSTM layer, the dense head, tanh) split at the window's last row."""

    kind = "lstm"

    def __init__(self, sd: dict[str, Any]) -> None:
        import torch

        w_ih = sd["net.lstm.weight_ih_l0"]
        self.hidden = hidden = sd["net.lstm.weight_hh_l0"].shape[1]
        self.lstm = torch.nn.LSTM(w_ih.shape[1], hidden, num_layers=1, batch_first=True)
        self.lstm.load_state_dict({k.removeprefix("net.lstm."): v for k, v in sd.items() if k.startswith("net.lstm.")})
        self.lstm.eval()
        self.w_ih_t = w_ih.t().contiguous()
        self.w_hh_t = sd["net.lstm.weight_hh_l0"].t().contiguous()
        self.bias = sd["net.lstm.bias_ih_l0"] + sd["net.lstm.bias_hh_l0"]
        self.dense_w, self.dense_b = sd["net.dense.weight"], sd["net.dense.bias"]

    def prefix(self, rows: Any) -> tuple[Any, Any]:
        """``(k, L - 1, 8)``: the state ``(h, c)``, each ``(k, hidden)``, after tomorrow's known rows."""
        _, (h, c) = self.lstm(rows)
        return h[0], c[0]

    def last(self, state: tuple[Any, Any], x: Any) -> Any:
        """One LSTM step (PyTorch's gate order i, f, g, o) from ``state`` on the new rows
        ``(k, 8)``, then the head: ``(k, 1)``. A dozen small ops instead of a 1-step LSTM call,
        whose set-up costs ~4x more at these sizes."""
        import torch

        h, c = state
        gates = torch.addmm(torch.addmm(self.bias, x, self.w_ih_t), h, self.w_hh_t)
        i, f, g, o = gates.chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return torch.tanh(torch.nn.functional.linear(h, self.dense_w, self.dense_b))

    @staticmethod
    def take(state: tuple[Any, Any], sel: Any) -> tuple[Any, Any]:
        return state[0][sel], state[1][sel]


class TransformerSteps:
    """The Momentum Transformer (``nodes.models.nets``: pre-norm blocks, the last position's
    head) with a cache of keys and values."""

    kind = "transformer"

    def __init__(self, sd: dict[str, Any], heads: int) -> None:
        self.p = sd
        self.pe = sd["net.pe"]
        self.layers = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("net.blocks."))
        self.d = sd["net.project.weight"].shape[0]
        self.heads = heads
        self.hd = self.d // heads
        self.scale = 1.0 / math.sqrt(self.hd)

    def _norm(self, name: str, h: Any) -> Any:
        import torch.nn.functional as F  # noqa: N812

        return F.layer_norm(h, (self.d,), self.p[name + ".weight"], self.p[name + ".bias"])

    def _linear(self, name: str, h: Any) -> Any:
        import torch.nn.functional as F  # noqa: N812

        if name.endswith(".in_proj"):  # nn.MultiheadAttention's packed q, k, v projection
            return F.linear(h, self.p[name + "_weight"], self.p[name + "_bias"])
        return F.linear(h, self.p[name + ".weight"], self.p[name + ".bias"])

    def _ff(self, i: int, h: Any) -> Any:
        """The block's residual feed-forward part."""
        import torch.nn.functional as F  # noqa: N812

        b = f"net.blocks.{i}."
        return h + self._linear(b + "ff.3", F.gelu(self._linear(b + "ff.0", self._norm(b + "norm2", h))))

    def prefix(self, rows: Any) -> list[tuple[Any, Any]]:
        """``(k, n, 8)`` at positions ``0 .. n - 1`` (n = L - 1): per layer, the keys,
        transposed ``(k, heads, hd, n)``, and the values ``(k, heads, n, hd)`` of those rows;
        below the last layer their outputs (causal attention) feed the next layer."""
        import torch

        k, n = rows.shape[0], rows.shape[1]
        h = self._linear("net.project", rows) + self.pe[:n].unsqueeze(0)
        cache = []
        for i in range(self.layers):
            b = f"net.blocks.{i}."
            w = self._linear(b + "attn.in_proj", self._norm(b + "norm1", h))
            q, key, v = (t.view(k, n, self.heads, self.hd).transpose(1, 2) for t in w.chunk(3, dim=-1))
            cache.append((key.transpose(-2, -1).contiguous(), v.contiguous()))
            if i < self.layers - 1:
                s = torch.matmul(q, key.transpose(-2, -1)) * self.scale
                s = s + torch.triu(torch.full((n, n), float("-inf"), dtype=s.dtype), diagonal=1)
                a = torch.matmul(torch.softmax(s, dim=-1), v).transpose(1, 2).reshape(k, n, self.d)
                h = self._ff(i, h + self._linear(b + "attn.out_proj", a))
        return cache

    def last(self, cache: list[tuple[Any, Any]], x: Any) -> Any:
        """The new rows ``(k, 8)`` at position ``n`` attend to the cached rows and themselves: ``(k, 1)``."""
        import torch

        k, n = x.shape[0], cache[0][0].shape[-1]
        h = self._linear("net.project", x) + self.pe[n]
        for i in range(self.layers):
            b = f"net.blocks.{i}."
            q, key, v = self._linear(b + "attn.in_proj", self._norm(b + "norm1", h)).view(
                k, 3, self.heads, self.hd).unbind(1)
            keys_t, values = cache[i]
            s = torch.cat([torch.matmul(q.unsqueeze(2), keys_t).squeeze(2), (q * key).sum(-1, keepdim=True)], -1)
            w = torch.softmax(s * self.scale, dim=-1)
            a = torch.matmul(w[..., :n].unsqueeze(2), values).squeeze(2) + w[..., n:] * v
            h = self._ff(i, h + self._linear(b + "attn.out_proj", a.reshape(k, self.d)))
        return torch.tanh(self._linear("net.dense", self._norm("net.norm", h)))

    @staticmethod
    def take(cache: list[tuple[Any, Any]], sel: Any) -> list[tuple[Any, Any]]:
        return [(k[sel], v[sel]) for k, v in cache]


def steps_for(path: str) -> LSTMSteps | TransformerSteps | None:
    """The split network of a DMN model file (``nodes.models.nets``), or None for anything else."""
    import torch

    try:
        with warnings.catch_warnings():  # torch deprecates TorchScript; the runner serves it all the same
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(path, map_location="cpu")
    except Exception:
        return None
    sd = {k: v.detach().float() for k, v in module.state_dict().items()}
    if any(k.startswith("net.lstm.") for k in sd):
        if set(sd) != {"net.lstm.weight_ih_l0", "net.lstm.weight_hh_l0", "net.lstm.bias_ih_l0", "net.lstm.bias_hh_l0",
                       "net.dense.weight", "net.dense.bias"}:
            return None  # more layers, projections, no biases: not the DMN LSTM
        return LSTMSteps(sd)
    if "net.pe" in sd and any(k.startswith("net.blocks.") for k in sd):
        heads = _heads(module)
        return TransformerSteps(sd, heads) if heads else None
    return None


def _heads(module: Any) -> int | None:
    with contextlib.suppress(Exception):
        return int(getattr(module.net.blocks, "0").attn.num_heads)  # a scripted ModuleList: no [0]
    return None


class _Cache:
    """What today's window leaves for tomorrow: its symbols, its rows 1..L-1 (tomorrow's 0..L-2)
    and their state."""

    __slots__ = ("symbols", "index", "rows", "state", "steps")

    def __init__(self, symbols: list[str], rows: np.ndarray, state: Any, steps: Any) -> None:
        self.symbols, self.rows, self.state, self.steps = symbols, rows, state, steps
        self.index = {s: i for i, s in enumerate(symbols)}


class IncrementalModel(TorchScriptModel):
    """``TorchScriptModel`` for the DMN networks on daily windows, with tomorrow's work done today.

    Same ``model:`` block, params and ports as ``dmnflow.runners:TorchScriptModel`` (plus
    ``incremental``); see the module docstring for what is cached and when it is used.
    """

    class Params(TorchScriptModel.Params):
        incremental: bool = Field(True, description="cache the part of tomorrow's window known today (false: "
                                                    "the full pass every time, as TorchScriptModel)")

    def setup(self, ctx: Any) -> None:
        super().setup(ctx)
        self.future: Future[_Cache | None] | None = None
        self.pool: ThreadPoolExecutor | None = None
        self.counts = {"incremental_rows": 0, "full_rows": 0}
        self.steps_of: dict[str, Any] = {}  # model version -> its split network (None: not a DMN net)

    def summary(self) -> dict[str, Any]:
        """The runner's figures, and how many rows came from the cache and how many ran in full."""
        return {**super().summary(), **getattr(self, "counts", {})}

    def _steps(self) -> Any:
        model = self.active
        if model.version not in self.steps_of:
            ok = model.device.type == "cpu" and str(model.dtype) == "torch.float32" and not model.path.endswith(".pt2")
            self.steps_of[model.version] = steps_for(model.path) if ok else None
        return self.steps_of[model.version]

    def on_x(self, value: Any, ctx: Any) -> None:
        attrs = ctx.message.attrs
        symbols = attrs.get("symbols") if isinstance(attrs, dict) else None
        steps = None
        if ctx.params.incremental and ctx.params.batched and isinstance(value, np.ndarray) and value.ndim == 3 \
                and value.dtype == np.float32 and isinstance(symbols, list) and len(symbols) == value.shape[0] \
                and value.shape[1] >= 2:
            steps = self._steps()
        if steps is None:
            self._drop_cache()
            super().on_x(value, ctx)
            return
        cache = self.future.result() if self.future is not None else None
        self.future = None
        out = self._run(steps, cache, value, symbols)
        model = self.active
        ctx.emit("y", out, topic=self._topic(ctx.message.topic), attrs={**attrs, "model_version": model.version})
        if value.shape[0]:
            self.last_shape = tuple(value.shape)
        if self.pool is None:
            self.pool = ThreadPoolExecutor(1, thread_name_prefix="dmnflow-prefix", initializer=_idle_priority)
        self.future = self.pool.submit(self._prefix, steps, value, symbols)

    def _run(self, steps: Any, cache: _Cache | None, x: np.ndarray, symbols: list[str]) -> np.ndarray:
        import torch

        k = x.shape[0]
        if not k:
            return np.zeros((0, 1), np.float32)
        hit = np.zeros(k, bool)
        src = np.zeros(k, np.int64)
        if cache is not None and cache.steps is steps and cache.rows.shape[1] == x.shape[1] - 1:
            if symbols == cache.symbols:  # yesterday's symbols again (the usual day): no lookup per symbol
                hit[:] = True
                src[:] = np.arange(k)
            else:
                index = cache.index
                src[:] = np.fromiter((index.get(s, -1) for s in symbols), np.int64, k)
                hit[:] = src >= 0
                src[~hit] = 0
            if hit.any():
                rows = np.flatnonzero(hit)
                same = (x[rows, :-1] == cache.rows[src[rows]]).all(axis=(1, 2))
                hit[rows[~same]] = False
        out = np.empty((k, 1), np.float32)
        with torch.inference_mode():
            if hit.all() and src.shape[0] == cache.rows.shape[0] and (src == np.arange(k)).all():  # type: ignore
                out[:] = steps.last(cache.state, torch.from_numpy(x[:, -1])).numpy()  # yesterday's symbols
            elif hit.any():
                sel = np.flatnonzero(hit)
                state = steps.take(cache.state, torch.from_numpy(src[sel]))  # type: ignore[union-attr]
                out[sel] = steps.last(state, torch.from_numpy(x[sel, -1])).numpy()
            if not hit.all():  # the model file itself, as TorchScriptModel runs it
                sel = np.flatnonzero(~hit)
                out[sel] = self.active.module(torch.from_numpy(x[sel])).numpy()
        n = int(hit.sum())
        self.counts["incremental_rows"] += n
        self.counts["full_rows"] += k - n
        return out

    def _prefix(self, steps: Any, x: np.ndarray, symbols: list[str]) -> _Cache | None:
        """Tomorrow's known rows of today's window: rows 1..L-1 at positions 0..L-2."""
        import torch

        if not x.shape[0]:
            return None
        rows = np.ascontiguousarray(x[:, 1:])  # a copy: the message's array may go back to its sender
        with torch.inference_mode():
            state = steps.prefix(torch.from_numpy(rows))
        return _Cache(list(symbols), rows, state, steps)

    def _drop_cache(self) -> None:
        if self.future is not None:
            with contextlib.suppress(Exception):
                self.future.result()
            self.future = None

    def teardown(self, ctx: Any) -> None:
        self._drop_cache()
        if self.pool is not None:
            self.pool.shutdown(wait=True)
        super().teardown(ctx)
