"""Transformer fusion on a tiny BERT-style encoder built in code, in TorchScript and dynamo export styles."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from helpers import tensor, weight
from ortforge.accuracy.judge import verify
from ortforge.accuracy.tolerance import close
from ortforge.analysis.transformer import detect_transformer
from ortforge.core.errors import UserError
from ortforge.core.model import from_proto, load_model
from ortforge.data import FeedSet
from ortforge.transforms.fusion import (
    FusionOptions,
    fuse_transformer,
    fused_op_counts,
)

HIDDEN, HEADS, VOCAB, FFN, LAYERS = 32, 4, 100, 64, 2
HEAD_SIZE = HIDDEN // HEADS


class _Builder:
    """Collects nodes and weights; names nodes the way the chosen exporter does."""

    def __init__(self, style: str, seed: int = 0) -> None:
        self.style = style
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.value_info: list[onnx.ValueInfoProto] = []
        self.weights: list[onnx.TensorProto] = []
        self.count = 0

    def node(self, op: str, inputs: list[str], scope: str = "", **attributes) -> str:
        self.count += 1
        output = f"{scope}/{op}_{self.count}_output_0" if self.style == "torchscript" else f"val_{self.count}"
        name = f"{scope}/{op}_{self.count}" if self.style == "torchscript" else f"node_{op}_{self.count}"
        node = helper.make_node(op, inputs, [output], name=name, **attributes)
        if self.style == "dynamo":  # torch.export leaves these on every node
            node.metadata_props.add(key="namespace", value=f"model{scope}")
            node.metadata_props.add(key="pkg.torch.onnx.class_hierarchy", value="['Model']")
        self.nodes.append(node)
        return output

    def const(self, name: str, array: np.ndarray) -> str:
        if all(w.name != name for w in self.weights):  # shared constants are declared once
            self.weights.append(weight(name, array))
        return name

    def random(self, name: str, *shape: int) -> str:
        return self.const(name, (0.2 * self.rng.standard_normal(shape)).astype(np.float32))


def bert_encoder(style: str = "torchscript", reshape: str = "concat") -> onnx.ModelProto:
    """A 2-layer BERT encoder shaped like an exporter's output, so the fusers recognise it.

    reshape 'concat' splits heads with [B, S, -1, head_size] computed at run time, as transformers 5
    exports do (ORT cannot read the heads from it); 'constant' uses a [0, 0, heads, head_size] weight.
    """
    b = _Builder(style)
    hidden = _embeddings(b)
    mask = _additive_mask(b)
    for layer in range(LAYERS):
        hidden = _encoder_layer(b, hidden, mask, layer, reshape)
    b.nodes.append(helper.make_node("Identity", [hidden], ["last_hidden_state"], name="output"))
    ids = ["input_ids", "attention_mask", "token_type_ids"]
    model = helper.make_model(
        helper.make_graph(b.nodes, "tiny_bert", [tensor(n, ["batch", "seq"], TensorProto.INT64) for n in ids],
                          [tensor("last_hidden_state", ["batch", "seq", HIDDEN])], b.weights),
        opset_imports=[helper.make_opsetid("", 17 if style == "torchscript" else 18)],
        producer_name="pytorch",
    )
    model.graph.value_info.extend(b.value_info)
    model.ir_version = 8 if style == "torchscript" else 10
    return model


def _embeddings(b: _Builder) -> str:
    scope = "/embeddings"
    words = b.node("Gather", [b.random("embeddings.word_embeddings.weight", VOCAB, HIDDEN), "input_ids"], scope)
    types = b.node("Gather", [b.random("embeddings.token_type_embeddings.weight", 2, HIDDEN), "token_type_ids"], scope)
    seq = b.node("Gather", [b.node("Shape", ["input_ids"], scope), b.const("one", np.array(1, np.int64))], scope, axis=0)
    seq_1d = b.node("Unsqueeze", [seq, b.const("axes0", np.array([0], np.int64))], scope)
    positions = b.node("Slice", [b.const("embeddings.position_ids", np.arange(64, dtype=np.int64)[None]),
                                 b.const("zero_1d", np.array([0], np.int64)), seq_1d,
                                 b.const("one_1d", np.array([1], np.int64)), "one_1d"], scope)
    pos = b.node("Gather", [b.random("embeddings.position_embeddings.weight", 64, HIDDEN), positions], scope)
    if b.style == "dynamo":
        b.value_info.append(tensor(positions, [1, "seq"], TensorProto.INT64))
    summed = b.node("Add", [b.node("Add", [words, types], scope), pos], scope)
    return _layer_norm(b, summed, "embeddings.LayerNorm", scope)


def _layer_norm(b: _Builder, x: str, prefix: str, scope: str) -> str:
    gamma = b.const(f"{prefix}.weight", (1 + 0.1 * b.rng.standard_normal(HIDDEN)).astype(np.float32))
    beta = b.random(f"{prefix}.bias", HIDDEN)
    return b.node("LayerNormalization", [x, gamma, beta], scope, axis=-1, epsilon=1e-12)


def _additive_mask(b: _Builder) -> str:
    """(1 - mask) * -10000 in TorchScript style; Where(mask, 0, lowest) in dynamo style."""
    if b.style == "torchscript":
        expanded = b.node("Unsqueeze", [b.node("Unsqueeze", ["attention_mask", b.const("axes1", np.array([1], np.int64))]),
                                        b.const("axes2", np.array([2], np.int64))])
        inverted = b.node("Sub", [b.const("one_f", np.array(1.0, np.float32)), b.node("Cast", [expanded], to=TensorProto.FLOAT)])
        return b.node("Mul", [inverted, b.const("mask_value", np.array(-10000.0, np.float32))])
    keep = b.node("Unsqueeze", [b.node("Cast", ["attention_mask"], to=TensorProto.BOOL), b.const("axes12", np.array([1, 2], np.int64))])
    lowest = b.const("lowest", np.array(np.finfo(np.float32).min, np.float32))
    return b.node("Where", [keep, b.const("zero_f", np.array(0.0, np.float32)), lowest])


def _encoder_layer(b: _Builder, x: str, mask: str, layer: int, reshape: str) -> str:
    scope = f"/encoder/layer.{layer}"
    prefix = f"encoder.layer.{layer}"
    split = _head_shape(b, x, scope, reshape, [HEADS, HEAD_SIZE] if reshape == "constant" else [-1, HEAD_SIZE])
    # dynamo's Reshape keeps zeros literally (allowzero); its shapes never contain 0.
    allowzero = {"allowzero": 1} if b.style == "dynamo" and reshape == "concat" else {}
    q = _heads(b, _linear(b, x, f"{prefix}.attention.self.query", HIDDEN, HIDDEN, scope), split, [0, 2, 1, 3], scope, allowzero)
    k = _heads(b, _linear(b, x, f"{prefix}.attention.self.key", HIDDEN, HIDDEN, scope), split, [0, 2, 3, 1], scope, allowzero)
    v = _heads(b, _linear(b, x, f"{prefix}.attention.self.value", HIDDEN, HIDDEN, scope), split, [0, 2, 1, 3], scope, allowzero)
    scores = b.node("MatMul", [q, k], scope)
    if b.style == "torchscript":
        scaled = b.node("Div", [scores, b.const(f"{prefix}.sqrt_d", np.array(math.sqrt(HEAD_SIZE), np.float32))], scope)
    else:
        scaled = b.node("Mul", [scores, b.const(f"{prefix}.inv_sqrt_d", np.array(1 / math.sqrt(HEAD_SIZE), np.float32))], scope)
    probs = b.node("Softmax", [b.node("Add", [scaled, mask], scope)], scope, axis=-1)
    context = b.node("Transpose", [b.node("MatMul", [probs, v], scope)], scope, perm=[0, 2, 1, 3])
    merged = b.node("Reshape", [context, _head_shape(b, x, scope, reshape, [HIDDEN] if reshape == "constant" else [-1])], scope)
    if b.style == "dynamo":
        b.value_info.append(tensor(merged, ["batch", "seq", HIDDEN]))
    attention = _linear(b, merged, f"{prefix}.attention.output.dense", HIDDEN, HIDDEN, scope)
    x = _layer_norm(b, b.node("Add", [attention, x], scope), f"{prefix}.attention.output.LayerNorm", scope)
    hidden = _linear(b, x, f"{prefix}.intermediate.dense", HIDDEN, FFN, scope)
    out = _linear(b, _gelu(b, hidden, scope), f"{prefix}.output.dense", FFN, HIDDEN, scope)
    return _layer_norm(b, b.node("Add", [out, x], scope), f"{prefix}.output.LayerNorm", scope)


def _head_shape(b: _Builder, x: str, scope: str, reshape: str, tail: list[int]) -> str:
    """[0, 0, *tail] as a weight, or [batch, seq, *tail] computed from the input's shape."""
    if reshape == "constant":
        return b.const(f"{scope}/shape_{len(tail)}_{b.count}", np.array([0, 0, *tail], np.int64))
    if b.style == "torchscript":
        dims = []
        for axis in (0, 1):
            dim = b.node("Gather", [b.node("Shape", [x], scope), b.const(f"axis{axis}", np.array(axis, np.int64))], scope, axis=0)
            dims.append(b.node("Unsqueeze", [dim, "axes0"], scope))
    else:
        dims = [b.node("Shape", ["input_ids"], scope, start=axis, end=axis + 1) for axis in (0, 1)]
    parts = [b.const(f"{scope}/tail_{i}_{b.count}", np.array([value], np.int64)) for i, value in enumerate(tail)]
    return b.node("Concat", dims + parts, scope, axis=0)


