"""fp16 command and the mixed-precision search: few evaluations, outputs within tolerance by simulation."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import linear_model, make_model, save, tensor, weight
from onnx import helper

from ortforge.api import fp16
from ortforge.data import FeedSet
from ortforge.errors import UserError
from ortforge.mixed_precision import ranked_candidates, search_mixed_precision, simulated_outputs, within
from ortforge.model import load_model
from ortforge.quantization import run_outputs
from ortforge.transforms.fp16 import Fp16Options, plan_fp16


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
    assert not within(reference, simulated_outputs(model, plan, data), 1e-4, 1e-5)
    found, report = search_mixed_precision(model, plan, data, rtol=1e-4, atol=1e-5)
    assert report.met and within(reference, simulated_outputs(model, found, data), 1e-4, 1e-5)
    assert 1 <= len(report.kept_fp32) < len(plan.fp16_nodes())
    assert report.evaluations <= 12


def test_ranking_puts_outputs_and_risky_ops_first(model):
    order = [name for name, _ in ranked_candidates(model, plan_fp16(model, Fp16Options(provider=None)), feeds(1))]
    assert order[0] == "out"
    assert order.index("exp") < order.index("project")


def test_a_harmless_model_needs_one_evaluation(tmp_path):
    model = load_model(save(linear_model(16), tmp_path / "linear.onnx"))
    plan = plan_fp16(model, Fp16Options(provider=None))
    _, report = search_mixed_precision(model, plan, feeds(), rtol=1e-2, atol=1e-2)
    assert report.met and report.evaluations == 1 and report.kept_fp32 == []


def test_fp16_command_refuses_then_auto_writes(tmp_path, model):
    np.savez(tmp_path / "x.npz", x=feeds(1).samples[0]["x"])
    out = tmp_path / "half.onnx"
    with pytest.raises(UserError, match="outside rtol"):
        fp16(str(tmp_path / "m.onnx"), out, ep="cuda", rtol=1e-5, atol=1e-6, data=str(tmp_path / "x.npz"))
    assert not out.exists()
    report = fp16(str(tmp_path / "m.onnx"), out, ep="cuda", auto=True, rtol=1e-4, atol=1e-5, data=str(tmp_path / "x.npz"))
    assert out.exists() and report["within_tolerance"] and report["search"]["met"]
    assert load_model(out).proto.graph.input[0].type.tensor_type.elem_type == 1  # float32 I/O kept
