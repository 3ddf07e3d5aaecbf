"""A decoder's written-out attention (rotary from position_ids, the KV cache Concat, repeat_kv, masked Softmax) made one
GroupQueryAttention: the same logits and present key/values as the original for a prompt, a step with a cache and a
chunk after a cache, the same greedy tokens through the generation loop; sites of another form left with a note;
tune builds its recipes on the fused model for such decoders."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from helpers import eager_llama_decoder
from ortforge.core.model import from_proto
from ortforge.measure.generate import GenerationLoop
from ortforge.transforms import drop_dead_nodes
from ortforge.transforms.decoder_attention import fuse_decoder_attention
from ortforge.tuning.candidates import precision_candidates

FORMS = {"transformers 4 (scores / sqrt(d))": {}, "transformers 5, 1 KV head for 2 (repeat_kv, scores * scale)": {"current": True, "kv_heads": 1},
         "Qwen2's q/k/v biases": {"current": True, "kv_heads": 1, "bias": True},
         "Qwen3's per-head q/k RMSNorm": {"current": True, "kv_heads": 1, "head_norm": True},
         "Phi-3's sliced qkv projection and rotary over a first part": {"current": True, "kv_heads": 1, "phi3": True}}


def _session(proto: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


def _feed(past: int, new: int, kv_heads: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    cache = {f"past_key_values.0.{part}": rng.standard_normal((1, kv_heads, past, 16)).astype(np.float32) for part in ("key", "value")}
    return {"input_ids": rng.integers(0, 11, (1, new)), "attention_mask": np.ones((1, past + new), np.int64),
            "position_ids": np.arange(past, past + new)[None], **cache}  # fmt: skip


@pytest.mark.parametrize("form", FORMS)
def test_written_out_attention_becomes_one_group_query_attention_with_the_same_outputs(form):
    options = FORMS[form]
    model = eager_llama_decoder(**options)
    result = fuse_decoder_attention(from_proto(model), max_positions=64)
    assert result.changed, result.notes
    ops = [node.op_type for node in result.proto.graph.node]
    assert ops.count("GroupQueryAttention") == 1 and "Softmax" not in ops
    producers = {output: node.op_type for node in result.proto.graph.node for output in node.output}
    assert producers["present.0.key"] == producers["present.0.value"] == "GroupQueryAttention"  # no Concat of the cache left
    assert ops.count("MatMul") == (5 if options.get("head_norm") else 3)  # q/k/v packed into one (not past a q/k norm), o_proj, the LM head
    packed_biases = [n for n in result.proto.graph.node if n.op_type == "Add" and n.input[0].startswith("ortforge_gqa_qkv")]
    assert len(packed_biases) == options.get("bias", False)  # their biases packed into one Add
    attention = next(node for node in result.proto.graph.node if node.op_type == "GroupQueryAttention")
    attrs = {a.name: helper.get_attribute_value(a) for a in attention.attribute}
    assert (attention.input[1] == attention.input[2] == "") is not options.get("head_norm", False)  # q/k/v read packed
    assert (attrs["num_heads"], attrs["kv_num_heads"], attrs["do_rotary"]) == (2, options.get("kv_heads", 2), 1)
    assert attrs["scale"] == pytest.approx(0.25)
    assert any("64 positions" in note for note in result.notes)
    original, fused, rng = _session(model), _session(result.proto), np.random.default_rng(0)
    for past, new in ((0, 6), (6, 1), (4, 3)):  # a prompt, a step with a cache, a chunk after a cache
        feed = _feed(past, new, options.get("kv_heads", 2), rng)
        for expected, got in zip(original.run(None, feed), fused.run(None, feed)):
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_greedy_generation_with_the_rewritten_model_gives_the_same_tokens():
    model = eager_llama_decoder(current=True, kv_heads=1)
    fused = fuse_decoder_attention(from_proto(model), max_positions=64).proto
    prompt = np.array([3, 1, 4, 1, 5, 9, 2, 6])
    tokens = [GenerationLoop(_session(proto)).run(prompt, 12).tokens for proto in (model, fused)]
    assert tokens[0] == tokens[1]


def test_contexts_past_the_rotary_tables_fail_to_run_rather_than_read_past_them():
    fused = _session(fuse_decoder_attention(from_proto(eager_llama_decoder()), max_positions=8).proto)
    rng = np.random.default_rng(0)
    fused.run(None, _feed(0, 8, 2, rng))
    with pytest.raises(Exception, match="cos_cache"):
        fused.run(None, _feed(8, 1, 2, rng))


def test_a_softmax_without_a_mask_is_left_as_it_is_with_the_reason():
    model = eager_llama_decoder()
    softmax = next(node for node in model.graph.node if node.op_type == "Softmax")
    softmax.input[0] = "qk_scaled"  # scores straight into the Softmax: not causal attention as GroupQueryAttention computes it
    result = fuse_decoder_attention(from_proto(model))
    assert not result.changed and result.proto.graph.node == model.graph.node
    assert any("no mask is added to the scores" in note for note in result.notes)


def test_rotary_tables_that_are_not_two_equal_halves_are_refused():
    model = eager_llama_decoder()
    angles = next(node for node in model.graph.node if node.output[0] == "emb")  # Concat(freqs, freqs): the halves
    model.graph.node.insert(list(model.graph.node).index(angles), helper.make_node("Mul", ["freqs", "two_f"], ["freqs2"]))
    angles.input[1] = "freqs2"
    result = fuse_decoder_attention(from_proto(model))
    assert not result.changed and any("two equal halves" in note for note in result.notes)


def test_rotary_over_fewer_dimensions_than_ort_s_kernel_takes_is_refused_before_anything_is_built():
    result = fuse_decoder_attention(from_proto(eager_llama_decoder(current=True, phi3=True, rotary_dim=8)))  # 4-wide tables
    assert not result.changed and any("multiple of 8" in note for note in result.notes)


def test_dead_nodes_go_in_chains_and_what_an_output_reads_stays():
    model = eager_llama_decoder()
    model.graph.node.extend([helper.make_node("Neg", ["inputs_embeds"], ["unread_1"]), helper.make_node("Abs", ["unread_1"], ["unread_2"])])
    model.graph.initializer.append(numpy_helper.from_array(np.zeros(1, np.float32), "spare"))
    before = len(model.graph.node)
    assert drop_dead_nodes(model) == 2 and len(model.graph.node) == before - 2
    assert drop_dead_nodes(model) == 0
    # a value read only inside a subgraph stays with what computes it
    branch = helper.make_graph([helper.make_node("Identity", ["read_inside"], ["branch_out"])], "branch", [],
                               [helper.make_tensor_value_info("branch_out", onnx.TensorProto.FLOAT, None)])  # fmt: skip
    model.graph.node.extend([helper.make_node("Neg", ["inputs_embeds"], ["read_inside"]),
                             helper.make_node("Constant", [], ["flag"], value=numpy_helper.from_array(np.array(True))),
                             helper.make_node("If", ["flag"], ["if_out"], then_branch=branch, else_branch=branch)])  # fmt: skip
    model.graph.output.append(helper.make_tensor_value_info("if_out", onnx.TensorProto.FLOAT, None))
    assert drop_dead_nodes(model) == 0


def test_tune_builds_every_recipe_of_a_written_out_decoder_on_its_fusion_and_keeps_one_unfused():
    candidates = precision_candidates("decoder", ["CPUExecutionProvider"], True, lm_head="lm_head", fuse_first=True)
    fusion = next(c for c in candidates if c.kind == "fusion")
    quantized = [c for c in candidates if c.kind not in ("fp32", "fusion")]
    unfused = [c for c in quantized if fusion not in c.stages]
    assert len(unfused) == 1 and unfused[0].recipe.bits == 4 and unfused[0].recipe.algorithm == "gptq"
    assert len(quantized) > 5 and all(fusion in c.stages for c in quantized if c not in unfused)
    fused_attention = precision_candidates("decoder", ["CPUExecutionProvider"], True, lm_head="lm_head")  # the builder's kind
    assert not any(fusion in c.stages for c in fused_attention if c.kind == "weight-only")


@pytest.mark.parametrize("algorithm", ["rtn", "gptq"])  # GPTQ's weights are packed by ORT's RTN path, which sorts the graph
def test_int4_of_the_fused_decoder_runs_although_position_ids_is_read_by_no_node(algorithm):
    from ortforge.transforms.weight_only import WeightOnlyOptions, quantize_weight_only

    model, rng = eager_llama_decoder(current=True, kv_heads=1), np.random.default_rng(0)
    fused = fuse_decoder_attention(from_proto(model), max_positions=64)
    calibration = [_feed(0, 6, 1, rng) for _ in range(4)] if algorithm == "gptq" else ()
    options = WeightOnlyOptions(bits=4, block_size=32, algorithm=algorithm)
    quantized = quantize_weight_only(fused.as_model(from_proto(model)), options, calibration)
    assert quantized.changed and [value.name for value in quantized.proto.graph.input] == [value.name for value in model.graph.input]
    assert np.isfinite(_session(quantized.proto).run(["logits"], _feed(3, 2, 1, rng))[0]).all()


def test_weights_in_an_external_file_are_packed_too(tmp_path):
    from ortforge.core.model import load_model

    path = tmp_path / "decoder.onnx"  # as torch's dynamo exporter writes a model: its weights in model.onnx.data
    onnx.save(eager_llama_decoder(current=True, kv_heads=1), str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location="decoder.onnx.data", size_threshold=256)  # fmt: skip
    model = load_model(path, check=False)
    result = fuse_decoder_attention(model, max_positions=64)
    assert result.details["packed_qkv"] == 1
    fused = result.as_model(model)
    feed = _feed(2, 3, 1, np.random.default_rng(0))
    from ortforge.core.session import SessionConfig

    expected, got = (SessionConfig().build(m).run(None, feed) for m in (model, fused))
    for a, b in zip(expected, got):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4)


def test_a_written_out_decoder_quantized_first_is_fused_with_its_int4_projections():
    from ortforge.transforms.weight_only import WeightOnlyOptions, quantize_weight_only

    model = from_proto(eager_llama_decoder(current=True, kv_heads=1))
    quantized = quantize_weight_only(model, WeightOnlyOptions(bits=4, block_size=32)).as_model(model)
    result = fuse_decoder_attention(quantized, max_positions=64)
    assert result.changed and [n.op_type for n in result.proto.graph.node].count("GroupQueryAttention") == 1
    feed = _feed(3, 2, 1, np.random.default_rng(0))
    for expected, got in zip(_session(quantized.proto).run(None, feed), _session(result.proto).run(None, feed)):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
