"""Ranges from final histograms: ORT's entropy (KL), percentile and distribution algorithms.

Re-implemented over `Histogram` (vectorised, with ORT's float32 arithmetic and quirks kept) so they
give ORT's answer on the histogram `StreamingHistogram.final` rebuilds.
"""

from __future__ import annotations

import numpy as np

from ortforge.transforms.calibrate.options import CalibrationOptions
from ortforge.transforms.calibrate.result import Histogram

SMOOTHING_EPS = 1e-4  # what ORT's KL search adds to empty bins


def histogram_ranges(
    histograms: dict[str, Histogram], options: CalibrationOptions
) -> tuple[dict[str, tuple[float, float]], dict[str, tuple[float, float]]]:
    """(low, high) per tensor by `options.method`, and (avg, std) per tensor for the distribution method."""
    ranges, moments = {}, {}
    for name, histogram in histograms.items():
        if options.method == "entropy":
            ranges[name] = entropy_range(histogram, options.num_quantized_bins)
        elif options.method == "percentile":
            ranges[name] = percentile_range(histogram, options.percentile, options.absolute_histogram)
        else:
            moments[name] = distribution_moments(histogram, options.scenario)
            ranges[name] = (float(histogram.edges.min()), float(histogram.edges.max()))
    return ranges, moments


def entropy_range(histogram: Histogram, num_quantized_bins: int) -> tuple[float, float]:
    """ORT's KL-divergence threshold: the symmetric window whose int8 version loses least information.

    Each candidate window around the middle bin keeps the outliers in its end bins (p), is squeezed
    into `num_quantized_bins` bins and expanded back (q); the window minimising KL(p || q) wins,
    clamped to the data's extremes.
    """
    counts, edges = histogram.counts, histogram.edges
    size = counts.size
    middle = size // 2
    half_quantized = num_quantized_bins // 2
    prefix = np.concatenate(([0], np.cumsum(counts)))
    divergences = []
    for half in range(half_quantized, middle + 1):
        start, end = middle - half, min(middle + half + 1, size)
        divergences.append(_window_divergence(counts[start:end], prefix[start], prefix[size] - prefix[end], num_quantized_bins))
    half = half_quantized + int(np.argmin(divergences))  # the first of equal minima, as ORT picks
    return _clamped(float(edges[middle - half]), float(edges[min(middle + half + 1, size)]), histogram)


def _window_divergence(window: np.ndarray, left_outliers: int, right_outliers: int, num_quantized_bins: int) -> float:
    """KL(p || q) for one candidate window, with ORT's float32 arithmetic and its quirks kept.

    q spreads each merged bin's count (truncated to an integer) over the bins where p is non-zero,
    and leaves the window's last `len % num_quantized_bins` bins at 0, as ORT does.
    """
    reference = window.copy()
    reference[0] += left_outliers
    reference[-1] += right_outliers
    nonzero = reference != 0
    merge = window.size // num_quantized_bins
    covered = merge * num_quantized_bins
    merged = window[:covered].reshape(num_quantized_bins, merge).sum(axis=1)
    merged[-1] += window[covered:].sum()
    occupied = nonzero[:covered].reshape(num_quantized_bins, merge).sum(axis=1)
    per_bin = np.where(occupied > 0, merged // np.maximum(occupied, 1), 0)
    expanded = np.zeros(window.size, np.int64)
    expanded[:covered] = np.repeat(per_bin, merge)
    p, q = _smoothed(reference), _smoothed(expanded)
    if p is None or q is None:
        return float(np.inf)
    p /= p.sum()
    q /= q.sum()
    return float((p * np.log(p / q)).sum(dtype=np.float32))


def _smoothed(counts: np.ndarray) -> np.ndarray | None:
    """Float32 distribution with empty bins raised to eps, paid for by the others (None if all empty)."""
    empty = counts == 0
    filled = counts.size - int(empty.sum())
    if filled == 0:
        return None
    taken = SMOOTHING_EPS * float(counts.size - filled) / float(filled)
    smoothed = counts.astype(np.float32)
    smoothed += np.where(empty, np.float32(SMOOTHING_EPS), np.float32(-taken)).astype(np.float32)
    return smoothed


def percentile_range(histogram: Histogram, percentile: float, absolute: bool) -> tuple[float, float]:
    """ORT's percentile range: the edges where the cumulative share crosses the cut-offs, clamped.

    On a histogram of |x| (symmetric) the range is +-edge at `percentile`; otherwise half of the
    excluded share is cut on each side.
    """
    cumulative = np.cumsum(histogram.counts / histogram.counts.sum())
    edges = histogram.edges
    if absolute:
        edge = float(edges[np.searchsorted(cumulative, percentile / 100.0)])
        return _clamped(-edge, edge, histogram)
    cut = (100.0 - percentile) / 200.0
    low = float(edges[np.searchsorted(cumulative, cut)])
    high = float(edges[np.searchsorted(cumulative, 1.0 - cut)])
    return _clamped(low, high, histogram)


def distribution_moments(histogram: Histogram, scenario: str) -> tuple[float, float]:
    """Mean and standard deviation of the bin centres (of x, or of x**(1/3) for 'p3'), as ORT computes them."""
    centres = (histogram.edges[:-1] + histogram.edges[1:]) * np.float32(0.5)
    if scenario == "p3":
        centres = np.cbrt(centres)  # odd root keeps the sign, as ORT's |x|**p * sign(x) does
    counts = histogram.counts
    mean = (counts * centres).sum() / counts.sum()
    spread = (counts * centres**2).sum() / counts.sum() - mean**2
    return float(np.float32(mean)), float(np.float32(max(spread, 0.0) ** 0.5))


def _clamped(low: float, high: float, histogram: Histogram) -> tuple[float, float]:
    """Thresholds never reach beyond the data (ORT clamps to the observed min and max)."""
    return (max(low, histogram.low), min(high, histogram.high))
