"""The report of a weight-only run: what was quantized, what stayed float and why, and the weights' size."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import onnx
from onnx import helper

from ortforge.core.model import Model, iter_nodes, iter_tensors
from ortforge.transforms import TransformResult, op_count_changes
from ortforge.transforms.weight_only.options import OP_TYPES, WeightOnlyOptions
from ortforge.transforms.weight_only.sites import _Site

QUANTIZED_OPS = ("MatMulNBits", "GatherBlockQuantized")


@dataclass
class _Edits:
    """What the pre-passes did, for the report."""

    lifted: int = 0
    gemms: int = 0
    split: int = 0
    renamed: int = 0
    notes: list[str] = field(default_factory=list)


def _tensor_bytes(proto: onnx.ModelProto) -> int:
    """Bytes of every initializer and tensor attribute, external data included (its recorded length)."""
    total = 0
    for tensor in iter_tensors(proto):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            total += int({entry.key: entry.value for entry in tensor.external_data}.get("length", 0))
            continue
        total += len(tensor.raw_data) + sum(map(len, tensor.string_data))
        total += 8 * (len(tensor.int64_data) + len(tensor.double_data) + len(tensor.uint64_data))
        total += 4 * len(tensor.float_data) + _int32_field_bytes(tensor)
    return total


def _int32_field_bytes(tensor: onnx.TensorProto) -> int:
    """int32_data also carries float16/int8/... one value per entry: count their real width."""
    if not tensor.int32_data:
        return 0
    try:
        width = helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, TypeError):
        width = 4
    return width * len(tensor.int32_data)


def _mark_outcomes(proto: onnx.ModelProto, sites: list[_Site]) -> None:
    """A chosen site that ORT's tool left alone gets a reason too (it should not happen; the report must not lie)."""
    produced = set()
    for node in iter_nodes(proto):
        if node.op_type in QUANTIZED_OPS and node.domain == "com.microsoft":
            produced.update(node.output)
    for site in sites:
        quantized = site.output in produced or f"{site.output}_pre_reshape" in produced
        if site.reason is None and not quantized:
            site.reason = "left float by ORT's quantizer"


def _sizes(before: int, after: int) -> str:
    """Both sizes in one unit, so the shrink reads at a glance."""
    unit, scale = ("MB", 1e6) if max(before, after) >= 1e6 else ("kB", 1e3)
    return f"{before / scale:.1f} {unit} -> {after / scale:.1f} {unit}"


def _details(sites: list[_Site], options: WeightOnlyOptions, edits: _Edits, before: int, after: int, op_changes: dict) -> dict:
    quantized = Counter(site.kind for site in sites if site.reason is None)
    skipped = [{"node": site.name, "op_type": site.kind, "reason": site.reason} for site in sites if site.reason]
    return {
        "bits": options.bits,
        "block_size": options.block_size,
        "symmetric": options.symmetric,
        "accuracy_level": options.accuracy_level,
        "quantized": {op: quantized.get(op, 0) for op in options.op_types},
        "skipped": skipped,
        "skipped_by_reason": dict(Counter(entry["reason"] for entry in skipped)),
        "constants_lifted": edits.lifted,
        "gemms_rewritten": edits.gemms,
        "weights_split": edits.split,
        "nodes_named": edits.renamed,
        "weight_bytes_before": before,
        "weight_bytes_after": after,
        "op_changes": op_changes,
    }


def _unmatched_exclusions(proto: onnx.ModelProto, options: WeightOnlyOptions) -> list[str]:
    names = {node.name for node in iter_nodes(proto)}
    return [entry for entry in options.exclude if entry not in names and entry not in OP_TYPES]


def _notes(sites: list[_Site], options: WeightOnlyOptions, edits: _Edits, proto: onnx.ModelProto) -> list[str]:
    notes = list(edits.notes)
    for reason, count in Counter(site.reason for site in sites if site.reason).items():
        notes.append(f"{count} node(s) left float: {reason}")
    unmatched = _unmatched_exclusions(proto, options)
    if unmatched:
        notes.append(f"exclude entries matching no node name or op type: {', '.join(unmatched)}")
    if edits.split:
        notes.append(f"{edits.split} weight(s) used by both a Gather and a MatMul were copied so each is quantized its own way")
    if not any(site.reason is None for site in sites):
        return notes
    if options.accuracy_level == 4:
        notes.append("accuracy level 4: activations are quantized to int8 at run time on CPU (fastest, least exact)")
    elif options.bits == 8:
        # Measured: 8-bit MatMulNBits without int8 compute took ~7.5x the float time on a 1024-wide MLP (ORT 1.31 CPU).
        notes.append("8-bit without accuracy level 4 takes a slow dequantizing path on ORT's CPU EP; accuracy level 4 avoids it")
    return notes


def _changes(sites: list[_Site], options: WeightOnlyOptions, edits: _Edits, before: int, after: int) -> list[str]:
    quantized = Counter(site.kind for site in sites if site.reason is None)
    scheme = f"{options.bits}-bit, block {options.block_size}, {'symmetric' if options.symmetric else 'asymmetric'}"
    lines = []
    if edits.lifted:
        lines.append(f"moved {edits.lifted} Constant weight(s) into initializers")
    if edits.gemms:
        lines.append(f"rewrote {edits.gemms} Gemm(s) with a constant B as MatMul (+ Add)")
    matmuls = quantized.get("MatMul", 0) + quantized.get("Gemm", 0)
    if matmuls:
        lines.append(f"quantized {matmuls} MatMul/Gemm weight(s) to MatMulNBits ({scheme})")
    if quantized.get("Gather"):
        lines.append(f"quantized {quantized['Gather']} Gather table(s) to GatherBlockQuantized ({scheme})")
    if edits.renamed:
        lines.append(f"named {edits.renamed} unnamed or duplicate-named MatMul/Gemm/Gather node(s)")
    lines.append(f"weights {_sizes(before, after)}")
    return lines


def _result(model: Model, proto: onnx.ModelProto, options: WeightOnlyOptions, sites: list[_Site], edits: _Edits) -> TransformResult:
    _mark_outcomes(proto, sites)
    before, after = _tensor_bytes(model.proto), _tensor_bytes(proto)
    op_changes = op_count_changes(model.proto, proto)
    return TransformResult(
        proto=proto,
        changed=True,
        changes=_changes(sites, options, edits, before, after),
        notes=_notes(sites, options, edits, proto),
        details=_details(sites, options, edits, before, after, op_changes),
    )


def _unchanged(model: Model, options: WeightOnlyOptions, sites: list[_Site], edits: _Edits) -> TransformResult:
    """Nothing to quantize: hand back the original untouched (no lifted Constants, no rewritten Gemms)."""
    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    size = _tensor_bytes(proto)
    edits = _Edits(notes=edits.notes)
    return TransformResult(
        proto=proto,
        changed=False,
        changes=[],
        notes=["no weight could be quantized"] + _notes(sites, options, edits, proto),
        details=_details(sites, options, edits, size, size, {}),
    )
