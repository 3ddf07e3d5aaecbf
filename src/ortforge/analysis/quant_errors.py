"""Where a quantized model loses accuracy, tensor by tensor (behind `ortforge quant-debug` and the exclusion search).

Every float activation and weight is matched with its counterpart in the quantized model (QDQ:
`T_DequantizeLinear_Output`; QOperator: `T_quantized` with `T_scale`/`T_zero_point`, dequantized here;
or the same name where the tensor stayed float), then compared by SQNR and relative error. One sample
is held at a time, so memory does not grow with the number of samples.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ortforge.accuracy.metrics import AccuracyReport, compare
from ortforge.analysis.tap import UNOPTIMIZED, element_counts, passes, tap_session
from ortforge.core.model import Model
from ortforge.core.session import run_checked
from ortforge.data import FeedSet
from ortforge.measure.memory import release_freed_memory

DQ_SUFFIX = "_DequantizeLinear_Output"
QUANTIZED_SUFFIX = "_quantized"
CHUNK_ELEMENTS = 1 << 20  # compared in float64 this many at a time
PASS_BYTES = 128 << 20  # float activations fetched per pass over the samples (each side): bounds memory on big feature maps
# Without ORT's arena: with 256 MiB weights dequantized at each run, it grew run after run (1.97, then 3.28 GiB).
SESSION = replace(UNOPTIMIZED, enable_cpu_mem_arena=False)


@dataclass
class TensorError:
    tensor: str
    node: str  # the float model's node producing (activation) or consuming (weight) the tensor
    op_type: str
    kind: str  # "activation" or "weight"
    sqnr_db: float  # signal-to-quantization-noise ratio; higher is better, inf when exact
    rel_error: float  # ||float - quantized|| / ||float||
    max_abs: float
    float_absmax: float = 0.0  # largest |value| of the float tensor: wide ranges quantize badly
    drop_db: float = 0.0  # SQNR lost at this node: its inputs' SQNR minus its own (where the damage is done)


@dataclass
class QuantDebugReport:
    activations: list[TensorError]  # the largest SQNR drop first (the node that does the damage)
    weights: list[TensorError]
    end_to_end: AccuracyReport
    samples: int
    unmatched: int  # float tensors with no counterpart in the quantized model
    notes: list[str] = field(default_factory=list)

    def worst_layers(self, count: int = 10) -> list[TensorError]:
        return self.activations[:count]

    def to_dict(self) -> dict:
        return {
            "activations": [asdict(e) for e in self.activations],
            "weights": [asdict(e) for e in self.weights],
            "end_to_end": self.end_to_end.to_dict(),
            "samples": self.samples,
            "unmatched": self.unmatched,
            "notes": self.notes,
        }


class _Accumulator:
    """Running sums for SQNR and relative error of one tensor pair."""

    def __init__(self) -> None:
        self.signal = self.noise = self.max_abs = self.absmax = 0.0

    def add(self, reference: np.ndarray, candidate: np.ndarray) -> None:
        reference, candidate = np.asarray(reference), np.asarray(candidate)
        if reference.shape != candidate.shape:
            return
        flat_reference, flat_candidate = reference.reshape(-1), candidate.reshape(-1)
        # In float64 a slice at a time: a 256 MiB float32 weight would otherwise take four 512 MiB temporaries.
        for start in range(0, flat_reference.size, CHUNK_ELEMENTS):
            part = flat_reference[start:start + CHUNK_ELEMENTS].astype(np.float64)
            error = part - flat_candidate[start:start + CHUNK_ELEMENTS].astype(np.float64)
            self.absmax = max(self.absmax, float(np.max(np.abs(part))))
            self.signal += float(np.dot(part, part))
            self.noise += float(np.dot(error, error))
            self.max_abs = max(self.max_abs, float(np.max(np.abs(error))))

    def sqnr_db(self) -> float:
        if self.noise == 0:
            return math.inf
        return 10 * math.log10(self.signal / self.noise) if self.signal > 0 else -math.inf

    def rel_error(self) -> float:
        return math.sqrt(self.noise / self.signal) if self.signal > 0 else (0.0 if self.noise == 0 else math.inf)


def _float_activations(proto: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    """Float tensors produced by main-graph nodes -> their producer (the layers quant-debug ranks)."""
    typed = {v.name: v.type.tensor_type.elem_type for v in list(proto.graph.value_info) + list(proto.graph.output)}
    produced = {}
    for node in proto.graph.node:
        for name in node.output:
            if name and typed.get(name, onnx.TensorProto.FLOAT) in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
                produced[name] = node
    return produced


def _passes(model: Model, names: list[str], feeds: FeedSet) -> list[list[str]]:
    """`names` in graph order, cut into passes whose fetched float tensors stay under PASS_BYTES (sizes measured on the first sample)."""
    if not names or not feeds.samples:
        return [names] if names else []
    counts = element_counts(model, names, feeds.samples[0])
    return passes(names, {name: 4 * count for name, count in counts.items()}, PASS_BYTES)


class _Counterparts:
    """How to read the quantized model's version of each float tensor."""

    def __init__(self, quantized: onnx.ModelProto, base_dir: Path | None = None) -> None:
        self.initializers = {t.name: t for t in quantized.graph.initializer}
        self.base_dir = str(base_dir or "")  # where external weights are read from, one tensor at a time
        self.tensors = {name for node in quantized.graph.node for name in node.output} | set(self.initializers)
        self.dq_axis = {}
        for node in quantized.graph.node:
            if node.op_type == "DequantizeLinear":
                axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
                self.dq_axis[node.input[0]] = axis

    def output_for(self, name: str) -> str | None:
        """The quantized-graph tensor to fetch for a float activation (None if there is none)."""
        for candidate in (name + DQ_SUFFIX, name + QUANTIZED_SUFFIX, name):
            if candidate in self.tensors and candidate not in self.initializers:
                if candidate == name + QUANTIZED_SUFFIX and self._qparams(name) is None:
                    continue
                return candidate
        return None

    def as_float(self, name: str, fetched: str, value: np.ndarray) -> np.ndarray:
        if fetched != name + QUANTIZED_SUFFIX:
            return value
        scale, zero = self._qparams(name)  # type: ignore[misc] - output_for checked it exists
        return (value.astype(np.float64) - zero) * scale

    def _qparams(self, name: str) -> tuple[np.ndarray, np.ndarray] | None:
        """Scale and zero point stored for a quantized tensor; None for int32 biases, whose scale is implicit."""
        for prefix in (name, name + QUANTIZED_SUFFIX):
            if prefix + "_scale" in self.initializers:
                scale = numpy_helper.to_array(self.initializers[prefix + "_scale"], self.base_dir).astype(np.float64)
                zero_name = prefix + "_zero_point"
                zero = (numpy_helper.to_array(self.initializers[zero_name], self.base_dir).astype(np.float64) if zero_name in self.initializers
                        else np.zeros_like(scale))  # fmt: skip
                return scale, zero
        return None

    def weight(self, name: str, shape: tuple[int, ...]) -> np.ndarray | None:
        """A float weight as the quantized model holds it, dequantized (per-tensor or per-channel)."""
        quantized_name = name + QUANTIZED_SUFFIX
        if quantized_name not in self.initializers:
            return None
        params = self._qparams(name)
        if params is None:
            return None
        # In float32, as ORT dequantizes: float64 would hold a big weight twice over.
        values = numpy_helper.to_array(self.initializers[quantized_name], self.base_dir).astype(np.float32)
        scale, zero = (part.astype(np.float32) for part in params)
        if scale.size > 1:
            axis = self.dq_axis.get(quantized_name)
            if axis is None or values.shape[axis] != scale.size:
                axis = next((i for i, size in enumerate(values.shape) if size == scale.size), 0)
            view = [1] * values.ndim
            view[axis] = scale.size
            scale, zero = scale.reshape(view), zero.reshape(view)
        values -= zero
        values *= scale
        return values.reshape(shape)


