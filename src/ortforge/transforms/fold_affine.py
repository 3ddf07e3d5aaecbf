"""Affine folding: a Mul or Add by a constant next to a Conv, folded into the Conv's weights and bias.

A per-channel affine step beside a convolution is free to fold: y = k * Conv(x) + d is a Conv with weights k*W and bias
k*b + d, and Conv(k * x) is a Conv with weights W scaled along their input channels. ORT's own ConvMulFusion and
ConvAddFusion do the first only for constants shaped like the Conv's output channels ([C,1,1]), so exporters that
write scalar-like constants (Paddle's learnable affine blocks in PP-LCNet are shape-[1] Mul/Add pairs, two per block)
keep two elementwise passes over every activation: PP-OCRv4's detector runs 76 of them, about an eighth of its time.

Folded here:
- after a Conv: its output read only by a Mul or Add whose constant has one value per output channel (or one value);
- before a Conv: a Mul or Add whose output only Convs read, its constant one value per input channel (or one value).
  A Mul folds into the weights along input channels; an Add folds into the bias only where the Conv pads nothing
  (a padded border would see the added constant as zeros, so the fold would not be exact there);
- a Mul by k followed by an Add of d before such padded Convs: x*k + d is (x + d/k)*k, so the Mul folds into the
  weights and the Add keeps d/k (k must have no zero).

The folds are exact in real arithmetic; float rounding differs in the last bits. Int8 recipes after this quantize fewer,
different tensors: the one behind a folded affine step is no longer written, which is why tune builds static int8 both
on the model as given and on the folded one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from ortforge.core.graph import GraphIndex, attributes
from ortforge.core.model import Model, fresh_name, normalise
from ortforge.transforms import TransformResult, drop_unread_constants, drop_unused_initializers

AFFINE_OPS = ("Mul", "Add")


@dataclass(frozen=True)
class Fold:
    """One affine node folded into Convs: 'after' (the Conv's output is its input), 'before' (it writes the Convs' input)
    or 'through' (a Mul whose output an Add of a constant carries to the Convs: the Add stays, its constant divided)."""

    node: str
    convs: tuple[str, ...]
    side: str
    through: str = ""  # the Add a 'through' fold passes


def _array(index: GraphIndex, name: str) -> np.ndarray | None:
    """A floating-point constant's value (None for activations, external data and integer constants)."""
    tensor = index.constant(name)
    if tensor is None or tensor.data_location == onnx.TensorProto.EXTERNAL:
        return None
    array = numpy_helper.to_array(tensor)
    return array if np.issubdtype(array.dtype, np.floating) else None


def _affine_parts(index: GraphIndex, node: onnx.NodeProto) -> tuple[str, np.ndarray] | None:
    """(activation input, constant) of a binary Mul/Add with exactly one floating-point constant input."""
    if node.op_type not in AFFINE_OPS or node.domain not in ("", "ai.onnx") or len(node.input) != 2:
        return None
    constants = [(i, _array(index, name)) for i, name in enumerate(node.input)]
    found = [(i, value) for i, value in constants if value is not None]
    if len(found) != 1 or index.is_constant(node.input[1 - found[0][0]]):
        return None
    i, value = found[0]
    return node.input[1 - i], value


def per_channel(value: np.ndarray, channels: int, rank: int) -> np.ndarray | None:
    """The constant as one value per channel, when it broadcasts over a rank-`rank` NCHW tensor along axis 1 only."""
    if value.ndim > rank:
        return None
    if value.size == 1:
        return np.full(channels, value.reshape(-1)[0], np.float64)
    shape = (1,) * (rank - value.ndim) + value.shape
    if shape[1] != channels or any(d != 1 for i, d in enumerate(shape) if i != 1):
        return None
    return value.reshape(-1).astype(np.float64)


def _conv_weights(index: GraphIndex, conv: onnx.NodeProto) -> np.ndarray | None:
    if conv.op_type != "Conv" or conv.domain not in ("", "ai.onnx") or len(conv.input) < 2:
        return None
    weights = _array(index, conv.input[1])
    has_bias = len(conv.input) > 2 and conv.input[2]
    if weights is None or (has_bias and _array(index, conv.input[2]) is None):
        return None
    return weights


def _pads_nothing(conv: onnx.NodeProto) -> bool:
    found = attributes(conv)
    auto_pad = found.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    return auto_pad == "VALID" or (auto_pad == "NOTSET" and not any(found.get("pads", [])))


