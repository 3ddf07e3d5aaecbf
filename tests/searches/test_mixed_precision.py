"""fp16 command and the mixed-precision search: few evaluations, outputs within tolerance by simulation."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from helpers import linear_model, make_model, save, tensor, weight
from ortforge.accuracy.judge import Judge
from ortforge.accuracy.tolerance import close
from ortforge.commands.fp16 import fp16
from ortforge.core.errors import UserError
from ortforge.core.model import load_model
from ortforge.core.session import run_outputs
from ortforge.data import FeedSet
from ortforge.searches.mixed_precision import search_mixed_precision, simulated_outputs
from ortforge.transforms.fp16 import Fp16Options, plan_fp16


def within(reference, candidate, rtol, atol):
    return Judge(reference, [close(rtol, atol)])(candidate).passed


def judge_of(model, data, rtol, atol):
    return Judge(run_outputs(model, data), [close(rtol, atol)])

def sensitive_model():
    """exp(x @ w) / sum: the Exp amplifies fp16 rounding; the rest of the graph is harmless."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="project"),
        helper.make_node("Mul", ["h", "scale"], ["s"], name="sharpen"),
        helper.make_node("Exp", ["s"], ["e"], name="exp"),
        helper.make_node("ReduceSum", ["e", "axes"], ["total"], keepdims=1, name="sum"),
        helper.make_node("Div", ["e", "total"], ["p"], name="normalise"),
        helper.make_node("Relu", ["p"], ["y"], name="out"),
    ]
    weights = [weight("w", rng.standard_normal((16, 16)).astype(np.float32)), weight("scale", np.float32(2.5)),
               weight("axes", np.array([1], np.int64))]  # fmt: skip
    return make_model(nodes, [tensor("x", [1, 16])], [tensor("y", [1, 16])], weights, opset=17)


def feeds(count=4):
    rng = np.random.default_rng(1)
    return FeedSet([{"x": rng.standard_normal((1, 16)).astype(np.float32)} for _ in range(count)], "test", generated=False)


@pytest.fixture
def model(tmp_path):
    return load_model(save(sensitive_model(), tmp_path / "m.onnx"))


def test_search_meets_a_tolerance_full_fp16_misses(model):
    data = feeds()
    plan = plan_fp16(model, Fp16Options(provider=None))  # ONNX schemas: everything convertible goes fp16
    reference = run_outputs(model, data)
    assert not within(reference, simulated_outputs(model, plan, data), 1e-2, 1e-3)  # exp overflows fp16
    found, report = search_mixed_precision(model, plan, data, judge_of(model, data, 1e-2, 1e-3))
    assert within(reference, simulated_outputs(model, found, data), 1e-2, 1e-3)
    assert "exp" not in found.fp16_nodes() and "project" in found.fp16_nodes()
    assert 1 <= len(report.kept_fp32) < len(plan.fp16_nodes())
    assert report.evaluations <= 12
    assert any(met for _, _, met in report.choices) and all(predicted <= 0.8 for _, predicted, _ in report.choices)


def test_nothing_fits_a_tolerance_no_fp16_node_meets_alone(model):
    data = feeds()
    found, report = search_mixed_precision(model, plan_fp16(model, Fp16Options(provider=None)), data, judge_of(model, data, 1e-6, 1e-7))
    assert found.fp16_nodes() == [] and "every node stays fp32" in report.notes[0]
    assert within(run_outputs(model, data), simulated_outputs(model, found, data), 1e-6, 1e-7)


def two_branch_model():
    """An exact MatMul branch (small integers, fp16-representable) beside an Exp branch fp16 rounding hurts."""
    rng = np.random.default_rng(2)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["mm"], name="project"),
        helper.make_node("Relu", ["mm"], ["y1"], name="rectify"),
        helper.make_node("Mul", ["x", "scale"], ["s"], name="sharpen"),
        helper.make_node("Exp", ["s"], ["e"], name="exp"),
        helper.make_node("Add", ["e", "one"], ["y2"], name="shift"),
    ]
    weights = [weight("w", rng.integers(-3, 4, (16, 16)).astype(np.float32)), weight("scale", np.float32(2.3)),
               weight("one", np.float32(1.0))]  # fmt: skip
    return make_model(nodes, [tensor("x", [1, 16])], [tensor("y1", [1, 16]), tensor("y2", [1, 16])], weights, opset=17)


def test_search_keeps_the_heavy_harmless_node_in_fp16(tmp_path):
    model = load_model(save(two_branch_model(), tmp_path / "branches.onnx"))
    rng = np.random.default_rng(3)
    data = FeedSet([{"x": (rng.integers(-16, 17, (1, 16)) / 8).astype(np.float32)} for _ in range(3)], "test", generated=False)
    plan = plan_fp16(model, Fp16Options(provider=None))
    found, report = search_mixed_precision(model, plan, data, judge_of(model, data, 1e-4, 1e-5))
    assert within(run_outputs(model, data), simulated_outputs(model, found, data), 1e-4, 1e-5)
    assert "project" in found.fp16_nodes() and "exp" not in found.fp16_nodes()
    assert dict(report.kept_fp32)["exp"].startswith("Exp: its group")
    assert report.evaluations <= 12


