"""`ortforge tune`: search precision, fusion, EPs and session options under an accuracy budget; write the artifact."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ortforge.accuracy.hooks import load_eval_hook
from ortforge.accuracy.tolerance import Tolerance, parse_tolerances
from ortforge.analysis.model_report import inspect_model
from ortforge.analysis.transformer import detect_transformer
from ortforge.commands.common import calibration_and_evaluation, open_model
from ortforge.core.errors import OptionError
from ortforge.core.model import Model
from ortforge.core.options import default_of
from ortforge.core.outputs import guard_folder, user_files
from ortforge.core.progress import Progress
from ortforge.core.runtime import local_providers
from ortforge.core.session import CPU, provider_name
from ortforge.data import FeedSet, ShapeOptions
from ortforge.data.decoder_io import decoder_io
from ortforge.tuning import TuneReport, tune_model
from ortforge.tuning.artifact import CONFIG_FILE
from ortforge.tuning.runner import LocalRunner, TrialRunner
from ortforge.tuning.search import TuneOptions


@dataclass
class TuneJob:
    """One model made ready for tune: opened, its inputs found, its options checked (everything before the search)."""

    reference: str
    model: Model
    calibration: FeedSet
    evaluation: FeedSet
    family: str
    transformer: bool
    options: TuneOptions
    tolerances: list[Tolerance] | None
    hook: Callable | None
    settings: dict[str, Any]

    def run(self, output: str | Path, *, progress: Progress | None = None, started: float | None = None,
            runner: Callable[[LocalRunner], TrialRunner] | None = None, providers: Sequence[str] | None = None,
            hold: Callable[..., Any] | None = None) -> TuneReport:  # fmt: skip
        """The search and the artifact in `output`; `runner`, `providers` (replacing the job's EPs) and `hold` come from a
        cluster (`Cluster.tune_arguments`)."""
        options = replace(self.options, providers=tuple(providers)) if providers is not None else self.options
        return tune_model(self.model, self.reference, Path(output), self.calibration, self.evaluation, family=self.family,
                          transformer=self.transformer, options=options, tolerances=self.tolerances, hook=self.hook, progress=progress,
                          started=started, settings=self.settings, runner=runner, hold=hold)  # fmt: skip


def prepare_tune(
    reference: str | Path,
    *,
    data: str | None = None,
    samples: int = 32,
    calib_samples: int = 16,
    shape_options: ShapeOptions | None = None,
    tolerances: Sequence[str] = (),
    eval_hook: str | None = None,
    objective: str = default_of(TuneOptions, "objective"),
    time_budget_s: float = default_of(TuneOptions, "time_budget_s"),
    providers: Sequence[str] = (),
    output: str | Path | None = None,
    overwrite: bool = False,
    generate: str = default_of(TuneOptions, "generate"),
) -> TuneJob:
    """Everything tune checks and reads before its search: options, the model, the output folder (when given), the data."""
    options = TuneOptions(objective=objective, time_budget_s=time_budget_s, generate=generate)  # checked before any work
    parsed = parse_tolerances(tolerances) or None
    model = open_model(reference)
    if objective in ("decode", "prefill") and decoder_io(model.proto.graph) is None:
        raise OptionError("objective", objective, f"{model.name} is not a decoder with a KV cache (no past/present key-value inputs and "
                          "outputs); use latency")  # fmt: skip
    if output is not None:
        guard_folder(output, user_files(model, data, eval_hook), marker=CONFIG_FILE, overwrite=overwrite)
    calibration, evaluation = calibration_and_evaluation(model, reference, data, calib_samples=calib_samples,
                                                         samples=samples, shape_options=shape_options)  # fmt: skip
    local = local_providers()
    # The first EP is the target (baseline and candidates run there): the one named first, else the CPU's, with every
    # other local EP a candidate.
    chosen = [provider_name(p) for p in providers] or sorted(local, key=lambda p: p != CPU)
    for name in chosen:
        if name not in local:
            raise OptionError("providers", name, f"not available in this onnxruntime (available: {', '.join(local)})")
    family = inspect_model(model, shape_options).family
    transformer = detect_transformer(model).model_type != "unknown"
    settings = {"model": str(reference), "objective": objective, **({"generate": generate} if objective == "decode" else {}), "time_budget_s": time_budget_s, "samples": samples, "calib_samples": calib_samples,
                "data": data, "eval_hook": eval_hook, "providers": list(providers) or None, **_shape_settings(shape_options)}  # fmt: skip
    return TuneJob(str(reference), model, calibration, evaluation, family, transformer, replace(options, providers=tuple(chosen)), parsed,
                   load_eval_hook(eval_hook) if eval_hook else None, settings)  # fmt: skip


def tune(
    reference: str | Path,
    output: str | Path,
    *,
    data: str | None = None,
    samples: int = 32,
    calib_samples: int = 16,
    shape_options: ShapeOptions | None = None,
    tolerances: Sequence[str] = (),
    eval_hook: str | None = None,
    objective: str = default_of(TuneOptions, "objective"),
    time_budget_s: float = default_of(TuneOptions, "time_budget_s"),
    providers: Sequence[str] = (),
    overwrite: bool = False,
    progress: Progress | None = None,
    runner: str = "local",
    address: str | None = None,
    target: str | None = None,
    generate: str = default_of(TuneOptions, "generate"),
) -> TuneReport:
    """Search precision, fusion, EPs and session options under an accuracy budget; write the artifact folder
    (`overwrite` replaces an earlier artifact there). `runner` 'ray' builds on the cluster at `address` and measures on
    its nodes of `target` (a name or id; needed when the cluster has several)."""
    started = time.monotonic()  # the budget is the whole command's
    if runner not in ("local", "ray"):
        raise OptionError("runner", runner, "choose one of local, ray")
    job = prepare_tune(reference, data=data, samples=samples, calib_samples=calib_samples, shape_options=shape_options, tolerances=tolerances,
                       eval_hook=eval_hook, objective=objective, time_budget_s=time_budget_s, providers=providers, output=output,
                       overwrite=overwrite, generate=generate)  # fmt: skip
    if runner == "local":
        return job.run(output, progress=progress, started=started)
    from ortforge.tuning.cluster import chosen_targets
    from ortforge.tuning.ray_runner import connected

    with connected(address) as cluster:
        found = chosen_targets(cluster.targets, [target] if target else [])
        if len(found) > 1:
            names = ", ".join(t.name for t in found)
            raise OptionError("target", None, f"the cluster has several targets ({names}): name one, or tune for all with tune-many")
        return job.run(output, progress=progress, started=started, **cluster.tune_arguments(found[0]))


def _shape_settings(options: ShapeOptions | None) -> dict[str, object]:
    """Shape options as tune's flags spell them (for the file that reproduces the run)."""
    if options is None:
        return {}
    defaults = ShapeOptions()
    return {
        "shapes": [f"{name}={'x'.join(map(str, shape))}" for name, shape in options.shapes.items()] or None,
        "dims": [f"{name}={value}" for name, value in options.dims.items()] or None,
        "batch": options.batch if options.batch != defaults.batch else None,
        "sequence": options.sequence if options.sequence != defaults.sequence else None,
    }
