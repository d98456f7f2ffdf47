"""Execution: the ``Execution`` node, the ``Broker`` interface and the embedded ``PaperBroker``."""
