"""`plan_fp16` and the `Fp16Plan` it returns, with the island rule a plan re-applies when nodes are kept float32."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

import onnx

from ortforge.core.errors import UserError
from ortforge.core.model import Model, opset_versions
from ortforge.transforms.fp16.constants import _Constants
from ortforge.transforms.fp16.decide import _decide
from ortforge.transforms.fp16.graph import _unique_node_names, _walk
from ortforge.transforms.fp16.kernels import _kernel_source
from ortforge.transforms.fp16.options import FLOAT, ISOLATED, KEPT, WEIGHT_ELEMENTS, Fp16Options, NodeDecision, _as_fp32
from ortforge.transforms.fp16.types import _Context, _value_types


@dataclass
class Fp16Plan:
    """Per-node decisions for one model; apply it with `convert_fp16` or `simulate_fp16`."""

    options: Fp16Options
    decisions: dict[str, NodeDecision]  # float nodes only, in graph order
    node_names: list[list[str]]  # per graph (depth-first order), the name of each node (unnamed ones named)
    types: dict[str, int]  # value name -> element type in the original model
    notes: list[str] = field(default_factory=list)
    kernel_source: str = "registry"  # 'registry' (ORT asked) or 'schema' (ONNX schemas only)
    _wiring: _Wiring | None = field(default=None, repr=False)
    _constants: _Constants | None = field(default=None, repr=False)

    def fp16_nodes(self) -> list[str]:
        return [name for name, d in self.decisions.items() if d.fp16]

    def fp32_nodes(self) -> list[NodeDecision]:
        return [d for d in self.decisions.values() if not d.fp16]

    def with_fp32(self, names: Iterable[str], reason: str = "kept float32 by the caller", kind: str = KEPT) -> Fp16Plan:
        """A copy with these nodes float32 too (cheap: no re-analysis); islands are dropped again if enabled."""
        names = list(names)
        unknown = [name for name in names if name not in self.decisions]
        if unknown:
            raise UserError(f"no float node named '{unknown[0]}' in this plan", hint="see Fp16Plan.decisions for the names")
        decisions = dict(self.decisions)
        for name in names:
            if decisions[name].fp16:
                decisions[name] = _as_fp32(decisions[name], kind, reason)
        if self.options.drop_islands and self._wiring is not None and self._constants is not None:
            _drop_islands(decisions, self._wiring, self._constants, self.options)
        return replace(self, decisions=decisions, notes=list(self.notes))

    @property
    def constants(self) -> _Constants:
        if self._constants is None:
            raise UserError("this fp16 plan has no constant index: make it with plan_fp16")
        return self._constants

    def summary(self) -> dict:
        """Counts and the float32 nodes with their reasons, for reports."""
        fp32 = self.fp32_nodes()
        return {
            "provider": self.options.provider,
            "kernel_source": self.kernel_source,
            "fp16_nodes": len(self.decisions) - len(fp32),
            "fp32_nodes": len(fp32),
            "fp32_reasons": dict(Counter(d.kind for d in fp32)),
            "fp32": [d.to_dict() for d in fp32],
            "notes": list(self.notes),
        }


def plan_fp16(model: Model, options: Fp16Options | None = None) -> Fp16Plan:
    """Decide per float node: float16, or float32 with the reason. Reads the model, changes nothing."""
    options = options or Fp16Options()
    proto = model.proto
    walked = list(_walk(proto.graph))
    graphs = [graph for _, graph in walked]
    node_names = _unique_node_names(graphs)
    context = _Context(opset_versions(proto), list(proto.opset_import), {(f.domain, f.name) for f in proto.functions})
    types = _value_types(proto, context)
    constants = _Constants(graphs, model.base_dir)
    notes: list[str] = []
    kernel_source = _kernel_source(options, notes)
    decisions: dict[str, NodeDecision] = {}
    for (path, graph), names in zip(walked, node_names):
        for node, name in zip(graph.node, names):
            decision = _decide(node, name, path, types, constants, context, options, kernel_source)
            if decision is not None:
                decisions[name] = decision
    wiring = _wire(graphs, node_names, proto.graph, types, options)
    if options.drop_islands:
        _drop_islands(decisions, wiring, constants, options)
    _range_notes(options, graphs, notes)
    return Fp16Plan(options, decisions, node_names, types, notes, kernel_source, wiring, constants)


def _range_notes(options: Fp16Options, graphs: list[onnx.GraphProto], notes: list[str]) -> None:
    if options.activation_ranges is None:
        notes.append("activations were not measured: only constants were checked against float16's range")
    elif len(graphs) > 1:
        notes.append("activations inside If/Loop/Scan bodies cannot be measured; only their constants were range-checked")


@dataclass
class _Wiring:
    """Who produces and consumes each value at convertible slots, for the island rule."""

    produced: dict[str, tuple[str, int]]  # value -> (node, output slot)
    consumed: dict[str, list[tuple[str, int]]]  # value -> [(node, input slot)]
    fp16_boundaries: set[str]  # graph inputs/outputs that become float16 themselves (keep_io_types off)
    inputs_of: dict[str, tuple[str, ...]]  # node -> input value per slot
    outputs_of: dict[str, tuple[str, ...]]


def _wire(graphs: list[onnx.GraphProto], node_names: list[list[str]], main: onnx.GraphProto, types: dict[str, int], options: Fp16Options) -> _Wiring:
    produced: dict[str, tuple[str, int]] = {}
    consumed: dict[str, list[tuple[str, int]]] = {}
    inputs_of, outputs_of = {}, {}
    for graph, names in zip(graphs, node_names):
        for node, name in zip(graph.node, names):
            inputs_of[name], outputs_of[name] = tuple(node.input), tuple(node.output)
            for slot, value in enumerate(node.output):
                if value:
                    produced[value] = (name, slot)
            for slot, value in enumerate(node.input):
                if value:
                    consumed.setdefault(value, []).append((name, slot))
    boundaries = set()
    if not options.keep_io_types:
        boundaries = {v.name for v in (*main.input, *main.output) if types.get(v.name) == FLOAT}
    return _Wiring(produced, consumed, boundaries, inputs_of, outputs_of)


def _drop_islands(decisions: dict[str, NodeDecision], wiring: _Wiring, constants: _Constants, options: Fp16Options) -> None:
    """Make float32 every float16 node without a float16 neighbour or weight: its two Casts would cost more than it gains."""
    changed = True
    while changed:
        changed = False
        for name, decision in decisions.items():
            if decision.fp16 and not _has_fp16_neighbour(decision, decisions, wiring, constants):
                decisions[name] = _as_fp32(decision, ISOLATED, "isolated: no float16 neighbour or weight, its boundary Casts would cost more than float16 saves")
                changed = True


def _has_fp16_neighbour(decision: NodeDecision, decisions: dict[str, NodeDecision], wiring: _Wiring, constants: _Constants) -> bool:
    for slot in decision.inputs:
        value = wiring.inputs_of[decision.name][slot]
        if value in wiring.fp16_boundaries or constants.elements(value) >= WEIGHT_ELEMENTS:
            return True
        producer = wiring.produced.get(value)
        if producer and producer[0] in decisions and decisions[producer[0]].fp16 and producer[1] in decisions[producer[0]].outputs:
            return True
    for slot in decision.outputs:
        value = wiring.outputs_of[decision.name][slot]
        if value in wiring.fp16_boundaries:
            return True
        for consumer, consumer_slot in wiring.consumed.get(value, ()):
            other = decisions.get(consumer)
            if other is not None and other.fp16 and consumer_slot in other.inputs:
                return True
    return False
