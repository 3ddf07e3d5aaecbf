"""THE judge: a candidate's outputs against the reference's on the same feeds, under tolerances and the user's hook.

Every command that writes a model asks the judge before writing: optimize (offline vs online graph),
quantize (each recipe, and each exclusion set its search tries), fp16 (the plan, and each choice its
search tries) and tune (every candidate). One vocabulary of tolerances (`tolerance.py`), one verdict.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from ortforge.accuracy.hooks import HookError, hook_identity
from ortforge.accuracy.metrics import (
    ALL_METRICS,
    CONFIDENCE,
    EVAL_CHECK,
    RATES,
    AccuracyReport,
    Outputs,
    compare,
    perplexity_evidence,
    rate_evidence,
    tensors_of,
    token_ids,
    token_masks,
)
from ortforge.accuracy.tolerance import Tolerance
from ortforge.core.errors import UserError
from ortforge.core.model import Model
from ortforge.core.session import SessionConfig, run_outputs
from ortforge.data import FeedSet

# What the verdict's summary shows besides the bounded metrics, when measured.
SHOWN = ("cosine", "top1", "token_top1", "sequence", "agreement", "max_abs", "rel")
ENOUGH_SAMPLES = 32  # fewer, and the verdict says what a change rate could hide


@dataclass
class Verdict:
    """Whether a candidate met every tolerance, what was measured, and why it failed if it did."""

    passed: bool
    tolerances: list[Tolerance]
    measured: dict[str, float] = field(default_factory=dict)  # metric -> worst over outputs and samples
    failures: list[str] = field(default_factory=list)  # one line per tolerance missed, or the structural problem
    samples: int = 0
    generated_inputs: bool = False
    accuracy: AccuracyReport | None = None  # per-output detail
    reference: str = "the original"
    notes: list[str] = field(default_factory=list)  # what limits the evidence (few samples, NaN in the original)

    @property
    def reason(self) -> str:
        return "; ".join(self.failures)

    @property
    def evidence(self) -> list[str]:
        """Per output: each rate with its counts and bound, and the worst sample's cosine."""
        if self.accuracy is not None:
            return self.accuracy.evidence()
        lines = [rate_evidence(metric, int(self.measured[f"{metric}_changed"]), int(self.measured[f"{metric}_total"]))
                 for metric in RATES if f"{metric}_total" in self.measured]  # fmt: skip
        if "perplexity" in self.measured:
            lines.append(perplexity_evidence(self.measured["perplexity_reference"], self.measured["perplexity"], self.measured["perplexity_tokens"]))
        return lines

    def summary(self) -> str:
        bounds = ", ".join(t.describe() for t in self.tolerances) or "no tolerance"
        figures = ", ".join(f"{name} {self.measured[name]:.4g}" for name in SHOWN if name in self.measured)
        verdict = "within" if self.passed else "OUTSIDE"
        text = f"outputs {verdict} {bounds} of {self.reference} on {self.samples} sample(s)" + (f": {figures}" if figures else "")
        rates = [line for line in self.evidence if "changed" in line]
        text += f" [{'; '.join(rates)}]" if rates else ""
        return text if self.passed else f"{text} ({self.reason})"

    def to_dict(self) -> dict:
        return {
            "passed": self.passed,
            "tolerances": [t.describe() for t in self.tolerances],
            "measured": self.measured,
            "failures": self.failures,
            "samples": self.samples,
            "generated_inputs": self.generated_inputs,
            "reference": self.reference,
            "evidence": self.evidence,
            "notes": self.notes,
            "outputs": [asdict(o) for o in self.accuracy.outputs] if self.accuracy else [],
        }


# Raised when a recorded metric changes meaning (or a verdict is recorded differently), so that verdicts cached by
# older code are not taken for this code's: 2 = per-sample counts, task-shaped checks, hook errors never recorded.
METRICS_VERSION = 3