def _input_channel_of(weights: np.ndarray, group: int) -> np.ndarray:
    """For weights [O, C/group, ...]: the input channel each (o, j) pair reads, shape [O, C/group]."""
    out_channels, per_group = weights.shape[:2]
    return (np.arange(out_channels)[:, None] // (out_channels // group)) * per_group + np.arange(per_group)[None, :]


def find_folds(proto: onnx.ModelProto) -> list[Fold]:
    """Foldable affine nodes of the main graph, no node in two folds (one pass: folding may expose more)."""
    index = GraphIndex(proto)
    outputs = {o.name for o in proto.graph.output}
    used: set[str] = set()
    folds = []
    for node in proto.graph.node:
        parts = _affine_parts(index, node)
        if parts is None or node.output[0] in outputs or node.name in used:
            continue
        source, value = parts
        conv = index.producer.get(source)
        weights = _conv_weights(index, conv) if conv is not None else None
        readers = index.consumers.get(source, [])
        if (weights is not None and conv.name not in used and readers == [node] and source not in outputs
                and per_channel(value, weights.shape[0], weights.ndim) is not None):  # fmt: skip
            folds.append(Fold(node.name, (conv.name,), "after"))
            used.update((node.name, conv.name))
            continue
        convs = index.consumers.get(node.output[0], [])
        if convs and all(_folds_before(index, c, node.output[0], value, node.op_type) and c.name not in used for c in convs):
            folds.append(Fold(node.name, tuple(c.name for c in convs), "before"))
            used.update([node.name, *(c.name for c in convs)])
        elif (through := _add_after_mul(index, node, value, outputs)) is not None and through.name not in used:
            convs = index.consumers[through.output[0]]
            if all(c.name not in used for c in convs):
                folds.append(Fold(node.name, tuple(c.name for c in convs), "through", through.name))
                used.update([node.name, through.name, *(c.name for c in convs)])
    return folds


def _add_after_mul(index: GraphIndex, node: onnx.NodeProto, value: np.ndarray, outputs: set[str]) -> onnx.NodeProto | None:
    """The Add of a constant that alone reads this Mul-by-constant, when only Convs that can take the Mul read the Add."""
    readers = index.consumers.get(node.output[0], [])
    if node.op_type != "Mul" or len(readers) != 1 or node.output[0] in outputs or np.any(value == 0):
        return None
    add = readers[0]
    parts = _affine_parts(index, add)
    if add.op_type != "Add" or parts is None or add.output[0] in outputs:
        return None
    convs = index.consumers.get(add.output[0], [])
    fits = convs and all(_folds_before(index, c, add.output[0], value, "Mul") for c in convs)
    same_channels = {_conv_input_channels(index, c) for c in convs} if fits else set()
    if not fits or len(same_channels) != 1 or per_channel(parts[1], same_channels.pop(), 4) is None:
        return None
    return add


def _conv_input_channels(index: GraphIndex, conv: onnx.NodeProto) -> int:
    return index.dims(conv.input[1])[1] * attributes(conv).get("group", 1)  # type: ignore[index]


def _folds_before(index: GraphIndex, conv: onnx.NodeProto, value_name: str, value: np.ndarray, op_type: str) -> bool:
    """Whether a `op_type` by constant `value` writing `value_name`, the Conv's data input, folds into the Conv."""
    weights = _conv_weights(index, conv)
    if weights is None or list(conv.input).count(value_name) != 1 or conv.input[0] != value_name:
        return False
    if per_channel(value, _conv_input_channels(index, conv), weights.ndim) is None:
        return False
    return op_type == "Mul" or _pads_nothing(conv)


def fold_affine(model: Model) -> TransformResult:
    """Fold constant Mul/Add nodes into neighbouring Convs until none is left to fold (see the module's description)."""
    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    normalise(proto)  # folds name their nodes: unnamed ones get names first
    after = before = 0
    while folds := find_folds(proto):
        index = GraphIndex(proto)
        taken = {n for node in proto.graph.node for n in (*node.input, *node.output)} | {t.name for t in proto.graph.initializer}
        nodes = {node.name: node for node in proto.graph.node}
        for fold in folds:
            node = nodes[fold.node]
            _, value = _affine_parts(index, node)  # type: ignore[misc]
            if fold.side == "through":  # first: it reads the Convs' weights as the index knows them
                _divide_through(proto, index, nodes[fold.through], node, value, nodes[fold.convs[0]], taken)
            for conv_name in fold.convs:
                _fold_into(proto, index, nodes[conv_name], node, value, fold.side, taken)
            if fold.side == "after":
                nodes[fold.convs[0]].output[0] = node.output[0]
            proto.graph.node.remove(node)
        after += sum(f.side == "after" for f in folds)
        before += sum(f.side != "after" for f in folds)
    if not after + before:
        return TransformResult(proto, False, notes=["no constant Mul/Add next to a Conv to fold"])
    drop_unread_constants(proto)
    drop_unused_initializers(proto)
    changes = [f"folded {after} constant Mul/Add after a Conv and {before} before one into the Conv's weights and bias"]
    return TransformResult(proto, True, changes, details={"folded_after": after, "folded_before": before})


def _fold_into(proto: onnx.ModelProto, index: GraphIndex, conv: onnx.NodeProto, node: onnx.NodeProto, value: np.ndarray,
               side: str, taken: set[str]) -> None:  # fmt: skip
    """Rewrite one Conv's weights and bias (as new initializers: the old ones may be shared) to take `node` in."""
    weights = _array(index, conv.input[1])
    assert weights is not None
    dtype, out_channels = weights.dtype, weights.shape[0]
    weights = weights.astype(np.float64)
    has_bias = len(conv.input) > 2 and conv.input[2]
    bias = _array(index, conv.input[2]).astype(np.float64) if has_bias else np.zeros(out_channels)  # type: ignore[union-attr]
    spatial = (1,) * (weights.ndim - 2)
    if side == "after":
        k = per_channel(value, out_channels, weights.ndim)
        assert k is not None
        if node.op_type == "Mul":
            weights, bias = weights * k.reshape(-1, 1, *spatial), bias * k
        else:
            bias = bias + k
    else:
        group = attributes(conv).get("group", 1)
        k = per_channel(value, weights.shape[1] * group, weights.ndim)
        assert k is not None
        along_inputs = k[_input_channel_of(weights, group)].reshape(*weights.shape[:2], *spatial)
        if node.op_type == "Mul":
            weights = weights * along_inputs
        else:
            bias = bias + (weights * along_inputs).reshape(out_channels, -1).sum(axis=1)
        if side == "before":
            conv.input[0] = _activation_input(index, node)
    _set_input(proto, conv, 1, weights.astype(dtype), fresh_name(f"{conv.name}_folded_W", taken))
    if node.op_type == "Add" or side == "after" or has_bias:
        _set_input(proto, conv, 2, bias.astype(dtype), fresh_name(f"{conv.name}_folded_B", taken))


def _activation_input(index: GraphIndex, node: onnx.NodeProto) -> str:
    return next(name for name in node.input if not index.is_constant(name))


def _divide_through(proto: onnx.ModelProto, index: GraphIndex, add: onnx.NodeProto, mul: onnx.NodeProto, k: np.ndarray,
                    conv: onnx.NodeProto, taken: set[str]) -> None:  # fmt: skip
    """x*k + d becomes x + d/k (the Convs after took k): the Add reads the Mul's input, its constant divided by k."""
    _, d = _affine_parts(index, add)  # type: ignore[misc]
    channels = _conv_input_channels(index, conv)
    rank = len(index.dims(conv.input[1]) or ()) or 4
    k_channels, d_channels = per_channel(k, channels, rank), per_channel(d, channels, rank)
    assert k_channels is not None and d_channels is not None
    shifted = (d_channels / k_channels).astype(d.dtype).reshape(1, channels, *(1,) * (rank - 2))
    name = fresh_name(f"{add.name}_divided", taken)
    proto.graph.initializer.append(numpy_helper.from_array(shifted, name))
    constant_at = next(i for i, n in enumerate(add.input) if index.is_constant(n))
    add.input[constant_at] = name
    add.input[1 - constant_at] = _activation_input(index, mul)


def _set_input(proto: onnx.ModelProto, node: onnx.NodeProto, position: int, value: np.ndarray, name: str) -> None:
    proto.graph.initializer.append(numpy_helper.from_array(value, name))
    while len(node.input) <= position:
        node.input.append("")
    node.input[position] = name
