"""Every written model verifies itself: reopened three ways, judged again, repaired or not written."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from helpers import linear_model, make_model, save, tensor, weight
from ortforge.accuracy.judge import Judge
from ortforge.accuracy.reopen import ReopenError, save_verified
from ortforge.accuracy.tolerance import close
from ortforge.commands.optimize import optimize
from ortforge.commands.run import load_checked
from ortforge.core.model import from_proto, load_model
from ortforge.core.session import run_outputs
from ortforge.data import FeedSet

FEEDS = FeedSet([{"x": np.ones((1, 8), np.float32)}], "ones", generated=False)


def subgraph_reads_a_later_value() -> onnx.ModelProto:
    """An If whose branches read `late`, produced by the node after it: ORT runs it, onnx.checker refuses the order."""
    then_branch = helper.make_graph([helper.make_node("Add", ["x", "late"], ["picked_then"])], "then", [], [tensor("picked_then", [1, 8])])
    else_branch = helper.make_graph([helper.make_node("Sub", ["x", "late"], ["picked_else"])], "else", [], [tensor("picked_else", [1, 8])])
    nodes = [
        helper.make_node("If", ["flag"], ["y"], then_branch=then_branch, else_branch=else_branch, name="choose"),
        helper.make_node("Relu", ["x"], ["late"], name="late"),
    ]
    return make_model(nodes, [tensor("x", [1, 8])], [tensor("y", [1, 8])], [weight("flag", np.array(True))])


def test_an_out_of_order_model_is_sorted_before_it_is_written(tmp_path):
    proto = subgraph_reads_a_later_value()
    source = from_proto(linear_model(8, batch=1))
    saved, notes = save_verified(proto, tmp_path / "sorted.onnx", source, FEEDS)
    assert any("re-sorted" in note for note in notes) and any("ortforge.load" in note for note in notes)
    onnx.checker.check_model(str(saved), full_check=True)
    assert load_checked(saved).session.run(None, {"x": np.ones((1, 8), np.float32)})[0].shape == (1, 8)


def test_a_written_model_its_judge_rejects_is_removed(tmp_path):
    model = from_proto(linear_model(8, batch=1))
    other = Judge(run_outputs(from_proto(linear_model(8, batch=1, seed=5)), FEEDS), [close(1e-5, 1e-5)], feeds=FEEDS)
    with pytest.raises(ReopenError, match="outputs miss the tolerance it was judged under"):
        save_verified(model.proto, tmp_path / "m.onnx", model, FEEDS, other)
    assert list(tmp_path.iterdir()) == []


def test_an_optimized_graph_with_ort_only_ops_is_written_and_reopens(tmp_path):
    """LayerNorm written out at opset 14: ORT's level-all graph holds LayerNormalization, which onnx only knows from opset 17."""
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["mean"], axes=[-1], name="mean"),
        helper.make_node("Sub", ["x", "mean"], ["centered"], name="sub"),
        helper.make_node("Pow", ["centered", "two"], ["squared"], name="pow"),
        helper.make_node("ReduceMean", ["squared"], ["variance"], axes=[-1], name="variance"),
        helper.make_node("Add", ["variance", "eps"], ["shifted"], name="add_eps"),
        helper.make_node("Sqrt", ["shifted"], ["deviation"], name="sqrt"),
        helper.make_node("Div", ["centered", "deviation"], ["normed"], name="div"),
        helper.make_node("Mul", ["normed", "gamma"], ["scaled"], name="scale"),
        helper.make_node("Add", ["scaled", "beta"], ["y"], name="shift"),
    ]
    weights = [weight("two", np.array(2.0, np.float32)), weight("eps", np.array(1e-5, np.float32)), weight("gamma", np.ones(16, np.float32)),
               weight("beta", np.zeros(16, np.float32))]  # fmt: skip
    path = save(make_model(nodes, [tensor("x", [1, 4, 16])], [tensor("y", [1, 4, 16])], weights, opset=14), tmp_path / "ln14.onnx")
    report = optimize(str(path), str(tmp_path / "ln14.opt.onnx"))
    assert any(node.op_type == "LayerNormalization" for node in load_model(tmp_path / "ln14.opt.onnx").proto.graph.node)
    assert any("reopened from disk" in note for note in report.notes)
    loaded = load_checked(tmp_path / "ln14.opt.onnx")
    assert loaded.session.run(None, {"x": np.ones((1, 4, 16), np.float32)})[0].shape == (1, 4, 16)
