"""`inspect`'s family evidence and transformer detection count attention and LayerNorms alike."""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from helpers import make_model, tensor, weight
from ortforge.analysis.model_report import inspect_model
from ortforge.analysis.patterns import count_attention, count_norms
from ortforge.analysis.transformer import detect_transformer
from ortforge.core.graph import GraphIndex
from ortforge.core.model import from_proto
from ortforge.data import ShapeOptions

WIDTH, VOCAB, CLASSES = 16, 50, 3


def _layer_norm(nodes: list[onnx.NodeProto], x: str, prefix: str, decomposed: bool) -> str:
    out = f"{prefix}_out"
    if not decomposed:
        nodes.append(helper.make_node("LayerNormalization", [x, "gamma", "beta"], [out], axis=-1))
        return out
    nodes += [
        helper.make_node("ReduceMean", [x], [f"{prefix}_mean"], axes=[-1]),
        helper.make_node("Sub", [x, f"{prefix}_mean"], [f"{prefix}_centred"]),
        helper.make_node("Mul", [f"{prefix}_centred", f"{prefix}_centred"], [f"{prefix}_squared"]),
        helper.make_node("ReduceMean", [f"{prefix}_squared"], [f"{prefix}_var"], axes=[-1]),
        helper.make_node("Add", [f"{prefix}_var", "eps"], [f"{prefix}_var_eps"]),
        helper.make_node("Sqrt", [f"{prefix}_var_eps"], [f"{prefix}_std"]),
        helper.make_node("Div", [f"{prefix}_centred", f"{prefix}_std"], [f"{prefix}_normed"]),
        helper.make_node("Mul", [f"{prefix}_normed", "gamma"], [f"{prefix}_scaled"]),
        helper.make_node("Add", [f"{prefix}_scaled", "beta"], [out]),
    ]
    return out


def tiny_classifier(decomposed_norms: bool) -> onnx.ModelProto:
    """Token ids -> embedding -> LayerNorm -> one attention block -> LayerNorm -> classifier Softmax.

    The classifier's Softmax follows a MatMul by a weight and feeds no MatMul: it is not attention.
    """
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Gather", ["embedding", "input_ids"], ["embedded"])]
    x = _layer_norm(nodes, "embedded", "ln0", decomposed_norms)
    nodes += [
        helper.make_node("MatMul", [x, "Wq"], ["q"]),
        helper.make_node("MatMul", [x, "Wk"], ["k"]),
        helper.make_node("MatMul", [x, "Wv"], ["v"]),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["scores"]),
        helper.make_node("Div", ["scores", "sqrt_d"], ["scaled"]),
        helper.make_node("Softmax", ["scaled"], ["probs"], axis=-1),
        helper.make_node("MatMul", ["probs", "v"], ["context"]),
        helper.make_node("Add", [x, "context"], ["residual"]),
    ]
    y = _layer_norm(nodes, "residual", "ln1", decomposed_norms)
    nodes += [
        helper.make_node("MatMul", [y, "Wc"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["class_probs"], axis=-1),
    ]

    def w(name: str, *shape: int) -> onnx.TensorProto:
        return weight(name, (0.1 * rng.standard_normal(shape)).astype(np.float32))

    initializers = [
        w("embedding", VOCAB, WIDTH), w("Wq", WIDTH, WIDTH), w("Wk", WIDTH, WIDTH), w("Wv", WIDTH, WIDTH), w("Wc", WIDTH, CLASSES),
        weight("sqrt_d", np.array(np.sqrt(WIDTH), np.float32)), weight("eps", np.array(1e-5, np.float32)),
        weight("gamma", np.ones(WIDTH, np.float32)), weight("beta", np.zeros(WIDTH, np.float32)),
    ]
    return make_model(nodes, [tensor("input_ids", [1, "seq"], TensorProto.INT64)], [tensor("class_probs", None)], initializers)


def _number(lines: list[str], pattern: str) -> int:
    found = [int(match.group(1)) for line in lines if (match := re.search(pattern, line))]
    assert len(found) == 1, (pattern, lines)
    return found[0]


@pytest.mark.parametrize("decomposed", [True, False], ids=["decomposed-norms", "fused-norms"])
def test_inspect_family_and_transformer_detection_agree_on_the_counts(decomposed):
    model = from_proto(tiny_classifier(decomposed))
    report = inspect_model(model, ShapeOptions(shapes={"input_ids": (1, 8)}))
    info = detect_transformer(model)

    assert report.family == "transformer"
    family_attention = _number(report.family_evidence, r"^(\d+) Softmax between two activation MatMuls")
    assert info.attention_blocks == family_attention == 1  # the classifier's Softmax is in neither count
    norm_pattern = r"^(\d+) LayerNorm\(s\) written out" if decomposed else r"^(\d+) LayerNormalization-type node"
    family_norms = _number(report.family_evidence, norm_pattern)
    assert info.model_type == "bert"
    assert _number(info.evidence, r"bert: .*, (\d+) LayerNorm\(s\)") == family_norms == 2


def test_counts_span_subgraphs_and_skip_a_layer_norms_variance():
    inner = tiny_classifier(decomposed_norms=True).graph
    branch = helper.make_graph(list(inner.node), "then", [], [tensor("class_probs", None)])
    other = helper.make_graph([helper.make_node("Identity", ["fallback"], ["same"])], "else", [], [tensor("same", None)])
    gate = helper.make_node("If", ["flag"], ["out"], then_branch=branch, else_branch=other)
    proto = make_model(
        [gate],
        [tensor("input_ids", [1, "seq"], TensorProto.INT64), tensor("flag", [], TensorProto.BOOL), tensor("fallback", [1, CLASSES])],
        [tensor("out", None)],
        list(inner.initializer),
    )
    index = GraphIndex(proto)
    attention = count_attention(index)
    norms = count_norms(index)
    assert (attention.patterns, attention.blocks) == (1, 1)
    # mean(x - mean(x))^2 is the LayerNorm's variance, not an RMSNorm.
    assert (norms.decomposed_layer, norms.decomposed_rms, norms.fused) == (2, 0, 0)
