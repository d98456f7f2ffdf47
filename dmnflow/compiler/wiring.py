"""The edges between nodes: references to producers, port types, loops, outputs nobody
reads, whether anything drives the graph, codecs, transports and fixed tcp ports,
delivery, and what a tcp bind beyond loopback needs (CURVE)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import networkx as nx
import zmq

from ..codecs import codec_names, get_codec
from ..errors import Location
from ..node import Input, Output, check_types, describe_type
from ..plan import SecurityPlan
from ..transport.security import check_key_dir
from .state import _REPLICA_RE, _choices, _Compilation, _Edge, _Node


class _Wiring(_Compilation):
    """Fills ``edges`` (``connect``) and checks what runs between nodes."""

    def ref_loc(self, name: str, port: str, index: int) -> Location | None:
        base = ("nodes", name, "inputs", port)
        for path in (base + ("from", index), base + ("from",), base + (index,), base):
            if path in self.srcmap.values:
                return self.srcmap.values[path]
        return self.srcmap.at(base)

    def connect(self, node: _Node) -> None:
        name = node.entry.name
        for port, spec in node.entry.spec.inputs.items():
            declared: Input | None = node.ports.inputs.get(port) if node.ports else None
            for i, ref in enumerate(spec.from_):
                where = self.ref_loc(name, port, i)
                path = f"nodes.{name}.inputs.{port}"
                target, _, out_port = ref.removeprefix("/").rpartition(".")
                replica = None
                match = _REPLICA_RE.match(target)
                if match and match["base"] in self.graph.nodes:
                    target, replica = match["base"], int(match["index"])
                if target not in self.graph.nodes:
                    if not self.graph.is_broken(target):
                        self.add("unknown-node", f"no node {target!r} (in {ref!r})", where, path,
                                 _choices(target, self.graph.nodes, "nodes"))
                    continue
                producer = self.nodes[target]
                if replica is not None and replica >= len(producer.instances):
                    self.add("unknown-node", f"node {target!r} has {len(producer.instances)} "
                             f"replica(s); there is no {target}[{replica}]", where, path,
                             f"use {target}.{out_port} to take every replica")
                    continue
                out_decl: Output | None = None
                if producer.ports is not None:
                    out_decl = producer.ports.outputs.get(out_port)
                    if out_decl is None:
                        self.add("unknown-port", f"node {target!r} has no output {out_port!r}", where, path,
                                 _choices(out_port, producer.ports.outputs, "outputs"))
                        continue
                if out_decl is not None and declared is not None:
                    bad = check_types(out_decl.type, declared.type)
                    if bad:
                        code, reason = bad
                        self.add(code, f"{target}.{out_port} sends {describe_type(out_decl.type)}, "
                                 f"but {name}.{port} takes {describe_type(declared.type)}: {reason}",
                                 where, path, "connect a port of the matching type, or convert it "
                                 "in a node between them")
                        continue
                type_text = describe_type(out_decl.type if out_decl is not None else Any)
                self.edges.append(_Edge(target, out_port, name, port, replica, type_text, spec.feedback))

    def template_graph(self) -> nx.MultiDiGraph:
        graph = nx.MultiDiGraph()
        graph.add_nodes_from(self.nodes)
        for e in self.edges:
            graph.add_edge(e.src, e.dst, key=(e.src_port, e.dst_port), edge=e)
        return graph

    def check_cycles(self, graph: nx.MultiDiGraph) -> None:
        forward = nx.DiGraph()
        forward.add_nodes_from(graph)
        forward.add_edges_from((e.src, e.dst) for e in self.edges if not e.feedback)
        for component in nx.strongly_connected_components(forward):
            sub = forward.subgraph(component)
            if len(component) == 1 and not sub.has_edge(*(2 * list(component))):
                continue
            start = min(component, key=list(self.nodes).index)
            cycle = nx.find_cycle(sub, source=start)
            names = [u for u, _ in cycle] + [cycle[0][0]]
            last_src, last_dst = cycle[-1]
            edge = next(e for e in self.edges if e.src == last_src and e.dst == last_dst and not e.feedback)
            index = self.graph.nodes[edge.dst].spec.inputs[edge.dst_port].from_
            ref_i = next((i for i, r in enumerate(index) if r.removeprefix("/").startswith(edge.src)), 0)
            self.add("cycle", f"these nodes form a loop: {' -> '.join(names)}",
                     self.ref_loc(edge.dst, edge.dst_port, ref_i), f"nodes.{edge.dst}.inputs.{edge.dst_port}",
                     f"if the loop is intended, mark one input on it `feedback: true` "
                     f"(e.g. {edge.dst}.inputs.{edge.dst_port})")

    def check_unused(self, graph: nx.MultiDiGraph) -> None:
        if self.issues.has_errors:
            return  # a broken node or reference may be the missing consumer: warn once it is fixed
        used = {(e.src, e.src_port) for e in self.edges}
        for name, node in self.nodes.items():
            if node.ports is None:
                continue
            for port in node.ports.outputs:
                out = node.entry.spec.outputs.get(port)
                if (name, port) in used or (out is not None and out.port is not None):
                    continue  # a fixed tcp port is for consumers outside the graph
                self.add("unused-output", f"output {port!r} of {name!r} goes nowhere",
                         self.key_loc(("nodes", name, "outputs", port), ("nodes", name)),
                         f"nodes.{name}.outputs.{port}",
                         f"connect it to an input, or give it a fixed tcp port for a consumer outside the graph "
                         f"(outputs: {{{port}: {{port: 5555}}}})",
                         severity="warning")

    # -------------------------------------------------------------- codecs, ports, cores

    def check_codecs(self) -> None:
        """Unknown codecs, and codecs that cannot carry the type (each output's codec is
        resolved: written, its class's, or ``defaults.codec``, spec/resolve.py)."""
        for name, node in self.nodes.items():
            if node.ports is None:
                continue
            for port, decl in node.ports.outputs.items():
                codec = node.entry.spec.outputs[port].codec
                assert codec is not None  # resolved
                source = node.entry.filled.get(f"outputs.{port}.codec")
                if source is None:
                    where = self.loc("nodes", name, "outputs", port, "codec")
                elif source == "uses":
                    where = self.loc("nodes", name, "uses")
                else:  # the defaults of the top file are located; an include's are not
                    where = (self.loc("defaults", "codec") if "/" not in name else None) \
                        or self.loc("nodes", name, key=True)
                from_defaults = source == "defaults.codec"
                path = f"nodes.{name}.outputs.{port}.codec"
                if codec not in codec_names():
                    # an unknown default codec is one mistake, however many outputs use it
                    self.add("unknown-codec", f"no codec {codec!r}", where,
                             "defaults.codec" if from_defaults else path, _choices(codec, codec_names(), "codecs"))
                    continue
                if not get_codec(codec).carries(decl.type):
                    fits = [c for c in codec_names() if get_codec(c).carries(decl.type) and c != "pickle"]
                    self.add("codec-type", f"codec {codec!r} cannot carry {describe_type(decl.type)} "
                             f"({name}.{port})", where, path,
                             f"set outputs.{port}.codec to {' or '.join(fits) or 'pickle'}")
                    continue
                if not get_codec(codec).network_safe and node.entry.spec.outputs[port].transport == "tcp":
                    self.add("codec-unsafe", f"codec {codec!r} may run code while decoding; it is "
                             "refused on tcp edges", where, path, "use msgpack or tensor on tcp edges")

    def check_tcp_ports(self) -> None:
        """Each fixed port belongs to one process: the outputs of one node (or of one group)
        may share it, and replica i of a node binds port + i."""
        taken: dict[int, tuple[str, str, Location | None]] = {}  # port -> (process, who, where)
        for name, node in self.nodes.items():
            for port, out in node.entry.spec.outputs.items():
                if out.port is None:
                    continue
                where = self.loc("nodes", name, "outputs", port, "port")
                path = f"nodes.{name}.outputs.{port}.port"
                for i, inst in enumerate(node.instances):  # replica i binds port + i
                    number = out.port + i
                    if number > 65535:
                        self.add("duplicate-port", f"replica {inst} would bind tcp port {number}, past 65535",
                                 where, path, "choose a lower port")
                        break
                    process = node.entry.spec.group or inst
                    if number in taken and taken[number][0] != process:
                        _, other, other_loc = taken[number]
                        also = f" (replica {inst} binds port + {i})" if i else ""
                        self.add("duplicate-port", f"tcp port {number} is also bound by {other}"
                                 + (f" ({other_loc})" if other_loc else "") + also, where, path,
                                 "give each process its own ports (a node's replicas take consecutive ports; "
                                 "outputs of one node or one group may share a port)")
                        break
                    taken.setdefault(number, (process, inst if len(node.instances) > 1 else f"{name}.{port}", where))

    def check_delivery(self) -> None:
        for name, node in self.nodes.items():
            for port, inp in node.entry.spec.inputs.items():
                delivery, policy = inp.delivery, inp.policy
                if inp.block_timeout is not None and policy != "block" \
                        and f"inputs.{port}.block_timeout" not in node.entry.filled:
                    self.add("bad-policy", f"block_timeout on input {port!r}, whose policy is {policy!r}: only a "
                             "blocking edge waits", self.loc("nodes", name, "inputs", port, "block_timeout"),
                             f"nodes.{name}.inputs.{port}.block_timeout",
                             "set policy: block on this input, or remove block_timeout")
                if delivery == "at-least-once" and policy != "block":
                    written = f"inputs.{port}.delivery" not in node.entry.filled
                    where = self.loc("nodes", name, "inputs", port, "delivery") if written else \
                        self.loc("nodes", name, "inputs", port)
                    self.add("bad-delivery", f"at-least-once delivery needs policy block on input {port!r} "
                             f"(it is {policy!r}): only a blocking edge can hold what it sent", where,
                             f"nodes.{name}.inputs.{port}.delivery", "set policy: block on this input")
                if delivery != "at-least-once":
                    continue
                for e in self.edges:  # a fixed port carries its edges as one stream: nothing is kept to resend
                    if e.dst != name or e.dst_port != port:
                        continue
                    producer = self.nodes[e.src]
                    fixed = producer.entry.spec.outputs.get(e.src_port)
                    group = producer.entry.spec.group
                    if fixed is None or fixed.port is None or (group and group == node.entry.spec.group) \
                            or fixed.transport != "tcp":
                        continue
                    self.add("bad-delivery", f"at-least-once delivery on input {port!r}: its producer "
                             f"{e.src}.{e.src_port} has a fixed port ({fixed.port}), whose stream is at most once",
                             self.loc("nodes", name, "inputs", port), f"nodes.{name}.inputs.{port}.delivery",
                             f"drop `port:` from {e.src}'s output {e.src_port!r}, or use delivery: at-most-once")

    def check_security(self) -> SecurityPlan:
        """CURVE's key directory, and binds beyond loopback: those need CURVE or an explicit
        ``security.insecure``."""
        sec = self.graph.security
        curve_dir: str | None = None
        key = sec.key
        if sec.curve is not None:
            directory = (self.graph.base_dir / sec.curve).resolve()
            key, problems = check_key_dir(directory, sec.key, _display(directory))
            for problem in problems:
                self.add("bad-key", problem, self.loc("security", "curve"), "security.curve",
                         f"`dmnflow keys generate {sec.curve}` writes a keypair (its secret file mode 0600)")
            curve_dir = str(directory)
        if sec.curve is None and not sec.insecure:
            for name, node in self.nodes.items():
                for port in (node.ports.outputs if node.ports else {}):
                    out = node.entry.spec.outputs[port]
                    if out.transport != "tcp":
                        continue
                    host = out.host
                    assert host is not None  # resolved
                    if not _loopback(host):
                        written = f"outputs.{port}.host" not in node.entry.filled
                        where = self.loc("nodes", name, "outputs", port, "host") if written else \
                            self.loc("defaults", "host")
                        self.add("insecure-bind", f"{name}.{port} would bind tcp on {host} without CURVE: any "
                                 "host that reaches it could read the stream and send it frames", where,
                                 f"nodes.{name}.outputs.{port}.host" if written else "defaults.host",
                                 "add `security: {curve: keys/}` (dmnflow keys generate keys/), bind 127.0.0.1, "
                                 "or say `security: {insecure: true}` if the network is yours alone")
        # no key directory: tcp edges get CURVE with a keypair the launch makes for the run, so a
        # local peer that binds a port a killed producer freed fails the handshake
        run_keys = curve_dir is None and not sec.insecure and zmq.has("curve") and any(
            node.entry.spec.outputs[port].transport == "tcp" for node in self.nodes.values()
            for port in (node.ports.outputs if node.ports else {}))
        return SecurityPlan(curve=curve_dir, key=key or None, insecure=sec.insecure, run_keys=run_keys)

    def check_drivers(self) -> None:
        """A graph whose data nothing starts ends at once, having sent nothing: say so."""
        if self.issues.has_errors or not self.nodes or any(n.cls is None for n in self.nodes.values()):
            return
        forward = {e.dst for e in self.edges if not e.feedback}
        for node in self.nodes.values():
            spec = node.entry.spec
            if node.cls.is_source() or (spec.timers and node.entry.name not in forward):  # type: ignore[union-attr]
                return  # a source, or a node its timer drives (no input that ends it)
        first = next(iter(self.nodes))
        self.add("no-driver", "nothing sends the first message: the graph has no source (a node with `run`) "
                 "and no timer on a node without inputs that end it, so launched it sends nothing (its nodes "
                 "wait until it is stopped)",
                 self.key_loc(("nodes", first)), "nodes",
                 "add a source, or a timer on a node whose inputs are all `feedback: true` (it then runs until "
                 "the graph is stopped)", severity="warning")


def _display(path: Path) -> str:
    """A path as a person would type it: relative to the working directory when inside it."""
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _loopback(host: str) -> bool:
    """Whether a bind address stays on this machine (``localhost``, 127.0.0.0/8, ::1)."""
    if host in ("localhost", "::1", "[::1]"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # an interface name or a host name: not known to be local
