"""Where nodes run: pins within this machine's cores, busy nodes sharing a core, and the
hosts of a group (one process, so one host)."""

from __future__ import annotations

from ..spec import format_cpus
from .state import _Compilation, _Node


class _Placement(_Compilation):
    """Checks of where each node's process runs."""

    def check_pins(self, node: _Node) -> None:
        cpus = node.entry.spec.cpus
        if cpus is None:
            return
        missing = [c for c in cpus if c not in self.cpus]
        if missing:
            name = node.entry.name
            self.add("pin-range", f"core{'s' * (len(missing) > 1)} {format_cpus(missing)} "
                     f"do{'es' * (len(missing) == 1)} not exist on this machine (cores: {format_cpus(self.cpus)})",
                     self.loc("nodes", name, "cpus"), f"nodes.{name}.cpus",
                     f"pin within {format_cpus(self.cpus)}, or move machine-specific pins into a profile "
                     "and select it with --profile")

    def check_hosts(self) -> None:
        """The nodes of one group run in one process, so on one host: they cannot name two."""
        hosts: dict[str, tuple[str, str]] = {}  # group -> (host, the node that named it first)
        for name, node in self.nodes.items():
            group, host = node.entry.spec.group, node.entry.spec.host
            if group is None or host is None:
                continue
            first = hosts.setdefault(group, (host, name))
            if first[0] != host:
                self.add("host-conflict", f"{name!r} is in group {group!r} with {first[1]!r}, which runs on host "
                         f"{first[0]!r}, but names host {host!r}", self.loc("nodes", name, "host"),
                         f"nodes.{name}.host", "a group is one process: give its nodes one host, or move this "
                         "node out of the group")

    def check_busy_cores(self) -> None:
        on_core: dict[int, list[str]] = {}
        for node in self.nodes.values():
            spec = node.entry.spec
            busy = spec.busy if spec.busy is not None else bool(node.cls and node.cls.busy)
            if busy and spec.cpus is not None and len(spec.cpus) == 1:
                on_core.setdefault(spec.cpus[0], []).extend(node.instances)
        for core, names in sorted(on_core.items()):
            if len(names) > 1:
                last = names[-1].split("[")[0]
                self.add("pin-shared", f"busy nodes {', '.join(names)} are all pinned to core {core}; "
                         "they will take turns on it", self.loc("nodes", last, "cpus"), f"nodes.{last}.cpus",
                         "pin busy nodes to different cores, or mark one `busy: false`", severity="warning")
