"""Latency statistics, and ratios between variants with their confidence intervals."""

from __future__ import annotations

from collections.abc import Sequence
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


CONFIDENCE = 0.95
# The noise floor is never taken as below this: on a quiet machine an A/A interval of ±0.3% says the
# rounds agree, not that a 0.5% gain is real enough to ship a more complex model for.
MIN_NOISE = 0.02
RESAMPLES = 2000  # bootstrap resamples of the rounds: interval ends stable to ~0.1% of a ratio


@dataclass(frozen=True)
class Ratio:
    """A variant's time against the baseline's from interleaved rounds: the median of the per-round ratios,
    its 95% bootstrap interval, the spread of the rounds (min-max) and the share of rounds it was faster.

    Rounds are the unit: both variants ran in the same stretch of each round, so a slow spell of the
    machine moves both and cancels in the ratio; the interval says how well the rounds agree."""

    median: float
    low: float
    high: float
    spread_low: float
    spread_high: float
    wins: float
    rounds: int

    def text(self) -> str:
        return f"{self.median:.3g}x [{self.low:.3g}-{self.high:.3g}]"

    @property
    def half_width(self) -> float:
        """Half the interval, relative to the median: how precisely the ratio is known."""
        return (self.high - self.low) / 2 / self.median if self.median > 0 else float("inf")


def ratio_of(round_medians: Sequence[float], baseline_round_medians: Sequence[float], seed: int = 0) -> Ratio:
    """The ratio of two variants' per-round medians (same rounds), with its bootstrap interval."""
    pairs = [(a, b) for a, b in zip(round_medians, baseline_round_medians) if b > 0]
    if not pairs:
        nan = float("nan")
        return Ratio(nan, nan, nan, nan, nan, 0.0, 0)
    ratios = np.asarray([a / b for a, b in pairs])
    picks = np.random.default_rng(seed).integers(0, len(ratios), size=(RESAMPLES, len(ratios)))
    medians = np.median(ratios[picks], axis=1)
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(medians, [tail, 100 - tail])
    return Ratio(float(np.median(ratios)), float(low), float(high), float(ratios.min()), float(ratios.max()), float(np.mean(ratios < 1.0)), len(ratios))


def noise_floor(pair: Ratio | None) -> float:
    """How far from 1 an identical variant measured in a run (the A/A pair): its interval's farther end, at least MIN_NOISE."""
    if pair is None or pair.rounds == 0:
        return MIN_NOISE
    return max(MIN_NOISE, 1 - pair.low, pair.high - 1)
