"""`ortforge tune-many`: tune several models for one or more targets (this machine, or every target of a Ray cluster),
one artifact per (model, target) under OUTPUT/<model>/<target>/, and an index of all of them."""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from ortforge.commands.tune import prepare_tune
from ortforge.core.errors import OptionError, UserError
from ortforge.core.options import default_of
from ortforge.core.outputs import guard_folder, user_files
from ortforge.core.progress import Progress, section
from ortforge.core.target import Target, this_target
from ortforge.tuning.cluster import chosen_targets
from ortforge.tuning.fleet import INDEX_FILE, FleetReport, run_pairs, write_index
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
    progress: Progress | None = None,
) -> FleetReport:
    """Tune every model for every chosen target (`targets`: names or ids; default every target the runner has, which
    locally is this machine); `time_budget_s` is each pair's. Writes OUTPUT/index.json and index.html."""
    started = time.monotonic()
    if runner not in RUNNERS:
        raise OptionError("runner", runner, f"choose one of {', '.join(RUNNERS)}")
    if not references:
        raise UserError("give at least one model to tune")
    jobs = [prepare_tune(reference, samples=samples, calib_samples=calib_samples, tolerances=tolerances, objective=objective,
                         time_budget_s=time_budget_s) for reference in references]  # fmt: skip
    out = guard_folder(output, [path for job in jobs for path in user_files(job.model)], marker=INDEX_FILE, overwrite=overwrite)
    out.mkdir(parents=True, exist_ok=True)
    shown = section(progress, "tune-many", 0.0, 1.0)
    if runner == "local":
        here = this_target()
        chosen_targets({here.id: here}, targets)
        pairs = run_pairs([(job, here) for job in jobs], out, lambda job, target, folder: job.run(folder, progress=progress), parallel=False,
                          progress=shown)  # fmt: skip
        activity: list[dict] = []
    else:
        pairs, activity = _on_ray(jobs, out, address, targets, shown)
    report = FleetReport(out, runner, pairs, time.monotonic() - started, activity)
    write_index(report)
    return report


def _on_ray(jobs: list, out: Path, address: str | None, asked: Sequence[str], progress: Progress) -> tuple[list, list[dict]]:
    from ortforge.tuning.cluster import target_providers
    from ortforge.tuning.ray_runner import connected

    with connected(address) as cluster:
        targets = chosen_targets(cluster.targets, asked)

        def run(job, target: Target, folder: Path):  # noqa: ANN001, ANN202 - TuneJob -> TuneReport
            return job.run(folder, runner=cluster.runner_for(target), providers=target_providers(target))

        # A job of its own per pair (copies: the same model, data and so the same cache keys).
        pairs = run_pairs([(copy.deepcopy(job), target) for job in jobs for target in targets], out, run, parallel=True, progress=progress)
        return pairs, [asdict(a) for a in cluster.scheduler.log]
