"""int8 accuracy recovery on zoo models: each recovery step's effect on accuracy, then speed and roofline share.

    python bench/int8_recovery.py [zoo:ppocr-det zoo:magika ...] [--time 8] [--calib 16] [--samples 16] [--exclusion]
    python bench/int8_recovery.py /tmp/minilm/minilm_torchscript.onnx --data /tmp/minilm/sentences --tolerance cosine=0.985

Realistic inputs (zoo models) or --data, split: the first --calib samples calibrate, the next --samples judge (never
used for calibration). The exact rewrites first (where they apply); then per static recipe (heavy ops, every op), on the
model as given and on the rewritten one, in order: ORT's recipe as it is, mse and percentile (99.999, 99.99) calibration, activation
equalization, + bias correction; and (--exclusion) the exclusion search as tune runs it, on the fastest of the missed
recipes within reach of the most accurate (searched on the calibration samples, judged on the held-out ones). Dynamic recipes (for transformers also with SmoothQuant at alpha 0.5
and 0.7) and, for transformers, fusion -> dynamic int8 are judged too. Every candidate within tolerance is then timed against fp32 with ORT defaults in one interleaved run
with an A/A pair, and each gets its roofline share (achieved GFLOP/s over this machine's ORT GEMM peaks).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ortforge.accuracy.judge import Judge  # noqa: E402
from ortforge.accuracy.tolerance import default_tolerances, parse_tolerances  # noqa: E402
from ortforge.analysis.macs import count_macs  # noqa: E402
from ortforge.commands.tune import prepare_tune  # noqa: E402
from ortforge.core.session import SessionConfig, run_outputs  # noqa: E402
from ortforge.measure.bench import BenchOptions, Variant, bench  # noqa: E402
from ortforge.measure.compare import score  # noqa: E402
from ortforge.measure.roofline import machine_peaks, roofline  # noqa: E402
from ortforge.searches.exclusion import RANKING_SAMPLES, SEARCH_MARGIN, search_exclusions  # noqa: E402
from ortforge.searches.trial import Candidate, Trial  # noqa: E402
from ortforge.transforms.exact_rewrites import applicable_rewrites  # noqa: E402
from ortforge.transforms.quantize import QuantizeOptions  # noqa: E402
from ortforge.tuning.candidates import with_attention  # noqa: E402
from ortforge.tuning.runner import LocalRunner  # noqa: E402
from ortforge.tuning.search import RESCUE_SLACK, fastest_first, near_most_accurate  # noqa: E402

HEAVY = ("Conv", "MatMul", "Gemm")


def metrics(trial: Trial) -> str:
    shown = ", ".join(f"{k} {v:.4f}" for k, v in trial.metrics.items() if k in ("cosine", "pooled_cosine", "top1", "agreement"))
    return f"{shown or trial.error}  {'within tolerance' if trial.passed else 'outside: ' + trial.why_not[:60]}"


def static_steps(base: QuantizeOptions) -> list[tuple[str, QuantizeOptions]]:
    return [("ORT's recipe", base), ("+ mse calibration", replace(base, calibration_method="mse")),
            ("+ percentile calibration", replace(base, calibration_method="percentile")),
            ("+ percentile 99.99 calibration", replace(base, calibration_method="percentile", percentile=99.99)),
            ("+ activation equalization", replace(base, equalize=True)),
            ("+ equalization + bias correction", replace(base, equalize=True, bias_correction=True))]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", default=["zoo:ppocr-det", "zoo:magika"])
    parser.add_argument("--data", help="samples for a model that is not a zoo model (first --calib calibrate, the rest judge)")
    parser.add_argument("--calib", type=int, default=16)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--time", type=float, default=8.0, help="seconds of timed runs per variant")
    parser.add_argument("--tolerance", action="append", default=[], help="METRIC=VALUE (default: ortforge's gate by output form)")
    parser.add_argument("--exclusion", action="store_true", help="also run the exclusion search on the best static recipe")
    args = parser.parse_args()
    peaks = machine_peaks()
    print(f"this machine's ORT GEMM peaks: fp32 {peaks.fp32_gflops:.0f} GFLOP/s, int8 {peaks.int8_gops:.0f} GOP/s")
    for reference in args.models:
        job = prepare_tune(reference, data=args.data, samples=args.samples, calib_samples=args.calib)
        reference_outputs = run_outputs(job.model, job.evaluation)
        tolerances = parse_tolerances(args.tolerance) if args.tolerance else default_tolerances(reference_outputs)
        judge = Judge(reference_outputs, tolerances, feeds=job.evaluation)
        runner = LocalRunner(job.model, job.calibration, job.evaluation, judge, Path("/tmp/ortforge-int8-recovery"))
        print(f"\n{reference} ({job.family}; gate {', '.join(t.describe() for t in tolerances)}; {len(job.calibration)} calibration, "
              f"{len(job.evaluation)} held-out samples)")  # fmt: skip
        built: list[Trial] = []
        fold = Candidate("fp32 + exact rewrites", "rewrite", (("rewrites", tuple(applicable_rewrites(job.model.proto))),))
        folded = runner.build(fold)
        print(f"  {fold.label:<52} {metrics(folded) if folded.model is not None else folded.error}")
        for stage in [None] + ([fold] if folded.model is not None else []):
            for base in (QuantizeOptions(mode="static", per_channel=True, op_types=HEAVY), QuantizeOptions(mode="static", per_channel=True)):
                print(f"  {(stage.label + ' -> ') if stage else ''}{base.describe()}:")
                for step, recipe in static_steps(base):
                    trial = runner.build(Candidate.of_recipe(recipe, base=stage))
                    built.append(trial)
                    print(f"    {step:<34} {metrics(trial)}")
        for recipe in (QuantizeOptions(mode="dynamic", per_channel=True, op_types=("MatMul",)),
                       QuantizeOptions(mode="dynamic", weight_type="u8", per_channel=True, op_types=("MatMul",))):  # fmt: skip
            for step in (recipe, replace(recipe, smooth=0.5), replace(recipe, smooth=0.7)) if job.transformer else (recipe,):
                trial = runner.build(Candidate.of_recipe(step))
                built.append(trial)
                print(f"  {step.describe():<52} {metrics(trial)}")
        if job.transformer:
            fusion = Candidate("fp32 + transformer fusion", "fusion", (("model_type", "auto"),))
            for recipe in (QuantizeOptions(mode="dynamic", per_channel=True, op_types=("MatMul",)),
                           QuantizeOptions(mode="dynamic", weight_type="u8", per_channel=True, op_types=("MatMul",))):  # fmt: skip
                trial = runner.build(Candidate.of_recipe(with_attention(recipe), base=fusion))
                built.append(trial)
                print(f"  {trial.label:<38} {metrics(trial)}")
        statics = [t for t in built if t.model is not None and t.candidate.settings.get("mode") == "static" and not t.passed]
        if args.exclusion and statics and not any(t.passed and t.candidate.settings.get("mode") == "static" for t in built):
            # As tune does: the fastest of the recipes within reach of the most accurate one.
            near = near_most_accurate(statics)
            chosen = fastest_first(runner, near, lambda *a: None)[0]
            print(f"  rescuing {chosen.label} (the fastest of {len(near)} missed recipe(s) within {RESCUE_SLACK} cosine of the most accurate)")
            source = runner.build(chosen.candidate.base).model if chosen.candidate.base else job.model
            search_judge = judge.on(run_outputs(source, job.calibration), job.calibration, margin=SEARCH_MARGIN)
            ranking = replace(job.calibration, samples=job.calibration.samples[:RANKING_SAMPLES])
            found, report = search_exclusions(source, chosen, job.calibration, job.calibration, search_judge, ranking_feeds=ranking)
            print(f"  exclusion search: {'; '.join(report.notes)} ({report.attempts} attempts)")
            if report.met:
                confirmed = runner.build(Candidate.of_recipe(found.candidate.recipe, base=chosen.candidate.base))
                print(f"    {len(report.excluded)} node(s) kept float, judged on the held-out samples: {metrics(confirmed)}")
                built.append(confirmed)
        timed = [t for t in built if t.passed and t.model is not None]
        if not timed:
            print("  nothing within tolerance to time")
            continue
        sample = job.evaluation.samples[0]
        macs = count_macs(job.model, {k: np.shape(v) for k, v in sample.items()}, feeds=sample).total_macs
        variants = [Variant("fp32 | ORT defaults", job.model, SessionConfig(), job.evaluation)]
        variants += [Variant(t.label, t.model, SessionConfig(), job.evaluation) for t in timed]
        run = bench(variants, BenchOptions(max_seconds=args.time, profile=False))
        print(f"  timed in one interleaved run (noise floor ±{run.noise_floor:.1%}):")
        for result in run.variants:
            line = roofline(macs, result.latency.p50, peaks)
            share = f"{line.fp32_share:.0%} of fp32 peak, {line.int8_share:.0%} of int8 peak" if line else "roofline: MACs not counted"
            print(f"    {result.label:<60} p50 {result.latency.p50:8.2f} ms  {score(result, run.variants[0]).text():<22} {share}")


if __name__ == "__main__":
    main()
