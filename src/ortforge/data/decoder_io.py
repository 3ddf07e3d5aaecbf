"""A decoder's inputs and outputs by role: tokens, attention mask, position ids, and the KV cache's past/present pairs.

A decoder language model is run once over the prompt and then once per generated token, each run handing the
`present` key/value outputs back as the next run's `past` inputs. Exporters name these by convention (Hugging Face /
Optimum and onnxruntime-genai's model builder: `past_key_values.3.key` -> `present.3.key`; older GPT-2 exports:
`past_3` of shape [2, batch, heads, past, head size] -> `present_3`), so roles are read from names and shapes here,
where generated inputs, `inspect` and the generation loop all ask the same question.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import onnx

from ortforge.core.graph import GraphIndex, attributes

Dim = int | str | None
FUSED_ATTENTION = ("GroupQueryAttention", "MultiHeadAttention", "Attention", "PagedAttention")

_LAYER = re.compile(r"(\d+)")
_KEY = re.compile(r"(^|[._])(key|k)([._]|$)", re.IGNORECASE)
_VALUE = re.compile(r"(^|[._])(value|v)([._]|$)", re.IGNORECASE)


@dataclass(frozen=True)
class CacheEntry:
    """One past input and the present output that feeds it on the next run; `part` is key, value or both (stacked)."""

    layer: int
    part: str
    past: str
    present: str
    shape: tuple[Dim, ...]
    elem_type: int

    @property
    def sequence_axis(self) -> int:
        """The axis that grows by one each step: [batch, heads, past, head size] (or [2, batch, heads, past, head size])."""
        return len(self.shape) - 2


@dataclass
class DecoderIO:
    """The roles of a decoder's graph inputs and outputs; `cache` is ordered by layer, key before value."""

    tokens: str
    cache: list[CacheEntry]
    attention_mask: str = ""
    position_ids: str = ""
    logits: str = ""
    other_inputs: list[str] = field(default_factory=list)  # inputs of no known role (a generation loop cannot feed them)

    @property
    def layers(self) -> int:
        return len({entry.layer for entry in self.cache})

    @property
    def layout(self) -> str:
        """BNSH: [batch, KV heads, sequence, head size], as ORT's attention ops and the model builder write it;
        2BNSH: key and value stacked in one tensor."""
        shape = self.cache[0].shape
        return "2BNSH" if len(shape) == 5 else "BNSH" if isinstance(shape[1], int) and not isinstance(shape[2], int) else "BSNH"

    @property
    def kv_heads(self) -> int | None:
        shape = self.cache[0].shape
        heads = shape[-3] if self.layout != "BSNH" else shape[-2]
        return heads if isinstance(heads, int) else None

    @property
    def head_size(self) -> int | None:
        size = self.cache[0].shape[-1]
        return size if isinstance(size, int) else None

    def past_sequence_dim(self) -> Dim:
        entry = self.cache[0]
        return entry.shape[entry.sequence_axis]


@dataclass(frozen=True)
class Port:
    """A graph input or output as roles are read from it: its name, shape (dim values or names) and element type."""

    name: str
    shape: tuple[Dim, ...] | None
    elem_type: int


def _graph_port(value: onnx.ValueInfoProto) -> Port:
    tensor_type = value.type.tensor_type if value.type.HasField("tensor_type") else None
    if tensor_type is None or not tensor_type.HasField("shape"):
        return Port(value.name, None, tensor_type.elem_type if tensor_type is not None else 0)
    shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor_type.shape.dim)
    return Port(value.name, shape, tensor_type.elem_type)


def session_port(arg: object) -> Port:
    """An onnxruntime NodeArg (`session.get_inputs()`) as a Port: 'tensor(float)' -> FLOAT, -1 or None dims kept as names."""
    type_name = str(getattr(arg, "type", "")).removeprefix("tensor(").removesuffix(")")
    elem_type = _ORT_TYPES.get(type_name, 0)
    shape = getattr(arg, "shape", None)
    return Port(str(getattr(arg, "name")), tuple(d if isinstance(d, (int, str)) else None for d in shape) if shape is not None else None, elem_type)


