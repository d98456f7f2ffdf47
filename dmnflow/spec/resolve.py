"""Defaults applied to a node, once: every per-input, per-output and per-node key that
``defaults:`` stands in for is filled in, so the compiler reads each value from the node's
own field and never writes ``x or defaults.x`` again.

Filled, and from which ``defaults`` key (schema.py ``Defaults``):

- an input's ``policy``, ``block_timeout``, ``queue``, ``delivery``, ``max_message``;
- an output's ``codec`` (the one written, else the one its class names, else
  ``defaults.codec``), ``compress_above``, ``transport`` (a fixed ``port`` is tcp), ``host``,
  ``send_limit`` (``defaults.queue``), ``coalesce``, ``shm_slots``;
- a node's ``restart``;
- a latency budget's ``warmup`` (an input's ``budget``, a node's: ``defaults.budget_warmup``).

An output is filled for every port the class declares, written in YAML or not. Where a value
came from is kept in ``NodeEntry.filled`` (``"inputs.ticks.policy" -> "defaults.policy"``,
``"outputs.v.codec" -> "uses"``), so an error about a value nobody wrote on the node points
at the ``defaults:`` line (or the class) that gave it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from .load import NodeEntry
from .schema import Defaults, InputSpec, OutputSpec

__all__ = ["resolve_node"]


def resolve_node(entry: NodeEntry, class_codecs: Mapping[str, str | None] | None = None) -> NodeEntry:
    """The node with every key ``defaults`` covers filled in, and ``filled`` saying which.

    ``class_codecs``: each output port the node's class declares, with the codec the class
    names for it (None: it names none); None when the class is not known (a node that failed
    to import), then only the outputs written in YAML are filled.
    """
    defaults = entry.defaults
    filled: dict[str, str] = {}

    def take(path: str, value: object, key: str) -> object:
        """``value`` when written (not None), else ``defaults.<key>``, noted in ``filled``."""
        if value is not None:
            return value
        filled[path] = f"defaults.{key}"
        return getattr(defaults, key)

    inputs: dict[str, InputSpec] = {}
    for port, inp in entry.spec.inputs.items():
        at = f"inputs.{port}"
        inputs[port] = inp.model_copy(update={
            "policy": take(f"{at}.policy", inp.policy, "policy"),
            "block_timeout": take(f"{at}.block_timeout", inp.block_timeout, "block_timeout"),
            "queue": take(f"{at}.queue", inp.queue, "queue"),
            "delivery": take(f"{at}.delivery", inp.delivery, "delivery"),
            "max_message": take(f"{at}.max_message", inp.max_message, "max_message"),
            "budget": None if inp.budget is None else inp.budget.model_copy(update={
                "warmup": take(f"{at}.budget.warmup", inp.budget.warmup, "budget_warmup")}),
        })

    written = entry.spec.outputs
    ports = list(written) + [p for p in (class_codecs or {}) if p not in written]
    outputs: dict[str, OutputSpec] = {}
    for port in ports:
        out = written.get(port) or OutputSpec()
        at = f"outputs.{port}"
        named = (class_codecs or {}).get(port)
        if out.codec is None and named is not None:
            codec, filled[f"{at}.codec"] = named, "uses"
        else:
            codec = take(f"{at}.codec", out.codec, "codec")
        outputs[port] = out.model_copy(update={
            "codec": codec,
            "compress_above": take(f"{at}.compress_above", out.compress_above, "compress_above"),
            "transport": "tcp" if out.port is not None else take(f"{at}.transport", out.transport, "transport"),
            "host": _host(out, defaults, filled, f"{at}.host"),
            "send_limit": take(f"{at}.send_limit", out.send_limit, "queue"),
            "coalesce": take(f"{at}.coalesce", out.coalesce, "coalesce"),
            "shm_slots": take(f"{at}.shm_slots", out.shm_slots, "shm_slots"),
        })

    budget = entry.spec.budget
    if budget is not None:
        budget = budget.model_copy(update={"warmup": take("budget.warmup", budget.warmup, "budget_warmup")})
    spec = entry.spec.model_copy(update={
        "inputs": inputs, "outputs": outputs, "restart": take("restart", entry.spec.restart, "restart"),
        "budget": budget})
    return dataclasses.replace(entry, spec=spec, filled=filled)


def _host(out: OutputSpec, defaults: Defaults, filled: dict[str, str], path: str) -> str:
    """An empty ``host:`` binds ``defaults.host`` too, but stays the line an error points at."""
    if out.host is None:
        filled[path] = "defaults.host"
    return out.host or defaults.host
