"""What calibration gives back: per-tensor ranges, the final histograms, and their form for ORT."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

# mse ranges reach ORT as plain ranges, as minmax's do.
_ORT_METHOD_NAMES = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile", "distribution": "Distribution", "mse": "MinMax"}


@dataclass
class Histogram:
    """A final histogram as ORT builds it: int64 counts and float32 edges, plus the data's extremes."""

    counts: np.ndarray
    edges: np.ndarray
    low: float  # smallest raw (signed) value seen: ORT clamps thresholds to it
    high: float


@dataclass
class CalibrationResult:
    """Per-tensor (low, high) ranges, and what ORT's quantizers need to use them."""

    ranges: dict[str, tuple[float, float]]
    method: str
    samples: int
    notes: list[str] = field(default_factory=list)
    histograms: dict[str, Histogram] = field(default_factory=dict)  # histogram methods only
    moments: dict[str, tuple[float, float]] = field(default_factory=dict)  # distribution: (avg, std)

    def to_tensors_data(self) -> Any:
        """The ranges as ORT's `TensorsData`: what `QDQQuantizer` / `ONNXQuantizer` take as `tensors_range`.

        A fresh object each call: ORT's quantizers overwrite entries (Relu/Clip inputs, Softmax).
        """
        from onnxruntime.quantization.calibrate import (
            CalibrationMethod,
            TensorData,
            TensorsData,
        )

        data = {}
        for name, (low, high) in self.ranges.items():
            values: dict[str, Any] = {"lowest": np.array(low, np.float32), "highest": np.array(high, np.float32)}
            histogram = self.histograms.get(name)
            if self.method == "distribution" and histogram is not None:
                avg, std = self.moments[name]
                values.update(avg=np.array(avg, np.float32), std=np.array(std, np.float32))
                values.update(hist=histogram.counts, hist_edges=histogram.edges)
            elif histogram is not None and self.method != "mse":
                values.update(hist=histogram.counts, bins=histogram.edges)
            data[name] = TensorData(**values)
        return TensorsData(CalibrationMethod[_ORT_METHOD_NAMES[self.method]], data)

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "samples": self.samples,
            "tensors": len(self.ranges),
            "ranges": {name: list(pair) for name, pair in self.ranges.items()},
            "notes": self.notes,
        }
