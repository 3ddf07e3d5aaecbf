"""`ortforge tune`: search precision, fusion, EPs and session options under an accuracy budget; write the artifact."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ortforge.accuracy.hooks import load_eval_hook
from ortforge.accuracy.tolerance import parse_tolerances
from ortforge.analysis.model_report import inspect_model
from ortforge.analysis.transformer import detect_transformer
from ortforge.commands.common import calibration_and_evaluation, open_model
from ortforge.core.errors import UserError
from ortforge.core.progress import Progress
from ortforge.core.runtime import local_providers
from ortforge.core.session import provider_name
from ortforge.data import ShapeOptions
from ortforge.tuning import TuneReport, tune_model
from ortforge.tuning.search import OBJECTIVES, TuneOptions


def tune(
    reference: str | Path,
    output: str | Path,
    *,
    data: str | None = None,
    samples: int | None = None,
    calib_samples: int | None = None,
    shape_options: ShapeOptions | None = None,
    tolerances: Sequence[str] = (),
    eval_hook: str | None = None,
    objective: str = "latency",
    time_budget_s: float = 300.0,
    providers: Sequence[str] = (),
    progress: Progress | None = None,
) -> TuneReport:
    """Search precision, fusion, EPs and session options under an accuracy budget; write the artifact folder."""
    if objective not in OBJECTIVES:
        raise UserError(f"--objective {objective}: choose one of {', '.join(OBJECTIVES)}")
    model = open_model(reference)
    calibration, evaluation = calibration_and_evaluation(model, reference, data, calib_samples=calib_samples or 16,
                                                         samples=samples or 8, shape_options=shape_options)  # fmt: skip
    local = local_providers()
    chosen = [provider_name(p) for p in providers] or local
    for name in chosen:
        if name not in local:
            raise UserError(f"--ep {name}: not available in this onnxruntime (available: {', '.join(local)})")
    family = inspect_model(model, shape_options).family
    transformer = detect_transformer(model).model_type != "unknown"
    options = TuneOptions(objective=objective, time_budget_s=time_budget_s, providers=tuple(chosen))
    return tune_model(
        model, str(reference), Path(output), calibration, evaluation, family=family, transformer=transformer, options=options,
        tolerances=parse_tolerances(tolerances) or None, hook=load_eval_hook(eval_hook) if eval_hook else None, progress=progress,
    )  # fmt: skip
