"""GraphIndex: producers, consumers, constants and control-flow scopes over a graph and its subgraphs."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from helpers import make_model, tensor, weight
from ortforge.core.graph import SMALL_CONSTANT, GraphIndex, subgraphs
from ortforge.core.model import iter_graphs


def looped_model():
    """Main graph: shared weight through Identity, a Constant, and a Loop whose body holds an If."""
    then_branch = helper.make_graph([helper.make_node("MatMul", ["x_in", "w_alias"], ["t"], name="inner_matmul")], "then", [],
                                    [tensor("t", None)])
    else_branch = helper.make_graph([helper.make_node("Identity", ["x_in"], ["e"], name="inner_identity")], "else", [],
                                    [tensor("e", None)])
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"], name="cond"),
            helper.make_node("If", ["cond_in"], ["x_out"], name="branch", then_branch=then_branch, else_branch=else_branch),
        ],
        "body",
        [tensor("i", [], TensorProto.INT64), tensor("cond_in", [], TensorProto.BOOL), tensor("x_in", None)],
        [tensor("cond_out", [], TensorProto.BOOL), tensor("x_out", None)],
    )
    nodes = [
        helper.make_node("Identity", ["w"], ["w_alias"], name="alias"),
        helper.make_node("Constant", [], ["trips"], name="trips", value_int=3),
        helper.make_node("Constant", [], ["scales"], name="scales", value_floats=[0.5, 2.0]),
        helper.make_node("Loop", ["trips", "", "x"], ["y"], name="loop", body=body),
    ]
    initializers = [weight("w", np.ones((4, 4), np.float32)), weight("big", np.zeros(SMALL_CONSTANT + 1, np.float32))]
    return make_model(nodes, [tensor("x", [1, 4]), tensor("big", [SMALL_CONSTANT + 1])], [tensor("y", None)], initializers)


def test_index_spans_subgraphs_in_iter_graphs_order():
    proto = looped_model()
    index = GraphIndex(proto)
    assert [g.name for g in index.graphs] == [g.name for g in iter_graphs(proto.graph)]
    assert [g.name for g in index.graphs][:2] == ["tiny", "body"] and len(index.graphs) == 4
    assert [n.name for n in index.nodes][:4] == ["alias", "trips", "scales", "loop"]
    assert index.producer["t"].name == "inner_matmul"
    # An outer value read inside a subgraph counts as a use of it.
    assert [n.name for n in index.consumers["w_alias"]] == ["inner_matmul"]
    assert {n.name for n in index.consumers["x_in"]} == {"inner_matmul", "inner_identity"}
    assert list(index.inputs) == ["x"]  # "big" is an initializer listed as an input (IR < 4 style)


def test_scopes_name_the_outermost_control_flow_node():
    index = GraphIndex(looped_model())
    by_name = {node.name: node for node in index.nodes}
    assert index.container(by_name["loop"]) == "" and index.holder(by_name["loop"]) is None
    assert index.holder(by_name["inner_matmul"]).name == "branch"
    assert index.container(by_name["inner_matmul"]) == "Loop"
    body = index.graphs[1]
    assert index.parents[id(body)][1].name == "loop"
    assert sorted(name for name, _ in subgraphs(by_name["branch"])) == ["else_branch", "then_branch"]


def test_constants_follow_identity_and_read_only_small_values():
    index = GraphIndex(looped_model())
    assert index.dims("w_alias") == (4, 4)  # through the Identity a TorchScript export leaves for shared weights
    assert index.value("w_alias") is not None and index.value("big") is None
    assert index.dims("big") == (SMALL_CONSTANT + 1,)
    assert index.scalar("trips") == 3.0 and index.value("trips").dtype == np.int64
    assert index.value("scales").tolist() == [0.5, 2.0]
    assert index.is_constant("trips") and index.is_constant("w") and not index.is_constant("x")
    assert index.constant("y") is None and index.dims("x") is None
