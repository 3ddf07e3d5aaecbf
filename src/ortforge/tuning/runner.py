"""The trial runner: build a candidate (cached on disk) and measure candidates on a target.

`TrialRunner` is the small interface the search talks to; `LocalRunner` runs everything on this
machine. A cluster backend would implement the same two methods and fan candidates out.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from ortforge.accuracy.metrics import AccuracyReport, Outputs, Tolerance, compare
from ortforge.core.errors import UserError
from ortforge.core.files import atomic_write_text
from ortforge.core.model import Model, from_proto, load_model, model_size, save_model
from ortforge.core.progress import Progress
from ortforge.core.session import SessionConfig, run_outputs
from ortforge.data import FeedSet
from ortforge.measure.bench import BenchOptions, BenchReport, Variant, bench
from ortforge.searches.recipes import apply_recipe
from ortforge.tuning.candidates import PrecisionCandidate, frozen_options, recipe_of

RESULT_FILE = "result.json"
EXCLUSION_ATTEMPTS = 6  # quantize-and-judge rounds the exclusion search may spend
RANKING_SAMPLES = 4  # samples quant-debug ranks layers on for the exclusion search
MODEL_FILE = "model.onnx"


@dataclass
class Trial:
    """A built candidate and how accurate it is against the fp32 reference."""

    candidate: PrecisionCandidate
    model: Model | None
    metrics: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    error: str = ""  # why it could not be built
    cached: bool = False
    size_bytes: int = 0

    def passes(self, tolerances: Sequence[Tolerance]) -> tuple[bool, str]:
        if self.error:
            return False, self.error
        failed = [t for t in tolerances if t.metric in self.metrics and not t.met_by(self.metrics[t.metric])]
        missing = [t for t in tolerances if t.metric not in self.metrics]
        if missing:
            return False, f"metric {missing[0].metric} not available for this model"
        if failed:
            return False, "; ".join(f"{t.metric} {self.metrics[t.metric]:.4g} misses {t.describe()}" for t in failed)
        return True, ""


@dataclass
class MeasureTarget:
    label: str
    trial: Trial
    config: SessionConfig
    streams: int = 1  # requests in flight at once


class TrialRunner(Protocol):
    def build(self, candidate: PrecisionCandidate) -> Trial: ...
    def measure(self, targets: Sequence[MeasureTarget], options: BenchOptions, progress: Progress | None = None) -> BenchReport: ...
    def exclusion(self, trial: Trial, tolerances: Sequence[Tolerance], progress: Progress | None = None) -> PrecisionCandidate | None:
        """The int8 candidate with the fewest nodes kept float that meets the tolerances (None if none found)."""
        ...


def feeds_hash(feeds: FeedSet) -> str:
    digest = hashlib.sha256()
    for sample in feeds.samples:
        for name in sorted(sample):
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(sample[name]).tobytes())
    return digest.hexdigest()[:16]


def metrics_of(report: AccuracyReport) -> dict[str, float]:
    metrics = {}
    for name in ("cosine", "max_abs", "mean_abs", "rel", "top1", "eval"):
        try:
            metrics[name] = report.metric(name)
        except UserError:
            continue
    return metrics


class LocalRunner:
    """Builds candidates here, caching each under <cache>/<model hash>/<candidate key>/."""

    def __init__(self, model: Model, calibration: FeedSet, evaluation: FeedSet, reference: Outputs, cache: Path,
                 hook: Callable | None = None) -> None:  # fmt: skip
        self.model, self.calibration, self.evaluation, self.reference, self.hook = model, calibration, evaluation, reference, hook
        self.model_hash = model.content_hash()
        self.data_hash = feeds_hash(calibration)
        self.folder = cache / self.model_hash[:16]
        self.built = 0  # candidates built (not taken from the cache) in this run
        self._plans: dict = {}
        self._ranges: dict[str, float] | None = None  # activation ranges, measured once for the fp16 candidates

    def build(self, candidate: PrecisionCandidate) -> Trial:
        folder = self.folder / candidate.key(self.model_hash, self.data_hash)
        cached = self._from_cache(candidate, folder)
        if cached is not None:
            return cached
        trial = self._build(candidate)
        self.built += 1
        self._store(trial, folder)
        if trial.model is not None and (folder / MODEL_FILE).exists():
            # Measurement processes then open the file, rather than each holding a serialized copy of the model.
            trial.model = load_model(folder / MODEL_FILE, check=False)
        return trial

    def _build(self, candidate: PrecisionCandidate) -> Trial:
        if candidate.kind == "fp32":
            return Trial(candidate, self.model, metrics_of(compare(self.reference, self.reference)), size_bytes=model_size(self.model))
        try:
            result = self._transform(candidate)
            model = from_proto(result.proto, base_dir=self.model.base_dir)
            accuracy = compare(self.reference, self._outputs(candidate, model), self.hook)
        except UserError as exc:
            return Trial(candidate, None, error=str(exc))
        if not result.changed:
            return Trial(candidate, None, error="the transform changed nothing", notes=result.notes)
        return Trial(candidate, model, metrics_of(accuracy), notes=result.notes, size_bytes=model_size(model))

    def _transform(self, candidate: PrecisionCandidate):  # -> TransformResult
        if candidate.kind == "fusion":
            from ortforge.transforms.fusion import FusionOptions, fuse_transformer

            return fuse_transformer(self.model, FusionOptions(**candidate.settings))
        if candidate.kind == "fp16":
            from ortforge.transforms.fp16 import convert_fp16

            return convert_fp16(self.model, self._fp16_plan(candidate), feeds=self.evaluation)
        return apply_recipe(self.model, recipe_of(candidate), self.calibration)

    def _fp16_plan(self, candidate: PrecisionCandidate):  # -> Fp16Plan
        """Planned once per candidate (activation ranges measured on the calibration data)."""
        from ortforge.transforms.fp16 import (
            Fp16Options,
            measure_activation_ranges,
            plan_fp16,
        )

        if candidate.label not in self._plans:
            if self._ranges is None:  # one measurement for every fp16 candidate
                self._ranges = measure_activation_ranges(self.model, self.calibration)
            plan = plan_fp16(self.model, Fp16Options(provider=candidate.settings.get("provider"), activation_ranges=self._ranges))
            if candidate.settings.get("auto"):
                plan = self._mixed(plan)
            self._plans[candidate.label] = plan
        return self._plans[candidate.label]

    def _mixed(self, plan):  # noqa: ANN001, ANN202 - Fp16Plan
        """The mixed-precision search on the calibration half; the evaluation half then judges it like any candidate."""
        from ortforge.searches.mixed_precision import judge_for, search_mixed_precision
        from ortforge.tuning.candidates import MIXED_ATOL, MIXED_RTOL

        found, search = search_mixed_precision(self.model, plan, self.calibration, MIXED_RTOL, MIXED_ATOL, judge_on=judge_for(plan.options.provider))
        found.notes.append(f"mixed precision: {len(search.kept_fp32)} more node(s) kept fp32 after {search.evaluations} evaluations")
        found.notes.extend(search.notes)
        return found

    def _outputs(self, candidate: PrecisionCandidate, model: Model) -> Outputs:
        """The candidate's outputs for the accuracy check; fp16 runs on its GPU EP where this ORT has it, and is
        simulated otherwise (the CPU EP would compute most of it in fp32 behind Casts)."""
        if candidate.kind == "fp16":
            from ortforge.searches.mixed_precision import judge_for, simulated_outputs

            judge_on = judge_for(candidate.settings.get("provider"))
            if judge_on is None:
                return simulated_outputs(self.model, self._fp16_plan(candidate), self.evaluation)
            return run_outputs(model, self.evaluation, SessionConfig.on(judge_on))
        return run_outputs(model, self.evaluation)

    def _store(self, trial: Trial, folder: Path) -> None:
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        if trial.model is not None and trial.candidate.kind != "fp32":
            save_model(trial.model.proto, folder / MODEL_FILE, source=self.model)
        record = {"label": trial.candidate.label, "metrics": trial.metrics, "notes": trial.notes, "error": trial.error, "size_bytes": trial.size_bytes}
        atomic_write_text(folder / RESULT_FILE, json.dumps(record, indent=2))  # written last: its presence means complete

    def _from_cache(self, candidate: PrecisionCandidate, folder: Path) -> Trial | None:
        record_path = folder / RESULT_FILE
        if not record_path.is_file():
            return None
        record = json.loads(record_path.read_text())
        model = self.model if candidate.kind == "fp32" else (load_model(folder / MODEL_FILE, check=False) if (folder / MODEL_FILE).exists() else None)
        return Trial(candidate, model, record["metrics"], record["notes"], record["error"], cached=True, size_bytes=record["size_bytes"])

    def exclusion(self, trial: Trial, tolerances: Sequence[Tolerance], progress: Progress | None = None) -> PrecisionCandidate | None:
        """Search on the calibration half (the evaluation half then judges the result like any candidate);
        the nodes found are cached, so a resumed run does not search again."""
        from dataclasses import replace

        from ortforge.searches.exclusion import search_exclusions
        from ortforge.searches.recipes import RecipeOutcome

        record = self.folder / f"exclusion-{trial.candidate.key(self.model_hash, self.data_hash)}.json"
        if record.is_file():
            nodes = json.loads(record.read_text())["nodes"]
        else:
            recipe = recipe_of(trial.candidate)
            outcome = RecipeOutcome(trial.candidate.label, recipe, model=trial.model, passed=False)
            reference = run_outputs(self.model, self.calibration)
            ranking = replace(self.calibration, samples=self.calibration.samples[:RANKING_SAMPLES])
            _, report = search_exclusions(self.model, outcome, self.calibration, self.calibration, reference, tolerances, self.hook, progress,
                                          max_attempts=EXCLUSION_ATTEMPTS, ranking_feeds=ranking)  # fmt: skip
            nodes = [c.node for c in report.excluded] if report.met else []
            record.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(record, json.dumps({"candidate": trial.candidate.label, "nodes": nodes}))
        if not nodes:
            return None
        recipe = recipe_of(trial.candidate)
        options = replace(recipe, exclude=tuple(recipe.exclude) + tuple(nodes))
        return PrecisionCandidate(f"{trial.candidate.label}, {len(nodes)} node(s) kept float", "int8", frozen_options(options))

    def measure(self, targets: Sequence[MeasureTarget], options: BenchOptions, progress: Progress | None = None) -> BenchReport:
        variants = [Variant(t.label, t.trial.model, t.config, self.evaluation, t.streams) for t in targets]  # type: ignore[arg-type]
        return bench(variants, options, progress)


