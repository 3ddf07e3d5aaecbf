"""The one place ortforge calls ORT's quantizer internals (the static quantizer's second half; the dynamic one's shape inference).

`quantize_static` calibrates and quantizes in one call; ortforge calibrates itself (bounded memory,
`transforms/calibrate/`) and needs only the second half. ORT has no public entry point for it, so
this module repeats quantize_static's steps after calibration with the same helpers and classes:
`check_static_quant_arguments`, `save_and_reload_model_with_shape_infer`, `update_opset_version`,
then `QDQQuantizer` (or `ONNXQuantizer` for QOperator) given the ranges as `tensors_range`.

None of these are public API, so the signatures ortforge relies on are written down here, per ORT
release range, and `tests/transforms/test_ort_quantizer.py` checks them against the installed ORT. Read from
each release's `onnxruntime/quantization/` sources (1.24.1, 1.25.0, 1.26.0, 1.27.0, 1.28.0, 1.31.1,
1.32.0): the constructors and the other helpers are the same throughout; `update_opset_version`
changed in 1.27.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import onnx

from ortforge.core import runtime
from ortforge.core.errors import UserError
from ortforge.core.model import EXTERNAL_DATA_THRESHOLD, Model, external_bytes, loaded_copy
from ortforge.transforms.calibrate import CalibrationResult, quantizable_op_types

SUPPORTED_ORT = "1.24 to 1.32"

# update_opset_version(model, weight_type) in ORT 1.24-1.26 (1.24 is what onnxruntime-openvino
# ships); 1.27 added the activation type, the tensor overrides and the block size, from which it
# decides whether 16-bit types need opset 21.
UPDATE_OPSET_BEFORE_1_27 = ("model", "weight_type")
UPDATE_OPSET_SINCE_1_27 = ("model", "weight_type", "activation_type", "tensor_quant_overrides", "block_size")

# The constructors' parameters, identical in 1.24-1.32. They are passed by name: a reordering in a
# later ORT cannot shift an argument into the wrong slot unnoticed, and a rename fails up front.
QDQ_QUANTIZER_PARAMETERS = (
    "model",
    "per_channel",
    "reduce_range",
    "weight_qType",
    "activation_qType",
    "tensors_range",
    "nodes_to_quantize",
    "nodes_to_exclude",
    "op_types_to_quantize",
    "extra_options",
)
ONNX_QUANTIZER_PARAMETERS = (*QDQ_QUANTIZER_PARAMETERS[:3], "mode", "static", *QDQ_QUANTIZER_PARAMETERS[3:])


def parameters(function: Callable) -> tuple[str, ...]:
    """A function's parameter names in order (without `self`)."""
    return tuple(name for name in inspect.signature(function).parameters if name != "self")


