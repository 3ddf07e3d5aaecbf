"""Bias correction: give back to each quantized Conv/Gemm the mean shift that rounding its weights put into its output.

Rounding weights moves the mean of a layer's output channel by channel; the layers after it see a biased signal, and
depthwise-separable CNNs, whose small kernels round coarsely, suffer most (Nagel et al., "Data-Free Quantization",
2019; NNCF and AIMET correct it too). The shift of output channel o is sum over inputs c and kernel taps k of
E[x_c] * (dequantized weight - float weight)[o, c, k], with E[x_c] the per-channel mean of the layer's input as the
quantized model computes it (one unoptimized tap run over the calibration samples, a few numbers per channel) and the
float weight from the float model the quantizer was given. It is the layer's own error, not what earlier layers pass
on, so every layer is corrected at once without the corrections compounding (comparing each layer's output between
the two models, which we tried first, moved a 54-layer detector's biases further off at each round). The shift is
taken out of the layer's bias (the int32 bias of a QDQ model, in its own scale); layers without a bias are counted.
Borders (where padding feeds zeros) are not modelled.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ortforge.analysis.channel_stats import channel_stats
from ortforge.core.graph import GraphIndex
from ortforge.core.model import Model, from_proto
from ortforge.core.progress import Progress, silent
from ortforge.data import FeedSet
from ortforge.transforms import TransformResult, initializer_array

CORRECTED_OPS = ("Conv", "Gemm")


@dataclass(frozen=True)
class BiasSite:
    """A quantized layer whose bias can take a correction: its input, its weights (quantized and float), its bias."""

    node: str
    op_type: str
    input: str  # the layer's (dequantized) input in the quantized model
    weight: str  # the dequantized weight's initializers: quantized values, scale, zero point
    weight_scale: str
    weight_zero_point: str
    weight_axis: int  # per-channel axis of the weight's DequantizeLinear (per-tensor: scalars)
    float_weight: str  # the float weight in the float model
    bias: str  # the initializer holding the bias (int32 for a quantized bias, else float)
    scale: str  # the bias's DequantizeLinear scale initializer ('' for a float bias)


def bias_sites(quantized: onnx.ModelProto, float_model: onnx.ModelProto) -> tuple[list[BiasSite], int]:
    """Quantized Conv/Gemm nodes whose weight comes through a DequantizeLinear of an initializer and whose float
    counterpart (same node name) reads a float initializer; and how many such layers have no bias."""
    index = GraphIndex(quantized)
    initializers = {t.name for t in quantized.graph.initializer}
    float_nodes = {node.name: node for node in float_model.graph.node}
    float_weights = {t.name for t in float_model.graph.initializer}
    sites, missing = [], 0
    for node in quantized.graph.node:
        original = float_nodes.get(node.name)
        weight = index.producer.get(node.input[1]) if len(node.input) > 1 else None
        if (node.op_type not in CORRECTED_OPS or original is None or original.op_type != node.op_type or weight is None
                or weight.op_type != "DequantizeLinear" or weight.input[0] not in initializers or original.input[1] not in float_weights):
            continue  # left float by the recipe, or not matched: nothing to correct
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Gemm" and (attributes.get("transA", 0) or attributes.get("alpha", 1.0) != 1.0):
            continue  # the shift below assumes y = x @ W (+ b)
        if len(node.input) < 3 or not node.input[2]:
            missing += 1
            continue
        bias = node.input[2]
        producer = index.producer.get(bias)
        if bias in initializers:
            bias_name, bias_scale = bias, ""
        elif producer is not None and producer.op_type == "DequantizeLinear" and producer.input[0] in initializers:
            bias_name, bias_scale = producer.input[0], producer.input[1]
        else:
            continue
        axis = next((a.i for a in weight.attribute if a.name == "axis"), 1)
        sites.append(BiasSite(node.name, node.op_type, node.input[0], weight.input[0], weight.input[1], weight.input[2] if len(weight.input) > 2 else "",
                              axis, original.input[1], bias_name, bias_scale))  # fmt: skip
    return sites, missing


def _weight_error(quantized: onnx.ModelProto, float_model: onnx.ModelProto, site: BiasSite) -> np.ndarray:
    """Dequantized minus float weight, as the layer applies it."""
    values = initializer_array(quantized, site.weight).astype(np.float64)
    scale = initializer_array(quantized, site.weight_scale).astype(np.float64)
    zero = initializer_array(quantized, site.weight_zero_point).astype(np.float64) if site.weight_zero_point else np.zeros_like(scale)
    if scale.ndim:  # per channel along the weight's axis
        shape = [1] * values.ndim
        shape[site.weight_axis] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return (values - zero) * scale - initializer_array(float_model, site.float_weight).astype(np.float64)


def _shift(site: BiasSite, node: onnx.NodeProto, error: np.ndarray, input_mean: np.ndarray) -> np.ndarray:
    """The mean output shift per output channel from the weight error and the input's per-channel mean."""
    if site.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return (error @ input_mean) if trans_b else (input_mean @ error)
    groups = next((a.i for a in node.attribute if a.name == "group"), 1)
    per_tap = error.reshape(error.shape[0], error.shape[1], -1).sum(axis=2)  # [out, in per group]
    per_group = error.shape[0] // groups
    inputs = input_mean.reshape(groups, -1)  # [group, in per group]
    return np.einsum("oi,oi->o", per_tap, inputs[np.arange(error.shape[0]) // per_group])


def _input_channels(node: onnx.NodeProto, error: np.ndarray) -> int:
    """The channel count of a layer's input: a Conv's weight is [out, in / group, k...], a Gemm's [in, out] (or [out, in])."""
    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Conv":
        return error.shape[1] * attributes.get("group", 1)
    return error.shape[1 if attributes.get("transB", 0) else 0]


def correct_biases(float_model: Model, quantized: Model, feeds: FeedSet, progress: Progress | None = None) -> TransformResult:
    """The quantized model with each Conv/Gemm bias moved by the mean shift its weight rounding causes, given the
    per-channel means of its input on `feeds` (the calibration samples). `float_model` is the model the quantizer was
    given (after its pre-processing: node names must match)."""
    shown = progress or silent
    proto = onnx.ModelProto()
    proto.CopyFrom(quantized.proto)
    sites, missing = bias_sites(proto, float_model.proto)
    notes = [f"{missing} quantized layer(s) have no bias to correct"] if missing else []
    if not sites:
        return TransformResult(proto, changed=False, notes=notes + ["no quantized Conv/Gemm with a bias: nothing to correct"])
    nodes = {node.name: node for node in proto.graph.node}
    errors = {site: _weight_error(proto, float_model.proto, site) for site in sites}
    widths = {site.input: _input_channels(nodes[site.node], errors[site]) for site in sites}
    shown(f"per-channel means of the inputs of {len(sites)} layer(s)", 0.0)
    means = channel_stats(from_proto(proto, base_dir=quantized.base_dir), widths, feeds, "mean")
    relative = []
    for site in sites:
        shift = _shift(site, nodes[site.node], errors[site], means[site.input])
        bias = initializer_array(proto, site.bias).astype(np.float64) * (initializer_array(proto, site.scale) if site.scale else 1.0)
        relative.append(float(np.abs(shift).mean() / (np.abs(bias).mean() or 1.0)))
        _move_bias(proto, site, shift)
    notes.append(f"{len(sites)} layer bias(es) corrected for weight rounding's mean shift (median {np.median(relative):.1%} of the bias's "
                 f"mean size, largest {max(relative):.1%})")  # fmt: skip
    return TransformResult(proto, changed=True, changes=[f"{len(sites)} Conv/Gemm bias(es) corrected for weight rounding's mean shift"],
                           notes=notes, details={"bias_corrected": len(sites), "median_relative_shift": float(np.median(relative))})  # fmt: skip


def _move_bias(proto: onnx.ModelProto, site: BiasSite, shift: np.ndarray) -> None:
    """Take `shift` (float, per channel) out of the site's bias, in the bias's own scale when it is quantized."""
    tensor = next(t for t in proto.graph.initializer if t.name == site.bias)
    values = numpy_helper.to_array(tensor)
    if site.scale:
        scale = initializer_array(proto, site.scale).astype(np.float64)
        step = np.round(shift.reshape(values.shape) / np.where(scale == 0, 1.0, scale)).astype(np.int64)
        info = np.iinfo(values.dtype)
        updated = np.clip(values.astype(np.int64) - step, info.min, info.max).astype(values.dtype)
    else:
        updated = (values - shift.reshape(values.shape)).astype(values.dtype)
    tensor.CopyFrom(numpy_helper.from_array(updated, tensor.name))
