"""The TorchScript / torch.export model node: load, warm up, batch, run, swap while running.

A model node has one input ``x`` and one output ``y``. Each message on ``x`` is one sample
of ``params.input.shape`` (or, with ``batched: true``, a batch of them with a leading
dimension: one cross-sectional message per time step). Messages queued together
(``batch:`` on the input in the YAML) run as one forward pass and their results go back
out one per message, each on its own topic, with its own origin and event time. Every
output carries ``attrs["model_version"]``: which model produced it.

``dmnflow swap RUN NODE FILE`` loads a new model beside the running one, in a thread,
warms it on the last input shape, and switches between two messages; a model that does
not load, does not run, or answers in the wrong shape is refused and the old one keeps
serving.

torch is imported when the node starts (or a model is checked), never at import, so a
graph that only names this class validates without it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..node import Input, Node, Output, Ports, Tensor

__all__ = ["TensorSpec", "TorchScriptModel", "load_model"]

class TensorSpec(BaseModel):
    """One sample's tensor: its shape without the batch dimension, and its dtype."""

    model_config = ConfigDict(extra="forbid")
    shape: list[int | None] = Field(description="one sample's shape, no batch dimension; null: any size")
    dtype: Literal["bool", "uint8", "int8", "int16", "int32", "int64", "float16", "float32", "float64"] = Field(
        "float32", description="the dtype messages carry on this port (float results leave as float32)")


@dataclass
class _Loaded:
    """A model ready to serve: callable on a batch, with its version and how it wants its input."""

    module: Any
    version: str
    path: str
    device: Any
    dtype: Any  # the torch dtype it runs in
    static_batch: int | None = None  # a torch.export program with a fixed batch size
    graphs: dict[int, tuple[Any, Any, Any]] = field(default_factory=dict)  # CUDA graphs: size -> (g, in, out)
    stream: Any = None  # its CUDA stream
    pinned_in: Any = None  # a page-locked host buffer for the copy to the GPU
    empty: np.ndarray | None = None  # what it answers to an empty batch: (0, *one result's shape)


