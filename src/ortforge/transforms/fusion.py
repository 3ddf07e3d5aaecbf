"""Transformer fusion: find the model type, heads and hidden size from the graph, then fuse.

Two fusers exist and each only fits some exports: ORT's `onnxruntime.transformers` optimizer matches
TorchScript-style graphs (and needs heads/hidden when the reshape constants say -1 for the heads), while
onnxscript's `ort_fusions` matches dynamo exports. `fuse_transformer` picks by export style, falls back
to the other when no attention got fused, and reports the fused-operator counts. Whether the fused model
is kept is for the caller to decide by measuring: fused CPU kernels are not always faster.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import re
import tempfile
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ortforge.core import runtime
from ortforge.core.errors import UserError
from ortforge.core.model import (
    EXTERNAL_DATA_THRESHOLD,
    Model,
    loaded_copy,
    save_model,
    weight_bytes,
)
from ortforge.transforms import TransformResult, op_count_changes, op_counts

MODEL_TYPES = ("bert", "gpt2", "bart", "t5", "vit", "clip")
# Model types ORT's optimizer knows beyond the ones detected here; a user may force any of them.
ORT_EXTRA_MODEL_TYPES = ("bert_tf", "bert_keras", "gpt2_tf", "gpt_neox", "swin", "tnlr", "conformer", "phi",
                         "qwen3", "sam2", "unet", "vae", "mmdit")
FUSERS = ("auto", "ort", "onnxscript")
OPT_LEVELS = (None, 0, 1, 2, 99)

# ortforge's name of a fusion -> ORT FusionOptions attribute and the value that turns it off.
ORT_SWITCHES = {
    "attention": ("enable_attention", False),
    "skip_layer_norm": ("enable_skip_layer_norm", False),
    "bias_skip_layer_norm": ("enable_bias_skip_layer_norm", False),
    "embed_layer_norm": ("enable_embed_layer_norm", False),
    "layer_norm": ("enable_layer_norm", False),
    "gelu": ("enable_gelu", False),
    "bias_gelu": ("enable_bias_gelu", False),
    "rotary_embeddings": ("enable_rotary_embeddings", False),
    "qordered_matmul": ("enable_qordered_matmul", False),
    "shape_inference": ("enable_shape_inference", False),
    "multi_head_attention_bias": ("disable_multi_head_attention_bias", True),
    # Stable-diffusion models (unet, vae, clip) only.
    "group_norm": ("enable_group_norm", False),
    "skip_group_norm": ("enable_skip_group_norm", False),
    "nhwc_conv": ("enable_nhwc_conv", False),
    "bias_splitgelu": ("enable_bias_splitgelu", False),
    "packed_qkv": ("enable_packed_qkv", False),
    "packed_kv": ("enable_packed_kv", False),
    "bias_add": ("enable_bias_add", False),
}
# Fusions ORT leaves off by default; `enabled` turns them on.
ORT_OPT_IN = {
    "gelu_approximation": ("enable_gelu_approximation", True),
    "gemm_fast_gelu": ("enable_gemm_fast_gelu", True),
    "multi_head_attention": ("use_multi_head_attention", True),
}
MASK_FORMATS = {"auto": None, "index": 0, "index_start_end": 1, "raw": 2, "none": 3}

ATTENTION_OPS = ("Attention", "MultiHeadAttention", "GroupQueryAttention", "PackedAttention",
                 "PackedMultiHeadAttention", "QOrderedAttention")
FUSED_OPS = ATTENTION_OPS + (
    "EmbedLayerNormalization", "SkipLayerNormalization", "SkipSimplifiedLayerNormalization", "LayerNormalization",
    "SimplifiedLayerNormalization", "BiasGelu", "FastGelu", "Gelu", "QuickGelu", "GemmFastGelu", "BiasAdd",
    "BiasSplitGelu", "BiasSoftmax", "RotaryEmbedding", "GroupNorm", "SkipGroupNorm", "FusedMatMul",
)
# ORT turns these off before its own fusion at opt_level > 1: they rewrite the MatMul/Softmax chains
# the attention patterns look for.
ORT_PREPASS_BLOCKERS = ["MatMulScaleFusion", "MatMulAddFusion", "MatmulTransposeFusion", "GemmActivationFusion",
                        "BiasSoftmaxFusion"]
SMALL_CONSTANT = 64  # elements: shape and scale constants are tiny; weights are never read in detection
LIBRARY_PATHS = ("onnxruntime/transformers", "onnxruntime\\transformers", "onnxscript")


# ---------------------------------------------------------------------------------------------
# Detection
# ---------------------------------------------------------------------------------------------


@dataclass
class TransformerInfo:
    """What the graph says about a transformer: family, attention geometry, exporter; and why."""

    model_type: str = "unknown"  # bert, gpt2, bart, t5, vit, clip or unknown
    num_heads: int = 0  # 0: not found
    hidden_size: int = 0
    head_size: int = 0
    attention_blocks: int = 0  # Softmax nodes or fused attention ops
    export_style: str = "other"  # torchscript, dynamo or other
    evidence: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


class _Graph:
    """Producer/consumer maps and small-constant lookup over the main graph (weights are never loaded)."""

    def __init__(self, proto: onnx.ModelProto) -> None:
        self.proto = proto
        self.graph = proto.graph
        self.nodes = list(self.graph.node)
        self.tensors: dict[str, onnx.TensorProto] = {t.name: t for t in self.graph.initializer}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in self.nodes:
            for name in node.output:
                self.producer[name] = node
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                self._add_constant(node)
        self.inputs = {value.name: value for value in self.graph.input if value.name not in self.tensors}

    def _add_constant(self, node: onnx.NodeProto) -> None:
        for attribute in node.attribute:
            if attribute.name == "value":
                self.tensors[node.output[0]] = attribute.t
            elif attribute.name in ("value_float", "value_int"):
                value = attribute.f if attribute.name == "value_float" else attribute.i
                self.tensors[node.output[0]] = numpy_helper.from_array(np.array(value))
            elif attribute.name in ("value_floats", "value_ints"):
                values = attribute.floats if attribute.name == "value_floats" else attribute.ints
                self.tensors[node.output[0]] = numpy_helper.from_array(np.array(list(values)))

    def constant(self, name: str) -> onnx.TensorProto | None:
        """The weight behind a name, through Identity (TorchScript turns duplicate weights into Identity nodes)."""
        for _ in range(4):
            if name in self.tensors:
                return self.tensors[name]
            node = self.producer.get(name)
            if node is None or node.op_type != "Identity":
                return None
            name = node.input[0]
        return None

    def dims(self, name: str) -> tuple[int, ...] | None:
        tensor = self.constant(name)
        return tuple(tensor.dims) if tensor is not None else None

    def value(self, name: str) -> np.ndarray | None:
        """A small in-graph constant's value; None for activations, big or external tensors."""
        tensor = self.constant(name)
        if tensor is None or tensor.data_location == onnx.TensorProto.EXTERNAL:
            return None
        if math.prod(tensor.dims) > SMALL_CONSTANT:
            return None
        return numpy_helper.to_array(tensor)

    def scalar(self, name: str) -> float | None:
        value = self.value(name)
        return float(value.reshape(-1)[0]) if value is not None and value.size == 1 else None

    def parent(self, node: onnx.NodeProto, index: int) -> onnx.NodeProto | None:
        return self.producer.get(node.input[index]) if len(node.input) > index else None

    def shape_entries(self, name: str, depth: int = 0) -> list[int | None] | None:
        """A shape tensor's entries where constant (None where computed at run time); None if unknowable."""
        value = self.value(name)
        if value is not None:
            return [int(v) for v in value.reshape(-1)]
        node = self.producer.get(name)
        if node is None or depth > 4:
            return None
        if node.op_type == "Concat":
            entries: list[int | None] = []
            for part in node.input:
                part_entries = self.shape_entries(part, depth + 1)
                if part_entries is None:
                    return None
                entries.extend(part_entries)
            return entries
        if node.op_type == "Cast":
            return self.shape_entries(node.input[0], depth + 1)
        return self._dynamic_length(node)

    def _dynamic_length(self, node: onnx.NodeProto) -> list[int | None] | None:
        """Placeholders for a run-time piece of a shape whose length is known (a dim taken from a Shape)."""
        if node.op_type == "Unsqueeze":
            return [None]  # a scalar dim made 1-D: the usual TorchScript way
        if node.op_type == "Shape":
            attributes = {a.name: a.i for a in node.attribute}
            if "end" in attributes and attributes.get("start", 0) >= 0 and attributes["end"] > 0:
                return [None] * (attributes["end"] - attributes.get("start", 0))
        if node.op_type == "Gather":
            indices = self.value(node.input[1])
            if indices is not None:
                return [None] * max(1, indices.size)
        if node.op_type == "Slice" and len(node.input) >= 3:
            starts, ends = self.value(node.input[1]), self.value(node.input[2])
            if starts is not None and ends is not None and starts.size == ends.size == 1 and 0 <= starts.item() < ends.item() < 64:
                return [None] * int(ends.item() - starts.item())
        return None


