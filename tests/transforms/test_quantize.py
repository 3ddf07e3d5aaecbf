"""int8 quantization: ORT's quantizers behind ortforge's repairs, the accuracy gate, and auto mode."""

from __future__ import annotations

import os

import numpy as np
import pytest
from onnx import TensorProto, helper

from helpers import conv_net, make_model, save, tensor, weight
from ortforge.accuracy.tolerance import Tolerance
from ortforge.commands.quantize import quantize_model
from ortforge.core.errors import UserError
from ortforge.core.model import from_proto, iter_nodes, load_model
from ortforge.core.session import SessionConfig
from ortforge.data import generate_feeds
from ortforge.measure.bench import BenchOptions
from ortforge.searches.recipes import auto_recipes
from ortforge.transforms.quantize import QuantizeOptions, quantize


@pytest.fixture
def cnn(tmp_path):
    return load_model(save(conv_net(), tmp_path / "cnn.onnx"))


def feeds(model, count=8):
    return generate_feeds(model, count=count)


def ops(proto):
    return [node.op_type for node in iter_nodes(proto)]


def run(proto, feed):
    return SessionConfig().build(from_proto(proto)).run(None, feed)[0]


def test_static_qdq_per_channel_runs_and_stays_close(cnn):
    data = feeds(cnn)
    result = quantize(cnn, QuantizeOptions(mode="static", per_channel=True), data.samples)
    assert {"QuantizeLinear", "DequantizeLinear"} <= set(ops(result.proto))
    reference, quantized = run(cnn.proto, data.samples[0]), run(result.proto, data.samples[0])
    cosine = float(np.dot(reference.ravel(), quantized.ravel()) / np.linalg.norm(reference) / np.linalg.norm(quantized))
    assert cosine > 0.98


def test_dynamic_and_qoperator_formats(cnn):
    dynamic = quantize(cnn, QuantizeOptions(mode="dynamic", op_types=("Conv",)))
    assert "ConvInteger" in ops(dynamic.proto)
    qoperator = quantize(cnn, QuantizeOptions(mode="static", format="qoperator"), feeds(cnn).samples)
    assert "QLinearConv" in ops(qoperator.proto)


def test_per_channel_qdq_converts_old_opsets_instead_of_writing_unloadable_models(tmp_path):
    model = load_model(save(conv_net(opset=11, ir_version=7), tmp_path / "old.onnx"))
    result = quantize(model, QuantizeOptions(mode="static", per_channel=True), feeds(model).samples)
    assert result.proto.opset_import[0].version >= 13
    assert any("opset 11 to 13" in note for note in result.notes)
    run(result.proto, feeds(model).samples[0])  # ORT loads and runs it


def test_opsets_below_11_are_converted_explicitly(tmp_path):
    model = load_model(save(conv_net(opset=9, ir_version=4), tmp_path / "older.onnx"))
    result = quantize(model, QuantizeOptions(mode="dynamic"))
    assert any("opset 9 to 11" in note for note in result.notes)


def test_op_types_and_exclusions(cnn):
    data = feeds(cnn).samples
    only_conv = quantize(cnn, QuantizeOptions(mode="static", op_types=("Conv",)), data)
    assert "QGemm" not in ops(only_conv.proto)
    excluded = quantize(cnn, QuantizeOptions(mode="static", op_types=("Conv",), exclude=("conv2",)), data)
    conv2 = next(n for n in excluded.proto.graph.node if n.name == "conv2")
    producers = {o: n for n in excluded.proto.graph.node for o in n.output}
    assert conv2.input[1] == "w2" and "w2" not in producers  # its weight stays a float initializer
    assert excluded.details["excluded"] == ["conv2"]
    with pytest.raises(UserError, match="^exclude=nope: no node or op type"):
        quantize(cnn, QuantizeOptions(mode="dynamic", exclude=("nope",)))


def test_static_needs_calibration_data(cnn):
    with pytest.raises(UserError, match="calibration data"):
        quantize(cnn, QuantizeOptions(mode="static"))


def test_bad_recipe_values():
    with pytest.raises(UserError, match="^weight_type=u4: choose one of u8, s8"):
        QuantizeOptions(weight_type="u4")


