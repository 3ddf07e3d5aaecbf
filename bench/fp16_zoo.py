"""`ortforge fp16 --auto` next to onnxconverter-common's auto_convert_mixed_precision, same model,
tolerance and input, one run.

    python bench/fp16_zoo.py [zoo:NAME | MODEL.onnx ...] [--data DIR] [--ep cuda] [--rtol 1e-2] [--atol 1e-3]

ortforge judges fp16 by simulation on the CPU (rounding every fp16 tensor inside an fp32 graph);
onnxconverter-common's tool runs the converted model on ORT's CPU EP, which computes most fp16 ops in
fp32 behind Casts. Evaluations = accuracy checks of a candidate (its validate_fn calls; ortforge's
simulated runs plus the one ranking run).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

import ortforge
from ortforge.commands.common import feeds_for


def converter_common(model_path: Path, feed: dict, rtol: float, atol: float) -> str:
    import onnx
    from onnxconverter_common import auto_mixed_precision

    calls = {"n": 0}

    def validate(reference, candidate) -> bool:
        calls["n"] += 1
        return all(np.allclose(r, c, rtol=rtol, atol=atol) for r, c in zip(reference, candidate))

    start = time.perf_counter()
    try:
        auto_mixed_precision.auto_convert_mixed_precision(onnx.load(str(model_path)), feed, validate_fn=validate, keep_io_types=True)
    except Exception as exc:  # the peer's failures are what this comparison records
        return f"FAILED after {calls['n']} evaluations, {time.perf_counter() - start:.1f} s: {type(exc).__name__}: {str(exc).splitlines()[0][:90] if str(exc) else ''}"
    return f"{calls['n']} evaluations, {time.perf_counter() - start:.1f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", default=["zoo:magika", "zoo:ppocr-det", "zoo:ppocr-cls", "zoo:silero-vad"])
    parser.add_argument("--data")
    parser.add_argument("--ep", default="cuda", help="whose fp16 kernels count (default cuda: the deployment fp16 is for)")
    parser.add_argument("--rtol", type=float, default=1e-2)
    parser.add_argument("--atol", type=float, default=1e-3)
    parser.add_argument("--no-peer", action="store_true", help="skip auto_convert_mixed_precision (minutes on MiniLM)")
    args = parser.parse_args()
    for reference in args.models:
        with tempfile.TemporaryDirectory() as folder:
            try:
                report = ortforge.fp16(reference, Path(folder) / "fp16.onnx", ep=args.ep, auto=True, tolerances=[f"rtol={args.rtol}", f"atol={args.atol}"], data=args.data)
                search = report.search
                share = "" if report.fp16_mac_share is None else f" ({report.fp16_mac_share:.0%} of the MACs)"
                ours = (f"{search.evaluations} evaluations, {report.wall_s:.1f} s in all, fp16/fp32 nodes "
                        f"{report.plan['fp16_nodes']}/{report.plan['fp32_nodes']}{share}, cosine ({report.judged_by}) "
                        f"{report.accuracy['cosine']:.6f}, within tolerance: {report.within_tolerance}")  # fmt: skip
                ours += "".join(f"\n      choice: {n} fp16 nodes, summed error predicted {p:.2f}x the tolerance, "
                                f"{'within' if m else 'outside'} when judged" for n, p, m in search.choices)  # fmt: skip
            except Exception as exc:  # reported, not hidden: this is a benchmark
                ours = f"FAILED: {exc}"
            model = ortforge.open_model(reference)
            feed = feeds_for(model, reference, args.data, samples=1).samples[0]
            print(f"{reference} (rtol {args.rtol:g}, atol {args.atol:g}, fp16 kernels of {args.ep}):")
            print(f"  ortforge fp16 --auto:                {ours}")
            if not args.no_peer:
                print(f"  auto_convert_mixed_precision:        {converter_common(model.path, feed, args.rtol, args.atol)}")


if __name__ == "__main__":
    main()
