"""int8 quantization through `onnxruntime.quantization`, with the repairs its users keep needing.

ORT's tools do the quantizing; this module prepares the model and the call so that they do not fail
or write broken models: pre-processing that falls back when symbolic shape inference fails, no temp
files in the working folder, explicit opset conversion (per-channel QDQ needs opset 13; ORT would
otherwise silently rewrite opsets below 11), subgraphs quantized where ORT can, the standard ONNX
`Attention` op kept away from ORT's com.microsoft Attention handler, and fused transformers whose
weights have no recorded type.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import onnx

from ortforge.core.errors import OptionError, UserError, first_line
from ortforge.core.model import (
    EXTERNAL_DATA_THRESHOLD,
    Model,
    external_bytes,
    from_proto,
    iter_graphs,
    iter_nodes,
    loaded_copy,
    opset_versions,
    require_in_model,
    save_model,
    weight_bytes,
)
from ortforge.core.options import option
from ortforge.core.scratch import release, scratch_folder
from ortforge.data import Feed, FeedSet
from ortforge.transforms import TransformResult, op_count_changes
from ortforge.transforms.bias_correction import correct_biases
from ortforge.transforms.equalize import equalize
from ortforge.transforms.ort_quantizer import shapes_in_place
from ortforge.transforms.smooth import smooth

MODES = ("dynamic", "static")
FORMATS = ("qdq", "qoperator")
TYPES = ("u8", "s8")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile", "distribution", "mse")
PER_CHANNEL_QDQ_OPSET = 13  # DequantizeLinear's `axis` arrived in opset 13
MIN_QUANT_OPSET = 11
QUANTIZED_OPS = {
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul", "MatMulInteger",
    "ConvInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QLinearAdd", "QLinearMul", "QGemm", "QAttention",
    "DynamicQuantizeLSTM", "QEmbedLayerNormalization", "QLinearSoftmax", "QLinearSigmoid", "QLinearGlobalAveragePool",
}  # fmt: skip


@dataclass(frozen=True)
class QuantizeOptions:
    """One int8 recipe; defaults follow what measured well on AVX-512 VNNI (u8 activations, s8 weights)."""

    mode: str = option("static", choices=MODES, help="dynamic: activations quantized at run time; static: calibrated ranges")
    format: str = option("qdq", choices=FORMATS, help="qdq: QuantizeLinear/DequantizeLinear pairs ORT fuses; qoperator: QLinear* ops")
    activation_type: str = option("u8", choices=TYPES, help="activation integer type (u8 suits VNNI CPUs)")
    weight_type: str = option("s8", choices=TYPES, help="weight integer type")
    per_channel: bool = option(False, help="one scale per output channel for weights")
    reduce_range: bool = option(False, help="7-bit weights (for CPUs without VNNI)")
    op_types: tuple[str, ...] = option((), metavar="OP", help="quantize only these op types, e.g. Conv MatMul Gemm (default: every type ORT can)")
    exclude: tuple[str, ...] = option((), metavar="NODE|OP", help="node names or op types to keep in float")
    symmetric_activations: bool = option(False, help="symmetric activation ranges (zero point 0)")
    calibration_method: str = option("minmax", choices=CALIBRATION_METHODS, flag="--method", help="calibration method (static)")
    percentile: float = option(99.999, help="for --method percentile")
    moving_average: bool = option(False, help="for --method minmax: moving average of per-sample ranges")
    equalize: bool = option(False, help="static: bring each activation's channels to one range first, the scales folded into "
                            "neighbouring weights and constants (the float model is unchanged; helps depthwise-separable CNNs)")
    bias_correction: bool = option(False, help="static: take the mean output shift that weight rounding causes out of each "
                                   "quantized Conv/Gemm bias (measured on the calibration samples)")
    smooth: float = option(0.0, help="SmoothQuant alpha: move this share of MatMul inputs' outlier channels into the weights "
                           "first (0 off; 0.5-0.8 for transformers; needs calibration samples, also for dynamic)")
    extra_options: tuple[tuple[str, object], ...] = ()  # passed through to ORT's quantizer (Python only)

    def __post_init__(self) -> None:
        object.__setattr__(self, "op_types", tuple(self.op_types))
        object.__setattr__(self, "exclude", tuple(self.exclude))
        for name, allowed in (("mode", MODES), ("format", FORMATS), ("activation_type", TYPES), ("weight_type", TYPES),
                              ("calibration_method", CALIBRATION_METHODS)):  # fmt: skip
            if getattr(self, name) not in allowed:
                raise OptionError(name, getattr(self, name), f"choose one of {', '.join(allowed)}")
        if not 0 < self.percentile <= 100:
            raise OptionError("percentile", self.percentile, "must lie in (0, 100]")
        if not 0 <= self.smooth <= 1:
            raise OptionError("smooth", self.smooth, "must lie in [0, 1]")

    def describe(self) -> str:
        """A short label, e.g. 'static qdq u8s8 per-channel Conv+MatMul minmax'."""
        parts = [self.mode, self.format if self.mode == "static" else "", f"{self.activation_type}{self.weight_type}"]
        parts += ["per-channel" if self.per_channel else "per-tensor"]
        parts += ["7-bit"] if self.reduce_range else []
        parts += ["+".join(self.op_types)] if self.op_types else ["all ops"]
        default_percentile = self.percentile == QuantizeOptions.percentile
        method = self.calibration_method if self.calibration_method != "percentile" or default_percentile else f"percentile {self.percentile:g}"
        parts += [method] if self.mode == "static" else []
        parts += ["equalized"] if self.equalize and self.mode == "static" else []
        parts += ["bias-corrected"] if self.bias_correction and self.mode == "static" else []
        parts += [f"smoothed {self.smooth:g}"] if self.smooth else []
        parts += [f"{len(self.exclude)} excluded"] if self.exclude else []
        return " ".join(p for p in parts if p)


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """ORT's pre-processing logs whole tracebacks on the root logger when a pass fails; ortforge reports one line."""
    import logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        root.setLevel(level)