class TorchScriptModel(Node):
    """Runs a TorchScript (``.pt``) or torch.export (``.pt2``) model on each message of ``x``.

    The model's file, device and precision come from the node's ``model:`` block; the tensor
    shapes of the ports from ``params``. Outputs leave on the ``tensor`` codec, without copies.
    """

    needs_model: ClassVar[bool] = True  # the compiler requires a `model:` block

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        input: TensorSpec = Field(description="what one sample on `x` is: shape (no batch dimension), dtype")
        output: TensorSpec | None = Field(None, description="what one result on `y` is; null: whatever it returns")
        batched: bool = Field(False, description="messages on `x` hold a batch (a leading dimension), not one sample")
        topic: str = Field("{topic}", description="the topic of each result: {topic} is the input message's, "
                           "{suffix} what follows its first dot (e.g. 'predictions.{suffix}')")
        threads: int | None = Field(None, ge=1, description="torch threads; default: the node's pinned cores")
        warmup: int = Field(3, ge=0, description="forward passes before the first message")
        max_batch: int = Field(256, ge=1, description="the largest batch, for static buffers (CUDA graphs, "
                               "pinned memory) and warm-up")
        optimize: bool = Field(True, description="freeze and optimize a TorchScript module for inference")
        swap_sha256: list[str] | None = Field(None, description="the SHA-256 (hex) of every model file `dmnflow swap` "
                                              "may load; null: any file (a model file is code: see docs/network.md)")

    @classmethod
    def ports(cls, params: BaseModel) -> Ports:
        p: TorchScriptModel.Params = params  # type: ignore[assignment]
        lead: tuple[None, ...] = (None,) if p.batched else ()
        x = Input(Tensor(p.input.dtype, (*lead, *p.input.shape)), doc="the model's input")
        y = Output(Tensor(p.output.dtype, (*lead, *p.output.shape)) if p.output else Tensor(), codec="tensor",
                   doc="the model's output, attrs['model_version'] naming the model")
        x.name, y.name = "x", "y"
        return Ports({"x": x}, {"y": y})

    # ------------------------------------------------------------------ checked by `dmnflow validate`

    @classmethod
    def check_model(cls, params: BaseModel, model: Any) -> list[tuple[str, str, str]]:
        """Load the model on the CPU and run it once on the input port's shape: does it accept
        that, and does it answer in the output port's shape and dtype? ``(code, message, hint)``."""
        p: TorchScriptModel.Params = params  # type: ignore[assignment]
        try:
            import torch
        except ImportError:
            return [("model-error", "torch is not installed, so the model cannot be checked",
                     "install torch (pip install torch), or skip model checks with --no-models")]
        try:
            loaded = load_model(model.path, "cpu", "float32", optimize=False, version=model.version)
        except Exception as exc:
            return [("model-error", f"cannot load {Path(model.path).name}: {_short(exc)}",
                     "export it with torch.jit.script(...).save(path) or torch.export.save(...)")]
        sample = [2 if d is None else d for d in p.input.shape]
        try:
            with torch.inference_mode():
                out = _forward(loaded, np.zeros((2, *sample), dtype=_np_dtype(p.input.dtype)))
        except Exception as exc:
            return [("model-mismatch", f"the model rejects the input port's shape {_shape(p.input.shape)} "
                     f"({p.input.dtype}): {_short(exc)}",
                     "set params.input.shape to what the model takes (one sample, no batch dimension)")]
        return _check_output(p, out)

    # ------------------------------------------------------------------ running

    def setup(self, ctx: Any) -> None:
        import torch

        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")  # we never write
        threads = ctx.params.threads or (len(os.sched_getaffinity(0)) if _pinned() else None)
        if threads:
            torch.set_num_threads(threads)
        plan = ctx.model
        self.device = _device(plan.device, plan.gpu)
        self.dtype = plan.dtype
        self.cuda_graphs = plan.cuda_graphs
        self.params = ctx.params
        self.log = ctx.log
        self.last_shape: tuple[int, ...] = (1, *[1 if d is None else d for d in ctx.params.input.shape])
        loaded = self._prepare(plan.path, plan.version, self.device, self.dtype, self.last_shape)
        self.active: _Loaded = loaded  # read once per message: a swap replaces it between two messages
        self.swaps = 0
        self.swap_failures = 0
        self.executor: ThreadPoolExecutor | None = None
        self.lock = threading.Lock()  # one swap at a time
        # inference mode for the handler's thread from here on: entering it per message costs ~10us,
        # more than the rest of the runner together (tensors made meanwhile cannot join autograd)
        self.inference = torch.inference_mode()
        self.inference.__enter__()
        ctx.log.info("loaded %s (version %s) on %s in %s", Path(plan.path).name, loaded.version, self.device,
                     self.dtype)

    def on_x(self, value: Any, ctx: Any) -> None:
        model = self.active
        if isinstance(value, list):  # a micro-batch: one forward pass, one result per message
            self._run_batch(model, value, ctx)
            return
        batch = value if self.params.batched else value.reshape((1, *value.shape))  # [None] gives a 0 stride
        out = _forward(model, batch)
        if batch.shape[0]:  # what a swapped-in model warms up on (never an empty cross-section)
            self.last_shape = tuple(batch.shape)
        msg = ctx.message
        ctx.emit("y", out if self.params.batched else out[0], topic=self._topic(msg.topic),
                 attrs=_attrs(msg.attrs, model.version))

    def _run_batch(self, model: _Loaded, values: list[Any], ctx: Any) -> None:
        if self.params.batched:
            sizes = [len(v) for v in values]
            batch = np.concatenate(values)
        else:
            sizes = None
            batch = np.stack(values)
        out = _forward(model, batch)
        if batch.shape[0]:
            self.last_shape = tuple(batch.shape)
        start = 0
        for i, msg in enumerate(ctx.batch):
            if sizes is None:
                result = out[i]
            else:
                result = out[start:start + sizes[i]]
                start += sizes[i]
            ctx.emit("y", result, topic=self._topic(msg.topic), attrs=_attrs(msg.attrs, model.version), of=msg)

    def _topic(self, topic: str) -> str:
        template = self.params.topic
        if template == "{topic}":
            return topic
        return template.format(topic=topic, suffix=topic.partition(".")[2] or topic)

    # ------------------------------------------------------------------ hot swap

    def on_command(self, name: str, args: dict[str, Any], ctx: Any) -> Any:
        """``swap`` (path, and optionally device, dtype, version): load and warm the new model in
        a thread; the returned Future says how it went. ``version``: what is serving now."""
        if name == "version":
            return {"version": self.active.version, "path": self.active.path, "swaps": self.swaps}
        if name != "swap":
            raise ValueError(f"unknown command {name!r}; {type(self).__name__} takes: swap, version")
        path = _swap_args(args, ctx.params.swap_sha256)
        if not self.lock.acquire(blocking=False):
            raise RuntimeError("a swap is already in progress")
        if self.executor is None:
            self.executor = ThreadPoolExecutor(1, thread_name_prefix="dmnflow-swap")
        try:
            return self.executor.submit(self._swap, path, args)
        except BaseException:
            self.lock.release()
            raise

    def _swap(self, path: str, args: dict[str, Any]) -> dict[str, Any]:
        try:
            device = _device(args["device"]) if args.get("device") else self.active.device
            dtype = args.get("dtype") or self.dtype
            try:
                new = self._prepare(path, args.get("version"), device, dtype, self.last_shape)
            except Exception as exc:
                self.swap_failures += 1
                self.log.warning("swap to %s refused, %s keeps serving: %s", path, self.active.version, exc)
                raise RuntimeError(f"{_short(exc)}; still serving {self.active.version}") from None
            old = self.active
            self.active = new  # one reference assignment: the next message sees the new model
            self.dtype = dtype
            self.swaps += 1
            self.log.info("swapped %s -> %s", old.version, new.version)
            return {"version": new.version, "previous": old.version, "path": new.path, "device": str(device),
                    "dtype": dtype}
        finally:
            self.lock.release()

    def _prepare(self, path: str, version: str | None, device: Any, dtype: str, shape: tuple[int, ...]) -> _Loaded:
        """Load, warm up on ``shape``, check the output against the port: ready to serve."""
        import torch

        with torch.inference_mode():  # a swap runs this in a thread of its own
            return self._prepare_here(path, version, device, dtype, shape)

    def _prepare_here(self, path: str, version: str | None, device: Any, dtype: str,
                      shape: tuple[int, ...]) -> _Loaded:
        p = self.params
        loaded = load_model(path, device, dtype, optimize=p.optimize, version=version)
        if device.type == "cuda":
            _cuda_setup(loaded, p.max_batch, shape[1:], _np_dtype(p.input.dtype), self.cuda_graphs)
        sample = np.zeros(shape, dtype=_np_dtype(p.input.dtype))
        for _ in range(max(p.warmup, 1)):
            out = _forward(loaded, sample)
        problems = _check_output(p, out)
        loaded.empty = np.zeros((0, *out.shape[1:]), dtype=out.dtype)
        if shape[0] != p.max_batch and p.warmup:
            _forward(loaded, np.zeros((p.max_batch, *shape[1:]), dtype=sample.dtype))
        if problems:
            raise ValueError(problems[0][1])
        return loaded

    def summary(self) -> dict[str, Any]:
        active = getattr(self, "active", None)
        return {"model_version": active.version if active else None, "swaps": getattr(self, "swaps", 0),
                "swap_failures": getattr(self, "swap_failures", 0)}

    def teardown(self, ctx: Any) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True)
        self.inference.__exit__(None, None, None)


