"""What every command does first: open the model the user named and find the inputs to run it on."""

from __future__ import annotations

from pathlib import Path

from ortforge import zoo
from ortforge.core.model import Model, load_model
from ortforge.data import FeedSet, ShapeOptions, check_count, load_feeds


def open_model(reference: str | Path, *, check: bool = True) -> Model:
    """A model from a path or a zoo reference ('zoo:magika'), loaded and gated."""
    return load_model(zoo.resolve_model_argument(str(reference)), check=check)


def feeds_for(
    model: Model,
    reference: str | Path,
    data: str | None = None,
    *,
    samples: int | None = None,
    seed: int = 0,
    shape_options: ShapeOptions | None = None,
    option: str = "data",
) -> FeedSet:
    """User data if given; a zoo model's realistic inputs (`samples` of them, default 8); else generated feeds (flagged as such).

    `option` is the argument `data` came from (data, calib): errors name it."""
    check_count(samples, "calib_samples" if option == "calib" else "samples")
    if data is None and zoo.is_zoo_reference(str(reference)) and shape_options is None:
        return zoo.realistic_feeds(str(reference).split(":", 1)[1], count=samples or 8, seed=seed)
    return load_feeds(model, data, count=samples, seed=seed, shape_options=shape_options, option=option)


def calibration_and_evaluation(
    model: Model, reference: str | Path, data: str | None, *, calib_samples: int, samples: int, shape_options: ShapeOptions | None,
    option: str = "data",
) -> tuple[FeedSet, FeedSet]:
    """Separate samples for calibrating and for judging accuracy: judging on the calibration data flatters int8.

    Generated and zoo inputs come from two seeds; a user's data is split in two halves when it has at
    least four samples (otherwise both use all of it, and the evaluation set says so).
    """
    check_count(calib_samples, "calib_samples")
    check_count(samples, "samples")
    if data is None:
        calibration = feeds_for(model, reference, None, samples=calib_samples, shape_options=shape_options)
        return calibration, feeds_for(model, reference, None, samples=samples, shape_options=shape_options, seed=1)
    everything = load_feeds(model, data, count=calib_samples + samples, shape_options=shape_options, option=option)
    if len(everything) < 4:
        everything.notes.append("calibration and accuracy use the same samples (fewer than 4 given)")
        return everything, everything
    half = max(len(everything) - samples, len(everything) // 2)
    calibration = FeedSet(everything.samples[:half], f"{data} (samples 0-{half - 1})", False)
    evaluation = FeedSet(everything.samples[half:], f"{data} (samples {half}-{len(everything) - 1})", False)
    return calibration, evaluation
