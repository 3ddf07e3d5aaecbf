"""Transforms: plain functions `model, options -> TransformResult`; they never print or write user files
(a result over 2 GB keeps its weights in a scratch folder, `TransformResult.data_dir`).

Each transform returns the new model and a record of what changed; `ortforge.verify` checks the
result against the original before anything is saved.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ortforge.core.model import EXTERNAL_DATA_THRESHOLD, Model, external_bytes, from_proto, iter_graphs, iter_nodes, save_model, weight_bytes
from ortforge.core.scratch import scratch_folder

SPILL_BYTES = 64 << 20  # a large model's transform results hold at most this much in memory


@dataclass
class TransformResult:
    """A transformed model and what the transform did to it."""

    proto: onnx.ModelProto
    changed: bool
    changes: list[str] = field(default_factory=list)  # one line per kind of change, for the user
    notes: list[str] = field(default_factory=list)  # warnings and decisions worth showing
    details: dict = field(default_factory=dict)  # machine-readable figures (fused-op counts, ...)
    data_dir: Path | None = None  # where the proto's external data lies, when the transform left its weights on disk (over 2 GB)

    def to_dict(self) -> dict:
        return {"changed": self.changed, "changes": self.changes, "notes": self.notes, "details": self.details}

    def as_model(self, original: Model) -> Model:
        """The transformed model, its external data resolved from this result's folder or else the original's."""
        self.to_disk_if_large(original)
        return from_proto(self.proto, base_dir=self.data_dir or original.base_dir)

    def to_disk_if_large(self, original: Model) -> None:
        """A result holding more than protobuf's 2 GB in memory (fp16 simulation, static QDQ of a large model) moves its
        weights to a scratch folder, which becomes `data_dir`: ORT could not be handed it otherwise. So does any result
        over SPILL_BYTES of a model over 2 GB, so that searches keeping many results, and checks that serialize one, stay small."""
        large = weight_bytes(original.proto) + external_bytes(original.proto) > EXTERNAL_DATA_THRESHOLD
        if self.data_dir is None and weight_bytes(self.proto) > (SPILL_BYTES if large else EXTERNAL_DATA_THRESHOLD):
            folder = scratch_folder("result")
            save_model(self.proto, folder / "model.onnx", external_data=True, data_dir=original.base_dir)
            # A fresh message: protobuf keeps a cleared field's memory until the message it belongs to is freed.
            self.proto, self.data_dir = onnx.load(str(folder / "model.onnx"), load_external_data=False), folder


def op_counts(proto: onnx.ModelProto) -> Counter:
    """Op type histogram over all graphs (domain-qualified outside ai.onnx)."""
    return Counter(node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}:{node.op_type}" for node in iter_nodes(proto))


def op_count_changes(before: onnx.ModelProto, after: onnx.ModelProto) -> dict[str, int]:
    """Op type -> change in count (only the op types whose count changed)."""
    old, new = op_counts(before), op_counts(after)
    return {op: new[op] - old[op] for op in sorted(set(old) | set(new)) if new[op] != old[op]}


def drop_unused_initializers(proto: onnx.ModelProto) -> None:
    """Remove the main graph's initializers no node or output reads (the constants a rewrite replaced with its own)."""
    read = {name for node in proto.graph.node for name in node.input} | {o.name for o in proto.graph.output}
    kept = [t for t in proto.graph.initializer if t.name in read]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(kept)


def drop_unread_constants(proto: onnx.ModelProto) -> None:
    """Remove the main graph's Constant nodes no node or output reads (a rewrite that replaced them with initializers)."""
    read = {name for node in proto.graph.node for name in node.input} | {o.name for o in proto.graph.output}
    unread = [n for n in proto.graph.node if n.op_type == "Constant" and n.domain in ("", "ai.onnx") and n.output[0] not in read]
    for node in unread:
        proto.graph.node.remove(node)


def initializer_array(proto: onnx.ModelProto, name: str) -> np.ndarray:
    """The main graph's initializer `name` as it stands now (rewrites replace them as they go, so no index is kept)."""
    return numpy_helper.to_array(next(t for t in proto.graph.initializer if t.name == name))


def drop_dead_nodes(proto: onnx.ModelProto) -> int:
    """Remove the main graph's nodes whose outputs nothing reads (what a rewrite left computing values it replaced), in
    one pass from the outputs back (the graph is in topological order); the number removed."""
    needed = {o.name for o in proto.graph.output}  # and whatever a subgraph reads from outside (kept whatever its holder)
    needed |= {name for graph in list(iter_graphs(proto.graph))[1:] for node in graph.node for name in node.input}
    kept = []
    for node in reversed(proto.graph.node):
        if any(name in needed for name in node.output):
            kept.append(node)
            needed.update(node.input)
    removed = len(proto.graph.node) - len(kept)
    if removed:
        kept.reverse()
        del proto.graph.node[:]
        proto.graph.node.extend(kept)
    return removed
