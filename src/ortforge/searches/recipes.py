"""int8 and weight-only recipes: which ones suit a model on this CPU, and building one judged against fp32.

`quantize --mode auto` and `tune` both draw their int8 candidates from `auto_recipes`; a recipe is
built with ORT's quantizers (`transforms/`) and judged on samples it was not calibrated on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from ortforge.accuracy.metrics import (
    AccuracyReport,
    Outputs,
    Tolerance,
    compare,
    is_classifier_output,
)
from ortforge.core.errors import UserError
from ortforge.core.machine import cpu_info
from ortforge.core.model import Model, from_proto, model_size
from ortforge.core.progress import Progress
from ortforge.core.session import run_outputs
from ortforge.data import FeedSet
from ortforge.measure.compare import CandidateScore
from ortforge.transforms.quantize import QuantizeOptions, quantize
from ortforge.transforms.weight_only import WeightOnlyOptions, quantize_weight_only

Recipe = QuantizeOptions | WeightOnlyOptions

VNNI_FEATURES = {"avx512_vnni", "avx_vnni", "amx_int8", "dotprod", "i8mm"}
HEAVY_OPS = ("Conv", "MatMul", "Gemm")


def default_tolerances(reference: Outputs) -> list[Tolerance]:
    """cosine >= 0.99 on every output, and top-1 unchanged where an output looks like class scores."""
    tolerances = [Tolerance("cosine", 0.99)]
    if reference and any(is_classifier_output(array) for array in reference[0].values()):
        tolerances.append(Tolerance("top1", 1.0))
    return tolerances


@dataclass
class RecipeOutcome:
    """One candidate: how it was made, how accurate it is, and (if timed) how fast against fp32."""

    label: str
    options: Recipe | None  # None: the fp32 original
    size_bytes: int = 0
    accuracy: AccuracyReport | None = None
    passed: bool = True
    rejected: str = ""  # why it was dropped, if it was
    speed: CandidateScore | None = None
    notes: list[str] = field(default_factory=list)
    model: Model | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        return {
            "label": self.label,
            "size_bytes": self.size_bytes,
            "accuracy": self.accuracy.to_dict() if self.accuracy else None,
            "passed": self.passed,
            "rejected": self.rejected,
            "speed": self.speed.__dict__ if self.speed else None,
            "notes": self.notes,
        }


def apply_recipe(model: Model, options: Recipe, calibration: FeedSet, progress: Progress | None = None):  # -> TransformResult
    if isinstance(options, WeightOnlyOptions):
        return quantize_weight_only(model, options)
    return quantize(model, options, calibration.samples if options.mode == "static" else None, progress)


def build_recipe(
    model: Model, options: Recipe, calibration: FeedSet, evaluation: FeedSet, reference: Outputs,
    tolerances: Sequence[Tolerance], hook: Callable | None, progress: Progress | None = None,
) -> RecipeOutcome:  # fmt: skip
    """Quantize with one recipe and judge it against the fp32 reference; failures become rejections."""
    outcome = RecipeOutcome(options.describe(), options)
    try:
        result = apply_recipe(model, options, calibration, progress)
        candidate = from_proto(result.proto, base_dir=model.base_dir)
        outcome.model, outcome.notes = candidate, result.notes
        outcome.size_bytes = model_size(candidate)
        outcome.accuracy = compare(reference, run_outputs(candidate, evaluation), hook)
    except UserError as exc:
        outcome.passed, outcome.rejected = False, str(exc)
        return outcome
    if not result.changed:
        outcome.passed, outcome.rejected = False, "nothing was quantized"
        return outcome
    failed = [t for t in tolerances if not t.met_by(outcome.accuracy.metric(t.metric))]
    if failed:
        outcome.passed = False
        outcome.rejected = "; ".join(f"{t.metric} {outcome.accuracy.metric(t.metric):.4g} misses {t.describe()}" for t in failed)
    return outcome


def auto_recipes(family: str, features: Sequence[str] | None = None) -> list[Recipe]:
    """Recipes worth measuring for a model family on this CPU (VNNI or not)."""
    features = set(cpu_info().features if features is None else features)
    vnni = bool(features & VNNI_FEATURES)
    recipes = [
        QuantizeOptions(mode="dynamic", weight_type="s8", per_channel=True, op_types=("MatMul",)),
        QuantizeOptions(mode="dynamic", weight_type="u8", per_channel=True, op_types=("MatMul",)),
        QuantizeOptions(mode="static", per_channel=True, op_types=HEAVY_OPS),
        QuantizeOptions(mode="static", activation_type="s8", per_channel=True, op_types=HEAVY_OPS),
        QuantizeOptions(mode="static", per_channel=True, op_types=("Conv",)),
        QuantizeOptions(mode="static", per_channel=True),
    ]
    if family == "rnn":
        recipes.insert(0, QuantizeOptions(mode="dynamic", weight_type="s8", op_types=("LSTM", "GRU", "MatMul")))
    if family in ("transformer", "mlp"):
        recipes = [r for r in recipes if r.mode == "dynamic"] + [QuantizeOptions(mode="static", per_channel=True, op_types=("MatMul", "Gemm"))]
        # Level 4 (int8 compute) is what makes MatMulNBits fast on CPUs; unset, 8-bit ran ~7x slower than fp32.
        recipes += [WeightOnlyOptions(bits=8, accuracy_level=4), WeightOnlyOptions(bits=4, accuracy_level=4)]
    if not vnni:  # without VNNI, s8 x u8 products can saturate; ORT recommends 7-bit weights
        recipes = [replace(r, reduce_range=True) if isinstance(r, QuantizeOptions) and r.weight_type == "s8" else r for r in recipes]
    return recipes
