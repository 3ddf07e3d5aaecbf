"""The gate every transform passes before its result is written: same feeds, outputs within tolerance."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from ortforge.accuracy.metrics import paired_tensors
from ortforge.core.errors import UserError
from ortforge.core.model import Model
from ortforge.core.session import SessionConfig, run_checked
from ortforge.data import FeedSet

DEFAULT_RTOL = 1e-5
DEFAULT_ATOL = 1e-5


@dataclass
class OutputDiff:
    name: str
    max_abs: float
    max_rel: float  # |a-b| / max(|a|, tiny), worst element
    mismatched: int  # elements outside atol + rtol*|reference|
    elements: int
    cosine: float | None = None  # for float outputs


@dataclass
class Verification:
    """How a candidate's outputs compare with the original's on the same feeds."""

    passed: bool
    rtol: float
    atol: float
    samples: int
    generated_inputs: bool
    outputs: list[OutputDiff] = field(default_factory=list)
    problem: str = ""  # why it failed, in one line
    reference: str = "the original"

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        worst = max(self.outputs, key=lambda o: o.max_abs, default=None)
        figures = f"max abs diff {worst.max_abs:.3g}, max rel diff {worst.max_rel:.3g}" if worst else "no outputs"
        verdict = "within" if self.passed else "OUTSIDE"
        return f"outputs {verdict} rtol={self.rtol:g} atol={self.atol:g} of {self.reference} on {self.samples} sample(s): {figures}"


def run_all(model: Model, config: SessionConfig, feeds: FeedSet) -> list[list[np.ndarray]]:
    session = config.build(model)
    return [run_checked(session, feed, model.name, index) for index, feed in enumerate(feeds.samples)]


def compare_outputs(
    reference: list[list[np.ndarray]], candidate: list[list[np.ndarray]], names: list[str], rtol: float, atol: float
) -> list[OutputDiff]:
    """Per output, the worst differences over all samples."""
    diffs = []
    for index, name in enumerate(names):
        pair = paired_tensors([sample[index] for sample in reference], [sample[index] for sample in candidate])
        if pair is None:
            raise ShapeMismatch(f"output '{name}' holds a different number of tensors than the original's")
        diffs.append(_diff(name, *pair, rtol, atol))
    return diffs


def _diff(name: str, expected: list[np.ndarray], actual: list[np.ndarray], rtol: float, atol: float) -> OutputDiff:
    max_abs = max_rel = 0.0
    mismatched = elements = 0
    dots = norms_a = norms_b = 0.0
    is_float = all(e.dtype.kind == "f" for e in expected)
    for e, a in zip(expected, actual):
        if e.shape != a.shape:
            raise ShapeMismatch(f"output '{name}' has shape {list(a.shape)}, the original gives {list(e.shape)}")
        if not is_float:
            wrong = int(np.count_nonzero(e != a))
            mismatched += wrong
            elements += e.size
            max_abs = max(max_abs, float(wrong > 0))
            continue
        e64, a64 = e.astype(np.float64), a.astype(np.float64)
        error = np.abs(e64 - a64)
        if error.size:
            max_abs = max(max_abs, float(np.nanmax(error)))
            max_rel = max(max_rel, float(np.nanmax(error / np.maximum(np.abs(e64), 1e-12))))
        mismatched += int(np.count_nonzero(~np.isclose(a64, e64, rtol=rtol, atol=atol, equal_nan=True)))
        elements += e.size
        dots += float(np.sum(e64 * a64))
        norms_a += float(np.sum(e64 * e64))
        norms_b += float(np.sum(a64 * a64))
    cosine = dots / np.sqrt(norms_a * norms_b) if is_float and norms_a > 0 and norms_b > 0 else None
    return OutputDiff(name, max_abs, max_rel, mismatched, elements, cosine)


class ShapeMismatch(Exception):
    """A candidate output whose shape differs from the reference's: no element-wise comparison applies."""


def verify(
    original: Model,
    candidate: Model,
    feeds: FeedSet,
    *,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    original_config: SessionConfig | None = None,
    candidate_config: SessionConfig | None = None,
) -> Verification:
    """Run both models on the same feeds and compare every output; never raises for a mismatch."""
    names = [output.name for output in original.proto.graph.output]
    candidate_names = [output.name for output in candidate.proto.graph.output]
    original_config = original_config or SessionConfig(graph_optimization_level="disable")
    result = Verification(True, rtol, atol, len(feeds), feeds.generated)
    result.reference = f"the original at ORT level {original_config.graph_optimization_level}"
    if candidate_names != names:
        result.passed, result.problem = False, f"outputs changed: {candidate_names} instead of {names}"
        return result
    reference = run_all(original, original_config, feeds)
    produced = run_all(candidate, candidate_config or SessionConfig(), feeds)
    try:
        result.outputs = compare_outputs(reference, produced, names, rtol, atol)
    except ShapeMismatch as exc:
        result.passed, result.problem = False, str(exc)
        return result
    bad = [o for o in result.outputs if o.mismatched]
    if bad:
        result.passed = False
        result.problem = f"output '{bad[0].name}': {bad[0].mismatched} of {bad[0].elements} values outside tolerance (max abs diff {bad[0].max_abs:.3g})"
    return result


def require(verification: Verification, what: str, force: bool = False) -> None:
    """Refuse to go on with a result outside tolerance unless the user forces it."""
    if not verification.passed and not force:
        raise UserError(f"{what}: not written, {verification.problem}", hint="--force writes it anyway; the report says so")
