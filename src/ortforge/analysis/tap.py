"""The one tensor tap: intermediate tensors of a model read back from ORT, in passes of bounded size.

Calibration (ranges of activations), quant-debug (float vs quantized activations) and MAC counting
(shapes that inference leaves open) all need values ORT computes inside a model. A tap session returns
the model's outputs plus the tensors asked for, or the outputs of small probe nodes reading them (a
ReduceMax instead of a whole feature map). The probes and outputs are added to the caller's proto only
while it is serialised, so the weights are never copied a second time in memory, and each probe sits
right after its producer, so with ORT's priority-based order a tapped tensor can be freed early.
Fetching every activation of a big CNN at once holds them all; `passes` cuts them into bounded groups.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import onnx
from onnx import helper

from ortforge.core import runtime
from ortforge.core.errors import UserError, first_line
from ortforge.core.model import Model, fresh_name
from ortforge.core.session import SessionConfig
from ortforge.core.values import ort_feed
from ortforge.data import Feed

UNOPTIMIZED = SessionConfig(graph_optimization_level="disable")  # tensors keep the names the graph gives them


def names_in_use(graph: onnx.GraphProto) -> set[str]:
    """Tensor and node names of the graph: added probes must not collide with either."""
    return {name for node in graph.node for name in (node.name, *node.input, *node.output)} | {value.name for value in graph.input}


def tap_session(model: Model, tensors: Sequence[str], config: SessionConfig = UNOPTIMIZED, *, probes: Sequence[onnx.NodeProto] = (),
                purpose: str = "tap") -> Any:  # fmt: skip
    """A session over `model` that also returns `tensors` (intermediate tensors or probe outputs), with `probes` added.

    Created from bytes (no files written); the caller's proto is unchanged afterwards.
    """
    graph = model.proto.graph
    present = {value.name for value in graph.output}
    extra = [helper.make_empty_tensor_value_info(name) for name in dict.fromkeys(tensors) if name not in present]
    output_count = len(graph.output)
    added = _insert_after_producers(graph, list(probes))
    graph.output.extend(extra)
    order = _constants_before_consumers(graph)
    _permute(graph.node, order)
    try:
        tapped = Model(proto=model.proto, data_dir=model.base_dir, changes=[f"{purpose} outputs added"])
        source, entries = tapped.ort_source()
    finally:
        _permute(graph.node, sorted(range(len(order)), key=order.__getitem__))
        del graph.output[output_count:]
        for index in reversed(range(len(graph.node))):
            if graph.node[index].name in added:
                del graph.node[index]
    return _session(config, source, entries, f"{model.name}: onnxruntime could not create the {purpose} session")


def _session(config: SessionConfig, source: bytes | str, entries: dict[str, str], failure: str) -> Any:
    """Like `SessionConfig.create`, with ORT's priority-based node order (SessionConfig has no field for it).

    The default order runs probes late, keeping every probed tensor alive at once: 2.8 GB instead of
    0.34 GB for MinMax calibration of PP-OCR det.
    """
    ort = runtime.ort()
    options = config.session_options(entries)
    options.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    config.check_providers()
    try:
        return ort.InferenceSession(source, options, providers=config.provider_names, provider_options=[p.options for p in config.providers])
    except Exception as exc:  # ORT raises its own exception types per failure kind
        raise UserError(f"{failure}: {first_line(exc)}") from None


def _insert_after_producers(graph: onnx.GraphProto, nodes: list[onnx.NodeProto]) -> set[str]:
    """Put each probe right after the node producing its input; returns the probes' names.

    With the priority-based order ORT keeps to this order: a probe left at the end would keep every
    tensor it reads alive until then (all of them at once); right after its producer, it can go.
    """
    by_input: dict[str, list[onnx.NodeProto]] = {}
    for node in nodes:
        by_input.setdefault(node.input[0], []).append(node)
    placements = []
    for index, node in enumerate(graph.node):
        after = [probe for output in node.output for probe in by_input.pop(output, [])]
        if after:
            placements.append((index + 1, after))
    leftovers = [probe for probes in by_input.values() for probe in probes]  # produced nowhere: graph inputs
    for index, probes in reversed([(0, leftovers), *placements]):
        for offset, probe in enumerate(probes):
            graph.node.insert(index + offset, probe)
    return {node.name for node in nodes}


def _constants_before_consumers(graph: onnx.GraphProto) -> list[int]:
    """Node indices in an order where each node computing from initializers alone comes right before its first consumer.

    Quantizers put every weight's DequantizeLinear first; unoptimized, ORT then dequantizes all weights before the
    first MatMul and holds them at once (5.1 GB for a 2.4 GB int8 model instead of one 256 MiB weight at a time)."""
    constant = {t.name for t in graph.initializer} - {i.name for i in graph.input}
    producer: dict[str, int] = {}
    constant_nodes: set[int] = set()
    for index, node in enumerate(graph.node):
        if all(name in constant for name in node.input if name) and not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            constant_nodes.add(index)
            constant.update(node.output)
        producer.update((name, index) for name in node.output)
    order: list[int] = []
    placed: set[int] = set()

    def place(index: int) -> None:
        if index in placed:
            return
        placed.add(index)
        for name in graph.node[index].input:  # a constant node's own constant inputs first
            if name in producer and producer[name] in constant_nodes:
                place(producer[name])
        order.append(index)

    for index in range(len(graph.node)):
        if index not in constant_nodes:
            for name in graph.node[index].input:
                if name in producer and producer[name] in constant_nodes:
                    place(producer[name])
            place(index)
    order.extend(index for index in sorted(constant_nodes) if index not in placed)  # consumed by no node: graph outputs
    return order


def _permute(nodes: Any, order: list[int]) -> None:
    """Reorder a repeated node field in place so that position k holds the node that was at `order[k]`."""
    if order == sorted(order):
        return
    rank = {index: position for position, index in enumerate(order)}
    positions = iter(range(len(order)))
    nodes.sort(key=lambda _node: rank[next(positions)])  # the key is called once per node, in the current order


def element_counts(model: Model, tensors: Sequence[str], feed: Feed, config: SessionConfig = UNOPTIMIZED) -> dict[str, int]:
    """Elements of each intermediate tensor for `feed`, from one run that returns only counts (`Size` probes)."""
    taken = names_in_use(model.proto.graph)
    counters = {name: fresh_name(f"{name}__ortforge_size", taken) for name in tensors}
    probes = [helper.make_node("Size", [name], [counter], name=counter) for name, counter in counters.items()]
    session = tap_session(model, list(counters.values()), config, probes=probes, purpose="size")
    return {name: int(count) for name, count in zip(counters, session.run(list(counters.values()), ort_feed(feed)))}


def passes(tensors: Sequence[str], sizes: Mapping[str, int], budget: int) -> list[list[str]]:
    """`tensors`, in order, cut into passes whose bytes (`sizes`) stay within `budget`; a bigger tensor gets a pass of its own."""
    cut: list[list[str]] = [[]]
    held = 0
    for name in tensors:
        size = sizes.get(name, budget)  # unknown: assume a big one
        if cut[-1] and held + size > budget:
            cut.append([])
            held = 0
        cut[-1].append(name)
        held += size
    return cut if cut[0] else []
