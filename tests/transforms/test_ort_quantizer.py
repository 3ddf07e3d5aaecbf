"""ortforge's one use of ORT's quantizer internals: the signatures it relies on, per ORT release range,
and the same model as `quantize_static` given the same ranges."""

from __future__ import annotations

import contextlib
import io
import re

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.onnx_quantizer import ONNXQuantizer
from onnxruntime.quantization.qdq_quantizer import QDQQuantizer
from onnxruntime.quantization.quant_utils import save_and_reload_model_with_shape_infer, update_opset_version
from onnxruntime.quantization.quantize import check_static_quant_arguments

from helpers import make_model, tensor, weight
from ortforge.core.errors import UserError
from ortforge.core.model import from_proto
from ortforge.transforms.calibrate import CalibrationOptions, calibrate
from ortforge.transforms.ort_quantizer import (
    ONNX_QUANTIZER_PARAMETERS,
    QDQ_QUANTIZER_PARAMETERS,
    UPDATE_OPSET_BEFORE_1_27,
    UPDATE_OPSET_SINCE_1_27,
    check_constructor,
    parameters,
    quantize_with_ranges,
    update_opset_arguments,
)

ORT_VERSION = tuple(int(part) for part in re.match(r"(\d+)\.(\d+)", onnxruntime.__version__).groups())
ort_1_24_to_1_26 = pytest.mark.skipif(not (1, 24) <= ORT_VERSION < (1, 27), reason=f"ORT {onnxruntime.__version__} is not 1.24-1.26")
ort_1_27_and_later = pytest.mark.skipif(ORT_VERSION < (1, 27), reason=f"ORT {onnxruntime.__version__} is older than 1.27")