def update_opset_arguments(update_opset_version: Callable, activation_type: Any, extra: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments after (model, weight_type) that this ORT's `update_opset_version` takes.

    The same values `quantize_static` passes in each release: none before 1.27, the activation type,
    `TensorQuantOverrides` and `BlockSize` from the extra options since.
    """
    found = parameters(update_opset_version)
    if found == UPDATE_OPSET_BEFORE_1_27:
        return {}
    if found[: len(UPDATE_OPSET_SINCE_1_27)] == UPDATE_OPSET_SINCE_1_27:
        return {
            "activation_type": activation_type,
            "tensor_quant_overrides": extra.get("TensorQuantOverrides"),
            "block_size": extra.get("BlockSize", 0),
        }
    raise _unknown_signature("update_opset_version", found, UPDATE_OPSET_SINCE_1_27)


def check_constructor(cls: type, expected: tuple[str, ...]) -> None:
    """Refuse a quantizer class that lacks a parameter ortforge passes, or requires one it does not."""
    found = inspect.signature(cls.__init__).parameters
    optional = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    missing = [name for name in expected if name not in found]
    required = [p for name, p in found.items() if name not in ("self", *expected) and p.default is p.empty and p.kind not in optional]
    if missing or required:
        raise _unknown_signature(cls.__name__, parameters(cls.__init__), expected)


def quantize_with_ranges(
    model: Model,
    result: CalibrationResult,
    *,
    quant_format: Any = None,
    activation_type: Any = None,
    weight_type: Any = None,
    per_channel: bool = False,
    reduce_range: bool = False,
    op_types: Sequence[str] | None = None,
    nodes_to_quantize: Sequence[str] = (),
    nodes_to_exclude: Sequence[str] = (),
    extra_options: dict[str, Any] | None = None,
) -> onnx.ModelProto:
    """What `quantize_static` does once it has calibrated, with `result`'s ranges instead of its calibrator's.

    Same steps and quantizer classes: shape inference, opset update, `QDQQuantizer` (or
    `ONNXQuantizer` for QOperator) given the ranges as `tensors_range`. Format and types are ORT's
    enums (`QuantFormat`, `QuantType`); by default QDQ with int8 activations and weights.
    """
    from onnxruntime.quantization import QuantFormat, QuantType
    from onnxruntime.quantization.onnx_quantizer import ONNXQuantizer
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer
    from onnxruntime.quantization.quant_utils import (
        QuantizationMode,
        save_and_reload_model_with_shape_infer,
        update_opset_version,
    )
    from onnxruntime.quantization.quantize import check_static_quant_arguments

    quant_format = QuantFormat.QDQ if quant_format is None else quant_format
    activation_type = QuantType.QInt8 if activation_type is None else activation_type
    weight_type = QuantType.QInt8 if weight_type is None else weight_type
    extra = dict(extra_options or {})
    qoperator = quant_format == QuantFormat.QOperator
    quantizer_class, expected = (ONNXQuantizer, ONNX_QUANTIZER_PARAMETERS) if qoperator else (QDQQuantizer, QDQ_QUANTIZER_PARAMETERS)
    # Checked before any work: an ORT with other signatures fails here, with the versions ortforge supports.
    check_constructor(quantizer_class, expected)
    opset_arguments = update_opset_arguments(update_opset_version, activation_type, extra)
    check_static_quant_arguments(quant_format, activation_type, weight_type)
    # ORT's own shape inference goes through a temporary folder of its own, removed afterwards. Over 2 GB it would
    # hold the model twice; quantize's preparation already ran ONNX's shape inference on such a model, file to file.
    large = external_bytes(model.proto) > EXTERNAL_DATA_THRESHOLD
    if large:  # marked as inferred, or the quantizer's constructor would reload it from a deep copy (three copies at once)
        from onnxruntime.quantization.quant_utils import add_infer_metadata

        proto = loaded_copy(model)
        add_infer_metadata(proto)
    else:
        proto = save_and_reload_model_with_shape_infer(loaded_copy(model))
    proto = update_opset_version(proto, weight_type, **opset_arguments)
    arguments = {
        "model": proto,
        "per_channel": per_channel,
        "reduce_range": reduce_range,
        "weight_qType": weight_type,
        "activation_qType": activation_type,
        "tensors_range": result.to_tensors_data(),
        "nodes_to_quantize": list(nodes_to_quantize),
        "nodes_to_exclude": list(nodes_to_exclude),
        "op_types_to_quantize": list(op_types or quantizable_op_types()),
        "extra_options": extra,
    }
    if qoperator:
        arguments.update(mode=QuantizationMode.QLinearOps, static=True)
    quantizer = quantizer_class(**arguments)
    quantizer.quantize_model()
    quantizer.model.topological_sort()  # quantize_static sorts while saving
    return quantizer.model.model


def _unknown_signature(name: str, found: tuple[str, ...], expected: tuple[str, ...]) -> UserError:
    return UserError(
        f"onnxruntime {runtime.version()}: its quantizer's {name} takes ({', '.join(found)}), not the ({', '.join(expected)}) ortforge knows",
        f"ortforge's static quantization supports onnxruntime {SUPPORTED_ORT}",
    )


@contextlib.contextmanager
def shapes_in_place() -> Iterator[None]:
    """While ORT's dynamic quantizer runs on a model over 2 GB: its constructor re-runs shape inference on a deep
    copy saved and reloaded, holding the model three times (7.4 GB for a 2.4 GB model, measured; protobuf does not
    give back a cleared message's memory while the caller still holds it). Here shapes are inferred on the graph
    with its large weights left out and written into the model itself, which ORT then goes on with, held once.

    The helper is looked up in ORT's `onnx_quantizer` module (the same in 1.24-1.32); where it is missing nothing is swapped."""
    from onnxruntime.quantization import onnx_quantizer
    from onnxruntime.quantization.quant_utils import add_infer_metadata

    original = getattr(onnx_quantizer, "save_and_reload_model_with_shape_infer", None)

    def in_place(model: onnx.ModelProto) -> onnx.ModelProto:
        inferred = onnx.shape_inference.infer_shapes(_skeleton(model))
        del model.graph.value_info[:]
        model.graph.value_info.extend(inferred.graph.value_info)
        add_infer_metadata(model)
        return model

    if original is None:
        yield
        return
    onnx_quantizer.save_and_reload_model_with_shape_infer = in_place
    try:
        yield
    finally:
        onnx_quantizer.save_and_reload_model_with_shape_infer = original


SKELETON_KEEPS = 1 << 20  # initializers this small keep their values (a Reshape's shape input is read by inference)


def _skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model without its large initializers' values (names, types and dims kept): what shape inference needs."""
    skeleton = onnx.ModelProto()
    skeleton.ir_version = model.ir_version
    skeleton.opset_import.extend(model.opset_import)
    graph = skeleton.graph
    graph.name = model.graph.name
    graph.node.extend(model.graph.node)
    graph.input.extend(model.graph.input)
    graph.output.extend(model.graph.output)
    for tensor in model.graph.initializer:
        if len(tensor.raw_data) <= SKELETON_KEEPS:
            graph.initializer.append(tensor)
        else:
            graph.initializer.add(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims)
    return skeleton
