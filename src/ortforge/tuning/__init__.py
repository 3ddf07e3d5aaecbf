"""`ortforge tune`: search every knob under an accuracy budget and write one deployable artifact.

candidates.py and sessions.py say what is tried, runner.py builds (cached) and measures, search.py runs
the stages, record.py gathers the figures, artifact.py writes the folder, and ../report/html.py draws the report.
"""

from __future__ import annotations

import shlex
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ortforge.accuracy.judge import Judge
from ortforge.accuracy.reopen import ReopenError
from ortforge.accuracy.tolerance import Tolerance, default_tolerances
from ortforge.analysis.decoder import find_decoder
from ortforge.core.cache import cache_root
from ortforge.core.deadline import WRITE_S, Deadline, timed
from ortforge.core.errors import UserError
from ortforge.core.model import Model
from ortforge.core.progress import Progress, section, silent
from ortforge.core.session import SessionConfig
from ortforge.data import FeedSet
from ortforge.measure.compare import beats, verdict_text
from ortforge.measure.cost import reference_run
from ortforge.report.html import render_report
from ortforge.searches.trial import Candidate
from ortforge.transforms.exact_rewrites import applicable_rewrites
from ortforge.tuning.artifact import REPRODUCE_FILE, environment, reproduce_file, write_artifact
from ortforge.tuning.candidates import precision_candidates
from ortforge.tuning.recipe import Recipe, check_fits, model_shape
from ortforge.tuning.record import artifact_record, portable
from ortforge.tuning.runner import GeneratingRunner, LocalRunner, TrialRunner
from ortforge.tuning.search import CONFIRM, JOURNAL, Finalist, TuneOptions, TuneResult, objective_score, offline_variants, tune_search
from ortforge.tuning.sessions import SessionCandidate


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
    settings: dict[str, Any] | None = None,
    runner: Callable[[LocalRunner], TrialRunner] | None = None,
    hold: Callable[..., AbstractContextManager[Any]] | None = None,
) -> TuneReport:
    """Search, then write the artifact folder (model, ortforge.json, report.html, and tune.toml from `settings`, the
    options that reproduce the run); the time budget counts from `started` (a `time.monotonic()` reading, now by
    default: the caller's loading and data count too). `hold(what, on_wait=...)` wraps this process's own computing
    when a cluster times on this host (`Cluster.hold`); its waits are given back to the budget."""
    deadline = Deadline(options.time_budget_s, started if started is not None else time.monotonic())

    def held(what: str) -> AbstractContextManager[Any]:
        def credit(waited: float) -> None:
            deadline.started += waited

        return hold(f"{what} of {model.name}", on_wait=credit) if hold is not None else nullcontext()

    with held("reference run"):
        reference, cost = reference_run(model, evaluation)
    judge = Judge(reference, tolerances or default_tolerances(reference), hook, feeds=evaluation, reference_label="fp32")
    tolerances = judge.tolerances
    local = LocalRunner(model, calibration, evaluation, judge, cache_root() / "tune")
    trials = runner(local) if runner is not None else local  # a cluster runner shares the local runner's cache
    if options.generation is not None:  # the decode objective: every measurement times generations
        trials = GeneratingRunner(trials, options.generation)
    if hasattr(trials, "bind_deadline"):  # time queued behind other searches' work is given back to this search
        trials.bind_deadline(deadline)
    decoder = find_decoder(model.proto) if family == "decoder" else None
    candidates = precision_candidates(family, list(options.providers), transformer, rewrites=applicable_rewrites(model.proto),
                                      lm_head=decoder.lm_head if decoder else None, fuse_first=decoder is not None and decoder.decomposed)  # fmt: skip
    result = tune_search(trials, candidates, options, progress, journal=local.folder / JOURNAL, deadline=deadline, cost=cost, hold=held)
    result.notes += getattr(trials, "retried", [])
    if getattr(trials, "queued_s", 0) >= 1:
        result.notes.append(f"{trials.queued_s:.0f} s queued for a cluster node behind other work, not counted against the time budget")
    command = _command_line(f"ortforge tune {reference_name} -o {output}")
    try:
        with held("writing and reopening the artifact"):
            record = _write(model, reference_name, output, result, judge, evaluation, command, options, calibration, settings, trials)
    except ReopenError as exc:  # never ship what does not reopen: fp32 with ORT's defaults instead
        result.notes.append(f"{result.chosen.label} was not written, it did not pass the reopen check: {exc}")
        result.chosen, result.why = result.baseline, f"{result.chosen.label} did not reopen as written; shipping fp32 with ORT defaults"
        with held("writing and reopening the artifact"):
            record = _write(model, reference_name, output, result, judge, evaluation, command, options, calibration, settings, trials)
    return TuneReport(output, result, tolerances, record)


