"""Does simulated fp16 (rounding inside an fp32 graph, on the CPU) predict real fp16 on a GPU?

    python bench/fp16_gpu_agreement.py [zoo:NAME | MODEL.onnx ...] [--data DIR] [--ep cuda]

Per model: the fp16 plan for the EP (every node its kernels allow), its error against fp32 simulated on
the CPU and run for real on the EP, and the two side by side (worst |error| / (atol + rtol |fp32|) and
cosine). Needs onnxruntime-gpu and the card; prints the card with the figures. Without the EP it says
so and exits 2: simulation is then the only judge ortforge has.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

import ortforge
from ortforge.accuracy.judge import Judge
from ortforge.accuracy.metrics import Outputs
from ortforge.commands.common import feeds_for
from ortforge.core.machine import machine_info
from ortforge.core.runtime import available_providers
from ortforge.core.session import provider_name, run_outputs
from ortforge.searches.mixed_precision import (
    fp16_outputs,
    simulated_outputs,
)
from ortforge.transforms.fp16 import Fp16Options, measure_activation_ranges, plan_fp16

RTOL, ATOL = 1e-2, 1e-3


def worst_ratio(reference: Outputs, candidate: Outputs) -> float:
    worst = 0.0
    for expected, actual in zip(reference, candidate):
        for name, value in expected.items():
            if isinstance(value, np.ndarray) and value.dtype.kind == "f":
                error = np.abs(np.asarray(actual[name], np.float64) - value)
                worst = max(worst, float(np.nanmax(error / (ATOL + RTOL * np.abs(value)), initial=0.0)))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", default=["zoo:magika", "zoo:ppocr-det", "zoo:ppocr-cls", "zoo:silero-vad"])
    parser.add_argument("--data")
    parser.add_argument("--ep", default="cuda")
    args = parser.parse_args()
    provider = provider_name(args.ep)
    if provider not in available_providers():
        print(f"{provider} is not available in this onnxruntime: nothing to compare the simulation with (install onnxruntime-gpu on a GPU machine)")
        sys.exit(2)
    cards = ", ".join(gpu.name for gpu in machine_info().gpus) or "unknown GPU"
    print(f"card: {cards}; {provider}; tolerance rtol {RTOL:g} atol {ATOL:g}")
    for reference in args.models:
        model = ortforge.open_model(reference)
        feeds = feeds_for(model, reference, args.data, samples=4)
        plan = plan_fp16(model, Fp16Options(provider=provider, activation_ranges=measure_activation_ranges(model, feeds)))
        fp32 = run_outputs(model, feeds)
        simulated, real = simulated_outputs(model, plan, feeds), fp16_outputs(model, plan, feeds, provider)
        print(f"{reference}: {len(plan.fp16_nodes())} fp16 nodes")
        for label, outputs in (("simulated on the CPU", simulated), (f"real on {provider}", real)):
            accuracy = Judge(fp32, [])(outputs).measured
            print(f"  {label:28s} worst error {worst_ratio(fp32, outputs):8.3f}x tolerance, cosine {accuracy['cosine']:.6f}")
        print(f"  simulated vs real            worst difference {worst_ratio(real, simulated):8.3f}x tolerance")


if __name__ == "__main__":
    main()
