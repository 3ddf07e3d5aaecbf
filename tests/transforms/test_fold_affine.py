"""Affine folding: constant Mul/Add beside Convs folded into their weights and bias, outputs unchanged, and nothing folded
where the fold would not be exact (a padded Conv after an Add, a value read elsewhere, a graph output)."""

from __future__ import annotations

import numpy as np
from onnx import helper

from helpers import lcnet_block, make_model, tensor, weight
from ortforge.core.model import from_proto
from ortforge.core.session import run_outputs
from ortforge.data import FeedSet
from ortforge.transforms.fold_affine import find_folds, fold_affine, per_channel


def _feeds() -> FeedSet:
    rng = np.random.default_rng(1)
    return FeedSet([{"x": rng.standard_normal((1, 3, 10, 10)).astype(np.float32)} for _ in range(3)], origin="test", generated=True)


def test_folds_are_exact_and_leave_what_would_not_be():
    model = from_proto(lcnet_block())
    result = fold_affine(model)
    assert result.changed
    left = [node.name for node in result.proto.graph.node]
    assert set(left) == {"stem", "act", "grouped_pointwise", "relu", "before_padded_add", "padded"}
    assert result.details == {"folded_after": 3, "folded_before": 3}
    folded = from_proto(result.proto)
    feeds = _feeds()
    for before, after in zip(run_outputs(model, feeds), run_outputs(folded, feeds)):
        np.testing.assert_allclose(after["y"], before["y"], rtol=1e-4, atol=1e-4)
    assert not find_folds(result.proto)  # nothing left to fold
    assert not any(t.name in ("k1", "d1", "k2", "d2", "k3", "k4") for t in result.proto.graph.initializer)


def test_a_value_read_elsewhere_or_a_graph_output_is_not_folded():
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("Mul", ["c", "k"], ["m"], name="mul"),  # the Conv's output is also read by Relu
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Add", ["m", "r"], ["y"], name="join"),
        helper.make_node("Mul", ["y", "k"], ["z"], name="output_mul"),  # writes a graph output, and no Conv reads it
    ]
    weights = [weight("w", rng.standard_normal((3, 3, 1, 1)).astype(np.float32)), weight("k", np.array([2.0], np.float32))]
    proto = make_model(nodes, [tensor("x", [1, 3, 4, 4])], [tensor("z", [1, 3, 4, 4])], weights)
    result = fold_affine(from_proto(proto))
    assert not result.changed and result.notes


def test_per_channel_reads_only_constants_that_broadcast_along_channels():
    assert per_channel(np.array([2.0]), 4, 4).tolist() == [2.0] * 4
    assert per_channel(np.arange(4.0).reshape(4, 1, 1), 4, 4).tolist() == [0, 1, 2, 3]
    assert per_channel(np.arange(4.0).reshape(1, 4, 1, 1), 4, 4) is not None
    assert per_channel(np.arange(4.0), 4, 4) is None  # along the last axis: width, not channels
    assert per_channel(np.ones((1, 1, 1, 1, 1)), 4, 4) is None  # would add a dimension
    assert per_channel(np.arange(3.0).reshape(3, 1, 1), 4, 4) is None


def test_unnamed_nodes_fold_as_named_ones_do():
    proto = lcnet_block()
    for node in proto.graph.node:
        node.name = ""
    result = fold_affine(from_proto(proto))
    assert result.details == {"folded_after": 3, "folded_before": 3} and len(result.proto.graph.node) == 6
