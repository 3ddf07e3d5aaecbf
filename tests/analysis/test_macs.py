"""MAC counts checked against hand calculations, on tiny models built in code."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from helpers import attention_block, make_model, tensor, weight
from ortforge.analysis.macs import count_macs
from ortforge.analysis.shapes import STRIP_ELEMENTS, _inference_copy
from ortforge.core.model import from_proto, load_model

MS = "com.microsoft"


def ones(*shape: int, dtype=np.float32) -> np.ndarray:
    return np.ones(shape, dtype=dtype)


def macs_of(proto: onnx.ModelProto, shapes: dict, **kwargs):
    return count_macs(from_proto(proto), shapes, **kwargs)


def test_conv_with_groups_strides_and_padding():
    # X (1, 8, 10, 10), W (16, 8/2, 3, 3), stride 2, pad 1 -> Y (1, 16, 5, 5): 400 outputs x 4*9 MACs each.
    conv = helper.make_node("Conv", ["x", "W"], ["y"], name="conv", group=2, strides=[2, 2], pads=[1, 1, 1, 1])
    model = make_model([conv], [tensor("x", [1, 8, 10, 10])], [tensor("y", None)], [weight("W", ones(16, 4, 3, 3))])
    report = macs_of(model, {"x": (1, 8, 10, 10)})
    assert report.total_macs == 16 * 5 * 5 * 4 * 3 * 3 == 14400
    assert report.flops == 2 * 14400
    assert report.by_op_type == {"Conv": 14400}
    assert report.top_nodes[0].name == "conv" and not report.unknown


def test_depthwise_conv_and_conv_transpose():
    depthwise = helper.make_node("Conv", ["x", "D"], ["d"], group=4, pads=[1, 1, 1, 1])  # (1, 4, 5, 5)
    upsample = helper.make_node("ConvTranspose", ["d", "T"], ["y"], strides=[2, 2])  # (1, 3, 10, 10)
    model = make_model(
        [depthwise, upsample],
        [tensor("x", [1, 4, 5, 5])],
        [tensor("y", None)],
        [weight("D", ones(4, 1, 3, 3)), weight("T", ones(4, 3, 2, 2))],
    )
    report = macs_of(model, {"x": (1, 4, 5, 5)})
    # depthwise: 100 outputs x 9; transpose: each of 100 input elements scatters into 3 x 2 x 2 outputs
    assert report.by_op_type == {"Conv": 100 * 9, "ConvTranspose": 100 * 12}


def test_matmul_with_batch_and_broadcast_dims():
    nodes = [
        helper.make_node("MatMul", ["a", "B"], ["y1"], name="batched"),  # (2,3,4,5) x (5,6) -> (2,3,4,6)
        helper.make_node("MatMul", ["c", "d"], ["y2"], name="broadcast"),  # (2,1,4,5) x (3,5,6) -> (2,3,4,6)
    ]
    model = make_model(
        nodes,
        [tensor("a", ["n", 3, 4, 5]), tensor("c", [2, 1, 4, 5]), tensor("d", [3, 5, 6])],
        [tensor("y1", None), tensor("y2", None)],
        [weight("B", ones(5, 6))],
    )
    report = macs_of(model, {"a": (2, 3, 4, 5), "c": (2, 1, 4, 5), "d": (3, 5, 6)})
    assert {node.name: node.macs for node in report.top_nodes} == {"batched": 720, "broadcast": 720}
    assert report.total_macs == 1440


def test_gemm_with_transposes():
    nodes = [
        helper.make_node("Gemm", ["a", "B", "C"], ["y1"], name="transB", transB=1),  # (4,8) x (16,8)^T
        helper.make_node("Gemm", ["aT", "B2"], ["y2"], name="transA", transA=1),  # (8,4)^T x (8,16)
    ]
    model = make_model(
        nodes,
        [tensor("a", [4, 8]), tensor("aT", [8, 4])],
        [tensor("y1", None), tensor("y2", None)],
        [weight("B", ones(16, 8)), weight("C", ones(16)), weight("B2", ones(8, 16))],
    )
    report = macs_of(model, {"a": (4, 8), "aT": (8, 4)})
    assert {node.name: node.macs for node in report.top_nodes} == {"transB": 4 * 16 * 8, "transA": 4 * 16 * 8}


def test_lstm_bidirectional_and_gru():
    # LSTM: 5 steps x batch 2 x 2 directions x 4 gates x H=20 x (input 10 + hidden 20)
    lstm = helper.make_node("LSTM", ["x", "W", "R"], ["y", "h"], name="lstm", hidden_size=20, direction="bidirectional")
    # GRU, batch-first layout: 7 steps x batch 2 x 3 gates x H=6 x (10 + 6)
    gru = helper.make_node("GRU", ["xb", "Wg", "Rg"], ["yg"], name="gru", hidden_size=6, layout=1)
    model = make_model(
        [lstm, gru],
        [tensor("x", [5, 2, 10]), tensor("xb", [2, 7, 10])],
        [tensor("y", None), tensor("yg", None)],
        [
            weight("W", ones(2, 80, 10)), weight("R", ones(2, 80, 20)),
            weight("Wg", ones(1, 18, 10)), weight("Rg", ones(1, 18, 6)),
        ],
    )
    report = macs_of(model, {"x": (5, 2, 10), "xb": (2, 7, 10)})
    assert report.by_op_type == {"LSTM": 5 * 2 * 2 * 4 * 20 * 30, "GRU": 7 * 2 * 3 * 6 * 16}


def test_attention_pattern_block():
    report = macs_of(attention_block(), {"x": (1, 8, 16)})
    per_node = {node.name: node.macs for node in report.top_nodes}
    assert per_node == {
        "q_proj": 8 * 16 * 16, "k_proj": 8 * 16 * 16, "v_proj": 8 * 16 * 16, "o_proj": 8 * 16 * 16,
        "qk": 8 * 8 * 16,  # (8, 16) x (16, 8)
        "av": 8 * 16 * 8,  # (8, 8) x (8, 16)
        "fc1": 8 * 16 * 32, "fc2": 8 * 32 * 16,
    }
    assert report.total_macs == 18432


def test_contrib_attention_ops_use_the_onnxruntime_fallback():
    # onnx cannot infer com.microsoft ops: the output shapes come from an onnxruntime run.
    attention = helper.make_node("Attention", ["x", "W", "b"], ["y"], name="attention", domain=MS, num_heads=2)
    mha = helper.make_node("MultiHeadAttention", ["q", "k", "v"], ["z"], name="mha", domain=MS, num_heads=2)
    model = make_model(
        [attention, mha],
        [tensor("x", [2, 8, 16]), tensor("q", [1, 8, 16]), tensor("k", [1, 10, 16]), tensor("v", [1, 10, 16])],
        [tensor("y", None), tensor("z", None)],
        [weight("W", ones(16, 48)), weight("b", np.zeros(48, np.float32))],
        extra_opsets={MS: 1},
    )
    report = macs_of(model, {"x": (2, 8, 16), "q": (1, 8, 16), "k": (1, 10, 16), "v": (1, 10, 16)})
    per_node = {node.name: node.macs for node in report.top_nodes}
    # projection 2*8*16*48, QK^T 2*8*8*16, scores x V 2*8*8*16
    assert per_node["attention"] == 12288 + 2048 + 2048
    # no projection; 8 queries x 10 keys x (16 + 16)
    assert per_node["mha"] == 8 * 10 * 32
    assert report.shapes_from_ort >= 2 and not report.unknown


def test_contrib_attention_with_past_attends_past_and_new_positions():
    # The attended length is read off the present output (2, B, N, past 5 + new 3, H), which only the run knows.
    attention = helper.make_node(
        "Attention", ["x", "W", "b", "", "past"], ["y", "present"], name="attention", domain=MS, num_heads=2, unidirectional=1
    )
    model = make_model(
        [attention],
        [tensor("x", [1, 3, 16]), tensor("past", [2, 1, 2, 5, 8])],
        [tensor("y", None), tensor("present", None)],
        [weight("W", ones(16, 48)), weight("b", np.zeros(48, np.float32))],
        extra_opsets={MS: 1},
    )
    report = macs_of(model, {"x": (1, 3, 16), "past": (2, 1, 2, 5, 8)})
    # projection 3*16*48; 3 queries x 8 positions x (16 + 16)
    assert report.total_macs == 3 * 16 * 48 + 3 * 8 * 32


def test_onnx_attention_op():
    attention = helper.make_node("Attention", ["q", "k", "v"], ["y"], name="attention")
    model = make_model(
        [attention],
        [tensor("q", [1, 2, 8, 4]), tensor("k", [1, 2, 10, 4]), tensor("v", [1, 2, 10, 6])],
        [tensor("y", None)],
        opset=23,
        ir_version=11,
    )
    report = macs_of(model, {"q": (1, 2, 8, 4), "k": (1, 2, 10, 4), "v": (1, 2, 10, 6)})
    # 2 heads x 8 queries x 10 keys x (head size 4 for the scores + 6 for the values)
    assert report.total_macs == 2 * 8 * 10 * (4 + 6)


def if_model() -> onnx.ModelProto:
    then_branch = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W1"], ["t"], name="then_mm")], "then", [], [tensor("t", None)]
    )
    else_branch = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W2"], ["e"], name="else_mm")], "else", [], [tensor("e", None)]
    )
    node = helper.make_node("If", ["c"], ["y"], name="branch", then_branch=then_branch, else_branch=else_branch)
    return make_model(
        [node],
        [tensor("x", [2, 4]), tensor("c", [], TensorProto.BOOL)],
        [tensor("y", None)],
        [weight("W1", ones(4, 3)), weight("W2", ones(4, 5))],
    )


def test_if_branches_are_counted_separately_and_the_larger_is_taken():
    report = macs_of(if_model(), {"x": (2, 4), "c": ()})
    nodes = {node.name: node for node in report.top_nodes}
    assert nodes["then_mm"].macs == 2 * 4 * 3 and nodes["then_mm"].where == "If 'branch' then_branch"
    assert nodes["else_mm"].macs == 2 * 4 * 5
    assert report.total_macs == 40
    assert any("counted separately" in note and "else_branch" in note for note in report.notes)


def loop_model(trip_from_input: bool) -> onnx.ModelProto:
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("MatMul", ["h_in", "W"], ["h_out"], name="body_mm"),
        ],
        "body",
        [tensor("i", [], TensorProto.INT64), tensor("cond_in", [], TensorProto.BOOL), tensor("h_in", None)],
        [tensor("cond_out", [], TensorProto.BOOL), tensor("h_out", None)],
    )
    loop = helper.make_node("Loop", ["M", "", "h0"], ["h"], name="loop", body=body)
    inputs = [tensor("h0", [2, 4])] + ([tensor("M", [], TensorProto.INT64)] if trip_from_input else [])
    initializers = [weight("W", ones(4, 4))] + ([] if trip_from_input else [weight("M", np.array(3, np.int64))])
    return make_model([loop], inputs, [tensor("h", None)], initializers)


def test_loop_with_constant_trip_count_counts_every_iteration():
    report = macs_of(loop_model(trip_from_input=False), {"h0": (2, 4)})
    assert report.total_macs == 3 * 2 * 4 * 4
    assert report.top_nodes[0].repeat == 3
    assert any("body counted 3 times" in note for note in report.notes)


def test_loop_with_unknown_trip_count_counts_once_and_says_so():
    report = macs_of(loop_model(trip_from_input=True), {"h0": (2, 4), "M": ()})
    assert report.total_macs == 2 * 4 * 4
    assert any("counted once" in note for note in report.notes)
    # a given feed is a real trip count
    given = {"h0": ones(2, 4), "M": np.array(5, np.int64)}
    assert macs_of(loop_model(trip_from_input=True), {"h0": (2, 4), "M": ()}, feeds=given).total_macs == 5 * 32


def test_loop_trip_count_computed_in_the_graph_comes_from_the_run():
    # trip count = x.shape[0] through float arithmetic: not a constant, but the run computes it
    proto = loop_model(trip_from_input=False)
    del proto.graph.initializer[1:]  # drop the constant M
    proto.graph.input.append(tensor("x", ["n"]))
    computed = [
        helper.make_node("Shape", ["x"], ["sx"]),
        helper.make_node("Cast", ["sx"], ["sf"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["sf"], ["tf"], keepdims=0),
        helper.make_node("Cast", ["tf"], ["M"], to=TensorProto.INT64),
    ]
    for index, node in enumerate(computed):
        proto.graph.node.insert(index, node)
    report = macs_of(proto, {"h0": (2, 4), "x": (4,)})
    assert report.total_macs == 4 * 2 * 4 * 4


def test_scan_body_counted_per_step():
    body = helper.make_graph(
        [helper.make_node("MatMul", ["x_t", "W"], ["y_t"], name="step_mm"), helper.make_node("Add", ["s_in", "y_t"], ["s_out"])],
        "body",
        [tensor("s_in", [1, 4]), tensor("x_t", [1, 4])],
        [tensor("s_out", [1, 4]), tensor("y_t", [1, 4])],
    )
    scan = helper.make_node("Scan", ["s0", "xs"], ["s", "ys"], name="scan", body=body, num_scan_inputs=1)
    model = make_model([scan], [tensor("s0", [1, 4]), tensor("xs", [6, 1, 4])], [tensor("s", None), tensor("ys", None)], [weight("W", ones(4, 4))])
    report = macs_of(model, {"s0": (1, 4), "xs": (6, 1, 4)})
    assert report.total_macs == 6 * 16


def reshape_driven_model() -> onnx.ModelProto:
    """The MatMul input's shape is computed in float arithmetic, which onnx data propagation cannot follow."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Cast", ["s"], ["sf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["sf", "k"], ["tf"]),
        helper.make_node("Cast", ["tf"], ["t"], to=TensorProto.INT64),
        helper.make_node("Reshape", ["x", "t"], ["r"]),
        helper.make_node("MatMul", ["r", "W"], ["y"], name="mm"),
    ]
    return make_model(
        nodes,
        [tensor("x", ["a", "b"])],
        [tensor("y", None)],
        [weight("k", np.array([2.0, 0.5], np.float32)), weight("W", ones(3, 5))],
    )


