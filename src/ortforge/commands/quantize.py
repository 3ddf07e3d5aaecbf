"""`ortforge quantize`: one int8 recipe, or `--mode auto`, checked for accuracy before it is written.

Auto mode builds a few recipes chosen from the model family and the CPU, drops those outside the
accuracy tolerance, times the rest against fp32 in one interleaved run, and keeps the fastest one that
beats fp32 consistently; otherwise it keeps fp32 and says so. ORT's default recipes are often slower
than fp32 on CNNs (QInt8 ConvInteger) or wrong (all-op static QDQ on magika), so nothing is assumed.
`--target tensorrt` writes the float model with ORT's TensorRT calibration table instead.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from ortforge.accuracy.hooks import load_eval_hook
from ortforge.accuracy.judge import Judge
from ortforge.accuracy.reopen import save_verified
from ortforge.accuracy.tolerance import Tolerance, default_tolerances, parse_tolerances
from ortforge.analysis.model_report import inspect_model
from ortforge.commands.common import calibration_and_evaluation, feeds_for, open_model
from ortforge.core.deadline import WRITE_S, Deadline, timed
from ortforge.core.errors import OptionError, UserError
from ortforge.core.files import atomic_write_bytes, atomic_write_text
from ortforge.core.model import Model, model_size, save_model
from ortforge.core.options import default_of
from ortforge.core.outputs import guard_file, guard_folder, user_files
from ortforge.core.progress import Progress, section, silent
from ortforge.core.session import SessionConfig, run_outputs
from ortforge.data import GENERATED_WARNING, FeedSet, ShapeOptions
from ortforge.measure.bench import BenchOptions, BenchReport, Variant, bench
from ortforge.measure.compare import score, verdict_text, winner
from ortforge.measure.cost import reference_run
from ortforge.searches.exclusion import RANKING_SAMPLES, SEARCH_MARGIN, ExclusionReport, search_exclusions
from ortforge.searches.recipes import auto_recipes, build_recipe
from ortforge.searches.trial import Candidate, Recipe, Trial
from ortforge.transforms.quantize import QuantizeOptions, check_names
from ortforge.transforms.tensorrt import (
    CONFIG_FILE,
    MODEL_FILE,
    TensorRTInt8,
    calibration_table,
    tensorrt_config,
)
from ortforge.transforms.weight_only import WeightOnlyOptions

FP32 = Candidate("fp32 (original)", "fp32")
MODES = ("dynamic", "static", "int4", "weight-only", "auto")
TIME_BUDGET_S = 300.0  # for the recipe search (--mode auto) and the exclusion search
TARGETS = ("cpu", "tensorrt")


@dataclass
class QuantizeReport:
    output: str
    chosen: Trial
    trials: list[Trial]  # fp32 first, then each recipe (and the recipe with nodes kept float, when searched)
    tolerances: list[Tolerance]
    why: str
    generated_inputs: bool
    measurement: BenchReport | None = None
    forced: bool = False
    notes: list[str] = field(default_factory=list)
    exclusion: ExclusionReport | None = None  # when nodes were kept in float to meet the tolerance

    def to_dict(self) -> dict:
        return {
            "exclusion": self.exclusion.to_dict() if self.exclusion else None,
            "output": self.output,
            "chosen": self.chosen.label,
            "why": self.why,
            "tolerances": [t.describe() for t in self.tolerances],
            "trials": [trial.to_dict() for trial in self.trials],
            "generated_inputs": self.generated_inputs,
            "forced": self.forced,
            "measurement": self.measurement.to_dict() if self.measurement else None,
            "notes": self.notes,
        }


def _measure(model: Model, trials: list[Trial], feeds: FeedSet, options: BenchOptions, progress: Progress | None) -> BenchReport:
    """fp32 and every accurate trial timed in one interleaved run; each trial's speed is its score against fp32."""
    passing = [trial for trial in trials if trial.passed and trial.model is not None]
    variants = [Variant(FP32.label, model, SessionConfig(), feeds)] + [Variant(t.label, t.model, SessionConfig(), feeds) for t in passing]
    report = bench(variants, replace(options, profile=False), progress)
    for trial, result in zip(passing, report.variants[1:]):
        trial.speed = score(result, report.variants[0])
    return report