def _heads(b: _Builder, x: str, shape: str, perm: list[int], scope: str, attributes: dict) -> str:
    reshaped = b.node("Reshape", [x, shape], scope, **attributes)
    if b.style == "dynamo":  # torch.export annotates every value's shape; the heads are known there
        b.value_info.append(tensor(reshaped, ["batch", "seq", HEADS, HEAD_SIZE]))
    return b.node("Transpose", [reshaped], scope, perm=perm)


def _linear(b: _Builder, x: str, prefix: str, width_in: int, width_out: int, scope: str) -> str:
    product = b.node("MatMul", [x, b.random(f"{prefix}.weight", width_in, width_out)], scope)
    bias = b.random(f"{prefix}.bias", width_out)
    # TorchScript puts the bias first, dynamo second; both fusers must cope.
    return b.node("Add", [bias, product] if b.style == "torchscript" else [product, bias], scope)


def _gelu(b: _Builder, x: str, scope: str) -> str:
    """Exact GELU spelled out as the exporters write it: x * 0.5 * (1 + erf(x / sqrt(2)))."""
    erf = b.node("Erf", [b.node("Div", [x, b.const("sqrt2", np.array(math.sqrt(2), np.float32))], scope)], scope)
    shifted = b.node("Add", [erf, b.const("one_gelu", np.array(1.0, np.float32))], scope)
    if b.style == "torchscript":
        return b.node("Mul", [b.node("Mul", [x, shifted], scope), b.const("half", np.array(0.5, np.float32))], scope)
    return b.node("Mul", [x, b.node("Mul", [b.const("half", np.array(0.5, np.float32)), shifted], scope)], scope)


