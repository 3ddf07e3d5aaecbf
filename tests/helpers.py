"""Tiny models built in code for the tests (IR 10: this onnx defaults to an IR newer than ORT loads)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

IR_VERSION = 10
OPSET = 17


def make_model(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    initializers: list[onnx.TensorProto] | None = None,
    *,
    opset: int = OPSET,
    ir_version: int = IR_VERSION,
    extra_opsets: dict[str, int] | None = None,
) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "tiny", inputs, outputs, initializers or [])
    imports = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in (extra_opsets or {}).items()]
    model = helper.make_model(graph, opset_imports=imports, producer_name="ortforge-tests")
    model.ir_version = ir_version
    return model


def tensor(name: str, shape: list, elem_type: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, shape)


def weight(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(array, name)


def linear_model(features: int = 8, batch: int | str = "batch", seed: int = 0) -> onnx.ModelProto:
    """y = relu(x @ W + b): one MatMul, one Add, one Relu."""
    rng = np.random.default_rng(seed)
    return make_model(
        [
            helper.make_node("MatMul", ["x", "W"], ["h"], name="matmul"),
            helper.make_node("Add", ["h", "b"], ["z"], name="add"),
            helper.make_node("Relu", ["z"], ["y"], name="relu"),
        ],
        [tensor("x", [batch, features])],
        [tensor("y", [batch, features])],
        [weight("W", rng.standard_normal((features, features)).astype(np.float32)), weight("b", np.zeros(features, np.float32))],
    )


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save_model(model, str(path))
    return path


def attention_block(width: int = 16, hidden: int = 32) -> onnx.ModelProto:
    """One pre-softmax-scaled self-attention layer, LayerNorm and a two-layer MLP, in primitive ops."""
    rng = np.random.default_rng(0)

    def w(name: str, *shape: int) -> onnx.TensorProto:
        return weight(name, (0.1 * rng.standard_normal(shape)).astype(np.float32))

    nodes = [
        helper.make_node("MatMul", ["x", "Wq"], ["q"], name="q_proj"),
        helper.make_node("MatMul", ["x", "Wk"], ["k"], name="k_proj"),
        helper.make_node("MatMul", ["x", "Wv"], ["v"], name="v_proj"),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["scores"], name="qk"),
        helper.make_node("Mul", ["scores", "scale"], ["scaled"]),
        helper.make_node("Softmax", ["scaled"], ["probs"], axis=-1),
        helper.make_node("MatMul", ["probs", "v"], ["context"], name="av"),
        helper.make_node("MatMul", ["context", "Wo"], ["attn"], name="o_proj"),
        helper.make_node("Add", ["x", "attn"], ["res"]),
        helper.make_node("LayerNormalization", ["res", "gamma", "beta"], ["normed"], axis=-1),
        helper.make_node("MatMul", ["normed", "W1"], ["h"], name="fc1"),
        helper.make_node("Relu", ["h"], ["hr"]),
        helper.make_node("MatMul", ["hr", "W2"], ["y"], name="fc2"),
    ]
    initializers = [
        w("Wq", width, width), w("Wk", width, width), w("Wv", width, width), w("Wo", width, width),
        weight("scale", np.array(0.25, np.float32)), weight("gamma", np.ones(width, np.float32)), weight("beta", np.zeros(width, np.float32)),
        w("W1", width, hidden), w("W2", hidden, width),
    ]
    return make_model(nodes, [tensor("x", ["batch", "seq", width])], [tensor("y", None)], initializers)
