"""Weight-only quantization: MatMul/Gemm weights to MatMulNBits (4 or 8 bit), embeddings to GatherBlockQuantized.

ORT's `MatMulNBitsQuantizer` does the block quantization (its C++ kernels, its node layout) and already walks
If/Loop/Scan subgraphs. What it misses is handled here before it runs: weights held in Constant nodes are made
initializers, Gemm with a constant B becomes MatMul (+ Add), a weight shared by a Gather and a MatMul gets a copy
per role, and exclusions are resolved by node name or op type. After it runs, its side effects are undone where
they are wrong: it forces the default opset to 21 when Gather is quantized (breaking e.g. ReduceMean with an
`axes` attribute) and drops the domain of nodes holding subgraphs.

Graph edits are made on the protos directly rather than through onnx-ir: ORT's quantizer consumes and mutates a
ModelProto, and the edits here are local node swaps, so one representation avoids two whole-model conversions.

The modules, each reading only the ones listed before it:
- `options`: `WeightOnlyOptions` and the bit widths, block sizes, accuracy levels and op types ORT accepts
- `graph`: walking graphs with scope, name look-ups, node attributes
- `sites`: the candidate nodes and, for each, why it stays float (excluded, not a constant float matrix, ...)
- `rewrites`: the pre-passes: unique node names, Constants lifted, Gemm as MatMul, shared weights split
- `gptq`: GPTQ's weight fit to calibration activations (algorithm gptq), before the quantizer packs the weights
- `quantizer`: ORT's `MatMulNBitsQuantizer` on the chosen nodes, and its side effects undone
- `report`: what the pre-passes did (`_Edits`) and the `TransformResult` with changes, notes and details
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx

from ortforge.core.model import Model
from ortforge.data import Feed
from ortforge.transforms import TransformResult
from ortforge.transforms.weight_only.gptq import fit_gptq
from ortforge.transforms.weight_only.options import (
    ACCURACY_LEVELS,
    BITS,
    BLOCK_SIZES,
    FLOAT_TYPES,
    OP_TYPES,
    WeightOnlyOptions,
)
from ortforge.transforms.weight_only.quantizer import ORT_LOGGER, _run_ort_quantizer, _undo_side_effects
from ortforge.transforms.weight_only.report import QUANTIZED_OPS, _Edits, _result, _unchanged
from ortforge.transforms.weight_only.rewrites import _lift_constants, _name_nodes, _rewrite_gemms, _split_shared_weights
from ortforge.transforms.weight_only.sites import _classify, _load_weights, _weight_names

__all__ = [
    "ACCURACY_LEVELS",
    "BITS",
    "BLOCK_SIZES",
    "FLOAT_TYPES",
    "OP_TYPES",
    "ORT_LOGGER",
    "QUANTIZED_OPS",
    "WeightOnlyOptions",
    "quantize_weight_only",
]


def quantize_weight_only(model: Model, options: WeightOnlyOptions, calibration: Sequence[Feed] = ()) -> TransformResult:
    """Block-quantize constant MatMul/Gemm (and opt-in Gather) weights; report what was done and skipped.

    `calibration`: the feeds GPTQ fits the weights to (algorithm gptq only). Weights still in external data keep their
    locations: wrap the result with the source model's folder.
    """
    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)  # ORT's quantizer edits in place
    edits = _Edits()
    aliases = _name_nodes(proto)
    edits.renamed = len(aliases)
    edits.lifted = _lift_constants(proto, _weight_names(proto, options, aliases))
    sites = _classify(proto, options, aliases)
    _load_weights(sites, model.base_dir)
    edits.gemms = _rewrite_gemms(proto, sites)
    edits.split = _split_shared_weights(proto, sites)
    chosen = [site for site in sites if site.reason is None]
    if not chosen:
        return _unchanged(model, options, sites, edits)
    if options.algorithm == "gptq":
        edits.notes.extend(fit_gptq(model, proto, chosen, options, calibration))
    _run_ort_quantizer(proto, options, chosen)
    edits.notes.extend(_undo_side_effects(proto, model.proto))
    return _result(model, proto, options, sites, edits)
