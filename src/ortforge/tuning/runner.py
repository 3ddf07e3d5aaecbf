"""The trial runner: build a candidate (cached on disk) and measure candidates on a target.

`TrialRunner` is the small interface the search talks to; `LocalRunner` runs everything on this
machine. A cluster backend would implement the same two methods and fan candidates out.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from ortforge.accuracy.hooks import HookError
from ortforge.accuracy.judge import Judge
from ortforge.accuracy.metrics import Outputs
from ortforge.accuracy.tolerance import close
from ortforge.core.deadline import Deadline
from ortforge.core.errors import UserError
from ortforge.core.files import atomic_write_text
from ortforge.core.model import Model, load_model, model_size, save_model
from ortforge.core.progress import Progress
from ortforge.core.session import SessionConfig, run_outputs
from ortforge.data import FeedSet
from ortforge.measure.bench import BenchOptions, BenchReport, Variant, bench
from ortforge.measure.generate import Generation
from ortforge.searches.recipes import apply_recipe
from ortforge.searches.trial import Candidate, Trial, frozen_options
from ortforge.transforms import TransformResult

RESULT_FILE = "result.json"
EXCLUSION_ATTEMPTS = 12  # quantize-and-judge rounds the exclusion search may spend (the deadline stops it sooner)
MODEL_FILE = "model.onnx"


@dataclass
class MeasureTarget:
    label: str
    trial: Trial
    config: SessionConfig
    streams: int = 1  # requests in flight at once


class TrialRunner(Protocol):
    def build(self, candidate: Candidate) -> Trial: ...
    def measure(self, targets: Sequence[MeasureTarget], options: BenchOptions, progress: Progress | None = None) -> BenchReport: ...
    def exclusion(self, trial: Trial, progress: Progress | None = None, *, deadline: Deadline | None = None, keep_s: float = 0.0) -> Candidate | None:
        """The int8 candidate with the fewest nodes kept float that meets the tolerances (None if none found);
        no attempt starts that would leave less than `keep_s` before the deadline."""
        ...


Hold = Callable[[str], AbstractContextManager[Any]]  # the driver's own computing named `what`, kept off timings on its host


def no_hold(what: str) -> AbstractContextManager[Any]:
    """Locally nothing is timed while the search itself computes: no lock needed."""
    return nullcontext()


def store_entry(folder: Path, write: Callable[[Path], object]) -> None:
    """A cache entry written whole into a temporary sibling by `write`, then renamed into place: another tune sharing the
    cache sees the entry complete or not at all, and the first of two that built it at once keeps it."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        write(staging)
        if folder.exists() and not (folder / RESULT_FILE).is_file():  # left half-written by an older ortforge
            shutil.rmtree(folder, ignore_errors=True)
        try:
            os.rename(staging, folder)
        except OSError:  # another process stored the same entry first: its copy is as good as ours
            pass
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def entry_files(folder: Path) -> dict[str, bytes]:
    """A cache entry's files (result.json, and model.onnx with any .data beside it), to carry to another cache."""
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir()) if path.is_file()}