@contextlib.contextmanager
def _inside(folder: Path) -> Iterator[None]:
    """Run ORT's tools with the working folder set to our temporary one: some leave files in cwd."""
    previous = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)


def signature(proto: onnx.ModelProto) -> list[tuple[str, str, str]]:
    """Graph inputs (not initializers) and outputs as (name, type, rank): what callers of the model rely on."""
    initializers = {t.name for t in proto.graph.initializer}

    def describe(value: onnx.ValueInfoProto) -> tuple[str, str, str]:
        kind = value.type.WhichOneof("value") or "?"
        elem = str(value.type.tensor_type.elem_type) if kind == "tensor_type" else kind
        rank = str(len(value.type.tensor_type.shape.dim)) if kind == "tensor_type" and value.type.tensor_type.HasField("shape") else "?"
        return value.name, elem, rank

    inputs = [describe(v) for v in proto.graph.input if v.name not in initializers]
    return [("in",) + i for i in inputs] + [("out",) + describe(v) for v in proto.graph.output]  # type: ignore[misc]


def _convert_opset(proto: onnx.ModelProto, target: int, why: str, notes: list[str]) -> onnx.ModelProto:
    current = opset_versions(proto).get("ai.onnx", 0)
    if current >= target:
        return proto
    try:
        converted = onnx.version_converter.convert_version(proto, target)
    except Exception as exc:  # the converter raises plain RuntimeErrors per unsupported op
        raise UserError(f"{why} needs opset {target}, and converting this opset-{current} model failed: {first_line(exc)}") from None
    if signature(converted) != signature(proto):
        # e.g. Slice-1 attributes turned into new graph inputs, Scan-8 losing its batch axis
        raise UserError(f"{why} needs opset {target}, and onnx's converter changed this opset-{current} model's inputs or outputs; refusing")
    notes.append(f"converted the model from opset {current} to {target}: {why}")
    return converted


