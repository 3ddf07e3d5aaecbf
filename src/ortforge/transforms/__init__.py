"""Transforms: plain functions `model, options -> TransformResult`; they never print or write files.

Each transform returns the new model and a record of what changed; `ortforge.verify` checks the
result against the original before anything is saved.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import onnx

from ortforge.core.model import iter_nodes


@dataclass
class TransformResult:
    """A transformed model and what the transform did to it."""

    proto: onnx.ModelProto
    changed: bool
    changes: list[str] = field(default_factory=list)  # one line per kind of change, for the user
    notes: list[str] = field(default_factory=list)  # warnings and decisions worth showing
    details: dict = field(default_factory=dict)  # machine-readable figures (fused-op counts, ...)

    def to_dict(self) -> dict:
        return {"changed": self.changed, "changes": self.changes, "notes": self.notes, "details": self.details}


def op_counts(proto: onnx.ModelProto) -> Counter:
    """Op type histogram over all graphs (domain-qualified outside ai.onnx)."""
    return Counter(node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}:{node.op_type}" for node in iter_nodes(proto))


def op_count_changes(before: onnx.ModelProto, after: onnx.ModelProto) -> dict[str, int]:
    """Op type -> change in count (only the op types whose count changed)."""
    old, new = op_counts(before), op_counts(after)
    return {op: new[op] - old[op] for op in sorted(set(old) | set(new)) if new[op] != old[op]}
