"""Moved to ``dmnflow.runtime.observer`` (the package that owns it, so packages import without a cycle);
this name stays so existing imports keep working."""

import sys

from ..runtime import observer as _moved

sys.modules[__name__] = _moved