def apply_model(
    model: Model,
    reference_name: str,
    output: Path,
    recipe: Recipe,
    calibration: FeedSet,
    evaluation: FeedSet,
    *,
    hook: Any = None,
    time_budget_s: float = 60.0,
    progress: Progress | None = None,
    started: float | None = None,
) -> TuneReport:
    """Redo `recipe` on `model` (re-calibrating where it calibrates), judge it against this model's fp32 outputs with the
    recipe's gate, time it against fp32 with ORT's defaults, and write the artifact as tune does. A recipe that misses
    its gate here is not written: one line names the check."""
    deadline = Deadline(time_budget_s, started if started is not None else time.monotonic())
    shown = progress or silent
    check_fits(recipe, model)
    reference, cost = reference_run(model, evaluation)
    judge = Judge(reference, recipe.gate(), hook, feeds=evaluation, reference_label="fp32")
    runner = LocalRunner(model, calibration, evaluation, judge, cache_root() / "tune")
    fp32 = runner.build(Candidate("fp32", "fp32"))
    if not fp32.passed:
        raise UserError(f"{model.name}: the original model fails the recipe's own accuracy gate, so nothing can be judged: {fp32.why_not}")
    shown(f"building {recipe.candidate.label}", 0.05)
    with timed(deadline, "build"):
        trial = fp32 if recipe.candidate.kind == "fp32" else runner.build(recipe.candidate)
    if not trial.passed:
        raise UserError(f"{output}: not written, the recipe's {recipe.candidate.label} on {model.name}: {trial.why_not}",
                        hint="the recipe no longer fits this model: tune it again")  # fmt: skip
    notes: list[str] = []
    target = SessionConfig.on(recipe.session.provider_names[0])  # the recipe's EP: its baseline runs there too
    baseline = Finalist("fp32 | ORT defaults", fp32, SessionCandidate("ORT defaults", target))
    session = SessionCandidate(recipe.session_label, recipe.session, recipe.streams, recipe.session_kind)
    chosen = Finalist(recipe.label, trial, session)
    if recipe.offline:  # optimized again, for this CPU: the recipe's stamped session config belongs to the old model
        found = offline_variants(trial, notes, target)
        if not found:
            raise UserError(f"{output}: not written, the recipe saves the model optimized offline and that failed here: {notes[0]}")
        chosen = found[0]
    finalists = [baseline] + ([chosen] if chosen.label != baseline.label else [])
    seconds = cost.seconds_per_variant(deadline.left - WRITE_S - 2 * cost.create_s, len(finalists), CONFIRM)
    measure = replace(CONFIRM, max_seconds=seconds, deadline=deadline.at - WRITE_S - 2 * cost.create_s)
    final = runner.measure([f.target for f in finalists], measure, section(progress, "timing the recipe against fp32", 0.1, 0.95))
    for finalist, result in zip(finalists, final.variants):
        finalist.score = objective_score(result, final.variants[0], recipe.objective)
    chosen = finalists[-1]
    why = (f"the recipe re-applied: {verdict_text(chosen.score, final.noise_floor, 'fp32 with ORT defaults')}, within tolerance"
           if chosen is not baseline and chosen.score else "the recipe ships fp32 with ORT defaults")  # fmt: skip
    if chosen is not baseline and chosen.score and not beats(chosen.score, final.noise_floor):
        notes.append(f"on this model {chosen.label} did not beat fp32 with ORT defaults beyond noise; the recipe was written as asked")
    result = TuneResult(chosen, baseline, finalists, [fp32, trial], [], final, None, why, deadline.elapsed, runner.built, notes, {"apply": deadline.elapsed})
    command = _command_line(f"ortforge apply RECIPE {reference_name} -o {output}")
    record = _write(model, reference_name, output, result, judge, evaluation, command, TuneOptions(objective=recipe.objective), calibration)
    return TuneReport(output, result, judge.tolerances, record)


