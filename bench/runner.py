"""The model runner's cost: per message versus calling the scripted model directly, and what
micro-batching buys at offered rates from 1k to 50k msg/s.

    python bench/runner.py            # both parts, the DMN-sized LSTM (8 features, 63 steps, hidden 64)
    python bench/runner.py --quick    # fewer messages

Part 1 runs in one process: the same TorchScript file, the same inputs, timed (a) as a plain
loop ``model(x)`` under ``torch.inference_mode()`` and (b) through the runner node's
handler (``TorchScriptModel.on_x``: input conversion, forward, output split, emit). Their
ratio is the runner's overhead; the target is <= 1.1 at batch 1.

Part 2 runs real graphs (a paced source -> the runner -> a sink, block policy) at offered
rates, with the input unbatched and with ``batch: {max: 64, wait: 200us}``: achieved
throughput and end-to-end p50/p99 latency from the launch report.

Ratios, not absolute times, are what compare across machines; the machine is noisy, so
each timing is the median of several repeats.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import textwrap
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FEATURES, STEPS, HIDDEN = 8, 63, 64


def make_model(path: Path) -> None:
    import torch

    class DMNLSTM(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = torch.nn.LSTM(FEATURES, HIDDEN, batch_first=True)
            self.head = torch.nn.Linear(HIDDEN, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out, _ = self.lstm(x)
            return torch.tanh(self.head(out[:, -1]))

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(DMNLSTM().eval()).save(str(path))


class _Ctx:
    """The parts of the runtime's Context the runner's handler touches, emit made free."""

    def __init__(self, params: Any, model: Any) -> None:
        import logging

        from dmnflow.node import Message

        self.params, self.model = params, model
        self.log = logging.getLogger("bench")
        self.message = Message(port="x", topic="x")
        self.batch: list[Any] = []
        self.sent = 0

    def emit(self, port: str, value: Any, **_: Any) -> None:
        self.sent += 1


def in_process(path: Path, batch: int, n: int, repeats: int) -> dict[str, float]:
    """Seconds per message: the direct loop and the runner's handler, same model, same inputs."""
    import torch

    from dmnflow.node import Message
    from dmnflow.plan import ModelPlan
    from dmnflow.runners import TorchScriptModel
    from dmnflow.runners.torchscript import load_model

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((n, batch, STEPS, FEATURES)).astype(np.float32)
    loaded = load_model(path, "cpu", "float32")  # what the runner runs: frozen, optimized
    module = loaded.module

    def direct() -> float:
        t0 = time.perf_counter()
        with torch.inference_mode():
            for x in xs:
                module(torch.from_numpy(x)).numpy()
        return (time.perf_counter() - t0) / n

    params = TorchScriptModel.Params.model_validate(
        {"input": {"shape": [STEPS, FEATURES]}, "output": {"shape": [1]}, "batched": batch > 1, "warmup": 2})
    node = TorchScriptModel()
    ctx = _Ctx(params, ModelPlan(path=str(path), device="cpu", dtype="float32"))
    node.setup(ctx)
    values = [x if batch > 1 else x[0] for x in xs]

    def runner() -> float:
        t0 = time.perf_counter()
        for v in values:
            node.on_x(v, ctx)
        return (time.perf_counter() - t0) / n

    def micro() -> float:  # the same messages handed over as one list of `batch` (runtime micro-batching)
        ctx.batch = [Message(port="x", topic="x") for _ in range(batch)]
        lists = [list(x) for x in xs]
        t0 = time.perf_counter()
        for group in lists:
            node.on_x(group, ctx)
        return (time.perf_counter() - t0) / n

    direct(), runner()  # warm caches
    d, r, m = [], [], []
    for _ in range(repeats):  # interleaved, so drift on a shared machine hits both alike
        d.append(direct())
        r.append(runner())
        if batch > 1:
            node.params = TorchScriptModel.Params.model_validate(
                {"input": {"shape": [STEPS, FEATURES]}, "output": {"shape": [1]}, "warmup": 0})
            m.append(micro())
            node.params = params
    out = {"direct_us": statistics.median(d) * 1e6, "runner_us": statistics.median(r) * 1e6,
           "spread": (max(r_ / d_ for r_, d_ in zip(r, d, strict=True))
                      - min(r_ / d_ for r_, d_ in zip(r, d, strict=True)))}
    if m:
        out["micro_us"] = statistics.median(m) * 1e6
    return out


