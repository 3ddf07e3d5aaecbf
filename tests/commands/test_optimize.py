"""Offline optimization: what it saves, how it is verified and stamped, and the optimize command."""

from __future__ import annotations

import importlib
from dataclasses import replace

import numpy as np
import onnx
import pytest

import ortforge
from helpers import bert_encoder, onnxruntime_version, save, small_cnn
from ortforge.commands.optimize import optimize
from ortforge.commands.run import load_checked
from ortforge.core.errors import UserError
from ortforge.core.model import load_model
from ortforge.core.stamp import config_for, load_level, read_stamp
from ortforge.measure.bench import BenchOptions
from ortforge.measure.compare import beats
from ortforge.transforms.graph_opt import GraphOptOptions, optimize_offline


@pytest.fixture
def cnn_path(tmp_path):
    return save(small_cnn(), tmp_path / "cnn.onnx")


def test_offline_result_is_stamped_and_fused(cnn_path):
    model = load_model(cnn_path)
    result = optimize_offline(model, GraphOptOptions(level="all"))
    assert len(result.proto.graph.node) < 4  # BatchNorm folded into Conv at least
    stamp = read_stamp(result.proto)
    assert stamp.level == "all" and not stamp.portable
    assert stamp.source_sha256 == model.content_hash()
    assert stamp.ort_version == onnxruntime_version()
    assert result.details["load_level"] == "disable"


def test_load_level_follows_saved_level():
    assert load_level("all") == "disable"
    assert load_level("layout") == "disable"
    assert load_level("basic") == "all"
    assert load_level("extended") == "all"


def test_portable_refuses_layout_levels():
    with pytest.raises(UserError, match="^level=all: portable saves only basic or extended"):
        GraphOptOptions(level="all", portable=True)


def test_optimize_writes_verified_model_that_plain_ort_loads(cnn_path, tmp_path):
    out = tmp_path / "out" / "cnn.opt.onnx"
    report = optimize(str(cnn_path), str(out), measure=BenchOptions(max_seconds=0.3, warmup_seconds=0.05, block_seconds=0.05, min_rounds=2, profile=False, startup_rounds=3))
    assert report.verification.passed and report.verification.generated_inputs
    assert out.exists()
    assert report.startup_ratio is not None and report.latency_ratio is not None
    import onnxruntime

    plain = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])  # stamp is just metadata
    x = np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float32)
    reference = onnxruntime.InferenceSession(str(cnn_path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(plain.run(None, {"x": x})[0], reference, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ortforge.load(out).run(None, {"x": x})[0], reference, rtol=1e-4, atol=1e-4)


def test_portable_stamp_and_loader_level(cnn_path, tmp_path):
    out = tmp_path / "portable.onnx"
    optimize(str(cnn_path), str(out), level="extended", portable=True)
    loaded = load_checked(out)
    assert loaded.stamp.portable and loaded.config.graph_optimization_level == "all"


def test_failed_verification_writes_nothing_unless_forced(cnn_path, tmp_path, monkeypatch):
    from ortforge.transforms import graph_opt

    real = graph_opt.optimize_offline

    def broken(model, options, **stamping):
        result = real(model, options, **stamping)
        for tensor_proto in result.proto.graph.initializer:  # corrupt a weight: outputs must change
            if tensor_proto.data_type == onnx.TensorProto.FLOAT and tensor_proto.raw_data:
                array = onnx.numpy_helper.to_array(tensor_proto) + 1.0
                tensor_proto.CopyFrom(onnx.numpy_helper.from_array(array, tensor_proto.name))
                break
        return result

    monkeypatch.setattr(importlib.import_module("ortforge.commands.optimize"), "optimize_offline", broken)  # the module, not the verb
    out = tmp_path / "bad.onnx"
    with pytest.raises(UserError, match="not written, outputs .*x outside rtol=1e-05 atol=1e-05"):
        optimize(str(cnn_path), str(out))
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["cnn.onnx"]
    report = optimize(str(cnn_path), str(out), force=True)
    assert out.exists() and report.forced and any("forced" in note for note in report.notes)


def test_optimize_never_overwrites_its_input(cnn_path):
    before = cnn_path.read_bytes()
    with pytest.raises(UserError, match="overwrite the input"):
        optimize(str(cnn_path), str(cnn_path))
    assert cnn_path.read_bytes() == before


def test_transformer_fusion_is_verified_timed_and_stamped(tmp_path):
    model_path = save(bert_encoder(), tmp_path / "bert.onnx")
    out = tmp_path / "bert.opt.onnx"
    quick = BenchOptions(max_seconds=0.5, warmup_seconds=0.05, block_seconds=0.05, min_rounds=4, profile=False)
    from ortforge.data import ShapeOptions

    shapes = ShapeOptions(dims={"batch": 1, "seq": 7})
    report = optimize(str(model_path), str(out), transformer={"model_type": "auto"}, measure=quick, shape_options=shapes)
    decision = report.fusion
    assert decision.result.details["fused_ops"]  # Attention too with ORT 1.31; older ORTs fuse LayerNorm/GELU only
    assert decision.verification.passed and decision.speed is not None
    assert decision.kept == beats(decision.speed, decision.noise)  # the rule, applied to what was measured
    stamp = read_stamp(load_model(out).proto)
    assert (stamp.fusion is not None) == decision.kept
    assert stamp.source_sha256 == load_model(model_path).content_hash()
    # The written model opens as a user opens it: ortforge.load / `ortforge run`, and `ortforge bench` with the config it was made for.
    session = ortforge.load(out)
    feeds = {i.name: np.ones([1, 7], np.int64) for i in session.get_inputs()}  # token ids, mask, types
    assert session.run(None, feeds)[0].shape[:2] == (1, 7)
    timed = ortforge.bench([str(out)], shape_options=shapes, options=replace(quick, noise_pair=False))
    assert timed.variants[0].config["graph_optimization_level"] == config_for(stamp).graph_optimization_level
