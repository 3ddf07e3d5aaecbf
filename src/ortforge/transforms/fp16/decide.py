"""One node's decision: float16, or float32 with the reason (control flow, blocks, types, kernels, ranges)."""

from __future__ import annotations

from dataclasses import replace

import onnx
from onnx import numpy_helper

from ortforge.core.errors import first_line
from ortforge.core.graph import subgraphs
from ortforge.transforms.fp16.constants import _Constants, _finite_peak
from ortforge.transforms.fp16.kernels import _kernel_problem
from ortforge.transforms.fp16.options import (
    ACTIVATION_RANGE,
    BLOCKED_NODE,
    BLOCKED_OP,
    CONSTANT_RANGE,
    CONTROL_FLOW,
    FIXED_TYPE,
    FLOAT,
    FLOAT16,
    FLOAT16_TYPE,
    FLOAT_TYPE,
    FUNCTION,
    INFERENCE,
    KEPT,
    NO_FLOAT16_TYPE,
    NO_KERNEL,
    NO_SCHEMA,
    NOT_TENSOR,
    TYPE_ATTRIBUTES,
    UNKNOWN_TYPE,
    Fp16Options,
    NodeDecision,
)
from ortforge.transforms.fp16.types import _TYPE_STRINGS, _Context, _infer_outputs, _Signature


def _decide(
    node: onnx.NodeProto,
    name: str,
    path: str,
    types: dict[str, int],
    constants: _Constants,
    context: _Context,
    options: Fp16Options,
    kernel_source: str,
) -> NodeDecision | None:
    """The node's decision, or None when it has no float32 tensor it could convert (left untouched)."""
    if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
        return None  # a constant follows its consumers when the plan is applied
    ins = [types.get(value) if value else None for value in node.input]
    outs = [types.get(value) if value else None for value in node.output]
    signature = context.signature(node)
    if not _has_float(node, signature, ins, outs):
        return None
    base = NodeDecision(name, node.op_type, path, fp16=False)
    early = _early_reason(node, name, signature, context, options)
    if early:
        return replace(base, kind=early[0], reason=early[1])
    assert signature is not None
    params = _convertible_params(signature, node, ins, outs)
    problem = _type_problem(node, signature, ins, outs, params)
    if problem:
        return replace(base, kind=problem[0], reason=problem[1])
    new_ins = [FLOAT16 if _param_of(signature.input_type(i), signature) in params and t == FLOAT else t for i, t in enumerate(ins)]
    in_slots = tuple(i for i, (old, new) in enumerate(zip(ins, new_ins)) if old != new)
    try:
        new_outs = _infer_outputs(node, signature, new_ins, context)
    except Exception as exc:  # onnx inference rejects float16 inputs for this node
        return replace(base, kind=INFERENCE, reason=f"type inference rejects float16 inputs: {first_line(exc, 120)}")
    out_slots = tuple(i for i, (old, new) in enumerate(zip(outs, new_outs)) if old == FLOAT and new == FLOAT16)
    if kernel_source == "registry":
        assert options.provider is not None
        why = _kernel_problem(node, signature, _binding(signature, new_ins, [FLOAT16 if i in out_slots else t for i, t in enumerate(outs)]), options.provider)
        if why:
            return replace(base, kind=NO_KERNEL, reason=why)
    ranged = _range_reason(node, in_slots, out_slots, constants, options)
    if ranged:
        return replace(base, kind=ranged[0], reason=ranged[1])
    return NodeDecision(name, node.op_type, path, True, inputs=in_slots, outputs=out_slots, note=_fixed_note(node, signature, outs, out_slots))


def _has_float(node: onnx.NodeProto, signature: _Signature | None, ins: list, outs: list) -> bool:
    """Whether the node has a float32 (or untyped float-capable) tensor on a slot whose type can vary."""
    if signature is None:
        return FLOAT in ins or FLOAT in outs
    for values, elems, formal_of in ((node.input, ins, signature.input_type), (node.output, outs, signature.output_type)):
        for slot, (value, elem) in enumerate(zip(values, elems)):
            allowed = signature.allowed.get(formal_of(slot) or "")
            if value and allowed is not None and (elem == FLOAT or (elem is None and FLOAT_TYPE in allowed)):
                return True
    return False


def _early_reason(node: onnx.NodeProto, name: str, signature: _Signature | None, context: _Context, options: Fp16Options) -> tuple[str, str] | None:
    """Reasons that need no type analysis: control flow, functions, the user's blocks, no schema."""
    if any(True for _ in subgraphs(node)):
        return CONTROL_FLOW, "holds subgraphs: its inputs and outputs keep their types, its bodies are converted inside"
    if (node.domain, node.op_type) in context.functions:
        return FUNCTION, "calls a model-local function: the function body is not converted"
    if node.op_type in options.block_ops:
        return BLOCKED_OP, f"op type {node.op_type} blocked by the user"
    if name in options.block_nodes:
        return BLOCKED_NODE, "node blocked by the user"
    if name in options.keep_fp32_nodes:
        return KEPT, "kept float32 by the caller"
    if signature is None:
        return NO_SCHEMA, f"no schema for {node.domain or 'ai.onnx'}:{node.op_type} in onnx or ORT: its type rules are unknown"
    return None