def detect_transformer(model: Model) -> TransformerInfo:
    """Model type, heads, hidden size and exporter, read from the graph alone (no HuggingFace config)."""
    graph = _Graph(model.proto)
    info = TransformerInfo()
    info.export_style = _export_style(graph, info.evidence)
    info.attention_blocks = _attention_blocks(graph)
    if info.attention_blocks == 0:
        info.evidence.append("no Softmax or attention op: not a transformer that ortforge can fuse")
        return info
    _find_geometry(graph, info)
    _find_model_type(graph, info)
    return info


def _attention_blocks(graph: _Graph) -> int:
    return sum(1 for node in graph.nodes if node.op_type == "Softmax" or node.op_type in ATTENTION_OPS)


def _export_style(graph: _Graph, evidence: list[str]) -> str:
    """TorchScript names nodes after module paths ('/encoder/layer.0/...'); dynamo leaves pkg.torch metadata."""
    nodes = graph.nodes
    if not nodes:
        return "other"
    dynamo_marks = sum(1 for n in nodes if any(p.key.startswith(("pkg.torch", "namespace")) for p in n.metadata_props))
    dynamo_names = sum(1 for n in nodes if re.match(r"node_", n.name))
    scoped_names = sum(1 for n in nodes if n.name.startswith("/"))
    producer = graph.proto.producer_name.lower()
    if dynamo_marks > len(nodes) / 4 or (producer == "pytorch" and dynamo_names > len(nodes) / 2):
        evidence.append(f"dynamo export: {max(dynamo_marks, dynamo_names)} of {len(nodes)} nodes carry torch.export names/metadata")
        return "dynamo"
    if scoped_names > len(nodes) / 4:
        evidence.append(f"TorchScript export: {scoped_names} of {len(nodes)} nodes named by module path")
        return "torchscript"
    if producer == "pytorch":
        evidence.append("producer 'pytorch' without dynamo metadata: taken as a TorchScript export")
        return "torchscript"
    evidence.append(f"exporter not recognised (producer '{graph.proto.producer_name}'): export style other")
    return "other"


# --- geometry: hidden size, heads -------------------------------------------------------------


def _find_geometry(graph: _Graph, info: TransformerInfo) -> None:
    """Hidden size from projection weights and norm scales; heads from reshapes and the QK^T scale."""
    projections = _head_reshapes(graph)
    _hidden_size(projections, _norm_scale_sizes(graph), info)
    _heads_from_reshapes(projections, info)
    _heads_from_scale(_scale_head_sizes(graph), info)
    if info.num_heads and info.hidden_size and info.hidden_size % info.num_heads == 0:
        info.head_size = info.hidden_size // info.num_heads
    if not info.num_heads:
        info.evidence.append("heads not found: no head-split Reshape constants or QK^T scale; give --num-heads")


def _hidden_size(projections: list[_HeadReshape], norm_sizes: Counter, info: TransformerInfo) -> None:
    """The projections' input width wins; the norms' scale width confirms it (or stands in for it)."""
    in_dims = Counter(p.in_dim for p in projections if p.in_dim)
    if in_dims:
        info.hidden_size, count = in_dims.most_common(1)[0]
        info.evidence.append(f"hidden {info.hidden_size}: input width of {count} projection(s) into head-split Reshapes")
    if norm_sizes:
        size, count = norm_sizes.most_common(1)[0]
        if not info.hidden_size:
            info.hidden_size = size
            info.evidence.append(f"hidden {size}: scale of {count} normalization(s)")
        else:
            agrees = "agrees" if size == info.hidden_size else f"DISAGREES with {info.hidden_size}"
            info.evidence.append(f"hidden {size}: scale of {count} normalization(s) ({agrees})")


def _heads_from_reshapes(projections: list[_HeadReshape], info: TransformerInfo) -> None:
    votes = Counter(heads for p in projections if (heads := p.heads(info.hidden_size)))
    if not votes:
        return
    info.num_heads, count = votes.most_common(1)[0]
    example = next(p for p in projections if p.heads(info.hidden_size) == info.num_heads)
    width = example.out_dim or info.hidden_size
    info.evidence.append(f"heads {info.num_heads}: {count} Reshape(s) to {example.describe()} after {width}-wide projections")


def _heads_from_scale(scale_sizes: Counter, info: TransformerInfo) -> None:
    """1/sqrt(head size) confirms the reshapes' heads, or gives them when the reshapes say -1 for both."""
    if not scale_sizes:
        return
    head_size, count = scale_sizes.most_common(1)[0]
    info.evidence.append(f"head size {head_size}: QK^T scaled by 1/sqrt({head_size}) in {count} attention block(s)")
    if not info.num_heads and info.hidden_size and info.hidden_size % head_size == 0:
        info.num_heads = info.hidden_size // head_size
        info.evidence.append(f"heads {info.num_heads} = hidden {info.hidden_size} / head size {head_size}")
    elif info.num_heads and info.hidden_size and info.hidden_size != info.num_heads * head_size:
        info.evidence.append(f"the scale's head size {head_size} disagrees with {info.num_heads} heads; kept the reshapes' count")


