"""Attention blocks and LayerNorm/RMSNorm counted one way, for `inspect`'s family and transformer detection.

Both used to count on their own (any Softmax vs a Softmax between activation MatMuls; fused norms or
spelled-out ones) and could disagree on one model. Counts span the main graph and every subgraph.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import onnx

from ortforge.core.graph import GraphIndex

ATTENTION_OPS = frozenset({
    "Attention", "MultiHeadAttention", "GroupQueryAttention", "PackedAttention", "PackedMultiHeadAttention",
    "DecoderMaskedMultiHeadAttention", "DecoderMaskedSelfAttention", "SparseAttention", "QAttention",
    "LongformerAttention", "PagedAttention", "DecoderAttention", "QOrderedAttention",
})
LAYER_NORM_OPS = frozenset({"LayerNormalization", "SkipLayerNormalization", "EmbedLayerNormalization"})
RMS_NORM_OPS = frozenset({"SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization", "RMSNormalization"})
NORM_OPS = LAYER_NORM_OPS | RMS_NORM_OPS
# Between the scores MatMul and the Softmax (scaling, masks, casts), and after it (casts, dropout).
SCORE_PATH_OPS = frozenset({"Div", "Mul", "Add", "Sub", "Where", "Cast", "Reshape", "Clip", "Identity"})
PROBS_PATH_OPS = frozenset({"Cast", "Dropout", "Identity", "Reshape", "Where"})
MATMUL_LIKE = frozenset({"MatMul", "FusedMatMul", "Einsum"})
PATTERN_DEPTH = 4


@dataclass(frozen=True)
class AttentionCount:
    """Fused attention ops by type, and Softmax nodes between two activation MatMuls."""

    fused: Counter
    patterns: int

    @property
    def blocks(self) -> int:
        return sum(self.fused.values()) + self.patterns


@dataclass(frozen=True)
class NormCount:
    """Normalizations: fused ops, and the ones spelled out in primitive ops (opset < 17 exports)."""

    fused_layer: int = 0
    fused_rms: int = 0
    decomposed_layer: int = 0  # x - ReduceMean(x)
    decomposed_rms: int = 0  # ReduceMean(x^2) without a mean subtraction

    @property
    def fused(self) -> int:
        return self.fused_layer + self.fused_rms

    @property
    def layer(self) -> int:
        return self.fused_layer + self.decomposed_layer

    @property
    def rms(self) -> int:
        return self.fused_rms + self.decomposed_rms


def count_attention(index: GraphIndex) -> AttentionCount:
    """Fused attention ops, and attention written out: Softmax fed (through scaling and masking) by a
    MatMul of two activations and feeding a MatMul. A classifier's Softmax is neither."""
    fused = Counter(node.op_type for node in index.nodes if node.op_type in ATTENTION_OPS)
    patterns = sum(1 for node in index.nodes if node.op_type == "Softmax" and is_attention_softmax(index, node))
    return AttentionCount(fused, patterns)


def is_attention_softmax(index: GraphIndex, softmax: onnx.NodeProto) -> bool:
    return bool(softmax.input and softmax.output) and _scores_matmul(index, softmax.input[0], PATTERN_DEPTH) and _probs_matmul(
        index, softmax.output[0], PATTERN_DEPTH
    )


def _scores_matmul(index: GraphIndex, name: str, depth: int) -> bool:
    node = index.producer.get(name)
    if node is None or depth == 0:
        return False
    if node.op_type in MATMUL_LIKE:
        # Q x K^T multiplies two activations; a classifier head multiplies by a weight.
        operands = [n for n in node.input if n]
        return len(operands) >= 2 and not any(index.is_constant(n) for n in operands)
    if node.op_type in SCORE_PATH_OPS:
        return any(_scores_matmul(index, n, depth - 1) for n in node.input if n and not index.is_constant(n))
    return False


def _probs_matmul(index: GraphIndex, name: str, depth: int) -> bool:
    if depth == 0:
        return False
    for node in index.consumers.get(name, []):
        if node.op_type in MATMUL_LIKE:
            return True
        if node.op_type in PROBS_PATH_OPS and node.output and _probs_matmul(index, node.output[0], depth - 1):
            return True
    return False


def count_norms(index: GraphIndex) -> NormCount:
    ops = Counter(node.op_type for node in index.nodes)
    return NormCount(
        fused_layer=sum(ops[op] for op in LAYER_NORM_OPS),
        fused_rms=sum(ops[op] for op in RMS_NORM_OPS),
        decomposed_layer=sum(1 for node in index.nodes if _is_mean_subtraction(index, node)),
        decomposed_rms=sum(1 for node in index.nodes if _is_mean_square(index, node)),
    )


def _is_mean_subtraction(index: GraphIndex, node: onnx.NodeProto) -> bool:
    """x - ReduceMean(x): the centring step of a LayerNorm."""
    if node.op_type != "Sub" or len(node.input) != 2:
        return False
    mean = index.producer.get(node.input[1])
    return mean is not None and mean.op_type == "ReduceMean" and bool(mean.input) and mean.input[0] == node.input[0]


def _is_mean_square(index: GraphIndex, node: onnx.NodeProto) -> bool:
    """ReduceMean(x^2) where x is not itself x - mean(x) (that would be a LayerNorm's variance)."""
    square = index.parent(node, 0) if node.op_type == "ReduceMean" else None
    if square is None or square.op_type not in ("Pow", "Mul"):
        return False
    if square.op_type == "Mul" and (len(square.input) < 2 or square.input[0] != square.input[1]):
        return False
    centred = index.parent(square, 0)
    return centred is None or centred.op_type != "Sub"
