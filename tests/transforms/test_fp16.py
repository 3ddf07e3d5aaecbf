"""Float16 conversion and simulation on tiny models: the failure modes of the common converters, one by one."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from helpers import attention_block, make_model, tensor, weight
from ortforge.core import runtime
from ortforge.core.errors import UserError
from ortforge.core.model import from_proto
from ortforge.data import FeedSet
from ortforge.transforms.fp16 import (
    ACTIVATION_RANGE,
    CONSTANT_RANGE,
    CONTROL_FLOW,
    FIXED_TYPE,
    ISOLATED,
    KEPT,
    NO_KERNEL,
    RUNTIME,
    Fp16Options,
    convert_fp16,
    measure_activation_ranges,
    plan_fp16,
    simulate_fp16,
)

F32, F16, I64 = TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.INT64
# Schema-only decisions (no EP's kernel list), islands kept: each test sees exactly the nodes it builds.
EVERYTHING = Fp16Options(provider=None, drop_islands=False)
CPU = Fp16Options(provider="CPUExecutionProvider", drop_islands=False)



NEEDS_REGISTRY = pytest.mark.skipif(runtime.kernel_rows() is None, reason="this onnxruntime cannot list its kernels (the OpenVINO flavour, and the GPU one without TensorRT, crash on it)")

def run(proto: onnx.ModelProto, feed: dict) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feed)


def io_signature(proto: onnx.ModelProto) -> list:
    return [(v.name, v.type.tensor_type.elem_type, str(v.type.tensor_type.shape)) for v in (*proto.graph.input, *proto.graph.output)]


def cpu_fp16_kernel(op_type: str) -> bool:
    return any(
        op == op_type and provider == "CPUExecutionProvider" and domain == "ai.onnx" and any("tensor(float16)" in v for v in constraints.values())
        for domain, op, provider, _, _, constraints in runtime.kernel_rows() or []
    )


def assert_converted_matches(model: onnx.ModelProto, feed: dict, options: Fp16Options = EVERYTHING, rtol: float = 2e-2, atol: float = 2e-2):
    """Convert, check I/O signature and outputs against float32; returns the result."""
    result = convert_fp16(from_proto(model), options)
    assert io_signature(result.proto) == io_signature(model)
    for expected, actual in zip(run(model, feed), run(result.proto, feed)):
        assert actual.dtype == expected.dtype
        np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)
    return result


# --- the I/O signature --------------------------------------------------------------------------


def resize_topk_max_model() -> onnx.ModelProto:
    """Resize, TopK and Max each feeding a graph output: the ops onnxconverter-common turned float16 at the boundary."""
    return make_model(
        [
            helper.make_node("Resize", ["x", "", "scales"], ["up"], name="resize", mode="nearest"),
            helper.make_node("Reshape", ["x", "flat_shape"], ["flat"], name="flatten"),
            helper.make_node("TopK", ["flat", "k"], ["top", "top_index"], name="topk"),
            helper.make_node("Max", ["x", "floor"], ["clipped"], name="max"),
        ],
        [tensor("x", ["batch", 2, 4, 4])],
        [tensor("up", ["batch", 2, 8, 8]), tensor("top", ["batch", 3]), tensor("top_index", ["batch", 3], I64), tensor("clipped", ["batch", 2, 4, 4])],
        [
            weight("scales", np.array([1, 1, 2, 2], np.float32)),
            weight("flat_shape", np.array([0, -1], np.int64)),
            weight("k", np.array([3], np.int64)),
            weight("floor", np.array(0.25, np.float32)),
        ],
    )


def test_outputs_fed_by_resize_topk_max_stay_float32():
    model = resize_topk_max_model()
    feed = {"x": np.random.default_rng(0).standard_normal((2, 2, 4, 4)).astype(np.float32)}
    result = assert_converted_matches(model, feed)
    plan = plan_fp16(from_proto(model), EVERYTHING)
    assert {name for name in ("resize", "topk", "max") if plan.decisions[name].fp16} == {"resize", "topk", "max"}
    assert [o.name for o in result.proto.graph.output] == ["up", "top", "top_index", "clipped"]
    assert result.details["casts_inserted"] >= 3  # one Cast back to float32 before each float output


def test_without_keep_io_types_float_io_becomes_float16_but_names_stay():
    model = resize_topk_max_model()
    result = convert_fp16(from_proto(model), Fp16Options(provider=None, drop_islands=False, keep_io_types=False))
    types = {v.name: v.type.tensor_type.elem_type for v in (*result.proto.graph.input, *result.proto.graph.output)}
    assert types == {"x": F16, "up": F16, "top": F16, "top_index": I64, "clipped": F16}
    x = np.random.default_rng(0).standard_normal((1, 2, 4, 4)).astype(np.float16)
    assert run(result.proto, {"x": x})[0].dtype == np.float16


@NEEDS_REGISTRY
def test_cpu_plan_keeps_ops_without_cpu_float16_kernels():
    plan = plan_fp16(from_proto(resize_topk_max_model()), CPU)
    resize = plan.decisions["resize"]
    assert not resize.fp16 and resize.kind == NO_KERNEL and "CPUExecutionProvider" in resize.reason
    assert plan.decisions["max"].fp16 == cpu_fp16_kernel("Max")


# --- ops whose output types an attribute or another input fixes ----------------------------------


def test_layer_normalization_keeps_mean_and_inv_std_dev_float32():
    model = make_model(
        [helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["y", "mean", "inv_std"], name="ln", axis=-1)],
        [tensor("x", [2, 8])],
        [tensor("y", [2, 8]), tensor("mean", [2, 1]), tensor("inv_std", [2, 1])],
        [weight("gamma", np.linspace(0.5, 1.5, 8).astype(np.float32)), weight("beta", np.zeros(8, np.float32))],
    )
    options = CPU if cpu_fp16_kernel("LayerNormalization") else EVERYTHING
    plan = plan_fp16(from_proto(model), options)
    decision = plan.decisions["ln"]
    assert decision.fp16 and decision.outputs == (0,) and "stash_type" in decision.note
    feed = {"x": np.random.default_rng(1).standard_normal((2, 8)).astype(np.float32)}
    assert_converted_matches(model, feed, options)


def test_castlike_follows_its_target_type():
    model = make_model(
        [
            helper.make_node("Relu", ["x"], ["r"], name="relu"),
            helper.make_node("CastLike", ["counts", "r"], ["as_float"], name="castlike"),
            helper.make_node("Mul", ["as_float", "r"], ["y"], name="mul"),
        ],
        [tensor("x", [4]), tensor("counts", [4], I64)],
        [tensor("y", [4])],
    )
    feed = {"x": np.array([0.5, -1, 2, 3], np.float32), "counts": np.array([1, 2, 3, 4], np.int64)}
    result = assert_converted_matches(model, feed)
    castlike = next(n for n in result.proto.graph.node if n.name == "castlike")
    assert castlike.input[1] == "r"  # read as float16: the Relu before it is float16 too, no Cast between


def test_cast_to_float_is_a_fixed_type():
    model = make_model(
        [helper.make_node("Cast", ["counts"], ["as_float"], name="cast", to=F32), helper.make_node("Mul", ["as_float", "x"], ["y"], name="mul")],
        [tensor("x", [4]), tensor("counts", [4], I64)],
        [tensor("y", [4])],
    )
    plan = plan_fp16(from_proto(model), EVERYTHING)
    assert plan.decisions["cast"].kind == FIXED_TYPE and "'to'" in plan.decisions["cast"].reason
    feed = {"x": np.array([0.5, -1, 2, 3], np.float32), "counts": np.array([1, 2, 3, 4], np.int64)}
    assert_converted_matches(model, feed)


# --- names --------------------------------------------------------------------------------------


def test_unnamed_nodes_and_taken_names_do_not_collide():
    model = make_model(
        [
            helper.make_node("Relu", ["x"], ["x__fp16"]),  # a value already named like our casts
            helper.make_node("Relu", ["x__fp16"], ["h"], name="Relu_0"),
            helper.make_node("Relu", ["h"], ["y__fp16"]),
            helper.make_node("Neg", ["y__fp16"], ["y"]),
            helper.make_node("Neg", ["y"], ["z"], name="dup"),
            helper.make_node("Neg", ["z"], ["w"], name="dup"),
        ],
        [tensor("x", [3])],
        [tensor("y", [3]), tensor("w", [3])],
    )
    result = convert_fp16(from_proto(model), EVERYTHING)  # ORT itself refuses the original's duplicate names
    y, w = run(result.proto, {"x": np.array([-1, 0.5, 2], np.float32)})
    np.testing.assert_allclose(y, [0, -0.5, -2])
    np.testing.assert_allclose(w, [0, -0.5, -2])
    assert [v.type.tensor_type.elem_type for v in result.proto.graph.output] == [F32, F32]
    names = [node.name for node in result.proto.graph.node]
    assert all(names) and len(names) == len(set(names))
    onnx.checker.check_model(result.proto, full_check=True)


# --- ranges -------------------------------------------------------------------------------------


def batch_norm_model(variance: float) -> onnx.ModelProto:
    """PP-OCR det's problem: a BatchNormalization variance far beyond float16's range."""
    return make_model(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
            helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["b"], name="bn"),
            helper.make_node("Relu", ["b"], ["y"], name="relu"),
        ],
        [tensor("x", [1, 2, 5, 5])],
        [tensor("y", [1, 2, 5, 5])],
        [
            weight("w", np.random.default_rng(2).standard_normal((2, 2, 3, 3)).astype(np.float32)),
            weight("scale", np.array([1.0, 2.0], np.float32)),
            weight("bias", np.array([0.1, -0.1], np.float32)),
            weight("mean", np.array([0.0, 0.5], np.float32)),
            weight("var", np.array([variance, 1.0], np.float32)),
        ],
        opset=15,
    )


def test_batch_norm_constant_beyond_float16_stays_float32_unclamped():
    model = batch_norm_model(9.8e7)
    plan = plan_fp16(from_proto(model), EVERYTHING)
    bn = plan.decisions["bn"]
    assert not bn.fp16 and bn.kind == CONSTANT_RANGE and "'var'" in bn.reason and "9.8e+07" in bn.reason
    feed = {"x": np.random.default_rng(3).standard_normal((1, 2, 5, 5)).astype(np.float32)}
    result = assert_converted_matches(model, feed, plan, rtol=2e-2, atol=2e-3)
    var = next(t for t in result.proto.graph.initializer if t.name == "var")
    assert var.data_type == F32 and numpy_helper.to_array(var)[0] == np.float32(9.8e7)
    simulated = run(simulate_fp16(from_proto(model), plan).proto, feed)[0]
    np.testing.assert_allclose(simulated, run(model, feed)[0], rtol=2e-2, atol=2e-3)


def scale_up_down_model() -> onnx.ModelProto:
    """h = x * 1000 overflows float16 for |x| > 65.5; y = h / 1000 is back in range."""
    return make_model(
        [helper.make_node("Mul", ["x", "up"], ["h"], name="scale_up"), helper.make_node("Mul", ["h", "down"], ["y"], name="scale_down")],
        [tensor("x", [8])],
        [tensor("y", [8])],
        [weight("up", np.array(1000, np.float32)), weight("down", np.array(0.001, np.float32))],
    )


def test_measured_activation_beyond_float16_keeps_its_producer_float32():
    model = from_proto(scale_up_down_model())
    rng = np.random.default_rng(4)
    feeds = FeedSet([{"x": rng.uniform(50, 100, 8).astype(np.float32)} for _ in range(3)], "test", generated=False)
    ranges = measure_activation_ranges(model, feeds)
    assert ranges["h"] > 65504 and ranges["x"] <= 100
    plan = plan_fp16(model, Fp16Options(provider=None, drop_islands=False, activation_ranges=ranges))
    assert plan.decisions["scale_up"].kind == ACTIVATION_RANGE and "'h'" in plan.decisions["scale_up"].reason
    reference = run(model.proto, feeds.samples[0])[0]
    unguarded = run(simulate_fp16(model, EVERYTHING).proto, feeds.samples[0])[0]
    assert not np.isfinite(unguarded).all()  # what float16 would really do without the measurement
    guarded = run(simulate_fp16(model, plan).proto, feeds.samples[0])[0]
    np.testing.assert_allclose(guarded, reference, rtol=1e-3)


# --- kernels --------------------------------------------------------------------------------------


@NEEDS_REGISTRY
def test_op_without_cpu_float16_kernel_stays_float32_with_that_reason():
    assert not cpu_fp16_kernel("ReduceSum"), "this ORT build has a float16 ReduceSum on CPU: pick another op"
    model = make_model(
        [helper.make_node("Transpose", ["x"], ["t"], name="transpose", perm=[1, 0]), helper.make_node("ReduceSum", ["t", "axes"], ["y"], name="sum")],
        [tensor("x", [3, 4])],
        [tensor("y", [4, 1])],
        [weight("axes", np.array([1], np.int64))],
    )
    plan = plan_fp16(from_proto(model), CPU)
    assert plan.decisions["sum"].kind == NO_KERNEL
    assert "ReduceSum-13" in plan.decisions["sum"].reason and "tensor(float16)" in plan.decisions["sum"].reason
    isolated = plan_fp16(from_proto(model), Fp16Options(provider="CPUExecutionProvider"))
    assert isolated.decisions["transpose"].kind == ISOLATED  # a lone float16 Transpose is not worth two Casts


def test_kernel_that_refuses_float16_at_run_time_is_kept_float32():
    """ORT registers float16 ScatterND on CPU, but its reductions fail at run time: found by running once."""
    model = make_model(
        [helper.make_node("Relu", ["data"], ["r"], name="relu"), helper.make_node("ScatterND", ["r", "index", "update"], ["y"], name="scatter", reduction="add")],
        [tensor("data", [4]), tensor("index", [1, 1], I64), tensor("update", [1])],
        [tensor("y", [4])],
        opset=18,
    )
    feeds = FeedSet([{"data": np.ones(4, np.float32), "index": np.array([[1]]), "update": np.array([2], np.float32)}], "test", generated=False)
    plan = plan_fp16(from_proto(model), CPU)
    assert plan.decisions["scatter"].fp16  # the registry says yes
    result = convert_fp16(from_proto(model), plan, feeds=feeds)
    kept = {d["node"]: d for d in result.details["fp32"]}
    assert kept["scatter"]["kind"] == RUNTIME and "reduction" in kept["scatter"]["reason"]
    np.testing.assert_array_equal(run(result.proto, feeds.samples[0])[0], [1, 3, 1, 1])


@NEEDS_REGISTRY
def test_cuda_plan_without_cuda_kernels_says_so():
    plan = plan_fp16(from_proto(scale_up_down_model()), Fp16Options(provider="cuda"))
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this ORT has CUDA kernels to ask")
    assert plan.kernel_source == "schema" and any("CUDAExecutionProvider" in note for note in plan.notes)


# --- subgraphs ------------------------------------------------------------------------------------


def if_model() -> onnx.ModelProto:
    """Branches read an outer graph input and an outer float16 activation; the If output is a graph output."""
    then_branch = helper.make_graph(
        [helper.make_node("Mul", ["h", "x"], ["t1"], name="then_mul"), helper.make_node("Add", ["t1", "then_bias"], ["t2"], name="then_add")],
        "then", [], [tensor("t2", [4])], [weight("then_bias", np.full(4, 0.5, np.float32))],
    )
    else_branch = helper.make_graph([helper.make_node("Sub", ["x", "h"], ["e1"], name="else_sub")], "else", [], [tensor("e1", [4])])
    return make_model(
        [
            helper.make_node("Relu", ["x"], ["h"], name="relu"),
            helper.make_node("ReduceSum", ["x"], ["s"], name="sum", keepdims=0),
            helper.make_node("Greater", ["s", "zero"], ["positive"], name="greater"),
            helper.make_node("If", ["positive"], ["y"], name="branch", then_branch=then_branch, else_branch=else_branch),
        ],
        [tensor("x", [4])],
        [tensor("y", [4])],
        [weight("zero", np.array(0, np.float32))],
    )


def test_if_branches_are_converted_and_keep_their_signature():
    model = if_model()
    plan = plan_fp16(from_proto(model), EVERYTHING)
    assert plan.decisions["branch"].kind == CONTROL_FLOW
    assert all(plan.decisions[n].fp16 for n in ("then_mul", "then_add", "else_sub", "relu"))
    for x in ([1, -2, 3, 4], [-1, -2, 3, -4]):
        result = assert_converted_matches(model, {"x": np.array(x, np.float32)})
    then_branch = next(a.g for a in result.proto.graph.node[-1].attribute if a.name == "then_branch")
    assert then_branch.output[0].type.tensor_type.elem_type == F32
    assert numpy_helper.to_array(next(iter(then_branch.initializer))).dtype == np.float16
    onnx.checker.check_model(result.proto, full_check=True)


def loop_model() -> onnx.ModelProto:
    """acc <- acc * decay + x for `trips` iterations; each step's acc is also scanned out."""
    body = helper.make_graph(
        [
            helper.make_node("Mul", ["acc_in", "decay"], ["scaled"], name="body_mul"),
            helper.make_node("Add", ["scaled", "x"], ["acc_out"], name="body_add"),
            helper.make_node("Identity", ["keep_going"], ["cond_out"], name="body_cond"),
            helper.make_node("Identity", ["acc_out"], ["step"], name="body_step"),
        ],
        "body",
        [tensor("i", [], I64), tensor("keep_going", [], TensorProto.BOOL), tensor("acc_in", [3])],
        [tensor("cond_out", [], TensorProto.BOOL), tensor("acc_out", [3]), tensor("step", [3])],
    )
    return make_model(
        [helper.make_node("Loop", ["trips", "", "start"], ["final", "steps"], name="loop", body=body)],
        [tensor("x", [3]), tensor("start", [3]), tensor("trips", [], I64)],
        [tensor("final", [3]), tensor("steps", [None, 3])],
        [weight("decay", np.array(0.5, np.float32))],
    )