@dataclass
class _HeadReshape:
    """A Reshape that splits a projection's output into heads: [B, S, H, D] with some entries known."""

    entries: list[int | None]
    in_dim: int | None  # projection weight's input width (the hidden size)
    out_dim: int | None  # projection weight's output width (H * D)

    def heads(self, hidden: int) -> int:
        heads, head_size = self.entries[2], self.entries[3]
        width = self.out_dim or hidden
        if heads is not None and heads > 0:
            return heads
        if head_size is not None and head_size > 0 and width and width % head_size == 0:
            return width // head_size
        return 0

    def describe(self) -> str:
        return "[" + ", ".join("?" if e is None else str(e) for e in self.entries) + "]"


def _head_reshapes(graph: _Graph) -> list[_HeadReshape]:
    found = []
    for node in graph.nodes:
        if node.op_type != "Reshape" or len(node.input) < 2:
            continue
        entries = graph.shape_entries(node.input[1])
        if entries is None or len(entries) != 4 or (entries[2] is None and entries[3] is None):
            continue
        weight = _projection_weight(graph, node.input[0])
        if weight is None:
            continue
        found.append(_HeadReshape(entries, *weight))
    return found


def _projection_weight(graph: _Graph, name: str) -> tuple[int | None, int | None] | None:
    """(input, output) width of the MatMul/Gemm weight that feeds `name`, through bias Add/scale Mul/Split.

    A packed QKV projection (GPT-2's c_attn) is Split in parts: each part's width is the weight's share."""
    parts: int | None = 1
    for _ in range(4):
        node = graph.producer.get(name)
        if node is None:
            return None
        if node.op_type in ("MatMul", "Gemm"):
            dims = _weight_dims(graph, node)
            if dims is None:
                return None
            return dims[0], (dims[1] // parts if parts and dims[1] % parts == 0 else None)
        if node.op_type in ("Split", "Slice"):
            parts = len(node.output) if node.op_type == "Split" and parts else None  # a Slice's share is unknown
            name = node.input[0]
        elif node.op_type in ("Add", "Mul", "Div"):
            activations = [i for i in node.input[:2] if i and graph.dims(i) is None]
            if len(activations) != 1:
                return None
            name = activations[0]
        else:
            return None
    return None


def _weight_dims(graph: _Graph, node: onnx.NodeProto) -> tuple[int | None, int | None] | None:
    weight = node.input[1] if len(node.input) > 1 else ""
    dims = graph.dims(weight)
    transposed = False
    if dims is None:  # a weight passed through Transpose (some exporters keep [out, in])
        parent = graph.producer.get(weight)
        if parent is not None and parent.op_type == "Transpose":
            dims, transposed = graph.dims(parent.input[0]), True
    if dims is None or len(dims) != 2:
        return None
    if node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute):
        transposed = not transposed
    return (dims[1], dims[0]) if transposed else (dims[0], dims[1])


def _norm_scale_sizes(graph: _Graph) -> Counter:
    """Widths of LayerNorm / RMSNorm scales: fused ops or a Mul by a 1-D weight after a ReduceMean."""
    sizes = Counter()
    for node in graph.nodes:
        if node.op_type in ("LayerNormalization", "SimplifiedLayerNormalization", "RMSNormalization") and len(node.input) > 1:
            dims = graph.dims(node.input[1])
        elif node.op_type in ("SkipLayerNormalization", "SkipSimplifiedLayerNormalization") and len(node.input) > 2:
            dims = graph.dims(node.input[2])
        elif node.op_type == "Mul" and _follows_reduce_mean(graph, node):
            dims = next((graph.dims(i) for i in node.input if graph.dims(i) and len(graph.dims(i)) == 1), None)
        else:
            continue
        if dims and len(dims) == 1 and dims[0] > 1:
            sizes[dims[0]] += 1
    return sizes


def _follows_reduce_mean(graph: _Graph, node: onnx.NodeProto) -> bool:
    """A decomposed norm: the activation side leads back to a ReduceMean within a few ops."""
    frontier = [i for i in node.input if graph.dims(i) is None]
    for _ in range(6):
        parents = [graph.producer[name] for name in frontier if name in graph.producer]
        if any(p.op_type == "ReduceMean" for p in parents):
            return True
        frontier = [i for p in parents if p.op_type in ("Div", "Mul", "Sqrt", "Reciprocal", "Add", "Cast") for i in p.input]
    return False


def _scale_head_sizes(graph: _Graph) -> Counter:
    """Head sizes implied by the constant that scales QK^T (1/sqrt(d) after, or d^-1/4 on both Q and K)."""
    sizes = Counter()
    for node in graph.nodes:
        if node.op_type != "Softmax":
            continue
        head_size = _scale_of_softmax(graph, node)
        if head_size:
            sizes[head_size] += 1
    return sizes


def _scale_of_softmax(graph: _Graph, softmax: onnx.NodeProto) -> int | None:
    """Walk up from the Softmax past mask Add/Where to the QK^T MatMul, multiplying the scales met."""
    factor = 1.0
    name = softmax.input[0]
    for _ in range(5):
        node = graph.producer.get(name)
        if node is None:
            return None
        if node.op_type == "MatMul":
            factor *= _operand_scales(graph, node)
            return _head_size_from_factor(factor)
        step = _scale_step(graph, node)
        if step is None:
            return None
        name, scale = step
        factor *= scale
    return None


def _scale_step(graph: _Graph, node: onnx.NodeProto) -> tuple[str, float] | None:
    """(input to follow, scale applied) for one op between QK^T and Softmax."""
    if node.op_type in ("Mul", "Div"):
        constants = [graph.scalar(i) for i in node.input[:2]]
        if constants[1] is not None:
            value = constants[1]
            return node.input[0], (1.0 / value if node.op_type == "Div" else value)
        if constants[0] is not None and node.op_type == "Mul":
            return node.input[1], constants[0]
        return None
    if node.op_type == "Add":  # additive mask or bias: follow the side that leads to a MatMul
        for index in (0, 1):
            if _leads_to_matmul(graph, node.input[index]):
                return node.input[index], 1.0
        return None
    if node.op_type == "Where":
        return (node.input[2], 1.0) if _leads_to_matmul(graph, node.input[2]) else None
    if node.op_type in ("Cast", "Reshape", "Identity"):
        return node.input[0], 1.0
    return None


def _leads_to_matmul(graph: _Graph, name: str) -> bool:
    for _ in range(3):
        node = graph.producer.get(name)
        if node is None:
            return False
        if node.op_type == "MatMul":
            return True
        if node.op_type not in ("Mul", "Div", "Cast", "Reshape"):
            return False
        name = node.input[0]
    return False


