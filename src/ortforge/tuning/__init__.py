"""`ortforge tune`: search every knob under an accuracy budget and write one deployable artifact.

candidates.py and sessions.py say what is tried, runner.py builds (cached) and measures, search.py runs
the stages, record.py gathers the figures, artifact.py writes the folder, and ../report/html.py draws the report.
"""

from __future__ import annotations

import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ortforge.accuracy.judge import Judge
from ortforge.accuracy.reopen import ReopenError
from ortforge.accuracy.tolerance import Tolerance, default_tolerances
from ortforge.core.cache import cache_root
from ortforge.core.deadline import Deadline
from ortforge.core.model import Model
from ortforge.core.progress import Progress
from ortforge.data import FeedSet
from ortforge.measure.cost import reference_run
from ortforge.report.html import render_report
from ortforge.tuning.artifact import environment, write_artifact
from ortforge.tuning.candidates import precision_candidates
from ortforge.tuning.record import artifact_record
from ortforge.tuning.runner import LocalRunner
from ortforge.tuning.search import JOURNAL, TuneOptions, TuneResult, tune_search


@dataclass
class TuneReport:
    artifact: Path
    result: TuneResult
    tolerances: list[Tolerance]
    record: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"artifact": str(self.artifact), **self.record}


def tune_model(
    model: Model,
    reference_name: str,
    output: Path,
    calibration: FeedSet,
    evaluation: FeedSet,
    *,
    family: str,
    transformer: bool,
    options: TuneOptions,
    tolerances: list[Tolerance] | None = None,
    hook: Any = None,
    progress: Progress | None = None,
    started: float | None = None,
) -> TuneReport:
    """Search, then write the artifact folder (model, ortforge.json, report.html); the time budget counts from
    `started` (a `time.monotonic()` reading, now by default: the caller's loading and data count too)."""
    deadline = Deadline(options.time_budget_s, started if started is not None else time.monotonic())
    reference, cost = reference_run(model, evaluation)
    judge = Judge(reference, tolerances or default_tolerances(reference), hook, feeds=evaluation, reference_label="fp32")
    tolerances = judge.tolerances
    runner = LocalRunner(model, calibration, evaluation, judge, cache_root() / "tune")
    candidates = precision_candidates(family, list(options.providers), transformer)
    result = tune_search(runner, candidates, options, progress, journal=runner.folder / JOURNAL, deadline=deadline, cost=cost)
    command = "ortforge " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv and sys.argv[0].endswith("ortforge") else f"ortforge tune {reference_name} -o {output}"
    try:
        record = _write(model, reference_name, output, result, judge, evaluation, command, options)
    except ReopenError as exc:  # never ship what does not reopen: fp32 with ORT's defaults instead
        result.notes.append(f"{result.chosen.label} was not written, it did not pass the reopen check: {exc}")
        result.chosen, result.why = result.baseline, f"{result.chosen.label} did not reopen as written; shipping fp32 with ORT defaults"
        record = _write(model, reference_name, output, result, judge, evaluation, command, options)
    return TuneReport(output, result, tolerances, record)


def _write(model: Model, reference_name: str, output: Path, result: TuneResult, judge: Judge, evaluation: FeedSet, command: str,
           options: TuneOptions) -> dict[str, Any]:  # fmt: skip
    record = artifact_record(model, reference_name, result, judge.tolerances, evaluation, command, options.objective)
    chosen_model = result.chosen.trial.model
    assert chosen_model is not None
    render = lambda final: render_report({**final, "environment": _environment_rows()})  # noqa: E731
    return write_artifact(output, chosen_model, model, result.chosen.session.config, record, render, evaluation, judge)


def _environment_rows() -> dict[str, str]:
    return {key: str(value) for key, value in environment().items()}
