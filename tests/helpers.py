"""Tiny models built in code for the tests (IR 10: this onnx defaults to an IR newer than ORT loads).

Every builder that more than one test file uses lives here; a builder one file uses stays in that file.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ortforge.data import FeedSet

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


def conv_net(opset: int = 17, ir_version: int = 10):
    """Conv, Relu, Conv, pooling and a Gemm on x [1, 3, 16, 16]: the small CNN most commands are tried on."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("GlobalAveragePool", ["c2"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], transB=1, name="fc"),
    ]
    weights = [
        weight("w1", rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3),
        weight("b1", rng.standard_normal(8).astype(np.float32) * 0.1),
        weight("w2", rng.standard_normal((8, 8, 3, 3)).astype(np.float32) * 0.2),
        weight("b2", rng.standard_normal(8).astype(np.float32) * 0.1),
        weight("wf", rng.standard_normal((10, 8)).astype(np.float32)),
        weight("bf", np.zeros(10, np.float32)),
    ]
    return make_model(nodes, [tensor("x", [1, 3, 16, 16])], [tensor("y", [1, 10])], weights, opset=opset, ir_version=ir_version)


def small_cnn():
    """Conv + BatchNorm + Relu: the layout (NCHWc) and fusion passes all have something to do."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("BatchNormalization", ["c1", "s", "b", "m", "v"], ["n1"], name="bn1"),
        helper.make_node("Relu", ["n1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["y"], pads=[1, 1, 1, 1], name="conv2"),
    ]
    weights = [
        weight("w1", rng.standard_normal((16, 3, 3, 3)).astype(np.float32)),
        weight("w2", rng.standard_normal((16, 16, 3, 3)).astype(np.float32) / 10),
        weight("s", np.ones(16, np.float32)),
        weight("b", np.zeros(16, np.float32)),
        weight("m", np.full(16, 0.1, np.float32)),
        weight("v", np.ones(16, np.float32)),
    ]
    return make_model(nodes, [tensor("x", ["N", 3, 16, 16])], [tensor("y", ["N", 16, 16, 16])], weights)


def wide_range_model():
    """h has one channel ~1e4 wide that the next MatMul barely uses: per-tensor int8 on h wipes out the rest."""
    rng = np.random.default_rng(0)
    scale = np.ones(16, np.float32)
    scale[0] = 1e4
    w2 = rng.standard_normal((16, 4)).astype(np.float32)
    w2[0, :] = 1e-5
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["a"], name="first"),
        helper.make_node("Mul", ["a", "s"], ["h"], name="widen"),
        helper.make_node("MatMul", ["h", "w2"], ["z"], name="narrow"),
        helper.make_node("Add", ["z", "b"], ["y"], name="bias"),
    ]
    weights = [weight("w1", rng.standard_normal((8, 16)).astype(np.float32)), weight("s", scale), weight("w2", w2), weight("b", np.zeros(4, np.float32))]
    return make_model(nodes, [tensor("x", [1, 8])], [tensor("y", [1, 4])], weights)


def wide_range_feeds(count=16, seed=0):
    """Samples for wide_range_model's input x [1, 8]."""
    rng = np.random.default_rng(seed)
    return FeedSet([{"x": rng.standard_normal((1, 8)).astype(np.float32)} for _ in range(count)], "test", generated=False)


def onnxruntime_version():
    import onnxruntime

    return onnxruntime.__version__


# The tiny BERT encoder: fusion tests and the optimize command's fusion step.

HIDDEN, HEADS, VOCAB, FFN, LAYERS = 32, 4, 100, 64, 2
HEAD_SIZE = HIDDEN // HEADS


class _Builder:
    """Collects nodes and weights; names nodes the way the chosen exporter does."""

    def __init__(self, style: str, seed: int = 0) -> None:
        self.style = style
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.value_info: list[onnx.ValueInfoProto] = []
        self.weights: list[onnx.TensorProto] = []
        self.count = 0

    def node(self, op: str, inputs: list[str], scope: str = "", **attributes) -> str:
        self.count += 1
        output = f"{scope}/{op}_{self.count}_output_0" if self.style == "torchscript" else f"val_{self.count}"
        name = f"{scope}/{op}_{self.count}" if self.style == "torchscript" else f"node_{op}_{self.count}"
        node = helper.make_node(op, inputs, [output], name=name, **attributes)
        if self.style == "dynamo":  # torch.export leaves these on every node
            node.metadata_props.add(key="namespace", value=f"model{scope}")
            node.metadata_props.add(key="pkg.torch.onnx.class_hierarchy", value="['Model']")
        self.nodes.append(node)
        return output

    def const(self, name: str, array: np.ndarray) -> str:
        if all(w.name != name for w in self.weights):  # shared constants are declared once
            self.weights.append(weight(name, array))
        return name

    def random(self, name: str, *shape: int) -> str:
        return self.const(name, (0.2 * self.rng.standard_normal(shape)).astype(np.float32))