def _operand_scales(graph: _Graph, matmul: onnx.NodeProto) -> float:
    """Scales applied to Q and to K before they meet (dynamo/CLIP exports scale the operands)."""
    factor = 1.0
    for name in matmul.input[:2]:
        for _ in range(3):
            node = graph.producer.get(name)
            if node is None:
                break
            if node.op_type in ("Mul", "Div"):
                step = _scale_step(graph, node)
                if step is None:
                    break
                name, scale = step
                factor *= scale
            elif node.op_type in ("Transpose", "Reshape", "Cast"):
                name = node.input[0]
            else:
                break
    return factor


def _head_size_from_factor(factor: float) -> int | None:
    if not 0 < factor < 1:
        return None
    head_size = 1.0 / (factor * factor)
    rounded = round(head_size)
    return rounded if rounded >= 2 and abs(head_size - rounded) < 1e-3 * rounded else None


# --- model type -------------------------------------------------------------------------------


@dataclass
class _Structure:
    """Structural facts the model type is decided from."""

    token_inputs: list[str] = field(default_factory=list)
    table_shape: tuple[int, ...] | None = None
    image_input: str = ""
    patch_conv: tuple[int, ...] | None = None
    class_token: bool = False
    causal: str = ""  # why the attention looks causal
    encoder_decoder: str = ""
    layer_norms: int = 0
    rms_norms: int = 0
    relative_bias: bool = False
    argmax_pooling: bool = False
    name_hints: set[str] = field(default_factory=set)


def _find_model_type(graph: _Graph, info: TransformerInfo) -> None:
    facts = _structure(graph, info)
    info.model_type, why = _classify(facts)
    info.evidence.extend(why)


def _structure(graph: _Graph, info: TransformerInfo) -> _Structure:
    facts = _Structure()
    facts.token_inputs, facts.table_shape = _token_inputs(graph)
    facts.image_input, facts.patch_conv = _patch_embedding(graph)
    facts.class_token = _has_class_token(graph, info.hidden_size)
    facts.causal = _causal_evidence(graph)
    facts.encoder_decoder = _encoder_decoder_evidence(graph, facts.token_inputs)
    ops = Counter(node.op_type for node in graph.nodes)
    facts.layer_norms = ops["LayerNormalization"] + ops["SkipLayerNormalization"] + _decomposed_layer_norms(graph)
    facts.rms_norms = (ops["SimplifiedLayerNormalization"] + ops["SkipSimplifiedLayerNormalization"] + ops["RMSNormalization"]
                       + _decomposed_rms_norms(graph))
    facts.relative_bias = ops["Log"] > 0 and _has_bias_table(graph, info.num_heads)
    facts.argmax_pooling = ops["ArgMax"] > 0
    facts.name_hints = _name_hints(graph)
    return facts


def _has_class_token(graph: _Graph, hidden: int) -> bool:
    """A learned [1, 1, hidden] vector concatenated in front of the patch sequence."""
    for node in graph.nodes:
        if node.op_type == "Concat" and hidden:
            for name in node.input:
                dims = graph.dims(name) or ()
                if len(dims) == 3 and dims[-1] == hidden and dims[1] == 1:
                    return True
    return False


def _has_bias_table(graph: _Graph, heads: int) -> bool:
    """T5's relative position bias: a [buckets, heads] table gathered at bucketed (Log) distances."""
    for node in graph.nodes:
        dims = graph.dims(node.input[0]) if node.op_type == "Gather" else None
        if dims is None or len(dims) != 2 or dims[0] > 512 or node.input[1] in graph.inputs:
            continue
        if dims[1] == heads or not heads:
            return True
    return False


def _token_inputs(graph: _Graph) -> tuple[list[str], tuple[int, ...] | None]:
    """Integer graph inputs that index a 2-D embedding table (through Cast/Reshape/Unsqueeze)."""
    found, table = [], None
    for name, value in graph.inputs.items():
        if value.type.tensor_type.elem_type not in (onnx.TensorProto.INT64, onnx.TensorProto.INT32):
            continue
        dims = _indexed_table(graph, name)
        if dims is not None:
            found.append(name)
            table = table or dims
    return found, table


def _indexed_table(graph: _Graph, name: str, depth: int = 0) -> tuple[int, ...] | None:
    if depth > 3:
        return None
    for node in graph.consumers.get(name, []):
        if node.op_type == "Gather" and len(node.input) > 1 and node.input[1] == name:
            dims = graph.dims(node.input[0])
            if dims is not None and len(dims) == 2 and dims[0] > 2:  # token-type tables (2 rows) are not vocabularies
                return dims
        if node.op_type in ("Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten") and node.input[0] == name:
            dims = _indexed_table(graph, node.output[0], depth + 1)
            if dims is not None:
                return dims
    return None


def _patch_embedding(graph: _Graph) -> tuple[str, tuple[int, ...] | None]:
    """A Conv with stride == kernel over a 4-D float input: an image cut into patches."""
    for name, value in graph.inputs.items():
        tensor_type = value.type.tensor_type
        if tensor_type.elem_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16):
            continue
        if len(tensor_type.shape.dim) != 4:
            continue
        frontier = [name]
        for _ in range(4):
            consumers = [n for f in frontier for n in graph.consumers.get(f, [])]
            for node in consumers:
                if node.op_type == "Conv":
                    attributes = {a.name: list(a.ints) for a in node.attribute}
                    kernel, strides = attributes.get("kernel_shape"), attributes.get("strides")
                    if kernel and kernel == strides and kernel[0] > 1:
                        return name, tuple(kernel)
            frontier = [o for n in consumers if n.op_type in ("Sub", "Div", "Mul", "Add", "Cast", "Transpose") for o in n.output]
    return "", None


def _causal_evidence(graph: _Graph) -> str:
    """Why attention looks causal: a Trilu, a triangular constant mask, or past key/value inputs."""
    names = [value.name.lower() for value in graph.graph.input] + [value.name.lower() for value in graph.graph.output]
    if any("past" in name or "present" in name for name in names):
        return "past/present key-value inputs or outputs"
    if any(node.op_type == "Trilu" for node in graph.nodes):
        return "a Trilu builds the attention mask"
    for name, tensor in graph.tensors.items():
        if _is_triangular(tensor):
            return f"a triangular constant mask {list(tensor.dims)} ('{name}')"
    for node in graph.nodes:
        if node.op_type in ("Less", "LessOrEqual", "Greater", "GreaterOrEqual") and _compares_positions(graph, node):
            return f"key positions compared with query positions ({node.op_type})"
    if any("causal" in node.name.lower() for node in graph.nodes):
        return "nodes named 'causal'"
    return ""


def _compares_positions(graph: _Graph, node: onnx.NodeProto) -> bool:
    """kv_idx <= q_idx: both sides are position vectors (a Range or a folded one), neither a scalar bound."""
    return all(_is_positions(graph, name) for name in node.input[:2])


