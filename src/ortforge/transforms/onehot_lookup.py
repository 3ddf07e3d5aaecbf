"""One-hot products as table lookups: MatMul(Cast(Equal(i, arange(K))), W) is row i of W, read by one Gather.

Exporters write embedding lookups as a one-hot tensor times a table (jax2tf does in Google's magika: 2048 bytes, 257
classes, 64 features). The one-hot tensor is [..., K] floats built by Equal and Cast, then multiplied by W [K, N]; in
magika's static int8 model those nodes and the one-hot's QuantizeLinear took ~22% of the time. Gather reads the same
rows. Exact: a one-hot row times W adds zeros to one row of W. An index outside 0..K-1 makes an all-zero one-hot row,
hence a zero output row, so the table gets a zero row appended and indices are clipped to [-1, K]: Gather reads both
ends as that zero row.

Matched where i's last axis is provably 1 (the one-hot axis is then new, not a comparison of K values), the constant
is arange(K) laid along the last axis, and the Equal's and Cast's outputs are read by nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ortforge.core.graph import GraphIndex
from ortforge.core.model import Model, fresh_name
from ortforge.transforms import TransformResult, drop_unused_initializers

INTEGER_TYPES = {onnx.TensorProto.INT32: np.int32, onnx.TensorProto.INT64: np.int64}
MIN_OPSET = 13  # Clip on integers (12) and Squeeze with its axes as an input (13)
MAX_HOPS = 8  # how far back a shape's last element is followed


@dataclass
class LookupSite:
    """One one-hot product: the index tensor, the table's initializer name and the nodes replaced."""

    index: str
    table: str
    output: str
    nodes: list[onnx.NodeProto]
    index_type: int = onnx.TensorProto.INT64  # the indices' integer type (the clip bounds are made of it)


def _shape_last_is_one(index: GraphIndex, name: str, hops: int = MAX_HOPS) -> bool:
    """Whether a 1-D shape tensor's last element is the constant 1 (through Cast and Concat)."""
    constant = index.constant(name)
    if constant is not None:
        value = numpy_helper.to_array(constant).reshape(-1)
        return value.size > 0 and int(value[-1]) == 1
    node = index.producer.get(name)
    if node is None or hops == 0:
        return False
    if node.op_type == "Cast":
        return _shape_last_is_one(index, node.input[0], hops - 1)
    if node.op_type == "Concat":
        return _shape_last_is_one(index, node.input[-1], hops - 1)
    return False


def _last_axis_is_one(index: GraphIndex, shapes: dict[str, list], name: str, hops: int = MAX_HOPS) -> bool:
    """Whether a value's last axis is 1 for every input: inferred so, or made so by Reshape or Expand."""
    dims = shapes.get(name)
    if dims and dims[-1] == 1:
        return True
    node = index.producer.get(name)
    if node is None or hops == 0:
        return False
    if node.op_type == "Reshape":  # a 0 would copy an input axis: only a literal 1 counts
        return _shape_last_is_one(index, node.input[1], hops - 1)
    if node.op_type == "Expand":  # broadcasting 1 against 1 keeps 1
        return _last_axis_is_one(index, shapes, node.input[0], hops - 1) and _shape_last_is_one(index, node.input[1], hops - 1)
    return False


def _arange_width(index: GraphIndex, name: str) -> int | None:
    """K, when `name` is the constant 0, 1, ..., K-1 along the last axis (every other axis 1)."""
    constant = index.constant(name)
    if constant is None or constant.data_type not in INTEGER_TYPES or constant.data_location == onnx.TensorProto.EXTERNAL:
        return None
    value = numpy_helper.to_array(constant)
    if value.ndim == 0 or any(d != 1 for d in value.shape[:-1]):
        return None
    return value.shape[-1] if np.array_equal(value.reshape(-1), np.arange(value.shape[-1])) else None