class GeneratingRunner:
    """A runner whose every measurement times generations (tune's decode objective): it hands each measurement the
    generation to time, and is the runner it wraps for everything else (local or on a cluster)."""

    def __init__(self, inner: Any, generation: Generation) -> None:
        self.inner, self.generation = inner, generation

    def measure(self, targets: Sequence[MeasureTarget], options: BenchOptions, progress: Progress | None = None) -> BenchReport:
        return self.inner.measure(targets, replace(options, generation=self.generation), progress)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class LocalRunner:
    """Builds candidates here, caching each under <cache>/<model hash>/<candidate key>/."""

    def __init__(self, model: Model, calibration: FeedSet, evaluation: FeedSet, judge: Judge, cache: Path) -> None:
        self.model, self.calibration, self.evaluation, self.judge = model, calibration, evaluation, judge
        self.model_hash = model.content_hash()
        self.data_hash = calibration.content_hash()
        self.judge_key = judge.key() + evaluation.content_hash()  # the whole judge: tolerances, hook, evaluation samples
        self.folder = cache / self.model_hash[:16]
        self.built = 0  # candidates built (not taken from the cache) in this run
        self._plans: dict = {}
        self._ranges: dict[str, float] | None = None  # activation ranges, measured once for the fp16 candidates
        self.measurements: list[dict] = []  # where and when each measurement ran (the record's "measured_on")

    def entry(self, candidate: Candidate) -> Path:
        """Where `candidate`'s build lives in the cache (content-addressed: model, options, data, judge)."""
        return self.folder / candidate.key(self.model_hash, self.data_hash, self.judge_key)

    def cached(self, candidate: Candidate) -> Trial | None:
        """The candidate from the cache, if it was built before (by any runner sharing the cache)."""
        return self._from_cache(candidate, self.entry(candidate))

    def build(self, candidate: Candidate) -> Trial:
        folder = self.entry(candidate)
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

    def _build(self, candidate: Candidate) -> Trial:
        if candidate.kind == "fp32":
            return Trial(candidate, self.model, self.judge(self.judge.reference), size_bytes=model_size(self.model))
        source = self.model
        if candidate.base is not None:  # a pipeline: its earlier stages are built (or read) from the cache first
            base = self.build(candidate.base)
            if base.model is None:
                return Trial(candidate, None, error=f"its first stage failed: {base.why_not}")
            source = base.model
        try:
            result = self._transform(candidate, source)
            model = result.as_model(source)
            verdict = self.judge(self._outputs(candidate, model))
        except HookError:
            raise
        except UserError as exc:
            return Trial(candidate, None, error=str(exc))
        if not result.changed:
            return Trial(candidate, None, error="the transform changed nothing", notes=result.notes)
        return Trial(candidate, model, verdict, notes=result.notes, size_bytes=model_size(model))

    def _transform(self, candidate: Candidate, source: Model) -> TransformResult:
        if candidate.kind == "rewrite":
            from ortforge.transforms.exact_rewrites import exact_rewrites

            return exact_rewrites(source, candidate.settings.get("rewrites"))
        if candidate.kind == "fusion":
            from ortforge.transforms.fusion import FusionOptions, fuse_transformer

            return fuse_transformer(source, FusionOptions(**candidate.settings))
        if candidate.kind == "fp16":
            from ortforge.transforms.fp16 import convert_fp16

            return convert_fp16(source, self._fp16_plan(candidate), feeds=self.evaluation)
        return apply_recipe(source, candidate.recipe, self.calibration)

    def _fp16_plan(self, candidate: Candidate):  # -> Fp16Plan
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

        judge = Judge(run_outputs(self.model, self.calibration), [close(MIXED_RTOL, MIXED_ATOL)])
        found, search = search_mixed_precision(self.model, plan, self.calibration, judge, judge_on=judge_for(plan.options.provider))
        found.notes.append(f"mixed precision: {len(search.kept_fp32)} more node(s) kept fp32 after {search.evaluations} evaluations")
        found.notes.extend(search.notes)
        return found

    def _outputs(self, candidate: Candidate, model: Model) -> Outputs:
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
        def write(staging: Path) -> None:
            if trial.model is not None and trial.candidate.kind != "fp32":
                save_model(trial.model.proto, staging / MODEL_FILE, source=self.model, data_dir=trial.model.base_dir)
            record = {"label": trial.label, "metrics": trial.metrics, "notes": trial.notes, "error": trial.error, "size_bytes": trial.size_bytes}
            atomic_write_text(staging / RESULT_FILE, json.dumps(record, indent=2))

        store_entry(folder, write)

    def store_files(self, candidate: Candidate, files: dict[str, bytes]) -> None:
        """An entry built elsewhere (a cluster node), its files as that node's cache held them, stored byte for byte."""
        def write(staging: Path) -> None:
            for name, data in files.items():
                (staging / name).write_bytes(data)

        store_entry(self.entry(candidate), write)

    def _from_cache(self, candidate: Candidate, folder: Path) -> Trial | None:
        record_path = folder / RESULT_FILE
        if not record_path.is_file():
            return None
        record = json.loads(record_path.read_text())
        model = self.model if candidate.kind == "fp32" else (load_model(folder / MODEL_FILE, check=False) if (folder / MODEL_FILE).exists() else None)
        verdict = None if record["error"] else self.judge.decide_measured(record["metrics"])
        return Trial(candidate, model, verdict, record["notes"], record["error"], cached=True, size_bytes=record["size_bytes"])

    def exclusion_record(self, candidate: Candidate) -> Path:
        """Where the exclusion search's nodes for `candidate` are kept (beside its entry: a resumed run reads them)."""
        return self.folder / f"exclusion-{candidate.key(self.model_hash, self.data_hash, self.judge_key)}.json"

    def exclusion(self, trial: Trial, progress: Progress | None = None, *, deadline: Deadline | None = None, keep_s: float = 0.0) -> Candidate | None:
        """Search on the calibration half (the evaluation half then judges the result like any candidate);
        the nodes found are cached, so a resumed run does not search again."""
        from ortforge.searches.exclusion import RANKING_SAMPLES, SEARCH_MARGIN, search_exclusions

        recipe = trial.candidate.recipe
        record = self.exclusion_record(trial.candidate)
        if record.is_file():
            found = json.loads(record.read_text())
        else:
            # A pipeline's last stage is searched on what its earlier stages built (e.g. the fused model).
            source = self.build(trial.candidate.base).model if trial.candidate.base is not None else self.model
            assert source is not None
            judge = self.judge.on(run_outputs(source, self.calibration), self.calibration, margin=SEARCH_MARGIN)
            ranking = replace(self.calibration, samples=self.calibration.samples[:RANKING_SAMPLES])
            _, report = search_exclusions(source, trial, self.calibration, self.calibration, judge, progress,
                                          max_attempts=EXCLUSION_ATTEMPTS, ranking_feeds=ranking, deadline=deadline, keep_s=keep_s)  # fmt: skip
            if not report.met and report.out_of_time:
                return None  # not recorded: with more time a later run may find them
            found = {"candidate": trial.label, "nodes": [c.node for c in report.excluded] if report.met else [], "share": report.float_macs_share,
                     "attempts": report.attempts, "minimal": report.minimal, "notes": report.notes}  # fmt: skip
            record.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(record, json.dumps(found))
        nodes = found["nodes"]
        if not nodes:
            return None
        kept_float = replace(recipe, exclude=tuple(recipe.exclude) + tuple(nodes))
        share = f", {found['share']:.0%} of its int8 MACs" if found.get("share") is not None else ""
        return Candidate(f"{trial.label}, {len(nodes)} node(s) kept float{share}", "int8", frozen_options(kept_float), trial.candidate.base)

    def measure(self, targets: Sequence[MeasureTarget], options: BenchOptions, progress: Progress | None = None) -> BenchReport:
        from ortforge.core.target import host_id, this_target

        variants = [Variant(t.label, t.trial.model, t.config, self.evaluation, t.streams) for t in targets]  # type: ignore[arg-type]
        start = time.time()
        report = bench(variants, options, progress)
        self.measurements.append({"node": "local", "host": host_id(), "target": this_target().id, "start": start, "end": time.time(),
                                  "variants": [t.label for t in targets]})  # fmt: skip
        return report


