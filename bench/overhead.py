"""Does `ortforge bench` report what a bare `sess.run` loop sees? Prints both p50s and their ratio.

    python bench/overhead.py [MODEL|zoo:NAME ...] [--pairs 5] [--seconds 2]

Both sides use plain ORT defaults and the same feeds; pairs alternate (bare, ortforge) so background
load hits both alike. The target is |ratio - 1| <= 5%.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import onnxruntime as ort

import ortforge
from ortforge.commands.common import feeds_for
from ortforge.measure.bench import BenchOptions


def bare_p50_ms(model_path: str, feeds: list[dict], seconds: float) -> float:
    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    for feed in feeds[:3]:
        session.run(None, feed)
    times = []
    deadline = time.perf_counter() + seconds
    index = 0
    while time.perf_counter() < deadline:
        feed = feeds[index % len(feeds)]
        start = time.perf_counter_ns()
        session.run(None, feed)
        times.append(time.perf_counter_ns() - start)
        index += 1
    return float(np.median(times)) / 1e6


def compare(reference: str, pairs: int, seconds: float) -> None:
    model = ortforge.open_model(reference)
    feeds = feeds_for(model, reference)
    options = BenchOptions(max_seconds=seconds, profile=False)
    ratios, bare_all, forge_all = [], [], []
    for _ in range(pairs):
        bare = bare_p50_ms(str(model.path), feeds.samples, seconds)
        forge = ortforge.bench([reference], options=options).variants[0].latency.p50
        bare_all.append(bare)
        forge_all.append(forge)
        ratios.append(forge / bare)
    print(
        f"{reference}: bare sess.run p50 {statistics.median(bare_all):.3f} ms, ortforge bench p50 "
        f"{statistics.median(forge_all):.3f} ms, ratio {statistics.median(ratios):.3f} "
        f"(min {min(ratios):.3f}, max {max(ratios):.3f}, {pairs} pairs; inputs: {feeds.origin})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", default=["zoo:magika", "zoo:silero-vad", "zoo:ppocr-cls"])
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    for reference in args.models:
        compare(reference, args.pairs, args.seconds)


if __name__ == "__main__":
    main()
