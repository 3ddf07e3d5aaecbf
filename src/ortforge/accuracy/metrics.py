"""Accuracy metrics of a candidate's outputs against a reference, output by output, worst sample first.

The checks follow the output's form. Class scores [N, C]: top-1 per row. Per-step class scores [N, T, C]
(CTC, token probabilities): top-1 per step and the whole sequence of argmaxes per row. Per-token outputs
of a model with an attention mask: compared over real tokens only, and as mean-pooled embeddings.
Probability maps: agreement on which side of 0.5 each element falls. Everything: cosine (worst sample),
max/mean absolute and relative error, allclose. Rates come with their counts, so a verdict can say
"0 of 32 rows changed: change rate < 9.0% at 95%".

Outputs are compared tensor by tensor (a sequence output's items, a map's values), so every output
type ORT returns can be judged. Which metrics are computed is up to the caller: the judge asks only for
the ones its tolerances bound, since a mixed-precision search compares many times.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from ortforge.accuracy.hooks import run_hook
from ortforge.accuracy.tolerance import HIGHER_IS_BETTER, classifier_output, probability_map, sequence_output, token_logits
from ortforge.core.errors import UserError

Outputs = list[dict[str, object]]  # one dict of output name -> value per sample
ALL_METRICS = ("cosine", "pooled_cosine", "max_abs", "mean_abs", "rel", "top1", "token_top1", "sequence", "agreement")
RATES = {"top1": "rows", "token_top1": "tokens", "sequence": "sequences", "agreement": "elements"}  # agreement metrics judged with counts
EVAL_CHECK = "eval_check"  # in measured metrics: 1 when the hook answered True/False (a check), so cached verdicts keep it
# A cosine over a handful of numbers (a VAD's one probability) says little per sample: pool them.
MIN_COSINE_ELEMENTS = 16
MASK_NAME = re.compile(r"mask", re.IGNORECASE)
TOKEN_IDS_NAME = re.compile(r"input_ids", re.IGNORECASE)  # the name decoder_io reads a decoder's tokens by first
CONFIDENCE = 0.95


@dataclass
class OutputAccuracy:
    """One output's metrics over all samples (None where a metric was not asked for or does not apply)."""

    name: str
    max_abs: float | None = None
    mean_abs: float | None = None
    rel: float | None = None  # max |a-b| / max |reference|: scale-free, robust to near-zero elements
    cosine: float | None = None  # worst sample's cosine (all samples pooled for tiny outputs; with a mask, the worse of real tokens and pooled)
    pooled_cosine: float | None = None  # worst row's cosine of the mean over real tokens (per-token outputs with a mask)
    top1: float | None = None  # share of rows (class-score vectors) whose argmax is unchanged
    token_top1: float | None = None  # share of token positions of raw logits whose argmax is unchanged (next-token agreement)
    sequence: float | None = None  # share of rows whose argmax at every step is unchanged (per-step class scores)
    agreement: float | None = None  # share of probability elements on the same side of 0.5
    close: float | None = None  # worst |a-b| / (atol + rtol |reference|): 1 or less is allclose
    mismatched: int = 0  # elements outside atol + rtol |reference| (when `close` was asked for)
    elements: int = 0
    counts: dict[str, tuple[int, int]] = field(default_factory=dict)  # rate metric -> (changed, total)
    worst_sample: int | None = None  # the sample with the lowest cosine
    real_tokens_only: bool = False  # compared over the tokens the attention mask marks real
    # Teacher-forced perplexity of the inputs' own next tokens (reference, candidate, tokens predicted): evidence, not a gate
    perplexity: tuple[float, float, int] | None = None


