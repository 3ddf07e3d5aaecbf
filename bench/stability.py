"""Does `ortforge tune` ship the same thing twice? Tunes each model several times, then measures the artifacts
against each other and against fp32 in one interleaved run (with its A/A noise floor).

    python bench/stability.py [zoo:NAME | MODEL.onnx ...] [--runs 3] [--budget 90s] [--busy 2] [--seconds 4]

Per model it prints what each tune chose, with its own interval, noise floor and load; then the cross
measurement: each artifact against fp32, and each pair of artifacts against each other. Two artifacts
agree when neither is faster than the other beyond the cross run's noise; where they do not, it names
the component (precision, session settings) that differed and each tune's reason. `--busy N` keeps N
CPU-bound processes (`yes > /dev/null`) running beside the whole script, to see how tune behaves on a
busy machine. Each tune runs as its own process, as a user runs it, sharing ortforge's build cache
(builds and accuracy verdicts are reused; timings never are).
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import ortforge
from ortforge.commands.common import feeds_for
from ortforge.core.model import load_model
from ortforge.core.session import SessionConfig
from ortforge.measure.bench import BenchOptions, Variant, bench
from ortforge.measure.compare import CandidateScore, beats
from ortforge.measure.stats import ratio_of
from ortforge.tuning.artifact import read_artifact


def tune_times(reference: str, runs: int, budget: str, work: Path) -> list[Path]:
    """The artifact folders of `runs` separate `ortforge tune` processes on one model."""
    folders = []
    for index in range(runs):
        folder = work / f"run{index + 1}"
        command = [str(Path(sys.executable).with_name("ortforge")), "tune", reference, "-o", str(folder), "--time-budget", budget]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            print(f"  run {index + 1}: tune failed (exit {result.returncode}): {(result.stderr.strip().splitlines() or ['?'])[-1]}")
            continue
        folders.append(folder)
        record = json.loads((folder / "ortforge.json").read_text())
        print(f"  run {index + 1}: {record['chosen']['label']}: {record['summary']['speedup']}, noise {record['summary']['noise']}, "
              f"{record['elapsed_s']:.0f} s\n    why: {record['why']}")  # fmt: skip
    return folders


def cross_measure(reference: str, folders: list[Path], seconds: float) -> None:
    """fp32 and every artifact in one interleaved run; each artifact against fp32 and each pair against each other."""
    original = ortforge.open_model(reference)
    feeds = feeds_for(original, reference, None, samples=8, seed=1)
    artifacts = [(folder.name, *read_artifact(folder)) for folder in folders]
    variants = [Variant("fp32 | ORT defaults", original, SessionConfig(), feeds)]
    variants += [Variant(name, load_model(path), config, feeds) for name, path, config, _ in artifacts]
    report = bench(variants, BenchOptions(max_seconds=seconds, profile=False, min_rounds=20))
    noise = report.noise_floor
    load = f"; {report.load.describe()}" if report.load and report.load.busy else ""
    results = {result.label: result for result in report.variants}
    baseline = results["fp32 | ORT defaults"]
    print(f"  cross run: {len(baseline.latency.round_medians)} interleaved rounds, noise ±{noise:.1%}{load}")
    for name, _, _, record in artifacts:
        against = ratio_of(results[name].latency.round_medians, baseline.latency.round_medians)
        print(f"    {name} vs fp32: {against.text()}  (its own tune said {record['summary']['speedup']})")
    differing = []
    for (a, _, _, record_a), (b, _, _, record_b) in itertools.combinations(artifacts, 2):
        ab = CandidateScore(a, ratio_of(results[a].latency.round_medians, results[b].latency.round_medians), results[a].latency.p50)
        ba = CandidateScore(b, ratio_of(results[b].latency.round_medians, results[a].latency.round_medians), results[b].latency.p50)
        agree = not beats(ab, noise) and not beats(ba, noise)
        print(f"    {a} / {b}: {ab.text()}  {'within noise' if agree else 'DIFFERENT beyond noise'}")
        if not agree:
            differing.append((a, record_a, b, record_b))
    for a, record_a, b, record_b in differing:
        parts = [part for part in ("precision", "session") if record_a["chosen"][part] != record_b["chosen"][part]]
        print(f"    {a} and {b} differ in {', '.join(parts) or 'nothing they record (same recipe: the difference is the machine)'}:")
        for name, record in ((a, record_a), (b, record_b)):
            print(f"      {name}: {record['why']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", default=["zoo:magika", "zoo:ppocr-cls", "zoo:silero-vad"])
    parser.add_argument("--runs", type=int, default=3, help="tunes per model (default 3)")
    parser.add_argument("--budget", default="90s", help="each tune's --time-budget (default 90s)")
    parser.add_argument("--seconds", type=float, default=4.0, help="timed seconds per variant in the cross run (default 4)")
    parser.add_argument("--keep", help="folder to keep the artifacts in (default: a temporary one)")
    parser.add_argument("--busy", type=int, default=0, help="CPU-bound processes to keep running beside the script (default 0)")
    args = parser.parse_args()
    hogs = [subprocess.Popen(["yes"], stdout=subprocess.DEVNULL) for _ in range(args.busy)]
    try:
        print(f"{args.runs} tunes per model, budget {args.budget} each; {args.busy} CPU-bound process(es) beside")
        for reference in args.models:
            print(reference)
            with tempfile.TemporaryDirectory() as temporary:
                work = Path(args.keep) / reference.replace(":", "_") if args.keep else Path(temporary)
                folders = tune_times(reference, args.runs, args.budget, work)
                if len(folders) > 1:
                    cross_measure(reference, folders, args.seconds)
    finally:
        for hog in hogs:
            hog.kill()


if __name__ == "__main__":
    main()