def token_feeds(batch: int = 2, seq: int = 7, samples: int = 2) -> FeedSet:
    """Token ids and right-padded masks (the fused BERT attention reads the mask as lengths)."""
    rng = np.random.default_rng(1)
    feeds = []
    for _ in range(samples):
        mask = np.ones((batch, seq), np.int64)
        mask[1, seq - 2:] = 0
        feeds.append({
            "input_ids": rng.integers(0, VOCAB, (batch, seq), dtype=np.int64),
            "attention_mask": mask,
            "token_type_ids": np.zeros((batch, seq), np.int64),
        })
    return FeedSet(feeds, origin="test tokens", generated=False)


def fused_matches(original, result, feeds: FeedSet | None = None) -> None:
    verification = verify(from_proto(original.proto, base_dir=original.base_dir), from_proto(result.proto, base_dir=original.base_dir),
                          feeds or token_feeds(), [close(1e-4, 1e-4)])
    assert verification.passed, verification.summary()


@pytest.fixture(scope="module")
def torchscript_bert():
    return from_proto(bert_encoder("torchscript"))


@pytest.fixture(scope="module")
def dynamo_bert():
    return from_proto(bert_encoder("dynamo"))


# --- detection ---------------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["torchscript", "dynamo"])
@pytest.mark.parametrize("reshape", ["concat", "constant"])
def test_detection_finds_type_heads_hidden_and_exporter(style, reshape):
    info = detect_transformer(from_proto(bert_encoder(style, reshape)))
    assert (info.model_type, info.num_heads, info.hidden_size, info.head_size) == ("bert", HEADS, HIDDEN, HEAD_SIZE)
    assert info.export_style == style
    assert info.attention_blocks == LAYERS
    assert any("heads 4" in line for line in info.evidence)
    assert any(f"head size {HEAD_SIZE}" in line for line in info.evidence)  # from the 1/sqrt(d) scale
    assert info.to_dict()["model_type"] == "bert"


