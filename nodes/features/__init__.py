"""The DMN features (docs/dmn/features.md): the 8 model inputs of the paper and the baseline signals.

- ``engine``: ``DMNFeatureState``, the incremental O(1)-per-asset computation (numpy only);
- ``reference``: the same features vectorised with pandas, the specification (``dmn`` extra);
- ``node``: ``DMNFeatures``, the graph node (bars, ticks or panels in; windows and signals out).
"""

from .engine import FEATURE_NAMES, MACD_PAIRS, RETURN_HORIZONS, DMNFeatureState, FeatureRows, macd_response
from .node import CrossSection, DMNFeatures

__all__ = ["FEATURE_NAMES", "MACD_PAIRS", "RETURN_HORIZONS", "CrossSection", "DMNFeatureState", "DMNFeatures",
           "FeatureRows", "macd_response"]
