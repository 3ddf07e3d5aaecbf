"""What `inspect` says of a decoder language model with a KV cache, with the evidence for each fact.

The roles of its inputs and outputs (tokens, mask, positions, past/present pairs) come from `data.decoder_io`, which
generated inputs and the generation loop use too; here the graph adds how attention is computed (ORT's fused
GroupQueryAttention / MultiHeadAttention, or decomposed MatMul + Softmax over a Concat of past and new keys), the head
counts and the hidden size.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx

from ortforge.core.graph import GraphIndex
from ortforge.data.decoder_io import DecoderIO, decoder_io, embedding_table, fused_attention

PROJECTIONS = ("MatMul", "Gemm", "MatMulNBits")
DECOMPOSED = "decomposed"
# Between the LM head's product and the logits output, exporters put at most a bias, a reshape or a cast.
LOGITS_PASS_THROUGH = ("Add", "Reshape", "Identity", "Cast", "Squeeze", "Unsqueeze")


@dataclass
class DecoderFacts:
    io: DecoderIO
    attention: str  # 'GroupQueryAttention (fused)', 'decomposed (MatMul + Softmax)', ...
    layers: int
    heads: int | None
    kv_heads: int | None
    head_size: int | None
    hidden: int | None
    vocabulary: int | None
    evidence: list[str] = field(default_factory=list)
    lm_head: str | None = None  # the node projecting hidden states to the logits (named), when one is found

    @property
    def decomposed(self) -> bool:
        """Attention written out in plain ops (no fused attention node): what `transforms/decoder_attention` rewrites."""
        return self.attention.startswith(DECOMPOSED)

    def to_dict(self) -> dict:
        io = self.io
        return {
            "layers": self.layers, "heads": self.heads, "kv_heads": self.kv_heads, "head_size": self.head_size,
            "hidden": self.hidden, "vocabulary": self.vocabulary, "attention": self.attention,
            "cache": {"layout": io.layout, "past_sequence_dim": io.past_sequence_dim(),
                      "pairs": [{"past": e.past, "present": e.present, "layer": e.layer, "part": e.part} for e in io.cache]},
            "inputs": {"tokens": io.tokens, "attention_mask": io.attention_mask, "position_ids": io.position_ids, "other": io.other_inputs},
            "logits": io.logits, "lm_head": self.lm_head, "evidence": self.evidence,
        }  # fmt: skip

    def summary(self) -> str:
        heads = f"{self.heads or '?'} heads / {self.kv_heads or '?'} KV heads" + (f" of size {self.head_size}" if self.head_size else "")
        return f"decoder with a KV cache: {self.layers} layers, {heads}, hidden {self.hidden or '?'}, vocabulary {self.vocabulary or '?'}; attention {self.attention}"


def find_decoder(proto: onnx.ModelProto) -> DecoderFacts | None:
    """The decoder's facts, or None when the graph has no past/present KV-cache pairs."""
    io = decoder_io(proto.graph)
    if io is None:
        return None
    index = GraphIndex(proto)
    fused = fused_attention(index)
    evidence = [f"{len(io.cache)} past inputs handed back as present outputs ({io.cache[0].past} -> {io.cache[0].present}, ...)",
                f"tokens '{io.tokens}'" + (f", attention mask '{io.attention_mask}'" if io.attention_mask else "")
                + (f", position ids '{io.position_ids}'" if io.position_ids else "")]  # fmt: skip
    heads, kv_heads = None, io.kv_heads
    if fused:
        node, heads, kv_heads = fused[0], fused[1], fused[2] or kv_heads
        count = sum(n.op_type == node.op_type and n.domain == node.domain for n in index.nodes)
        attention = f"{node.op_type} (fused, {count} node(s))"
        evidence.append(f"{count} com.microsoft {node.op_type} node(s)" + (f": num_heads {heads}" if heads else ""))
    else:
        attention = f"{DECOMPOSED} (MatMul + Softmax over a Concat of past and new keys)"
    vocabulary, hidden = embedding_table(index, io.tokens)
    if heads is None and hidden and io.head_size:
        heads = hidden // io.head_size
        evidence.append(f"heads = hidden {hidden} / head size {io.head_size} (from the cache shape)")
    evidence.append(f"cache layout {io.layout}: {list(io.cache[0].shape)}")
    head_size = io.head_size or (hidden // heads if hidden and heads else None)  # the builder leaves it symbolic ('kv_cache_dim')
    head = lm_head(index, io.logits) if io.logits else None
    if head:
        evidence.append(f"LM head '{head}' computes '{io.logits}'")
    return DecoderFacts(io, attention, io.layers, heads, kv_heads, head_size, hidden, vocabulary, evidence, head)


def lm_head(index: GraphIndex, logits: str) -> str | None:
    """The name of the MatMul/Gemm/MatMulNBits whose product becomes `logits` (through a bias, reshape or cast), if named."""
    name = logits
    for _ in range(len(LOGITS_PASS_THROUGH)):
        node = index.producer.get(name)
        if node is None:
            return None
        if node.op_type in PROJECTIONS:
            return node.name or None
        if node.op_type not in LOGITS_PASS_THROUGH or not node.input:
            return None
        carried = [i for i in node.input if not index.is_constant(i)] if node.op_type == "Add" else node.input[:1]
        if len(carried) != 1:  # an Add of two activations is not a bias
            return None
        name = carried[0]
    return None