def test_loop_body_is_converted_with_consistent_carried_types():
    model = loop_model()
    plan = plan_fp16(from_proto(model), EVERYTHING)
    assert plan.decisions["loop"].kind == CONTROL_FLOW and plan.decisions["body_mul"].fp16 and plan.decisions["body_add"].fp16
    feed = {"x": np.array([1, 2, 3], np.float32), "start": np.array([0.1, -0.2, 4], np.float32), "trips": np.array(5, np.int64)}
    result = assert_converted_matches(model, feed)
    body = result.proto.graph.node[-1].attribute[0].g
    assert [o.type.tensor_type.elem_type for o in body.output] == [TensorProto.BOOL, F32, F32]
    onnx.checker.check_model(result.proto, full_check=True)


# --- simulation -------------------------------------------------------------------------------------


def test_simulation_differs_from_float32_by_float16_rounding():
    model = from_proto(attention_block())
    x = np.random.default_rng(5).standard_normal((2, 6, 16)).astype(np.float32)
    reference = run(model.proto, {"x": x})[0]
    simulated = simulate_fp16(model, EVERYTHING)
    error = np.abs(run(simulated.proto, {"x": x})[0] - reference).max() / np.abs(reference).max()
    assert 1e-5 < error < 1e-2
    assert simulated.details["simulated"] and "not" in simulated.notes[0]
    assert io_signature(simulated.proto) == io_signature(model.proto)