_ORT_TYPES = {"float": onnx.TensorProto.FLOAT, "float16": onnx.TensorProto.FLOAT16, "bfloat16": onnx.TensorProto.BFLOAT16,
              "int64": onnx.TensorProto.INT64, "int32": onnx.TensorProto.INT32, "double": onnx.TensorProto.DOUBLE}  # fmt: skip


def _part(name: str) -> str:
    tail = name.lower().replace("past_key_values", "past").replace("present_key_values", "present")
    if _KEY.search(tail) or "key" in tail:
        return "key"
    if _VALUE.search(tail) or "value" in tail:
        return "value"
    return "both"


def _cache_key(name: str, prefix: str) -> tuple[int, str] | None:
    lowered = name.lower()
    if prefix not in lowered:
        return None
    layer = _LAYER.search(lowered.split(prefix, 1)[1]) or _LAYER.search(lowered)
    return (int(layer.group(1)) if layer else 0, _part(name))


def decoder_io(graph: onnx.GraphProto) -> DecoderIO | None:
    """The graph's decoder roles, or None when it has no past/present KV-cache pairs (not a decoder with a cache)."""
    initializers = {t.name for t in graph.initializer}
    return decoder_roles([_graph_port(v) for v in graph.input if v.name not in initializers], [_graph_port(v) for v in graph.output])


def decoder_roles(inputs: list[Port], outputs: list[Port]) -> DecoderIO | None:
    """Roles from the real inputs and the outputs (a graph's, or a session's through `session_port`)."""
    presents = {}
    for output in outputs:
        key = _cache_key(output.name, "present")
        if key is not None:
            presents[key] = output.name
    cache = []
    for port in inputs:
        key = _cache_key(port.name, "past")
        if key is None or key not in presents or port.shape is None or len(port.shape) not in (4, 5):
            continue
        cache.append(CacheEntry(key[0], key[1], port.name, presents[key], port.shape, port.elem_type))
    integer = (onnx.TensorProto.INT64, onnx.TensorProto.INT32)
    rest = [p for p in inputs if p.name not in {e.past for e in cache}]
    tokens = next((p.name for p in rest if "input_ids" in p.name.lower()), "")
    tokens = tokens or next((p.name for p in rest if p.elem_type in integer and "mask" not in p.name.lower()
                             and "position" not in p.name.lower()), "")  # fmt: skip
    if not cache or not tokens:
        return None
    mask = next((p.name for p in rest if "attention_mask" in p.name.lower()), "")
    positions = next((p.name for p in rest if "position" in p.name.lower()), "")
    logits = next((o.name for o in outputs if "logits" in o.name.lower()), "")
    logits = logits or next((o.name for o in outputs if o.name not in presents.values()), "")
    cache.sort(key=lambda e: (e.layer, e.part != "key"))
    others = [p.name for p in rest if p.name not in (tokens, mask, positions)]
    return DecoderIO(tokens, cache, mask, positions, logits, others)


def fused_attention(index: GraphIndex) -> tuple[onnx.NodeProto, int | None, int | None] | None:
    """The first com.microsoft attention node with its num_heads and kv_num_heads attributes (None when absent)."""
    node = next((n for n in index.nodes if n.op_type in FUSED_ATTENTION and n.domain == "com.microsoft"), None)
    if node is None:
        return None
    found = attributes(node)
    return node, found.get("num_heads"), found.get("kv_num_heads")


def embedding_table(index: GraphIndex, tokens: str) -> tuple[int | None, int | None]:
    """(vocabulary, hidden) from the table the token ids gather from (a Gather, or GatherBlockQuantized: a uint8 table
    packs two 4-bit values a byte; an int4/uint4 one has its logical shape already)."""
    for node in index.consumers.get(tokens, []):
        if node.op_type in ("Gather", "GatherBlockQuantized") and len(node.input) > 1 and node.input[1] == tokens:
            table = index.constant(node.input[0])
            if table is not None and len(table.dims) == 2:
                packed = node.op_type == "GatherBlockQuantized" and table.data_type == onnx.TensorProto.UINT8
                packed = packed and attributes(node).get("bits", 4) == 4
                return table.dims[0], table.dims[1] * (2 if packed else 1)
    return None, None
