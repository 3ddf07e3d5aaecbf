"""`ortforge tune-many`: tune several models for one or more targets (this machine, or every target of a Ray cluster),
one artifact per (model, target) under OUTPUT/<model>/<target>/, and an index of all of them."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ortforge.commands.tune import prepare_tune
from ortforge.core.errors import OptionError, UserError
from ortforge.core.options import default_of
from ortforge.core.outputs import guard_folder, user_files
from ortforge.core.progress import Progress, section, silent
from ortforge.core.target import Target, this_target
from ortforge.tuning.cluster import chosen_targets
from ortforge.tuning.fleet import INDEX_FILE, FleetReport, PairResult, finished_pairs, run_pairs, write_index
from ortforge.tuning.search import TuneOptions

RUNNERS = ("local", "ray")


def tune_many(
    references: Sequence[str | Path],
    output: str | Path,
    *,
    runner: str = "local",
    address: str | None = None,
    targets: Sequence[str] = (),
    samples: int = 32,
    calib_samples: int = 16,
    tolerances: Sequence[str] = (),
    objective: str = default_of(TuneOptions, "objective"),
    time_budget_s: float = default_of(TuneOptions, "time_budget_s"),
    overwrite: bool = False,
    resume: bool = False,
    progress: Progress | None = None,
    generate: str = default_of(TuneOptions, "generate"),
) -> FleetReport:
    """Tune every model for every chosen target (`targets`: names or ids; default every target the runner has, which
    locally is this machine); `time_budget_s` is each pair's. Writes OUTPUT/index.json and index.html, rewritten as each
    pair finishes; `resume` keeps the pairs an interrupted run there finished (same model contents, same target)."""
    started = time.monotonic()
    if runner not in RUNNERS:
        raise OptionError("runner", runner, f"choose one of {', '.join(RUNNERS)}")
    if not references:
        raise UserError("give at least one model to tune")
    jobs = [prepare_tune(reference, samples=samples, calib_samples=calib_samples, tolerances=tolerances, objective=objective,
                         time_budget_s=time_budget_s, generate=generate) for reference in references]  # fmt: skip
    if resume and not (Path(output) / INDEX_FILE).is_file():
        raise OptionError("resume", None, f"{output} holds no earlier tune-many output to resume")
    out = guard_folder(output, [path for job in jobs for path in user_files(job.model)], marker=INDEX_FILE, overwrite=overwrite or resume)
    kept = finished_pairs(out) if resume else []
    out.mkdir(parents=True, exist_ok=True)
    report = FleetReport(out, runner, [], 0.0, state="running")
    shown = section(progress, "tune-many", 0.0, 1.0)

    def finished(result: PairResult) -> None:  # the index as it stands, so an interrupted run leaves a resumable one
        report.pairs.append(result)
        report.wall_s = time.monotonic() - started
        write_index(report)

    try:
        if runner == "local":
            here = this_target()
            chosen_targets({here.id: here}, targets)
            todo = _not_kept([(job, here) for job in jobs], kept, report)
            run_pairs(todo, out, lambda job, target, folder: job.run(folder, progress=progress), parallel=False, progress=shown, on_result=finished)
        else:
            _on_ray(jobs, out, address, targets, progress or silent, kept, report, finished)
    except KeyboardInterrupt:
        report.state, report.wall_s = "interrupted", time.monotonic() - started
        write_index(report)
        raise
    order = {str(reference): number for number, reference in enumerate(references)}
    report.pairs.sort(key=lambda p: (order.get(p.model, len(order)), p.target.name))  # as asked, not as they finished
    report.state, report.wall_s = "finished", time.monotonic() - started
    write_index(report)
    return report


def _not_kept(pairs: list[tuple[Any, Target]], kept: list[PairResult], report: FleetReport) -> list[tuple[Any, Target]]:
    """The pairs still to tune; the kept ones go into the report as they were, and the index is written at once."""
    done = {(p.model, p.target.id, p.model_hash): p for p in kept}
    todo = []
    for job, target in pairs:
        earlier = done.get((job.reference, target.id, job.model.content_hash()))
        if earlier is not None:
            report.pairs.append(earlier)
        else:
            todo.append((job, target))
    report.planned = len(pairs)
    write_index(report)
    return todo


def _on_ray(jobs: list, out: Path, address: str | None, asked: Sequence[str], progress: Progress, kept: list[PairResult], report: FleetReport,
            finished: Callable[[PairResult], None]) -> None:  # fmt: skip
    from ortforge.tuning.ray_runner import connected

    with connected(address) as cluster:
        targets = chosen_targets(cluster.targets, asked)
        # A job of its own per pair (copies: the same model, data and so the same cache keys).
        todo = _not_kept([(copy.deepcopy(job), target) for job in jobs for target in targets], kept, report)
        done = [0.0]  # the pairs' share done, for the nodes' activity lines between pairs

        shown = section(progress, "tune-many", 0.0, 1.0)

        def pairs_done(what: str, fraction: float) -> None:
            done[0] = fraction
            shown(what, fraction)

        # What each node does, at each change ("nodes: ..." lines: a log shows the latest at each heartbeat).
        cluster.scheduler.watch = lambda line: progress(line, done[0])

        def run(job, target: Target, folder: Path):  # noqa: ANN001, ANN202 - TuneJob -> TuneReport
            return job.run(folder, **cluster.tune_arguments(target))

        try:
            run_pairs(todo, out, run, parallel=True, progress=pairs_done, on_result=finished)
        finally:
            report.activity = [asdict(a) for a in cluster.scheduler.log]