def test_simulation_matches_conversion_where_cpu_has_float16_kernels():
    ops = ("LayerNormalization", "Max", "Transpose", "Concat")
    if not all(cpu_fp16_kernel(op) for op in ops):
        pytest.skip("this ORT lacks one of the CPU float16 kernels the test relies on")
    model = make_model(
        [
            helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["n"], name="ln", axis=-1),
            helper.make_node("Max", ["n", "floor"], ["m"], name="max"),
            helper.make_node("Transpose", ["m"], ["t"], name="transpose", perm=[1, 0]),
            helper.make_node("Concat", ["t", "t"], ["y"], name="concat", axis=0),
        ],
        [tensor("x", [3, 16])],
        [tensor("y", [32, 3])],
        [weight("gamma", np.linspace(0.5, 2, 16).astype(np.float32)), weight("beta", np.linspace(-1, 1, 16).astype(np.float32)),
         weight("floor", np.array(-0.3, np.float32))],
    )
    plan = plan_fp16(from_proto(model), Fp16Options())  # the CPU EP, islands dropped: a real deployment plan
    assert plan.fp16_nodes() == ["ln", "max", "transpose", "concat"]
    x = {"x": (3 * np.random.default_rng(6).standard_normal((3, 16))).astype(np.float32)}
    converted = run(convert_fp16(from_proto(model), plan).proto, x)[0]
    simulated = run(simulate_fp16(from_proto(model), plan).proto, x)[0]
    reference = run(model, x)[0]
    assert np.abs(simulated - reference).max() > 0
    np.testing.assert_allclose(simulated, converted, rtol=1e-3, atol=1e-3)


