"""GPTQ against round-to-nearest on correlated activations: ORT's own GPTQ, ortforge's fit, and the fit once packed.

    python bench/gptq_fit.py [--rows 2048] [--inputs 256] [--outputs 64] [--block 32] [--seed 1]

Activations X with correlated channels (one mixing matrix), weights W; each method's relative output error
||X (W - Q)|| / ||X W|| on held-out rows drawn like the calibration ones. "packed" is what ortforge writes: the fit
packed into MatMulNBits by ORT's block quantizer (then read back by running the node on an identity matrix).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ortforge.core.model import from_proto  # noqa: E402
from ortforge.transforms.weight_only import WeightOnlyOptions, quantize_weight_only  # noqa: E402
from ortforge.transforms.weight_only.gptq import gptq_fit  # noqa: E402


def activations(rows: int, features: int, seed: int) -> np.ndarray:
    mixing = np.random.default_rng(features).standard_normal((features, features)) * 0.3 + np.eye(features)
    return (np.random.default_rng(seed).standard_normal((rows, features)) @ mixing).astype(np.float32)


def packed_weights(weights: np.ndarray, block: int, algorithm: str, calibration: np.ndarray, symmetric: bool) -> np.ndarray:
    """The weights ortforge writes (MatMulNBits), read back by multiplying an identity matrix."""
    k, n = weights.shape
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"], name="fc")], "g",
                              [helper.make_tensor_value_info("x", 1, [None, k])], [helper.make_tensor_value_info("y", 1, None)],
                              [numpy_helper.from_array(weights, "W")])  # fmt: skip
    model = from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10))
    result = quantize_weight_only(model, WeightOnlyOptions(block_size=block, algorithm=algorithm, accuracy_level=1, symmetric=symmetric),
                                  [{"x": calibration}] if algorithm == "gptq" else ())  # fmt: skip
    session = ort.InferenceSession(result.proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": np.eye(k, dtype=np.float32)})[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--inputs", type=int, default=256)
    parser.add_argument("--outputs", type=int, default=64)
    parser.add_argument("--block", type=int, default=32)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--symmetric", action="store_true", help="symmetric blocks (zero point fixed) instead of min/max")
    args = parser.parse_args()
    calibration, held_out = activations(args.rows, args.inputs, args.seed), activations(args.rows, args.inputs, args.seed + 1)
    weights = (np.random.default_rng(0).standard_normal((args.inputs, args.outputs)) / np.sqrt(args.inputs)).astype(np.float32)
    hessian = 2 * calibration.T.astype(np.float64) @ calibration / len(calibration)

    def error(quantized: np.ndarray) -> float:
        return float(np.linalg.norm(held_out @ (weights - quantized)) / np.linalg.norm(held_out @ weights))

    rows = {"round to nearest (ORT's packer)": packed_weights(weights, args.block, "rtn", calibration, args.symmetric),
            "ortforge GPTQ, the fit": gptq_fit(weights, hessian, 4, args.block, args.symmetric),
            "ortforge GPTQ, packed": packed_weights(weights, args.block, "gptq", calibration, args.symmetric)}  # fmt: skip
    try:
        from onnxruntime.quantization.neural_compressor.weight_only import gptq as ort_gptq

        rows["ORT's GPTQ (neural-compressor port)"] = ort_gptq(weights.copy(), hessian.copy(), num_bits=4, group_size=args.block,
                                                               scheme="sym" if args.symmetric else "asym", blocksize=128, percdamp=0.01)  # fmt: skip
    except ImportError as exc:
        print(f"ORT's GPTQ not importable here: {exc}")
    print(f"int4 {'symmetric ' if args.symmetric else ''}blocks of {args.block}, X {args.rows} x {args.inputs} (correlated channels), W {args.inputs} x {args.outputs}")
    for label, quantized in rows.items():
        print(f"  {label:40s} relative output error on held-out rows {error(quantized):.4f}")


if __name__ == "__main__":
    main()
