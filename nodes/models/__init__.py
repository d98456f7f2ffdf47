"""The DMN models (docs/dmn/models.md): networks, training, the meta-learner, walk-forward evaluation.

- ``nets``: ``DMNLSTM``, ``MomentumTransformer`` and the serving head ``LastPosition`` (torch);
- ``data``, ``evaluate``: training windows and strategy returns from the reference features;
- ``train``: ``python -m nodes.models.train`` (Sharpe loss, early stopping, TorchScript export);
- ``walkforward``: ``python -m nodes.models.walkforward`` (the paper's protocol on the futures);
- ``meta``: ``MetaLearner``, the graph node that weights the models by their realised Sharpe;
- ``baseline``: ``Baseline``, long-only, TSMOM or MACD positions in the meta-learner's place;
- ``incremental``: ``IncrementalModel``, the model runner for the DMN nets on daily windows
  that computes tomorrow's known rows today (the ``latency`` profile of the trading graph).

Only the nodes are imported here, and none of them imports torch before it starts, so a graph
naming ``nodes.models:MetaLearner`` loads without torch; the model nodes themselves are
``dmnflow.runners:TorchScriptModel`` (or ``IncrementalModel``, a subclass).
"""

from .baseline import Baseline
from .incremental import IncrementalModel
from .meta import MetaLearner, SharpeWeighter, sharpe_weights

__all__ = ["Baseline", "IncrementalModel", "MetaLearner", "SharpeWeighter", "sharpe_weights"]
