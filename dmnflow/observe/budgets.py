"""Moved to ``dmnflow.compiler.budgets`` (the package that owns it, so packages import without a cycle);
this name stays so existing imports keep working."""

import sys

from ..compiler import budgets as _moved

sys.modules[__name__] = _moved
