"""Values crossing into and out of ORT where numpy and ORT's Python binding disagree: float8, float4 and int4.

numpy holds these types through `ml_dtypes`, but ORT's binding rejects such arrays ("Numpy_type 260 can't
be converted to MLDataType") and hands such outputs back as raw uint8 bits. Feeds go in as OrtValues of the
ONNX type (4-bit types packed two to a byte, as ONNX stores them); outputs come back viewed as their type.
Sequences (lists) and optionals (None when absent) pass through as ORT's binding takes them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from onnx import TensorProto, helper

from ortforge.core import runtime

FOUR_BIT = {TensorProto.INT4, TensorProto.UINT4} | ({TensorProto.FLOAT4E2M1} if hasattr(TensorProto, "FLOAT4E2M1") else set())
TWO_BIT = {getattr(TensorProto, name) for name in ("INT2", "UINT2") if hasattr(TensorProto, name)}  # ONNX 1.23's 2-bit integers
PACKED_BITS = {**{element: 4 for element in FOUR_BIT}, **{element: 2 for element in TWO_BIT}}  # elements sharing a byte
# ONNX element types numpy has only through ml_dtypes; ORT's binding takes none of them as they are ("Numpy_type 256
# can't be converted to MLDataType" for bfloat16), only their bits with the type named.
BYTE_TYPES = {TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT8E4M3FNUZ, TensorProto.FLOAT8E5M2, TensorProto.FLOAT8E5M2FNUZ} | FOUR_BIT | TWO_BIT
ML_TYPES = BYTE_TYPES | {TensorProto.BFLOAT16}


def onnx_type_of(array: np.ndarray) -> int | None:
    """The ONNX element type of an ml_dtypes array ORT's binding cannot take directly, else None."""
    if array.dtype.itemsize > 2 or array.dtype.type.__module__ != "ml_dtypes":
        return None
    try:
        element = helper.np_dtype_to_tensor_dtype(array.dtype)
    except (KeyError, ValueError, TypeError):
        return None
    return element if element in ML_TYPES else None


def to_ort(value: Any) -> Any:
    """A feed value as ORT's `run` takes it: arrays of ml_dtypes types (float8, int4, bfloat16) as OrtValues, the rest unchanged."""
    if not isinstance(value, np.ndarray):
        return value
    element = onnx_type_of(value)
    if element is None:
        return value
    bits = np.ascontiguousarray(value).view(np.uint16 if value.dtype.itemsize == 2 else np.uint8)
    if element in PACKED_BITS:
        # ORT reads ceil(n * width / 8) packed bytes from the buffer of an array of the tensor's shape.
        packed = pack(bits, PACKED_BITS[element])
        bits = np.zeros(value.shape, np.uint8)
        bits.ravel()[: packed.size] = packed
    return runtime.ort().OrtValue.ortvalue_from_numpy_with_onnx_type(bits, element)


def pack(bits: np.ndarray, width: int) -> np.ndarray:
    """Values of `width` bits (the low bits of each byte) packed 8 / width to a byte, lowest first: ONNX's layout."""
    per_byte = 8 // width
    fields = bits.ravel() & ((1 << width) - 1)
    fields = np.append(fields, np.zeros(-fields.size % per_byte, np.uint8))
    packed = np.zeros(fields.size // per_byte, np.uint8)
    for slot in range(per_byte):
        packed |= (fields[slot::per_byte] << (slot * width)).astype(np.uint8)
    return packed


def ort_feed(feed: dict[str, Any]) -> dict[str, Any]:
    """A whole feed converted with `to_ort`."""
    return {name: to_ort(value) for name, value in feed.items()}


def output_dtypes(session: Any) -> dict[str, np.dtype]:
    """Output name -> the ml_dtypes dtype of outputs ORT hands back as raw bytes (float8: 'tensor(float8e4m3fn)')."""
    found = {}
    for output in session.get_outputs():
        kind = output.type.removeprefix("tensor(").removesuffix(")")
        if kind.startswith("float8"):
            import ml_dtypes

            found[output.name] = np.dtype(getattr(ml_dtypes, kind.replace("float8e", "float8_e")))
    return found


def from_ort(value: Any, dtype: np.dtype | None) -> Any:
    """An output as its ONNX type says: raw float8 bytes viewed as the ml_dtypes type."""
    if dtype is not None and isinstance(value, np.ndarray) and value.dtype == np.uint8:
        return value.view(dtype)
    return value


def describe_value(value: Any) -> str:
    """A feed value's shape for messages: '[1, 3]', 'sequence of 2 [4]', 'absent'."""
    if value is None:
        return "absent"
    if isinstance(value, (list, tuple)):
        return f"sequence of {len(value)}" + (f" {describe_value(value[0])}" if value else "")
    return str(list(getattr(value, "shape", [])))