# ---------------------------------------------------------------------- loading and running


def load_model(path: str | os.PathLike[str], device: Any = "cpu", dtype: str = "float32", *,
               optimize: bool = True, version: str | None = None) -> _Loaded:
    """A TorchScript or torch.export model ready for inference on ``device`` in ``dtype``."""
    import torch

    path = str(path)
    device = torch.device(device) if not isinstance(device, torch.device) else device
    tdtype = getattr(torch, dtype)
    version = version or _version(path)
    if path.endswith(".pt2"):
        program = torch.export.load(path)
        static = _static_batch(program)
        if device.type != "cpu":
            program = torch.export.passes.move_to_device_pass(program, device)
        module = program.module()
        if tdtype != torch.float32:
            module = module.to(tdtype)
        return _Loaded(module, version, path, device, tdtype, static_batch=static)
    with warnings.catch_warnings():  # torch deprecates TorchScript in favour of torch.export; both are served
        warnings.simplefilter("ignore", DeprecationWarning)
        module = torch.jit.load(path, map_location=device)
        module.eval()
        if tdtype != torch.float32:
            module = module.to(tdtype)
        if optimize:
            # some scripted modules cannot be frozen (they mutate attributes, say): those run as they are
            with contextlib.suppress(Exception):
                module = torch.jit.optimize_for_inference(torch.jit.freeze(module))
    return _Loaded(module, version, path, device, tdtype)


