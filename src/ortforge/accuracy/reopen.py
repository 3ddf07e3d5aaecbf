"""Every written model verifies itself: reopened from disk exactly as a user would, and judged again.

Three ways in: ortforge's guarded loader (the settings its stamp or artifact asks for), plain
`onnxruntime.InferenceSession` on the file with the recorded session config, and `onnx.checker` with
full checks (models under 2 GB). Each must load, run the evaluation samples and still satisfy the judge
that accepted the model in memory; a model that does not is never reported as written.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from ortforge.accuracy.judge import Judge
from ortforge.core import runtime
from ortforge.core.errors import UserError, first_line
from ortforge.core.model import EXTERNAL_DATA_THRESHOLD, Model, checker_problem, model_size, save_model
from ortforge.core.saved import open_saved
from ortforge.core.session import SessionConfig, run_on_feeds
from ortforge.data import FeedSet
from ortforge.transforms.sort import topologically_sorted, unsorted_problem


class ReopenError(UserError):
    """A written model that does not reopen, or reopened computes something its judge rejects."""


def reopen_check(path: str | Path, feeds: FeedSet, judge: Judge | None = None, config: SessionConfig | None = None) -> list[str]:
    """Reopen `path` three ways and run `feeds` through the two sessions; with a `judge`, their outputs must pass it.

    Returns what was checked, one line each; raises `ReopenError` naming the way in that failed."""
    path = Path(path)
    try:
        opened = open_saved(path, config)
    except UserError as exc:
        raise ReopenError(f"{path.name}: ortforge's loader refuses the written model: {exc}") from None
    checks = []
    if model_size(opened.model) < EXTERNAL_DATA_THRESHOLD:
        problem = checker_problem(str(path), full=True)
        if problem is not None:
            raise ReopenError(f"{path.name}: onnx.checker (full) rejects the written model: {problem}")
        checks.append("onnx.checker (full)")
    try:
        guarded = opened.session()
    except UserError as exc:
        raise ReopenError(f"{path.name}: ortforge's loader refuses the written model: {exc}") from None
    _judged(path, run_on_feeds(guarded, feeds, path.name), judge, "ortforge's loader")
    checks.append("ortforge.load")
    plain = _plain_session(path, opened.config)
    _judged(path, run_on_feeds(plain, feeds, path.name), judge, "plain onnxruntime")
    checks.append("plain onnxruntime with the recorded session config")
    return checks


def _plain_session(path: Path, config: SessionConfig) -> object:
    """`onnxruntime.InferenceSession(path, options, providers)` as a user writes it (by path: external data found beside it)."""
    try:
        return runtime.ort().InferenceSession(str(path), config.session_options(), providers=config.provider_names,
                                              provider_options=[p.options for p in config.providers])  # fmt: skip
    except Exception as exc:  # ORT raises its own exception types per failure kind
        raise ReopenError(f"{path.name}: plain onnxruntime cannot load the written model: {first_line(exc, 300)}") from None


def _judged(path: Path, outputs: list[dict], judge: Judge | None, how: str) -> None:
    if judge is None:
        return
    verdict = judge(outputs, detail=False)
    if not verdict.passed:
        raise ReopenError(f"{path.name}: reopened with {how}, the written model's outputs miss the tolerance it was judged under: {verdict.reason}")


def save_verified(proto: onnx.ModelProto, output: str | Path, source: Model, feeds: FeedSet, judge: Judge | None = None,
                  config: SessionConfig | None = None, *, data_dir: Path | None = None) -> tuple[Path, list[str]]:  # fmt: skip
    """Save (nodes sorted first if a checker would refuse their order), reopen and judge again; on failure
    remove what was written and raise. Returns the path and notes on what was checked or repaired. The proto's
    external data is read from `data_dir` (a transform's scratch folder), else from the source's folder."""
    notes = []
    if unsorted_problem(proto) is not None:
        proto = topologically_sorted(proto).proto
        notes.append("nodes re-sorted before writing: a subgraph read a value produced after it (ORT runs that, onnx.checker refuses it)")
    saved = save_model(proto, output, source=source, data_dir=data_dir)
    try:
        checks = reopen_check(saved, feeds, judge, config)
    except ReopenError:
        for written in (saved, saved.parent / (saved.name + ".data")):
            written.unlink(missing_ok=True)
        raise
    return saved, notes + [f"reopened from disk and checked: {', '.join(checks)}"]