def _param_of(formal: str | None, signature: _Signature) -> str | None:
    return formal if formal in signature.allowed else None


def _convertible_params(signature: _Signature, node: onnx.NodeProto, ins: list, outs: list) -> set[str]:
    """Type parameters that can switch from float32 to float16: bound to float32 by an input, float16 allowed.

    Output-only parameters (Cast's T2, LayerNormalization's U) are left to type inference: an attribute
    fixes them.
    """
    seen: dict[str, set[int | None]] = {}
    with_input: set[str] = set()
    for slot, elem in enumerate(ins):
        param = _param_of(signature.input_type(slot), signature)
        if param and node.input[slot]:
            seen.setdefault(param, set()).add(elem)
            with_input.add(param)
    for slot, elem in enumerate(outs):
        param = _param_of(signature.output_type(slot), signature)
        if param and node.output[slot] and elem is not None:
            seen.setdefault(param, set()).add(elem)
    return {p for p in with_input if seen[p] == {FLOAT} and FLOAT16_TYPE in signature.allowed[p]}


def _type_problem(node: onnx.NodeProto, signature: _Signature, ins: list, outs: list, params: set[str]) -> tuple[str, str] | None:
    """Why no slot can switch to float16 (unknown types, sequences, fixed types), or None."""
    for values, elems, formal_of in ((node.input, ins, signature.input_type), (node.output, outs, signature.output_type)):
        for slot, (value, elem) in enumerate(zip(values, elems)):
            allowed = signature.allowed.get(formal_of(slot) or "", frozenset())
            if value and elem is None and any(not t.startswith("tensor(") and "float" in t for t in allowed):
                return NOT_TENSOR, f"'{value}' is a sequence/optional/map: those keep their types"
            if value and elem is None and FLOAT_TYPE in allowed:
                return UNKNOWN_TYPE, f"the type of '{value}' could not be inferred"
    if params:
        return None
    float_outs = [value for value, elem in zip(node.output, outs) if elem == FLOAT]
    if float_outs and FLOAT not in ins:
        return FIXED_TYPE, f"output '{float_outs[0]}' has its type fixed by {_type_attribute(node, signature)}"
    blocked = next((value for value, elem in zip(node.input, ins) if elem == FLOAT), float_outs[0] if float_outs else "?")
    return NO_FLOAT16_TYPE, f"its schema allows no float16 for '{blocked}'"


def _type_attribute(node: onnx.NodeProto, signature: _Signature | None = None) -> str:
    """Which attribute fixes an output type, for the reason: one set on the node, else one its schema defaults."""
    present = [a.name for a in node.attribute if a.name in TYPE_ATTRIBUTES]
    if present:
        return f"attribute '{present[0]}'"
    defaults = [name for name in getattr(signature and signature.schema, "attributes", {}) if name in TYPE_ATTRIBUTES]
    return f"attribute '{defaults[0]}' (default)" if defaults else "its schema"


def _binding(signature: _Signature, ins: list, outs: list) -> dict[str, str]:
    """Type parameter -> type string, as a kernel's type constraints name them."""
    binding: dict[str, str] = {}
    for slots, formal_of in ((ins, signature.input_type), (outs, signature.output_type)):
        for slot, elem in enumerate(slots):
            param = _param_of(formal_of(slot), signature)
            if param and elem:
                binding.setdefault(param, _TYPE_STRINGS[elem])
    return binding


def _range_reason(node: onnx.NodeProto, in_slots: tuple[int, ...], out_slots: tuple[int, ...], constants: _Constants, options: Fp16Options) -> tuple[str, str] | None:
    """A constant or measured activation this node would hold in float16 beyond `max_finite`, or None."""
    for slot in in_slots:
        value = node.input[slot]
        if value in constants and constants.peak(value) > options.max_finite:
            return CONSTANT_RANGE, f"constant '{value}' holds {constants.peak(value):.4g}, beyond float16's range (kept, not clamped)"
    ranges = options.activation_ranges or {}
    for value in [node.input[s] for s in in_slots] + [node.output[s] for s in out_slots]:
        if value in ranges and not ranges[value] <= options.max_finite:  # NaN counts as out of range
            return ACTIVATION_RANGE, f"activation '{value}' reaches {ranges[value]:.4g} on the measured data, beyond float16's range"
    for attribute in node.attribute:
        if attribute.HasField("t") and attribute.t.data_type == FLOAT and _finite_peak(numpy_helper.to_array(attribute.t)) > options.max_finite:
            return CONSTANT_RANGE, f"attribute '{attribute.name}' holds a value beyond float16's range"
    return None


def _fixed_note(node: onnx.NodeProto, signature: _Signature, outs: list, out_slots: tuple[int, ...]) -> str:
    kept = [node.output[i] for i, elem in enumerate(outs) if elem == FLOAT and i not in out_slots]
    return f"output(s) {', '.join(kept)} stay float32 ({_type_attribute(node, signature)})" if kept else ""
