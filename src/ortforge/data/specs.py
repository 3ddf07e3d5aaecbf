"""Input specs read from the graph, and concrete shapes for them (user overrides, visible defaults)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper

from ortforge.core.errors import OptionError, UserError
from ortforge.core.model import Model

DEFAULT_BATCH = 1
DEFAULT_SEQUENCE = 128
DEFAULT_IMAGE_SIDE = 224
SEQUENCE_NAME = re.compile(r"seq|len|token|time|step|frame|sample|past|total|^[TLS]$", re.IGNORECASE)
BATCH_NAME = re.compile(r"batch|^N$|^B$|^bs$", re.IGNORECASE)

Dim = int | str | None  # fixed size, symbolic name, or unknown


@dataclass(frozen=True)
class InputSpec:
    """One graph input as ORT will ask for it."""

    name: str
    dtype: str  # numpy dtype name, e.g. "float32" (ml_dtypes' for bfloat16, float8_*, int4, ...); of the elements for a sequence
    shape: tuple[Dim, ...] | None  # None: rank unknown; of each element for a sequence
    kind: str = "tensor"  # one of KINDS: a sequence is fed as a list of arrays, an optional as its value or None

    def describe_shape(self) -> str:
        shape = "?" if self.shape is None else "[" + ", ".join("?" if d is None else str(d) for d in self.shape) + "]"
        return shape if self.kind == "tensor" else f"{self.kind} of {shape}"

    @property
    def sequence(self) -> bool:
        return self.kind.endswith("sequence")

    @property
    def optional(self) -> bool:
        return self.kind.startswith("optional")

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape) if self.shape is not None else None, "kind": self.kind}


KINDS = ("tensor", "sequence", "optional", "optional sequence")


def _numpy_dtype_name(elem_type: int) -> str:
    if elem_type == onnx.TensorProto.STRING:
        return "str"
    return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).name  # ml_dtypes' names for bfloat16, float8, int4


def numpy_dtype(name: str) -> np.dtype:
    """A spec's dtype name as a numpy dtype; ml_dtypes' types first (numpy reads 'int4' as int32)."""
    import ml_dtypes

    found = getattr(ml_dtypes, name, None)
    return np.dtype(found) if isinstance(found, type) and issubclass(found, np.generic) else np.dtype(name)


def is_ml_dtype(dtype: np.dtype) -> bool:
    """A type numpy has only through ml_dtypes (bfloat16, float8_*, int4, ...): numpy files and ORT's binding do not know it."""
    return dtype.type.__module__ == "ml_dtypes"


def integer_info(dtype: np.dtype) -> Any:
    """numpy's iinfo, or ml_dtypes' for its narrow integers (int4, uint4, int2, ...), which numpy's does not know."""
    if is_ml_dtype(dtype):
        import ml_dtypes

        return ml_dtypes.iinfo(dtype)
    return np.iinfo(dtype)


def _unwrap(value: onnx.ValueInfoProto) -> tuple[str, onnx.TypeProto]:
    """The input's kind and the tensor type inside it; one line naming the input for kinds ortforge cannot feed."""
    outer = value.type
    kinds = []
    while outer.WhichOneof("value") in ("sequence_type", "optional_type"):
        kinds.append(outer.WhichOneof("value").removesuffix("_type"))
        outer = outer.sequence_type.elem_type if kinds[-1] == "sequence" else outer.optional_type.elem_type
    kind = " ".join(kinds) or "tensor"
    if outer.WhichOneof("value") != "tensor_type" or kind not in KINDS:
        what = " of ".join(kinds + [str(outer.WhichOneof("value")).removesuffix("_type")])
        raise UserError(f"input '{value.name}' is a {what}; ortforge feeds tensors, sequences of tensors and optionals of either")
    return kind, outer


def _spec_from_value_info(value: onnx.ValueInfoProto) -> InputSpec:
    kind, inner = _unwrap(value)
    tensor_type = inner.tensor_type
    shape: tuple[Dim, ...] | None = None
    if tensor_type.HasField("shape"):
        shape = tuple(
            d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or None) for d in tensor_type.shape.dim
        )
    return InputSpec(value.name, _numpy_dtype_name(tensor_type.elem_type), shape, kind)


def input_specs(model: Model) -> list[InputSpec]:
    """The inputs a caller must feed (initializers that double as inputs have defaults and are left out)."""
    initializers = {tensor.name for tensor in model.proto.graph.initializer}
    return [_spec_from_value_info(v) for v in model.proto.graph.input if v.name not in initializers]


@dataclass
class ShapeOptions:
    """How to make symbolic dims concrete: per-input shapes, per-dim-name values, and the defaults."""

    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    dims: dict[str, int] = field(default_factory=dict)
    batch: int = DEFAULT_BATCH
    sequence: int = DEFAULT_SEQUENCE