def _site_at(index: GraphIndex, shapes: dict[str, list], matmul: onnx.NodeProto, outputs: set[str]) -> LookupSite | None:
    table = index.constant(matmul.input[1])
    cast = index.producer.get(matmul.input[0])
    if table is None or matmul.input[1] not in index.tensors or len(table.dims) != 2 or cast is None or cast.op_type != "Cast":
        return None
    if table.data_location == onnx.TensorProto.EXTERNAL:  # the padded table is written inline
        return None
    if helper.get_attribute_value(next(a for a in cast.attribute if a.name == "to")) != table.data_type:
        return None
    equal = index.producer.get(cast.input[0])
    if equal is None or equal.op_type != "Equal":
        return None
    for values, arange in (equal.input, equal.input[::-1]):
        width = _arange_width(index, arange)
        dims = shapes.get(values)
        if width != table.dims[0] or index.is_constant(values) or not dims or len(dims) < max(2, len(index.dims(arange) or ())):
            continue
        if not _last_axis_is_one(index, shapes, values):
            continue
        inner = [equal.output[0], cast.output[0]]
        if any(name in outputs or len(index.consumers.get(name, [])) != 1 for name in inner):
            return None
        return LookupSite(values, matmul.input[1], matmul.output[0], [equal, cast, matmul])
    return None


def _reads_one_hot(index: GraphIndex, matmul: onnx.NodeProto) -> bool:
    """Whether the MatMul's input A is a Cast of an Equal (the shape of a one-hot product, before any proof)."""
    cast = index.producer.get(matmul.input[0])
    return cast is not None and cast.op_type == "Cast" and getattr(index.producer.get(cast.input[0]), "op_type", "") == "Equal"


def _opset(proto: onnx.ModelProto) -> int:
    return next((entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx")), 0)


def find_lookups(proto: onnx.ModelProto) -> list[LookupSite]:
    """One-hot MatMuls of the main graph that a Gather can replace exactly (none below opset 13)."""
    if _opset(proto) < MIN_OPSET:
        return []
    index = GraphIndex(proto)
    matmuls = [n for n in proto.graph.node if n.op_type == "MatMul" and n.domain in ("", "ai.onnx") and _reads_one_hot(index, n)]
    if not matmuls:  # most models: no shape inference needed to say so
        return []
    inferred = onnx.shape_inference.infer_shapes(proto)
    shapes = {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
              for v in [*inferred.graph.value_info, *inferred.graph.input] if v.type.tensor_type.HasField("shape")}  # fmt: skip
    types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.graph.value_info, *inferred.graph.input]}
    outputs = {o.name for o in proto.graph.output}
    found = []
    for matmul in matmuls:
        site = _site_at(index, shapes, matmul, outputs)
        if site is not None and types.get(site.index) in INTEGER_TYPES:
            site.index_type = types[site.index]
            found.append(site)
    return found


def onehot_lookup(model: Model) -> TransformResult:
    """Replace each one-hot MatMul with a Gather from its table plus a zero row (see the module's description)."""
    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    sites = find_lookups(proto)
    if not sites:
        return TransformResult(proto, False, notes=["no one-hot MatMul to read as a table lookup"])
    used = {t.name for t in proto.graph.initializer} | {name for n in proto.graph.node for name in (*n.input, *n.output)}
    initializers = {t.name: t for t in proto.graph.initializer}
    widths = ", ".join(f"{initializers[s.table].dims[0]} classes" for s in sites)
    for site in sites:
        table = numpy_helper.to_array(initializers[site.table])
        rows = table.shape[0]
        dtype = INTEGER_TYPES[site.index_type]
        names = {key: fresh_name(f"{site.output}_{key}", used) for key in ("table", "axes", "low", "high", "squeezed", "clipped")}
        padded = np.concatenate([table, np.zeros((1, table.shape[1]), table.dtype)])
        proto.graph.initializer.extend([
            numpy_helper.from_array(padded, names["table"]), numpy_helper.from_array(np.array([-1], np.int64), names["axes"]),
            numpy_helper.from_array(np.array(-1, dtype), names["low"]), numpy_helper.from_array(np.array(rows, dtype), names["high"]),
        ])  # fmt: skip
        position = next(i for i, n in enumerate(proto.graph.node) if site.output in n.output)
        lookup = [
            helper.make_node("Squeeze", [site.index, names["axes"]], [names["squeezed"]], name=names["squeezed"]),
            helper.make_node("Clip", [names["squeezed"], names["low"], names["high"]], [names["clipped"]], name=names["clipped"]),
            helper.make_node("Gather", [names["table"], names["clipped"]], [site.output], name=f"{site.output}_lookup", axis=0),
        ]
        for offset, node in enumerate(lookup):
            proto.graph.node.insert(position + offset, node)
        for node in site.nodes:
            proto.graph.node.remove(node)
    drop_unused_initializers(proto)
    return TransformResult(proto, True, [f"read {len(sites)} one-hot MatMul(s) ({widths}) as table lookups (Gather)"],
                           details={"lookups": len(sites), "nodes_removed": 3 * len(sites)})  # fmt: skip