def test_a_harmless_model_needs_one_evaluation(tmp_path):
    model = load_model(save(linear_model(16), tmp_path / "linear.onnx"))
    plan = plan_fp16(model, Fp16Options(provider=None))
    _, report = search_mixed_precision(model, plan, feeds(), judge_of(model, feeds(), 1e-2, 1e-2))
    assert report.evaluations == 1 and report.kept_fp32 == []


def test_fp16_command_refuses_then_auto_writes(tmp_path, model):
    np.savez(tmp_path / "x.npz", x=feeds(1).samples[0]["x"])
    out = tmp_path / "half.onnx"
    with pytest.raises(UserError, match="outside rtol=1e-05 atol=1e-06"):
        fp16(str(tmp_path / "m.onnx"), out, ep="cuda", tolerances=["rtol=1e-5", "atol=1e-6"], data=str(tmp_path / "x.npz"))
    assert not out.exists()
    report = fp16(str(tmp_path / "m.onnx"), out, ep="cuda", auto=True, tolerances=["rtol=1e-4", "atol=1e-5"], data=str(tmp_path / "x.npz"))
    assert out.exists() and report.within_tolerance and report.search.evaluations >= 1
    assert load_model(out).proto.graph.input[0].type.tensor_type.elem_type == 1  # float32 I/O kept


def test_sequence_outputs_are_compared_item_by_item(tmp_path):
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="rectify"), helper.make_node("SplitToSequence", ["r"], ["parts"], axis=0, name="split")]
    graph = helper.make_graph(nodes, "seq", [tensor("x", [3, 4])], [helper.make_tensor_sequence_value_info("parts", 1, None)])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    np.savez(tmp_path / "x.npz", x=np.arange(12, dtype=np.float32).reshape(3, 4) / 7)
    report = fp16(str(save(proto, tmp_path / "seq.onnx")), tmp_path / "half.onnx", ep="cuda", auto=True, data=str(tmp_path / "x.npz"))
    assert report.within_tolerance and 0.999 < report.accuracy["cosine"] <= 1.0 + 1e-9


def test_judging_on_an_ep_runs_the_converted_model_there(model):
    from ortforge.searches.mixed_precision import fp16_outputs

    data = feeds()
    plan = plan_fp16(model, Fp16Options(provider="CPUExecutionProvider"))
    real = fp16_outputs(model, plan, data, judge_on="CPUExecutionProvider")  # the converted model, run
    assert within(run_outputs(model, data), real, 1e-2, 1e-3)
    found, report = search_mixed_precision(model, plan_fp16(model, Fp16Options(provider=None)), data, judge_of(model, data, 1e-2, 1e-3), judge_on="CPUExecutionProvider")
    assert within(run_outputs(model, data), fp16_outputs(model, found, data, "CPUExecutionProvider"), 1e-2, 1e-3)


@pytest.mark.skipif("CUDAExecutionProvider" not in __import__("onnxruntime").get_available_providers(),
                    reason="needs onnxruntime-gpu and an NVIDIA GPU: fp16 is judged by simulation without them")  # fmt: skip
def test_on_a_gpu_fp16_is_judged_for_real_and_agrees_with_simulation(tmp_path, model):
    np.savez(tmp_path / "x.npz", x=feeds(1).samples[0]["x"])
    report = fp16(str(tmp_path / "m.onnx"), tmp_path / "half.onnx", ep="cuda", auto=True, data=str(tmp_path / "x.npz"))
    assert report.judged_by == "CUDAExecutionProvider" and report.within_tolerance
    data = feeds(1)
    plan = plan_fp16(model, Fp16Options(provider="CUDAExecutionProvider"))
    from ortforge.searches.mixed_precision import fp16_outputs

    real, simulated = fp16_outputs(model, plan, data, "CUDAExecutionProvider"), simulated_outputs(model, plan, data)
    assert within(simulated, real, 1e-2, 1e-3)  # simulation and real fp16 kernels agree to fp16's own precision


def test_the_search_stops_at_its_deadline_with_a_verified_plan(model):
    """Out of time after the first evaluation: every node stays fp32 (the one choice verified), and the report says why."""
    import time

    from ortforge.core.deadline import Deadline

    data = feeds()
    plan = plan_fp16(model, Fp16Options(provider=None))
    spent = Deadline(30, started=time.monotonic() - 30)
    found, report = search_mixed_precision(model, plan, data, judge_of(model, data, 1e-2, 1e-3), deadline=spent)
    assert report.evaluations == 1 and found.fp16_nodes() == []
    assert any("time budget" in note for note in report.notes)
    assert within(run_outputs(model, data), simulated_outputs(model, found, data), 1e-2, 1e-3)
