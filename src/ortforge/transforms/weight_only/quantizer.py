"""Running ORT's `MatMulNBitsQuantizer` on exactly the chosen nodes, and undoing its side effects on the rest."""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator

import numpy as np
import onnx

from ortforge.core.errors import UserError, first_line
from ortforge.core.model import iter_nodes
from ortforge.transforms.weight_only.options import WeightOnlyOptions
from ortforge.transforms.weight_only.sites import _Site

ORT_LOGGER = "onnxruntime.quantization.matmul_nbits_quantizer"


def _run_ort_quantizer(proto: onnx.ModelProto, options: WeightOnlyOptions, chosen: list[_Site]) -> None:
    """Quantize exactly the chosen nodes with ORT's tool (in memory: it writes no files when given a proto)."""
    quantizer_module = _import_ort_quantizer()
    chosen_names = {site.name for site in chosen}
    ort_ops = {"MatMul"} | ({"Gather"} if any(site.kind == "Gather" for site in chosen) else set())
    others = [node.name for node in iter_nodes(proto) if node.op_type in ort_ops and node.name not in chosen_names]
    quantizer = quantizer_module.MatMulNBitsQuantizer(
        proto,
        bits=options.bits,
        block_size=options.block_size,
        is_symmetric=options.symmetric,
        accuracy_level=options.accuracy_level or None,  # 0: the attribute is left out and ORT chooses
        nodes_to_exclude=others,
        op_types_to_quantize=tuple(sorted(ort_ops)),
        quant_axes=(("MatMul", 0), ("Gather", -1)),  # Gather: blocks along each embedding row
        algo_config=_algorithm(quantizer_module, options, tuple(sorted(ort_ops))),
    )
    # k-quants print a progress bar; an all-zero block (an unused embedding row) divides by a zero scale in ORT's numpy code
    with _quiet(ORT_LOGGER), contextlib.redirect_stdout(io.StringIO()), np.errstate(divide="ignore", invalid="ignore"), _unread_inputs_aside(proto):
        try:
            quantizer.process()
        except Exception as exc:  # noqa: BLE001 - ORT's quantizer raises bare exceptions for graphs it cannot follow
            raise UserError(f"onnxruntime's weight-only quantizer failed ({options.describe()}): {type(exc).__name__}: {first_line(exc)}") from None


@contextlib.contextmanager
def _unread_inputs_aside(proto: onnx.ModelProto) -> Iterator[None]:
    """Graph inputs no node reads set aside while ORT's quantizer runs, then put back in their places: its RTN and
    k-quant paths sort the graph from every input's readers and fail on one without any (a decoder whose
    GroupQueryAttention counts positions itself keeps position_ids as an input nothing reads)."""
    read = {name for node in iter_nodes(proto) for name in node.input}
    inputs = list(proto.graph.input)
    if all(value.name in read for value in inputs):
        yield
        return
    del proto.graph.input[:]
    proto.graph.input.extend(value for value in inputs if value.name in read)
    try:
        yield
    finally:
        # the quantizer may have replaced the graph message; the inputs go back on the one the proto holds now
        del proto.graph.input[:]
        proto.graph.input.extend(inputs)


def _algorithm(module, options: WeightOnlyOptions, op_types: tuple[str, ...]):  # noqa: ANN001, ANN202 - ORT's config classes
    """ORT's config for the chosen algorithm (None: its default, blockwise round-to-nearest)."""
    if options.algorithm == "k_quant":
        return module.KQuantWeightOnlyQuantConfig(op_types_to_quantize=op_types)
    if options.algorithm == "hqq":
        try:
            import torch  # noqa: F401 - ORT's HQQ runs on torch
        except ImportError:
            raise UserError("weight-only algorithm hqq needs torch, which is not installed", hint="pip install torch, or use rtn or k_quant") from None
        return module.HQQWeightOnlyQuantConfig(block_size=options.block_size, bits=options.bits, op_types_to_quantize=op_types,
                                               quant_axes=(("MatMul", 0),))  # fmt: skip
    return None


def _import_ort_quantizer():
    """Import ORT's weight-only module without letting its import-time `logging.basicConfig` claim the root logger."""
    root = logging.getLogger()
    guard = None if root.handlers else logging.NullHandler()
    if guard:
        root.addHandler(guard)  # basicConfig does nothing when the root logger already has a handler
    try:
        from onnxruntime.quantization import matmul_nbits_quantizer
    finally:
        if guard:
            root.removeHandler(guard)
    return matmul_nbits_quantizer


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    """Mute a library logger for the duration (it logs per node; transforms do not print)."""
    logger = logging.getLogger(name)
    previous = logger.disabled
    logger.disabled = True
    try:
        yield
    finally:
        logger.disabled = previous


def _undo_side_effects(proto: onnx.ModelProto, original: onnx.ModelProto) -> list[str]:
    """Put back the default opset ORT's tool forces to 21 and the node domains it drops; say what stays changed."""
    notes = []
    before = {entry.domain: entry.version for entry in original.opset_import}
    for entry in proto.opset_import:
        if entry.domain in ("", "ai.onnx") and entry.domain in before and entry.version != before[entry.domain]:
            # Only com.microsoft ops read the int4 tensors; raising the default opset would change other ops' meaning.
            entry.version = before[entry.domain]
    if proto.ir_version != original.ir_version:
        notes.append(f"IR version raised from {original.ir_version} to {proto.ir_version}: int4 tensors need IR 10")
    domains = {(node.name, tuple(node.output)): node.domain for node in iter_nodes(original) if _has_subgraph(node)}
    for node in iter_nodes(proto):
        key = (node.name, tuple(node.output))
        if _has_subgraph(node) and key in domains:
            node.domain = domains[key]
    return notes


def _has_subgraph(node: onnx.NodeProto) -> bool:
    return any(attribute.HasField("g") or len(attribute.graphs) for attribute in node.attribute)