def choose(fp32: Trial, trials: list[Trial], noise: float) -> tuple[Trial, str]:
    """The simplest recipe within tolerance and within noise of the fastest that beats fp32 beyond noise; fp32 when none does."""
    timed = [trial for trial in trials if trial.passed and trial.speed is not None]
    by_label = {trial.label: trial for trial in timed}
    found = winner([fp32.speed] + [trial.speed for trial in timed], noise, complexity=lambda s: by_label[s.label].candidate.complexity) if fp32.speed else None
    if found is None:
        reason = f"no recipe within tolerance was faster than fp32 beyond the noise of ±{noise:.1%}" if timed else "no recipe stayed within tolerance"
        return fp32, f"kept fp32: {reason}"
    chosen = by_label[found.label]
    return chosen, f"{chosen.label}: {verdict_text(found, noise, 'fp32')}, within tolerance"


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
    deadline: Deadline | None = None,
) -> QuantizeReport:
    """Build each recipe, judge accuracy, time the survivors vs fp32 (when asked or when several), write the winner.

    A single recipe that misses the tolerance first gets nodes kept in float (`auto_exclude`). With a `deadline`,
    no recipe build or exclusion attempt starts that would leave too little time to time the survivors and write.
    """
    shown = progress or silent
    auto = len(recipes) > 1
    measure = measure or (BenchOptions(max_seconds=3.0, profile=False) if auto else None)
    reference, cost = reference_run(model, evaluation)
    keep_s = (cost.minimum(2, measure) if measure is not None else 0.0) + WRITE_S + 2 * cost.create_s
    if auto and deadline is not None and deadline.left < keep_s:
        needed = deadline.elapsed + keep_s
        raise OptionError("time_budget_s", f"{deadline.budget_s:g}s", f"too short to time even one recipe against fp32 here (about {needed:.0f} s "
                          "before any recipe is built)", hint=f"give at least {math.ceil(2 * needed)}s")  # fmt: skip
    judge = Judge(reference, list(tolerances) if tolerances else default_tolerances(reference), hook, feeds=evaluation)
    trials = []
    for index, recipe in enumerate(recipes):
        if index and deadline is not None and not deadline.fits("build", keep_s):
            trials.append(Trial(Candidate.of_recipe(recipe), error="skipped: time budget"))
            continue
        shown(f"building {recipe.describe()}", index / max(len(recipes), 1) * 0.5)
        with timed(deadline, "build"):
            trials.append(build_recipe(model, recipe, calibration, evaluation, judge, section(progress, recipe.describe(), 0.0, 0.5)))
    exclusion = None
    first = trials[0] if len(trials) == 1 else None
    if first and not first.passed and first.model is not None and isinstance(first.candidate.recipe, QuantizeOptions) and auto_exclude and not force:
        # Searched on the calibration samples; the set found is then judged on the evaluation samples, which it never saw.
        search_feeds = calibration if len(calibration) else evaluation
        searched_on = judge.on(run_outputs(model, search_feeds), search_feeds, margin=SEARCH_MARGIN) if len(calibration) else judge
        ranking = replace(search_feeds, samples=search_feeds.samples[:RANKING_SAMPLES])  # a few samples rank as well as many
        fixed, exclusion = search_exclusions(model, first, calibration, search_feeds, searched_on, progress, deadline=deadline, keep_s=keep_s,
                                             ranking_feeds=ranking)  # fmt: skip
        if exclusion.met:
            fixed = build_recipe(model, fixed.candidate.recipe, calibration, evaluation, judge)
            fixed.candidate = replace(fixed.candidate, label=f"{first.label}, {len(exclusion.excluded)} node(s) kept float")
            if fixed.passed:
                trials = [first, fixed]
            else:
                exclusion.met = False
                exclusion.notes.insert(0, f"the {len(exclusion.excluded)} node(s) found on the calibration samples miss on the evaluation samples: "
                                          f"{fixed.why_not}")  # fmt: skip
    fp32 = Trial(FP32, model, judge(reference), size_bytes=model_size(model))
    measurement = None
    if measure is not None:
        if deadline is not None:  # the time left, less the writing, shared by fp32, its A/A pair and the survivors
            timed_count = 1 + sum(t.passed and t.model is not None for t in trials)
            seconds = cost.seconds_per_variant(deadline.left - WRITE_S - 2 * cost.create_s, timed_count, measure)
            measure = replace(measure, max_seconds=min(measure.max_seconds, seconds), deadline=deadline.at - WRITE_S - 2 * cost.create_s)
        measurement = _measure(model, trials, evaluation, measure, progress)
        fp32.speed = score(measurement.variants[0], measurement.variants[0])
    if auto:
        chosen, why = choose(fp32, trials, measurement.noise_floor)
    else:
        chosen = trials[-1]
        if not chosen.passed and not force:
            tried = f"; keeping nodes in float did not help ({exclusion.notes[0]})" if exclusion and exclusion.notes else ""
            raise UserError(f"{Path(output).name}: not written, {chosen.label}: {chosen.why_not}{tried}", hint="force (--force) writes it anyway; the report says so")
        why = "the requested recipe" + ("" if chosen.passed else f", written despite: {chosen.why_not} (forced)")
        if exclusion and exclusion.met:
            why = f"the requested recipe missed the tolerance; keeping {len(exclusion.excluded)} node(s) in float met it ({exclusion.attempts} attempts)"
    # Forced past the judge, the written model is checked to load and run only.
    saved, written = save_verified(chosen.model.proto, output, model, evaluation, judge if chosen.passed else None,
                                   data_dir=chosen.model.base_dir)
    notes = ([GENERATED_WARNING] if evaluation.generated else []) + judge.notes + written
    if chosen is fp32:
        notes.append("the output is the fp32 model unchanged")
    return QuantizeReport(str(saved), chosen, [fp32] + trials, judge.tolerances, why, evaluation.generated, measurement,
                          forced=not chosen.passed, notes=notes, exclusion=exclusion)  # fmt: skip