def test_reshape_driven_shape_resolved_by_onnxruntime_run():
    report = macs_of(reshape_driven_model(), {"x": (2, 6)})  # reshaped to (4, 3) at run time
    assert report.total_macs == 4 * 3 * 5
    assert report.shapes_from_ort >= 1
    assert any("onnxruntime" in note for note in report.notes)


def test_ops_without_a_rule_are_noted_once_when_the_fallback_recounts():
    proto = reshape_driven_model()
    proto.graph.node.append(helper.make_node("Einsum", ["x", "x"], ["e"], equation="ij,ij->i"))
    proto.graph.output.append(tensor("e", None))
    report = macs_of(proto, {"x": (2, 6)})
    assert report.total_macs == 60 and report.shapes_from_ort >= 1  # counted twice: before and after the run
    assert "not counted (no rule for these ops): 1 Einsum" in report.notes


def test_failed_fallback_lists_the_node_as_unknown():
    report = macs_of(reshape_driven_model(), {"x": (2, 5)})  # (4, 2) cannot hold 10 values: the run fails
    assert report.total_macs == 0
    assert [entry.name for entry in report.unknown] == ["mm"]
    assert "fallback failed" in report.unknown[0].reason and "Reshape" in report.unknown[0].reason


def test_unknown_subgraph_node_resolved_by_a_lifted_run():
    # Inside a branch, the reshaped tensor's shape is out of inference's reach; the branch is run on its own.
    inner = reshape_driven_model().graph
    branch = helper.make_graph(list(inner.node), "then", [], [tensor("y", None)])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["z"])], "else", [], [tensor("z", None)])
    node = helper.make_node("If", ["c"], ["out"], name="branch", then_branch=branch, else_branch=other)
    model = make_model(
        [node], [tensor("x", [2, 6]), tensor("c", [], TensorProto.BOOL)], [tensor("out", None)], list(inner.initializer)
    )
    report = macs_of(model, {"x": (2, 6), "c": ()})
    assert report.total_macs == 60 and report.top_nodes[0].where == "If 'branch' then_branch"


