"""GELU fusion: written-out tanh GELUs (jax's order and a PyTorch-like one) become one FastGelu each, outputs equal to
rounding, the fused value keeps its type for onnx shape inference (ORT's quantizer runs it), and a GELU whose inner
value is read elsewhere is left alone; the exact rewrites stage applies folding and fusion together."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from helpers import lcnet_block, make_model, tensor, weight
from ortforge.core.errors import OptionError
from ortforge.core.model import from_proto
from ortforge.core.session import run_outputs
from ortforge.data import FeedSet
from ortforge.transforms.exact_rewrites import applicable_rewrites, exact_rewrites
from ortforge.transforms.fuse_gelu import find_gelus, fuse_gelu
from ortforge.transforms.quantize import QuantizeOptions, quantize


def _gelu_nodes(x: str, out: str, p: str, jax_order: bool) -> list:
    if jax_order:  # as jax2tf writes it (magika): 0.044715 * x, then * x twice
        cube = [helper.make_node("Mul", ["c_cubic", x], [p + "a"], name=p + "1"), helper.make_node("Mul", [x, p + "a"], [p + "b"], name=p + "2"),
                helper.make_node("Mul", [x, p + "b"], [p + "c"], name=p + "3")]  # fmt: skip
    else:  # x * x * x first, the constant last
        cube = [helper.make_node("Mul", [x, x], [p + "a"], name=p + "1"), helper.make_node("Mul", [p + "a", x], [p + "b"], name=p + "2"),
                helper.make_node("Mul", [p + "b", "c_cubic"], [p + "c"], name=p + "3")]  # fmt: skip
    return cube + [
        helper.make_node("Add", [x, p + "c"], [p + "d"], name=p + "4"),
        helper.make_node("Mul", ["c_root", p + "d"] if jax_order else [p + "d", "c_root"], [p + "e"], name=p + "5"),
        helper.make_node("Tanh", [p + "e"], [p + "f"], name=p + "6"),
        helper.make_node("Add", ["c_one", p + "f"], [p + "g"], name=p + "7"),
        helper.make_node("Mul", ["c_half", p + "g"], [p + "h"], name=p + "8") if jax_order else helper.make_node("Mul", [x, "c_half"], [p + "h"], name=p + "8"),
        helper.make_node("Mul", [x, p + "h"], [out], name=p + "9") if jax_order else helper.make_node("Mul", [p + "h", p + "g"], [out], name=p + "9"),
    ]


def _model(leak: bool = False):
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h1"], name="dense1"), *_gelu_nodes("h1", "g1", "jax_", True),
             helper.make_node("MatMul", ["g1", "w2"], ["h2"], name="dense2"), *_gelu_nodes("h2", "y", "torch_", False)]  # fmt: skip
    outputs = [tensor("y", [2, 16])]
    if leak:  # the first GELU's tanh is also a model output: fusing would lose it
        outputs.append(tensor("jax_f", [2, 16]))
    weights = [weight("w1", rng.standard_normal((8, 16)).astype(np.float32)), weight("w2", rng.standard_normal((16, 16)).astype(np.float32) / 4),
               weight("c_cubic", np.array(0.044715, np.float32)), weight("c_root", np.array(np.sqrt(2 / np.pi), np.float32)),
               weight("c_one", np.array(1.0, np.float32)), weight("c_half", np.array(0.5, np.float32))]  # fmt: skip
    return make_model(nodes, [tensor("x", [2, 8])], outputs, weights)


def _feeds() -> FeedSet:
    rng = np.random.default_rng(1)
    return FeedSet([{"x": rng.standard_normal((2, 8)).astype(np.float32) * 2} for _ in range(4)], origin="test", generated=True)


def test_both_orders_fuse_to_fastgelu_with_the_same_outputs_and_a_known_type():
    model = from_proto(_model())
    result = fuse_gelu(model)
    assert result.details == {"gelus": 2, "nodes_removed": 18}
    ops = [n.op_type for n in result.proto.graph.node]
    assert ops == ["MatMul", "FastGelu", "MatMul", "FastGelu"]
    fused = from_proto(result.proto)
    for before, after in zip(run_outputs(model, _feeds()), run_outputs(fused, _feeds())):
        np.testing.assert_allclose(after["y"], before["y"], rtol=1e-5, atol=1e-5)
    assert "g1" in {v.name for v in result.proto.graph.value_info}  # onnx has no schema for FastGelu
    quantized = quantize(fused, QuantizeOptions(mode="static", op_types=("MatMul",)), _feeds().samples)
    assert sum(n.op_type == "QuantizeLinear" for n in quantized.proto.graph.node) >= 2  # both MatMuls, past the fused nodes


def test_a_gelu_whose_inner_value_is_read_elsewhere_is_left_alone():
    proto = _model(leak=True)
    assert [s.x for s in find_gelus(proto)] == ["h2"]


def test_exact_rewrites_apply_what_applies_and_name_it():
    assert applicable_rewrites(_model()) == ["GELU fusion"] and applicable_rewrites(lcnet_block()) == ["affine folding"]
    result = exact_rewrites(from_proto(lcnet_block()))
    assert result.changed and list(result.details) == ["affine folding"]
    assert not exact_rewrites(from_proto(make_model([helper.make_node("Relu", ["x"], ["y"])], [tensor("x", [2])], [tensor("y", [2])]))).changed
    assert not exact_rewrites(from_proto(lcnet_block()), ["GELU fusion"]).changed  # only the rewrites named
    with pytest.raises(OptionError, match="unknown exact rewrite"):
        exact_rewrites(from_proto(lcnet_block()), ["constant folding"])


def test_a_tanh_that_is_not_gelus_is_left_alone():
    from onnx import numpy_helper

    proto = _model()
    for index, constant in enumerate(proto.graph.initializer):
        if constant.name == "c_cubic":  # 0.05 instead of 0.044715: another curve, not GELU's approximation
            proto.graph.initializer[index].CopyFrom(numpy_helper.from_array(np.array(0.05, np.float32), "c_cubic"))
    assert find_gelus(proto) == [] and not fuse_gelu(from_proto(proto)).changed