def quantize(
    reference: str | Path,
    output: str | Path,
    *,
    mode: str = default_of(QuantizeOptions, "mode"),
    recipe: dict | None = None,
    weight_only: dict | None = None,
    calib: str | None = None,
    calib_samples: int = 16,
    data: str | None = None,
    samples: int = 32,
    shape_options: ShapeOptions | None = None,
    tolerances: Sequence[str] = (),
    eval_hook: str | None = None,
    force: bool = False,
    auto_exclude: bool = True,
    measure: BenchOptions | None = None,
    time_budget_s: float = TIME_BUDGET_S,
    progress: Progress | None = None,
) -> QuantizeReport:
    """Quantize with one recipe or search recipes (`mode='auto'`), all within `time_budget_s` of the call.

    `recipe` holds QuantizeOptions fields (dynamic/static int8); `weight_only` WeightOnlyOptions fields
    (`mode='int4'` or `'weight-only'`).
    """
    deadline = Deadline(time_budget_s)  # checked before any work; the whole command counts
    if mode not in MODES:
        raise OptionError("mode", mode, f"choose one of {', '.join(MODES)}")
    model = open_model(reference)
    guard_file(output, user_files(model, calib, data, eval_hook))
    if calib is not None and data is not None:  # both given: the user split them already
        calibration = feeds_for(model, reference, calib, samples=calib_samples, shape_options=shape_options, option="calib")
        evaluation = feeds_for(model, reference, data, samples=samples, shape_options=shape_options)
    else:
        calibration, evaluation = calibration_and_evaluation(model, reference, calib or data, calib_samples=calib_samples, samples=samples,
                                                             shape_options=shape_options, option="calib" if calib else "data")  # fmt: skip
    recipes: list[Recipe]
    if mode == "auto":
        recipes = auto_recipes(inspect_model(model, shape_options).family)
    elif mode in ("int4", "weight-only"):
        settings = dict(weight_only or {})
        if mode == "int4" and settings.setdefault("bits", 4) != 4:
            raise OptionError("bits", settings["bits"], "mode int4 quantizes weights to 4 bits; use mode weight-only for 8")
        recipes = [WeightOnlyOptions(**settings)]
    else:
        recipes = [QuantizeOptions(mode=mode, **(recipe or {}))]
        check_names(model.proto, recipes[0])  # before calibration and quantization, not after
    return quantize_model(
        model,
        output,
        recipes,
        calibration,
        evaluation,
        tolerances=parse_tolerances(tolerances) or None,
        hook=load_eval_hook(eval_hook) if eval_hook else None,
        force=force,
        auto_exclude=auto_exclude,
        measure=measure,
        progress=progress,
        deadline=deadline,
    )


def quantize_for_tensorrt(
    reference: str | Path,
    output: str | Path,
    *,
    method: str = default_of(QuantizeOptions, "calibration_method"),
    calib: str | None = None,
    calib_samples: int = 16,
    shape_options: ShapeOptions | None = None,
    overwrite: bool = False,
) -> TensorRTInt8:
    """TensorRT int8: the float model, ORT's TensorRT calibration table from ortforge's calibration, a session config.
    `overwrite` replaces an earlier ortforge output folder."""
    model = open_model(reference)
    guard_folder(output, user_files(model, calib), marker=CONFIG_FILE, overwrite=overwrite)
    feeds = feeds_for(model, reference, calib, samples=calib_samples, shape_options=shape_options, option="calib")
    return write_tensorrt_int8(model, feeds, output, method)


def write_tensorrt_int8(model: Model, feeds: FeedSet, folder: str | os.PathLike[str], method: str = "minmax") -> TensorRTInt8:
    """Calibrate symmetrically, write model + TensorRT table + session config into `folder`."""
    out = Path(folder)
    table, result = calibration_table(model, feeds, method)
    out.mkdir(parents=True, exist_ok=True)
    for name, content in table.items():
        atomic_write_bytes(out / name, content)
    save_model(model.proto, out / MODEL_FILE, source=model)
    config = tensorrt_config(out)
    atomic_write_text(out / CONFIG_FILE, config.to_json())
    notes = [GENERATED_WARNING] if feeds.generated else []
    notes.append(f"run it with `ortforge bench {out / MODEL_FILE} {out / CONFIG_FILE}` on a machine with the TensorRT EP")
    return TensorRTInt8(str(out), len(result.ranges), result.samples, config, notes)
