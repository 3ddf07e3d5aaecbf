"""`ortforge optimize`: offline graph optimization, verified against the original, saved stamped, measured."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from ortforge.accuracy.judge import Verdict, judge_model, reference_judge, require, verify
from ortforge.accuracy.reopen import ReopenError, save_verified
from ortforge.accuracy.tolerance import Tolerance, close, parse_tolerances
from ortforge.commands.common import feeds_for, open_model
from ortforge.core.model import Model, load_model
from ortforge.core.options import default_of
from ortforge.core.outputs import guard_file, user_files
from ortforge.core.progress import Progress
from ortforge.core.session import ProviderSpec, SessionConfig, provider_name
from ortforge.core.stamp import Stamp, config_for, read_stamp
from ortforge.data import GENERATED_WARNING, FeedSet, ShapeOptions
from ortforge.measure.bench import BenchOptions, BenchReport, Variant, bench
from ortforge.measure.compare import CandidateScore, beats, score, verdict_text
from ortforge.measure.stats import Ratio
from ortforge.transforms import TransformResult
from ortforge.transforms.fusion import FusionOptions, fuse_transformer
from ortforge.transforms.graph_opt import GraphOptOptions, optimize_offline

DEFAULT_TOLERANCES = (close(1e-5, 1e-5),)  # offline must compute what online optimization computes
FUSION_TOLERANCES = (close(1e-3, 1e-4),)  # fused kernels reassociate sums: ~4e-5 on MiniLM's embeddings


@dataclass
class FusionDecision:
    """Transformer fusion: what it fused, whether it kept the outputs, and whether it measured faster."""

    result: TransformResult
    verification: Verdict | None = None
    speed: CandidateScore | None = None
    noise: float | None = None  # the noise floor of the run that timed it
    kept: bool = False
    why: str = ""

    def to_dict(self) -> dict:
        return {
            "transform": self.result.to_dict(),
            "verification": self.verification.to_dict() if self.verification else None,
            "speed": self.speed.to_dict() if self.speed else None,
            "noise_floor": self.noise,
            "kept": self.kept,
            "why": self.why,
        }


def decide_fusion(
    model: Model, feeds: FeedSet, options: FusionOptions, bench_options: BenchOptions, progress: Progress | None = None
) -> tuple[Model, FusionDecision]:
    """Fuse, verify against the original, time fused vs unfused interleaved; keep the fusion only if faster."""
    result = fuse_transformer(model, options)
    decision = FusionDecision(result)
    if not result.changed:
        decision.why = "nothing was fused"
        return model, decision
    fused = result.as_model(model)
    decision.verification = verify(model, fused, feeds, FUSION_TOLERANCES, original_config=SessionConfig(), candidate_config=SessionConfig())
    if not decision.verification.passed:
        decision.why = f"fused model rejected: {decision.verification.reason}"
        return model, decision
    timing = bench([Variant("unfused", model, SessionConfig(), feeds), Variant("fused", fused, SessionConfig(), feeds)],
                   replace(bench_options, profile=False, startup_rounds=0), progress)  # fmt: skip
    decision.speed = score(timing.variants[1], timing.variants[0])
    decision.noise = timing.noise_floor
    decision.kept = beats(decision.speed, decision.noise)
    decision.why = f"fusion {'kept' if decision.kept else 'not kept'}: {verdict_text(decision.speed, timing.noise_floor, 'unfused')}"
    return (fused if decision.kept else model), decision


@dataclass
class OptimizeReport:
    output: str
    stamp: Stamp
    transform: TransformResult
    verification: Verdict
    forced: bool = False
    measurement: BenchReport | None = None
    notes: list[str] = field(default_factory=list)
    fusion: FusionDecision | None = None

    @property
    def startup_ratio(self) -> Ratio | None:
        return self.measurement.variants[1].startup_ratio if self.measurement else None

    @property
    def latency_ratio(self) -> Ratio | None:
        return self.measurement.variants[1].ratio if self.measurement else None

    def to_dict(self) -> dict:
        return {
            "output": self.output,
            "stamp": self.stamp.__dict__,
            "transform": self.transform.to_dict(),
            "verification": self.verification.to_dict(),
            "forced": self.forced,
            "startup_ratio": asdict(self.startup_ratio) if self.startup_ratio else None,
            "latency_ratio": asdict(self.latency_ratio) if self.latency_ratio else None,
            "measurement": self.measurement.to_dict() if self.measurement else None,
            "fusion": self.fusion.to_dict() if self.fusion else None,
            "notes": self.notes,
        }


def optimize_model(
    model: Model,
    feeds: FeedSet,
    output: str | os.PathLike[str],
    options: GraphOptOptions,
    *,
    tolerances: Sequence[Tolerance] = DEFAULT_TOLERANCES,
    force: bool = False,
    measure: BenchOptions | None = None,
    fusion: FusionOptions | None = None,
    progress: Progress | None = None,
) -> OptimizeReport:
    """(Fuse a transformer if asked and faster,) optimize offline, verify on `feeds`, save atomically;
    then time start-up and latency vs online."""
    report_progress = progress or (lambda what, fraction: None)
    decision = None
    original = model
    if fusion is not None:
        report_progress("fusing transformer ops", 0.0)
        model, decision = decide_fusion(model, feeds, fusion, measure or BenchOptions(max_seconds=3.0), progress)
    fusion_record = asdict(fusion) if decision is not None and decision.kept and fusion is not None else None
    # Offline must equal what ORT gives online at the same level; vs no optimization at all, fused
    # and re-laid-out kernels differ by float reassociation (~1e-4 on PP-OCR det) in both cases.
    online = SessionConfig(providers=list(options.providers), graph_optimization_level=options.level)
    judge = reference_judge(model, feeds, tolerances, online)
    notes = [GENERATED_WARNING] if feeds.generated else []
    for level in _levels_to_try(options):
        report_progress(f"optimizing at level {level}", 0.0)
        result = optimize_offline(model, replace(options, level=level), source_sha256=original.content_hash(), fusion=fusion_record)
        stamp = read_stamp(result.proto)
        assert stamp is not None
        report_progress("verifying outputs against the original", 0.1)
        verification = judge_model(judge, result.as_model(model), feeds, config_for(stamp))
        require(verification, str(output), force)
        try:
            saved, written = save_verified(result.proto, output, original, feeds, judge if verification.passed else None, data_dir=result.data_dir)
            break
        except ReopenError as exc:  # ORT cannot reload some graphs it wrote at the layout levels: keep the highest level that reloads
            if level == _levels_to_try(options)[-1]:
                raise
            notes.append(f"level {level} was not written, the saved graph did not reopen ({exc}); trying a lower level")
    notes += written
    if not verification.passed:
        notes.append(f"written despite failed verification (forced): {verification.reason}")
    report = OptimizeReport(str(saved), stamp, result, verification, forced=not verification.passed, notes=notes, fusion=decision)
    if measure is not None:
        report.measurement = measure_against_online(original, Path(saved), feeds, options, measure, progress)
    return report


def _levels_to_try(options: GraphOptOptions) -> list[str]:
    """The asked level, then, for the hardware-specific layout levels, extended: the highest level whose saved graph reloads."""
    return [options.level] + (["extended"] if options.level in ("layout", "all") else [])


def measure_against_online(
    original: Model, saved: Path, feeds: FeedSet, options: GraphOptOptions, bench_options: BenchOptions, progress: Progress | None
) -> BenchReport:
    """The saved model as the loader runs it vs the original optimized online at the same level, interleaved."""
    online = SessionConfig(providers=list(options.providers), graph_optimization_level=options.level)
    offline_model = load_model(saved)
    variants = [
        Variant(f"online ({options.level})", original, online, feeds),
        Variant("offline (saved)", offline_model, config_for(read_stamp(offline_model.proto)), feeds),
    ]
    return bench(variants, bench_options, progress)


def default_providers(names: list[str]) -> tuple[ProviderSpec, ...]:
    """EPs in priority order, with the CPU EP last as the fallback ORT needs for unsupported nodes."""
    specs = [ProviderSpec(name) for name in names if name != "CPUExecutionProvider"]
    return tuple(specs) + (ProviderSpec("CPUExecutionProvider"),)


def optimize(
    reference: str | Path,
    output: str | Path,
    *,
    level: str = default_of(GraphOptOptions, "level"),
    providers: Sequence[str] = (),
    portable: bool = default_of(GraphOptOptions, "portable"),
    data: str | None = None,
    samples: int | None = None,
    shape_options: ShapeOptions | None = None,
    tolerances: Sequence[str] = (),
    force: bool = False,
    measure: BenchOptions | None = None,
    transformer: dict | None = None,
    progress: Progress | None = None,
) -> OptimizeReport:
    """Save the ORT-optimized model, stamped with what it is valid for, after checking its outputs.

    `tolerances` as for every command (default rtol=1e-5, atol=1e-5 against online optimization).
    `transformer` (FusionOptions fields, e.g. {"model_type": "auto"}) fuses attention, LayerNorm, GELU,
    ... first, kept only when the fused model measures faster.
    """
    options = GraphOptOptions(level=level, providers=default_providers([provider_name(p) for p in providers]), portable=portable)
    model = open_model(reference)
    guard_file(output, user_files(model, data))
    feeds = feeds_for(model, reference, data, samples=samples, shape_options=shape_options)
    return optimize_model(
        model,
        feeds,
        output,
        options,
        tolerances=parse_tolerances(tolerances, DEFAULT_TOLERANCES),
        force=force,
        measure=measure,
        fusion=FusionOptions(**transformer) if transformer is not None else None,
        progress=progress,
    )