@dataclass
class AccuracyReport:
    """Per-output metrics and the worst of each over all outputs and samples."""

    outputs: list[OutputAccuracy] = field(default_factory=list)
    eval_score: float | None = None
    eval_check: bool = False  # the hook answered True/False: a check that must pass, not a score to bound
    samples: int = 0

    def metric(self, name: str) -> float:
        if name == "eval":
            if self.eval_score is None:
                raise UserError("a tolerance on 'eval' needs an eval hook (--eval module:function)")
            return self.eval_score
        values = [getattr(o, name) for o in self.outputs if getattr(o, name) is not None]
        if not values:
            raise UserError(f"metric '{name}' does not apply to these outputs")
        return min(values) if name in HIGHER_IS_BETTER else max(values)

    def measured(self) -> dict[str, float]:
        """Every metric that applies, at its worst over outputs and samples."""
        found = {}
        for name in (*ALL_METRICS, "close", "eval"):
            try:
                found[name] = self.metric(name)
            except UserError:
                continue
        for metric in RATES:  # the counts behind the worst rate, so a cached verdict can still show its evidence
            worst = min((o for o in self.outputs if metric in o.counts), key=lambda o: getattr(o, metric), default=None)
            if worst is not None:
                found[f"{metric}_changed"], found[f"{metric}_total"] = map(float, worst.counts[metric])
        if self.eval_check:
            found[EVAL_CHECK] = 1.0
        scored = next((o.perplexity for o in self.outputs if o.perplexity is not None), None)
        if scored is not None:  # kept with a cached verdict, for its evidence
            found["perplexity_reference"], found["perplexity"], found["perplexity_tokens"] = map(float, scored)
        return found

    def evidence(self) -> list[str]:
        """One line per output and rate: what changed, out of how many, and the bound on the change rate."""
        lines = []
        for output in self.outputs:
            for metric, (changed, total) in output.counts.items():
                lines.append(f"{output.name}: {rate_evidence(metric, changed, total)}")
            if output.cosine is not None and output.worst_sample is not None:
                where = ", real tokens only" if output.real_tokens_only else ""
                lines.append(f"{output.name}: worst cosine {output.cosine:.5g} (sample {output.worst_sample}{where})")
            if output.perplexity is not None:
                lines.append(f"{output.name}: {perplexity_evidence(*output.perplexity)}")
        return lines

    def to_dict(self) -> dict:
        return {**asdict(self), "evidence": self.evidence()}


def perplexity_evidence(reference: float, candidate: float, tokens: float) -> str:
    """The evidence line of a decoder's perplexity: the original's, the candidate's, the change and the count behind it."""
    return (f"perplexity {reference:.4g} -> {candidate:.4g} ({candidate / reference - 1:+.2%}) on the inputs' own next tokens "
            f"({int(tokens)} predicted)")


def change_rate_bound(changed: int, total: int, confidence: float = CONFIDENCE) -> float:
    """Clopper-Pearson upper bound on the true change rate after seeing `changed` of `total` change
    (one-sided; for none changed it is 1 - (1 - confidence)^(1/total), about 3/total: the rule of three)."""
    if total <= 0:
        return 1.0
    if changed >= total:
        return 1.0
    alpha = 1 - confidence
    low, high = changed / total, 1.0
    for _ in range(60):  # bisection: P(X <= changed | total, p) falls as p grows
        middle = (low + high) / 2
        low, high = (middle, high) if _binomial_cdf(changed, total, middle) > alpha else (low, middle)
    return high


def _binomial_cdf(k: int, n: int, p: float) -> float:
    if p <= 0:
        return 1.0
    if p >= 1:
        return 0.0 if k < n else 1.0
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * math.log(p) + (n - i) * math.log1p(-p) for i in range(k + 1)]
    top = max(logs)
    return min(1.0, math.exp(top) * sum(math.exp(value - top) for value in logs))


def rate_evidence(metric: str, changed: int, total: int) -> str:
    """'top1: 0 of 32 rows changed (change rate < 8.9% at 95%)'."""
    unit = RATES.get(metric, "items")
    return f"{metric}: {changed} of {total} {unit} changed (change rate < {change_rate_bound(changed, total):.2%} at {CONFIDENCE:.0%})"


def _cosine(reference: np.ndarray, candidate: np.ndarray) -> float:
    reference, candidate = np.asarray(reference, np.float64).ravel(), np.asarray(candidate, np.float64).ravel()
    norm = np.linalg.norm(reference) * np.linalg.norm(candidate)
    if not np.isfinite(norm):
        return 0.0
    return float(np.dot(reference, candidate) / norm) if norm > 0 else float(np.array_equal(reference, candidate))


