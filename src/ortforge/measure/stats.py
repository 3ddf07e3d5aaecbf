"""Latency statistics and the stopping rule for adaptive repeats."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class LatencyStats:
    """Milliseconds; round medians show the spread between interleaved rounds."""

    count: int
    p50: float
    p90: float
    p99: float
    mean: float
    min: float
    max: float
    std: float
    round_medians: list[float]

    @property
    def spread(self) -> tuple[float, float]:
        return (min(self.round_medians), max(self.round_medians)) if self.round_medians else (self.p50, self.p50)


def latency_stats(samples_ns: list[int], rounds: list[list[int]]) -> LatencyStats:
    values = np.asarray(samples_ns, dtype=np.float64) / 1e6
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return LatencyStats(
        count=len(values),
        p50=float(p50),
        p90=float(p90),
        p99=float(p99),
        mean=float(values.mean()),
        min=float(values.min()),
        max=float(values.max()),
        std=float(values.std()),
        round_medians=[float(np.median(r)) / 1e6 for r in rounds if r],
    )


def median_is_stable(rounds: list[list[int]], tolerance: float) -> bool:
    """True when adding the last round moved the overall median by less than `tolerance` (relative)."""
    if len(rounds) < 2:
        return False
    before = float(np.median(np.concatenate(rounds[:-1])))
    after = float(np.median(np.concatenate(rounds)))
    return abs(after - before) <= tolerance * before


def ratio_spread(rounds: list[list[int]], baseline_rounds: list[list[int]]) -> tuple[float, float, float]:
    """Median of per-round median ratios to the baseline, and their min and max."""
    ratios = [
        float(np.median(mine)) / float(np.median(base))
        for mine, base in zip(rounds, baseline_rounds)
        if mine and base
    ]
    if not ratios:
        return (float("nan"),) * 3
    return float(np.median(ratios)), min(ratios), max(ratios)