GRAPH = """
graph: runner-bench
defaults: {{policy: block}}
nodes:
  src:
    uses: bench.runner_nodes:Windows
    params: {{count: {count}, rate_hz: {rate}}}
  lstm:
    uses: dmnflow.runners:TorchScriptModel
    model: {{path: {model}}}
    params: {{input: {{shape: [{steps}, {features}]}}, output: {{shape: [1]}}, threads: 1}}
    inputs: {{x: {inputs}}}
  sink: {{uses: bench.runner_nodes:Drop, inputs: {{values: lstm.y}}}}
"""


def through_graph(model: Path, rate: int, seconds: float, batched: bool) -> dict[str, Any]:
    import dmnflow
    from dmnflow.runtime import launch

    count = max(int(rate * seconds), 200)
    inputs = "{from: src.windows, batch: {max: 64, wait: 200us}}" if batched else "src.windows"
    with tempfile.TemporaryDirectory() as tmp:
        g = Path(tmp, "g.yaml")
        g.write_text(textwrap.dedent(GRAPH.format(count=count, rate=rate, model=model, steps=STEPS,
                                                  features=FEATURES, inputs=inputs)))
        report = launch(dmnflow.compile_graph(g))
    lstm = report.nodes["lstm"]
    [path] = report.e2e or [{}]
    busy = report.duration_s - report.startup_s
    return {"offered": rate, "batched": batched, "messages": lstm.messages_in,
            "lost": sum(e.lost for e in report.edges), "achieved": lstm.messages_in / busy if busy > 0 else 0.0,
            "p50_us": path.get("p50_us"), "p99_us": path.get("p99_us")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer messages and repeats")
    parser.add_argument("--rates", default="1000,5000,20000,50000", help="offered msg/s for part 2")
    parser.add_argument("--skip-graph", action="store_true", help="only part 1")
    args = parser.parse_args()
    n, repeats, seconds = (300, 5, 2.0) if args.quick else (1000, 7, 4.0)
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp, "dmn_lstm.pt")
        make_model(model)
        print(f"DMN-sized LSTM: {FEATURES} features, {STEPS} steps, hidden {HIDDEN}; 1 torch thread\n")
        print("part 1: in one process, seconds per message (median of interleaved repeats)")
        print(f"{'batch':>5} {'direct us':>10} {'runner us':>10} {'ratio':>6} {'spread':>7} {'as micro-batch us':>18}")
        for batch in (1, 8, 64):
            r = in_process(model, batch, n if batch == 1 else max(n // batch, 20), repeats)
            micro = f"{r['micro_us']:>18.1f}" if "micro_us" in r else f"{'-':>18}"
            print(f"{batch:>5} {r['direct_us']:>10.1f} {r['runner_us']:>10.1f} {r['runner_us'] / r['direct_us']:>6.3f} "
                  f"{r['spread']:>7.3f} {micro}")
        if args.skip_graph:
            return
        print("\npart 2: through a graph (paced source -> runner -> sink, block policy)")
        print(f"{'offered/s':>9} {'batch':>6} {'achieved/s':>10} {'lost':>5} {'e2e p50 us':>11} {'e2e p99 us':>11}")
        for rate in (int(r) for r in args.rates.split(",")):
            for batched in (False, True):
                r = through_graph(model, rate, seconds, batched)
                print(f"{rate:>9} {'64' if batched else '1':>6} {r['achieved']:>10.0f} {r['lost']:>5} "
                      f"{r['p50_us'] or 0:>11.0f} {r['p99_us'] or 0:>11.0f}")


if __name__ == "__main__":
    main()