def test_one_plan_many_keep_sets():
    model = from_proto(attention_block())
    plan = plan_fp16(model, EVERYTHING)
    kept = plan.with_fp32(["q_proj", "k_proj"])
    assert plan.decisions["q_proj"].fp16 and kept.decisions["q_proj"].kind == KEPT
    assert len(kept.fp16_nodes()) == len(plan.fp16_nodes()) - 2
    x = {"x": np.random.default_rng(7).standard_normal((1, 4, 16)).astype(np.float32)}
    assert run(simulate_fp16(model, kept).proto, x)[0].shape == run(simulate_fp16(model, plan).proto, x)[0].shape
    with pytest.raises(UserError, match="no float node"):
        plan.with_fp32(["not-a-node"])
    via_options = plan_fp16(model, Fp16Options(provider=None, drop_islands=False, keep_fp32_nodes=("q_proj", "k_proj")))
    assert via_options.fp16_nodes() == kept.fp16_nodes()


def test_user_blocks_are_reasons():
    model = from_proto(attention_block())
    plan = plan_fp16(model, Fp16Options(provider=None, block_ops=("Softmax",), block_nodes=("fc2",)))
    kinds = {d.name: d.kind for d in plan.fp32_nodes()}
    assert kinds["fc2"] == "blocked-node" and kinds[next(n for n in kinds if n.startswith("Softmax"))] == "blocked-op"
    converted = convert_fp16(model, plan)
    assert converted.changed and converted.details["fp32_reasons"] == {"blocked-op": 1, "blocked-node": 1}


