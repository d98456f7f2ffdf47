"""The one error tree: every public exception of dmnflow is a DmnflowError and is drawn in
errors.py's docstring, so ``except DmnflowError`` catches all and the drawing tells no lies;
and every "did you mean" agrees on one cutoff."""

from __future__ import annotations

import importlib
import pkgutil
import re

import dmnflow
from dmnflow import errors

# Not errors: a signal dmnflow raises inside a source's emit to stop it (see errors.py).
SIGNALS = {"StopSource"}


def _public_exceptions() -> dict[str, type[BaseException]]:
    """Every exception class a module of dmnflow lists in its ``__all__``, by name."""
    found: dict[str, type[BaseException]] = {}
    modules = [dmnflow] + [importlib.import_module(m.name) for m in pkgutil.walk_packages(dmnflow.__path__, "dmnflow.")
                           if not m.name.endswith("__main__")]
    for module in modules:
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name, None)
            if isinstance(obj, type) and issubclass(obj, BaseException):
                found[obj.__qualname__] = obj
    return found


def _drawn() -> dict[str, str]:
    """The drawn tree of errors.py: each class name to its parent's."""
    parents: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    for line in (errors.__doc__ or "").splitlines():
        m = re.match(r"^(\s*)([│├└─ ]*)(\w+)\s", line + " ")
        if not m or not m.group(3).endswith(("Error", "Error_", "Timeout", "InUse")):
            continue
        depth = len(m.group(1)) + len(m.group(2))
        while stack and stack[-1][0] >= depth:
            stack.pop()
        parents[m.group(3)] = stack[-1][1] if stack else ""
        stack.append((depth, m.group(3)))
    return parents


def test_every_public_exception_is_a_dmnflow_error_drawn_under_its_base() -> None:
    found = _public_exceptions()
    assert {"ImportPathError", "HostError", "KeyError_", "TuneError", "ObserveError", "PortInUse"} <= set(found)
    drawn = _drawn()
    for name, cls in found.items():
        if name in SIGNALS:
            assert not issubclass(cls, errors.DmnflowError), name
            continue
        assert issubclass(cls, errors.DmnflowError), f"{name} is outside the DmnflowError tree"
        assert name in drawn, f"{name} is not drawn in errors.py's tree"
        if cls is not errors.DmnflowError:
            assert drawn[name] == cls.__mro__[1].__name__, f"{name} is drawn under {drawn[name]}"
    assert set(drawn) <= set(found), "the tree draws a class that is not public"


def test_the_errors_that_were_outside_keep_the_bases_they_are_caught_as() -> None:
    from dmnflow.importing import ImportPathError
    from dmnflow.runtime.backends.ray_host import HostError
    from dmnflow.transport.security import KeyError_

    assert issubclass(KeyError_, ValueError) and issubclass(KeyError_, errors.ConfigError)
    assert issubclass(ImportPathError, errors.ConfigError) and issubclass(HostError, errors.LaunchError)
    exc = ImportPathError("module 'x' has no 'Y'", "did you mean x:Z?")
    assert str(exc) == exc.message == "module 'x' has no 'Y'" and exc.hint == "did you mean x:Z?"


def test_did_you_mean_has_one_cutoff_and_one_wording() -> None:
    assert errors.did_you_mean("nn", ["n", "count"]) == "did you mean 'n'?"  # ratio 0.67
    assert errors.did_you_mean("zzz", ["count"]) == ""
    assert errors.closest("cout", ["count"]) == "count"
    hint = errors.did_you_mean("Countr", ["Counter"], lambda n: f"nodes.basic:{n}")
    assert hint == "did you mean nodes.basic:Counter?"
    assert errors.suggest("a/b") == "did you mean 'a/b'?"


def test_a_refused_value_is_repeated_cut_to_a_line():
    """A 5,000-digit number from ``${env:...}`` refused by a node's Params: the message says
    what it got in one line, with its length, not the whole value."""
    from dmnflow.errors import GOT_CHARS, got

    assert got(3) == " (got 3)" and got("abc") == " (got 'abc')"
    shown = got("7" * 5000)
    assert len(shown) < GOT_CHARS + 40 and shown.endswith("(5,002 characters))") and "..." in shown