def preprocess(proto: onnx.ModelProto, folder: Path, notes: list[str]) -> onnx.ModelProto:
    """ORT's quant_pre_process, falling back step by step when symbolic shape inference or optimization fail."""
    from onnxruntime.quantization import quant_pre_process

    source, target = folder / "pre_input.onnx", folder / "pre_output.onnx"
    onnx.save_model(proto, str(source), save_as_external_data=True, location="pre_input.data", size_threshold=1 << 20)
    attempts = (
        ("symbolic shape inference + optimization", {}),
        ("without symbolic shape inference", {"skip_symbolic_shape": True}),
        ("ONNX shape inference only", {"skip_symbolic_shape": True, "skip_optimization": True}),
    )
    for label, switches in attempts:
        try:
            with _inside(folder), _quiet_root_logger():
                quant_pre_process(str(source), str(target), save_as_external_data=True, all_tensors_to_one_file=True,
                                  external_data_location="pre_output.data", **switches)  # fmt: skip
            processed = onnx.load(str(target))
        except Exception as exc:  # ORT's pre-processing raises whatever its passes raise
            notes.append(f"pre-processing {label} failed ({type(exc).__name__}: {first_line(exc, 120)}); falling back")
            continue
        if signature(processed) != signature(proto):
            notes.append(f"pre-processing {label} changed the model's input/output types; falling back")
            continue
        if switches:
            notes.append(f"pre-processed {label}")
        return processed
    notes.append("pre-processing skipped: every variant failed; quantizing the model as it is")
    return proto


def _flatten_gemm_bias(proto: onnx.ModelProto, notes: list[str]) -> None:
    """Gemm biases of shape [1, N] -> [N] (same broadcast); ORT's per-channel bias check fails on 2-D biases."""
    initializers = {t.name: t for t in proto.graph.initializer}
    users: dict[str, int] = {}
    for node in iter_nodes(proto):
        for name in node.input:
            users[name] = users.get(name, 0) + 1
    flattened = 0
    for node in proto.graph.node:
        if node.op_type != "Gemm" or len(node.input) < 3 or node.input[2] not in initializers:
            continue
        bias = initializers[node.input[2]]
        if len(bias.dims) == 2 and bias.dims[0] == 1 and users[bias.name] == 1:
            bias.dims[:] = [bias.dims[1]]
            flattened += 1
    if flattened:
        notes.append(f"reshaped {flattened} Gemm bias(es) from [1, N] to [N] (ORT's per-channel bias check needs 1-D biases)")


def check_names(proto: onnx.ModelProto, options: QuantizeOptions, also: onnx.ModelProto | None = None) -> None:
    """Every name in `exclude` must be a node or op type of the model (or of `also`, its pre-processed form):
    checked before any work, so a typo is one line rather than a silently ignored option."""
    require_in_model("exclude", options.exclude, proto, *([also] if also is not None else []))


def _nodes_to_exclude(proto: onnx.ModelProto, original: onnx.ModelProto, options: QuantizeOptions, notes: list[str]) -> list[str]:
    requested = set(options.exclude)
    present = {node.name for node in iter_nodes(proto)} | {node.op_type for node in iter_nodes(proto)}
    check_names(original, options, also=proto)
    gone = sorted(requested - present)
    if gone:
        notes.append(f"excluded {', '.join(gone)}: fused away by pre-processing, nothing left to exclude")
    excluded = [node.name for node in iter_nodes(proto) if node.name in requested or node.op_type in requested]
    standard_attention = [n.name for n in iter_nodes(proto) if n.op_type == "Attention" and n.domain in ("", "ai.onnx")]
    if standard_attention:
        # ORT's registry keys on the op type only and would treat these as com.microsoft Attention.
        notes.append(f"kept {len(standard_attention)} standard ONNX Attention node(s) in float (ORT's quantizer would mistake them for com.microsoft's)")
    return sorted(set(excluded) | set(standard_attention))


