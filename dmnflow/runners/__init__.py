"""Model runners: nodes declared in YAML, not written, that run a model file.

    lstm:
      uses: dmnflow.runners:TorchScriptModel
      model: {path: models/dmn_lstm.pt, device: auto, dtype: float32}
      params: {input: {shape: [63, 8]}, output: {shape: [1]}}
      inputs: {x: {from: features.windows, batch: {max: 64, wait: 200us}}}

Importing this package does not import torch: ``dmnflow validate --no-models`` stays fast.
"""

from .torchscript import TensorSpec, TorchScriptModel

__all__ = ["TensorSpec", "TorchScriptModel"]
