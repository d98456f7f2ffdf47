"""Which environment variables a worker gets: all but the secrets its nodes did not declare.

A graph's nodes come from many authors, and every one of them could log, crash-report or
hand to a subprocess the environment it runs in. So API keys and passwords reach only the
processes whose nodes say they read them: a variable whose name looks secret (``*_KEY``,
``*_SECRET``, ``*_TOKEN``, ``*PASSWORD*``, ... and the patterns listed in
``DMNFLOW_SECRET_ENV``) is removed from a worker's environment unless one of the nodes in
that process declares it (``Node.env`` / ``Node.environment(params)``, carried in the plan
as ``NodePlan.env``). Every other variable (``PATH``, ``HOME``, locale, proxies, thread
counts) passes as before.

The zygote is started with the environment no node declared anything in
(:func:`worker_environ` with no process), so the variables of its initial environment block
(``/proc/PID/environ``), which every forked worker inherits, hold no secret; a forked worker
adds its own declared variables (:func:`declared_secrets`) after the fork. This limits what
node code sees; it is no sandbox against hostile code running as the same user, which can
read the supervisor's environment. docs/runtime.md.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from fnmatch import fnmatchcase

from ..plan import Plan

__all__ = ["SECRET_ENV", "SECRET_PATTERNS", "declared_secrets", "is_secret", "worker_environ"]

# Names that look like credentials (matched case-insensitively, shell-style).
SECRET_PATTERNS: tuple[str, ...] = (
    "*_KEY", "*_KEY_ID", "*_SECRET", "*_SECRET_*", "*_TOKEN", "*PASSWORD*", "*_PASSWD", "*_PASSPHRASE",
    "*_CREDENTIALS",
)
# More patterns, comma separated, e.g. DMNFLOW_SECRET_ENV="DATABASE_URL,*_DSN".
SECRET_ENV = "DMNFLOW_SECRET_ENV"


def _patterns(environ: Mapping[str, str]) -> tuple[str, ...]:
    extra = environ.get(SECRET_ENV, "")
    return SECRET_PATTERNS + tuple(p.strip() for p in extra.split(",") if p.strip())


def is_secret(name: str, patterns: tuple[str, ...] = SECRET_PATTERNS) -> bool:
    """Whether a variable's name looks like a credential."""
    upper = name.upper()
    return any(fnmatchcase(upper, pattern.upper()) for pattern in patterns)


def _declared(plan: Plan, process: str) -> list[str]:
    """The names and patterns the nodes of ``process`` declare (several for a group)."""
    hosted = {name for p in plan.processes if p.name == process for name in p.nodes}
    return sorted({var for node in plan.nodes if node.name in hosted for var in node.env})


def declared_secrets(plan: Plan, process: str, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The secret-looking variables of ``environ`` that the nodes of ``process`` declared."""
    environ = os.environ if environ is None else environ
    patterns = _patterns(environ)
    wanted = _declared(plan, process)
    if not wanted:
        return {}
    return {k: v for k, v in environ.items()
            if is_secret(k, patterns) and any(fnmatchcase(k, w) for w in wanted)}


def worker_environ(plan: Plan | None = None, process: str | None = None,
                   environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of the worker for ``process``: ``environ`` (default ``os.environ``)
    without the secret-looking variables its nodes did not declare.

    Without a process: the environment with no secret at all (the zygote's).
    """
    environ = os.environ if environ is None else environ
    patterns = _patterns(environ)
    env = {k: v for k, v in environ.items() if not is_secret(k, patterns)}
    if plan is not None and process is not None:
        env.update(declared_secrets(plan, process, environ))
    return env
