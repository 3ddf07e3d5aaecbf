"""Walking a model's graphs with scope: names resolve from the innermost enclosing graph outward, as in ONNX."""

from __future__ import annotations

from collections.abc import Iterator

import onnx
from onnx import helper

from ortforge.core.model import iter_graphs, iter_nodes


def _walk(graph: onnx.GraphProto, stack: tuple[onnx.GraphProto, ...] = ()) -> Iterator[tuple[onnx.NodeProto, tuple]]:
    """Every node with the graphs enclosing it, so names resolve the way ONNX scoping does."""
    stack = stack + (graph,)
    for node in graph.node:
        yield node, stack
        for attribute in node.attribute:
            subgraphs = [attribute.g] if attribute.HasField("g") else list(attribute.graphs)
            for subgraph in subgraphs:
                yield from _walk(subgraph, stack)


def _lookup(name: str, stack: tuple[onnx.GraphProto, ...]) -> tuple[onnx.TensorProto | None, onnx.GraphProto | None]:
    """The initializer `name` refers to from the innermost graph, or None when it is computed or an input."""
    for graph in reversed(stack):
        for tensor in graph.initializer:
            if tensor.name == name:
                return tensor, graph
        if any(value.name == name for value in graph.input) or any(name in node.output for node in graph.node):
            return None, None
    return None, None


def _is_graph_input(name: str, graph: onnx.GraphProto) -> bool:
    return any(value.name == name for value in graph.input)


def _taken_names(proto: onnx.ModelProto) -> set[str]:
    names = {node.name for node in iter_nodes(proto)}
    for graph in iter_graphs(proto.graph):
        names.update(tensor.name for tensor in graph.initializer)
        names.update(value.name for value in list(graph.input) + list(graph.output) + list(graph.value_info))
        for node in graph.node:
            names.update(node.input)
            names.update(node.output)
    return names


def _attributes(node: onnx.NodeProto) -> dict:
    return {attribute.name: helper.get_attribute_value(attribute) for attribute in node.attribute}
