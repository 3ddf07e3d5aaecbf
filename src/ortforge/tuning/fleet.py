"""Many models for many targets: one tune per (model, target), on this machine or on a Ray cluster, and an index.

Locally the pairs run one after another. On a cluster every pair runs in a driver thread with its own `RayRunner`
(bound to its target), all sharing one scheduler (the host lock) and one build cache: builds spread over every
node, measurements queue per host. A pair whose target has no node left ends unmeasured and says so in the index.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

from ortforge.core.errors import UserError
from ortforge.core.files import atomic_write_text
from ortforge.core.progress import Progress, silent
from ortforge.core.target import Target

INDEX_FILE = "index.json"
INDEX_PAGE = "index.html"


@dataclass
class PairResult:
    model: str
    target: Target
    folder: str  # relative to the index
    winner: str = ""
    speedup: str = ""
    accuracy: str = ""
    error: str = ""  # why this pair has no artifact (no node of its target left, a refused model...)
    seconds: float = 0.0
    model_hash: str = ""  # the model's contents when it was tuned: --resume keeps a pair only for the same contents
    kept: bool = False  # finished by an earlier, interrupted run (--resume), not tuned again

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "target": self.target.to_dict(), "folder": self.folder, "winner": self.winner, "speedup": self.speedup,
                "accuracy": self.accuracy, "error": self.error, "seconds": self.seconds, "model_hash": self.model_hash, "kept": self.kept}  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PairResult:
        target = Target(data["target"]["id"], data["target"]["name"], data["target"].get("facts", {}))
        return cls(data["model"], target, data["folder"], data["winner"], data["speedup"], data["accuracy"], data["error"], data["seconds"],
                   data.get("model_hash", ""), kept=True)  # fmt: skip


@dataclass
class FleetReport:
    output: Path
    runner: str
    pairs: list[PairResult]
    wall_s: float
    activity: list[dict] = field(default_factory=list)  # every build and measurement: node, host, target, start, end
    state: str = "finished"  # or "running" (written as pairs finish) or "interrupted": --resume finishes it
    planned: int = 0  # pairs this run is to produce (kept ones included)

    def to_dict(self) -> dict[str, Any]:
        return {"output": str(self.output), "runner": self.runner, "state": self.state, "planned": max(self.planned, len(self.pairs)),
                "wall_s": self.wall_s, "pairs": [p.to_dict() for p in self.pairs], "activity": self.activity}  # fmt: skip


def finished_pairs(output: Path) -> list[PairResult]:
    """The pairs an earlier tune-many in `output` finished (artifact written), for --resume to keep."""
    try:
        data = json.loads((output / INDEX_FILE).read_text())
    except (OSError, ValueError):
        return []
    pairs = [PairResult.from_dict(p) for p in data.get("pairs", [])]
    return [p for p in pairs if not p.error and p.model_hash and (output / p.folder / "ortforge.json").is_file()]


def folder_name(text: str) -> str:
    """A file-system-safe folder name for a model reference or a target name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text.removeprefix("zoo:").rsplit("/", 1)[-1].removesuffix(".onnx")).strip("-") or "model"


def run_pairs(pairs: Sequence[tuple[Any, Target]], output: Path, run: Callable[[Any, Target, Path], Any], *, parallel: bool,
              progress: Progress | None = None, on_result: Callable[[PairResult], None] | None = None) -> list[PairResult]:  # fmt: skip
    """Run `run(job, target, folder)` for every (job, target) pair, in threads when `parallel` (each pair with a job of its
    own: a search edits its model's proto while it taps it); a failure is that pair's result, the others go on.
    `on_result` hears each pair as it finishes (the index is rewritten then, so an interrupted run can be resumed)."""
    shown = progress or silent
    results: list[PairResult | None] = [None] * len(pairs)
    done = [0]
    lock = threading.Lock()
    names: dict[str, str] = {}  # model reference -> its folder (two models named model.onnx get model and model-2)
    for job, _ in pairs:
        if job.reference in names:
            continue
        base = name = folder_name(job.reference)
        number = 1
        while name in names.values():
            number += 1
            name = f"{base}-{number}"
        names[job.reference] = name

    def one(index: int) -> None:
        job, target = pairs[index]
        folder = Path(names[job.reference]) / folder_name(target.name)
        start = time.monotonic()
        result = PairResult(job.reference, target, str(folder), model_hash=job.model.content_hash())
        try:
            report = run(job, target, output / folder)
            summary = report.record["summary"]
            result.winner, result.speedup, result.accuracy = report.record["chosen"]["label"], summary["speedup"], summary["accuracy"]
        except UserError as exc:  # this pair only: the others go on
            result.error = str(exc)
        except Exception:
            if stopping.is_set():  # interrupted: the cluster went away under this pair's search, nothing to report
                return
            raise
        result.seconds = time.monotonic() - start
        with lock:
            results[index] = result
            done[0] += 1
            shown(f"{done[0]} of {len(pairs)} (model, target) pairs done: {job.reference} for {target.name}", done[0] / len(pairs))
            if on_result is not None:
                on_result(result)

    stopping = threading.Event()
    if parallel:
        threads = [threading.Thread(target=one, args=(index,), daemon=True) for index in range(len(pairs))]
        for thread in threads:
            thread.start()
        try:
            for thread in threads:
                thread.join()
        except KeyboardInterrupt:
            stopping.set()
            raise
    else:
        for index in range(len(pairs)):
            one(index)
    return [r for r in results if r is not None]


def write_index(report: FleetReport) -> None:
    """index.json and index.html beside the artifacts: winner, speed-up and accuracy per model and target."""
    atomic_write_text(report.output / INDEX_FILE, json.dumps(report.to_dict(), indent=2, default=str))
    rows = "".join(
        f"<tr><td>{escape(p.model)}</td><td>{escape(p.target.name)}</td>"
        + (f'<td><a href="{escape(p.folder)}/report.html">{escape(p.winner)}</a></td><td>{escape(p.speedup)}</td><td>{escape(p.accuracy)}</td>'
           if not p.error else f'<td colspan="3">{escape(p.error)}</td>')
        + f"<td>{p.seconds:.0f} s{' (earlier run)' if p.kept else ''}</td></tr>"
        for p in report.pairs
    )  # fmt: skip
    planned = max(report.planned, len(report.pairs))
    state = ("" if report.state == "finished" else f" <b>{escape(report.state)}: {len(report.pairs)} of {planned} pairs done"
             + (", <code>--resume</code> finishes it" if report.state == "interrupted" else "") + "</b>")  # fmt: skip
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>ortforge tune-many</title><style>body{{font-family:sans-serif;margin:2em}}"
            f"td,th{{border:1px solid #ddd;padding:4px 8px}}table{{border-collapse:collapse}}</style></head><body><h1>ortforge tune-many</h1>"
            f"<p>{len(report.pairs)} (model, target) pairs, runner {escape(report.runner)}, {report.wall_s:.0f} s{state}</p><table><tr><th>model</th>"
            f"<th>target</th><th>winner</th><th>latency vs fp32</th><th>accuracy</th><th>time</th></tr>{rows}</table></body></html>")  # fmt: skip
    atomic_write_text(report.output / INDEX_PAGE, page)
