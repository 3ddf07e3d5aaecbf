"""Accuracy metrics of a candidate's outputs against a reference, output by output, worst sample first.

Outputs are compared tensor by tensor (a sequence output's items, a map's values), so every output
type ORT returns can be judged. Which metrics are computed is up to the caller: the judge asks only for
the ones its tolerances bound, since a mixed-precision search compares many times.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from ortforge.accuracy.tolerance import HIGHER_IS_BETTER, classifier_output
from ortforge.core.errors import UserError

Outputs = list[dict[str, object]]  # one dict of output name -> value per sample
ALL_METRICS = ("cosine", "max_abs", "mean_abs", "rel", "top1")
EVAL_CHECK = "eval_check"  # in measured metrics: 1 when the hook answered True/False (a check), so cached verdicts keep it
# A cosine over a handful of numbers (a VAD's one probability) says little per sample: pool them.
MIN_COSINE_ELEMENTS = 16


@dataclass
class OutputAccuracy:
    """One output's metrics over all samples (None where a metric was not asked for or does not apply)."""

    name: str
    max_abs: float | None = None
    mean_abs: float | None = None
    rel: float | None = None  # max |a-b| / max |reference|: scale-free, robust to near-zero elements
    cosine: float | None = None  # worst sample's cosine similarity (over all samples at once for tiny outputs)
    top1: float | None = None  # agreement of argmax over the last axis, for classifier-like outputs
    close: float | None = None  # worst |a-b| / (atol + rtol |reference|): 1 or less is allclose
    mismatched: int = 0  # elements outside atol + rtol |reference| (when `close` was asked for)
    elements: int = 0


@dataclass
class AccuracyReport:
    """Per-output metrics and the worst of each over all outputs and samples."""

    outputs: list[OutputAccuracy] = field(default_factory=list)
    eval_score: float | None = None
    eval_check: bool = False  # the hook answered True/False: a check that must pass, not a score to bound

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
        if self.eval_check:
            found[EVAL_CHECK] = 1.0
        return found

    def to_dict(self) -> dict:
        return asdict(self)


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


def output_accuracy(
    name: str, reference: list[np.ndarray], candidate: list[np.ndarray], metrics: Iterable[str] = ALL_METRICS,
    close: tuple[float, float] | None = None,
) -> OutputAccuracy:  # fmt: skip
    """The asked-for metrics of one output over all samples (`close` = (rtol, atol) adds the allclose ratio)."""
    wanted = set(metrics)
    result = OutputAccuracy(name)
    max_abs = mean_sum = peak = 0.0
    count = 0
    cosines, agreements, ratios = [], [], []
    tiny = all(np.size(r) < MIN_COSINE_ELEMENTS for r in reference)
    for ref, cand in zip(reference, candidate):
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
        if error is None or not wanted & {"max_abs", "mean_abs", "rel", "cosine", "top1"}:
            continue
        ref64, cand64 = ref_array.astype(np.float64), cand_array.astype(np.float64)
        if error.size:
            max_abs = max(max_abs, float(error.max()))
            mean_sum += float(error.sum())
            count += error.size
            peak = max(peak, float(np.nanmax(np.abs(ref64), initial=0.0)))
        if "cosine" in wanted and not tiny:
            cosines.append(_cosine(ref64, cand64))
        if "top1" in wanted and classifier_output(ref_array):
            agreements.append(np.mean(ref64.argmax(axis=-1) == cand64.argmax(axis=-1)))
    if "cosine" in wanted and tiny and reference:
        cosines.append(_cosine(np.concatenate([np.ravel(r) for r in reference]), np.concatenate([np.ravel(c) for c in candidate])))
    if wanted & {"max_abs", "mean_abs", "rel"} and count:
        result.max_abs, result.mean_abs = max_abs, mean_sum / count
        result.rel = max_abs / peak if peak > 0 else max_abs
    if "cosine" in wanted and cosines:
        result.cosine = min(cosines)
    if agreements:
        result.top1 = float(np.mean(agreements))
    if ratios:
        result.close = max(ratios)
    return result


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
    close: tuple[float, float] | None = None,
) -> AccuracyReport:  # fmt: skip
    """The asked-for metrics for every output; the hook (if any) scores the whole candidate against the reference."""
    names = list(reference[0]) if reference else []
    wanted = tuple(metrics)
    report = AccuracyReport([output_accuracy(name, *_paired(name, reference, candidate), wanted, close) for name in names])
    if hook is not None:
        report.eval_score, report.eval_check = run_hook(hook, candidate, reference)
    return report


def run_hook(hook: Callable, candidate: Outputs, reference: Outputs) -> tuple[float, bool]:
    """The user's eval hook on the candidate's outputs: a score (higher is better), or True/False, a check
    that must pass (returned as 1.0/0.0 and True)."""
    try:
        answer = hook(candidate, reference)
    except Exception as exc:  # the user's code: any failure is theirs to read in one line
        raise UserError(f"the eval hook raised {type(exc).__name__}: {exc}") from None
    if isinstance(answer, (bool, np.bool_)):
        return float(answer), True
    try:
        return float(answer), False
    except (TypeError, ValueError):
        raise UserError(f"the eval hook returned {type(answer).__name__}, expected a number or a bool") from None


def _paired(name: str, reference: Outputs, candidate: Outputs) -> tuple[list[np.ndarray], list[np.ndarray]]:
    pair = paired_tensors([s[name] for s in reference], [s.get(name) for s in candidate])
    if pair is None:
        raise UserError(f"output '{name}': holds a different number of tensors than the reference")
    return pair
