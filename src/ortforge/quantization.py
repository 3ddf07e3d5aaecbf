"""`ortforge quantize`: one int8 recipe, or `--mode auto`, checked for accuracy before it is written.

Auto mode builds a few recipes chosen from the model family and the CPU, drops those outside the
accuracy tolerance, times the rest against fp32 in one interleaved run, and keeps the fastest one that
beats fp32 consistently; otherwise it keeps fp32 and says so. ORT's default recipes are often slower
than fp32 on CNNs (QInt8 ConvInteger) or wrong (all-op static QDQ on magika), so nothing is assumed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from .accuracy import AccuracyReport, Outputs, Tolerance, compare, is_classifier_output
from .bench import BenchOptions, BenchReport, CandidateScore, Progress, Variant, bench, consistent_winner, score
from .data import GENERATED_WARNING, FeedSet
from .errors import UserError
from .machine import cpu_info
from .model import Model, from_proto, model_size, save_model
from .session import SessionConfig, run_checked
from .transforms.quantize import QuantizeOptions, quantize
from .transforms.weight_only import WeightOnlyOptions, quantize_weight_only

Recipe = QuantizeOptions | WeightOnlyOptions

FP32 = "fp32 (original)"
VNNI_FEATURES = {"avx512_vnni", "avx_vnni", "amx_int8", "dotprod", "i8mm"}
HEAVY_OPS = ("Conv", "MatMul", "Gemm")


def default_tolerances(reference: Outputs) -> list[Tolerance]:
    """cosine >= 0.99 on every output, and top-1 unchanged where an output looks like class scores."""
    tolerances = [Tolerance("cosine", 0.99)]
    if reference and any(is_classifier_output(array) for array in reference[0].values()):
        tolerances.append(Tolerance("top1", 1.0))
    return tolerances


def run_outputs(model: Model, feeds: FeedSet, config: SessionConfig | None = None) -> Outputs:
    session = (config or SessionConfig()).build(model)
    names = [output.name for output in session.get_outputs()]
    return [dict(zip(names, run_checked(session, feed, model.name, index))) for index, feed in enumerate(feeds.samples)]


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


@dataclass
class QuantizeReport:
    output: str
    chosen: RecipeOutcome
    outcomes: list[RecipeOutcome]
    tolerances: list[Tolerance]
    why: str
    generated_inputs: bool
    measurement: BenchReport | None = None
    forced: bool = False
    notes: list[str] = field(default_factory=list)
    exclusion: object = None  # exclusion.ExclusionReport when nodes were kept in float to meet the tolerance

    def to_dict(self) -> dict:
        return {
            "exclusion": self.exclusion.to_dict() if self.exclusion else None,
            "output": self.output,
            "chosen": self.chosen.label,
            "why": self.why,
            "tolerances": [t.describe() for t in self.tolerances],
            "outcomes": [o.to_dict() for o in self.outcomes],
            "generated_inputs": self.generated_inputs,
            "forced": self.forced,
            "measurement": self.measurement.to_dict() if self.measurement else None,
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


def _measure(
    model: Model, outcomes: list[RecipeOutcome], feeds: FeedSet, options: BenchOptions, progress: Progress | None
) -> BenchReport:
    passing = [o for o in outcomes if o.passed and o.model is not None]
    variants = [Variant(FP32, model, SessionConfig(), feeds)] + [Variant(o.label, o.model, SessionConfig(), feeds) for o in passing]
    report = bench(variants, replace(options, profile=False), progress)
    for outcome, result in zip(passing, report.variants[1:]):
        outcome.speed = score(result, report.variants[0])
    return report


def choose(fp32: RecipeOutcome, outcomes: list[RecipeOutcome]) -> tuple[RecipeOutcome, str]:
    """The fastest recipe within tolerance that beats fp32 in most rounds; fp32 when none does."""
    timed = [o for o in outcomes if o.passed and o.speed is not None]
    winner = consistent_winner([fp32.speed] + [o.speed for o in timed]) if fp32.speed else None
    if winner is None:
        reason = "no recipe within tolerance was consistently faster than fp32" if timed else "no recipe stayed within tolerance"
        return fp32, f"kept fp32: {reason}"
    chosen = next(o for o in timed if o.speed is winner)
    return chosen, f"{chosen.label}: {winner.ratio:.2f}x fp32 latency ({winner.low:.2f}-{winner.high:.2f}), faster in {winner.wins:.0%} of rounds, within tolerance"


def _within(progress: Progress, label: str) -> Progress:
    """Progress of one recipe's calibration, shown under its label in the first half of the bar."""
    return lambda what, fraction: progress(f"{label}: {what}", fraction * 0.5)