def small_net() -> onnx.ModelProto:
    """Conv, Relu, Conv, residual Add, GlobalAveragePool, Flatten, MatMul, Add: both quantizer registries' usual ops."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Add", ["c2", "c1"], ["s"], name="residual"),
        helper.make_node("GlobalAveragePool", ["s"], ["g"], name="pool"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("MatMul", ["f", "w3"], ["m"], name="matmul"),
        helper.make_node("Add", ["m", "b3"], ["y"], name="bias"),
    ]
    weights = [
        weight("w1", rng.standard_normal((6, 3, 3, 3)).astype(np.float32)),
        weight("w2", (rng.standard_normal((6, 6, 3, 3)) / 4).astype(np.float32)),
        weight("w3", rng.standard_normal((6, 5)).astype(np.float32)),
        weight("b3", rng.standard_normal(5).astype(np.float32)),
    ]
    return make_model(nodes, [tensor("x", [1, 3, 8, 8])], [tensor("y", None)], weights)


def feeds(count: int = 6) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    return [{"x": (rng.standard_normal((1, 3, 8, 8)) * rng.uniform(0.5, 3.0)).astype(np.float32)} for _ in range(count)]


class Reader(CalibrationDataReader):
    def __init__(self, samples: list[dict[str, np.ndarray]]) -> None:
        self.samples = iter(samples)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.samples, None)


def assert_same_model(ours: onnx.ModelProto, theirs: onnx.ModelProto) -> None:
    assert [node.op_type for node in ours.graph.node] == [node.op_type for node in theirs.graph.node]
    assert ours.graph == theirs.graph
    assert list(ours.opset_import) == list(theirs.opset_import)


def quantize_static_to_proto(tmp_path, proto: onnx.ModelProto, **kwargs) -> onnx.ModelProto:
    target, copy = tmp_path / "static.onnx", onnx.ModelProto()
    copy.CopyFrom(proto)  # quantize_static moves the weights of a proto it is given to external data
    with contextlib.redirect_stdout(io.StringIO()):
        quantize_static(copy, str(target), **kwargs)
    return onnx.load(str(target))


# --- the signatures ortforge relies on, per ORT release range --------------------------------------


def _check_common_signatures() -> None:
    """The same in every supported release: a change here is an ORT upgrade ortforge must follow."""
    assert parameters(QDQQuantizer.__init__) == QDQ_QUANTIZER_PARAMETERS
    assert parameters(ONNXQuantizer.__init__) == ONNX_QUANTIZER_PARAMETERS
    assert parameters(check_static_quant_arguments) == ("quant_format", "activation_type", "weight_type")
    assert parameters(save_and_reload_model_with_shape_infer) == ("model",)
    check_constructor(QDQQuantizer, QDQ_QUANTIZER_PARAMETERS)
    check_constructor(ONNXQuantizer, ONNX_QUANTIZER_PARAMETERS)


@ort_1_24_to_1_26
def test_signatures_ort_1_24_to_1_26():
    _check_common_signatures()
    assert parameters(update_opset_version) == UPDATE_OPSET_BEFORE_1_27
    assert update_opset_arguments(update_opset_version, QuantType.QUInt16, {"BlockSize": 32}) == {}


@ort_1_27_and_later
def test_signatures_ort_1_27_and_later():
    _check_common_signatures()
    assert parameters(update_opset_version) == UPDATE_OPSET_SINCE_1_27
    overrides = {"c1": [{"quant_type": QuantType.QUInt16}]}
    extra = {"BlockSize": 32, "TensorQuantOverrides": overrides}
    assert update_opset_arguments(update_opset_version, QuantType.QUInt16, extra) == {
        "activation_type": QuantType.QUInt16,
        "tensor_quant_overrides": overrides,
        "block_size": 32,
    }


def test_unknown_signatures_are_refused_by_name():
    def update_opset_version(model, weight_type, activation):  # a shape no release has had
        return model

    class Quantizer:
        def __init__(self, model, per_channel, reduce_range, weight_type, activation_type, tensors_range, nodes, excluded, op_types):
            pass

    with pytest.raises(UserError, match=r"update_opset_version takes \(model, weight_type, activation\)") as caught:
        update_opset_arguments(update_opset_version, QuantType.QInt8, {})
    assert "supports onnxruntime" in str(caught.value)
    with pytest.raises(UserError, match="Quantizer takes"):
        check_constructor(Quantizer, QDQ_QUANTIZER_PARAMETERS)

    class Newer:  # an added parameter with a default is harmless: ortforge passes everything by name
        def __init__(self, model, per_channel, reduce_range, weight_qType, activation_qType, tensors_range, nodes_to_quantize,
                     nodes_to_exclude, op_types_to_quantize, extra_options=None, something_new=None):  # fmt: skip
            pass

    check_constructor(Newer, QDQ_QUANTIZER_PARAMETERS)


# --- the same model as quantize_static, given the same ranges --------------------------------------


@pytest.mark.parametrize("quant_format", [QuantFormat.QDQ, QuantFormat.QOperator], ids=["qdq", "qoperator"])
def test_same_model_as_quantize_static_calibrating_minmax(tmp_path, quant_format):
    """Every supported release: ORT's MinMax calibrator gives exactly ortforge's ranges, so the models match."""
    proto = small_net()
    model = from_proto(proto)
    samples = feeds()
    types = {"activation_type": QuantType.QUInt8, "weight_type": QuantType.QInt8, "quant_format": quant_format}
    theirs = quantize_static_to_proto(tmp_path, proto, calibration_data_reader=Reader(samples), **types)
    ours = quantize_with_ranges(model, calibrate(model, samples), **types)
    assert_same_model(ours, theirs)


@ort_1_27_and_later
@pytest.mark.parametrize(
    ("options", "quant_format", "settings"),
    [
        (CalibrationOptions("minmax"), QuantFormat.QDQ, {"per_channel": True}),
        (CalibrationOptions("entropy"), QuantFormat.QDQ, {"activation_type": QuantType.QInt8}),
        (CalibrationOptions("percentile", percentile=99.9), QuantFormat.QOperator, {"reduce_range": True}),
        (CalibrationOptions("distribution"), QuantFormat.QDQ, {"extra_options": {"ActivationSymmetric": True}}),
        (CalibrationOptions("minmax"), QuantFormat.QDQ, {"activation_type": QuantType.QUInt16, "weight_type": QuantType.QUInt8}),
    ],
    ids=["minmax-per-channel", "entropy-s8", "percentile-qoperator-7bit", "distribution-symmetric", "minmax-u16"],
)
def test_same_model_as_quantize_static_from_a_range_cache(tmp_path, options, quant_format, settings):
    """ORT >= 1.27: quantize_static reads ranges from a calibration cache, so it can be given ortforge's own."""
    from onnxruntime.quantization.calibrate import save_tensors_data

    proto = small_net()
    model = from_proto(proto)
    result = calibrate(model, feeds(), options)
    cache = tmp_path / "ranges.json"
    save_tensors_data(result.to_tensors_data(), cache)
    arguments = {"activation_type": QuantType.QUInt8, "weight_type": QuantType.QInt8, "quant_format": quant_format, **settings}
    method = result.to_tensors_data().calibration_method  # quantize_static refuses a cache of another method
    theirs = quantize_static_to_proto(tmp_path, proto, calibrate_method=method, calibration_cache_path=cache, **arguments)
    ours = quantize_with_ranges(model, result, **arguments)
    assert_same_model(ours, theirs)