def test_external_data_model(tmp_path):
    rng = np.random.default_rng(0)
    proto = reshape_driven_model()
    conv = helper.make_node("Conv", ["img", "K"], ["feat"], name="conv", pads=[1, 1])
    proto.graph.node.append(conv)
    proto.graph.input.append(tensor("img", [1, 3, 16]))
    proto.graph.output.append(tensor("feat", [1, 8, 16]))
    proto.graph.output[0].CopyFrom(tensor("y", ["m", 5]))  # the checker wants output shapes
    proto.graph.initializer.append(weight("K", rng.standard_normal((8, 3, 3)).astype(np.float32)))
    path = tmp_path / "model.onnx"
    onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="model.onnx.data", size_threshold=0)
    model = load_model(path)
    assert model.external_data_files() == [tmp_path / "model.onnx.data"]
    report = count_macs(model, {"x": (2, 6), "img": (1, 3, 16)})
    # Conv: 8 x 16 outputs x 3 x 3; MatMul shapes need the run, which must find the external weights
    assert report.by_op_type == {"Conv": 8 * 16 * 9, "MatMul": 60}
    assert not report.unknown


def test_inference_copy_drops_large_weights_but_keeps_dims():
    big = weight("big", ones(STRIP_ELEMENTS + 1))
    model = make_model([helper.make_node("Add", ["x", "big"], ["y"])], [tensor("x", [STRIP_ELEMENTS + 1])], [tensor("y", None)], [big])
    copy = _inference_copy(from_proto(model), {"x": (STRIP_ELEMENTS + 1,)})
    assert list(copy.graph.initializer[0].dims) == [STRIP_ELEMENTS + 1]
    assert copy.graph.initializer[0].ByteSize() < 100
    assert model.graph.initializer[0].raw_data  # the model itself is untouched


