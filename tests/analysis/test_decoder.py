"""Decoder language models: the KV cache's past/present pairs and the other inputs read by role, the head counts and
attention kind found in the graph, generated inputs that start from an empty cache, and a model with ORT's RMSNorm in
the default domain loaded although onnx's checker does not know it."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
from onnx import TensorProto

from helpers import (
    DECODER_HEAD_SIZE,
    DECODER_HEADS,
    DECODER_HIDDEN,
    DECODER_LAYERS,
    DECODER_VOCAB,
    bert_encoder,
    make_model,
    save,
    tensor,
    tiny_decoder,
)
from ortforge.analysis.decoder import find_decoder
from ortforge.cli import main
from ortforge.core.model import from_proto, load_model
from ortforge.core.session import run_outputs
from ortforge.data import generate_feeds
from ortforge.data.decoder_io import decoder_io


def test_a_decoder_is_recognised_with_its_cache_layout_and_head_counts():
    facts = find_decoder(tiny_decoder())
    assert facts is not None
    assert (facts.layers, facts.heads, facts.kv_heads, facts.head_size) == (DECODER_LAYERS, DECODER_HEADS, DECODER_HEADS, DECODER_HEAD_SIZE)
    assert (facts.hidden, facts.vocabulary, facts.io.layout) == (DECODER_HIDDEN, DECODER_VOCAB, "BNSH")
    assert facts.attention.startswith("decomposed")
    io = facts.io
    assert (io.tokens, io.attention_mask, io.position_ids, io.logits) == ("input_ids", "attention_mask", "position_ids", "logits")
    assert [(e.layer, e.part, e.present) for e in io.cache[:2]] == [(0, "key", "present.0.key"), (0, "value", "present.0.value")]
    assert io.past_sequence_dim() == "past_sequence_length"


def test_an_encoder_is_not_a_decoder_and_gpt2_stacked_caches_are_read():
    assert find_decoder(bert_encoder()) is None
    stacked = make_model([], [tensor("input_ids", ["batch", "seq"], TensorProto.INT64), tensor("past_0", [2, "batch", 12, "past_seq", 64])],
                         [tensor("logits", ["batch", "seq", 50257]), tensor("present_0", [2, "batch", 12, "total_seq", 64])])  # fmt: skip
    io = decoder_io(stacked.graph)
    assert io is not None and io.layout == "2BNSH" and io.cache[0].part == "both" and io.kv_heads == 12 and io.head_size == 64


def test_generated_inputs_start_from_an_empty_cache_and_run(tmp_path):
    model = load_model(save(tiny_decoder(), tmp_path / "decoder.onnx"))  # onnx's checker does not know SimplifiedLayerNormalization
    feeds = generate_feeds(model, 2)
    sample = feeds.samples[0]
    assert sample["past_key_values.0.key"].shape == (1, DECODER_HEADS, 0, DECODER_HEAD_SIZE)
    assert any("an empty KV cache" in note for note in feeds.notes)
    logits = run_outputs(model, feeds)[0]["logits"]
    assert logits.shape == (1, sample["input_ids"].shape[1], DECODER_VOCAB) and np.isfinite(logits).all()


def test_inspect_says_decoder_with_the_evidence(tmp_path):
    path = save(tiny_decoder(), tmp_path / "decoder.onnx")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["inspect", str(path), "--json"]) in (0, None)
    report = json.loads(out.getvalue())
    assert report["family"] == "decoder" and report["decoder"]["layers"] == DECODER_LAYERS
    assert report["decoder"]["cache"]["layout"] == "BNSH" and any("past inputs handed back" in e for e in report["family_evidence"])


def test_a_symbolic_head_size_is_pinned_to_hidden_over_heads():
    """onnxruntime-genai's builder leaves the cache's head size symbolic ('kv_cache_dim'): generated inputs take
    hidden / num_heads of its attention op, not a default."""
    from onnx import helper

    from helpers import weight
    from ortforge.data.pinned import pinned_dims

    nodes = [helper.make_node("Gather", ["embed", "input_ids"], ["h"], name="embed"),
             helper.make_node("GroupQueryAttention", ["h", "h", "h", "past_key_values.0.key", "past_key_values.0.value"],
                              ["attn", "present.0.key", "present.0.value"], name="gqa", domain="com.microsoft", num_heads=4, kv_num_heads=2)]  # fmt: skip
    cache = [tensor(f"past_key_values.0.{p}", ["batch", 2, "past_sequence_length", "kv_cache_dim"]) for p in ("key", "value")]
    proto = make_model(nodes, [tensor("input_ids", ["batch", "seq"], TensorProto.INT64), tensor("attention_mask", ["batch", "total"], TensorProto.INT64), *cache],
                       [tensor("attn", ["batch", "seq", 32]), *(tensor(f"present.0.{p}", ["batch", 2, "total", "kv_cache_dim"]) for p in ("key", "value"))],
                       [weight("embed", np.zeros((10, 32), np.float32))], extra_opsets={"com.microsoft": 1})  # fmt: skip
    pins = pinned_dims(from_proto(proto))
    assert pins[("past_key_values.0.key", 3)][0] == 8 and pins[("past_key_values.0.key", 2)][0] == 0


def test_the_lm_head_is_found_and_kept_int8_beside_int4_elsewhere(tmp_path):
    from ortforge.accuracy.judge import Judge
    from ortforge.accuracy.tolerance import default_tolerances
    from ortforge.core.graph import attributes
    from ortforge.tuning.candidates import precision_candidates
    from ortforge.tuning.runner import LocalRunner

    proto = tiny_decoder()
    head = find_decoder(proto).lm_head
    assert head and next(n for n in proto.graph.node if n.name == head).output[0] == "logits"
    candidates = precision_candidates("decoder", ["CPUExecutionProvider"], False, lm_head=head)
    mixed = [c for c in candidates if c.label.endswith("-> int8 LM head")]
    assert len(mixed) == 2 and all(c.base.recipe.exclude == (head,) for c in mixed)
    assert not any(c.label.endswith("LM head") for c in precision_candidates("decoder", ["CPUExecutionProvider"], False))
    model = from_proto(proto)
    feeds = generate_feeds(model, 4)
    reference = run_outputs(model, feeds)
    runner = LocalRunner(model, feeds, feeds, Judge(reference, default_tolerances(reference), feeds=feeds), tmp_path / "cache")
    trial = runner.build(mixed[0])
    assert trial.model is not None, trial.why_not
    bits = {n.name: attributes(n)["bits"] for n in trial.model.proto.graph.node if n.op_type == "MatMulNBits"}
    assert bits.pop(next(name for name in bits if name.startswith(head))) == 8 and set(bits.values()) == {4}


def test_the_embedding_width_is_read_from_a_block_quantized_table_too():
    from ortforge.core.graph import GraphIndex
    from ortforge.data.decoder_io import embedding_table
    from ortforge.transforms.weight_only import WeightOnlyOptions, quantize_weight_only

    model = from_proto(tiny_decoder())
    quantized = quantize_weight_only(model, WeightOnlyOptions(bits=4, op_types=("MatMul", "Gather"))).as_model(model)
    assert any(n.op_type == "GatherBlockQuantized" for n in quantized.proto.graph.node)
    assert embedding_table(GraphIndex(quantized.proto), "input_ids") == (DECODER_VOCAB, DECODER_HIDDEN)
    assert (find_decoder(quantized.proto).hidden, find_decoder(quantized.proto).vocabulary) == (DECODER_HIDDEN, DECODER_VOCAB)