def bert_encoder(style: str = "torchscript", reshape: str = "concat") -> onnx.ModelProto:
    """A 2-layer BERT encoder shaped like an exporter's output, so the fusers recognise it.

    reshape 'concat' splits heads with [B, S, -1, head_size] computed at run time, as transformers 5
    exports do (ORT cannot read the heads from it); 'constant' uses a [0, 0, heads, head_size] weight.
    """
    b = _Builder(style)
    hidden = _embeddings(b)
    mask = _additive_mask(b)
    for layer in range(LAYERS):
        hidden = _encoder_layer(b, hidden, mask, layer, reshape)
    b.nodes.append(helper.make_node("Identity", [hidden], ["last_hidden_state"], name="output"))
    ids = ["input_ids", "attention_mask", "token_type_ids"]
    model = helper.make_model(
        helper.make_graph(b.nodes, "tiny_bert", [tensor(n, ["batch", "seq"], TensorProto.INT64) for n in ids],
                          [tensor("last_hidden_state", ["batch", "seq", HIDDEN])], b.weights),
        opset_imports=[helper.make_opsetid("", 17 if style == "torchscript" else 18)],
        producer_name="pytorch",
    )
    model.graph.value_info.extend(b.value_info)
    model.ir_version = 8 if style == "torchscript" else 10
    return model


def _embeddings(b: _Builder) -> str:
    scope = "/embeddings"
    words = b.node("Gather", [b.random("embeddings.word_embeddings.weight", VOCAB, HIDDEN), "input_ids"], scope)
    types = b.node("Gather", [b.random("embeddings.token_type_embeddings.weight", 2, HIDDEN), "token_type_ids"], scope)
    seq = b.node("Gather", [b.node("Shape", ["input_ids"], scope), b.const("one", np.array(1, np.int64))], scope, axis=0)
    seq_1d = b.node("Unsqueeze", [seq, b.const("axes0", np.array([0], np.int64))], scope)
    positions = b.node("Slice", [b.const("embeddings.position_ids", np.arange(64, dtype=np.int64)[None]),
                                 b.const("zero_1d", np.array([0], np.int64)), seq_1d,
                                 b.const("one_1d", np.array([1], np.int64)), "one_1d"], scope)
    pos = b.node("Gather", [b.random("embeddings.position_embeddings.weight", 64, HIDDEN), positions], scope)
    if b.style == "dynamo":
        b.value_info.append(tensor(positions, [1, "seq"], TensorProto.INT64))
    summed = b.node("Add", [b.node("Add", [words, types], scope), pos], scope)
    return _layer_norm(b, summed, "embeddings.LayerNorm", scope)


def _layer_norm(b: _Builder, x: str, prefix: str, scope: str) -> str:
    gamma = b.const(f"{prefix}.weight", (1 + 0.1 * b.rng.standard_normal(HIDDEN)).astype(np.float32))
    beta = b.random(f"{prefix}.bias", HIDDEN)
    return b.node("LayerNormalization", [x, gamma, beta], scope, axis=-1, epsilon=1e-12)


def _additive_mask(b: _Builder) -> str:
    """(1 - mask) * -10000 in TorchScript style; Where(mask, 0, lowest) in dynamo style."""
    if b.style == "torchscript":
        expanded = b.node("Unsqueeze", [b.node("Unsqueeze", ["attention_mask", b.const("axes1", np.array([1], np.int64))]),
                                        b.const("axes2", np.array([2], np.int64))])
        inverted = b.node("Sub", [b.const("one_f", np.array(1.0, np.float32)), b.node("Cast", [expanded], to=TensorProto.FLOAT)])
        return b.node("Mul", [inverted, b.const("mask_value", np.array(-10000.0, np.float32))])
    keep = b.node("Unsqueeze", [b.node("Cast", ["attention_mask"], to=TensorProto.BOOL), b.const("axes12", np.array([1, 2], np.int64))])
    lowest = b.const("lowest", np.array(np.finfo(np.float32).min, np.float32))
    return b.node("Where", [keep, b.const("zero_f", np.array(0.0, np.float32)), lowest])