@pytest.mark.parametrize("op", ["MatMulInteger", "QLinearMatMul"])
def test_quantized_matmul_counts_like_matmul(op):
    u8 = TensorProto.UINT8
    if op == "MatMulInteger":
        node = helper.make_node(op, ["a", "B"], ["y"], name="qmm")
        initializers = [weight("B", np.ones((8, 3), np.uint8))]
    else:
        node = helper.make_node(op, ["a", "s", "z", "B", "s", "z", "s", "z"], ["y"], name="qmm")
        initializers = [weight("B", np.ones((8, 3), np.uint8)), weight("s", np.array(0.1, np.float32)), weight("z", np.array(0, np.uint8))]
    out_type = TensorProto.INT32 if op == "MatMulInteger" else u8
    model = make_model([node], [tensor("a", [4, 8], u8)], [tensor("y", None, out_type)], initializers)
    assert macs_of(model, {"a": (4, 8)}).total_macs == 4 * 3 * 8


def test_to_dict_is_plain_data():
    import json

    report = macs_of(if_model(), {"x": (2, 4), "c": ()})
    data = json.loads(json.dumps(report.to_dict()))
    assert data["flops"] == 2 * data["total_macs"] == 80
    assert data["by_op_type"] == {"MatMul": 40} and data["counted_nodes"] == 2 and data["unknown"] == []
    top = {"name": "else_mm", "op_type": "MatMul", "macs": 40, "where": "If 'branch' else_branch", "repeat": 1}
    assert data["top_nodes"][0] == top
