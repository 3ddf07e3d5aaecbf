"""Applying a plan to a copy of the model: real float16 (convert) or float16 rounding inside float32 (simulate)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ortforge.core.errors import UserError
from ortforge.core.model import Model
from ortforge.transforms.fp16.graph import _walk
from ortforge.transforms.fp16.options import FLOAT, FLOAT16
from ortforge.transforms.fp16.plan import Fp16Plan


@dataclass
class _Applied:
    proto: onnx.ModelProto
    casts: int = 0  # Cast nodes (convert) or round trips (simulate) added
    constants: int = 0  # initializers/Constants stored (or rounded) as float16
    copies: int = 0  # float16 copies of constants that float32 nodes also read


class _Surgery:
    """Applies a plan to a copy of the model: real float16 (convert) or float16 rounding in float32 (simulate)."""

    def __init__(self, model: Model, plan: Fp16Plan, simulate: bool) -> None:
        self.plan, self.simulate = plan, simulate
        self.base_dir = model.base_dir
        self.proto = onnx.ModelProto()
        self.proto.CopyFrom(model.proto)
        self.graphs = [graph for _, graph in _walk(self.proto.graph)]
        if [len(g.node) for g in self.graphs] != [len(n) for n in plan.node_names]:
            raise UserError(f"{model.name}: this fp16 plan was made for another model (its graphs differ)")
        for graph, names in zip(self.graphs, plan.node_names):
            for node, name in zip(graph.node, names):
                node.name = name
        self._index()
        self.inserts: dict[int, dict[int, list[onnx.NodeProto]]] = {}
        self.available: dict[tuple[str, bool], str] = {}
        self.result = _Applied(self.proto)

    def _index(self) -> None:
        self.defined: dict[str, tuple[int, int]] = {}  # value -> (graph, producer index or -1)
        self.initializers: dict[str, tuple[int, TensorProto]] = {}
        self.constant_nodes: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
        self.graph_outputs: dict[str, list[int]] = {}
        self.infos: dict[str, list[onnx.ValueInfoProto]] = {}
        self.taken: set[str] = set()
        for gi, graph in enumerate(self.graphs):
            for value in graph.input:
                self.defined.setdefault(value.name, (gi, -1))
            for tensor in graph.initializer:
                self.defined.setdefault(tensor.name, (gi, -1))
                self.initializers[tensor.name] = (gi, tensor)
            for info in (*graph.input, *graph.output, *graph.value_info):
                self.infos.setdefault(info.name, []).append(info)
                self.taken.add(info.name)
            for value in graph.output:
                self.graph_outputs.setdefault(value.name, []).append(gi)
            for ni, node in enumerate(graph.node):
                self.taken.update((node.name, *node.input, *node.output))
                for value in node.output:
                    self.defined[value] = (gi, ni)
                for slot, value in enumerate(node.input):
                    if value:
                        self.consumers.setdefault(value, []).append((node, slot))
                if node.op_type == "Constant" and node.output and node.output[0] in self.plan.constants:
                    self.constant_nodes[node.output[0]] = node
        self.taken.update(self.initializers)
        self.graph_inputs = {value.name for graph in self.graphs for value in graph.input}

    # -- precision bookkeeping

    def wants_fp16(self, node: onnx.NodeProto, slot: int) -> bool:
        decision = self.plan.decisions.get(node.name)
        return decision is not None and decision.fp16 and slot in decision.inputs

    def run(self) -> _Applied:
        produced = {node.output[s] for graph in self.graphs for node in graph.node
                    for s in self._fp16_outputs(node) if node.output[s]}
        for value in sorted(produced, key=self._order):
            self._fp16_value(value)
        self._boundary_inputs()
        self._constants_in_place()
        for value, uses in self.consumers.items():
            for node, slot in uses:
                node.input[slot] = self._name_at(value, self.wants_fp16(node, slot))
        self._insert()
        return self.result

    def _name_at(self, value: str, fp16: bool) -> str:
        """The name to read `value` by at this precision; creates a Cast/copy/round trip when needed."""
        if (value, fp16) in self.available:
            return self.available[(value, fp16)]
        if not fp16 and (value, True) not in self.available:
            return value  # never made float16: its own name has its original type
        return self._variant(value, fp16)

    def _fp16_outputs(self, node: onnx.NodeProto) -> tuple[int, ...]:
        decision = self.plan.decisions.get(node.name)
        return decision.outputs if decision is not None and decision.fp16 else ()

    def _order(self, value: str) -> tuple[int, int]:
        return self.defined.get(value, (0, -1))

    def _keeps_type(self, value: str) -> bool:
        """Whether a graph output named `value` must keep its dtype (subgraph outputs always do)."""
        graphs = self.graph_outputs.get(value, [])
        return any(gi != 0 or self.plan.options.keep_io_types for gi in graphs)

    def _fp16_value(self, value: str) -> None:
        """A float16 node's output: float16 under its name, or renamed when the name must stay float32."""
        gi, ni = self.defined[value]
        producer = self.graphs[gi].node[ni]
        if self.simulate or self._keeps_type(value):
            raw = self._fresh(f"{value}__fp16")
            producer.output[list(producer.output).index(value)] = raw
            if self.simulate:
                self._round_trip(raw, value, gi, ni)
                self.available[(value, True)] = self.available[(value, False)] = value
            else:
                self._add(gi, ni, self._cast(raw, value, FLOAT))
                self.available[(value, True)], self.available[(value, False)] = raw, value
            return
        self.available[(value, True)] = value
        self._retype(value, FLOAT16)

    def _boundary_inputs(self) -> None:
        """Without keep_io_types, main-graph float inputs read by float16 nodes become float16."""
        if self.plan.options.keep_io_types:
            return
        for value in self.graphs[0].input:
            if self.plan.types.get(value.name) != FLOAT or value.name in self.initializers:
                continue
            if not any(self.wants_fp16(node, slot) for node, slot in self.consumers.get(value.name, [])):
                continue
            if self.simulate:
                rounded = self._fresh(f"{value.name}__fp16")
                self._round_trip(value.name, rounded, 0, -1)
                self.available[(value.name, True)] = self.available[(value.name, False)] = rounded
            else:
                self._retype(value.name, FLOAT16)
                self.available[(value.name, True)] = value.name

    def _constants_in_place(self) -> None:
        """Constants read only by float16 slots are stored as float16 (rounded in place when simulating)."""
        for value in list(self.initializers) + list(self.constant_nodes):
            uses = self.consumers.get(value, [])
            if self.plan.types.get(value) != FLOAT or not uses or value in self.graph_outputs or value in self.graph_inputs:
                continue
            if not all(self.wants_fp16(node, slot) for node, slot in uses):
                continue
            tensor = self._tensor(value)
            tensor.CopyFrom(self._converted(value, tensor.name))
            self.result.constants += 1
            self.available[(value, True)] = value
            if self.simulate:
                self.available[(value, False)] = value
            else:
                self._retype(value, FLOAT16)

    def _tensor(self, value: str) -> TensorProto:
        if value in self.initializers:
            return self.initializers[value][1]
        return next(a.t for a in self.constant_nodes[value].attribute if a.name == "value")

    def _converted(self, value: str, name: str) -> TensorProto:
        """The constant as float16 (convert) or rounded through float16 (simulate), cached in the plan."""
        half = self.plan.constants.float16(value)
        return numpy_helper.from_array(half.astype(np.float32) if self.simulate else half, name)

    def _variant(self, value: str, fp16: bool) -> str:
        """A name holding `value` at the other precision: a constant copy, a Cast, or a round trip."""
        gi, ni = self.defined.get(value, (0, -1))
        if fp16 and value in self.initializers and value not in self.graph_inputs:
            name = self._fresh(f"{value}__fp16")
            self.graphs[self.initializers[value][0]].initializer.append(self._converted(value, name))
            self.result.copies += 1
        elif self.simulate:
            name = self._fresh(f"{value}__fp16")
            self._round_trip(value, name, gi, ni)
        else:
            name = self._fresh(f"{value}__fp16" if fp16 else f"{value}__fp32")
            self._add(gi, ni, self._cast(value, name, FLOAT16 if fp16 else FLOAT))
        self.available[(value, fp16)] = name
        if self.simulate:
            self.available[(value, not fp16)] = self.available.get((value, not fp16), value)
        return name

    # -- emitting

    def _cast(self, source: str, target: str, to: int) -> onnx.NodeProto:
        self.result.casts += 1
        return helper.make_node("Cast", [source], [target], name=self._fresh(f"{target}__cast"), to=to)

    def _round_trip(self, source: str, target: str, gi: int, ni: int) -> None:
        """target = float32(float16(source)): the rounding a float16 tensor would get, in a float32 graph."""
        middle = self._fresh(f"{target}__half")
        self._add(gi, ni, helper.make_node("Cast", [source], [middle], name=self._fresh(f"{middle}__cast"), to=FLOAT16))
        self._add(gi, ni, helper.make_node("Cast", [middle], [target], name=self._fresh(f"{target}__cast"), to=FLOAT))
        self.result.casts += 1

    def _add(self, gi: int, after: int, node: onnx.NodeProto) -> None:
        self.inserts.setdefault(gi, {}).setdefault(after, []).append(node)

    def _insert(self) -> None:
        """Put the new nodes in place, one rebuild per graph, subgraphs first.

        Graphs are in depth-first order, so going backwards edits every subgraph before the graph that
        holds it copies it along with its nodes.
        """
        for gi in sorted(self.inserts, reverse=True):
            graph, by_position = self.graphs[gi], self.inserts[gi]
            nodes = list(by_position.get(-1, []))
            for index, node in enumerate(graph.node):
                nodes.append(node)
                nodes.extend(by_position.get(index, []))
            del graph.node[:]
            graph.node.extend(nodes)

    def _retype(self, value: str, elem: int) -> None:
        for info in self.infos.get(value, []):
            if info.type.HasField("tensor_type"):
                info.type.tensor_type.elem_type = elem

    def _fresh(self, base: str) -> str:
        name, index = base, 0
        while name in self.taken:
            index += 1
            name = f"{base}_{index}"
        self.taken.add(name)
        return name
