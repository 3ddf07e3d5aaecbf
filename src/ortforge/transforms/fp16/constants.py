"""Initializers and Constant-node tensors: peak |value| and float16 copies, each computed once per plan."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper


class _Constants:
    """Initializers and Constant-node tensors, by value name, with their peak |value| computed on demand."""

    def __init__(self, graphs: list[onnx.GraphProto], base_dir: Path | None) -> None:
        self.base_dir = base_dir
        self.tensors: dict[str, TensorProto] = {}
        for graph in graphs:
            for tensor in graph.initializer:
                self.tensors[tensor.name] = tensor
            for node in graph.node:
                if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.output:
                    value = next((a.t for a in node.attribute if a.name == "value" and a.HasField("t")), None)
                    if value is not None:
                        self.tensors[node.output[0]] = value
        self._peaks: dict[str, float] = {}
        self._halves: dict[str, np.ndarray] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def elements(self, name: str) -> int:
        return int(np.prod(self.tensors[name].dims)) if name in self.tensors else 0

    def peak(self, name: str) -> float:
        """Largest finite |value| of a constant (infinities and NaN exist in float16 too, so they do not count)."""
        if name not in self._peaks:
            array = self.array(name)
            self._peaks[name] = _finite_peak(array) if array.dtype.kind == "f" else 0.0
        return self._peaks[name]

    def array(self, name: str) -> np.ndarray:
        return numpy_helper.to_array(self.tensors[name], str(self.base_dir) if self.base_dir else "")

    def float16(self, name: str) -> np.ndarray:
        """The constant as float16, kept: a search applying many plans converts each weight once."""
        if name not in self._halves:
            self._halves[name] = self.array(name).astype(np.float16)
        return self._halves[name]


def _finite_peak(array: np.ndarray) -> float:
    finite = array[np.isfinite(array)]
    return float(np.abs(finite).max()) if finite.size else 0.0
