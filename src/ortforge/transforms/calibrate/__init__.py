"""Calibration for static quantization in memory that does not grow with the number of samples.

ORT's histogram calibrators keep every intermediate output of every sample until the end, then
build one histogram per tensor over all of it: gigabytes for a CNN and a few dozen images. Here
each sample is run once, folded into per-tensor running min/max or a fixed-size streaming histogram,
and dropped. The histograms' ranges are then computed by ORT's own code (KL-divergence threshold,
percentile, distribution), so they agree with ORT's on the same data to within one histogram bin,
and `CalibrationResult.to_tensors_data()` hands them to ORT's quantizers in place of its calibrator
(`ortforge.transforms.ort_quantizer.quantize_with_ranges`).

| module | holds |
|---|---|
| `options.py` | `CalibrationOptions`, the methods and ORT's defaults for each |
| `result.py` | `CalibrationResult`, `Histogram`, and their form for ORT (`TensorsData`) |
| `collectors.py` | `RunningRange`, `StreamingHistogram`: per-tensor state of fixed size |
| `ranges.py` | entropy / percentile / distribution ranges: ORT's computations on our histograms |
| `tensors.py` | which tensors ORT would calibrate, and the probe sessions that read them |
| `loop.py` | `calibrate`: the samples, run once each, folded into the collectors |
"""

from __future__ import annotations

from ortforge.transforms.calibrate.collectors import RunningRange, StreamingHistogram
from ortforge.transforms.calibrate.loop import calibrate
from ortforge.transforms.calibrate.options import (
    CALIBRATED_TYPES,
    DEFAULT_NUM_BINS,
    DEFAULT_SYMMETRIC,
    HISTOGRAM_METHODS,
    METHODS,
    MIN_DISTRIBUTION_BINS,
    SCENARIOS,
    CalibrationOptions,
)
from ortforge.transforms.calibrate.ranges import histogram_ranges
from ortforge.transforms.calibrate.result import CalibrationResult, Histogram
from ortforge.transforms.calibrate.tensors import quantizable_op_types, select_tensors, tensor_types

__all__ = [
    "CALIBRATED_TYPES",
    "DEFAULT_NUM_BINS",
    "DEFAULT_SYMMETRIC",
    "HISTOGRAM_METHODS",
    "METHODS",
    "MIN_DISTRIBUTION_BINS",
    "SCENARIOS",
    "CalibrationOptions",
    "CalibrationResult",
    "Histogram",
    "RunningRange",
    "StreamingHistogram",
    "calibrate",
    "histogram_ranges",
    "quantizable_op_types",
    "select_tensors",
    "tensor_types",
]
