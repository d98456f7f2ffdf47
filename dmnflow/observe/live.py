"""Moved to ``dmnflow.runtime.live`` (the package that owns it, so packages import without a cycle);
this name stays so existing imports keep working."""

import sys

from ..runtime import live as _moved

sys.modules[__name__] = _moved
