"""`ortforge tune-session`: measure session options (threads, spinning, affinity, execution mode, memory,
EP options) against ORT's defaults, interleaved, and keep the one that wins consistently.

On 2 shared cores the best thread count flips with background load, so a candidate is only chosen
when it beats the defaults in most interleaved rounds, not just on the median.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from ortforge.commands.common import feeds_for, open_model
from ortforge.core.machine import cpu_info
from ortforge.core.model import Model
from ortforge.core.outputs import guard_file, user_files
from ortforge.core.progress import Progress
from ortforge.core.session import SessionConfig
from ortforge.data import FeedSet, ShapeOptions
from ortforge.measure.bench import BenchOptions, BenchReport, Variant, bench
from ortforge.measure.compare import CandidateScore, score, verdict_text, winner
from ortforge.tuning.sessions import TUNE_SESSION_KINDS, SessionCandidate, session_space

FINALISTS = 3


@dataclass
class SessionTuning:
    chosen: SessionCandidate
    scores: list[CandidateScore]
    why: str
    screening: BenchReport
    final: BenchReport
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "chosen": {"label": self.chosen.label, "config": self.chosen.config.to_dict()},
            "why": self.why,
            "scores": [score.to_dict() for score in self.scores],
            "screening": self.screening.to_dict(),
            "final": self.final.to_dict(),
            "notes": self.notes,
        }


def candidates(base: SessionConfig, cores: int | None = None) -> list[SessionCandidate]:
    """ORT's defaults first, then one change at a time from them: threads (with spinning off, pinned), execution
    mode, memory pattern and arena, and documented options of the EPs the base uses."""
    return session_space(base, kinds=TUNE_SESSION_KINDS, cores=cores)


def tune_session_options(
    model: Model, feeds: FeedSet, base: SessionConfig, options: BenchOptions | None = None, progress: Progress | None = None
) -> SessionTuning:
    """Screen every candidate briefly, then measure the finalists against the defaults for longer."""
    # Short blocks give many interleaved rounds, which is what "wins consistently" is judged on.
    options = replace(options or BenchOptions(max_seconds=4.0), block_seconds=0.1, min_rounds=8, profile=False)
    found = candidates(base)
    by_label = {c.label: c for c in found}
    screening_options = replace(options, max_seconds=max(0.5, options.max_seconds / 4), profile=False)
    screening = bench([Variant(c.label, model, c.config, feeds) for c in found], screening_options, progress)
    screened = sorted((score(r, screening.variants[0]) for r in screening.variants[1:]), key=lambda s: s.ratio)
    finalists = [found[0]] + [by_label[s.label] for s in screened[:FINALISTS]]
    final = bench([Variant(c.label, model, c.config, feeds) for c in finalists], replace(options, profile=False), progress)
    scores = [score(result, final.variants[0]) for result in final.variants]
    found = winner(scores, final.noise_floor, complexity=lambda s: by_label[s.label].complexity)
    label = found.label if found else scores[0].label
    why = _why(found, final.noise_floor)
    notes = ["inputs were generated: fine for speed"] if feeds.generated else []
    return SessionTuning(by_label[label], scores, why, screening, final, notes)


def _why(found: CandidateScore | None, noise: float) -> str:
    if found is None:
        return f"no candidate beat ORT's defaults beyond the noise of ±{noise:.1%}: keeping them"
    return verdict_text(found, noise, "ORT's defaults")


def write_config(tuning: SessionTuning, path: str | os.PathLike[str], model: Model) -> Path:
    """The chosen config as JSON, with the figures that chose it under "measurements" (ignored on load)."""
    import json

    from ortforge.core import runtime
    from ortforge.core.files import atomic_write_text

    data = tuning.chosen.config.to_dict()
    data["measurements"] = {
        "model": str(model.path or model.name),
        "model_sha256": model.content_hash(),
        "onnxruntime": runtime.version(),
        "cpu": cpu_info().model,
        "chosen": tuning.chosen.label,
        "why": tuning.why,
        "scores": [score.to_dict() for score in tuning.scores],
    }
    return atomic_write_text(Path(path), json.dumps(data, indent=2))


def tune_session(
    reference: str | Path,
    output: str | Path,
    *,
    base: SessionConfig | None = None,
    data: str | None = None,
    samples: int | None = None,
    shape_options: ShapeOptions | None = None,
    seconds: float = 4.0,
    progress: Progress | None = None,
) -> tuple[SessionTuning, Path]:
    """Measure session options against ORT's defaults (`seconds` of timed runs per finalist) and write the
    consistent winner as a config JSON."""
    options = BenchOptions(max_seconds=seconds)  # checked before any work
    model = open_model(reference)
    guard_file(output, user_files(model, data))
    feeds = feeds_for(model, reference, data, samples=samples, shape_options=shape_options)
    tuning = tune_session_options(model, feeds, base or SessionConfig(), options, progress)
    return tuning, write_config(tuning, output, model)