def _is_positions(graph: _Graph, name: str) -> bool:
    for _ in range(5):
        tensor = graph.constant(name)
        if tensor is not None:
            return math.prod(tensor.dims) > 1
        node = graph.producer.get(name)
        if node is None:
            return False
        if node.op_type == "Range":
            return True
        if node.op_type not in ("Unsqueeze", "Reshape", "Expand", "Cast", "Add", "Sub", "Slice"):
            return False
        name = node.input[0]
    return False


def _is_triangular(tensor: onnx.TensorProto) -> bool:
    """A folded causal mask: bool/uint8 ones on and below the diagonal, or a float [1, 1, N, N] with zeros there."""
    dims = list(tensor.dims)
    if len(dims) < 2 or dims[-1] != dims[-2] or dims[-1] < 2 or math.prod(dims) > 4_194_304:
        return False
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        return False
    is_flag = tensor.data_type in (onnx.TensorProto.BOOL, onnx.TensorProto.UINT8)
    # A float mask has leading ones ([1, 1, N, N]); square 2-D float tensors are weights, not worth reading.
    is_additive = tensor.data_type == onnx.TensorProto.FLOAT and len(dims) > 2 and all(d == 1 for d in dims[:-2])
    if not (is_flag or is_additive):
        return False
    square = numpy_helper.to_array(tensor).reshape(-1, dims[-1], dims[-1])[0]
    lower = np.tril(np.ones(square.shape, bool))
    marked = square != 0
    return bool(np.array_equal(marked, lower) or np.array_equal(marked, ~lower))


def _encoder_decoder_evidence(graph: _Graph, token_inputs: list[str]) -> str:
    names = [name.lower() for name in graph.inputs]
    markers = [n for n in names if "decoder" in n or "encoder_hidden_states" in n or "encoder_outputs" in n]
    if markers:
        return f"inputs {markers[:2]}"
    ids = [n for n in token_inputs if not re.search(r"token_type|segment|position", n, re.IGNORECASE)]
    if len(ids) >= 2:
        return f"two token-id inputs {ids[:2]}"
    return ""


def _decomposed_layer_norms(graph: _Graph) -> int:
    """x - mean(x) feeding a variance: LayerNorm spelled out in primitive ops (opset < 17)."""
    count = 0
    for node in graph.nodes:
        if node.op_type == "Sub":
            parent = graph.parent(node, 1)
            if parent is not None and parent.op_type == "ReduceMean" and parent.input[0] == node.input[0]:
                count += 1
    return count


def _decomposed_rms_norms(graph: _Graph) -> int:
    """mean(x²) without a mean subtraction: RMSNorm (T5, LLaMA) spelled out."""
    count = 0
    for node in graph.nodes:
        square = graph.parent(node, 0) if node.op_type == "ReduceMean" else None
        if square is None or square.op_type not in ("Pow", "Mul"):
            continue
        if square.op_type == "Mul" and square.input[0] != square.input[1]:
            continue
        centred = graph.parent(square, 0)
        if centred is None or centred.op_type != "Sub":  # x - mean(x) squared is a LayerNorm's variance
            count += 1
    return count


def _name_hints(graph: _Graph) -> set[str]:
    """Family names in the graph's or the weights' names: a hint, never proof (node names are left out:
    ONNX has an op called Clip)."""
    names = [graph.graph.name] + [t.name for t in graph.graph.initializer]
    text = " ".join(names).lower()
    hints = {family for family in ("clip", "vit", "t5", "bart", "gpt", "bert") if re.search(rf"(^|[^a-z]){family}", text)}
    if re.search(r"(^| )text_model\.", text) and re.search(r"(^| )vision_model\.", text):
        hints.add("clip")  # HuggingFace's CLIPModel names its two towers so
    return hints


def _classify(facts: _Structure) -> tuple[str, list[str]]:
    """The model type and the lines of evidence for it; 'unknown' when the structure does not settle it."""
    why = []
    text, vision = bool(facts.token_inputs), bool(facts.patch_conv)
    if text:
        why.append(f"token-id input(s) {facts.token_inputs} index an embedding table {list(facts.table_shape or ())}")
    if vision:
        token = ", class token concatenated" if facts.class_token else ""
        why.append(f"image input '{facts.image_input}' cut into {facts.patch_conv} patches by a Conv{token}")
    if facts.causal:
        why.append(f"causal attention: {facts.causal}")
    if facts.encoder_decoder:
        why.append(f"encoder-decoder: {facts.encoder_decoder}")
    if text and vision:
        return "clip", why + ["clip: text and image towers in one graph"]
    if "clip" in facts.name_hints and (text or vision):
        return "clip", why + ["clip: weight/node names say clip"]
    if vision:
        return "vit", why + ["vit: patch embedding, no token inputs"]
    if not text:
        return "unknown", why + ["no token-id or image input found: family unknown (force it with --transformer)"]
    t5_like = (facts.rms_norms > 0 and facts.layer_norms == 0) or facts.relative_bias
    t5_why = f"RMS norms ({facts.rms_norms}), no LayerNorm" + (", relative position bias" if facts.relative_bias else "")
    if facts.encoder_decoder:
        if t5_like:
            return "t5", why + [f"t5: {t5_why}"]
        return "bart", why + ["bart: encoder-decoder with LayerNorm"]
    if t5_like:
        return "t5", why + [f"t5 encoder: {t5_why}"]
    if facts.causal:
        if facts.argmax_pooling:
            return "clip", why + ["clip text encoder: causal attention pooled at the ArgMax (EOS) token"]
        return "gpt2", why + ["gpt2: decoder-only, causal attention"]
    if facts.layer_norms:
        return "bert", why + [f"bert: bidirectional attention (no causal mask), {facts.layer_norms} LayerNorm(s)"]
    return "unknown", why + ["token inputs but neither LayerNorm nor RMSNorm found: family unknown"]


