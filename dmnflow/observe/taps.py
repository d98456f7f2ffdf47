"""Moved to ``dmnflow.runtime.taps`` (the package that owns it, so packages import without a cycle);
this name stays so existing imports keep working."""

import sys

from ..runtime import taps as _moved

sys.modules[__name__] = _moved
