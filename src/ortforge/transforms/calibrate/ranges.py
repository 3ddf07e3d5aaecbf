"""Ranges from final histograms, computed by ORT's own entropy (KL), percentile and distribution code.

ORT's `HistogramCollector` both collects (which needs every sample's values at once to give ORT's
answer) and computes ranges from the histograms it holds. ortforge collects with its own
`StreamingHistogram` and hands the final histograms to ORT's computations, so the ranges follow
ORT's maths, quirks included, in whichever release is installed (docs/design.md, "Calibration maths:
ours or ORT's", has the measurements).
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np

from ortforge.transforms.calibrate.options import CalibrationOptions
from ortforge.transforms.calibrate.result import Histogram


def ort_collector(options: CalibrationOptions) -> Any:  # -> onnxruntime.quantization.calibrate.HistogramCollector
    """ORT's histogram collector with the settings its calibrator would give it for `options`."""
    from onnxruntime.quantization.calibrate import HistogramCollector

    return HistogramCollector(
        method=options.method,
        symmetric=options.is_symmetric,
        num_bins=options.bins,
        num_quantized_bins=options.num_quantized_bins,
        percentile=options.percentile,
        scenario=options.scenario,
    )


def histogram_ranges(
    histograms: dict[str, Histogram], options: CalibrationOptions
) -> tuple[dict[str, tuple[float, float]], dict[str, tuple[float, float]]]:
    """(low, high) per tensor by `options.method`, and (avg, std) per tensor for the distribution method."""
    from onnxruntime.quantization.calibrate import TensorData

    if not histograms:
        return {}, {}
    collector = ort_collector(options)
    # Per tensor, ORT's computations read (counts, edges, min, max) with float32 extremes: what its
    # own collection would have left there, here from our merged histograms.
    held = {name: (h.counts, h.edges, np.float32(h.low), np.float32(h.high)) for name, h in histograms.items()}
    collector.get_histogram_dict().update(held)
    with contextlib.redirect_stdout(io.StringIO()):  # ORT prints its progress; steps never print
        computed = collector.compute_collection_result()
    ranges, moments = {}, {}
    for name in histograms:
        item = computed[name]
        # Distribution gives TensorData; entropy and percentile give (low, high, ...) tuples.
        pair = item.range_value if isinstance(item, TensorData) else item[:2]
        ranges[name] = (float(pair[0]), float(pair[1]))
        if options.method == "distribution":
            avg, std = item.avg_std
            moments[name] = (float(avg), float(std))
    return ranges, moments
