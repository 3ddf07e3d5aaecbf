"""Model family for `inspect` and for choosing recipes: decoder, cnn, rnn, transformer, mlp, quantized or other.

Decided from op kinds, attention and norm patterns (counted by `patterns`, as transformer detection
counts them) and, where MACs were counted, from which op group holds most of them. Every answer comes
with short evidence a user can check against the graph.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import onnx

from ortforge.analysis.decoder import find_decoder
from ortforge.analysis.macs import MacReport
from ortforge.analysis.patterns import ATTENTION_OPS, AttentionCount, count_attention, count_norms
from ortforge.core.graph import GraphIndex

# A family claimed from MACs needs its op group to hold at least this share of the counted MACs.
DOMINANT_SHARE = 0.5

CONV_OPS = {"Conv", "ConvTranspose", "ConvInteger", "QLinearConv", "FusedConv", "NhwcConv"}
DENSE_OPS = {
    "MatMul", "Gemm", "MatMulInteger", "QLinearMatMul", "FusedMatMul", "FusedGemm", "QGemm", "MatMulNBits",
    "DynamicQuantizeMatMul", "MatMulIntegerToFloat",
}
RECURRENT_OPS = {"LSTM", "GRU", "RNN", "DynamicQuantizeLSTM"}
QUANT_OPS = {
    "QuantizeLinear", "DequantizeLinear", "MatMulInteger", "ConvInteger", "MatMulNBits", "QGemm", "QAttention",
    "MatMulIntegerToFloat", "DynamicQuantizeLSTM", "DynamicQuantizeLinear", "DynamicQuantizeMatMul",
}
CNN_COMPANIONS = ("BatchNormalization", "Resize", "Upsample", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool")


def classify_family(proto: onnx.ModelProto, macs: MacReport) -> tuple[str, list[str]]:
    """decoder, cnn, rnn, transformer, mlp, quantized or other, with short human-readable evidence for the choice."""
    index = GraphIndex(proto)
    ops = Counter(node.op_type for node in index.nodes)
    decoder = find_decoder(proto)
    family, evidence = ("decoder", [decoder.summary(), *decoder.evidence]) if decoder else _architecture(index, macs, ops)
    quantized = Counter({op: n for op, n in ops.items() if op in QUANT_OPS or op.startswith(("QLinear", "DynamicQuantize"))})
    if quantized:
        listed = ", ".join(f"{n} {op}" for op, n in quantized.most_common(4))
        return "quantized", [f"already quantized: {listed}", f"underlying architecture looks {family}", *evidence]
    return family, evidence


def _architecture(index: GraphIndex, macs: MacReport, ops: Counter) -> tuple[str, list[str]]:
    """Recurrent ops decide first, then attention unless convolutions dominate, then Conv, then MatMul/Gemm."""
    shares = _mac_shares(macs)
    incomplete = [f"MAC shares cover counted nodes only ({len(macs.unknown)} heavy node(s) uncounted)"] if macs.unknown and shares else []
    recurrent = [node for node in index.nodes if node.op_type in RECURRENT_OPS]
    if recurrent:
        return "rnn", _rnn_evidence(recurrent, index, ops, shares) + incomplete
    attention = _attention_evidence(count_attention(index))
    conv_nodes = _node_count(ops, CONV_OPS)
    dense_nodes = _node_count(ops, DENSE_OPS)
    # Without counted MACs, node counts stand in for the shares.
    conv_dominant = _share(shares, CONV_OPS) >= DOMINANT_SHARE if shares else conv_nodes > dense_nodes
    if attention and not conv_dominant:
        return "transformer", _transformer_evidence(index, shares, attention) + incomplete
    if conv_nodes and conv_dominant:
        return "cnn", _cnn_evidence(ops, shares, attention) + incomplete
    if dense_nodes and (_share(shares, DENSE_OPS) >= DOMINANT_SHARE or not shares):
        return "mlp", [
            f"{dense_nodes} MatMul/Gemm node(s) ({_share_text(shares, DENSE_OPS)})",
            "no attention or recurrent ops" + (f"; {conv_nodes} minor Conv node(s)" if conv_nodes else ", no Conv"),
            *incomplete,
        ]
    return "other", _other_evidence(index, ops)


def _rnn_evidence(recurrent: list[onnx.NodeProto], index: GraphIndex, ops: Counter, shares: dict[str, float]) -> list[str]:
    text = ", ".join(f"{n} {op}" for op, n in Counter(node.op_type for node in recurrent).most_common())
    holders = [holder for node in recurrent if (holder := index.container(node))]
    if len(holders) == len(recurrent) and len(set(holders)) == 1:
        text += f", inside {holders[0]} subgraphs"
    elif holders:
        text += f" ({len(holders)} inside If/Loop/Scan subgraphs)"
    evidence = [text]
    if shares:
        evidence.append(f"recurrent ops hold {_share(shares, RECURRENT_OPS):.0%} of counted MACs")
    if conv_nodes := _node_count(ops, CONV_OPS):
        evidence.append(f"also {conv_nodes} Conv node(s) ({_share_text(shares, CONV_OPS)})")
    return evidence


def _attention_evidence(attention: AttentionCount) -> list[str]:
    evidence = []
    if fused := _listed(attention.fused, sorted(ATTENTION_OPS)):
        evidence.append(f"fused attention ops: {fused}")
    if attention.patterns:
        evidence.append(f"{attention.patterns} Softmax between two activation MatMuls (attention pattern)")
    return evidence


def _transformer_evidence(index: GraphIndex, shares: dict[str, float], attention: list[str]) -> list[str]:
    evidence = list(attention)
    norms = count_norms(index)
    if norms.fused:
        evidence.append(f"{norms.fused} LayerNormalization-type node(s)")
    elif norms.decomposed_layer:
        evidence.append(f"{norms.decomposed_layer} LayerNorm(s) written out as ReduceMean/Sub/...")
    if shares:
        share = _share(shares, DENSE_OPS) + _share(shares, ATTENTION_OPS)
        evidence.append(f"MatMul/Gemm/attention hold {share:.0%} of counted MACs")
    return evidence


def _cnn_evidence(ops: Counter, shares: dict[str, float], attention: list[str]) -> list[str]:
    evidence = [f"{_listed(ops, sorted(CONV_OPS))} ({_share_text(shares, CONV_OPS)})"]
    if companions := _listed(ops, CNN_COMPANIONS):
        evidence.append(f"with {companions}")
    if dense_nodes := _node_count(ops, DENSE_OPS):
        evidence.append(f"{dense_nodes} MatMul/Gemm node(s) ({_share_text(shares, DENSE_OPS)})")
    if attention:
        evidence.append("also " + "; ".join(attention) + ": a hybrid CNN-transformer, convolutions dominate")
    return evidence


def _other_evidence(index: GraphIndex, ops: Counter) -> list[str]:
    heavy = _listed(ops, sorted(CONV_OPS | DENSE_OPS))
    evidence = [f"heavy ops without a dominant kind: {heavy}" if heavy else "no Conv, MatMul/Gemm, attention or recurrent ops"]
    ml_ops = Counter(node.op_type for node in index.nodes if node.domain == "ai.onnx.ml")
    if ml_ops:
        evidence.append("ai.onnx.ml ops: " + ", ".join(f"{n} {op}" for op, n in ml_ops.most_common(3)))
    return evidence


def _mac_shares(macs: MacReport) -> dict[str, float]:
    """Bare op type -> share of counted MACs (empty when nothing was counted)."""
    if macs.total_macs <= 0:
        return {}
    shares: dict[str, float] = {}
    for key, value in macs.by_op_type.items():
        op = key.rsplit(":", 1)[-1]
        shares[op] = shares.get(op, 0.0) + value / macs.total_macs
    return shares


def _share(shares: dict[str, float], group: Iterable[str]) -> float:
    return sum(shares.get(op, 0.0) for op in group)


def _share_text(shares: dict[str, float], group: Iterable[str]) -> str:
    return f"{_share(shares, group):.0%} of counted MACs" if shares else "MACs unknown"


def _node_count(ops: Counter, group: Iterable[str]) -> int:
    return sum(ops[op] for op in group)


def _listed(ops: Counter, names: Iterable[str]) -> str:
    """'2 Conv, 1 ConvTranspose': those of `names` that occur, with their node counts."""
    return ", ".join(f"{ops[op]} {op}" for op in names if ops[op])