def _follow_fusions(op_types: list[str], prepared: onnx.ModelProto, original: onnx.ModelProto, excluded: list[str], notes: list[str]) -> list[str]:
    """Keep asking for the MatMuls the user meant after pre-processing fused MatMul + Add into Gemm."""
    if "MatMul" not in op_types or "Gemm" in op_types:
        return op_types
    original_gemms = {n.name for n in original.graph.node if n.op_type == "Gemm"}
    gemms = [n.name for n in prepared.graph.node if n.op_type == "Gemm"]
    fused = [name for name in gemms if name not in original_gemms]
    if not fused:
        return op_types
    excluded.extend(sorted(set(gemms) - set(fused) - set(excluded)))
    notes.append(f"also quantized {len(fused)} Gemm(s) that pre-processing fused from MatMul + Add")
    return op_types + ["Gemm"]


def _subgraph_nodes(proto: onnx.ModelProto) -> int:
    return sum(len(graph.node) for graph in list(iter_graphs(proto.graph))[1:])


def prepare(model: Model, options: QuantizeOptions, notes: list[str]) -> Model:
    """The float model as ORT's quantizer will see it: opset converted, pre-processed, biases flattened.

    Node and tensor names of the quantized model follow this graph, not the original one. A model over
    2 GB stays on disk: its weights are copied to a scratch folder (the returned model's data folder) and
    only ONNX's file-to-file shape inference runs, since ORT's pre-processing holds it in memory several times.
    """
    if is_large(model):
        return _prepare_large(model, options, notes)
    proto = loaded_copy(model)
    proto = _convert_opset(proto, MIN_QUANT_OPSET, "ORT's quantizer", notes)
    if options.per_channel and options.mode == "static" and options.format == "qdq":
        proto = _convert_opset(proto, PER_CHANNEL_QDQ_OPSET, "per-channel QDQ (DequantizeLinear axis)", notes)
    with tempfile.TemporaryDirectory(prefix="ortforge-prepare-") as temporary:
        proto = preprocess(proto, Path(temporary), notes)
    _flatten_gemm_bias(proto, notes)
    return from_proto(proto)


def float_graph(model: Model, options: QuantizeOptions, calibration: FeedSet | None, notes: list[str]) -> Model:
    """The float model ORT's quantizer is handed: pre-processed (`prepare`), then equalized when the recipe asks. Node names
    and tensors of the quantized model follow it, and so must anything comparing the two (quant-debug, the exclusion search)."""
    prepared = prepare(model, options, notes)
    if options.smooth and calibration is not None:
        smoothed = smooth(prepared, calibration, options.smooth)
        notes += smoothed.notes
        prepared = smoothed.as_model(prepared)
    if options.equalize and options.mode == "static" and calibration is not None:
        equalized = equalize(prepared, calibration)
        notes += equalized.notes
        return equalized.as_model(prepared)
    return prepared


def is_large(model: Model) -> bool:
    """Weights near protobuf's 2 GB limit: the model must be handled on disk, never whole in memory."""
    return weight_bytes(model.proto) + external_bytes(model.proto) > EXTERNAL_DATA_THRESHOLD


def _prepare_large(model: Model, options: QuantizeOptions, notes: list[str]) -> Model:
    folder = scratch_folder("prepare")
    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)  # the graph only: its weights are external
    save_model(proto, folder / "input.onnx", source=model, external_data=True)
    proto = _convert_opset(onnx.load(str(folder / "input.onnx"), load_external_data=False), MIN_QUANT_OPSET, "ORT's quantizer", notes)
    if options.per_channel and options.mode == "static" and options.format == "qdq":
        proto = _convert_opset(proto, PER_CHANNEL_QDQ_OPSET, "per-channel QDQ (DequantizeLinear axis)", notes)
    onnx.save_model(proto, str(folder / "converted.onnx"))  # beside input.onnx.data, which it still refers to
    try:
        onnx.shape_inference.infer_shapes_path(str(folder / "converted.onnx"), str(folder / "prepared.onnx"))
        proto = onnx.load(str(folder / "prepared.onnx"), load_external_data=False)
    except Exception as exc:  # onnx raises several types for graphs its inference cannot follow
        notes.append(f"shape inference failed ({type(exc).__name__}: {first_line(exc, 120)}); quantizing without it")
    notes.append("pre-processed with ONNX shape inference only: the model is over 2 GB, and ORT's pre-processing would hold it in memory several times")
    _flatten_gemm_bias(proto, notes)
    return from_proto(proto, base_dir=folder)