# ---------------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FusionOptions:
    """How to fuse. Defaults match ORT's optimizer; 0 for heads/hidden means 'detect from the graph'."""

    model_type: str = "auto"  # auto, or one of MODEL_TYPES / ORT_EXTRA_MODEL_TYPES
    num_heads: int = 0
    hidden_size: int = 0
    fuser: str = "auto"  # auto: by export style, falling back to the other fuser; ort; onnxscript
    opt_level: int | None = None  # ORT graph optimization before ORT's fusion; None: ORT's default per type
    only_onnxruntime: bool = False  # ORT's graph optimizer only, none of its Python fusions
    use_gpu: bool = False  # optimize for a GPU EP (opt_level > 1 may insert GPU-only ops)
    disabled: tuple[str, ...] = ()  # names from ORT_SWITCHES
    enabled: tuple[str, ...] = ()  # opt-in fusions: names from ORT_OPT_IN
    attention_mask_format: str = "auto"  # auto (ORT's per type), index, index_start_end, raw, none
    external_data: bool | None = None  # for whoever saves the result; None: only when the weights near 2 GB

    def __post_init__(self) -> None:
        known_types = ("auto",) + MODEL_TYPES + ORT_EXTRA_MODEL_TYPES
        if self.model_type not in known_types:
            raise UserError(f"--transformer {self.model_type}: not a known model type (one of {', '.join(known_types)})")
        if self.fuser not in FUSERS:
            raise UserError(f"fuser '{self.fuser}' is not one of {', '.join(FUSERS)}")
        if self.opt_level not in OPT_LEVELS:
            raise UserError(f"opt_level {self.opt_level} is not one of 0, 1, 2, 99")
        for name, value in (("num_heads", self.num_heads), ("hidden_size", self.hidden_size)):
            if not isinstance(value, int) or value < 0:
                raise UserError(f"{name} must be a non-negative integer (0 = detect), got {value!r}")
        _check_names("disabled fusion", self.disabled, ORT_SWITCHES)
        _check_names("opt-in fusion", self.enabled, ORT_OPT_IN)
        if self.attention_mask_format not in MASK_FORMATS:
            raise UserError(f"attention mask format '{self.attention_mask_format}' is not one of {', '.join(MASK_FORMATS)}")
        if self.only_onnxruntime and self.opt_level == 0:
            raise UserError("only_onnxruntime needs opt_level 1, 2 or 99 (0 leaves ORT nothing to do)")
        if self.only_onnxruntime and self.fuser == "onnxscript":
            raise UserError("only_onnxruntime uses ORT's graph optimizer; it cannot go with the onnxscript fuser")

    def to_dict(self) -> dict:
        return asdict(self)


def _check_names(what: str, names: tuple[str, ...], known: dict) -> None:
    if isinstance(names, str):
        raise UserError(f"{what}s must be a tuple of names, got the string '{names}'")
    for name in names:
        if name not in known:
            raise UserError(f"{what} '{name}' is not one of {', '.join(known)}")


# ---------------------------------------------------------------------------------------------
# Fusion
# ---------------------------------------------------------------------------------------------


@dataclass
class _Attempt:
    """One fuser's output (None when it failed or ORT cannot load it) and what it did."""

    fuser: str
    proto: onnx.ModelProto | None
    notes: list[str]
    counts: dict[str, int] = field(default_factory=dict)  # the fuser's own per-pattern counts, if any
    fused: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.fused = fused_op_counts(self.proto) if self.proto is not None else {}

    @property
    def ok(self) -> bool:
        return self.proto is not None

    @property
    def attention(self) -> int:
        return sum(self.fused.get(op, 0) for op in ATTENTION_OPS)

    @property
    def nodes(self) -> int:
        return len(self.proto.graph.node) if self.proto is not None else 0

    def to_dict(self) -> dict:
        return {"fuser": self.fuser, "ok": self.ok, "attention_ops": self.attention, "nodes": self.nodes,
                "fused_ops": self.fused, "counts": self.counts}


def fused_op_counts(proto: onnx.ModelProto) -> dict[str, int]:
    """Count of each fused-operator type in the model (any domain), zero counts left out."""
    counts: Counter = Counter()
    for op, count in op_counts(proto).items():
        name = op.rsplit(":", 1)[-1]
        if name in FUSED_OPS:
            counts[name] += count
    return dict(sorted(counts.items()))


def fuse_transformer(model: Model, options: FusionOptions | None = None) -> TransformResult:
    """Fuse a transformer's attention, norms and activations with the fuser that fits its export.

    Heads and hidden size come from the graph unless given. The result's `details` hold fused-op counts,
    node counts, the fuser used and the detection; it is not measured or verified here.
    """
    options = options or FusionOptions()
    info = detect_transformer(model)
    model_type, heads, hidden, notes = _resolve(info, options)
    attempts = []
    for fuser in _fuser_order(info, options, notes):
        attempt = _run_fuser(fuser, model, model_type, heads, hidden, options)
        attempts.append(attempt)
        if attempt.ok and (attempt.attention or "attention" in options.disabled or info.attention_blocks == 0):
            break
    best = _best(attempts)
    for attempt in attempts:
        notes.extend(attempt.notes)
    if len(attempts) > 1:
        notes.append(_attempts_note(attempts, best))
    return _result(model, best, attempts, info, model_type, heads, hidden, options, notes)


def _best(attempts: list[_Attempt]) -> _Attempt | None:
    """Most attention fused wins, then fewest nodes; max() keeps the first of equals (the fitting fuser)."""
    usable = [attempt for attempt in attempts if attempt.ok]
    return max(usable, key=lambda a: (a.attention, -a.nodes)) if usable else None


def _resolve(info: TransformerInfo, options: FusionOptions) -> tuple[str, int, int, list[str]]:
    """Model type, heads and hidden size to fuse with: the user's where given, else the detected ones."""
    notes = []
    model_type = options.model_type if options.model_type != "auto" else info.model_type
    if model_type == "unknown":
        model_type = "bert"
        notes.append("model type not recognised from the graph: fused with ORT's generic 'bert' rules (force with --transformer)")
    heads = options.num_heads or info.num_heads
    hidden = options.hidden_size or info.hidden_size
    for name, given, found in (("num_heads", options.num_heads, info.num_heads), ("hidden_size", options.hidden_size, info.hidden_size)):
        if given and found and given != found:
            notes.append(f"{name} {given} given, the graph suggests {found}: used {given}")
    return model_type, heads, hidden, notes


def _fuser_order(info: TransformerInfo, options: FusionOptions, notes: list[str]) -> list[str]:
    if options.fuser != "auto":
        if options.fuser == "onnxscript":
            _require_onnxscript()
        return [options.fuser]
    if options.only_onnxruntime:
        return ["ort"]
    order = ["onnxscript", "ort"] if info.export_style == "dynamo" else ["ort", "onnxscript"]
    if not _onnxscript_available():
        notes.append("onnxscript is not installed: only ORT's fuser was tried (pip install 'ortforge[fusion]')")
        order = ["ort"]
    return order


def _attempts_note(attempts: list[_Attempt], best: _Attempt | None) -> str:
    tried = ", ".join(f"{a.fuser}: {a.attention} attention op(s), {a.nodes} nodes" if a.ok else f"{a.fuser}: failed" for a in attempts)
    return f"tried {tried}; kept {best.fuser if best else 'neither'}"


def _run_fuser(fuser: str, model: Model, model_type: str, heads: int, hidden: int, options: FusionOptions) -> _Attempt:
    """One fuser's attempt. The fusers are pattern matchers that can trip over graphs they half-match,
    so their failures, and outputs ORT cannot load, are recorded rather than raised."""
    notes: list[str] = []
    label = _FUSER_NAMES[fuser]
    with _library_output(notes):
        try:
            if fuser == "ort":
                proto, counts = _ort_fuse(model, model_type, heads, hidden, options), {}
            else:
                proto, counts = _onnxscript_fuse(model, options)
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure inside the fuser library
            notes.append(f"{label} failed on this graph ({type(exc).__name__}: {_first_line(exc)}); its result is not used")
            return _Attempt(fuser, None, notes)
    problem = _load_problem(proto, model, options)
    if problem:
        notes.append(f"{label} produced a model ORT cannot load ({problem}); its result is not used")
        return _Attempt(fuser, None, notes)
    return _Attempt(fuser, proto, notes, counts)


