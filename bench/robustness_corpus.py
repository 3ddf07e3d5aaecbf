"""Robustness corpus: every ONNX backend test model through a transform: correct, refused, or silently wrong?

    python bench/robustness_corpus.py --transform fp16|optimize|quantize|all [--jobs 2] [--limit N]
        [--filter SUBSTRING] [--timeout 120] [--json results.json] [--cache DIR]

The corpus is the node test cases regenerated from the generators the `onnx` package ships (written
with onnx's own `backend.test.cmd_tools` data writer into `~/.cache/ortforge/corpus/onnx-VERSION`,
reused when present) plus the wheel's `pytorch-converted`, `pytorch-operator`, `simple` and `light`
models. Each case is run through the transform in a worker process; the written model is reloaded
with ORT, run on the case's inputs and compared with the original model's ORT outputs:

- excluded: ORT cannot run the original (this onnx writes IR 14 / opset 28 for its newest ops, which
  ORT 1.31 rejects; cases are never altered): not in the denominator, reasons listed;
- refused: ortforge declined in one line (loader or transform), with the reason;
- silently wrong: a written model that fails to load, fails to run, changes the I/O signature or
  gives outputs outside the transform's tolerance (see corpus/transforms.py for each tolerance);
- crashed: ortforge raised something other than its one-line UserError (a traceback).

fp16 runs beside onnxconverter-common's convert_float_to_float16(keep_io_types=True) on the same
cases, classified the same way (its exceptions are 'loud failures'). `--limit N` takes N cases
spread evenly over the sorted corpus, so a short run is a deterministic sample of every source.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from corpus import transforms as corpus_transforms
from corpus.classify import Result
from corpus.generate import default_cache, ensure_corpus, select
from corpus.pool import PoolOptions, Task, WorkerStartError, run_tasks

TOP_REASONS = 10
SHOWN_COMPARISON_WRONG = 40  # onnxconverter-common's silently-wrong cases listed (all are in --json)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    names = _transforms(args.transform)
    if not names:
        return 1
    cases = select(ensure_corpus(args.cache, _log), args.filter, args.limit)
    _log(f"{len(cases)} cases x {len(names)} transform(s) on {args.jobs} worker(s), {args.timeout:g} s per case")
    try:
        results = _run(cases, names, PoolOptions(jobs=args.jobs, timeout=args.timeout))
    except WorkerStartError as exc:
        _log(f"error: {exc}")
        return 2
    side_by_side = "fp16" in names and corpus_transforms.COMPARISON in names
    for name in names:
        if not (side_by_side and name == corpus_transforms.COMPARISON):
            print(report(name, results, side_by_side and name == "fp16"))
    if args.json:
        _write_json(Path(args.json), names, results)
        _log(f"per-case results written to {args.json}")
    return 1 if any(r.verdict in ("wrong", "crashed") for r in results if r.transform != corpus_transforms.COMPARISON) else 0


def _write_json(path: Path, names: list[str], results: list[Result]) -> None:
    """Versions, each transform's figures, and every case's result."""
    import onnx
    import onnxruntime

    summary = {name: figures(r for r in results if r.transform == name) for name in names}
    document = {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "figures": summary, "results": [r.to_dict() for r in results]}
    path.write_text(json.dumps(document, indent=1))


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--transform", choices=[*corpus_transforms.GROUPS, "all"], default="fp16")
    parser.add_argument("--limit", type=int, help="N cases spread evenly over the corpus (deterministic)")
    parser.add_argument("--filter", help="only cases whose name (SOURCE/FOLDER) contains this")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per case and transform (default 120)")
    parser.add_argument("--json", help="write per-case results to this file")
    parser.add_argument("--cache", type=Path, default=default_cache(), help="where generated cases live (default %(default)s)")
    return parser.parse_args(argv)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _transforms(choice: str) -> list[str]:
    """The transform names to run; one that cannot run here is skipped with a message."""
    groups = corpus_transforms.GROUPS.values() if choice == "all" else [corpus_transforms.GROUPS[choice]]
    names = []
    for name in (name for group in groups for name in group):
        why = corpus_transforms.unavailable(name)
        if why:
            _log(f"skipping {name}: {why}")
        else:
            names.append(name)
    return names


def _run(cases: list, names: list[str], options: PoolOptions) -> list[Result]:
    tasks = [Task(case, name) for name in names for case in cases]
    results: list[Result] = []
    progress = _Progress(len(tasks))
    run_tasks(tasks, options, lambda result: (results.append(result), progress.update(result)))
    progress.finish()
    order = {(task.transform, task.case.name): index for index, task in enumerate(tasks)}
    return sorted(results, key=lambda r: order[(r.transform, r.case)])


class _Progress:
    """One stderr line, rewritten in place on a terminal and printed every 5% otherwise."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.started = total, 0, time.monotonic()
        self.counts: Counter = Counter()
        self.tty = sys.stderr.isatty()

    def update(self, result: Result) -> None:
        self.done += 1
        self.counts[result.verdict] += 1
        if self.tty or self.done % max(self.total // 20, 1) == 0 or self.done == self.total:
            figures = " ".join(f"{verdict} {count}" for verdict, count in sorted(self.counts.items()))
            line = f"[{self.done}/{self.total} {time.monotonic() - self.started:.0f}s] {figures} | {result.transform} {result.case}"
            print(f"\r\x1b[K{line[:160]}" if self.tty else line, end="" if self.tty else "\n", file=sys.stderr, flush=True)

    def finish(self) -> None:
        if self.tty:
            print(file=sys.stderr)


# -- the report -----------------------------------------------------------------------------------


def figures(results: Iterable[Result]) -> dict:
    """Counts per verdict, the denominator (cases ORT runs; float ones only for float-only transforms)."""
    results = list(results)
    count = Counter(r.verdict for r in results)
    runs = [r for r in results if r.verdict not in ("excluded",)]
    float_runs = [r for r in runs if r.float_case]
    judged = [r for r in runs if r.verdict != "not-float"]
    correct_float = sum(1 for r in float_runs if r.verdict == "correct")
    return {
        "total": len(results),
        "excluded": count["excluded"],
        "runs": len(runs),
        "float": len(float_runs),
        "judged": len(judged),
        "correct": count["correct"],
        "unchanged": sum(1 for r in results if r.verdict == "correct" and r.changed is False),
        "refused": count["refused"] + count["loud"],
        "wrong": count["wrong"],
        "crashed": count["crashed"],
        "correct_float": correct_float,
        "float_share": correct_float / len(float_runs) if float_runs else 0.0,
    }


def report(name: str, results: list[Result], with_comparison: bool) -> str:
    """The table for one transform, with onnxconverter-common's column beside it when asked (fp16)."""
    transform = corpus_transforms.build(name)
    own = [r for r in results if r.transform == name]
    lines = [f"\n== {name}: {transform.label}", f"   tolerance: {transform.tolerance.describe()}"]
    other = [r for r in results if r.transform == corpus_transforms.COMPARISON] if with_comparison else []
    columns = [(_tool(transform), figures(own))] + ([(_tool(corpus_transforms.build(corpus_transforms.COMPARISON)), figures(other))] if other else [])
    lines += _table(columns, transform.float_only)
    lines += _reasons("excluded (ORT can't run the original), by reason", [r for r in own if r.verdict == "excluded"], TOP_REASONS)
    lines += _sections(transform, own)
    if other:
        lines += _sections(corpus_transforms.build(corpus_transforms.COMPARISON), other)
    return "\n".join(lines)


def _tool(transform: corpus_transforms.Transform) -> str:
    return "onnxconverter-common" if transform.comparison else "ortforge"


def _sections(transform: corpus_transforms.Transform, results: list[Result]) -> list[str]:
    """Refusals (top reasons), then every silently wrong and crashed case; the comparison tool's wrong ones capped."""
    tool = _tool(transform)
    if transform.comparison:
        wrong = [r for r in results if r.verdict == "wrong"]
        return (
            _reasons(f"{tool} loud failures, top {TOP_REASONS}", [r for r in results if r.verdict == "loud"], TOP_REASONS)
            + _reasons(f"{tool} silently wrong, by kind", wrong, TOP_REASONS)
            + _listing(f"{tool} silently wrong", wrong, SHOWN_COMPARISON_WRONG)
        )
    return (
        _reasons(f"refused by {tool}, top {TOP_REASONS} reasons", [r for r in results if r.verdict == "refused"], TOP_REASONS)
        + _listing(f"SILENTLY WRONG ({tool})", [r for r in results if r.verdict == "wrong"])
        + _listing(f"CRASHED ({tool}, traceback)", [r for r in results if r.verdict == "crashed"])
    )


def _table(columns: list[tuple[str, dict]], float_only: bool) -> list[str]:
    rows = [
        ("cases", "total"),
        ("excluded: ORT can't run the original", "excluded"),
        ("ORT runs the original", "runs"),
        ("  of which float cases", "float"),
        ("judged" + (" (float cases ORT runs)" if float_only else " (all cases ORT runs)"), "judged"),
        ("correct", "correct"),
        ("  of which unchanged by the transform", "unchanged"),
        ("refused / loud failure (one line)", "refused"),
        ("SILENTLY WRONG", "wrong"),
        ("crashed (traceback)", "crashed"),
    ]
    lines = ["   " + f"{'':<44}" + "".join(f"{title:>22}" for title, _ in columns)]
    for label, key in rows:
        lines.append("   " + f"{label:<44}" + "".join(f"{numbers[key]:>22}" for _, numbers in columns))
    share = "".join(f"{_share(n['correct_float'], n['float']):>22}" for _, n in columns)
    lines.append("   " + f"{'correct of the float cases ORT runs':<44}" + share)
    if not float_only:
        overall = "".join(f"{_share(n['correct'], n['judged']):>22}" for _, n in columns)
        lines.append("   " + f"{'correct of all cases ORT runs':<44}" + overall)
    return lines


def _share(part: int, whole: int) -> str:
    return f"{part}/{whole} = {100 * part / max(whole, 1):.1f}%"


def _reasons(title: str, results: list[Result], top: int) -> list[str]:
    if not results:
        return []
    counts = Counter(r.category or r.reason for r in results)
    lines = [f"   {title}:"]
    for category, count in counts.most_common(top):
        example = next(r for r in results if (r.category or r.reason) == category)
        lines.append(f"     {count:>5}  {category[:100]}  (e.g. {example.case})")
    if len(counts) > top:
        lines.append(f"     {sum(counts.values()) - sum(c for _, c in counts.most_common(top)):>5}  in {len(counts) - top} other reasons")
    return lines


def _listing(title: str, results: list[Result], limit: int | None = None) -> list[str]:
    if not results:
        return [f"   {title}: none"]
    lines = [f"   {title}: {len(results)}"]
    for result in results[:limit]:
        lines.append(f"     {result.case}: {result.reason[:240]}")
    if limit is not None and len(results) > limit:
        lines.append(f"     ... and {len(results) - limit} more (see --json)")
    return lines


if __name__ == "__main__":
    sys.exit(main())
