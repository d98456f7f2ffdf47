"""Execution: the ``Execution`` node, the ``Broker`` interface and the embedded ``PaperBroker``.

Graphs name the node ``nodes.execution:Execution``; brokers live in their own modules
(``broker``: the interface and the registry of names; ``paper``: the paper broker).
"""

from .node import Execution

__all__ = ["Execution"]
