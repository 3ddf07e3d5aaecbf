"""The tensor tap: intermediate tensors read back without changing the model, sized, and cut into passes."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from helpers import linear_model
from ortforge.analysis.tap import _constants_before_consumers, element_counts, passes, tap_session
from ortforge.core.model import from_proto

FEED = {"x": np.arange(8, dtype=np.float32).reshape(1, 8) - 4}


def test_a_tap_returns_intermediate_tensors_and_probe_outputs_and_leaves_the_proto_alone():
    model = from_proto(linear_model(8, batch=1))
    before = model.proto.SerializeToString()
    probe = helper.make_node("ReduceMax", ["z"], ["z_max"], name="z_max", keepdims=0)
    session = tap_session(model, ["h", "z_max"], probes=[probe])
    y, h, z_max = session.run(["y", "h", "z_max"], FEED)
    assert h.shape == (1, 8) and np.isclose(z_max, (h + 0).max())  # b is zero: z == h
    np.testing.assert_allclose(y, np.maximum(h, 0))
    assert model.proto.SerializeToString() == before


def test_sizes_and_bounded_passes():
    model = from_proto(linear_model(8, batch=1))
    assert element_counts(model, ["h", "z"], FEED) == {"h": 8, "z": 8}
    assert passes(["a", "b", "c"], {"a": 40, "b": 40, "c": 40}, budget=80) == [["a", "b"], ["c"]]
    assert passes(["big", "small"], {"big": 500, "small": 1}, budget=100) == [["big"], ["small"]]  # too big: alone
    assert passes([], {}, budget=10) == []


def _dequantized_chain() -> onnx.ModelProto:
    """x -> MatMul(DQ(w0)) -> MatMul(Neg(DQ(w1))), with every weight's nodes first, as ORT's quantizer writes them."""
    weights = [numpy_helper.from_array(np.full((4, 4), 3, np.int8), f"w{i}") for i in range(2)]
    scale = numpy_helper.from_array(np.array(0.5, np.float32), "scale")
    nodes = [
        helper.make_node("DequantizeLinear", ["w0", "scale"], ["w0_float"], name="dq0"),
        helper.make_node("DequantizeLinear", ["w1", "scale"], ["w1_float"], name="dq1"),
        helper.make_node("Neg", ["w1_float"], ["w1_negated"], name="neg1"),
        helper.make_node("MatMul", ["x", "w0_float"], ["h0"], name="mm0"),
        helper.make_node("MatMul", ["h0", "w1_negated"], ["y"], name="mm1"),
    ]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])], [*weights, scale])  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def test_nodes_computing_from_weights_alone_run_right_before_their_consumer_and_the_proto_keeps_its_order():
    # Unoptimized, ORT runs nodes in graph order: weights dequantized up front are all held at once.
    proto = _dequantized_chain()
    names = [proto.graph.node[i].name for i in _constants_before_consumers(proto.graph)]
    assert names == ["dq0", "mm0", "dq1", "neg1", "mm1"]
    model = from_proto(proto)
    before = proto.SerializeToString()
    (y,) = tap_session(model, ["h0"]).run(["y"], {"x": np.ones((1, 4), np.float32)})
    np.testing.assert_allclose(y, np.ones((1, 4)) @ np.full((4, 4), 1.5) @ np.full((4, 4), -1.5))
    assert proto.SerializeToString() == before