def test_plan_from_another_model_is_refused():
    plan = plan_fp16(from_proto(attention_block()), EVERYTHING)
    with pytest.raises(UserError, match="another model"):
        convert_fp16(from_proto(scale_up_down_model()), plan)


def test_max_finite_is_checked():
    with pytest.raises(UserError, match="max_finite"):
        Fp16Options(max_finite=1e6)


def test_nested_subgraphs_reading_the_outermost_graph():
    """An If inside a Loop body reads a main-graph activation two scopes up."""
    then_branch = helper.make_graph([helper.make_node("Mul", ["acc_in", "h"], ["t"], name="inner_mul")], "then", [], [tensor("t", [3])])
    else_branch = helper.make_graph([helper.make_node("Add", ["acc_in", "h"], ["e"], name="inner_add")], "else", [], [tensor("e", [3])])
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["keep_going"], ["cond_out"], name="body_cond"),
            helper.make_node("Cast", ["i"], ["i_bool"], name="parity", to=TensorProto.BOOL),
            helper.make_node("If", ["i_bool"], ["acc_out"], name="inner_if", then_branch=then_branch, else_branch=else_branch),
        ],
        "body",
        [tensor("i", [], I64), tensor("keep_going", [], TensorProto.BOOL), tensor("acc_in", [3])],
        [tensor("cond_out", [], TensorProto.BOOL), tensor("acc_out", [3])],
    )
    model = make_model(
        [helper.make_node("Relu", ["x"], ["h"], name="relu"), helper.make_node("Loop", ["trips", "", "x"], ["y"], name="loop", body=body)],
        [tensor("x", [3]), tensor("trips", [], I64)],
        [tensor("y", [3])],
    )
    plan = plan_fp16(from_proto(model), EVERYTHING)
    assert plan.decisions["inner_mul"].fp16 and plan.decisions["inner_add"].fp16 and plan.decisions["inner_if"].kind == CONTROL_FLOW
    result = assert_converted_matches(model, {"x": np.array([0.5, 1.5, -2], np.float32), "trips": np.array(4, np.int64)})
    onnx.checker.check_model(result.proto, full_check=True)
    simulated = simulate_fp16(from_proto(model), plan).proto
    np.testing.assert_allclose(run(simulated, {"x": np.array([0.5, 1.5, -2], np.float32), "trips": np.array(4, np.int64)})[0],
                               run(model, {"x": np.array([0.5, 1.5, -2], np.float32), "trips": np.array(4, np.int64)})[0], rtol=1e-2)


def test_a_model_with_ort_ops_and_external_weights_converts_where_the_build_cannot_list_its_kernels(tmp_path, monkeypatch):
    """The checker complains about ORT's own SimplifiedLayerNormalization in the original and the converted model alike;
    read without its external weights the original drew another complaint, so on an H200 (whose onnxruntime-gpu cannot
    list its kernels) every builder decoder's fp16 was refused."""
    from helpers import tiny_decoder
    from ortforge.core.model import load_model
    from ortforge.transforms.fp16 import convert_fp16

    path = tmp_path / "decoder.onnx"
    onnx.save(tiny_decoder(), path, save_as_external_data=True, location="decoder.onnx.data", size_threshold=256)  # weights only
    monkeypatch.setattr(runtime, "kernel_providers", lambda *args: None)
    result = convert_fp16(load_model(path, check=False), Fp16Options())
    assert result.changed and any(node.op_type == "SimplifiedLayerNormalization" for node in result.proto.graph.node)