def test_detection_uses_the_scale_when_reshapes_say_nothing():
    model = bert_encoder("torchscript")
    for node in model.graph.node:  # hide the head size: every reshape becomes [?, ?, -1, -1]
        if node.op_type == "Concat" and len(node.input) == 4:
            for name in node.input[2:]:
                tensor_proto = next(t for t in model.graph.initializer if t.name == name)
                tensor_proto.CopyFrom(weight(name, np.array([-1], np.int64)))
    info = detect_transformer(from_proto(model))
    assert (info.num_heads, info.hidden_size) == (HEADS, HIDDEN)
    assert any("heads 4 = hidden 32 / head size 8" in line for line in info.evidence)


def test_detection_says_unknown_without_attention():
    from helpers import linear_model

    info = detect_transformer(from_proto(linear_model()))
    assert info.model_type == "unknown" and info.num_heads == 0
    assert any("no Softmax" in line for line in info.evidence)


def test_detection_sees_a_causal_decoder():
    model = bert_encoder("torchscript")
    # A lower-triangular bool buffer, as GPT-2's TorchScript export keeps it, makes the attention causal.
    model.graph.initializer.append(weight("h.0.attn.bias", np.tril(np.ones((1, 1, 16, 16), bool))))
    info = detect_transformer(from_proto(model))
    assert info.model_type == "gpt2"
    assert any("causal" in line for line in info.evidence)


# --- fusion ------------------------------------------------------------------------------------


def test_ort_fuses_torchscript_export_with_detected_heads(torchscript_bert):
    result = fuse_transformer(torchscript_bert, FusionOptions())
    details = result.details
    assert result.changed and details["fuser"] == "ort"
    assert (details["num_heads"], details["hidden_size"], details["model_type"]) == (HEADS, HIDDEN, "bert")
    assert details["fused_ops"]["Attention"] == LAYERS
    assert details["fused_ops"]["SkipLayerNormalization"] == 2 * LAYERS
    assert details["fused_ops"].get("BiasGelu", 0) + details["fused_ops"].get("Gelu", 0) == LAYERS
    assert details["nodes_after"] < details["nodes_before"] == len(torchscript_bert.proto.graph.node)
    assert any("Attention" in line for line in result.changes) and any("nodes" in line for line in result.changes)
    assert fused_op_counts(result.proto) == details["fused_ops"]
    fused_matches(torchscript_bert, result)


def test_disabling_attention_leaves_no_attention_op(torchscript_bert):
    result = fuse_transformer(torchscript_bert, FusionOptions(disabled=("attention", "bias_gelu")))
    fused = result.details["fused_ops"]
    assert not any(op in fused for op in ("Attention", "MultiHeadAttention"))
    assert "BiasGelu" not in fused and fused["SkipLayerNormalization"] == 2 * LAYERS
    assert [a["fuser"] for a in result.details["attempts"]] == ["ort"]  # no fallback when attention is off
    fused_matches(torchscript_bert, result)


def test_raw_mask_format_and_opt_level_zero(torchscript_bert):
    result = fuse_transformer(torchscript_bert, FusionOptions(attention_mask_format="raw", opt_level=0))
    assert result.details["fused_ops"]["Attention"] == LAYERS
    fused_matches(torchscript_bert, result)


def test_only_onnxruntime_runs_no_python_fusion(torchscript_bert):
    result = fuse_transformer(torchscript_bert, FusionOptions(only_onnxruntime=True, opt_level=1))
    assert "Attention" not in result.details["fused_ops"]
    fused_matches(torchscript_bert, result)


def test_forcing_wrong_heads_is_the_users_call(torchscript_bert):
    result = fuse_transformer(torchscript_bert, FusionOptions(fuser="ort", num_heads=2))
    assert result.details["num_heads"] == 2
    assert any("num_heads 2 given, the graph suggests 4" in line for line in result.notes)


