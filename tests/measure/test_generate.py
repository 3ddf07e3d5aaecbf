"""Generation timing for decoders: greedy tokens with the KV cache carried by IO binding equal those of re-running the
whole sequence each step, `bench --generate` reports prefill, per-token latency and tokens/s from fresh processes, and
a model without a KV cache, or a bad P,N, is one line naming it."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import onnxruntime as ort
import pytest

from helpers import DECODER_VOCAB, linear_model, save, the_error_line, tiny_decoder
from ortforge.cli import main
from ortforge.core.errors import OptionError
from ortforge.measure.generate import Generation, GenerationLoop


def _full_sequence_greedy(session: ort.InferenceSession, prompt: list[int], new_tokens: int) -> list[int]:
    """The reference: no cache, the whole sequence run again for every token."""
    tokens, chosen = list(prompt), []
    empty = {f"past_key_values.{i}.{part}": np.zeros((1, 4, 0, 16), np.float32) for i in range(2) for part in ("key", "value")}
    for _ in range(new_tokens):
        length = len(tokens)
        feeds = {"input_ids": np.array([tokens]), "attention_mask": np.ones((1, length), np.int64), "position_ids": np.arange(length)[None], **empty}
        chosen.append(int(np.argmax(session.run(["logits"], feeds)[0][0, -1])))
        tokens.append(chosen[-1])
    return chosen


@pytest.mark.parametrize("peaked", [True, False])
def test_the_cache_carried_by_io_binding_gives_the_tokens_of_full_reruns(peaked):
    session = ort.InferenceSession(tiny_decoder(peaked=peaked).SerializeToString(), providers=["CPUExecutionProvider"])
    prompt = [3, 1, 4, 1, 5, 9, 2, 6]
    run = GenerationLoop(session).run(np.array(prompt), 10)
    assert run.tokens == _full_sequence_greedy(session, prompt, 10)
    assert len(run.step_ns) == 9 and run.prefill_ns > 0 and run.tokens_per_s > 0
    if peaked:  # the model's rule: next = 7 * token + 3 (mod vocabulary)
        expected = [prompt[-1]]
        for _ in range(10):
            expected.append((7 * expected[-1] + 3) % DECODER_VOCAB)
        assert run.tokens == expected[1:]
    assert GenerationLoop(session).cache_device == ("cpu", 0)


@pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(), reason="needs onnxruntime-gpu and a CUDA card")
def test_on_a_cuda_session_the_cache_stays_on_the_card_and_gives_the_same_tokens():
    model = tiny_decoder(peaked=True).SerializeToString()  # peaked: no near-tie for TF32 matmuls to flip
    cpu = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    cuda = ort.InferenceSession(model, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    loop, prompt = GenerationLoop(cuda), [3, 1, 4, 1, 5, 9, 2, 6]
    assert loop.cache_device == ("cuda", 0)
    assert loop.run(np.array(prompt), 10).tokens == _full_sequence_greedy(cpu, prompt, 10)


def test_bench_generate_reports_prefill_per_token_latency_and_tokens_per_second(tmp_path):
    path = save(tiny_decoder(), tmp_path / "decoder.onnx")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["bench", str(path), f"{path}", "--generate", "12,6", "--time", "0.5", "--no-profile", "--json", "--quiet"]) in (0, None)
    report = json.loads(out.getvalue())
    for variant in report["variants"]:
        assert variant["generation"] == {"prompt": 12, "new_tokens": 6}
        assert variant["prefill"]["p50"] > 0 and variant["latency"]["p50"] > 0
        assert variant["throughput"] == pytest.approx(1e3 / variant["latency"]["p50"])  # tokens/s from ms per token
    assert report["noise"] is not None and any("per generated token" in note for note in report["notes"])


def test_generate_refuses_a_model_without_a_cache_and_a_bad_count(tmp_path, capfd):
    path = save(linear_model(), tmp_path / "linear.onnx")
    assert main(["bench", str(path), "--generate", "8,4", "--time", "0.5"]) == 2
    assert "not a decoder with a KV cache" in the_error_line(capfd.readouterr().err)
    with pytest.raises(OptionError, match="P,N"):
        Generation.parse("8")
    with pytest.raises(OptionError, match="2 new tokens"):
        Generation.parse("8,1")


def test_tune_for_decode_times_generated_tokens_and_refuses_a_model_without_a_cache(tmp_path):
    from ortforge.commands.tune import tune
    from ortforge.core.errors import UserError

    path = save(tiny_decoder(), tmp_path / "decoder.onnx")
    report = tune(str(path), tmp_path / "artifact", time_budget_s=30, objective="decode", generate="8,4", samples=4, calib_samples=4)
    record = json.loads((tmp_path / "artifact" / "ortforge.json").read_text())
    assert record["objective"] == "decode" and record["figures"]["generation"] == {"prompt": 8, "new_tokens": 4}
    assert record["figures"]["prefill_ms"]["baseline"]["p50"] > 0 and record["roofline"] is None
    assert report.result.chosen is not None
    with pytest.raises(UserError, match="not a decoder with a KV cache"):
        tune(str(save(linear_model(), tmp_path / "linear.onnx")), tmp_path / "other", time_budget_s=10, objective="prefill")


def test_bench_generate_times_decoders_whose_inputs_differ_from_one_prompt_and_single_runs_still_refuse(tmp_path, capfd):
    from helpers import eager_llama_decoder
    from ortforge.core.model import from_proto
    from ortforge.transforms.decoder_attention import fuse_decoder_attention

    model = eager_llama_decoder()
    fused = fuse_decoder_attention(from_proto(model), max_positions=256).proto  # the check run feeds 128 generated tokens
    kept = [value for value in fused.graph.input if value.name != "position_ids"]  # as the model builder writes a decoder
    del fused.graph.input[:]
    fused.graph.input.extend(kept)
    paths = [str(save(model, tmp_path / "written_out.onnx")), str(save(fused, tmp_path / "fused.onnx"))]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["bench", *paths, "--generate", "6,4", "--time", "0.5", "--no-profile", "--json", "--quiet"]) in (0, None)
    report = json.loads(out.getvalue())
    assert len(report["variants"]) == 2 and all(v["prefill"]["p50"] > 0 and v["throughput"] > 0 for v in report["variants"])
    assert any("same prompt tokens" in note for note in report["notes"])
    assert main(["bench", *paths, "--time", "0.5", "--no-profile", "--quiet"]) == 2
    assert "'position_ids' is not an input" in the_error_line(capfd.readouterr().err)
