"""Seeded synthetic feeds of the right dtype and plausible value ranges (token ids, masks)."""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from ortforge.core.errors import OptionError
from ortforge.core.graph import GraphIndex
from ortforge.core.model import Model
from ortforge.data.specs import InputSpec, integer_info, is_ml_dtype, numpy_dtype

GENERIC_INT_HIGH = 128
SEQUENCE_ITEMS = 2  # tensors in a generated sequence input
# Ops that pass indices through unchanged in meaning, on the way to an embedding Gather.
INDEX_PASSTHROUGH = {"Cast", "Unsqueeze", "Squeeze", "Reshape", "Flatten", "Identity", "Expand"}
# (op, position of the indices input) -> position of the table they index. ORT's fused embedding (transformer
# fusion) and weight-only quantized embeddings hold the table as well as a plain Gather.
EMBEDDING_TABLES = {("Gather", 1): 0, ("GatherBlockQuantized", 1): 0, ("EmbedLayerNormalization", 0): 2, ("EmbedLayerNormalization", 1): 4,
                    ("EmbedLayerNormalization", 8): 3}  # fmt: skip
MASK_NAME = re.compile(r"mask", re.IGNORECASE)
ZERO_NAME = re.compile(r"token_type|segment", re.IGNORECASE)
POSITION_NAME = re.compile(r"position", re.IGNORECASE)


def vocabulary_sizes(model: Model) -> dict[str, int]:
    """Input name -> rows of the embedding table it indexes (a weight gathered from, plain or fused)."""
    index = GraphIndex(model.proto)
    sizes = {}
    for value in model.proto.graph.input:
        rows = _find_table_rows(index, value.name, depth=0)
        if rows:
            sizes[value.name] = rows
    return sizes


def _find_table_rows(index: GraphIndex, name: str, depth: int) -> int | None:
    if depth > 4:
        return None
    for node in index.consumers.get(name, []):
        for position, consumed in enumerate(node.input):
            table = EMBEDDING_TABLES.get((node.op_type, position))
            if consumed == name and table is not None and len(node.input) > table and node.input[table]:
                dims = index.dims(node.input[table])
                if dims:
                    return int(dims[0])
        if node.op_type in INDEX_PASSTHROUGH and node.input[0] == name:
            rows = _find_table_rows(index, node.output[0], depth + 1)
            if rows:
                return rows
    return None


def generate_sample(spec: InputSpec, shape: tuple[int, ...], rng: np.random.Generator, vocab: int | None) -> tuple[Any, str]:
    """One value for one input (a list of arrays for a sequence, present for an optional), and a few words on how it was chosen."""
    if spec.sequence:
        items = [_generate_array(spec, shape, rng, vocab) for _ in range(SEQUENCE_ITEMS)]
        return [array for array, _ in items], f"a sequence of {SEQUENCE_ITEMS}: {items[0][1]}"
    array, why = _generate_array(spec, shape, rng, vocab)
    return array, (f"present: {why}" if spec.optional else why)


def _generate_array(spec: InputSpec, shape: tuple[int, ...], rng: np.random.Generator, vocab: int | None) -> tuple[np.ndarray, str]:
    dtype = spec.dtype
    if dtype == "str":
        raise OptionError("data", None, f"input '{spec.name}' takes strings; ortforge cannot invent them, give data")
    if dtype == "bool":
        return np.ones(shape, dtype=bool), "all True"
    if dtype.startswith(("float", "bfloat")):
        values = rng.standard_normal(shape).astype(np.float32)
        return values.astype(numpy_dtype(dtype)), "standard normal"
    if MASK_NAME.search(spec.name):
        return np.ones(shape, dtype=numpy_dtype(dtype)), "mask: all ones"
    if ZERO_NAME.search(spec.name):
        return np.zeros(shape, dtype=numpy_dtype(dtype)), "segment ids: zeros"
    if POSITION_NAME.search(spec.name) and shape:
        return np.broadcast_to(np.arange(shape[-1]).astype(numpy_dtype(dtype)), shape).copy(), "positions: 0..n-1"
    target = numpy_dtype(dtype)
    high = min(vocab or GENERIC_INT_HIGH, int(integer_info(target).max) + 1)
    why = f"token ids in [0, {high}) (vocabulary from the embedding table)" if vocab else f"integers in [0, {high})"
    if is_ml_dtype(target):  # ml_dtypes' narrow integers: drawn wider, then cast
        return rng.integers(0, high, size=shape).astype(target), why
    return rng.integers(0, high, size=shape, dtype=target), why
