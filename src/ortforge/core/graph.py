"""One read-only index over a model's graph and its subgraphs: producers, consumers, constants, scopes.

Pattern matchers (attention, norms, embedding tables), MAC counting and the shape fallback all ask the
same questions of a graph; building one index answers them the same way everywhere. It works on the
protos the rest of ortforge holds (no conversion) and never reads a large or external weight: dims come
from the TensorProto, values only for small inline constants.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import helper, numpy_helper

# Elements: shape, axis and scale constants are tiny; anything bigger is a weight, never read as a value.
SMALL_CONSTANT = 64
# Identity hops followed to a constant: TorchScript turns shared weights into Identity nodes.
IDENTITY_HOPS = 4


def is_default_domain(node: onnx.NodeProto) -> bool:
    """Whether the node is an ONNX op (domain '' or 'ai.onnx')."""
    return node.domain in ("", "ai.onnx")


def attributes(node: onnx.NodeProto) -> dict:
    """The node's attributes as Python values, by name."""
    return {attribute.name: helper.get_attribute_value(attribute) for attribute in node.attribute}


def subgraphs(node: onnx.NodeProto) -> list[tuple[str, onnx.GraphProto]]:
    """The graphs a node holds, named by attribute ('then_branch', 'body', 'branches[1]')."""
    found = []
    for attribute in node.attribute:
        if attribute.HasField("g"):
            found.append((attribute.name, attribute.g))
        found.extend((f"{attribute.name}[{index}]", graph) for index, graph in enumerate(attribute.graphs))
    return found


def constant_node_tensor(node: onnx.NodeProto) -> onnx.TensorProto | None:
    """The tensor an ONNX Constant node holds (numbers given as value_float(s)/value_int(s) made tensors);
    None for other nodes and for sparse_value / value_string(s) constants."""
    if node.op_type != "Constant" or not is_default_domain(node) or not node.output:
        return None
    for attribute in node.attribute:
        if attribute.name == "value" and attribute.HasField("t"):
            return attribute.t
        if attribute.name in ("value_float", "value_floats"):
            values = attribute.f if attribute.name == "value_float" else list(attribute.floats)
            return numpy_helper.from_array(np.array(values, np.float32))
        if attribute.name in ("value_int", "value_ints"):
            values = attribute.i if attribute.name == "value_int" else list(attribute.ints)
            return numpy_helper.from_array(np.array(values, np.int64))
    return None


class GraphIndex:
    """Producer, consumers and constants of every value, over the main graph and all subgraphs.

    Names are unique across scopes in a valid model (ONNX's SSA rule spans subgraphs), so one map per
    question serves every scope; a subgraph node reading an outer value is one of that value's consumers.
    `graphs` and `nodes` follow `core.model.iter_graphs` order (the main graph's nodes first). Maps keyed
    by id() hold because the index keeps every graph and node object alive: protobuf (upb) hands out a new
    wrapper, with a new id, for a message nobody holds.
    """

    def __init__(self, proto: onnx.ModelProto) -> None:
        self.proto = proto
        self.graph = proto.graph
        self.graphs: list[onnx.GraphProto] = []
        self.nodes: list[onnx.NodeProto] = []
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        # Initializers and Constant-node tensors, by the name they are read under.
        self.tensors: dict[str, onnx.TensorProto] = {}
        # id(subgraph) -> (the graph holding it, the control-flow node holding it)
        self.parents: dict[int, tuple[onnx.GraphProto, onnx.NodeProto]] = {}
        self._holder: dict[int, onnx.NodeProto] = {}  # id(node) -> the node whose subgraph holds it
        self._add_graph(proto.graph, None)
        initializers = {tensor.name for tensor in self.graph.initializer}
        # Real inputs of the main graph (IR < 4 lists initializers as inputs too).
        self.inputs = {value.name: value for value in self.graph.input if value.name not in initializers}

    def _add_graph(self, graph: onnx.GraphProto, holder: onnx.NodeProto | None) -> None:
        self.graphs.append(graph)
        for tensor in graph.initializer:
            self.tensors[tensor.name] = tensor
        for node in graph.node:
            self.nodes.append(node)
            if holder is not None:
                self._holder[id(node)] = holder
            for name in node.output:
                self.producer[name] = node
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
            tensor = constant_node_tensor(node)
            if tensor is not None:
                self.tensors[node.output[0]] = tensor
        # Subgraphs after the whole scope, as iter_graphs visits them.
        for node in graph.node:
            for _, subgraph in subgraphs(node):
                self.parents[id(subgraph)] = (graph, node)
                self._add_graph(subgraph, node)

    # --- constants ------------------------------------------------------------------------------

    def is_constant(self, name: str) -> bool:
        """An initializer or a Constant node's output (sparse and string constants included)."""
        if name in self.tensors:
            return True
        node = self.producer.get(name)
        return node is not None and node.op_type == "Constant" and is_default_domain(node)

    def constant(self, name: str) -> onnx.TensorProto | None:
        """The tensor behind a name, through Identity nodes; None for activations."""
        for _ in range(IDENTITY_HOPS):
            if name in self.tensors:
                return self.tensors[name]
            node = self.producer.get(name)
            if node is None or node.op_type != "Identity" or not node.input:
                return None
            name = node.input[0]
        return None

    def dims(self, name: str) -> tuple[int, ...] | None:
        """A constant's dims (from the proto: weights are not read); None for activations."""
        tensor = self.constant(name)
        return tuple(tensor.dims) if tensor is not None else None

    def value(self, name: str) -> np.ndarray | None:
        """A small inline constant's value; None for activations, large or external tensors."""
        tensor = self.constant(name)
        if tensor is None or tensor.data_location == onnx.TensorProto.EXTERNAL:
            return None
        if math.prod(tensor.dims) > SMALL_CONSTANT:
            return None
        return numpy_helper.to_array(tensor)

    def scalar(self, name: str) -> float | None:
        """A one-element constant as a float."""
        value = self.value(name)
        return float(value.reshape(-1)[0]) if value is not None and value.size == 1 else None

    # --- structure ------------------------------------------------------------------------------

    def parent(self, node: onnx.NodeProto, index: int) -> onnx.NodeProto | None:
        """The producer of the node's input `index` (None for graph inputs, constants or absent inputs)."""
        return self.producer.get(node.input[index]) if len(node.input) > index else None

    def holder(self, node: onnx.NodeProto) -> onnx.NodeProto | None:
        """The If/Loop/Scan node whose subgraph holds `node` directly; None in the main graph."""
        return self._holder.get(id(node))

    def container(self, node: onnx.NodeProto) -> str:
        """Op type of the outermost control-flow node holding `node`; '' in the main graph."""
        outermost = None
        holder = self.holder(node)
        while holder is not None:
            outermost, holder = holder, self.holder(holder)
        return outermost.op_type if outermost is not None else ""
