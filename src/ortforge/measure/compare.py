"""Deciding between measured variants: each one's ratio to a baseline with its confidence interval, the run's
own noise floor, and who wins.

A run measures its baseline twice, as two processes (the A/A pair): how far apart two identical variants
come out is the noise of this machine at this moment. A candidate beats the baseline only when its whole
interval lies below that band; candidates that are within noise of each other are not told apart by
speed, and the simpler one wins (criterion.rs's "change within noise threshold", pyperf's instability
warnings, in this setting).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ortforge.measure.bench import VariantResult
from ortforge.measure.stats import MIN_NOISE, Ratio, noise_floor, ratio_of

__all__ = ["MIN_NOISE", "CandidateScore", "beats", "noise_floor", "score", "startup_score", "verdict_text", "winner"]


@dataclass
class CandidateScore:
    """A variant against the baseline (the first variant), round by round."""

    label: str
    estimate: Ratio
    p50_ms: float

    @property
    def ratio(self) -> float:
        return self.estimate.median

    @property
    def low(self) -> float:
        return self.estimate.low

    @property
    def high(self) -> float:
        return self.estimate.high

    @property
    def wins(self) -> float:
        return self.estimate.wins

    def text(self) -> str:
        return self.estimate.text()

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "p50_ms": self.p50_ms, **asdict(self.estimate)}


def score(result: VariantResult, baseline: VariantResult) -> CandidateScore:
    return CandidateScore(result.label, ratio_of(result.latency.round_medians, baseline.latency.round_medians), result.latency.p50)


def startup_score(result: VariantResult, baseline: VariantResult) -> CandidateScore | None:
    """The variant's session start-up against the baseline's, where repeated start-up was measured."""
    if result.startup is None or baseline.startup is None:
        return None
    return CandidateScore(result.label, ratio_of(result.startup.round_medians, baseline.startup.round_medians), result.startup.p50)


def beats(candidate: CandidateScore, noise: float) -> bool:
    """Faster than the baseline beyond noise: the whole interval below 1 - noise."""
    return candidate.high < 1 - noise


def winner(scores: Sequence[CandidateScore], noise: float, complexity: Callable[[CandidateScore], Any] = lambda s: 0) -> CandidateScore | None:
    """Among candidates after the baseline that beat it beyond noise, the simplest of those within noise of the
    fastest (lowest `complexity`, then the lower ratio); None when none beats the baseline."""
    beating = [s for s in scores[1:] if beats(s, noise)]
    if not beating:
        return None
    fastest = min(beating, key=lambda s: s.ratio)
    # Not told apart from the fastest by this run. The noise is a share of the time measured, so it scales with the
    # ratio: added as is, ±2.4% of fp32 would tie an 0.245x with an 0.218x (11% apart, both intervals clear).
    tied = [s for s in beating if s.low <= fastest.high * (1 + noise)]
    return min(tied, key=lambda s: (complexity(s), s.ratio))


def verdict_text(candidate: CandidateScore, noise: float, baseline: str = "the baseline") -> str:
    """One line on a timed comparison: the ratio, its interval, and whether it clears the noise."""
    where = "faster beyond noise" if beats(candidate, noise) else ("slower beyond noise" if candidate.low > 1 + noise else "within noise")
    return f"{candidate.text()} of {baseline} ({where}, noise ±{noise:.1%}, {candidate.estimate.rounds} rounds)"
