"""Transformer fusion on a tiny BERT-style encoder built in code, in TorchScript and dynamo export styles."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest

from helpers import HEAD_SIZE, HEADS, HIDDEN, LAYERS, VOCAB, bert_encoder, weight
from ortforge.accuracy.judge import verify
from ortforge.accuracy.tolerance import close
from ortforge.analysis.transformer import detect_transformer
from ortforge.core.errors import UserError
from ortforge.core.model import from_proto, load_model
from ortforge.core.session import run_outputs
from ortforge.data import FeedSet
from ortforge.transforms.fusion import (
    FusionOptions,
    fuse_transformer,
    fused_op_counts,
)


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


def test_our_onnxscript_step_order_is_onnxscripts(dynamo_bert):
    """With fusions disabled we call onnxscript's steps one by one (its one-call API has no switches); the order
    must stay the order its `fuse_xformers` applies them in, or an onnxscript upgrade silently changes our fusions."""
    pytest.importorskip("onnxscript")
    import onnx_ir as ir
    from onnxscript.rewriter.ort_fusions._core import fuse_xformers

    from ortforge.transforms.fusion import ONNXSCRIPT_STEPS

    _, counts = fuse_xformers(ir.serde.deserialize_model(dynamo_bert.proto))
    assert [name for name, *_ in ONNXSCRIPT_STEPS] == list(counts)


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


def test_a_decomposed_decoder_gets_group_query_attention_and_ort_s_gpt2_rules_stay_a_choice():
    from helpers import eager_llama_decoder

    model = from_proto(eager_llama_decoder())
    result = fuse_transformer(model)
    ops = [node.op_type for node in result.proto.graph.node]
    assert result.details["fuser"] == "gqa" and ops.count("GroupQueryAttention") == 1 and "Softmax" not in ops
    assert any("GroupQueryAttention" in change for change in result.changes)
    ort_rules = fuse_transformer(model, FusionOptions(fuser="ort"))  # ORT's own rules still fuse this older form
    ops = [node.op_type for node in ort_rules.proto.graph.node]
    assert ops.count("MultiHeadAttention") == 1 and ops.count("RotaryEmbedding") == 2
    assert any("decoder LM with a KV cache" in note for note in ort_rules.notes)
    rng = np.random.default_rng(1)
    past = {f"past_key_values.0.{part}": rng.standard_normal((1, 2, 3, 16)).astype(np.float32) for part in ("key", "value")}
    feed = {"input_ids": np.array([[4, 7]]), "attention_mask": np.ones((1, 5), np.int64), "position_ids": np.array([[3, 4]]), **past}
    original, ours, ort_fused = (run_outputs(m, FeedSet([feed], origin="test", generated=False))[0]
                                 for m in (model, result.as_model(model), ort_rules.as_model(model)))  # fmt: skip
    for name in ("logits", "present.0.key", "present.0.value"):  # the cache keeps its names and layout
        np.testing.assert_allclose(ours[name], original[name], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(ort_fused[name], original[name], rtol=1e-4, atol=1e-4)