_FUSER_NAMES = {"ort": "ORT's transformers optimizer", "onnxscript": "onnxscript's ort_fusions"}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().replace("<in-memory model>: ", "")
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _load_problem(proto: onnx.ModelProto, model: Model, options: FusionOptions) -> str:
    """Why ORT refuses the fused model, or '' if it loads (on CPU, with ORT's default graph optimizations,
    which is where some half-fused graphs first fail)."""
    if options.use_gpu or weight_bytes(proto) > EXTERNAL_DATA_THRESHOLD:
        return ""  # GPU-only fused ops may lack CPU kernels; over 2 GB cannot go to ORT as bytes
    from ortforge.core.model import from_proto
    from ortforge.core.session import SessionConfig

    try:
        SessionConfig().build(from_proto(proto, base_dir=model.base_dir))
    except Exception as exc:  # noqa: BLE001 - UserError from ortforge or ORT's own exceptions
        return _first_line(exc)
    return ""


def _result(model: Model, best: _Attempt | None, attempts: list[_Attempt], info: TransformerInfo, model_type: str,
            heads: int, hidden: int, options: FusionOptions, notes: list[str]) -> TransformResult:
    if best is None:
        proto = onnx.ModelProto()
        proto.CopyFrom(model.proto)
        best = _Attempt("none", proto, [])
    before_nodes, after_nodes = len(model.proto.graph.node), best.nodes
    fused_before = fused_op_counts(model.proto)
    new_fused = {op: count - fused_before.get(op, 0) for op, count in best.fused.items() if count > fused_before.get(op, 0)}
    changes_by_op = op_count_changes(model.proto, best.proto)
    changed = best.fuser != "none" and (bool(changes_by_op) or before_nodes != after_nodes)
    changes = []
    if new_fused:
        listed = ", ".join(f"{count} {op}" for op, count in new_fused.items())
        changes.append(f"fused {listed} ({_FUSER_NAMES[best.fuser]}, {model_type}, {heads or '?'} heads, hidden {hidden or '?'})")
    changes.append(f"nodes {before_nodes} -> {after_nodes}" if changed else "no fusion applied")
    if best.fuser == "ort" and best.attention and model_type == "bert" and options.attention_mask_format == "auto":
        notes.append("fused attention reads the mask as one length per row (ORT's default for bert): right-padded "
                     "batches only; attention_mask_format 'raw' keeps any 0/1 mask")
    if weight_bytes(best.proto) > EXTERNAL_DATA_THRESHOLD:
        notes.append("the fused model's weights are too big for one .onnx file: save it with external data before running it")
    details = {
        "fuser": best.fuser,
        "model_type": model_type,
        "num_heads": heads,
        "hidden_size": hidden,
        "detected": info.to_dict(),
        "nodes_before": before_nodes,
        "nodes_after": after_nodes,
        "fused_ops": best.fused,
        "fused_ops_before": fused_before,
        "op_changes": changes_by_op,
        "attempts": [attempt.to_dict() for attempt in attempts],
        "options": options.to_dict(),
        "external_data": options.external_data,
    }
    return TransformResult(best.proto, changed, changes, _dedupe(notes), details)


def _dedupe(lines: list[str]) -> list[str]:
    return list(dict.fromkeys(line for line in lines if line))


# --- ORT's optimizer --------------------------------------------------------------------------


def _ort_fuse(model: Model, model_type: str, heads: int, hidden: int, options: FusionOptions) -> onnx.ModelProto:
    """ORT's graph optimizer at opt_level (run here, in a temp folder), then ORT's Python fusions."""
    from onnxruntime.transformers.optimizer import MODEL_TYPES as ORT_MODEL_TYPES
    from onnxruntime.transformers.optimizer import optimize_model

    if model_type not in ORT_MODEL_TYPES:
        raise UserError(f"onnxruntime {runtime.version()}'s optimizer does not know model type '{model_type}'")
    level = options.opt_level if options.opt_level is not None else ORT_MODEL_TYPES[model_type][2]
    proto = _ort_graph_optimize(model, level, options) if level > 0 else loaded_copy(model)
    if options.only_onnxruntime:
        return proto
    # opt_level=0: the ORT pass above already ran; ORT's own would import torch only to look for ROCm.
    optimizer = optimize_model(proto, model_type, heads, hidden, _ort_fusion_options(model_type, options), opt_level=0,
                               use_gpu=options.use_gpu)
    return optimizer.model


def _ort_fusion_options(model_type: str, options: FusionOptions):  # -> onnxruntime FusionOptions
    from onnxruntime.transformers.fusion_options import (
        FusionOptions as OrtFusionOptions,
    )

    ort_options = OrtFusionOptions(model_type)
    for name in options.disabled:
        attribute, value = ORT_SWITCHES[name]
        setattr(ort_options, attribute, value)
    for name in options.enabled:
        attribute, value = ORT_OPT_IN[name]
        setattr(ort_options, attribute, value)
    if MASK_FORMATS[options.attention_mask_format] is not None:
        ort_options.attention_mask_format = MASK_FORMATS[options.attention_mask_format]
    return ort_options


def _ort_graph_optimize(model: Model, level: int, options: FusionOptions) -> onnx.ModelProto:
    """Let an ORT session optimize the graph and write it out (external data kept apart for big models)."""
    ort = runtime.ort()
    with tempfile.TemporaryDirectory(prefix="ortforge-fusion-") as folder:
        source, entries = _ort_input(model, Path(folder))
        session_options = runtime.quiet_session_options()
        session_options.graph_optimization_level = {
            1: ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            2: ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            99: ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[level]
        output = Path(folder) / "optimized.onnx"
        session_options.optimized_model_filepath = str(output)
        session_options.add_session_config_entry("session.optimized_model_external_initializers_file_name", "optimized.onnx.data")
        session_options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        for key, value in entries.items():
            session_options.add_session_config_entry(key, value)
        # ConstantSharing merges equal constants across the graph and would break pattern matching.
        disabled = ["ConstantSharing"] + (ORT_PREPASS_BLOCKERS if level > 1 and not options.only_onnxruntime else [])
        try:
            ort.InferenceSession(source, session_options, providers=_prepass_providers(options), disabled_optimizers=disabled)
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types; the user needs one line
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"{model.name}: ORT's graph optimizer (opt_level {level}) failed: {first}") from None
        return onnx.load(str(output))


