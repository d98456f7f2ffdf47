"""dmnflow: declarative dataflow for low-latency ML pipelines.

Users and node authors import from ``dmnflow`` (and ``dmnflow.testing``) only; the
module names (spec, compiler, plan, codecs, node, viz, ...) are a map of the source,
and ``__all__`` below is the whole public surface.
"""

import contextlib as _contextlib
import importlib as _importlib
from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

# Where each public name lives. Names load on first use, so a worker process that imports
# dmnflow.runtime.worker does not pay for the compiler, networkx, YAML or the renderers.
_LOCATIONS: dict[str, str] = {
    "Codec": "codecs",
    "CodecError": "errors",
    "CompileError": "errors",
    "ConfigError": "errors",
    "Context": "node",
    "ControlError": "errors",
    "DecodeError": "errors",
    "DmnflowError": "errors",
    "EncodeError": "errors",
    "ExitCode": "errors",
    "FORMATS": "viz",
    "GraphError": "errors",
    "Input": "node",
    "Issue": "errors",
    "LaunchError": "errors",
    "Location": "errors",
    "Message": "node",
    "Node": "node",
    "NodeError": "errors",
    "Output": "node",
    "Plan": "plan",
    "Ports": "node",
    "Report": "runtime",
    "SendTimeout": "errors",
    "SpecError": "errors",
    "Tensor": "node",
    "Trainer": "tune.trainer",
    "TransportError": "errors",
    "codec_names": "codecs",
    "compile_graph": "compiler",
    "format_issues": "errors",
    "json_schema": "spec",
    "launch": "runtime",
    "load_graph": "spec",
    "register_codec": "codecs",
    "render": "viz",
    "validate": "compiler",
}

if _TYPE_CHECKING:  # for type checkers and editors: the same names, imported eagerly
    from .codecs import Codec as Codec
    from .codecs import codec_names as codec_names
    from .codecs import register_codec as register_codec
    from .compiler import compile_graph as compile_graph
    from .compiler import validate as validate
    from .errors import CodecError as CodecError
    from .errors import CompileError as CompileError
    from .errors import ConfigError as ConfigError
    from .errors import ControlError as ControlError
    from .errors import DecodeError as DecodeError
    from .errors import DmnflowError as DmnflowError
    from .errors import EncodeError as EncodeError
    from .errors import ExitCode as ExitCode
    from .errors import GraphError as GraphError
    from .errors import Issue as Issue
    from .errors import LaunchError as LaunchError
    from .errors import Location as Location
    from .errors import NodeError as NodeError
    from .errors import SendTimeout as SendTimeout
    from .errors import SpecError as SpecError
    from .errors import TransportError as TransportError
    from .errors import format_issues as format_issues
    from .node import Context as Context
    from .node import Input as Input
    from .node import Message as Message
    from .node import Node as Node
    from .node import Output as Output
    from .node import Ports as Ports
    from .node import Tensor as Tensor
    from .plan import Plan as Plan
    from .runtime import Report as Report
    from .runtime import launch as launch
    from .spec import json_schema as json_schema
    from .spec import load_graph as load_graph
    from .tune.trainer import Trainer as Trainer
    from .viz import FORMATS as FORMATS
    from .viz import render as render

__version__ = "0.1.0"

__all__ = [
    "Codec",
    "CodecError",
    "CompileError",
    "ConfigError",
    "Context",
    "ControlError",
    "DecodeError",
    "DmnflowError",
    "EncodeError",
    "ExitCode",
    "FORMATS",
    "GraphError",
    "Input",
    "Issue",
    "LaunchError",
    "Location",
    "Message",
    "Node",
    "NodeError",
    "Output",
    "Plan",
    "Ports",
    "Report",
    "SendTimeout",
    "SpecError",
    "Tensor",
    "Trainer",
    "TransportError",
    "codec_names",
    "compile_graph",
    "format_issues",
    "json_schema",
    "launch",
    "load_graph",
    "register_codec",
    "render",
    "validate",
]



def __getattr__(name: str) -> _Any:
    module = _LOCATIONS.get(name)
    if module is None:
        raise AttributeError(f"module 'dmnflow' has no attribute {name!r}")
    value = getattr(_importlib.import_module(f".{module}", __name__), name)
    if isinstance(value, type) or callable(value):
        with _contextlib.suppress(AttributeError, TypeError):
            value.__module__ = "dmnflow"  # tracebacks and reprs say dmnflow.GraphError
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
