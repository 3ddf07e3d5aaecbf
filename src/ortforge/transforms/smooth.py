"""SmoothQuant: move activation outliers into MatMul (and fused Attention) weights before int8, so that per-tensor
activation quantization (static ranges, or dynamic ones computed per run) loses less of the channels that are not
outliers.

Transformer activations carry a few hidden channels hundreds of times larger than the rest (Xiao et al., "SmoothQuant",
2023); weights are smooth. For an activation A read by MatMuls with constant weights W [K, N], channel k is divided by
s_k = max|A_k|^alpha / max|W_k,:|^(1 - alpha) and row k of every such W multiplied by it: A W = (A / s)(s W). The
division is one Mul node inserted before those MatMuls (A's other readers, such as a residual Add, keep the original):
it costs an elementwise pass over A, small beside the MatMuls. Implemented on the graph here: the SmoothQuant package
targets PyTorch models, and ORT's quantizer has no such pass for ONNX.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ortforge.analysis.channel_stats import channel_stats
from ortforge.core.graph import GraphIndex
from ortforge.core.model import Model, fresh_name
from ortforge.core.progress import Progress, silent
from ortforge.data import FeedSet
from ortforge.transforms import TransformResult, drop_unused_initializers

SCALE_LIMITS = (1e-4, 1e4)


# Nodes computing input 0 @ input 1 with a [K, N] weight: fused Attention projects its input to Q, K and V that way.
WEIGHTED_PRODUCTS = {("", "MatMul"), ("com.microsoft", "Attention")}


def smooth_sites(proto: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    """Activations and the MatMuls (or fused Attentions) reading them as input A with a 2-D float weight initializer B."""
    initializers = {t.name: t for t in proto.graph.initializer}
    sites: dict[str, list[onnx.NodeProto]] = {}
    for node in proto.graph.node:
        if (node.domain or "", node.op_type) not in WEIGHTED_PRODUCTS or len(node.input) < 2 or node.input[1] not in initializers:
            continue
        if node.input[0] in initializers:
            continue
        weight = initializers[node.input[1]]
        if len(weight.dims) == 2 and weight.data_type == onnx.TensorProto.FLOAT:
            sites.setdefault(node.input[0], []).append(node)
    return sites


def smooth(model: Model, calibration: FeedSet, alpha: float = 0.5, progress: Progress | None = None) -> TransformResult:
    """The model with each MatMul input's channels divided by SmoothQuant's scales (alpha: the share of the outliers
    moved into the weights) and the weights' rows multiplied by them; the float model computes the same."""
    shown = progress or silent
    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    sites = smooth_sites(proto)
    if not sites:
        return TransformResult(proto, changed=False, notes=["no MatMul with a constant 2-D weight: nothing to smooth"])
    initializers = {t.name: t for t in proto.graph.initializer}
    weights = {name: numpy_helper.to_array(initializers[name]) for nodes in sites.values() for name in (n.input[1] for n in nodes)}
    widths = {tensor: weights[nodes[0].input[1]].shape[0] for tensor, nodes in sites.items()}
    shown(f"largest |x| per hidden channel of {len(sites)} MatMul input(s)", 0.0)
    activation = channel_stats(model, widths, calibration, "absmax", last_axis=True)
    used = {t.name for t in proto.graph.initializer} | {name for n in proto.graph.node for name in (*n.input, *n.output)}
    index = GraphIndex(proto)
    spreads = []
    for tensor, nodes in sites.items():
        a_max = activation[tensor]
        w_max = np.max([np.abs(weights[n.input[1]]).max(axis=1) for n in nodes], axis=0)
        live = (a_max > 0) & (w_max > 0)
        if not live.any():
            continue
        scale = np.where(live, np.clip(a_max ** alpha / np.where(live, w_max, 1.0) ** (1 - alpha), *SCALE_LIMITS), 1.0).astype(np.float32)
        spreads.append(float(a_max[live].max() / np.median(a_max[live])))
        inverse = fresh_name(f"{tensor}_smooth_inverse", used)
        smoothed = fresh_name(f"{tensor}_smoothed", used)
        proto.graph.initializer.append(numpy_helper.from_array((1.0 / scale).astype(np.float32), inverse))
        mul = helper.make_node("Mul", [tensor, inverse], [smoothed], name=fresh_name(f"{tensor}_smooth", used))
        _insert_after(proto, index, tensor, mul)
        for node in nodes:
            name = fresh_name(f"{node.input[1]}_smoothed", used)
            proto.graph.initializer.append(numpy_helper.from_array((weights[node.input[1]] * scale[:, None]).astype(np.float32), name))
            node.input[0], node.input[1] = smoothed, name
    drop_unused_initializers(proto)
    note = (f"{len(spreads)} MatMul input(s) smoothed (alpha {alpha:g}): their largest channel was up to {max(spreads):.0f}x their median one "
            f"(median {np.median(spreads):.0f}x)") if spreads else "no MatMul input had a channel to smooth"  # fmt: skip
    return TransformResult(proto, changed=bool(spreads), changes=[f"{len(spreads)} MatMul input(s) smoothed"] if spreads else [], notes=[note],
                           details={"smoothed": len(spreads), "alpha": alpha})  # fmt: skip


def _insert_after(proto: onnx.ModelProto, index: GraphIndex, tensor: str, node: onnx.NodeProto) -> None:
    """Insert `node` right after `tensor`'s producer (first when it is a graph input), keeping the order topological."""
    producer = index.producer.get(tensor)
    position = 0 if producer is None else next(i for i, n in enumerate(proto.graph.node) if n is producer or n.output == producer.output) + 1
    proto.graph.node.insert(position, node)
