"""int8 and weight-only recipes: which ones suit a model on this CPU, and building one judged against fp32.

`quantize --mode auto` and `tune` both draw their int8 candidates from `auto_recipes`; a recipe is
built with ORT's quantizers (`transforms/`) and judged on samples it was not calibrated on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from ortforge.accuracy.hooks import HookError
from ortforge.accuracy.judge import Judge
from ortforge.core.errors import UserError
from ortforge.core.machine import cpu_info
from ortforge.core.model import Model, model_size
from ortforge.core.progress import Progress
from ortforge.core.session import run_outputs
from ortforge.data import FeedSet
from ortforge.searches.trial import Candidate, Recipe, Trial
from ortforge.transforms import TransformResult
from ortforge.transforms.quantize import QuantizeOptions, quantize
from ortforge.transforms.weight_only import WeightOnlyOptions, quantize_weight_only

VNNI_FEATURES = {"avx512_vnni", "avx_vnni", "amx_int8", "dotprod", "i8mm"}
HEAVY_OPS = ("Conv", "MatMul", "Gemm")


def apply_recipe(model: Model, recipe: Recipe, calibration: FeedSet, progress: Progress | None = None) -> TransformResult:
    """Quantize with one recipe (static recipes calibrate on `calibration`, and GPTQ fits weights to it)."""
    if isinstance(recipe, WeightOnlyOptions):
        return quantize_weight_only(model, recipe, calibration.samples)  # read by GPTQ only
    return quantize(model, recipe, calibration.samples if recipe.mode == "static" or recipe.smooth else None, progress)


def build_recipe(model: Model, recipe: Recipe, calibration: FeedSet, evaluation: FeedSet, judge: Judge,
                 progress: Progress | None = None) -> Trial:  # fmt: skip
    """Quantize with one recipe and judge it on `evaluation` against the fp32 reference; failures become rejections."""
    trial = Trial(Candidate.of_recipe(recipe))
    try:
        result = apply_recipe(model, recipe, calibration, progress)
        candidate = result.as_model(model)
        trial.model, trial.notes, trial.size_bytes = candidate, result.notes, model_size(candidate)
        if not result.changed:
            trial.error = "nothing was quantized"
            return trial
        trial.verdict = judge(run_outputs(candidate, evaluation))
    except HookError:
        raise
    except UserError as exc:
        trial.error = str(exc)
    return trial


def auto_recipes(family: str, features: Sequence[str] | None = None) -> list[Recipe]:
    """Recipes worth measuring for a model family on this CPU (VNNI or not)."""
    features = set(cpu_info().features if features is None else features)
    vnni = bool(features & VNNI_FEATURES)
    recipes = [
        QuantizeOptions(mode="dynamic", weight_type="s8", per_channel=True, op_types=("MatMul",)),
        QuantizeOptions(mode="dynamic", weight_type="u8", per_channel=True, op_types=("MatMul",)),
        QuantizeOptions(mode="static", per_channel=True, op_types=HEAVY_OPS),
        QuantizeOptions(mode="static", activation_type="s8", per_channel=True, op_types=HEAVY_OPS),
        QuantizeOptions(mode="static", per_channel=True, op_types=("Conv",)),
        QuantizeOptions(mode="static", per_channel=True),
    ]
    if family == "rnn":
        recipes.insert(0, QuantizeOptions(mode="dynamic", weight_type="s8", op_types=("LSTM", "GRU", "MatMul")))
    if family in ("transformer", "mlp", "decoder"):
        recipes = [r for r in recipes if r.mode == "dynamic"] + [QuantizeOptions(mode="static", per_channel=True, op_types=("MatMul", "Gemm"))]
        # Level 4 (int8 compute) is what makes MatMulNBits fast on CPUs; unset, 8-bit ran ~7x slower than fp32.
        recipes += [WeightOnlyOptions(bits=8, accuracy_level=4), WeightOnlyOptions(bits=4, accuracy_level=4)]
    if family == "decoder":  # int4 is what decoders are quantized for: larger blocks, k-quants, GPTQ, the embedding table too
        recipes += [WeightOnlyOptions(bits=4, block_size=128, accuracy_level=4), WeightOnlyOptions(bits=4, accuracy_level=4, algorithm="k_quant"),
                    # GPTQ fits the weights to the calibration text: stdlib-llama-2 at blocks of 128, 94.14% -> 95.26% agreement
                    # (`python bench/decoder.py --zoo-name stdlib-llama-2 --budget 10m --samples 16`: tune's built trials)
                    WeightOnlyOptions(bits=4, block_size=128, accuracy_level=4, algorithm="gptq"),
                    WeightOnlyOptions(bits=4, accuracy_level=4, algorithm="gptq"),
                    WeightOnlyOptions(bits=4, accuracy_level=4, op_types=("MatMul", "Gemm", "Gather"))]  # fmt: skip
    if not vnni:  # without VNNI, s8 x u8 products can saturate; ORT recommends 7-bit weights
        recipes = [replace(r, reduce_range=True) if isinstance(r, QuantizeOptions) and r.weight_type == "s8" else r for r in recipes]
    return recipes
