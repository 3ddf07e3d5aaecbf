"""`ortforge quantize --mode auto` on zoo models: every recipe's size, accuracy and latency vs fp32.

    python bench/quantize_zoo.py [zoo:NAME | MODEL.onnx ...] [--time 3] [--data DIR] [--tolerance cosine=0.985]

MiniLM (exported and tokenized by bench/minilm_fusion.py --out /tmp/minilm --save-feeds /tmp/minilm/feeds):

    python bench/quantize_zoo.py /tmp/minilm/minilm_torchscript.onnx --data /tmp/minilm/feeds --tolerance cosine=0.985

Calibration uses 16 realistic samples (seed 0) and accuracy is judged on 8 others (seed 1); the
tolerance is ortforge's default (cosine >= 0.99, top-1 unchanged for classifier outputs). The last
line per model says what auto chose and checks it is neither slower than fp32 nor outside tolerance.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import ortforge
from ortforge.measure.bench import BenchOptions


def describe(trial) -> str:  # noqa: ANN001 - searches.trial.Trial
    measured = trial.metrics
    cosine = f"cos {measured['cosine']:.4f}" if "cosine" in measured else "cos -"
    top1 = f"  top1 {measured['top1']:.0%}" if "top1" in measured else ""
    speed = trial.speed.text() if trial.speed else "not timed"
    verdict = "ok" if trial.passed else f"rejected: {trial.why_not[:70]}"
    return f"  {trial.label:<58} {trial.size_bytes / 2**20:6.2f} MiB  {cosine}{top1}  {speed}  {verdict}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", default=["zoo:magika", "zoo:ppocr-det", "zoo:ppocr-cls", "zoo:silero-vad"])
    parser.add_argument("--time", type=float, default=3.0)
    parser.add_argument("--data", help="data for models that are not zoo models (used for calibration and evaluation)")
    parser.add_argument("--tolerance", action="append", default=[], help="as `ortforge quantize --tolerance` (default: ortforge's)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        for reference in args.models:
            out = Path(folder) / "auto.onnx"
            report = ortforge.quantize(reference, out, mode="auto", calib=args.data, data=args.data, tolerances=args.tolerance,
                                  measure=BenchOptions(max_seconds=args.time))  # fmt: skip
            print(f"{reference} ({', '.join(t.describe() for t in report.tolerances)}):")
            for trial in report.trials:
                print(describe(trial))
            chosen = report.chosen
            safe = chosen.passed and (chosen.candidate.kind == "fp32" or (chosen.speed and chosen.speed.ratio < 1))
            print(f"  -> {report.why} [{'never slower, within tolerance' if safe else 'CHECK FAILED'}]")


if __name__ == "__main__":
    main()