def test_no_files_left_in_the_working_folder(cnn, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    quantize(cnn, QuantizeOptions(mode="static"), feeds(cnn).samples)
    assert os.listdir(work) == []


def test_pre_processing_falls_back_and_says_so(cnn, monkeypatch):
    import onnxruntime.quantization as ortq

    real = ortq.quant_pre_process

    def picky(source, target, **switches):
        if not switches.get("skip_symbolic_shape"):
            raise Exception("Incomplete symbolic shape inference")
        return real(source, target, **switches)

    monkeypatch.setattr(ortq, "quant_pre_process", picky)
    result = quantize(cnn, QuantizeOptions(mode="dynamic"))
    assert any("symbolic shape inference" in note and "falling back" in note for note in result.notes)
    assert "ConvInteger" in ops(result.proto)


def test_matmul_inside_if_is_quantized_in_dynamic_mode(tmp_path):
    rng = np.random.default_rng(0)
    branch_weight = helper.make_tensor("wb", TensorProto.FLOAT, [16, 16], rng.standard_normal(256).astype(np.float32))
    then_graph = helper.make_graph([helper.make_node("MatMul", ["x", "wb"], ["t"], name="inner_mm")], "then", [], [tensor("t", [1, 16])], [branch_weight])
    else_graph = helper.make_graph([helper.make_node("Identity", ["x"], ["e"], name="inner_id")], "else", [], [tensor("e", [1, 16])])
    proto = make_model(
        [helper.make_node("If", ["cond"], ["y"], then_branch=then_graph, else_branch=else_graph, name="if")],
        [tensor("cond", [], TensorProto.BOOL), tensor("x", [1, 16])],
        [tensor("y", [1, 16])],
    )
    model = load_model(save(proto, tmp_path / "if.onnx"))
    result = quantize(model, QuantizeOptions(mode="dynamic"))
    assert any(n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul") for n in iter_nodes(result.proto))


def test_standard_attention_is_kept_float(tmp_path):
    q = tensor("q", [1, 2, 4, 8])
    proto = make_model(
        [helper.make_node("Attention", ["q", "k", "v"], ["a"], name="std_attention"),
         helper.make_node("MatMul", ["a", "w"], ["y"], name="proj")],
        [q, tensor("k", [1, 2, 4, 8]), tensor("v", [1, 2, 4, 8])],
        [tensor("y", [1, 2, 4, 8])],
        [weight("w", np.eye(8, dtype=np.float32))],
        opset=23,
        ir_version=10,
    )  # fmt: skip
    model = load_model(save(proto, tmp_path / "attn.onnx"))
    result = quantize(model, QuantizeOptions(mode="dynamic"))
    assert "std_attention" in result.details["excluded"]
    assert any("standard ONNX Attention" in note for note in result.notes)


def test_gate_refuses_a_recipe_outside_tolerance_unless_forced(cnn, tmp_path):
    data = feeds(cnn)
    strict = [Tolerance("max_abs", 1e-9)]
    out = tmp_path / "q.onnx"
    with pytest.raises(UserError, match="not written.*max_abs"):
        quantize_model(cnn, out, [QuantizeOptions(mode="dynamic")], data, data, tolerances=strict)
    assert not out.exists()
    report = quantize_model(cnn, out, [QuantizeOptions(mode="dynamic")], data, data, tolerances=strict, force=True)
    assert out.exists() and report.forced


def test_auto_recipes_follow_family_and_cpu():
    cnn_recipes = auto_recipes("cnn", ["avx512_vnni"])
    assert any(r.mode == "static" and r.op_types == ("Conv", "MatMul", "Gemm") for r in cnn_recipes)
    assert all(r.mode == "dynamic" or "MatMul" in r.op_types for r in auto_recipes("transformer", ["avx512_vnni"]))
    assert all(r.reduce_range for r in auto_recipes("cnn", ["avx2"]) if r.weight_type == "s8")
    assert any("LSTM" in r.op_types for r in auto_recipes("rnn", ["avx2"]))


def test_auto_never_returns_a_slower_or_inaccurate_model(cnn, tmp_path):
    data = feeds(cnn)
    quick = BenchOptions(max_seconds=0.5, warmup_seconds=0.05, block_seconds=0.05, min_rounds=4)
    report = quantize_model(cnn, tmp_path / "auto.onnx", auto_recipes("cnn"), data, data, measure=quick)
    chosen = report.chosen
    assert chosen.passed
    if chosen.candidate.kind != "fp32":
        assert chosen.speed.high < 1 - report.measurement.noise_floor  # faster beyond the run's own noise
    assert (tmp_path / "auto.onnx").exists()
    assert len(report.trials) == len(auto_recipes("cnn")) + 1


def test_weight_only_recipes_go_through_the_same_gate(tmp_path):
    from ortforge.transforms.weight_only import WeightOnlyOptions

    rng = np.random.default_rng(0)
    proto = make_model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], [tensor("x", [1, 64])], [tensor("y", [1, 64])],
                       [weight("w", rng.standard_normal((64, 64)).astype(np.float32))])  # fmt: skip
    model = load_model(save(proto, tmp_path / "mm.onnx"))
    data = feeds(model)
    report = quantize_model(model, tmp_path / "w8.onnx", [WeightOnlyOptions(bits=8, accuracy_level=4)], data, data, measure=None)
    assert report.chosen.passed and "MatMulNBits" in ops(load_model(tmp_path / "w8.onnx", check=False).proto)
    assert report.chosen.label.startswith("weight-only int8")
