"""inspect_model on tiny models: I/O, op histogram, parameters by dtype, MACs and model family."""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import TensorProto, helper

from helpers import attention_block, linear_model, make_model, tensor, weight
from ortforge.analysis.model_report import inspect_model, parameter_stats
from ortforge.core.model import from_proto, load_model
from ortforge.data import ShapeOptions


def ones(*shape: int, dtype=np.float32) -> np.ndarray:
    return np.ones(shape, dtype=dtype)


def inspect(proto: onnx.ModelProto, shape_options: ShapeOptions | None = None):
    return inspect_model(from_proto(proto), shape_options)


def cnn_model() -> onnx.ModelProto:
    nodes = [
        helper.make_node("Conv", ["x", "W1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "g", "b", "m", "v"], ["n1"]),
        helper.make_node("Relu", ["n1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "W2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["c2"], ["g2"]),
        helper.make_node("Flatten", ["g2"], ["f"]),
        helper.make_node("Gemm", ["f", "Wfc"], ["y"], transB=1),
    ]
    initializers = [
        weight("W1", ones(8, 3, 3, 3)), weight("g", ones(8)), weight("b", ones(8)), weight("m", ones(8)), weight("v", ones(8)),
        weight("W2", ones(16, 8, 3, 3)), weight("Wfc", ones(10, 16)),
    ]
    return make_model(nodes, [tensor("x", ["batch", 3, "height", "width"])], [tensor("y", ["batch", 10])], initializers)


def lstm_in_if_model() -> onnx.ModelProto:
    """A voice-activity-style model: an LSTM that only runs inside one branch of an If."""
    lstm = helper.make_node("LSTM", ["x", "W", "R"], ["seq", "h"], name="lstm", hidden_size=8)
    then_branch = helper.make_graph([lstm], "then", [], [tensor("h", None)])
    else_branch = helper.make_graph([helper.make_node("Identity", ["h0"], ["h_same"])], "else", [], [tensor("h_same", None)])
    node = helper.make_node("If", ["use_rnn"], ["state"], name="gate", then_branch=then_branch, else_branch=else_branch)
    return make_model(
        [node],
        [tensor("x", ["time", 1, 4]), tensor("h0", [1, 1, 8]), tensor("use_rnn", [], TensorProto.BOOL)],
        [tensor("state", None)],
        [weight("W", ones(1, 32, 4)), weight("R", ones(1, 32, 8))],
    )


def mlp_model() -> onnx.ModelProto:
    nodes = [
        helper.make_node("Gemm", ["x", "W1", "b1"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Gemm", ["r", "W2", "b2"], ["y"], transB=1),
        helper.make_node("Sigmoid", ["y"], ["p"]),
    ]
    initializers = [weight("W1", ones(32, 16)), weight("b1", ones(32)), weight("W2", ones(4, 32)), weight("b2", ones(4))]
    return make_model(nodes, [tensor("x", ["batch", 16])], [tensor("p", ["batch", 4])], initializers)


def quantized_cnn_model() -> onnx.ModelProto:
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
        helper.make_node("DequantizeLinear", ["Wq", "s", "z"], ["Wd"]),
        helper.make_node("Conv", ["xd", "Wd"], ["y"]),
    ]
    initializers = [weight("s", np.array(0.1, np.float32)), weight("z", np.array(0, np.uint8)), weight("Wq", np.ones((4, 3, 3, 3), np.uint8))]
    return make_model(nodes, [tensor("x", [1, 3, 8, 8])], [tensor("y", [1, 4, 6, 6])], initializers)


def test_cnn_family_and_report_fields():
    report = inspect(cnn_model(), ShapeOptions(shapes={"x": (1, 3, 8, 8)}))
    assert report.family == "cnn"
    assert report.family_evidence[0].startswith("2 Conv (")
    assert any("BatchNormalization" in line for line in report.family_evidence)
    # conv1: 8*8*8 outputs x 27; conv2 on 4x4: 16*4*4 x 72; Gemm 10 x 16
    assert report.macs.total_macs == 8 * 64 * 27 + 16 * 16 * 72 + 10 * 16
    assert report.inputs[0].shape == ("batch", 3, "height", "width")
    assert report.outputs[0].to_dict() == {"name": "y", "dtype": "float32", "shape": ["batch", 10]}
    assert report.ir_version == 10 and report.opsets == {"ai.onnx": 17}
    assert report.producer == "ortforge-tests"
    assert report.op_histogram["Conv"] == 2 and report.node_count == 8 and report.subgraph_node_count == 0
    assert report.shapes == {"x": (1, 3, 8, 8)} and report.shape_defaults == []


def test_default_shapes_are_reported():
    report = inspect(cnn_model())
    assert report.shapes["x"] == (1, 3, 224, 224)
    assert len(report.shape_defaults) == 3 and all("default" in line for line in report.shape_defaults)


def test_rnn_family_lstm_inside_if():
    report = inspect(lstm_in_if_model(), ShapeOptions(shapes={"x": (5, 1, 4)}))
    assert report.family == "rnn"
    assert "1 LSTM, inside If subgraphs" in report.family_evidence
    assert report.macs.total_macs == 5 * 32 * (4 + 8)
    assert report.subgraph_count == 2 and report.subgraph_node_count == 2 and report.node_count == 3
    assert report.op_histogram == {"Identity": 1, "If": 1, "LSTM": 1}


def test_transformer_family_from_attention_pattern():
    report = inspect(attention_block(), ShapeOptions(shapes={"x": (1, 8, 16)}))
    assert report.family == "transformer"
    assert "1 Softmax between two activation MatMuls (attention pattern)" in report.family_evidence
    assert any("LayerNormalization" in line for line in report.family_evidence)
    assert report.macs.total_macs == 18432


def test_mlp_family():
    report = inspect(mlp_model())
    assert report.family == "mlp"
    assert report.family_evidence[0] == "2 MatMul/Gemm node(s) (100% of counted MACs)"
    assert report.macs.total_macs == 16 * 32 + 32 * 4


def test_quantized_family_names_the_underlying_architecture():
    report = inspect(quantized_cnn_model())
    assert report.family == "quantized"
    assert report.family_evidence[0] == "already quantized: 2 DequantizeLinear, 1 QuantizeLinear"
    assert "underlying architecture looks cnn" in report.family_evidence


def test_other_family_without_heavy_ops():
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [tensor("x", [4])], [tensor("y", [4])])
    report = inspect(model)
    assert report.family == "other" and report.macs.total_macs == 0
    assert report.family_evidence == ["no Conv, MatMul/Gemm, attention or recurrent ops"]


def test_classifier_softmax_is_not_attention():
    model = linear_model()
    model.graph.node.append(helper.make_node("Softmax", ["y"], ["p"]))
    model.graph.output[0].CopyFrom(tensor("p", ["batch", 8]))
    report = inspect(model)
    assert report.family == "mlp"


def test_parameters_by_dtype():
    nodes = [
        helper.make_node("Constant", [], ["shape"], value=helper.make_tensor("shape", TensorProto.INT64, [2], [1, 16])),
        helper.make_node("Constant", [], ["scales"], value_floats=[1.0, 2.0, 3.0]),
        helper.make_node("Constant", [], ["axis"], value_int=1),
        helper.make_node("Reshape", ["x", "shape"], ["y"]),
    ]
    initializers = [
        weight("W", ones(4, 4)),
        weight("half", ones(10, dtype=np.float16)),
        weight("q", np.ones(3, np.int8)),
    ]
    model = make_model(nodes, [tensor("x", [4, 4])], [tensor("y", [1, 16])], initializers)
    # A sparse weight: 2 stored float32 values (counted) and their 2 int64 indices (bytes only).
    values = helper.make_tensor("sparse", TensorProto.FLOAT, [2], [1.0, 2.0])
    indices = helper.make_tensor("sparse_indices", TensorProto.INT64, [2], [3, 7])
    model.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [10]))
    stats = parameter_stats(model)
    assert stats.by_dtype == {
        "float32": {"count": 16 + 3 + 2, "bytes": 64 + 12 + 8 + 16, "tensors": 3},
        "float16": {"count": 10, "bytes": 20, "tensors": 1},
        "int64": {"count": 2 + 1, "bytes": 16 + 8, "tensors": 2},
        "int8": {"count": 3, "bytes": 3, "tensors": 1},
    }
    assert list(stats.by_dtype) == ["float32", "int64", "float16", "int8"]  # by bytes, most first
    assert stats.count == 37 and stats.bytes == 147 and stats.tensors == 7 and stats.external_tensors == 0


def test_parameters_of_external_data_model_come_from_dims(tmp_path):
    path = tmp_path / "model.onnx"
    onnx.save_model(cnn_model(), str(path), save_as_external_data=True, location="model.onnx.data", size_threshold=0)
    model = load_model(path)
    (tmp_path / "model.onnx.data").write_bytes(b"")  # nothing may read the weights from here on
    report = inspect_model(model, ShapeOptions(shapes={"x": (1, 3, 8, 8)}))
    assert report.parameters.count == 8 * 27 + 4 * 8 + 16 * 72 + 160
    assert report.parameters.external_tensors == 7
    assert report.macs.total_macs == 8 * 64 * 27 + 16 * 16 * 72 + 10 * 16


def test_input_without_shape_gives_a_note_not_an_error():
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)], [tensor("y", None)])
    report = inspect(model)
    assert report.macs.total_macs == 0
    assert report.macs.notes and report.macs.notes[0].startswith("MACs not counted")
    assert report.inputs[0].shape is None


def test_to_dict_is_json():
    report = inspect(lstm_in_if_model(), ShapeOptions(shapes={"x": (5, 1, 4)}))
    data = json.loads(json.dumps(report.to_dict()))
    assert data["family"] == "rnn"
    assert data["parameters"]["by_dtype"]["float32"]["count"] == 32 * 4 + 32 * 8
    assert data["macs"]["total_macs"] == 5 * 32 * 12 and data["placements"] == []
