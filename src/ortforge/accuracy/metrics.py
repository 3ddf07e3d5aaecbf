"""Accuracy metrics of a candidate's outputs against a reference, tolerances on them, and the user's hook.

Errors (max_abs, mean_abs, rel) must stay at or below their tolerance; agreements (cosine, top1,
and the user's `--eval` hook by default) must stay at or above it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from ortforge.core.errors import UserError
from ortforge.data.sources import import_hook_module

Outputs = list[dict[str, np.ndarray]]  # one dict of output name -> array per sample
HIGHER_IS_BETTER = {"cosine", "top1", "eval"}
LOWER_IS_BETTER = {"max_abs", "mean_abs", "rel"}
METRICS = HIGHER_IS_BETTER | LOWER_IS_BETTER
# A cosine over a handful of numbers (a VAD's one probability) says little per sample: pool them.
MIN_COSINE_ELEMENTS = 16


@dataclass(frozen=True)
class Tolerance:
    """One bound on one metric, e.g. cosine >= 0.99 or max_abs <= 1e-3."""

    metric: str
    value: float

    @property
    def higher_is_better(self) -> bool:
        return self.metric in HIGHER_IS_BETTER

    def met_by(self, measured: float) -> bool:
        return measured >= self.value if self.higher_is_better else measured <= self.value

    def describe(self) -> str:
        return f"{self.metric} {'>=' if self.higher_is_better else '<='} {self.value:g}"


def parse_tolerance(text: str) -> Tolerance:
    """'cosine=0.99' -> Tolerance('cosine', 0.99)."""
    metric, sep, value = text.partition("=")
    if not sep or metric not in METRICS:
        raise UserError(f"--tolerance '{text}': expected METRIC=VALUE with METRIC one of {', '.join(sorted(METRICS))}")
    try:
        return Tolerance(metric, float(value))
    except ValueError:
        raise UserError(f"--tolerance '{text}': '{value}' is not a number") from None


@dataclass
class OutputAccuracy:
    name: str
    max_abs: float
    mean_abs: float
    rel: float  # max |a-b| / max |reference|: scale-free, robust to near-zero elements
    cosine: float  # worst sample's cosine similarity (over all samples at once for tiny outputs)
    top1: float | None  # agreement of argmax over the last axis, for classifier-like outputs


@dataclass
class AccuracyReport:
    """Per-output metrics and the worst of each over all outputs and samples."""

    outputs: list[OutputAccuracy] = field(default_factory=list)
    eval_score: float | None = None

    def metric(self, name: str) -> float:
        if name == "eval":
            if self.eval_score is None:
                raise UserError("tolerance on 'eval' needs --eval module:function")
            return self.eval_score
        values = [getattr(o, name) for o in self.outputs if getattr(o, name) is not None]
        if not values:
            raise UserError(f"metric '{name}' does not apply to these outputs")
        return min(values) if name in HIGHER_IS_BETTER else max(values)

    def meets(self, tolerances: Sequence[Tolerance]) -> bool:
        return all(t.met_by(self.metric(t.metric)) for t in tolerances)

    def to_dict(self) -> dict:
        return asdict(self)


def is_classifier_output(array: np.ndarray) -> bool:
    """[batch, classes] scores, or [batch, steps, classes] probabilities: where top-1 agreement means something.

    A 3-D output counts only when its rows are probabilities (a recurrent state or hidden states are not).
    """
    if array.dtype.kind != "f" or array.shape[-1:] < (2,) or array.size == 0:
        return False
    if array.ndim == 2:
        return True
    if array.ndim == 3:
        sums = np.asarray(array, np.float64).sum(axis=-1)
        return bool(array.min() >= 0 and np.allclose(sums, 1.0, atol=1e-3))
    return False


def _cosine(reference: np.ndarray, candidate: np.ndarray) -> float:
    reference, candidate = np.asarray(reference, np.float64).ravel(), np.asarray(candidate, np.float64).ravel()
    norm = np.linalg.norm(reference) * np.linalg.norm(candidate)
    if not np.isfinite(norm):
        return 0.0
    return float(np.dot(reference, candidate) / norm) if norm > 0 else float(np.array_equal(reference, candidate))


def output_accuracy(name: str, reference: list[np.ndarray], candidate: list[np.ndarray]) -> OutputAccuracy:
    """Metrics for one output over all samples."""
    max_abs = mean_sum = 0.0
    count = 0
    peak = 0.0
    cosines, agreements = [], []
    tiny = all(np.size(r) < MIN_COSINE_ELEMENTS for r in reference)
    for ref, cand in zip(reference, candidate):
        ref64, cand64 = np.asarray(ref, np.float64), np.asarray(cand, np.float64)
        if ref64.shape != cand64.shape:
            raise UserError(f"output '{name}': shape {list(cand64.shape)} differs from the reference's {list(ref64.shape)}")
        error = np.abs(ref64 - cand64)
        if error.size:
            max_abs = max(max_abs, float(error.max()))
            mean_sum += float(error.sum())
            count += error.size
            peak = max(peak, float(np.abs(ref64).max()))
        if not tiny:
            cosines.append(_cosine(ref64, cand64))
        if is_classifier_output(np.asarray(ref)):
            agreements.append(np.mean(ref64.argmax(axis=-1) == cand64.argmax(axis=-1)))
    if tiny and reference:
        cosines.append(_cosine(np.concatenate([np.ravel(r) for r in reference]), np.concatenate([np.ravel(c) for c in candidate])))
    return OutputAccuracy(
        name=name,
        max_abs=max_abs,
        mean_abs=mean_sum / count if count else 0.0,
        rel=max_abs / peak if peak > 0 else max_abs,
        cosine=min(cosines) if cosines else 1.0,
        top1=float(np.mean(agreements)) if agreements else None,
    )


def tensors_of(value: object) -> list[np.ndarray]:
    """The tensors in an output: itself, a sequence's items (ORT gives a list), a map's values, none for an empty optional."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [tensor for item in value for tensor in tensors_of(item)]
    if isinstance(value, dict):
        return [np.asarray(value[key]) for key in sorted(value)]
    return [np.asarray(value)]


def compare(reference: Outputs, candidate: Outputs, hook: Callable | None = None) -> AccuracyReport:
    """All metrics for every output; the hook (if any) scores the whole candidate against the reference."""
    names = list(reference[0]) if reference else []
    report = AccuracyReport([output_accuracy(n, *_paired(n, reference, candidate)) for n in names])
    if hook is not None:
        try:
            report.eval_score = float(hook(candidate, reference))
        except Exception as exc:
            raise UserError(f"--eval hook raised {type(exc).__name__}: {exc}") from None
    return report


def _paired(name: str, reference: Outputs, candidate: Outputs) -> tuple[list[np.ndarray], list[np.ndarray]]:
    pair = paired_tensors([s[name] for s in reference], [s[name] for s in candidate])
    if pair is None:
        raise UserError(f"output '{name}': holds a different number of tensors than the reference")
    return pair


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


def load_eval_hook(spec: str) -> Callable:
    """'module:function' or 'file.py:function' -> the function(outputs, reference) -> float."""
    module_name, sep, function_name = spec.rpartition(":")
    if not sep or not module_name or not function_name.isidentifier():
        raise UserError(f"--eval '{spec}': expected module:function or file.py:function")
    function = getattr(import_hook_module(module_name), function_name, None)
    if not callable(function):
        raise UserError(f"--eval '{spec}': '{module_name}' has no function '{function_name}'")
    return function
