"""Transformer detection: model type, attention geometry and exporter, read from the graph alone.

No HuggingFace config is needed: the model type follows from structure (token or image inputs, causal
masks, encoder-decoder inputs, norm kinds), heads and hidden size from `geometry`, and the export style
from node names and metadata. Attention blocks and norms are counted by `patterns`, as `inspect` counts
them. The fuser driver in `transforms.fusion` decides from this what to fuse with.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from ortforge.analysis.geometry import find_geometry
from ortforge.analysis.patterns import count_attention, count_norms
from ortforge.core.graph import GraphIndex
from ortforge.core.model import Model

MODEL_TYPES = ("bert", "gpt2", "bart", "t5", "vit", "clip")


@dataclass
class TransformerInfo:
    """What the graph says about a transformer: family, attention geometry, exporter; and why."""

    model_type: str = "unknown"  # bert, gpt2, bart, t5, vit, clip or unknown
    num_heads: int = 0  # 0: not found
    hidden_size: int = 0
    head_size: int = 0
    attention_blocks: int = 0  # fused attention ops and Softmax nodes between two activation MatMuls
    export_style: str = "other"  # torchscript, dynamo or other
    evidence: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def detect_transformer(model: Model) -> TransformerInfo:
    """Model type, heads, hidden size and exporter, read from the graph alone (no HuggingFace config)."""
    index = GraphIndex(model.proto)
    info = TransformerInfo()
    info.export_style = _export_style(index, info.evidence)
    info.attention_blocks = count_attention(index).blocks
    if info.attention_blocks == 0:
        info.evidence.append("no attention op and no Softmax between two activation MatMuls: not a transformer that ortforge can fuse")
        return info
    geometry = find_geometry(index)
    info.num_heads, info.hidden_size, info.head_size = geometry.num_heads, geometry.hidden_size, geometry.head_size
    info.evidence.extend(geometry.evidence)
    _find_model_type(index, info)
    return info


def _export_style(index: GraphIndex, evidence: list[str]) -> str:
    """TorchScript names nodes after module paths ('/encoder/layer.0/...'); dynamo leaves pkg.torch metadata."""
    nodes = index.graph.node
    if not nodes:
        return "other"
    dynamo_marks = sum(1 for n in nodes if any(p.key.startswith(("pkg.torch", "namespace")) for p in n.metadata_props))
    dynamo_names = sum(1 for n in nodes if re.match(r"node_", n.name))
    scoped_names = sum(1 for n in nodes if n.name.startswith("/"))
    producer = index.proto.producer_name.lower()
    if dynamo_marks > len(nodes) / 4 or (producer == "pytorch" and dynamo_names > len(nodes) / 2):
        evidence.append(f"dynamo export: {max(dynamo_marks, dynamo_names)} of {len(nodes)} nodes carry torch.export names/metadata")
        return "dynamo"
    if scoped_names > len(nodes) / 4:
        evidence.append(f"TorchScript export: {scoped_names} of {len(nodes)} nodes named by module path")
        return "torchscript"
    if producer == "pytorch":
        evidence.append("producer 'pytorch' without dynamo metadata: taken as a TorchScript export")
        return "torchscript"
    evidence.append(f"exporter not recognised (producer '{index.proto.producer_name}'): export style other")
    return "other"


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


def _find_model_type(index: GraphIndex, info: TransformerInfo) -> None:
    facts = _structure(index, info)
    info.model_type, why = _classify(facts)
    info.evidence.extend(why)


def _structure(index: GraphIndex, info: TransformerInfo) -> _Structure:
    facts = _Structure()
    facts.token_inputs, facts.table_shape = _token_inputs(index)
    facts.image_input, facts.patch_conv = _patch_embedding(index)
    facts.class_token = _has_class_token(index, info.hidden_size)
    facts.causal = _causal_evidence(index)
    facts.encoder_decoder = _encoder_decoder_evidence(index, facts.token_inputs)
    norms = count_norms(index)  # as `inspect` counts them: subgraphs included
    facts.layer_norms, facts.rms_norms = norms.layer, norms.rms
    ops = Counter(node.op_type for node in index.graph.node)
    facts.relative_bias = ops["Log"] > 0 and _has_bias_table(index, info.num_heads)
    facts.argmax_pooling = ops["ArgMax"] > 0
    facts.name_hints = _name_hints(index)
    return facts


def _has_class_token(index: GraphIndex, hidden: int) -> bool:
    """A learned [1, 1, hidden] vector concatenated in front of the patch sequence."""
    for node in index.graph.node:
        if node.op_type == "Concat" and hidden:
            for name in node.input:
                dims = index.dims(name) or ()
                if len(dims) == 3 and dims[-1] == hidden and dims[1] == 1:
                    return True
    return False


def _has_bias_table(index: GraphIndex, heads: int) -> bool:
    """T5's relative position bias: a [buckets, heads] table gathered at bucketed (Log) distances."""
    for node in index.graph.node:
        dims = index.dims(node.input[0]) if node.op_type == "Gather" else None
        if dims is None or len(dims) != 2 or dims[0] > 512 or node.input[1] in index.inputs:
            continue
        if dims[1] == heads or not heads:
            return True
    return False