def recorded_shape_options(shapes: dict[str, object]) -> ShapeOptions | None:
    """Shape options from the input shapes a record keeps (`FeedSet.to_dict()["shapes"]`); None when none is a plain shape."""
    fixed = {name: tuple(dims) for name, dims in shapes.items() if isinstance(dims, list) and all(isinstance(d, int) for d in dims)}
    return ShapeOptions(shapes=fixed) if fixed else None


@dataclass
class ResolvedShapes:
    shapes: dict[str, tuple[int, ...]]
    defaults: list[str]  # one line per default the user did not choose, so it can be shown


def parse_shape_option(text: str) -> tuple[str, tuple[int, ...]]:
    """'name=1x3x224x224' -> ('name', (1, 3, 224, 224)); a scalar is 'name=' ."""
    name, sep, dims = text.rpartition("=")
    if not sep or not name:
        raise OptionError("shapes", text, "expected NAME=DxDxD, e.g. input=1x3x224x224")
    try:
        return name, tuple(int(d) for d in dims.lower().split("x")) if dims else ()
    except ValueError:
        raise OptionError("shapes", text, "dimensions must be integers separated by 'x'") from None


def parse_dim_option(text: str) -> tuple[str, int]:
    """'batch=8' -> ('batch', 8)."""
    name, sep, value = text.rpartition("=")
    if not sep or not name or not value.isdigit():
        raise OptionError("dims", text, "expected DIM_NAME=INTEGER, e.g. batch_size=8")
    return name, int(value)


def check_shape_names(specs: list[InputSpec], options: ShapeOptions | None) -> None:
    """Every input named by a shape option exists (a typo would otherwise leave that input at its default)."""
    known = {spec.name for spec in specs}
    for name in options.shapes if options else {}:
        if name not in known:
            raise OptionError("shapes", name, f"not an input of the model (inputs: {', '.join(sorted(known))})")


def resolve_shapes(specs: list[InputSpec], options: ShapeOptions | None = None,
                   pinned: dict[tuple[str, int], tuple[int, str]] | None = None) -> ResolvedShapes:  # fmt: skip
    """Give every input a concrete shape; a named dim gets one value across all inputs. What the user set wins,
    then what a weight fixes (`pinned`, from `data.pinned.pinned_dims`), then the defaults."""
    options = options or ShapeOptions()
    check_shape_names(specs, options)
    named: dict[str, int] = dict(options.dims)
    defaults: list[str] = []
    shapes: dict[str, tuple[int, ...]] = {}
    for spec in specs:
        if spec.name in options.shapes:
            shapes[spec.name] = _checked_override(spec, options.shapes[spec.name])
            continue
        if spec.shape is None:
            raise OptionError("shapes", spec.name, f"input '{spec.name}' has no shape in the graph; give one, e.g. {spec.name}=1x8")
        shapes[spec.name] = tuple(
            _resolve_dim(spec, axis, dim, named, defaults, options, (pinned or {}).get((spec.name, axis))) for axis, dim in enumerate(spec.shape)
        )
    return ResolvedShapes(shapes, defaults)


def _checked_override(spec: InputSpec, shape: tuple[int, ...]) -> tuple[int, ...]:
    if spec.shape is None:
        return shape
    if len(shape) != len(spec.shape):
        raise OptionError("shapes", spec.name, f"rank {len(shape)} given, the model expects {spec.describe_shape()}")
    for axis, (given, expected) in enumerate(zip(shape, spec.shape)):
        if isinstance(expected, int) and expected and given != expected:
            raise OptionError("shapes", spec.name, f"axis {axis} is fixed to {expected} in the model, {given} given")
    return shape


def _resolve_dim(spec: InputSpec, axis: int, dim: Dim, named: dict[str, int], defaults: list[str], options: ShapeOptions,
                 pin: tuple[int, str] | None = None) -> int:  # fmt: skip
    if isinstance(dim, int) and dim > 0:
        return dim
    if isinstance(dim, str) and dim in options.dims:
        return options.dims[dim]
    if isinstance(dim, str) and dim in named and pin is None:
        return named[dim]
    value, why = pin or _default_dim(spec, axis, dim, options)
    label = f"'{dim}'" if isinstance(dim, str) else "unnamed"
    defaults.append(f"{spec.name}[{axis}] ({label}) = {value} ({why}; set with --dim or --shape)")
    if isinstance(dim, str):
        named[dim] = value
    return value


def _default_dim(spec: InputSpec, axis: int, dim: Dim, options: ShapeOptions) -> tuple[int, str]:
    name = dim if isinstance(dim, str) else ""
    assert spec.shape is not None
    first_free = next(i for i, d in enumerate(spec.shape) if not (isinstance(d, int) and d > 0))
    if BATCH_NAME.search(name) or (axis == first_free and not SEQUENCE_NAME.search(name)):
        return options.batch, "batch default"
    if SEQUENCE_NAME.search(name):
        return options.sequence, "sequence default"
    if len(spec.shape) == 4 and axis in (2, 3) and spec.dtype.startswith("float"):
        return DEFAULT_IMAGE_SIDE, "image side default"
    return options.sequence, "sequence default"
