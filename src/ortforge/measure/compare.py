"""Deciding between measured variants: each one's per-round ratio to a baseline, and who wins consistently."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ortforge.measure.bench import VariantResult

# On 2 shared cores the faster variant flips with background load: a candidate must win this share
# of interleaved rounds against the baseline, not just have the better median.
MIN_WIN_FRACTION = 0.75


@dataclass
class CandidateScore:
    """A variant against the baseline (the first variant), round by round."""

    label: str
    ratio: float  # median per-round p50 ratio to the baseline
    low: float
    high: float
    wins: float  # fraction of rounds faster than the baseline
    p50_ms: float


def score(result: VariantResult, baseline: VariantResult) -> CandidateScore:
    ratios = np.asarray(result.latency.round_medians) / np.asarray(baseline.latency.round_medians)
    return CandidateScore(result.label, float(np.median(ratios)), float(ratios.min()), float(ratios.max()),
                          float(np.mean(ratios < 1.0)), result.latency.p50)  # fmt: skip


def consistent_winner(scores: Sequence[CandidateScore]) -> CandidateScore | None:
    """The fastest median among candidates (after the baseline) that win most rounds; None if none does."""
    consistent = [s for s in scores[1:] if s.ratio < 1.0 and s.wins >= MIN_WIN_FRACTION]
    return min(consistent, key=lambda s: s.ratio) if consistent else None