def _forward(model: _Loaded, batch: np.ndarray) -> np.ndarray:
    """One forward pass over a batch (leading dimension), as a numpy array on the CPU.
    The caller is in ``torch.inference_mode()``."""
    if batch.shape[0] == 0 and model.empty is not None:  # a cross-section with no symbol ready yet
        return model.empty
    if model.static_batch is not None and batch.shape[0] != model.static_batch:
        return _forward_padded(model, batch, model.static_batch)
    torch = _TORCH[0] if _TORCH else _torch()
    x = torch.from_numpy(batch)
    if model.device.type == "cuda":
        y = _forward_cuda(model, x)
    else:
        if x.dtype is not model.dtype and x.dtype.is_floating_point:
            x = x.to(model.dtype)
        y = model.module(x)
        if type(y) is tuple or type(y) is list:
            y = y[0]
    if y.dtype is torch.float16 or y.dtype is torch.bfloat16:  # half precision leaves as float32
        y = y.float()
    return y.numpy()


_TORCH: list[Any] = []  # torch, once imported: an import statement per message costs ~0.5us


def _torch() -> Any:
    import torch

    _TORCH[:] = [torch]
    return torch


def _forward_padded(model: _Loaded, batch: np.ndarray, size: int) -> np.ndarray:
    """A fixed-batch program: run ``size`` rows at a time, the last chunk padded with zeros."""
    outs = []
    for start in range(0, batch.shape[0], size):
        chunk = batch[start:start + size]
        n = chunk.shape[0]
        if n < size:
            chunk = np.concatenate([chunk, np.zeros((size - n, *chunk.shape[1:]), dtype=chunk.dtype)])
        saved, model.static_batch = model.static_batch, None
        try:
            outs.append(_forward(model, chunk)[:n])
        finally:
            model.static_batch = saved
    return np.concatenate(outs)


def _cuda_setup(model: _Loaded, max_batch: int, sample: tuple[int, ...], np_dtype: Any, graphs: bool) -> None:
    """A stream of its own, page-locked buffers for the copies, and optionally CUDA graphs
    captured for power-of-two batch sizes up to ``max_batch`` (static shapes)."""
    import torch

    model.stream = torch.cuda.Stream(device=model.device)
    model.pinned_in = torch.empty((max_batch, *sample), dtype=torch.from_numpy(np.zeros(0, np_dtype)).dtype,
                                  pin_memory=True)
    if not graphs:
        return
    sizes = sorted({1 << k for k in range(max_batch.bit_length()) if 1 << k <= max_batch} | {max_batch})
    with torch.inference_mode(), torch.cuda.stream(model.stream):
        for size in sizes:
            static_in = torch.zeros((size, *sample), dtype=model.dtype, device=model.device)
            for _ in range(3):  # warm up on the side stream before capturing, as CUDA graphs require
                model.module(static_in)
            model.stream.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=model.stream, capture_error_mode="thread_local"):
                static_out = model.module(static_in)
                if isinstance(static_out, tuple | list):
                    static_out = static_out[0]
            model.graphs[size] = (graph, static_in, static_out)


def _forward_cuda(model: _Loaded, x: Any) -> Any:
    """Host -> pinned buffer -> GPU on the model's stream, run (a captured graph when one fits),
    GPU -> host; the caller gets a CPU tensor."""
    import torch

    n = x.shape[0]
    stream = model.stream
    if model.pinned_in is not None and n <= model.pinned_in.shape[0]:
        staged = model.pinned_in[:n]
        staged.copy_(x)
    else:
        staged = x.pin_memory()
    with torch.cuda.stream(stream):
        size = next((s for s in sorted(model.graphs) if s >= n), None)
        if size is not None:
            graph, static_in, static_out = model.graphs[size]
            static_in[:n].copy_(staged, non_blocking=True)
            graph.replay()
            y = static_out[:n]
        else:
            dev = staged.to(model.device, non_blocking=True)
            if dev.dtype.is_floating_point and dev.dtype != model.dtype:
                dev = dev.to(model.dtype)
            y = model.module(dev)
            if isinstance(y, tuple | list):
                y = y[0]
        host = torch.empty(y.shape, dtype=y.dtype, pin_memory=True)
        host.copy_(y, non_blocking=True)
    stream.synchronize()
    return host