def _token_inputs(index: GraphIndex) -> tuple[list[str], tuple[int, ...] | None]:
    """Integer graph inputs that index a 2-D embedding table (through Cast/Reshape/Unsqueeze)."""
    found, table = [], None
    for name, value in index.inputs.items():
        if value.type.tensor_type.elem_type not in (onnx.TensorProto.INT64, onnx.TensorProto.INT32):
            continue
        dims = _indexed_table(index, name)
        if dims is not None:
            found.append(name)
            table = table or dims
    return found, table


def _indexed_table(index: GraphIndex, name: str, depth: int = 0) -> tuple[int, ...] | None:
    if depth > 3:
        return None
    for node in index.consumers.get(name, []):
        if node.op_type == "Gather" and len(node.input) > 1 and node.input[1] == name:
            dims = index.dims(node.input[0])
            if dims is not None and len(dims) == 2 and dims[0] > 2:  # token-type tables (2 rows) are not vocabularies
                return dims
        if node.op_type in ("Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten") and node.input[0] == name:
            dims = _indexed_table(index, node.output[0], depth + 1)
            if dims is not None:
                return dims
    return None


def _patch_embedding(index: GraphIndex) -> tuple[str, tuple[int, ...] | None]:
    """A Conv with stride == kernel over a 4-D float input: an image cut into patches."""
    for name, value in index.inputs.items():
        tensor_type = value.type.tensor_type
        if tensor_type.elem_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16):
            continue
        if len(tensor_type.shape.dim) != 4:
            continue
        frontier = [name]
        for _ in range(4):
            consumers = [n for f in frontier for n in index.consumers.get(f, [])]
            for node in consumers:
                if node.op_type == "Conv":
                    attributes = {a.name: list(a.ints) for a in node.attribute}
                    kernel, strides = attributes.get("kernel_shape"), attributes.get("strides")
                    if kernel and kernel == strides and kernel[0] > 1:
                        return name, tuple(kernel)
            frontier = [o for n in consumers if n.op_type in ("Sub", "Div", "Mul", "Add", "Cast", "Transpose") for o in n.output]
    return "", None


def _causal_evidence(index: GraphIndex) -> str:
    """Why attention looks causal: a Trilu, a triangular constant mask, or past key/value inputs."""
    names = [value.name.lower() for value in index.graph.input] + [value.name.lower() for value in index.graph.output]
    if any("past" in name or "present" in name for name in names):
        return "past/present key-value inputs or outputs"
    if any(node.op_type == "Trilu" for node in index.graph.node):
        return "a Trilu builds the attention mask"
    for name, tensor in index.tensors.items():
        if _is_triangular(tensor):
            return f"a triangular constant mask {list(tensor.dims)} ('{name}')"
    for node in index.graph.node:
        if node.op_type in ("Less", "LessOrEqual", "Greater", "GreaterOrEqual") and _compares_positions(index, node):
            return f"key positions compared with query positions ({node.op_type})"
    if any("causal" in node.name.lower() for node in index.graph.node):
        return "nodes named 'causal'"
    return ""


def _compares_positions(index: GraphIndex, node: onnx.NodeProto) -> bool:
    """kv_idx <= q_idx: both sides are position vectors (a Range or a folded one), neither a scalar bound."""
    return all(_is_positions(index, name) for name in node.input[:2])


def _is_positions(index: GraphIndex, name: str) -> bool:
    for _ in range(5):
        tensor = index.constant(name)
        if tensor is not None:
            return math.prod(tensor.dims) > 1
        node = index.producer.get(name)
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


def _encoder_decoder_evidence(index: GraphIndex, token_inputs: list[str]) -> str:
    names = [name.lower() for name in index.inputs]
    markers = [n for n in names if "decoder" in n or "encoder_hidden_states" in n or "encoder_outputs" in n]
    if markers:
        return f"inputs {markers[:2]}"
    ids = [n for n in token_inputs if not re.search(r"token_type|segment|position", n, re.IGNORECASE)]
    if len(ids) >= 2:
        return f"two token-id inputs {ids[:2]}"
    return ""


def _name_hints(index: GraphIndex) -> set[str]:
    """Family names in the graph's or the weights' names: a hint, never proof (node names are left out:
    ONNX has an op called Clip)."""
    names = [index.graph.name] + [t.name for t in index.graph.initializer]
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
        return "unknown", why + ["no token-id or image input found: family unknown (force it with model_type, --transformer)"]
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
