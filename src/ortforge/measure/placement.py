"""Which execution provider runs which node, as ORT recorded it while partitioning the graph."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ortforge.core.errors import first_line
from ortforge.core.session import CPU

RECORD_ASSIGNMENT = "session.record_ep_graph_assignment_info"


@dataclass
class AssignedNode:
    name: str
    op_type: str
    domain: str = ""


@dataclass
class Placement:
    """Node -> EP assignment of one session (after ORT's graph optimizations)."""

    requested: list[str]
    nodes_by_provider: dict[str, list[AssignedNode]] = field(default_factory=dict)
    error: str | None = None

    @property
    def counts(self) -> dict[str, int]:
        return {provider: len(nodes) for provider, nodes in self.nodes_by_provider.items()}

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def cpu_fallback(self) -> list[AssignedNode]:
        """Nodes left to the CPU EP although another EP was asked for first."""
        if not self.requested or self.requested[0] == CPU:
            return []
        return self.nodes_by_provider.get(CPU, [])

    def to_dict(self) -> dict:
        return {
            "requested": self.requested,
            "counts": self.counts,
            "cpu_fallback": [node.__dict__ for node in self.cpu_fallback],
            "error": self.error,
        }


def placement_from_session(session: Any, requested: list[str]) -> Placement | None:
    """Read the assignment from a session created with RECORD_ASSIGNMENT=1 (ORT >= 1.31), else None."""
    if not hasattr(session, "get_provider_graph_assignment_info"):
        return None
    try:
        subgraphs = session.get_provider_graph_assignment_info()
    except Exception as exc:  # ORT raises when the entry was not set
        return Placement(requested, error=first_line(exc))
    placement = Placement(requested)
    for subgraph in subgraphs:
        nodes = placement.nodes_by_provider.setdefault(subgraph.ep_name, [])
        nodes.extend(AssignedNode(node.name, node.op_type, node.domain) for node in subgraph.get_nodes())
    return placement



def placement_for(model: Any, provider: str, graph_optimization_level: str = "all") -> Placement:
    """Create a session asking for `provider` first (CPU as fallback) and read its node assignment."""
    from ortforge.core.errors import UserError
    from ortforge.core.session import ProviderSpec, SessionConfig

    providers = [provider] if provider == CPU else [provider, CPU]
    config = SessionConfig(providers=[ProviderSpec(p) for p in providers], graph_optimization_level=graph_optimization_level)
    try:
        session = config.build(model, extra_entries={RECORD_ASSIGNMENT: "1"})
    except UserError as exc:
        return Placement(providers, error=str(exc))
    return placement_from_session(session, providers) or Placement(providers, error="this onnxruntime cannot report placement (needs 1.31+)")