def _encoder_layer(b: _Builder, x: str, mask: str, layer: int, reshape: str) -> str:
    scope = f"/encoder/layer.{layer}"
    prefix = f"encoder.layer.{layer}"
    split = _head_shape(b, x, scope, reshape, [HEADS, HEAD_SIZE] if reshape == "constant" else [-1, HEAD_SIZE])
    # dynamo's Reshape keeps zeros literally (allowzero); its shapes never contain 0.
    allowzero = {"allowzero": 1} if b.style == "dynamo" and reshape == "concat" else {}
    q = _heads(b, _linear(b, x, f"{prefix}.attention.self.query", HIDDEN, HIDDEN, scope), split, [0, 2, 1, 3], scope, allowzero)
    k = _heads(b, _linear(b, x, f"{prefix}.attention.self.key", HIDDEN, HIDDEN, scope), split, [0, 2, 3, 1], scope, allowzero)
    v = _heads(b, _linear(b, x, f"{prefix}.attention.self.value", HIDDEN, HIDDEN, scope), split, [0, 2, 1, 3], scope, allowzero)
    scores = b.node("MatMul", [q, k], scope)
    if b.style == "torchscript":
        scaled = b.node("Div", [scores, b.const(f"{prefix}.sqrt_d", np.array(math.sqrt(HEAD_SIZE), np.float32))], scope)
    else:
        scaled = b.node("Mul", [scores, b.const(f"{prefix}.inv_sqrt_d", np.array(1 / math.sqrt(HEAD_SIZE), np.float32))], scope)
    probs = b.node("Softmax", [b.node("Add", [scaled, mask], scope)], scope, axis=-1)
    context = b.node("Transpose", [b.node("MatMul", [probs, v], scope)], scope, perm=[0, 2, 1, 3])
    merged = b.node("Reshape", [context, _head_shape(b, x, scope, reshape, [HIDDEN] if reshape == "constant" else [-1])], scope)
    if b.style == "dynamo":
        b.value_info.append(tensor(merged, ["batch", "seq", HIDDEN]))
    attention = _linear(b, merged, f"{prefix}.attention.output.dense", HIDDEN, HIDDEN, scope)
    x = _layer_norm(b, b.node("Add", [attention, x], scope), f"{prefix}.attention.output.LayerNorm", scope)
    hidden = _linear(b, x, f"{prefix}.intermediate.dense", HIDDEN, FFN, scope)
    out = _linear(b, _gelu(b, hidden, scope), f"{prefix}.output.dense", FFN, HIDDEN, scope)
    return _layer_norm(b, b.node("Add", [out, x], scope), f"{prefix}.output.LayerNorm", scope)


def _head_shape(b: _Builder, x: str, scope: str, reshape: str, tail: list[int]) -> str:
    """[0, 0, *tail] as a weight, or [batch, seq, *tail] computed from the input's shape."""
    if reshape == "constant":
        return b.const(f"{scope}/shape_{len(tail)}_{b.count}", np.array([0, 0, *tail], np.int64))
    if b.style == "torchscript":
        dims = []
        for axis in (0, 1):
            dim = b.node("Gather", [b.node("Shape", [x], scope), b.const(f"axis{axis}", np.array(axis, np.int64))], scope, axis=0)
            dims.append(b.node("Unsqueeze", [dim, "axes0"], scope))
    else:
        dims = [b.node("Shape", ["input_ids"], scope, start=axis, end=axis + 1) for axis in (0, 1)]
    parts = [b.const(f"{scope}/tail_{i}_{b.count}", np.array([value], np.int64)) for i, value in enumerate(tail)]
    return b.node("Concat", dims + parts, scope, axis=0)


def _heads(b: _Builder, x: str, shape: str, perm: list[int], scope: str, attributes: dict) -> str:
    reshaped = b.node("Reshape", [x, shape], scope, **attributes)
    if b.style == "dynamo":  # torch.export annotates every value's shape; the heads are known there
        b.value_info.append(tensor(reshaped, ["batch", "seq", HEADS, HEAD_SIZE]))
    return b.node("Transpose", [reshaped], scope, perm=perm)


def _linear(b: _Builder, x: str, prefix: str, width_in: int, width_out: int, scope: str) -> str:
    product = b.node("MatMul", [x, b.random(f"{prefix}.weight", width_in, width_out)], scope)
    bias = b.random(f"{prefix}.bias", width_out)
    # TorchScript puts the bias first, dynamo second; both fusers must cope.
    return b.node("Add", [bias, product] if b.style == "torchscript" else [product, bias], scope)


def _gelu(b: _Builder, x: str, scope: str) -> str:
    """Exact GELU spelled out as the exporters write it: x * 0.5 * (1 + erf(x / sqrt(2)))."""
    erf = b.node("Erf", [b.node("Div", [x, b.const("sqrt2", np.array(math.sqrt(2), np.float32))], scope)], scope)
    shifted = b.node("Add", [erf, b.const("one_gelu", np.array(1.0, np.float32))], scope)
    if b.style == "torchscript":
        return b.node("Mul", [b.node("Mul", [x, shifted], scope), b.const("half", np.array(0.5, np.float32))], scope)
    return b.node("Mul", [x, b.node("Mul", [b.const("half", np.array(0.5, np.float32)), shifted], scope)], scope)