def _static_batch(program: Any) -> int | None:
    """The batch size a torch.export program was exported with, when it is not dynamic."""
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in program.graph_signature.user_inputs:
            val = node.meta.get("val")
            if val is not None and len(val.shape) > 0 and isinstance(val.shape[0], int):
                return int(val.shape[0])
            return None
    return None


def _device(spec: str, gpu: int | None = None) -> Any:
    import torch

    if spec == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", gpu if gpu is not None and gpu < torch.cuda.device_count() else 0)
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"model device {spec!r}: CUDA is not available on this machine; use device: auto or cpu")
    return device


def _check_output(p: TorchScriptModel.Params, out: np.ndarray) -> list[tuple[str, str, str]]:
    if p.output is None:
        return []
    got = list(out.shape[1:])
    shape_ok = len(got) == len(p.output.shape) and all(w is None or w == g for w, g in zip(p.output.shape, got,
                                                                                            strict=False))
    problems = []
    if not shape_ok:
        problems.append(("model-mismatch", f"the model answers shape {_shape(got)} per sample; the output port "
                         f"declares {_shape(p.output.shape)}", "set params.output.shape to the model's output "
                         f"(one sample: {_shape(got)})"))
    dtype = str(out.dtype)
    if dtype != p.output.dtype:
        problems.append(("model-mismatch", f"the model answers {dtype}; the output port declares "
                         f"{p.output.dtype}", f"set params.output.dtype to {dtype} (float results of any "
                         "precision leave as float32)"))
    return problems


def _np_dtype(dtype: str) -> Any:
    return np.dtype(dtype)


def _attrs(attrs: Any, version: str) -> dict[str, Any]:
    """The input's attrs (symbols, say) and the version of the model that answered."""
    if attrs:
        return {**attrs, "model_version": version}
    return {"model_version": version}


def _version(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return f"{Path(path).name}@{digest.hexdigest()[:8]}"


def _pinned() -> bool:
    try:
        return len(os.sched_getaffinity(0)) < (os.cpu_count() or 1)
    except OSError:
        return False


def _shape(shape: Any) -> str:
    dims = ["?" if d is None else str(d) for d in shape]
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = next((line for line in text if line.strip()), type(exc).__name__)
    return first if len(first) <= 300 else first[:297] + "..."


SWAP_DTYPES = ("float32", "float16", "bfloat16")


def _swap_args(args: dict[str, Any], allowed: list[str] | None) -> str:
    """Check a swap request here, in the worker, whatever the client checked: an existing model
    file (and one of the allowed hashes, when the node lists them), a known dtype and device."""
    import hashlib
    import re

    path = args.get("path")
    if type(path) is not str or not path:
        raise ValueError("swap needs the new model's path")
    file = Path(path)
    if not file.is_absolute() or not file.is_file():
        raise ValueError(f"{path}: no such model file (an absolute path on the node's host)")
    if file.suffix not in (".pt", ".pt2", ".pth", ".ts"):
        raise ValueError(f"{file.name}: not a TorchScript (.pt) or torch.export (.pt2) file")
    dtype, device, version = args.get("dtype"), args.get("device"), args.get("version")
    if dtype is not None and dtype not in SWAP_DTYPES:
        raise ValueError(f"dtype {dtype!r}: use one of {', '.join(SWAP_DTYPES)}")
    if device is not None and (type(device) is not str or not re.fullmatch(r"cpu|cuda(:\d+)?", device)):
        raise ValueError(f"device {device!r}: use cpu, cuda or cuda:N")
    if version is not None and (type(version) is not str or len(version) > 200):
        raise ValueError("version must be short text")
    if allowed is not None:
        digest = hashlib.sha256(file.read_bytes()).hexdigest()
        if digest not in {a.lower() for a in allowed}:
            raise ValueError(f"{file.name} (sha256 {digest[:12]}...) is not one of the node's swap_sha256 models")
    return path
