"""Activation equalization: scale the channels of activations that int8 quantizes per tensor, so that no channel is lost
in the rounding step of a wider one, with the inverse scale folded into neighbouring weights and constants (the float
model computes the same outputs).

Cross-layer equalization (Nagel et al., 2019) rescales the channels between two convolutions through a ReLU to balance
their weight ranges; with per-channel weights (ortforge's int8 default) the weights need no balancing, but the
activation between them is still quantized per tensor, and in depthwise-separable CNNs its channels span ranges
hundreds of times apart (PP-OCRv4's detector: SQNR 8 dB at a depthwise input, against the 30+ dB int8 usually keeps).
So this balances the activation instead, where the rescaling costs nothing:

- a Conv's output read only by Mul-by-constant nodes (PP-LCNet's learnable affine blocks, folded BatchNorm scales):
  output channel c times t_c in the Conv's weights and bias, the constant divided by t_c;
- a depthwise Conv's input written by a Mul-by-constant (and an Add of a constant after it): input channel c divided
  by s_c in those constants, the depthwise weights of channel c times s_c (each depthwise output reads one input channel,
  so per-channel weights quantize exactly as before).

Each channel is brought to the widest channel's range (at most MAX_SCALE times up), measured as the largest |x| over the
calibration samples. Activations through nonlinearities (ReLU, HardSwish) are not rescaled: only the linear neighbours
above take the scales. A transformer's MatMul inputs are SmoothQuant's case (transforms/smooth.py would hold it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from ortforge.analysis.channel_stats import channel_stats
from ortforge.core.graph import GraphIndex
from ortforge.core.model import Model, fresh_name
from ortforge.core.progress import Progress, silent
from ortforge.data import FeedSet
from ortforge.transforms import TransformResult, drop_unused_initializers, initializer_array

MAX_SCALE = 1000.0  # a channel is scaled up at most this much (dead channels stay as they are)
MIN_GAIN = 2.0  # an activation whose narrowest live channel is within this factor of its widest is left alone


@dataclass(frozen=True)
class Site:
    """An activation to equalize and how: 'producer' scales the Conv writing it, 'consumer' the depthwise Conv reading it."""

    tensor: str
    kind: str
    conv: str  # the Conv node taking the scales
    constants: tuple[str, ...]  # the Mul / Add nodes whose constant takes the inverse


def _constant_input(node: onnx.NodeProto, initializers: dict[str, onnx.TensorProto]) -> int | None:
    """Which input of a binary Mul/Add is a constant initializer (None when neither or both)."""
    found = [i for i, name in enumerate(node.input[:2]) if name in initializers]
    return found[0] if len(found) == 1 else None


def _per_channel(array: np.ndarray, channels: int) -> bool:
    """Whether a constant broadcasts along axis 1 only (a scalar, or one value per channel), so it can take per-channel scales."""
    return array.size == 1 or (array.size == channels and array.ndim >= 2 and array.shape[-array.ndim + 1] == channels)


def find_sites(proto: onnx.ModelProto) -> list[Site]:
    """Activations whose channels can be rescaled for free (see the module's description)."""
    index = GraphIndex(proto)
    initializers = {t.name: t for t in proto.graph.initializer}
    graph_outputs = {o.name for o in proto.graph.output}
    sites = []
    for conv in proto.graph.node:
        if conv.op_type != "Conv" or len(conv.input) < 2 or conv.input[1] not in initializers:
            continue
        weight = numpy_helper.to_array(initializers[conv.input[1]])
        channels = weight.shape[0]
        consumers = index.consumers.get(conv.output[0], [])
        muls = [n for n in consumers if n.op_type == "Mul" and (i := _constant_input(n, initializers)) is not None
                and _per_channel(numpy_helper.to_array(initializers[n.input[i]]), channels)]  # fmt: skip
        if consumers and len(muls) == len(consumers) and conv.output[0] not in graph_outputs:
            sites.append(Site(conv.output[0], "producer", conv.name, tuple(n.name for n in muls)))
        group = next((a.i for a in conv.attribute if a.name == "group"), 1)
        if group == 1 or weight.shape[1] != 1:
            continue  # not depthwise
        source = conv.input[0]
        chain = _affine_chain(index, initializers, source, group)
        if chain and len(index.consumers.get(source, [])) == 1 and source not in graph_outputs:
            sites.append(Site(source, "consumer", conv.name, chain))
    return sites


def _affine_chain(index: GraphIndex, initializers: dict, tensor: str, channels: int) -> tuple[str, ...]:
    """The Mul (and the Add after it) by constants that write `tensor`, each read only by the next: () when it is not so."""
    node = index.producer.get(tensor)
    chain = []
    if node is not None and node.op_type == "Add":
        i = _constant_input(node, initializers)
        if i is None or not _per_channel(numpy_helper.to_array(initializers[node.input[i]]), channels):
            return ()
        chain.append(node)
        tensor = node.input[1 - i]
        if len(index.consumers.get(tensor, [])) != 1:
            return ()
        node = index.producer.get(tensor)
    if node is None or node.op_type != "Mul":
        return ()
    i = _constant_input(node, initializers)
    if i is None or not _per_channel(numpy_helper.to_array(initializers[node.input[i]]), channels):
        return ()
    return tuple(n.name for n in [node, *chain])


def equalize(model: Model, calibration: FeedSet, progress: Progress | None = None) -> TransformResult:
    """The model with each equalizable activation's channels brought to its widest channel's range (see the module)."""
    shown = progress or silent
    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    sites = find_sites(proto)
    if not sites:
        return TransformResult(proto, changed=False, notes=["no activation here can be equalized for free (see transforms/equalize.py)"])
    nodes = {node.name: node for node in proto.graph.node}
    widths = {site.tensor: _channels(proto, nodes[site.conv], site.kind) for site in sites}
    shown(f"largest |x| per channel of {len(sites)} activation(s)", 0.0)
    ranges = channel_stats(model, widths, calibration, "absmax")
    used = {t.name for t in proto.graph.initializer} | {name for n in proto.graph.node for name in (*n.input, *n.output)}
    done, gains = 0, []
    for site in sites:
        found = ranges[site.tensor]
        live = found > 0
        if not live.any() or found[live].max() / found[live].min() < MIN_GAIN:
            continue
        scale = np.where(live, np.minimum(found.max() / np.where(live, found, 1.0), MAX_SCALE), 1.0)  # each channel up to the widest
        gains.append(float(found[live].max() / found[live].min()))
        rank = initializer_array(proto, nodes[site.conv].input[1]).ndim  # the activation's rank: N, C and the kernel's spatial axes
        if site.kind == "producer":
            _scale_conv_outputs(proto, nodes[site.conv], scale, used)
            for name in site.constants:
                _scale_constant(proto, nodes[name], 1.0 / scale, used, rank)
        else:
            for name in site.constants:
                _scale_constant(proto, nodes[name], scale, used, rank)
            _scale_depthwise_inputs(proto, nodes[site.conv], 1.0 / scale, used)
        done += 1
    if not done:
        return TransformResult(proto, changed=False, notes=[f"{len(sites)} equalizable activation(s), none with channels {MIN_GAIN:g}x apart or more"])
    drop_unused_initializers(proto)
    note = (f"{done} activation(s) equalized (of {len(sites)} found): their channels' ranges were up to {max(gains):.0f}x apart "
            f"(median {np.median(gains):.0f}x), now each within {MAX_SCALE:g}x of the widest")  # fmt: skip
    return TransformResult(proto, changed=True, changes=[f"{done} activation(s) equalized per channel"], notes=[note],
                           details={"equalized": done, "sites": len(sites), "median_spread": float(np.median(gains))})  # fmt: skip


def _channels(proto: onnx.ModelProto, conv: onnx.NodeProto, kind: str) -> int:
    weight = numpy_helper.to_array(next(t for t in proto.graph.initializer if t.name == conv.input[1]))
    return weight.shape[0] if kind == "producer" else next(a.i for a in conv.attribute if a.name == "group")


def _replace(proto: onnx.ModelProto, node: onnx.NodeProto, position: int, array: np.ndarray, used: set[str]) -> None:
    """Give `node` a fresh initializer at input `position` (the old one may be shared with other nodes)."""
    name = fresh_name(f"{node.input[position]}_equalized", used)
    proto.graph.initializer.append(numpy_helper.from_array(array, name))
    node.input[position] = name


def _scale_conv_outputs(proto: onnx.ModelProto, conv: onnx.NodeProto, scale: np.ndarray, used: set[str]) -> None:
    weight = initializer_array(proto, conv.input[1])
    _replace(proto, conv, 1, (weight * scale.reshape(-1, *[1] * (weight.ndim - 1))).astype(weight.dtype), used)
    if len(conv.input) > 2 and conv.input[2]:
        bias = initializer_array(proto, conv.input[2])
        _replace(proto, conv, 2, (bias * scale).astype(bias.dtype), used)


def _scale_depthwise_inputs(proto: onnx.ModelProto, conv: onnx.NodeProto, scale: np.ndarray, used: set[str]) -> None:
    """Depthwise weights [C * multiplier, 1, k...]: output channel o reads input channel o // multiplier."""
    weight = initializer_array(proto, conv.input[1])
    per_output = np.repeat(scale, weight.shape[0] // scale.size)
    _replace(proto, conv, 1, (weight * per_output.reshape(-1, *[1] * (weight.ndim - 1))).astype(weight.dtype), used)


def _scale_constant(proto: onnx.ModelProto, node: onnx.NodeProto, scale: np.ndarray, used: set[str], rank: int) -> None:
    """A Mul's or Add's constant times a per-channel scale; a scalar becomes one value per channel, shaped [1, C, 1...]
    to broadcast over an activation of `rank` (the Conv's)."""
    initializers = {t.name for t in proto.graph.initializer}
    position = next(i for i, name in enumerate(node.input[:2]) if name in initializers)
    constant = initializer_array(proto, node.input[position])
    if constant.size == 1:
        constant, shaped = constant.reshape([1] * rank), scale.reshape(1, -1, *[1] * (rank - 2))
    else:
        shaped = scale.reshape(constant.shape)
    _replace(proto, node, position, (constant * shaped).astype(constant.dtype), used)