def quantize_model(
    model: Model,
    output: str | os.PathLike[str],
    recipes: Sequence[Recipe],
    calibration: FeedSet,
    evaluation: FeedSet,
    *,
    tolerances: Sequence[Tolerance] | None = None,
    hook: Callable | None = None,
    force: bool = False,
    auto_exclude: bool = True,
    measure: BenchOptions | None = None,
    progress: Progress | None = None,
) -> QuantizeReport:
    """Build each recipe, judge accuracy, time the survivors vs fp32 (when asked or when several), write the winner.

    A single recipe that misses the tolerance first gets nodes kept in float (`auto_exclude`).
    """
    report_progress = progress or (lambda what, fraction: None)
    reference = run_outputs(model, evaluation)
    tolerances = list(tolerances) if tolerances else default_tolerances(reference)
    outcomes = []
    for index, options in enumerate(recipes):
        report_progress(f"building {options.describe()}", index / max(len(recipes), 1) * 0.5)
        outcomes.append(build_recipe(model, options, calibration, evaluation, reference, tolerances, hook, _within(report_progress, options.describe())))
    exclusion = None
    first = outcomes[0] if len(outcomes) == 1 else None
    if first and not first.passed and first.model is not None and isinstance(first.options, QuantizeOptions) and auto_exclude and not force:
        from .exclusion import search_exclusions

        fixed, exclusion = search_exclusions(model, first, calibration, evaluation, reference, tolerances, hook, progress)
        if exclusion.met:
            fixed.label = f"{first.label}, {len(exclusion.excluded)} node(s) kept float"
            outcomes = [first, fixed]
    fp32 = RecipeOutcome(FP32, None, model_size(model), compare(reference, reference), model=model)
    measurement = None
    auto = len(recipes) > 1
    if auto or measure is not None:
        measurement = _measure(model, outcomes, evaluation, measure or BenchOptions(max_seconds=3.0), progress)
        fp32.speed = score(measurement.variants[0], measurement.variants[0])
    if auto:
        chosen, why = choose(fp32, outcomes)
    else:
        chosen = outcomes[-1]
        if not chosen.passed and not force:
            tried = f"; keeping nodes in float did not help ({exclusion.notes[0]})" if exclusion and exclusion.notes else ""
            raise UserError(f"{Path(output).name}: not written, {chosen.label}: {chosen.rejected}{tried}", hint="--force writes it anyway; the report says so")
        why = "the requested recipe" + ("" if chosen.passed else f", written despite: {chosen.rejected} (--force)")
        if exclusion and exclusion.met:
            why = f"the requested recipe missed the tolerance; keeping {len(exclusion.excluded)} node(s) in float met it ({exclusion.attempts} attempts)"
    saved = save_model(chosen.model.proto, output, source=model)
    notes = [GENERATED_WARNING] if evaluation.generated else []
    if chosen is fp32:
        notes.append("the output is the fp32 model unchanged")
    return QuantizeReport(str(saved), chosen, [fp32] + outcomes, tolerances, why, evaluation.generated, measurement,
                          forced=not chosen.passed, notes=notes, exclusion=exclusion)  # fmt: skip