def _abs_error(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """|reference - candidate| in float64, 0 where both hold the same NaN or infinity, infinite where only one is NaN."""
    ref, cand = reference.astype(np.float64), candidate.astype(np.float64)
    with np.errstate(invalid="ignore"):
        error = np.abs(ref - cand)
    same = (np.isnan(ref) & np.isnan(cand)) | (np.isinf(ref) & (ref == cand))
    return np.where(same, 0.0, np.nan_to_num(error, nan=np.inf, posinf=np.inf))


def _close_ratio(reference: np.ndarray, candidate: np.ndarray, error: np.ndarray | None, rtol: float, atol: float) -> tuple[float, int]:
    """The worst |error| in units of atol + rtol |reference|, and how many elements exceed 1."""
    if error is None:  # not numbers: equal or not
        wrong = int(np.count_nonzero(reference != candidate))
        return (float("inf") if wrong else 0.0), wrong
    scale = atol + rtol * np.abs(np.nan_to_num(reference.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0))
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(error == 0, 0.0, error / scale)
    return (float(ratio.max()) if ratio.size else 0.0), int(np.count_nonzero(ratio > 1.0))


class _Tally:
    """Running sums for one output over its samples."""

    def __init__(self) -> None:
        self.max_abs = self.mean_sum = self.peak = 0.0
        self.count = 0
        self.log_loss = [0.0, 0.0]  # summed negative log-likelihoods of the next tokens: reference, candidate
        self.predicted = 0
        self.cosines: list[float] = []
        self.pooled: list[float] = []
        self.counts: dict[str, list[int]] = {}

    def add_rate(self, metric: str, changed: int, total: int) -> None:
        entry = self.counts.setdefault(metric, [0, 0])
        entry[0] += changed
        entry[1] += total


def _real_tokens(reference: np.ndarray, mask: np.ndarray | None) -> np.ndarray | None:
    """The [N, T] boolean mask of real tokens when this output is per token ([N, T, ...] matching the mask)."""
    if mask is None or reference.ndim < 3 or tuple(reference.shape[:2]) != tuple(mask.shape):
        return None
    return np.asarray(mask).astype(bool)


def _add_sample(tally: _Tally, ref: np.ndarray, cand: np.ndarray, error: np.ndarray, wanted: set[str], real: np.ndarray | None, tiny: bool,
                logits: bool = False) -> None:  # fmt: skip
    ref64, cand64 = ref.astype(np.float64), cand.astype(np.float64)
    if real is not None:  # padding positions say nothing about the model: leave them out
        ref64, cand64, error = ref64[real], cand64[real], error[real]
    if error.size:
        tally.max_abs = max(tally.max_abs, float(error.max()))
        tally.mean_sum += float(error.sum())
        tally.count += error.size
        tally.peak = max(tally.peak, float(np.nanmax(np.abs(ref64), initial=0.0)))
    if "cosine" in wanted and not tiny:
        tally.cosines.append(_cosine(ref64, cand64))
    if "pooled_cosine" in wanted and real is not None:
        weights = real[..., None].astype(np.float64)
        shape = (ref.shape[0], ref.shape[1], -1)
        counts = np.maximum(weights.sum(axis=1), 1.0)
        pooled_ref = (ref.astype(np.float64).reshape(shape) * weights).sum(axis=1) / counts
        pooled_cand = (cand.astype(np.float64).reshape(shape) * weights).sum(axis=1) / counts
        tally.pooled.append(min(_cosine(a, b) for a, b in zip(pooled_ref, pooled_cand)))
    if wanted & {"top1", "sequence"} and classifier_output(ref):
        same = ref64.argmax(axis=-1) == cand64.argmax(axis=-1) if real is None else ref.argmax(axis=-1)[real] == cand.argmax(axis=-1)[real]
        tally.add_rate("top1", int(same.size - np.count_nonzero(same)), int(same.size))
        if "sequence" in wanted and sequence_output(ref):
            steps = ref.argmax(axis=-1) == cand.argmax(axis=-1)
            rows = np.all(steps | ~real, axis=-1) if real is not None else np.all(steps, axis=-1)
            tally.add_rate("sequence", int(rows.size - np.count_nonzero(rows)), int(rows.size))
    if "token_top1" in wanted and logits:
        same = ref.argmax(axis=-1) == cand.argmax(axis=-1)
        same = same[real] if real is not None else same
        tally.add_rate("token_top1", int(same.size - np.count_nonzero(same)), int(same.size))
    if "agreement" in wanted and probability_map(ref):
        flipped = np.count_nonzero((ref64 >= 0.5) != (cand64 >= 0.5))
        tally.add_rate("agreement", int(flipped), int(ref64.size))


def _add_log_loss(tally: _Tally, ref: np.ndarray, cand: np.ndarray, tokens: np.ndarray, real: np.ndarray | None) -> None:
    """Each position's logits scored on the token that follows it in the input (padding neither predicts nor is predicted)."""
    targets = np.asarray(tokens)[:, 1:]
    keep = np.ones(targets.shape, bool) if real is None else real[:, :-1] & real[:, 1:]
    for slot, logits in enumerate((ref, cand)):
        scores = logits[:, :-1].astype(np.float64)
        top = scores.max(axis=-1, keepdims=True)
        log_total = np.log(np.exp(scores - top).sum(axis=-1)) + top[..., 0]
        chosen = np.take_along_axis(scores, targets[..., None].astype(np.int64), axis=-1)[..., 0]
        tally.log_loss[slot] += float((log_total - chosen)[keep].sum())
    tally.predicted += int(np.count_nonzero(keep))


def output_accuracy(
    name: str, reference: list[np.ndarray], candidate: list[np.ndarray], metrics: Iterable[str] = ALL_METRICS,
    close: tuple[float, float] | None = None, masks: Sequence[np.ndarray | None] | None = None,
    tokens: Sequence[np.ndarray | None] | None = None,
) -> OutputAccuracy:  # fmt: skip
    """The asked-for metrics of one output over all samples (`close` = (rtol, atol) adds the allclose ratio;
    `masks`, one attention mask per sample, restricts per-token outputs to real tokens; `tokens`, the token ids fed
    per sample, adds the teacher-forced perplexity of token logits)."""
    wanted = set(metrics)
    result = OutputAccuracy(name)
    tally = _Tally()
    tiny = all(np.size(r) < MIN_COSINE_ELEMENTS for r in reference)
    ratios = []
    for index, (ref, cand) in enumerate(zip(reference, candidate)):
        ref_array, cand_array = np.asarray(ref), np.asarray(cand)
        if ref_array.shape != cand_array.shape:
            raise UserError(f"output '{name}': shape {list(cand_array.shape)} differs from the reference's {list(ref_array.shape)}")
        result.elements += ref_array.size
        numeric = ref_array.dtype.kind in "fiub" and cand_array.dtype.kind in "fiub"
        error = _abs_error(ref_array, cand_array) if numeric else None
        if close is not None:
            ratio, wrong = _close_ratio(ref_array, cand_array, error, *close)
            ratios.append(ratio)
            result.mismatched += wrong
        if error is None or not wanted - {"close"}:
            continue
        real = _real_tokens(ref_array, masks[index] if masks is not None and index < len(masks) else None)
        result.real_tokens_only = result.real_tokens_only or real is not None
        logits = token_logits(name, ref_array)
        _add_sample(tally, ref_array, cand_array, error, wanted, real, tiny, logits)
        fed = tokens[index] if tokens is not None and index < len(tokens) else None
        if logits and fed is not None and np.shape(fed) == ref_array.shape[:2] and ref_array.shape[1] > 1:
            _add_log_loss(tally, ref_array, cand_array, fed, real)
    if "cosine" in wanted and tiny and reference and all(np.asarray(r).dtype.kind in "fiub" for r in reference):
        tally.cosines.append(_cosine(np.concatenate([np.ravel(r) for r in reference]), np.concatenate([np.ravel(c) for c in candidate])))
    if wanted & {"max_abs", "mean_abs", "rel"} and tally.count:
        result.max_abs, result.mean_abs = tally.max_abs, tally.mean_sum / tally.count
        result.rel = tally.max_abs / tally.peak if tally.peak > 0 else tally.max_abs
    if "cosine" in wanted and tally.cosines:
        result.cosine = min(tally.cosines)
        result.worst_sample = int(np.argmin(tally.cosines)) if not tiny else None
    if tally.pooled:  # the embedding a user pools from per-token outputs is judged too: cosine is the worse of the two
        result.pooled_cosine = min(tally.pooled)
        result.cosine = min(result.cosine, result.pooled_cosine) if result.cosine is not None else result.pooled_cosine
    for metric, (changed, total) in tally.counts.items():
        if metric in wanted and total:
            setattr(result, metric, 1.0 - changed / total)
            result.counts[metric] = (changed, total)
    if ratios:
        result.close = max(ratios)
    if tally.predicted:
        result.perplexity = (math.exp(tally.log_loss[0] / tally.predicted), math.exp(tally.log_loss[1] / tally.predicted), tally.predicted)
    return result


def token_masks(feeds: Sequence[dict[str, object]]) -> list[np.ndarray | None]:
    """Per sample, the [batch, tokens] attention mask among the inputs (an integer or boolean input named like a mask), if any."""
    return _per_token_inputs(feeds, MASK_NAME, "iub")


def token_ids(feeds: Sequence[dict[str, object]]) -> list[np.ndarray | None]:
    """Per sample, the [batch, tokens] integer input named input_ids (a language model's tokens), if any."""
    return _per_token_inputs(feeds, TOKEN_IDS_NAME, "iu")


def _per_token_inputs(feeds: Sequence[dict[str, object]], name: re.Pattern, kinds: str) -> list[np.ndarray | None]:
    """Per sample, the one 2-D input of those element kinds whose name matches (None where none or several do)."""
    found = []
    for feed in feeds:
        matches = [np.asarray(value) for key, value in feed.items()
                   if name.search(key) and np.ndim(value) == 2 and np.asarray(value).dtype.kind in kinds]  # fmt: skip
        found.append(matches[0] if len(matches) == 1 else None)
    return found


def tensors_of(value: object) -> list[np.ndarray]:
    """The tensors in an output: itself, a sequence's items (ORT gives a list), a map's values, none for an empty optional."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [tensor for item in value for tensor in tensors_of(item)]
    if isinstance(value, dict):
        return [np.asarray(value[key]) for key in sorted(value)]
    return [np.asarray(value)]


def paired_tensors(expected: Sequence[object], actual: Sequence[object]) -> tuple[list[np.ndarray], list[np.ndarray]] | None:
    """One output's values over all samples, sequences unrolled, in matching order; None where a sample's tensor counts differ."""
    ours, theirs = [], []
    for expected_value, actual_value in zip(expected, actual):
        expected_tensors, actual_tensors = tensors_of(expected_value), tensors_of(actual_value)
        if len(expected_tensors) != len(actual_tensors):
            return None
        ours += expected_tensors
        theirs += actual_tensors
    return ours, theirs


def compare(
    reference: Outputs, candidate: Outputs, hook: Callable | None = None, *, metrics: Iterable[str] = ALL_METRICS,
    close: tuple[float, float] | None = None, masks: Sequence[np.ndarray | None] | None = None,
    tokens: Sequence[np.ndarray | None] | None = None,
) -> AccuracyReport:  # fmt: skip
    """The asked-for metrics for every output; the hook (if any) scores the whole candidate against the reference.

    `masks` (one per sample, `token_masks(feeds)`) and `tokens` (`token_ids(feeds)`) apply only to outputs holding one
    tensor per sample."""
    names = list(reference[0]) if reference else []
    wanted = tuple(metrics)
    report = AccuracyReport(samples=len(reference))
    for name in names:
        expected, actual = _paired(name, reference, candidate)
        one_each = len(expected) == len(reference)
        report.outputs.append(output_accuracy(name, expected, actual, wanted, close, masks if one_each else None, tokens if one_each else None))
    if hook is not None:
        report.eval_score, report.eval_check = run_hook(hook, candidate, reference)
    return report


def _paired(name: str, reference: Outputs, candidate: Outputs) -> tuple[list[np.ndarray], list[np.ndarray]]:
    pair = paired_tensors([s[name] for s in reference], [s.get(name) for s in candidate])
    if pair is None:
        raise UserError(f"output '{name}': holds a different number of tensors than the reference")
    return pair
