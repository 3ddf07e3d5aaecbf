"""One-hot MatMuls read as table lookups: the same outputs for indices inside and outside the table (as jax2tf writes
magika's byte embedding: Reshape to [B, L, 1], Expand, Equal against arange, Cast, MatMul), and sites left alone where
the rewrite would not be exact."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from helpers import make_model, tensor, weight
from ortforge.core.model import from_proto
from ortforge.core.session import run_outputs
from ortforge.data import FeedSet
from ortforge.transforms.exact_rewrites import applicable_rewrites
from ortforge.transforms.onehot_lookup import find_lookups, onehot_lookup

CLASSES, FEATURES, LENGTH = 11, 6, 5


def _model(classes: np.ndarray | None = None, leak: bool = False, last_axis: int | str = 1, jax: bool = True):
    """ids [B, LENGTH] int32 -> one-hot over CLASSES -> times a [CLASSES, FEATURES] table -> y."""
    rng = np.random.default_rng(0)
    arange = (np.arange(CLASSES) if classes is None else classes).astype(np.int32).reshape(1, 1, -1)
    weights = [weight("table", rng.standard_normal((CLASSES, FEATURES)).astype(np.float32)), weight("arange", arange),
               weight("shape", np.array([-1, LENGTH, 1], np.int64)), weight("tail", np.array([LENGTH, 1], np.int64))]  # fmt: skip
    if jax:  # a Reshape with a literal 1 last, then an Expand to a shape computed at run time and cast, as jax2tf writes
        nodes = [helper.make_node("Reshape", ["ids", "shape"], ["column"], name="column"),
                 helper.make_node("Shape", ["ids"], ["ids_shape"], name="ids_shape"),
                 helper.make_node("Slice", ["ids_shape", "zero", "one"], ["batch"], name="batch"),
                 helper.make_node("Concat", ["batch", "tail"], ["wide"], axis=0, name="wide"),
                 helper.make_node("Cast", ["wide"], ["wide64"], to=TensorProto.INT64, name="wide64"),
                 helper.make_node("Expand", ["column", "wide64"], ["expanded"], name="expand")]  # fmt: skip
        weights += [weight("zero", np.array([0], np.int64)), weight("one", np.array([1], np.int64))]
        source, inputs = "expanded", [tensor("ids", ["batch", LENGTH], TensorProto.INT32)]
    else:
        nodes, source, inputs = [], "ids", [tensor("ids", ["batch", LENGTH, last_axis], TensorProto.INT32)]
    nodes += [helper.make_node("Equal", [source, "arange"], ["hot"], name="equal"),
              helper.make_node("Cast", ["hot"], ["hot_float"], to=TensorProto.FLOAT, name="cast"),
              helper.make_node("MatMul", ["hot_float", "table"], ["y"], name="embed")]  # fmt: skip
    outputs = [tensor("y", ["batch", LENGTH, FEATURES])] + ([tensor("hot_float", ["batch", LENGTH, CLASSES])] if leak else [])
    return make_model(nodes, inputs, outputs, weights, opset=17)


def _feeds(shape: tuple[int, ...]) -> FeedSet:
    rng = np.random.default_rng(1)
    samples = [{"ids": rng.integers(0, CLASSES, shape).astype(np.int32)} for _ in range(3)]
    samples.append({"ids": rng.integers(-3, CLASSES + 4, shape).astype(np.int32)})  # outside the table: zero rows
    return FeedSet(samples, origin="test", generated=True)


@pytest.mark.parametrize("jax", [True, False])
def test_a_one_hot_matmul_becomes_a_gather_with_the_same_outputs_inside_and_outside_the_table(jax):
    model = from_proto(_model(jax=jax))
    result = onehot_lookup(model)
    assert result.details == {"lookups": 1, "nodes_removed": 3} and f"{CLASSES} classes" in result.changes[0]
    ops = [n.op_type for n in result.proto.graph.node]
    assert "MatMul" not in ops and "Equal" not in ops and ops[-3:] == ["Squeeze", "Clip", "Gather"]
    feeds = _feeds((2, LENGTH) if jax else (2, LENGTH, 1))
    assert (feeds.samples[-1]["ids"] >= CLASSES).any() and (feeds.samples[-1]["ids"] < 0).any()
    for before, after in zip(run_outputs(model, feeds), run_outputs(from_proto(result.proto), feeds)):
        np.testing.assert_array_equal(after["y"], before["y"])
    assert applicable_rewrites(_model(jax=jax)) == ["one-hot lookup"]


def test_sites_where_a_lookup_would_not_be_exact_are_left_alone():
    assert not find_lookups(_model(classes=np.arange(CLASSES)[::-1]))  # not arange: a permuted table would do, but it is not matched
    assert not find_lookups(_model(leak=True))  # the one-hot tensor is an output too
    assert not find_lookups(_model(jax=False, last_axis="d"))  # the last axis is not provably 1: Equal may compare K values
    assert not onehot_lookup(from_proto(_model(leak=True))).changed
