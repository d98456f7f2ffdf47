"""Loading ``package.module:Qualname``: how a YAML (a node's ``uses:``, a trainer, a tune
file) names Python code. Written once, so the compiler, the worker and the tune layer give
the same answer and the same message for the same path.

This module imports nothing of dmnflow but ``errors`` (its one did-you-mean).
"""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import ConfigError, did_you_mean

__all__ = ["ImportPathError", "load_object", "split_path", "subclass_of", "user_frame"]


class ImportPathError(ConfigError):
    """A ``module:qualname`` that does not load: ``message`` says what, ``hint`` how to fix it.

    A `ConfigError`: the module or name is not there where it runs (a typo in ``uses:``, a
    package not installed); the compiler turns it into an ``import-error`` issue."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


def split_path(uses: str) -> tuple[str, str]:
    """``(module, qualname)`` of ``package.module:Qualname``.

    Raises:
        ImportPathError: the text has no ``:`` or an empty side.
    """
    module, sep, qualname = uses.partition(":")
    if not sep or not module or not qualname:
        raise ImportPathError(f"{uses!r} is not 'package.module:Name'", "e.g. nodes.market:SyntheticMarket")
    return module, qualname


def load_object(uses: str, *, kind: Callable[[Any], bool] | None = None, what: str = "names") -> Any:
    """The object ``package.module:Qualname`` names, imported as ``python -m`` would (the
    current directory first on ``sys.path``, so a user's own package is found).

    ``kind`` picks the module attributes offered as "did you mean" when the name is not there
    (node classes, trainer classes); ``what`` is how the hint calls them.

    Raises:
        ImportPathError: the module is missing or fails to import (with the user's frame), or
            it has no such attribute; the hint names the closest module or attribute.
    """
    module_name, qualname = split_path(uses)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise ImportPathError(f"cannot import {module_name!r}: no module named {exc.name!r}",
                                  _module_hint(exc.name)) from exc
        raise ImportPathError(f"importing {module_name!r} failed: {exc}{user_frame(exc)}",
                              f"install the missing package {exc.name!r}") from exc
    except (Exception, SystemExit) as exc:  # user code ran at import time; show where it broke
        raise ImportPathError(f"importing {module_name!r} raised {type(exc).__name__}: {exc}{user_frame(exc)}",
                              "fix the error in that module") from exc
    obj: Any = module
    for part in qualname.split("."):
        nxt = getattr(obj, part, None)
        if nxt is None:
            offered = [n for n, v in vars(module).items() if kind is not None and kind(v)]
            hint = did_you_mean(part, offered, lambda name: f"{module_name}:{name}") or (
                f"{what} there: {', '.join(sorted(offered))}" if offered else "")
            raise ImportPathError(f"module {module_name!r} has no {part!r}", hint)
        obj = nxt
    return obj


def subclass_of(base: type) -> Callable[[Any], bool]:
    """A ``kind`` for ``load_object``: the strict subclasses of ``base``."""
    return lambda v: inspect.isclass(v) and issubclass(v, base) and v is not base


def _module_hint(missing: str) -> str:
    parent, _, leaf = missing.rpartition(".")
    if parent:
        try:
            package = importlib.import_module(parent)
        except Exception:
            return f"is the package {parent!r} installed?"
        found = [m.name for m in pkgutil.iter_modules(getattr(package, "__path__", []))]
        near = did_you_mean(leaf, found, lambda name: f"{parent}.{name}")
        if near:
            return near
        return f"modules in {parent}: {', '.join(sorted(found))}" if found else ""
    return "is it installed, or is the current directory the project root?"


def user_frame(exc: BaseException) -> str:
    """`` (at file:line)`` of the deepest frame outside dmnflow and importlib, if any."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return f" (at {exc.filename}:{exc.lineno}:{exc.offset or 0})"
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if "importlib" not in f.filename and "dmnflow" not in Path(f.filename).parts]
    return f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