def _command_line(fallback: str) -> str:
    """How this run was started, for the record: the real command line when run as `ortforge`."""
    return "ortforge " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv and sys.argv[0].endswith("ortforge") else fallback


def _write(model: Model, reference_name: str, output: Path, result: TuneResult, judge: Judge, evaluation: FeedSet, command: str,
           options: TuneOptions, calibration: FeedSet, settings: dict[str, Any] | None = None, runner: Any = None) -> dict[str, Any]:  # fmt: skip
    record = artifact_record(model, reference_name, result, judge.tolerances, evaluation, command, options.objective)
    record["measured_on"] = getattr(runner, "measurements", [])  # each measurement: node, host, target, start and end
    record["recipe"] = recipe_of(result.chosen, judge, options.objective, model, calibration, evaluation).to_dict()
    record["calibration_inputs"] = {**calibration.to_dict(), "origin": portable(calibration.origin)}  # its seed in the origin
    gate = [a for t in judge.tolerances for a in t.arguments()]
    if settings:  # the run's options, defaults included (paths cut to their names, as everywhere in the record)
        record["settings"] = {k: portable(v) if isinstance(v, str) else v for k, v in {**settings, "tolerances": gate}.items() if v is not None}
    chosen_model = result.chosen.trial.model
    assert chosen_model is not None
    render = lambda final: render_report({**final, "environment": _environment_rows()})  # noqa: E731
    # The gate as judged (the defaults by output form spelled out), so the file reproduces the run even where they change.
    extra = {REPRODUCE_FILE: reproduce_file({**settings, "tolerances": gate})} if settings else None
    return write_artifact(output, chosen_model, model, result.chosen.session.config, record, render, evaluation, judge, extra)


def _environment_rows() -> dict[str, str]:
    """The environment as readable rows for the report (lists joined, mappings as 'name value', none as 'none')."""
    def readable(value: Any) -> str:
        if isinstance(value, dict):
            return ", ".join(f"{k} {readable(v)}" for k, v in value.items()) or "none"
        if isinstance(value, (list, tuple)):
            return ", ".join(readable(v) for v in value) or "none"
        return str(value)

    return {key.replace("_", " "): readable(value) for key, value in environment().items()}


def recipe_of(chosen: Finalist, judge: Judge, objective: str, model: Model, calibration: FeedSet, evaluation: FeedSet) -> Recipe:
    """What the artifact's model is, as something `apply` can redo on a retrained model."""
    hook = f"{getattr(judge.hook, '__module__', '?')}:{getattr(judge.hook, '__qualname__', '?')}" if judge.hook else ""
    data = {"calib_samples": len(calibration), "samples": len(evaluation), "generated": evaluation.generated,
            "shapes": evaluation.to_dict()["shapes"]}  # fmt: skip
    session = chosen.session
    return Recipe(chosen.trial.candidate, session.config, session.label, session.kind, session.streams,
                  tuple(text for t in judge.tolerances for text in t.arguments()), hook, objective, data, model_shape(model))  # fmt: skip