def _weight_errors(float_proto: onnx.ModelProto, counterparts: _Counterparts, base_dir: Path | None) -> list[TensorError]:
    consumers = {name: node for node in float_proto.graph.node for name in node.input}
    errors = []
    for tensor in float_proto.graph.initializer:
        if tensor.data_type != onnx.TensorProto.FLOAT or tensor.name not in consumers:
            continue
        reference = numpy_helper.to_array(tensor, str(base_dir or ""))
        quantized = counterparts.weight(tensor.name, reference.shape)
        if quantized is None:
            continue
        accumulator = _Accumulator()
        accumulator.add(reference, quantized)
        node = consumers[tensor.name]
        errors.append(TensorError(tensor.name, node.name, node.op_type, "weight", accumulator.sqnr_db(), accumulator.rel_error(),
                                  accumulator.max_abs, accumulator.absmax))  # fmt: skip
    return sorted(errors, key=lambda e: e.sqnr_db)


def debug_quantization(float_model: Model, quant_model: Model, feeds: FeedSet) -> QuantDebugReport:
    """Match and compare every float activation and weight with the quantized model's, worst first.

    External weights stay on disk (read one tensor at a time), so a model over 2 GB is compared too."""
    float_proto, quant_proto = float_model.proto, quant_model.proto
    float_view, quant_view = float_model, quant_model
    producers = _float_activations(float_proto)
    counterparts = _Counterparts(quant_proto, quant_model.base_dir)
    fetch = {name: counterparts.output_for(name) for name in producers}
    matched = {name: fetched for name, fetched in fetch.items() if fetched}
    real_outputs = [o.name for o in float_proto.graph.output]
    accumulators = {name: _Accumulator() for name in matched}
    reference_outputs: list[dict] = [{} for _ in feeds.samples]
    candidate_outputs: list[dict] = [{} for _ in feeds.samples]
    # Fetching every activation at once holds them all: a bounded share per pass (`bench/memory_peaks.py quant-debug`).
    for number, names in enumerate(_passes(float_view, list(matched), feeds)):
        chunk = {name: matched[name] for name in names}
        wanted = real_outputs if number == 0 else []
        float_session = tap_session(float_view, list(chunk) + wanted, SESSION, purpose="quant-debug")
        quant_session = tap_session(quant_view, list(dict.fromkeys(chunk.values())) + wanted, SESSION, purpose="quant-debug")
        float_names = [o.name for o in float_session.get_outputs()]
        quant_names = [o.name for o in quant_session.get_outputs()]
        for index, feed in enumerate(feeds.samples):
            reference = dict(zip(float_names, run_checked(float_session, feed, float_model.name, index)))
            candidate = dict(zip(quant_names, run_checked(quant_session, feed, quant_model.name, index)))
            for name, fetched in chunk.items():
                accumulators[name].add(reference[name], counterparts.as_float(name, fetched, candidate[fetched]))
            reference_outputs[index].update({n: reference[n] for n in wanted})
            candidate_outputs[index].update({n: candidate[n] for n in wanted})
        del float_session, quant_session
        release_freed_memory()  # each pass's sessions are freed, but glibc keeps their memory unless asked
    activations = _ranked([TensorError(name, producers[name].name, producers[name].op_type, "activation", a.sqnr_db(),
                                       a.rel_error(), a.max_abs, a.absmax) for name, a in accumulators.items()],
                          producers)  # fmt: skip
    notes = ["judged on generated inputs: real data can rank layers differently"] if feeds.generated else []
    return QuantDebugReport(activations, _weight_errors(float_proto, counterparts, float_model.base_dir), compare(reference_outputs, candidate_outputs),
                            len(feeds), len(producers) - len(matched), notes)  # fmt: skip


# What int8 itself costs: ~6 dB per bit at full scale, less for real distributions. Falling to this
# level is expected of any quantized tensor; a drop is only counted below it.
SQNR_CAP_DB = 40.0


def _ranked(errors: list[TensorError], producers: dict[str, onnx.NodeProto]) -> list[TensorError]:
    """Worst first by the SQNR a node loses below its inputs' (capped at int8's own noise floor).

    Errors accumulate downstream, so ranking by SQNR alone blames the last layers; the drop points at
    the node whose quantization did the damage.
    """
    sqnr = {e.tensor: min(e.sqnr_db, SQNR_CAP_DB) for e in errors}
    for error in errors:
        inputs = [sqnr[name] for name in producers[error.tensor].input if name in sqnr]
        error.drop_db = max(0.0, min(inputs, default=SQNR_CAP_DB) - min(error.sqnr_db, SQNR_CAP_DB))
    return sorted(errors, key=lambda e: (-e.drop_db, e.sqnr_db))
