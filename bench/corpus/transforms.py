"""The transforms the corpus runs, by name, each with the tolerance its written models are held to.

- `fp16`: ortforge's fp16 converter, `Fp16Options()` (keep_io_types): rtol 1e-2, atol 1e-3 against the
  fp32 ORT output. fp16 has an 11-bit mantissa (relative step ~1e-3); a few roundings in a chain stay
  well inside 1e-2, while a wrong fallback decision (overflow to inf, a lost small value, an int or
  bool output that flips) does not.
- `fp16-cuda`: the same gate with the plan made for CUDA (most ops fp16), judged by simulating the plan,
  since this machine has no GPU to show real fp16 numerics.
- `fp16-occ`: onnxconverter-common's `convert_float_to_float16(model, keep_io_types=True)`, the same
  tolerance; for comparison only. Its exceptions are 'loud failures'.
- `optimize`: `optimize_offline` at level all, loaded back at the level its stamp asks for: 1e-5 / 1e-5
  (ORT's rewrites reorder float arithmetic, nothing more).
- `quantize`: dynamic int8 (`QuantizeOptions(mode="dynamic")`): the written model must load and run
  and give outputs of the same structure, shapes and dtypes. Values are not compared: int8 changes
  them by design, and the node tests' inputs are not data a quantizer's accuracy could be judged on
  (`ortforge quantize` verifies accuracy against the user's tolerance on the user's data).

Optional imports happen inside functions: fp16.py may not exist yet, onnxconverter-common is a
benchmark-only dependency.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import onnx

from ortforge.core.model import Model, load_model

from .classify import Tolerance, Transform, Written

FP16_TOLERANCE = Tolerance(rtol=1e-2, atol=1e-3)
OPTIMIZE_TOLERANCE = Tolerance(rtol=1e-5, atol=1e-5)
QUANTIZE_TOLERANCE = Tolerance(rtol=0.0, atol=0.0, values=False)
COMPARISON = "fp16-occ"


def _ortforge_fp16(provider: str = "CPUExecutionProvider") -> Transform:
    """As `ortforge fp16 --ep PROVIDER` runs it: ranges measured on the inputs, outputs within the tolerance or refused.

    For a GPU EP this machine lacks, the written model cannot show fp16 numerics (the CPU EP computes in fp32 behind
    Casts), so what is judged is its simulation: the same plan with every fp16 tensor rounded through float16."""
    from ortforge.accuracy.tolerance import close
    from ortforge.data import FeedSet
    from ortforge.searches.mixed_precision import convert_within, judge_for
    from ortforge.transforms.fp16 import Fp16Options, simulate_fp16

    simulated = provider != "CPUExecutionProvider" and judge_for(provider) is None

    def apply(model: Model, feeds: list[dict]) -> Written:
        data = FeedSet(feeds, "case inputs", generated=False)
        outcome = convert_within(model, data, Fp16Options(provider=provider), [close(FP16_TOLERANCE.rtol, FP16_TOLERANCE.atol)], subject=model.name)
        judged = simulate_fp16(model, outcome.plan).proto if simulated else outcome.result.proto
        return Written(judged, outcome.result.changed)

    if provider == "CPUExecutionProvider":
        return Transform("fp16", "ortforge fp16 as the command runs it (ranges measured on the case's inputs, outputs gate the write)",
                         load_model, apply, FP16_TOLERANCE, float_only=True, uses_inputs=True)  # fmt: skip
    label = f"ortforge fp16 --ep {provider}" + (", judged by simulating its plan (that EP is not here)" if simulated else "")
    return Transform("fp16-cuda", label, load_model, apply, FP16_TOLERANCE, float_only=True, uses_inputs=True)


def _converter_common_fp16() -> Transform:
    from onnxconverter_common import float16

    def apply(proto: onnx.ModelProto) -> Written:
        before = proto.SerializeToString()
        converted = float16.convert_float_to_float16(proto, keep_io_types=True)
        return Written(converted, converted.SerializeToString() != before)

    label = f"onnxconverter-common {_version('onnxconverter-common')} convert_float_to_float16(keep_io_types=True)"
    return Transform(COMPARISON, label, _onnx_load, apply, FP16_TOLERANCE, float_only=True, comparison=True)


def _onnx_load(path: Path) -> onnx.ModelProto:
    return onnx.load(str(path))


def _optimize() -> Transform:
    from ortforge.transforms.graph_opt import GraphOptOptions, optimize_offline

    def apply(model: Model) -> Written:
        result = optimize_offline(model, GraphOptOptions(level="all"))
        return Written(result.proto, result.changed, result.details["load_level"])

    return Transform("optimize", "ortforge optimize_offline, GraphOptOptions(level='all')", load_model, apply, OPTIMIZE_TOLERANCE)


def _quantize() -> Transform:
    from ortforge.transforms.quantize import QuantizeOptions, quantize

    def apply(model: Model) -> Written:
        result = quantize(model, QuantizeOptions(mode="dynamic"))
        return Written(result.proto, result.changed)

    return Transform("quantize", "ortforge quantize, QuantizeOptions(mode='dynamic')", load_model, apply, QUANTIZE_TOLERANCE)


BUILDERS: dict[str, Callable[[], Transform]] = {
    "fp16": _ortforge_fp16,
    "fp16-cuda": lambda: _ortforge_fp16("CUDAExecutionProvider"),
    COMPARISON: _converter_common_fp16,
    "optimize": _optimize,
    "quantize": _quantize,
}
# --transform NAME -> the transforms run for it (fp16 is shown beside onnxconverter-common's figures).
GROUPS = {"fp16": ("fp16", COMPARISON), "fp16-cuda": ("fp16-cuda",), "optimize": ("optimize",), "quantize": ("quantize",)}


def build(name: str) -> Transform:
    return BUILDERS[name]()


def unavailable(name: str) -> str:
    """'' when `name` can run here, else a one-line reason (a module not written or not installed yet)."""
    if name == "fp16" and importlib.util.find_spec("ortforge.transforms.fp16") is None:
        return "src/ortforge/transforms/fp16.py does not exist yet"
    if name == COMPARISON and importlib.util.find_spec("onnxconverter_common") is None:
        return "onnxconverter-common is not installed (pip install onnxconverter-common==1.16.0)"
    try:
        build(name)
    except ImportError as exc:
        return f"cannot import it: {exc}"
    return ""


def _version(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "?"
