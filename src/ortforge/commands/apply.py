"""`ortforge apply`: redo a tune artifact's recipe on another model of the same architecture (retrained weights),
re-calibrated and judged against that model's own fp32 outputs, without a new search."""

from __future__ import annotations

import time
from pathlib import Path

from ortforge.accuracy.hooks import load_eval_hook
from ortforge.commands.common import calibration_and_evaluation, open_model
from ortforge.core.errors import UserError
from ortforge.core.outputs import guard_folder, user_files
from ortforge.core.progress import Progress
from ortforge.data import ShapeOptions
from ortforge.data.specs import recorded_shape_options
from ortforge.tuning import TuneReport, apply_model
from ortforge.tuning.artifact import CONFIG_FILE
from ortforge.tuning.recipe import Recipe, check_fits, read_recipe

TIME_BUDGET_S = 60.0


def apply(
    recipe: str | Path,
    reference: str | Path,
    output: str | Path,
    *,
    data: str | None = None,
    samples: int | None = None,
    calib_samples: int | None = None,
    eval_hook: str | None = None,
    time_budget_s: float = TIME_BUDGET_S,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> TuneReport:
    """Apply the recipe of a tune artifact (its folder or ortforge.json) to `reference` and write a new artifact;
    sample counts default to the recipe's, data to the same kind of inputs it was judged on."""
    started = time.monotonic()
    found = read_recipe(recipe)
    model = open_model(reference)
    guard_folder(output, user_files(model, data, eval_hook, recipe), marker=CONFIG_FILE, overwrite=overwrite)
    check_fits(found, model)
    if found.hook and eval_hook is None and any(text.startswith("eval=") for text in found.tolerances):
        raise UserError(f"{recipe}: the recipe's gate is your --eval hook's score ({found.hook}); give --eval MODULE:FUNCTION")
    calibration, evaluation = calibration_and_evaluation(
        model, reference, data, calib_samples=calib_samples or found.data.get("calib_samples", 16), samples=samples or found.data.get("samples", 32),
        shape_options=_recorded_shapes(found, data, reference),
    )  # fmt: skip
    return apply_model(model, str(reference), Path(output), found, calibration, evaluation, hook=load_eval_hook(eval_hook) if eval_hook else None,
                       time_budget_s=time_budget_s, progress=progress, started=started)  # fmt: skip


def _recorded_shapes(recipe: Recipe, data: str | None, reference: str | Path) -> ShapeOptions | None:
    """Generated inputs of the shapes the recipe was judged on (a zoo model's realistic inputs and user data bring their own)."""
    if data is not None or not recipe.data.get("generated") or str(reference).startswith("zoo:"):
        return None
    return recorded_shape_options(recipe.data.get("shapes", {}))