def _ort_input(model: Model, folder: Path) -> tuple[bytes | str, dict[str, str]]:
    """What the session reads: the model's own file, its bytes, or (over 2 GB in memory) a temporary copy."""
    if (model.path is not None and not model.changes) or weight_bytes(model.proto) <= EXTERNAL_DATA_THRESHOLD:
        return model.ort_source()
    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)  # save_model reads external data into the proto it is given: not the caller's
    saved = save_model(proto, folder / "input.onnx", source=model, external_data=True)
    return str(saved), {}


def _prepass_providers(options: FusionOptions) -> list[str]:
    if not options.use_gpu:
        return ["CPUExecutionProvider"]
    available = runtime.available_providers()
    for provider in ("CUDAExecutionProvider", "ROCMExecutionProvider", "MIGraphXExecutionProvider", "DmlExecutionProvider"):
        if provider in available:
            return [provider, "CPUExecutionProvider"]
    raise UserError("use_gpu: this onnxruntime has no GPU execution provider", hint="install onnxruntime-gpu, or leave use_gpu off")


# --- onnxscript's fuser -----------------------------------------------------------------------

# (onnxscript's count name, module in onnxscript.rewriter.ort_fusions, its function, ortforge's switch),
# in the order the steps depend on each other: SDPA before MHA before packed-QKV Attention.
ONNXSCRIPT_STEPS = (
    ("erf_gelu", "erfgelu", "fuse_erfgelu", "gelu"),
    ("rms_normalization", "rms_normalization", "fuse_rms_normalization", "layer_norm"),
    ("skip_layer_normalization", "skip_normalization", "fuse_skip_layer_normalization", "skip_layer_norm"),
    ("skip_rms_normalization", "skip_normalization", "fuse_skip_rms_normalization", "skip_layer_norm"),
    ("rotary_embedding", "rotary_embedding", "fuse_rotary_embedding", "rotary_embeddings"),
    ("cos_sin_cache", "cos_sin_cache", "fuse_cos_sin_cache", "rotary_embeddings"),
    ("partial_rotary_embedding", "rotary_embedding", "fuse_partial_rotary_embedding", "rotary_embeddings"),
    ("sdpa", "sdpa", "fuse_sdpa", "attention"),
    ("gqa", "gqa", "fuse_gqa", "attention"),
    ("packed_qkv_for_gqa", "gqa_packed_qkv", "fuse_qkv_gqa", "attention"),
    ("mha1", "mha", "fuse_mha1", "attention"),
    ("mha2", "mha", "fuse_mha2", "attention"),
    ("mha_scale", "mha_scale", "fuse_mha_scale", "attention"),
    ("mha_bias", "mha_bias", "fuse_mha_bias", "multi_head_attention_bias"),
    ("attention", "attention", "fuse_attention", "attention"),
    ("gelu", "gelu", "fuse_gelu", "gelu"),
    ("bias_gelu", "bias_gelu", "fuse_bias_gelu", "bias_gelu"),
    ("sdpa_via_mha", "sdpa_via_mha", "replace_sdpa_by_mha", "attention"),
)


def _onnxscript_available() -> bool:
    try:
        import onnxscript.rewriter.ort_fusions  # noqa: F401
    except ImportError:
        return False
    return True


def _require_onnxscript() -> None:
    if not _onnxscript_available():
        raise UserError("the onnxscript fuser needs the onnxscript package", hint="pip install 'ortforge[fusion]'")


def _onnxscript_fuse(model: Model, options: FusionOptions) -> tuple[onnx.ModelProto, dict[str, int]]:
    """onnxscript's ORT fusions on the model; unchanged external weights stay in the source's data files."""
    import onnx_ir as ir

    ir_model = ir.serde.deserialize_model(model.proto)
    if model.base_dir is not None:
        ir.external_data.set_base_dir(ir_model.graph, model.base_dir)
    if set(options.disabled) & _onnxscript_switches():
        counts = _onnxscript_steps(ir_model, set(options.disabled))
    else:
        from onnxscript.rewriter.ort_fusions import optimize_for_ort

        ir_model, counts = optimize_for_ort(ir_model)
    proto = ir.serde.serialize_model(ir_model)
    return proto, {name: int(count) for name, count in counts.items() if count}


def _onnxscript_switches() -> set[str]:
    return {switch for _, _, _, switch in ONNXSCRIPT_STEPS}


def _onnxscript_steps(ir_model, disabled: set[str]) -> dict[str, int]:
    """onnxscript's fusion steps one by one, skipping the disabled ones (its one-call API has no switches)."""
    import importlib

    import onnx_ir.passes.common as common_passes
    from onnxscript import optimizer, rewriter
    from onnxscript.rewriter.ort_fusions import (
        ORT_PATTERN_REWRITE_RULES,
        shape_optimization,
    )

    common_passes.ShapeInferencePass()(ir_model)
    optimizer.optimize(ir_model)
    shape_optimization.rules.apply_to_model(ir_model)
    optimizer.optimize(ir_model)
    counts: dict[str, int] = {}
    for name, module_name, function_name, switch in ONNXSCRIPT_STEPS:
        mha_fused = counts.get("mha1", 0) + counts.get("mha2", 0)
        if switch in disabled or (name in ("mha_bias", "attention") and not mha_fused):
            continue
        module = importlib.import_module(f"onnxscript.rewriter.ort_fusions.{module_name}")
        step = getattr(module, function_name, None)
        if step is None:
            raise UserError(f"this onnxscript has no fusion step '{function_name}'", hint="use fuser 'ort' or another onnxscript version")
        counts[name] = step(ir_model, apply_shape_inference=True) if name == "sdpa" else step(ir_model)
        if name == "cos_sin_cache":
            common_passes.CommonSubexpressionEliminationPass()(ir_model)
    optimizer.optimize(ir_model)
    rewriter.rewrite(ir_model, ORT_PATTERN_REWRITE_RULES)
    common_passes.LiftConstantsToInitializersPass(lift_all_constants=False, size_limit=1)(ir_model)
    common_passes.RemoveInitializersFromInputsPass()(ir_model)
    common_passes.ShapeInferencePass()(ir_model)
    return counts


# --- keeping library chatter out of the user's terminal ---------------------------------------


class _NoteHandler(logging.Handler):
    """Collects warnings that ORT's and onnxscript's fusion code log, as notes."""

    def __init__(self, notes: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.notes = notes

    def emit(self, record: logging.LogRecord) -> None:
        if any(part in record.pathname for part in LIBRARY_PATHS):
            self.notes.append(f"fuser: {record.getMessage().strip().splitlines()[0]}")


@contextlib.contextmanager
def _library_output(notes: list[str]) -> Iterator[None]:
    """The fusers print and log freely; ortforge shows their warnings as notes instead."""
    handler = _NoteHandler(notes)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
        for caught_warning in caught:
            if any(part in str(caught_warning.filename) for part in LIBRARY_PATHS):
                notes.append(f"fuser: {caught_warning.message}")
            else:  # not ours to swallow
                warnings.warn_explicit(caught_warning.message, caught_warning.category, caught_warning.filename, caught_warning.lineno)
    finally:
        root.removeHandler(handler)
