"""Model nodes: a scripted model run through a real graph, micro-batched, swapped while it runs.

Tiny models are scripted by the tests themselves; every process is stopped by PID
(procs.launched, or the supervisor's own stop for in-process launches).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import dmnflow  # noqa: E402
from dmnflow.runtime import launch  # noqa: E402
from dmnflow.runtime.admin import find_run, list_runs  # noqa: E402
from dmnflow.testing import run_node  # noqa: E402

from .procs import ROOT, launched, wait_until  # noqa: E402

STEPS, FEATURES, HIDDEN = 5, 3, 4


class TinyLSTM(torch.nn.Module):
    """The DMN model's shape in miniature: LSTM over a window, last step, dense, tanh."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.lstm = torch.nn.LSTM(FEATURES, HIDDEN, batch_first=True)
        self.head = torch.nn.Linear(HIDDEN, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return torch.tanh(self.head(out[:, -1]))


def script(path: Path, seed: int) -> TinyLSTM:
    model = TinyLSTM(seed).eval()
    torch.jit.script(model).save(str(path))
    return model


def direct(model: TinyLSTM, samples: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return np.concatenate([model(torch.from_numpy(s[None])).numpy() for s in samples])


def samples(count: int, seed: int = 0) -> np.ndarray:
    """What nodes Samples sends with this seed."""
    return np.random.default_rng(seed).standard_normal((count, STEPS, FEATURES)).astype(np.float32)


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def rows(path: Path) -> list[list]:
    return [json.loads(line) for line in path.read_text().splitlines()]


RUNNER = f"params: {{input: {{shape: [{STEPS}, {FEATURES}]}}, output: {{shape: [1]}}, topic: 'pred.{{suffix}}'}}"


def test_outputs_equal_the_direct_call_with_and_without_micro_batching(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    model = script(tmp_path / "m.pt", seed=1)
    n = 400
    g = write(tmp_path / "g.yaml", f"""
        graph: models
        defaults: {{policy: block}}
        nodes:
          src: {{uses: tests.integration.nodes:Samples, params: {{count: {n}, shape: [{STEPS}, {FEATURES}]}}}}
          one:
            uses: dmnflow.runners:TorchScriptModel
            model: {{path: m.pt, version: v1}}
            {RUNNER}
            inputs: {{x: src.samples}}
          many:
            uses: dmnflow.runners:TorchScriptModel
            model: {{path: m.pt, version: v1}}
            {RUNNER}
            inputs: {{x: {{from: src.samples, batch: {{max: 32, wait: 2ms}}}}}}
          out_one:
            {{uses: tests.integration.nodes:Record, params: {{path: {tmp_path}/one.jsonl}}, inputs: {{values: one.y}}}}
          out_many:
            uses: tests.integration.nodes:Record
            params: {{path: {tmp_path}/many.jsonl}}
            inputs: {{values: many.y}}
        """)
    report = launch(dmnflow.compile_graph(g))
    assert report.status == "finished", report.errors
    expected = direct(model, samples(n))
    for name in ("one", "many"):
        got = rows(tmp_path / f"{name}.jsonl")
        assert [r[0] for r in got] == list(range(n))  # every message, in order, its own event time
        assert [r[1] for r in got] == [f"pred.{i % 3}" for i in range(n)]  # each result on its message's topic
        assert {r[2] for r in got} == {"v1"}
        np.testing.assert_allclose(np.array([r[3] for r in got], dtype=np.float32), expected, rtol=0, atol=1e-6)
        assert report.nodes[name].messages_in == n
    assert report.nodes["many"].summary["model_version"] == "v1"


def test_a_batched_message_runs_as_one_forward_pass_in_process(tmp_path):
    """`batched: true`: one message holds a cross-section; attrs ride through with the version."""
    model = script(tmp_path / "m.pt", seed=2)
    x = samples(7, seed=3)
    out = run_node(_runner(), params={"input": {"shape": [STEPS, FEATURES]}, "output": {"shape": [1]}, "batched": True},
                   model=tmp_path / "m.pt", inputs=[("x", x)])
    [y] = out["y"]
    assert y.shape == (7, 1)
    np.testing.assert_allclose(y, direct(model, x), atol=1e-6)
    empty = run_node(_runner(), params={"input": {"shape": [STEPS, FEATURES]}, "output": {"shape": [1]},
                                        "batched": True}, model=tmp_path / "m.pt", inputs=[("x", x[:0])])
    assert empty["y"][0].shape == (0, 1)  # no symbol ready yet: an empty answer, not an error


def _runner():
    from dmnflow.runners import TorchScriptModel

    return TorchScriptModel


def test_a_torch_export_program_with_a_fixed_batch_is_padded(tmp_path):
    model = TinyLSTM(4).eval()
    program = torch.export.export(model, (torch.zeros(2, STEPS, FEATURES),))  # batch 2, not dynamic
    torch.export.save(program, str(tmp_path / "m.pt2"))
    x = samples(5, seed=5)
    out = run_node(_runner(), params={"input": {"shape": [STEPS, FEATURES]}, "output": {"shape": [1]},
                                      "batched": True, "max_batch": 4},
                   model=tmp_path / "m.pt2", inputs=[("x", x)])
    np.testing.assert_allclose(out["y"][0], direct(model, x), atol=1e-6)


def test_validate_loads_the_model_and_points_at_the_model_block(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    script(tmp_path / "m.pt", seed=1)
    (tmp_path / "broken.pt").write_bytes(b"not a model")
    g = write(tmp_path / "g.yaml", """
        nodes:
          src: {uses: tests.integration.nodes:Samples, params: {shape: [9, 3]}}
          wrong_in:
            uses: dmnflow.runners:TorchScriptModel
            model: {path: m.pt}
            params: {input: {shape: [9, 2]}, output: {shape: [1]}}
            inputs: {x: src.samples}
          wrong_out:
            uses: dmnflow.runners:TorchScriptModel
            model: {path: m.pt}
            params: {input: {shape: [9, 3]}, output: {shape: [2]}}
            inputs: {x: src.samples}
          broken:
            uses: dmnflow.runners:TorchScriptModel
            model: {path: broken.pt}
            params: {input: {shape: [9, 3]}}
            inputs: {x: src.samples}
          sink: {uses: nodes.basic:Collect, inputs: {values: [wrong_in.y, wrong_out.y, broken.y]}}
        """)
    issues = [(i.code, i.loc.line, i.message) for i in dmnflow.validate(g) if i.is_error]
    assert [(code, line) for code, line, _ in issues] == [
        ("model-mismatch", 5), ("model-mismatch", 10), ("model-error", 15)]
    assert "rejects the input port's shape (9, 2)" in issues[0][2]
    assert "answers shape (1,) per sample; the output port declares (2,)" in issues[1][2]
    assert "cannot load broken.pt" in issues[2][2]
    assert not [i for i in dmnflow.validate(g, models=False) if i.is_error]  # --no-models skips loading


def test_validate_cli_exit_codes_with_and_without_models(tmp_path):
    script(tmp_path / "m.pt", seed=1)
    g = write(tmp_path / "g.yaml", """
        nodes:
          src: {uses: tests.integration.nodes:Samples, params: {shape: [5, 3]}}
          m:
            uses: dmnflow.runners:TorchScriptModel
            model: {path: m.pt}
            params: {input: {shape: [5, 3]}, output: {shape: [3]}}
            inputs: {x: src.samples}
          sink: {uses: nodes.basic:Collect, inputs: {values: m.y}}
        """)
    cmd = [sys.executable, "-m", "dmnflow", "validate", str(g)]
    bad = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1
    assert f"{g}:5:5: error[model-mismatch]" in bad.stderr and "Traceback" not in bad.stderr
    ok = subprocess.run([*cmd, "--no-models"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr


def test_swap_under_a_steady_stream_loses_nothing_and_changes_version_once(tmp_path):
    script(tmp_path / "v1.pt", seed=1)
    new = script(tmp_path / "v2.pt", seed=2)
    (tmp_path / "corrupt.pt").write_bytes(b"\x00garbage" * 100)
    n = 10_000
    name = f"swap-{uuid.uuid4().hex[:8]}"
    g = write(tmp_path / "g.yaml", f"""
        graph: swap
        defaults: {{policy: block}}
        nodes:
          src:
            uses: tests.integration.nodes:Samples
            params: {{count: {n}, shape: [{STEPS}, {FEATURES}], rate_hz: 1000}}
          lstm:
            uses: dmnflow.runners:TorchScriptModel
            model: {{path: v1.pt, version: v1}}
            {RUNNER}
            inputs: {{x: {{from: src.samples, batch: {{max: 16, wait: 1ms}}}}}}
          out:
            {{uses: tests.integration.nodes:Record, params: {{path: {tmp_path}/out.jsonl}}, inputs: {{values: lstm.y}}}}
        """)
    with launched(g, "--name", name) as run:
        assert wait_until(lambda: any(r.name == name for r in list_runs()), 60), "the run never appeared"
        out = tmp_path / "out.jsonl"
        assert wait_until(lambda: out.exists() and out.stat().st_size > 0, 60), "no output"
        swap = [sys.executable, "-m", "dmnflow", "swap", name, "lstm"]
        refused = subprocess.run([*swap, str(tmp_path / "corrupt.pt")], cwd=ROOT, capture_output=True, text=True,
                                 timeout=120)
        assert refused.returncode == 1
        assert "refused lstm" in refused.stderr and "still serving v1" in refused.stderr
        done = subprocess.run([*swap, str(tmp_path / "v2.pt"), "--version", "v2"], cwd=ROOT, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert "swapped lstm: v1 -> v2" in done.stdout
        stdout, stderr = run.proc.communicate(timeout=120)
        assert run.proc.returncode == 0, stderr
    got = rows(tmp_path / "out.jsonl")
    assert [r[0] for r in got] == list(range(n))  # nothing lost or duplicated, in order
    versions = [r[2] for r in got]
    changes = [i for i in range(1, n) if versions[i] != versions[i - 1]]
    assert len(changes) == 1 and versions[0] == "v1" and versions[-1] == "v2", changes
    first_v2 = changes[0]
    assert 0 < first_v2 < n
    x = samples(n)
    np.testing.assert_allclose(np.array([r[3] for r in got[first_v2:]], dtype=np.float32), direct(new, x[first_v2:]),
                               atol=1e-6)  # the new model really serves after the switch
    assert "swaps" in stdout  # its summary reached the report


def test_swap_names_the_runs_there_are_when_the_run_is_unknown(tmp_path):
    result = subprocess.run([sys.executable, "-m", "dmnflow", "swap", f"nope-{uuid.uuid4().hex[:6]}", "lstm",
                             str(Path(__file__))], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "no run named" in result.stderr and "Traceback" not in result.stderr
    with pytest.raises(dmnflow.ControlError):
        find_run(f"nope-{uuid.uuid4().hex[:6]}")


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
@pytest.mark.parametrize("graphs", [False, True])
def test_cuda_runner_matches_the_cpu(tmp_path, graphs):
    model = script(tmp_path / "m.pt", seed=6)
    x = samples(37, seed=7)
    out = run_node(_runner(), params={"input": {"shape": [STEPS, FEATURES]}, "output": {"shape": [1]},
                                      "batched": True, "max_batch": 64},
                   model={"path": str(tmp_path / "m.pt"), "device": "cuda", "cuda_graphs": graphs},
                   inputs=[("x", x), ("x", x[:1]), ("x", x[:20])])
    expected = direct(model, x)
    np.testing.assert_allclose(out["y"][0], expected, atol=1e-5)
    np.testing.assert_allclose(out["y"][1], expected[:1], atol=1e-5)
    np.testing.assert_allclose(out["y"][2], expected[:20], atol=1e-5)


@cuda
def test_cuda_half_precision_stays_close(tmp_path):
    model = script(tmp_path / "m.pt", seed=8)
    x = samples(16, seed=9)
    out = run_node(_runner(), params={"input": {"shape": [STEPS, FEATURES]}, "output": {"shape": [1]},
                                      "batched": True},
                   model={"path": str(tmp_path / "m.pt"), "device": "cuda", "dtype": "float16"}, inputs=[("x", x)])
    assert out["y"][0].dtype == np.float32
    np.testing.assert_allclose(out["y"][0], direct(model, x), atol=5e-3)


def test_a_swap_after_an_empty_cross_section_warms_up_on_the_last_real_shape(tmp_path):
    """A DMN features node sends empty windows while it warms up; a swap then must still work."""
    script(tmp_path / "v1.pt", seed=1)
    new = script(tmp_path / "v2.pt", seed=2)
    runner = _runner()
    node = runner()
    from dmnflow.testing import RecordingContext

    ctx = RecordingContext(runner, {"input": {"shape": [STEPS, FEATURES]}, "output": {"shape": [1]},
                                    "batched": True, "warmup": 1}, model=tmp_path / "v1.pt")
    node.setup(ctx)
    try:
        x = samples(4, seed=8)
        node.on_x(x, ctx)
        node.on_x(x[:0], ctx)  # an empty cross-section
        result = node.on_command("swap", {"path": str(tmp_path / "v2.pt"), "version": "v2"}, ctx).result(60)
        assert result["version"] == "v2"
        node.on_x(x, ctx)
        assert [y.shape for y in ctx.out["y"]] == [(4, 1), (0, 1), (4, 1)]
        np.testing.assert_allclose(ctx.out["y"][2], direct(new, x), atol=1e-6)
    finally:
        node.teardown(ctx)


def test_a_swap_is_checked_in_the_worker_whatever_the_client_checked(tmp_path):
    """The admin socket is reachable by the run's user only, but the node checks the request itself:
    a model file that exists, a known dtype and device, and one of `swap_sha256` when given."""
    import hashlib

    from dmnflow.testing import RecordingContext

    script(tmp_path / "v1.pt", seed=1)
    script(tmp_path / "v2.pt", seed=2)
    script(tmp_path / "v3.pt", seed=3)
    allowed = hashlib.sha256((tmp_path / "v2.pt").read_bytes()).hexdigest()
    runner = _runner()
    node = runner()
    ctx = RecordingContext(runner, {"input": {"shape": [STEPS, FEATURES]}, "output": {"shape": [1]},
                                    "batched": True, "warmup": 1, "swap_sha256": [allowed]},
                           model=tmp_path / "v1.pt")
    node.setup(ctx)
    (tmp_path / "notes.txt").write_text("not a model")
    try:
        for args, reason in (({"path": "v2.pt"}, "no such model file"),
                             ({"path": str(tmp_path / "notes.txt")}, "not a TorchScript"),
                             ({"path": 5}, "needs the new model's path"),
                             ({"path": str(tmp_path / "v2.pt"), "dtype": "int8"}, "dtype 'int8'"),
                             ({"path": str(tmp_path / "v2.pt"), "device": "cuda;rm"}, "device"),
                             ({"path": str(tmp_path / "v3.pt")}, "is not one of the node's swap_sha256")):
            with pytest.raises(ValueError, match=reason):
                node.on_command("swap", args, ctx)
        assert node.on_command("swap", {"path": str(tmp_path / "v2.pt"), "version": "v2"}, ctx).result(60)[
            "version"] == "v2"
    finally:
        node.teardown(ctx)
