"""Walking a model's graphs: subgraphs in depth-first order, and one unique name per node."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import onnx

from ortforge.core.graph import subgraphs


def _walk(graph: onnx.GraphProto, path: str = "main") -> Iterator[tuple[str, onnx.GraphProto]]:
    """(path, graph) for the graph and its subgraphs, in `model.iter_graphs` order."""
    yield path, graph
    for node in graph.node:
        for attribute, subgraph in subgraphs(node):
            yield from _walk(subgraph, f"{path}/{node.name or node.op_type}:{attribute}")


def _unique_node_names(graphs: list[onnx.GraphProto]) -> list[list[str]]:
    """Each node's name, with unnamed and duplicate-named nodes given fresh unique names."""
    taken = {node.name for graph in graphs for node in graph.node if node.name}
    seen: set[str] = set()
    counters: Counter = Counter()
    names = []
    for graph in graphs:
        per_graph = []
        for node in graph.node:
            name = node.name
            if not name or name in seen:
                base = name or node.op_type
                while f"{base}_{counters[base]}" in taken:
                    counters[base] += 1
                name = f"{base}_{counters[base]}"
                taken.add(name)
            seen.add(name)
            per_graph.append(name)
        names.append(per_graph)
    return names
