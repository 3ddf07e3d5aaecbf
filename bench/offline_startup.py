"""Offline (saved, ALL level) vs online optimization on zoo models: start-up and latency, one run each.

    python bench/offline_startup.py [zoo:NAME ...] [--level all] [--time 4] [--startup-rounds 15]

For each model: `ortforge.optimize` writes the stamped model after checking its outputs against the
original (rtol/atol 1e-5), then the saved model as the guarded loader runs it and the original with
online optimization are measured interleaved. Prints the ratios with their spread over rounds.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import ortforge
from ortforge.measure.bench import BenchOptions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", default=["zoo:magika", "zoo:ppocr-det", "zoo:silero-vad"])
    parser.add_argument("--level", default="all")
    parser.add_argument("--time", type=float, default=4.0)
    parser.add_argument("--startup-rounds", type=int, default=15)
    args = parser.parse_args()
    options = BenchOptions(max_seconds=args.time, profile=False, startup_rounds=args.startup_rounds)
    with tempfile.TemporaryDirectory() as folder:
        for reference in args.models:
            out = Path(folder) / (reference.replace(":", "_") + ".onnx")
            report = ortforge.optimize(reference, out, level=args.level, measure=options)
            online, offline = report.measurement.variants
            start, low, high = report.startup_ratio.median, report.startup_ratio.low, report.startup_ratio.high
            lat, lat_low, lat_high = report.latency_ratio.median, report.latency_ratio.low, report.latency_ratio.high
            worst = max(report.verification.outputs, key=lambda o: o.max_rel)
            print(
                f"{reference}: start-up {offline.startup.p50:.1f} ms offline vs {online.startup.p50:.1f} ms online = "
                f"{start:.2f}x ({low:.2f}-{high:.2f}); latency {lat:.2f}x ({lat_low:.2f}-{lat_high:.2f}); "
                f"outputs {'within' if report.verification.passed else 'OUTSIDE'} rtol/atol 1e-5 "
                f"(max abs {worst.max_abs:.2g}, max rel {worst.max_rel:.2g}); {report.verification.samples} realistic samples"
            )


if __name__ == "__main__":
    main()