def test_onnxscript_fuses_dynamo_export(dynamo_bert):
    pytest.importorskip("onnxscript")
    result = fuse_transformer(dynamo_bert, FusionOptions())
    details = result.details
    assert details["fuser"] == "onnxscript"
    assert details["fused_ops"].get("Attention", 0) + details["fused_ops"].get("MultiHeadAttention", 0) == LAYERS
    assert details["fused_ops"]["SkipLayerNormalization"] == 2 * LAYERS
    assert details["attempts"][0]["counts"]  # onnxscript's own per-pattern counts
    fused_matches(dynamo_bert, result)


def test_onnxscript_with_attention_disabled(dynamo_bert):
    pytest.importorskip("onnxscript")
    result = fuse_transformer(dynamo_bert, FusionOptions(fuser="onnxscript", disabled=("attention",)))
    assert not any(op in result.details["fused_ops"] for op in ("Attention", "MultiHeadAttention"))
    assert result.details["fused_ops"]["SkipLayerNormalization"] == 2 * LAYERS
    fused_matches(dynamo_bert, result)


def test_auto_falls_back_when_the_first_fuser_finds_no_attention():
    pytest.importorskip("onnxscript")
    model = from_proto(bert_encoder("dynamo"))
    for node in model.proto.graph.node:  # a dynamo graph without the metadata looks like 'other': ORT goes first
        del node.metadata_props[:]
        node.name = node.name.replace("node_", "n")
    model.proto.producer_name = "someone"
    result = fuse_transformer(model, FusionOptions())
    fusers = [attempt["fuser"] for attempt in result.details["attempts"]]
    assert fusers == ["ort", "onnxscript"] and result.details["fuser"] == "onnxscript"
    assert any("tried ort" in note for note in result.notes)


def test_a_failing_fuser_is_recorded_not_raised(torchscript_bert, monkeypatch):
    from ortforge.transforms import fusion

    def trips(*args, **kwargs):
        raise IndexError("list index out of range")

    monkeypatch.setattr(fusion, "_ort_fuse", trips)
    result = fuse_transformer(torchscript_bert, FusionOptions(fuser="ort"))
    assert not result.changed and result.details["fuser"] == "none"
    assert result.changes == ["no fusion applied"]
    assert any("failed on this graph (IndexError" in note for note in result.notes)


def test_a_fused_model_ort_cannot_load_is_discarded(torchscript_bert, monkeypatch):
    from ortforge.transforms import fusion

    def breaks(model, *args, **kwargs):
        broken = onnx.ModelProto()
        broken.CopyFrom(model.proto)
        del broken.graph.node[0]  # leaves a dangling input
        return broken

    monkeypatch.setattr(fusion, "_ort_fuse", breaks)
    result = fuse_transformer(torchscript_bert, FusionOptions(fuser="ort"))
    assert not result.changed
    assert any("ORT cannot load" in note for note in result.notes)
    assert result.details["attempts"][0]["ok"] is False


def test_external_data_model_fuses_without_leaving_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "bert.onnx"
    onnx.save_model(bert_encoder("torchscript"), str(path), save_as_external_data=True, location="bert.onnx.data", size_threshold=256)
    model = load_model(path)
    before = sorted(os.listdir(tmp_path))
    result = fuse_transformer(model, FusionOptions())
    assert result.details["fused_ops"]["Attention"] == LAYERS
    assert sorted(os.listdir(tmp_path)) == before
    fused_matches(model, result)


def test_options_are_checked():
    with pytest.raises(UserError, match="not a known model type"):
        FusionOptions(model_type="resnet")
    with pytest.raises(UserError, match="^disabled=attn: not one of attention"):
        FusionOptions(disabled=("attn",))
    with pytest.raises(UserError, match="opt_level"):
        FusionOptions(opt_level=3)
    with pytest.raises(UserError, match="only_onnxruntime"):
        FusionOptions(only_onnxruntime=True, opt_level=0)
    with pytest.raises(UserError, match="not one string"):
        FusionOptions(disabled="attention")


def test_transform_writes_nothing(torchscript_bert, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fuse_transformer(torchscript_bert, FusionOptions(opt_level=99))
    assert list(Path(tmp_path).iterdir()) == []