PROGRESS_LINE = re.compile(r"^\[\d+:\d\d(:\d\d)?\] +\d+% ")  # away from a terminal, progress prints such lines
SETTINGS_LINE = re.compile(r"^[a-z][a-z0-9-]*: ")  # "tune: model ..., objective latency, ...", once work starts


def the_error_line(stderr: str) -> str:
    """The one error line of a failed command: the last line, the only one besides progress and the settings line."""
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert lines and "Traceback" not in stderr, stderr
    *before, last = lines
    assert all(PROGRESS_LINE.match(line) or (SETTINGS_LINE.match(line) and "error" not in line) for line in before), stderr
    assert last.startswith("ortforge: error:") or last.startswith("ortforge:"), stderr
    return last


LCNET_CHANNELS = 6


def lcnet_block():
    """PP-LCNet's pattern as Paddle exports it (shape-[1] constants, the Mul's constant first), with a grouped Conv,
    a Conv without bias, a per-channel affine and a padded Conv after an Add (which must keep its Add)."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="stem"),  # no bias
        helper.make_node("Mul", ["k1", "c1"], ["m1"], name="lab1_mul"),
        helper.make_node("Add", ["m1", "d1"], ["a1"], name="lab1_add"),
        helper.make_node("HardSigmoid", ["a1"], ["h1"], name="act"),
        helper.make_node("Mul", ["h1", "k2"], ["m2"], name="lab2_mul"),
        helper.make_node("Add", ["m2", "d2"], ["a2"], name="lab2_add"),
        helper.make_node("Conv", ["a2", "w2", "b2"], ["c2"], group=3, name="grouped_pointwise"),  # pads nothing: both fold
        helper.make_node("Mul", ["c2", "k3"], ["m3"], name="per_channel_mul"),  # [1, C, 1, 1]
        helper.make_node("Relu", ["m3"], ["r3"], name="relu"),
        helper.make_node("Mul", ["r3", "k4"], ["m4"], name="before_padded_mul"),
        helper.make_node("Add", ["m4", "d4"], ["a4"], name="before_padded_add"),  # stays: the Conv after it pads
        helper.make_node("Conv", ["a4", "w3", "b3"], ["y"], pads=[1, 1, 1, 1], name="padded"),
    ]
    weights = [
        weight("w1", rng.standard_normal((LCNET_CHANNELS, 3, 3, 3)).astype(np.float32)),
        weight("k1", np.array([1.7], np.float32)), weight("d1", np.array([0.3], np.float32)),
        weight("k2", np.array([0.6], np.float32)), weight("d2", np.array([-0.2], np.float32)),
        weight("w2", rng.standard_normal((LCNET_CHANNELS, 2, 1, 1)).astype(np.float32)), weight("b2", rng.standard_normal(LCNET_CHANNELS).astype(np.float32)),
        weight("k3", rng.uniform(0.5, 2, (1, LCNET_CHANNELS, 1, 1)).astype(np.float32)),
        weight("k4", np.array([1.3], np.float32)), weight("d4", np.array([0.5], np.float32)),
        weight("w3", rng.standard_normal((4, LCNET_CHANNELS, 3, 3)).astype(np.float32)), weight("b3", np.zeros(4, np.float32)),
    ]  # fmt: skip
    return make_model(nodes, [tensor("x", [1, 3, 10, 10])], [tensor("y", [1, 4, 10, 10])], weights)


# The tiny decoder with a KV cache: decoder inspection, generated inputs and the generation loop.

DECODER_VOCAB, DECODER_HIDDEN, DECODER_HEADS, DECODER_LAYERS = 48, 64, 4, 2
DECODER_HEAD_SIZE = DECODER_HIDDEN // DECODER_HEADS


def tiny_decoder(seed: int = 0, peaked: bool = True) -> onnx.ModelProto:
    """A Llama-shaped decoder in ops ORT runs: token embedding, per layer multi-head attention over past + new keys
    (decomposed: the KV cache is a Concat, the causal mask a Trilu), a ReLU MLP, a SimplifiedLayerNormalization (ORT's
    RMSNorm in the default domain, unknown to onnx's checker) and an LM head. Inputs and outputs follow the model
    builder's names: input_ids, attention_mask, position_ids, past_key_values.N.key/value -> logits, present.N.key/value.
    `peaked`: an LM head that favours one next token per token (next = 7 * token + 3 mod vocab), so greedy decoding
    and next-token agreement mean something."""
    rng = np.random.default_rng(seed)
    heads, size, hidden = DECODER_HEADS, DECODER_HEAD_SIZE, DECODER_HIDDEN
    nodes: list[onnx.NodeProto] = []
    weights = [
        weight("embed", rng.standard_normal((DECODER_VOCAB, hidden)).astype(np.float32)),
        weight("positions", (0.1 * rng.standard_normal((256, hidden))).astype(np.float32)),
        weight("heads_shape", np.array([0, 0, heads, size], np.int64)),
        weight("hidden_shape", np.array([0, 0, hidden], np.int64)),
        weight("scale", np.array(1 / math.sqrt(size), np.float32)),
        weight("one", np.array(1, np.int64)), weight("axis1", np.array([1], np.int64)),
        weight("minus_big", np.array(-1e4, np.float32)), weight("one_f", np.array(1.0, np.float32)),
        weight("norm_scale", np.ones(hidden, np.float32)),
    ]  # fmt: skip

    def add(op: str, inputs: list[str], output: str, **attributes) -> str:
        nodes.append(helper.make_node(op, inputs, [output], name=f"{op}_{len(nodes)}", **attributes))
        return output

    token_vectors = add("Gather", ["embed", "input_ids"], "tok")
    x = add("Add", [token_vectors, add("Gather", ["positions", "position_ids"], "pos")], "x0")
    # Additive mask [batch, 1, seq, total]: padding from attention_mask, causality from a Trilu over [seq, total].
    seq = add("Gather", [add("Shape", ["input_ids"], "ids_shape"), "axis1"], "seq")
    total = add("Gather", [add("Shape", ["attention_mask"], "mask_shape"), "axis1"], "total")
    grid = add("ConstantOfShape", [add("Concat", [seq, total], "grid_shape", axis=0)], "grid", value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0]))
    offset = add("Add", [add("Sub", [add("Squeeze", [total], "total_s"), add("Squeeze", [seq], "seq_s")], "past_len"), "one"], "offset")
    causal = add("Mul", [add("Trilu", [grid, offset], "future", upper=1), "minus_big"], "causal")
    padding = add("Mul", [add("Sub", ["one_f", add("Cast", ["attention_mask"], "mask_f", to=TensorProto.FLOAT)], "masked"), "minus_big"], "padding")
    padding = add("Unsqueeze", [padding, weights_axes(weights, "pad_axes", [1, 2])], "padding4")
    mask = add("Add", [causal, padding], "mask")
    for layer in range(DECODER_LAYERS):
        p = f"l{layer}_"
        for part in ("q", "k", "v", "o"):  # peaked: attention and MLP add little to the residual stream
            gain = 0.05 if peaked and part == "o" else 1.0
            weights.append(weight(p + part, (gain * rng.standard_normal((hidden, hidden)) / math.sqrt(hidden)).astype(np.float32)))
        split = [add("Transpose", [add("Reshape", [add("MatMul", [x, p + part], p + part + "_proj"), "heads_shape"], p + part + "_4d")],
                     p + part + "_bnsh", perm=[0, 2, 1, 3]) for part in ("q", "k", "v")]  # fmt: skip
        keys = add("Concat", [f"past_key_values.{layer}.key", split[1]], f"present.{layer}.key", axis=2)
        values = add("Concat", [f"past_key_values.{layer}.value", split[2]], f"present.{layer}.value", axis=2)
        scores = add("Mul", [add("MatMul", [split[0], add("Transpose", [keys], p + "kt", perm=[0, 1, 3, 2])], p + "qk"), "scale"], p + "scores")
        probs = add("Softmax", [add("Add", [scores, mask], p + "masked")], p + "probs", axis=-1)
        context = add("Reshape", [add("Transpose", [add("MatMul", [probs, values], p + "ctx")], p + "ctx_t", perm=[0, 2, 1, 3]), "hidden_shape"], p + "ctx_h")
        x = add("Add", [x, add("MatMul", [context, p + "o"], p + "attn")], p + "res1")
        weights.append(weight(p + "up", (rng.standard_normal((hidden, 2 * hidden)) / math.sqrt(hidden)).astype(np.float32)))
        gain = 0.05 if peaked else 1.0
        weights.append(weight(p + "down", (gain * rng.standard_normal((2 * hidden, hidden)) / math.sqrt(2 * hidden)).astype(np.float32)))
        x = add("Add", [x, add("MatMul", [add("Relu", [add("MatMul", [x, p + "up"], p + "up_o")], p + "act"), p + "down"], p + "mlp")], p + "res2")
    normed = add("SimplifiedLayerNormalization", [x, "norm_scale"], "normed", axis=-1, epsilon=1e-5)
    head = rng.standard_normal((hidden, DECODER_VOCAB)).astype(np.float32)
    if peaked:  # the LM head reads the token embedding back: logits favour (7 * token + 3) mod vocab by a wide margin
        embed = numpy_helper.to_array(weights[0])
        normed_embed = embed / np.sqrt((embed**2).mean(axis=1, keepdims=True) + 1e-5)
        target = (7 * np.arange(DECODER_VOCAB) + 3) % DECODER_VOCAB
        head = 0.1 * head + 6.0 * np.linalg.pinv(normed_embed) @ np.eye(DECODER_VOCAB, dtype=np.float32)[target]
        nodes[1].input[0] = "zero_positions"  # no position signal: the next token depends on this token alone
        weights.append(weight("zero_positions", np.zeros((256, hidden), np.float32)))
    weights.append(weight("lm_head", head.astype(np.float32)))
    add("MatMul", [normed, "lm_head"], "logits")
    cache = [tensor(f"past_key_values.{i}.{part}", ["batch", heads, "past_sequence_length", size])
             for i in range(DECODER_LAYERS) for part in ("key", "value")]  # fmt: skip
    presents = [tensor(f"present.{i}.{part}", ["batch", heads, "total_sequence_length", size]) for i in range(DECODER_LAYERS) for part in ("key", "value")]
    inputs = [tensor("input_ids", ["batch", "sequence_length"], TensorProto.INT64), tensor("attention_mask", ["batch", "total_sequence_length"], TensorProto.INT64),
              tensor("position_ids", ["batch", "sequence_length"], TensorProto.INT64), *cache]  # fmt: skip
    return make_model(nodes, inputs, [tensor("logits", ["batch", "sequence_length", DECODER_VOCAB]), *presents], weights)


def weights_axes(weights: list[onnx.TensorProto], name: str, axes: list[int]) -> str:
    weights.append(weight(name, np.array(axes, np.int64)))
    return name


def eager_llama_decoder(seed: int = 0, kv_heads: int = 2, current: bool = False, bias: bool = False, head_norm: bool = False,
                        phi3: bool = False, rotary_dim: int = 16) -> onnx.ModelProto:  # fmt: skip
    """One Llama layer as a TorchScript export of Hugging Face's eager attention writes it (transformers 4.3x-4.4x):
    RMSNorm as Pow/ReduceMean/Sqrt/Div, rotary embedding computed from position_ids (inv_freq MatMul, Cos/Sin,
    rotate_half by Slices whose bounds come from Shape), reshapes built from Shape/Gather, the padding mask expanded
    (Unsqueeze/Expand/Sub/Where) plus a causal mask, scores divided by sqrt(head size), past keys/values Concat-ed.
    The form ORT's optimizer fuses into RotaryEmbedding + MultiHeadAttention (model type gpt2). `current`: as
    transformers 5 writes it, scores times a constant and float Casts around the Softmax; `kv_heads` below the 2 heads
    (1): grouped keys and values repeated by repeat_kv (Unsqueeze, Expand, Reshape); `bias`: q/k/v projections with
    biases, as Qwen2 has them; `head_norm`: q and k RMS-normalized per head before rotary, as Qwen3 does; `phi3`: one
    qkv projection split by Slices, and rotary written over the first `rotary_dim` of each head (Phi-3's form, the rest
    passed through; all 16 by default, as Phi-3-mini)."""
    rng = np.random.default_rng(seed)
    hidden, heads, size, vocab = 32, 2, 16, 11
    nodes: list[onnx.NodeProto] = []
    weights: list[onnx.TensorProto] = []

    def const(name: str, value) -> str:
        weights.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(op_type: str, inputs: list[str], output: str, **attrs) -> str:
        nodes.append(helper.make_node(op_type, inputs, [output], name=f"{output}_node", **attrs))
        return output

    i64, f32 = (lambda v: np.array(v, np.int64)), (lambda v: np.array(v, np.float32))
    for name, value in {"ax0": i64([0]), "ax1": i64([1]), "ax2": i64([2]), "ax3": i64([3]), "ax01": i64([0, 1]), "two_f": f32(2.0),
                        "one_f": f32(1.0), "eps": f32(1e-6), "sqrt_h": f32(np.sqrt(size)), "idx0": i64(0), "idx1": i64(1), "idx3": i64(3),
                        "two_i": i64(2), "nh": i64([heads]), "hs": i64([size]), "hid": i64([hidden]), "one_i": i64([1]), "big": i64([2**62]),
                        "idx2": i64(2), "nkv": i64([kv_heads]), "rep": i64([heads // kv_heads]), "scale_f": f32(1 / np.sqrt(size)),
                        "fmin": f32(np.finfo(np.float32).min), "zero_f": f32(0.0), "zero_i": i64(0), "one_s": i64(1)}.items():  # fmt: skip
        const(name, value)

    def rms_norm(x: str, tag: str, width: int = hidden) -> str:
        mean = op("ReduceMean", [op("Pow", [x, "two_f"], f"{tag}_pow")], f"{tag}_mean", axes=[-1], keepdims=1)
        inverse = op("Div", ["one_f", op("Sqrt", [op("Add", [mean, "eps"], f"{tag}_add")], f"{tag}_sqrt")], f"{tag}_rsqrt")
        return op("Mul", [const(f"{tag}_w", rng.standard_normal(width).astype(np.float32)), op("Mul", [x, inverse], f"{tag}_norm")], f"{tag}_out")

    embeds = op("Gather", [const("embed", rng.standard_normal((vocab, hidden)).astype(np.float32)), "input_ids"], "inputs_embeds")
    root = rms_norm(embeds, "ln1")
    shape = op("Shape", [root], "root_shape")
    batch = op("Unsqueeze", [op("Gather", [shape, "idx0"], "g_b", axis=0), "ax0"], "u_b")
    seq = op("Unsqueeze", [op("Gather", [shape, "idx1"], "g_s", axis=0), "ax0"], "u_s")
    bsnh, bsd = op("Concat", [batch, seq, "nh", "hs"], "bsnh", axis=0), op("Concat", [batch, seq, "hid"], "bsd", axis=0)
    inv_freq = const("inv_freq", (1.0 / 10000 ** (np.arange(0, rotary_dim, 2) / rotary_dim)).astype(np.float32).reshape(1, rotary_dim // 2, 1))
    positions = op("Cast", [op("Unsqueeze", ["position_ids", "ax1"], "pos_u")], "pos_f", to=TensorProto.FLOAT)
    freqs = op("Transpose", [op("MatMul", [inv_freq, positions], "freqs_mm")], "freqs", perm=[0, 2, 1])
    angles = op("Concat", [freqs, freqs], "emb", axis=-1)
    cos = op("Unsqueeze", [op("Mul", [op("Cos", [angles], "cos0"), "one_f"], "cos1"), "ax1"], "cos")
    sin = op("Unsqueeze", [op("Mul", [op("Sin", [angles], "sin0"), "one_f"], "sin1"), "ax1"], "sin")

    widths = {"q": heads * size, "k": kv_heads * size, "v": kv_heads * size}
    if phi3:  # one projection, then q, k and v sliced from it
        packed = op("MatMul", [root, const("qkv_w", (0.3 * rng.standard_normal((hidden, sum(widths.values())))).astype(np.float32))], "qkv_proj")
        bounds = {"q": (0, widths["q"]), "k": (widths["q"], widths["q"] + widths["k"]), "v": (widths["q"] + widths["k"], 2**62)}

    def split_heads(tag: str, count: int = heads) -> str:  # MatMul -> Reshape (B, S, N, H) -> Transpose (B, N, S, H)
        if phi3:
            start, end = (const(f"{tag}_{edge}", i64([bound])) for edge, bound in zip(("start", "end"), bounds[tag]))
            projected = op("Slice", [packed, start, end, "ax2"], f"{tag}_proj")
        else:
            projected = op("MatMul", [root, const(f"{tag}_w", (0.3 * rng.standard_normal((hidden, widths[tag]))).astype(np.float32))], f"{tag}_proj")
        if bias:
            projected = op("Add", [const(f"{tag}_b", rng.standard_normal(count * size).astype(np.float32)), projected], f"{tag}_biased")
        shape = bsnh if count == heads else op("Concat", [batch, seq, "nkv", "hs"], f"{tag}_bskh", axis=0)
        split = op("Reshape", [projected, shape], f"{tag}_r")
        if head_norm and tag in ("q", "k"):
            split = rms_norm(split, f"{tag}_headnorm", size)
        return op("Transpose", [split], f"{tag}_t", perm=[0, 2, 1, 3])

    def repeat_kv(cache: str, tag: str) -> str:  # (B, KV, T, H) -> (B, KV, rep, T, H) -> (B, N, T, H)
        if kv_heads == heads:
            return cache
        length = op("Unsqueeze", [op("Gather", [op("Shape", [cache], f"{tag}_sh5"), "idx2"], f"{tag}_len", axis=0), "ax0"], f"{tag}_len_u")
        expanded = op("Expand", [op("Unsqueeze", [cache, "ax2"], f"{tag}_u5"), op("Concat", [batch, "nkv", "rep", length, "hs"], f"{tag}_shape5", axis=0)],
                      f"{tag}_expand")  # fmt: skip
        return op("Reshape", [expanded, op("Concat", [batch, "nh", length, "hs"], f"{tag}_shape4", axis=0)], f"{tag}_repeated")

    def rotary(x: str, tag: str) -> str:  # x * cos + rotate_half(x) * sin, over the first rotary_dim of each head
        if not phi3:
            return rotate(x, tag)
        rotary_end = const(f"{tag}_rotary_dim", i64([rotary_dim]))
        head, rest = op("Slice", [x, "ax0", rotary_end, "ax3"], f"{tag}_head"), op("Slice", [x, rotary_end, "big", "ax3"], f"{tag}_rest")
        return op("Concat", [rotate(head, f"{tag}_head"), rest], f"{tag}_partial", axis=-1)

    def rotate(x: str, tag: str) -> str:
        half = op("Unsqueeze", [op("Div", [op("Gather", [op("Shape", [x], f"{tag}_sh"), "idx3"], f"{tag}_g", axis=0), "two_i"], f"{tag}_div"), "ax0"], f"{tag}_half")
        first, second = op("Slice", [x, "ax0", half, "ax3"], f"{tag}_x1"), op("Slice", [x, half, "big", "ax3"], f"{tag}_x2")
        rotated = op("Concat", [op("Neg", [second], f"{tag}_neg"), first], f"{tag}_rot", axis=-1)
        return op("Add", [op("Mul", [x, cos], f"{tag}_xcos"), op("Mul", [rotated, sin], f"{tag}_rsin")], f"{tag}_emb")

    query = rotary(split_heads("q"), "q")
    key = op("Concat", ["past_key_values.0.key", rotary(split_heads("k", kv_heads), "k")], "present.0.key", axis=2)
    value = op("Concat", ["past_key_values.0.value", split_heads("v", kv_heads)], "present.0.value", axis=2)
    total = op("Unsqueeze", [op("Gather", [op("Shape", ["attention_mask"], "m_shape"), "idx1"], "g_t", axis=0), "ax0"], "u_t")
    expanded = op("Expand", [op("Unsqueeze", [op("Unsqueeze", ["attention_mask", "ax1"], "m_u1"), "ax2"], "m_u2"),
                             op("Concat", [batch, "one_i", seq, total], "m_bst", axis=0)], "m_exp")  # fmt: skip
    inverted = op("Sub", ["one_f", op("Cast", [expanded], "m_cast", to=TensorProto.FLOAT)], "m_inv")
    padding = op("Where", [op("Cast", [inverted], "m_bool", to=TensorProto.BOOL), "fmin", inverted], "m_pad")
    seq_scalar, total_scalar = op("Squeeze", [seq], "s_sc"), op("Squeeze", [total], "t_sc")
    query_at = op("Add", [op("Range", ["zero_i", seq_scalar, "one_s"], "qi0"), op("Sub", [total_scalar, seq_scalar], "past_len")], "qi")
    key_at = op("Range", ["zero_i", total_scalar, "one_s"], "kj")
    later = op("Greater", [op("Unsqueeze", [key_at, "ax0"], "kj_u"), op("Unsqueeze", [query_at, "ax1"], "qi_u")], "c_gt")
    mask = op("Add", [padding, op("Unsqueeze", [op("Where", [later, "fmin", "zero_f"], "causal2d"), "ax01"], "causal4d")], "attn_bias")
    product = op("MatMul", [query, op("Transpose", [repeat_kv(key, "k")], "k_T", perm=[0, 1, 3, 2])], "qk")
    scores = op("Mul", [product, "scale_f"], "qk_scaled") if current else op("Div", [product, "sqrt_h"], "qk_scaled")
    probs = op("Softmax", [op("Add", [scores, mask], "qk_masked")], "probs", axis=-1)
    if current:
        probs = op("Cast", [op("Cast", [probs], "probs_c1", to=TensorProto.FLOAT)], "probs_c2", to=TensorProto.FLOAT)
    context = op("Reshape", [op("Transpose", [op("MatMul", [probs, repeat_kv(value, "v")], "ctx")], "ctx_t", perm=[0, 2, 1, 3]), bsd], "ctx_r")
    out = op("MatMul", [context, const("o_w", (0.3 * rng.standard_normal((hidden, hidden))).astype(np.float32))], "o_proj")
    final = rms_norm(op("Add", [embeds, out], "resid"), "ln2")
    op("MatMul", [final, const("lm_w", rng.standard_normal((hidden, vocab)).astype(np.float32))], "logits")
    cache = ["batch", kv_heads, "past", size]
    read = {name for node in nodes for name in node.input}
    weights = [w for w in weights if w.name in read]
    graph = helper.make_graph(
        nodes, "eager_llama",
        [tensor("input_ids", ["batch", "seq"], TensorProto.INT64), tensor("attention_mask", ["batch", "total"], TensorProto.INT64),
         tensor("position_ids", ["batch", "seq"], TensorProto.INT64), tensor("past_key_values.0.key", cache), tensor("past_key_values.0.value", cache)],
        [tensor("logits", ["batch", "seq", vocab]), tensor("present.0.key", ["batch", kv_heads, "total", size]),
         tensor("present.0.value", ["batch", kv_heads, "total", size])],
        weights,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="pytorch")
    model.ir_version = 8
    return model