def _quantize_dynamic(prepared: Model, options: QuantizeOptions, op_types: list[str], excluded: list[str], extra: dict) -> tuple[onnx.ModelProto, Path | None]:
    """ORT's quantize_dynamic, run in a private folder (it reads and writes files). A model over 2 GB comes back
    with its weights left in that folder, the second value (kept until the process ends)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    large = is_large(prepared)
    with contextlib.ExitStack() as stack:
        folder = scratch_folder("quantize") if large else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ortforge-quantize-")))
        source, target = folder / "input.onnx", folder / "quantized.onnx"
        if large:  # the graph beside the prepared weights it refers to, rather than a second copy of them
            source = Path(prepared.base_dir or folder) / "quantize_input.onnx"
            onnx.save_model(prepared.proto, str(source))
        else:
            save_model(prepared.proto, source, external_data=True)
        with _inside(folder), (shapes_in_place() if large else contextlib.nullcontext()):
            quantize_dynamic(
                str(source),
                str(target),
                op_types_to_quantize=op_types or None,
                per_channel=options.per_channel,
                reduce_range=options.reduce_range,
                weight_type={"u8": QuantType.QUInt8, "s8": QuantType.QInt8}[options.weight_type],
                nodes_to_exclude=excluded,
                use_external_data_format=True,
                extra_options=extra,
            )
        if large:
            return onnx.load(str(target), load_external_data=False), folder
        return onnx.load(str(target)), None


RECENT_RANGES_KEPT = 4  # calibrations kept in memory (small: a range or a fixed-size histogram per tensor)
_RECENT_RANGES: dict[tuple, object] = {}


def _quantize_static(
    model: Model, options: QuantizeOptions, calibration: Iterable[Feed], op_types: list[str],
    excluded: list[str], extra: dict, progress: Callable[[str, float], None] | None,
) -> onnx.ModelProto:  # fmt: skip
    """ortforge's bounded-memory calibration, then ORT's own static quantizer classes on those ranges.

    quantize_static's calibrators keep every activation of every sample in memory (11 GB at 8 samples
    on PP-OCR det); ours stream, with the same ranges.
    """
    from onnxruntime.quantization import QuantFormat, QuantType

    from ortforge.transforms.calibrate import CalibrationOptions, calibrate
    from ortforge.transforms.ort_quantizer import quantize_with_ranges

    calibration_options = CalibrationOptions(
        method=options.calibration_method,
        percentile=options.percentile,
        moving_average=options.moving_average,
        symmetric=True if options.symmetric_activations else None,
        op_types=tuple(op_types) if op_types else None,
    )
    samples = FeedSet(list(calibration), origin="calibration", generated=False)
    key = (model.content_hash(), samples.content_hash(), calibration_options)
    if key not in _RECENT_RANGES:  # the exclusion search quantizes one recipe many times: its ranges do not change
        _RECENT_RANGES[key] = calibrate(model, samples.samples, calibration_options, progress=progress)
        while len(_RECENT_RANGES) > RECENT_RANGES_KEPT:
            del _RECENT_RANGES[next(iter(_RECENT_RANGES))]
    ranges = _RECENT_RANGES[key]
    types = {"u8": QuantType.QUInt8, "s8": QuantType.QInt8}
    return quantize_with_ranges(
        model,
        ranges,
        quant_format=QuantFormat.QDQ if options.format == "qdq" else QuantFormat.QOperator,
        activation_type=types[options.activation_type],
        weight_type=types[options.weight_type],
        per_channel=options.per_channel,
        reduce_range=options.reduce_range,
        op_types=op_types or None,
        nodes_to_exclude=excluded,
        extra_options=extra,
    )


def quantize(
    model: Model,
    options: QuantizeOptions,
    calibration: Iterable[Feed] | None = None,
    progress: Callable[[str, float], None] | None = None,
) -> TransformResult:
    """int8-quantize with ORT (dynamic, or static on `calibration` feeds); returns the quantized model."""
    if options.mode == "static" and calibration is None:
        raise OptionError("mode", "static", "static quantization needs calibration data (calib); or use mode dynamic")
    if options.smooth and calibration is None:
        raise OptionError("smooth", options.smooth, "SmoothQuant needs calibration samples (calib) for the activations' ranges")
    notes: list[str] = []
    samples = FeedSet(list(calibration), origin="calibration", generated=False) if calibration is not None else None  # read more than once
    prepared_model = float_graph(model, options, samples, notes)
    prepared = prepared_model.proto
    extra = {"DefaultTensorType": onnx.TensorProto.FLOAT, **dict(options.extra_options)}
    subgraph_nodes = _subgraph_nodes(prepared)
    if subgraph_nodes:
        if options.mode == "dynamic":
            extra["EnableSubgraph"] = True
        else:
            notes.append(f"{subgraph_nodes} node(s) inside If/Loop/Scan stay float: ORT's static quantizer does not enter subgraphs")
    excluded = _nodes_to_exclude(prepared, model.proto, options, notes)
    op_types = _follow_fusions(list(options.op_types), prepared, model.proto, excluded, notes)
    try:
        data_dir = None
        if options.mode == "dynamic":
            quantized, data_dir = _quantize_dynamic(prepared_model, options, op_types, excluded, extra)
        else:
            extra["ActivationSymmetric"] = options.symmetric_activations
            assert samples is not None
            quantized = _quantize_static(prepared_model, options, samples.samples, op_types, excluded, extra, progress)
            if options.bias_correction:
                corrected = correct_biases(prepared_model, from_proto(quantized, base_dir=prepared_model.base_dir), samples, progress)
                quantized = corrected.proto
                notes += corrected.notes
    except UserError:
        raise
    except Exception as exc:  # ORT's quantizer raises bare exceptions for unsupported graphs
        raise UserError(f"{model.name}: onnxruntime's quantizer failed ({options.describe()}): {type(exc).__name__}: {first_line(exc)}") from None
    finally:
        if prepared_model.base_dir is not None and prepared_model.base_dir != model.base_dir:
            release(prepared_model.base_dir)  # a large model's prepared copy: quantized, it is not needed again
    result = _result(model.proto, quantized, options, excluded, notes)
    result.data_dir = data_dir if result.changed else None
    return result


def _result(original: onnx.ModelProto, quantized: onnx.ModelProto, options: QuantizeOptions, excluded: list[str], notes: list[str]) -> TransformResult:
    quantized_ops = sum(1 for node in iter_nodes(quantized) if node.op_type in QUANTIZED_OPS)
    if not quantized_ops:
        # Hand back the model as given: the pre-processed or converted copy carries no benefit, only risk.
        notes.append("nothing was quantized: no node of the selected op types had quantizable inputs")
        unchanged = onnx.ModelProto()
        unchanged.CopyFrom(original)
        return TransformResult(unchanged, False, [], notes, {"recipe": options.describe(), "quantization_nodes": 0, "excluded": excluded})
    if signature(quantized) != signature(original):
        raise UserError(f"onnxruntime's quantizer changed the model's inputs or outputs ({options.describe()}); refusing")
    # Pre-processing's value_info can hold shapes that are wrong for other inputs; ORT infers its own.
    del quantized.graph.value_info[:]
    counts = op_count_changes(original, quantized)
    return TransformResult(
        proto=quantized,
        changed=bool(quantized_ops),
        changes=[f"int8 {options.describe()}: {quantized_ops} quantization node(s)"] + [f"{op}: {d:+d}" for op, d in counts.items()],
        notes=notes,
        details={"recipe": options.describe(), "quantization_nodes": quantized_ops, "excluded": excluded, "op_changes": counts},
    )