class Judge:
    """Holds the reference outputs, the tolerances and the hook; judges candidates' outputs against them."""

    def __init__(self, reference: Outputs, tolerances: Sequence[Tolerance], hook: Callable | None = None, *,
                 feeds: FeedSet | None = None, metrics: Sequence[str] = ALL_METRICS, reference_label: str = "the original") -> None:  # fmt: skip
        self.reference, self.tolerances, self.hook = reference, list(tolerances), hook
        self.bounded = tuple(dict.fromkeys(t.metric for t in self.tolerances if t.metric in ALL_METRICS))
        self.metrics = tuple(dict.fromkeys([*metrics, *self.bounded]))
        closes = [t for t in self.tolerances if t.metric == "close"]
        if len(closes) > 1:
            raise UserError("give one rtol/atol bound, not several")
        self.close = (closes[0].rtol, closes[0].atol) if closes else None
        self.samples = len(reference)
        self.generated = bool(feeds is not None and feeds.generated)
        self.reference_label = reference_label
        self.masks = token_masks(feeds.samples) if feeds is not None and len(feeds) == len(reference) else None
        self.tokens = token_ids(feeds.samples) if feeds is not None and len(feeds) == len(reference) else None
        self.notes = _evidence_notes(reference)

    def on(self, reference: Outputs, feeds: FeedSet, margin: float = 1.0) -> Judge:
        """The same gate over other samples (`reference`: the original's outputs on `feeds`), e.g. the calibration half a
        search judges on while the evaluation half is kept for the verdict; `margin` < 1 leaves that share of each bound's
        allowed error (`Tolerance.tightened`), for searches whose answer is then confirmed on samples they never saw."""
        tolerances = [t.tightened(margin) for t in self.tolerances] if margin != 1.0 else self.tolerances
        return Judge(reference, tolerances, self.hook, feeds=feeds, reference_label=self.reference_label)

    def key(self) -> str:
        """What decides this judge's verdicts besides the outputs: its tolerances and the hook's identity (for cache keys)."""
        return json.dumps([METRICS_VERSION, *[[t.metric, t.value, t.rtol, t.atol] for t in self.tolerances], hook_identity(self.hook) if self.hook else ""])

    def __call__(self, candidate: Outputs, *, detail: bool = True) -> Verdict:
        """The verdict on a candidate's outputs; a candidate that cannot be compared fails with the reason.

        `detail=False` measures only the bounded metrics (searches that judge many times)."""
        try:
            report = compare(self.reference, candidate, self.hook, metrics=self.metrics if detail else self.bounded, close=self.close,
                             masks=self.masks, tokens=self.tokens if detail else None)  # fmt: skip
        except HookError:
            raise
        except UserError as exc:
            return self.reject(str(exc))
        return self.decide(report)

    def reject(self, reason: str) -> Verdict:
        """A failed verdict for a candidate that could not be compared at all (outputs renamed, a hook that raised)."""
        return self._verdict(None, [reason])

    def decide(self, report: AccuracyReport) -> Verdict:
        """Apply the tolerances (and a True/False hook) to measured metrics."""
        return self._verdict(report, self._failures(report.measured()))

    def decide_measured(self, measured: dict[str, float]) -> Verdict:
        """A verdict from metrics measured earlier (a cached build): same tolerances, same rules."""
        verdict = self._verdict(None, self._failures(measured))
        verdict.measured = dict(measured)
        return verdict

    def _failures(self, measured: dict[str, float]) -> list[str]:
        failures = []
        for tolerance in self.tolerances:
            if tolerance.metric not in measured:
                failures.append("the eval tolerance needs an eval hook" if tolerance.metric == "eval" else f"{tolerance.metric} does not apply to these outputs")
            elif not tolerance.met_by(measured[tolerance.metric]):
                counted = f"{tolerance.metric}_total" in measured
                failures.append(f"{rate_evidence(tolerance.metric, int(measured[f'{tolerance.metric}_changed']), int(measured[f'{tolerance.metric}_total']))}"
                                f", misses {tolerance.describe()}" if counted else tolerance.miss(measured[tolerance.metric]))
        if measured.get(EVAL_CHECK) and not measured.get("eval"):
            failures.append("the eval hook said no")
        return failures

    def _verdict(self, report: AccuracyReport | None, failures: list[str]) -> Verdict:
        return Verdict(not failures, self.tolerances, report.measured() if report else {}, failures, self.samples, self.generated, report,
                       self.reference_label, list(self.notes))  # fmt: skip


def _evidence_notes(reference: Outputs) -> list[str]:
    """What limits the evidence: few samples (rare changes go unseen), NaN or infinities in the original's outputs."""
    notes = []
    if 0 < len(reference) < ENOUGH_SAMPLES:
        unseen = 1 - (1 - CONFIDENCE) ** (1 / len(reference))
        notes.append(f"judged on {len(reference)} samples (fewer than {ENOUGH_SAMPLES}): a change affecting under {unseen:.0%} of samples "
                     "can go unseen; give more data for a tighter bound")  # fmt: skip
    odd = sum(int(np.count_nonzero(~np.isfinite(tensor))) for sample in reference for value in sample.values()
              for tensor in tensors_of(value) if tensor.dtype.kind == "f")  # fmt: skip
    if odd:
        notes.append(f"the original's outputs hold {odd} NaN/infinite value(s): compared NaN-aware (equal where the original has them too)")
    return notes


def reference_judge(original: Model, feeds: FeedSet, tolerances: Sequence[Tolerance], config: SessionConfig | None = None) -> Judge:
    """A judge whose reference is `original` run on `feeds` with `config` (ORT with optimizations off by default)."""
    config = config or SessionConfig(graph_optimization_level="disable")
    return Judge(run_outputs(original, feeds, config), tolerances, feeds=feeds, reference_label=f"the original at ORT level {config.graph_optimization_level}")


def judge_model(judge: Judge, candidate: Model, feeds: FeedSet, config: SessionConfig | None = None) -> Verdict:
    """Run `candidate` on the judge's feeds (same samples, same order) and judge it; renamed outputs fail."""
    names = list(judge.reference[0]) if judge.reference else []
    candidate_names = [output.name for output in candidate.proto.graph.output]
    if candidate_names != names:
        return judge.reject(f"outputs changed: {candidate_names} instead of {names}")
    return judge(run_outputs(candidate, feeds, config or SessionConfig()))


def verify(
    original: Model,
    candidate: Model,
    feeds: FeedSet,
    tolerances: Sequence[Tolerance],
    *,
    original_config: SessionConfig | None = None,
    candidate_config: SessionConfig | None = None,
) -> Verdict:
    """Run both models on the same feeds (each with its session config) and judge the candidate; never raises for a mismatch."""
    return judge_model(reference_judge(original, feeds, tolerances, original_config), candidate, feeds, candidate_config)


def require(verdict: Verdict, what: str, force: bool = False) -> None:
    """Refuse to go on with a result outside tolerance unless the user forces it."""
    if not verdict.passed and not force:
        raise UserError(f"{what}: not written, {verdict.reason}", hint="force (--force) writes it anyway; the report says so")
