"""Models over 2 GB go through every command on disk: the paths they take, exercised on a small model by
lowering the 2 GB threshold (bench/large_model.py runs a real 2.4 GB model and prints memory and time)."""

from __future__ import annotations

import os
import stat

import numpy as np
import onnx
import pytest

import ortforge.transforms as transforms_module
from helpers import linear_model
from ortforge.cli import main
from ortforge.core import model as model_module
from ortforge.core.model import load_model, save_model
from ortforge.core.session import run_outputs
from ortforge.data import generate_feeds
from ortforge.transforms import TransformResult, graph_opt, ort_quantizer
from ortforge.transforms import quantize as quantize_module
from ortforge.transforms.graph_opt import GraphOptOptions, optimize_offline
from ortforge.transforms.quantize import QuantizeOptions, quantize

THRESHOLD = 64 * 64 * 4  # "2 GB" for these tests: the 64x64 weight is over it


@pytest.fixture
def large(tmp_path, monkeypatch):
    for module in (model_module, graph_opt, quantize_module, ort_quantizer, transforms_module):
        monkeypatch.setattr(module, "EXTERNAL_DATA_THRESHOLD", THRESHOLD - 1)
    monkeypatch.setattr(transforms_module, "SPILL_BYTES", THRESHOLD - 1)
    path = tmp_path / "big.onnx"
    onnx.save_model(linear_model(features=64), str(path), save_as_external_data=True, location="big.onnx.data", size_threshold=0)
    return load_model(path)


def in_memory_bytes(proto: onnx.ModelProto) -> int:
    return sum(len(t.raw_data) for t in model_module.iter_tensors(proto))


def test_optimize_leaves_the_weights_on_disk_and_the_output_matches(large, tmp_path):
    result = optimize_offline(large, GraphOptOptions(level="basic"))
    assert result.data_dir is not None and in_memory_bytes(result.proto) < THRESHOLD
    feeds = generate_feeds(large, 2)
    optimized = result.as_model(large)
    np.testing.assert_allclose(run_outputs(optimized, feeds)[0]["y"], run_outputs(large, feeds)[0]["y"], rtol=1e-5, atol=1e-6)
    saved = save_model(optimized.proto, tmp_path / "out" / "o.onnx", source=large, data_dir=result.data_dir)
    assert (saved.parent / "o.onnx.data").is_file()
    np.testing.assert_allclose(run_outputs(load_model(saved), feeds)[0]["y"], run_outputs(large, feeds)[0]["y"], rtol=1e-5, atol=1e-6)


def test_dynamic_quantization_works_on_disk(large):
    result = quantize(large, QuantizeOptions(mode="dynamic"))
    assert result.changed and result.data_dir is not None and in_memory_bytes(result.proto) < THRESHOLD
    assert any("ONNX shape inference only" in note for note in result.notes)
    feeds = generate_feeds(large, 2)
    quantized = run_outputs(result.as_model(large), feeds)[0]["y"]
    reference = run_outputs(large, feeds)[0]["y"]
    assert np.corrcoef(quantized.ravel(), reference.ravel())[0, 1] > 0.99


def test_saving_streams_external_data_with_the_users_file_mode(large, tmp_path):
    before = os.umask(0o022)
    try:
        proto = onnx.ModelProto()
        proto.CopyFrom(large.proto)
        saved = save_model(proto, tmp_path / "copy" / "c.onnx", source=large)
    finally:
        os.umask(before)
    assert in_memory_bytes(proto) < THRESHOLD  # streamed: the weights never came into memory
    for written in (saved, saved.parent / "c.onnx.data"):
        assert stat.S_IMODE(written.stat().st_mode) == 0o644, written
    feeds = generate_feeds(large, 1)
    np.testing.assert_array_equal(run_outputs(load_model(saved), feeds)[0]["y"], run_outputs(large, feeds)[0]["y"])


@pytest.mark.parametrize("argv", [["optimize"], ["quantize", "--mode", "dynamic"], ["quantize", "--mode", "static", "--calib-samples", "2"],
                                  ["fp16", "--ep", "cuda", "--tolerance", "cosine=0.99"]],
                         ids=lambda a: " ".join(a))  # fmt: skip
def test_commands_write_external_data_for_a_large_model(large, tmp_path, argv, capsys):
    out = tmp_path / "out" / "m.onnx"
    assert main([argv[0], str(large.path), "-o", str(out), *argv[1:], "--samples", "2"]) == 0, capsys.readouterr().err
    assert (out.parent / "m.onnx.data").is_file() or argv[0] in ("quantize", "fp16")  # int8 and fp16 weights fall under the lowered threshold
    load_model(out)  # reopens


def test_a_result_too_big_for_memory_moves_its_weights_to_disk_before_ort_sees_it(large):
    """fp16 simulation and static QDQ build their results in memory; over 2 GB they could not be handed to ORT."""
    loaded = model_module.loaded_copy(large)
    result = TransformResult(loaded, True)
    model = result.as_model(large)
    assert result.data_dir is not None and in_memory_bytes(result.proto) < THRESHOLD and model.base_dir == result.data_dir
    feeds = generate_feeds(large, 1)
    np.testing.assert_array_equal(run_outputs(model, feeds)[0]["y"], run_outputs(large, feeds)[0]["y"])


def test_fp16_of_a_large_model_is_checked_and_written_from_disk(large, tmp_path, monkeypatch, capsys):
    """The converted model is serialized for onnx.checker and ORT's load check; a large one goes to disk first."""
    from ortforge.transforms.fp16 import Fp16Options, convert_fp16

    monkeypatch.setattr(transforms_module, "SPILL_BYTES", 1024)  # the 8 KB of float16 weights count as large
    result = convert_fp16(large, Fp16Options(provider="CUDAExecutionProvider"), feeds=generate_feeds(large, 1))
    assert result.data_dir is not None and in_memory_bytes(result.proto) < 1024
    out = tmp_path / "h" / "h.onnx"
    argv = ["fp16", str(large.path), "-o", str(out), "--ep", "CUDAExecutionProvider", "--samples", "2", "--tolerance", "cosine=0.99"]
    assert main(argv) == 0, capsys.readouterr().err
    load_model(out)
