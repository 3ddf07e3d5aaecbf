"""`ortforge optimize`: offline graph optimization, verified against the original, saved stamped, measured."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .bench import BenchOptions, BenchReport, Progress, Variant, bench
from .data import GENERATED_WARNING, FeedSet
from .loader import config_for
from .model import Model, from_proto, load_model, save_model
from .session import ProviderSpec, SessionConfig
from .stamp import Stamp, read_stamp
from .transforms import TransformResult
from .transforms.graph_opt import GraphOptOptions, optimize_offline
from .verify import DEFAULT_ATOL, DEFAULT_RTOL, Verification, require, verify


@dataclass
class OptimizeReport:
    output: str
    stamp: Stamp
    transform: TransformResult
    verification: Verification
    forced: bool = False
    measurement: BenchReport | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def startup_ratio(self) -> tuple[float, float, float] | None:
        return self.measurement.variants[1].startup_ratio if self.measurement else None

    @property
    def latency_ratio(self) -> tuple[float, float, float] | None:
        return self.measurement.variants[1].ratio if self.measurement else None

    def to_dict(self) -> dict:
        return {
            "output": self.output,
            "stamp": self.stamp.__dict__,
            "transform": self.transform.to_dict(),
            "verification": self.verification.to_dict(),
            "forced": self.forced,
            "startup_ratio": self.startup_ratio,
            "latency_ratio": self.latency_ratio,
            "measurement": self.measurement.to_dict() if self.measurement else None,
            "notes": self.notes,
        }


def optimize_model(
    model: Model,
    feeds: FeedSet,
    output: str | os.PathLike[str],
    options: GraphOptOptions,
    *,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    force: bool = False,
    measure: BenchOptions | None = None,
    progress: Progress | None = None,
) -> OptimizeReport:
    """Optimize offline, verify on `feeds`, save atomically; then time start-up and latency vs online."""
    report_progress = progress or (lambda what, fraction: None)
    report_progress(f"optimizing at level {options.level}", 0.0)
    result = optimize_offline(model, options)
    stamp = read_stamp(result.proto)
    assert stamp is not None
    candidate = from_proto(result.proto)
    report_progress("verifying outputs against the original", 0.1)
    # Offline must equal what ORT gives online at the same level; vs no optimization at all, fused
    # and re-laid-out kernels differ by float reassociation (~1e-4 on PP-OCR det) in both cases.
    online = SessionConfig(providers=list(options.providers), graph_optimization_level=options.level)
    verification = verify(model, candidate, feeds, rtol=rtol, atol=atol, original_config=online, candidate_config=config_for(stamp))
    require(verification, str(output), force)
    saved = save_model(result.proto, output, source=model)
    notes = [GENERATED_WARNING] if feeds.generated else []
    if not verification.passed:
        notes.append(f"written despite failed verification (--force): {verification.problem}")
    report = OptimizeReport(str(saved), stamp, result, verification, forced=not verification.passed, notes=notes)
    if measure is not None:
        report.measurement = measure_against_online(model, Path(saved), feeds, options, measure, progress)
    return report


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
