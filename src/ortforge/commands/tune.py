"""`ortforge tune`: search precision, fusion, EPs and session options under an accuracy budget; write the artifact."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from ortforge.accuracy.hooks import load_eval_hook
from ortforge.accuracy.tolerance import parse_tolerances
from ortforge.analysis.model_report import inspect_model
from ortforge.analysis.transformer import detect_transformer
from ortforge.commands.common import calibration_and_evaluation, open_model
from ortforge.core.errors import OptionError
from ortforge.core.options import default_of
from ortforge.core.outputs import guard_folder, user_files
from ortforge.core.progress import Progress
from ortforge.core.runtime import local_providers
from ortforge.core.session import provider_name
from ortforge.data import ShapeOptions
from ortforge.tuning import TuneReport, tune_model
from ortforge.tuning.artifact import CONFIG_FILE
from ortforge.tuning.search import TuneOptions


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
) -> TuneReport:
    """Search precision, fusion, EPs and session options under an accuracy budget; write the artifact folder
    (`overwrite` replaces an earlier artifact there)."""
    started = time.monotonic()  # the budget is the whole command's
    options = TuneOptions(objective=objective, time_budget_s=time_budget_s)  # checked before any work
    model = open_model(reference)
    guard_folder(output, user_files(model, data, eval_hook), marker=CONFIG_FILE, overwrite=overwrite)
    calibration, evaluation = calibration_and_evaluation(model, reference, data, calib_samples=calib_samples,
                                                         samples=samples, shape_options=shape_options)  # fmt: skip
    local = local_providers()
    chosen = [provider_name(p) for p in providers] or local
    for name in chosen:
        if name not in local:
            raise OptionError("providers", name, f"not available in this onnxruntime (available: {', '.join(local)})")
    family = inspect_model(model, shape_options).family
    transformer = detect_transformer(model).model_type != "unknown"
    options = replace(options, providers=tuple(chosen))
    settings = {"model": str(reference), "objective": objective, "time_budget_s": time_budget_s, "samples": samples, "calib_samples": calib_samples,
                "data": data, "eval_hook": eval_hook, "providers": list(providers) or None, **_shape_settings(shape_options)}  # fmt: skip
    return tune_model(
        model, str(reference), Path(output), calibration, evaluation, family=family, transformer=transformer, options=options,
        tolerances=parse_tolerances(tolerances) or None, hook=load_eval_hook(eval_hook) if eval_hook else None, progress=progress,
        started=started, settings=settings,
    )  # fmt: skip


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
