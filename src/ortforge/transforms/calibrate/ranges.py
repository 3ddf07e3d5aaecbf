"""Ranges from final histograms, computed by ORT's own entropy (KL), percentile and distribution code, and by our MSE search.

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
    if options.method == "mse":
        return {name: mse_range(histogram) for name, histogram in histograms.items()}, {}
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


MSE_STEPS = 100  # clipping factors tried per tensor, from the full range down to 1% of it
LEVELS = 255  # 8-bit steps


def mse_range(histogram: Histogram) -> tuple[float, float]:
    """The (low, high) range, 0 included and both ends shrunk by one factor, whose 8-bit rounding noise (step**2 / 12 per
    value inside) plus clipping error (distance to the clip, squared, outside) over the histogram is least."""
    counts = histogram.counts.astype(np.float64)
    centers = (histogram.edges[:-1].astype(np.float64) + histogram.edges[1:]) / 2
    low, high = min(histogram.low, 0.0), max(histogram.high, 0.0)
    if high - low <= 0 or counts.sum() == 0:
        return (low, high)
    factors = np.linspace(1.0, 0.01, MSE_STEPS)[:, None]
    lows, highs = low * factors, high * factors
    steps = (highs - lows) / LEVELS
    clipped = np.clip(centers[None, :], lows, highs)
    error = (counts * ((centers - clipped) ** 2)).sum(axis=1) + counts.sum() * (steps[:, 0] ** 2) / 12
    best = int(np.argmin(error))
    return (float(np.float32(lows[best, 0])), float(np.float32(highs[best, 0])))
