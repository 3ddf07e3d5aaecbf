"""Calibration for static quantization in memory that does not grow with the number of samples.

ORT's histogram calibrators keep every intermediate output of every sample until the end, then
build one histogram per tensor over all of it: gigabytes for a CNN and a few dozen images. Here
each sample is run once, folded into per-tensor running min/max or a fixed-size streaming histogram,
and dropped. The ranges are then computed with the same algorithms as ORT (KL-divergence threshold,
percentile, distribution), so they agree with ORT's on the same data to within one histogram bin,
and `CalibrationResult.to_tensors_data()` hands them to ORT's quantizers in place of its calibrator.

How the streaming histogram reproduces ORT's one-shot histogram: ORT bins all values of a tensor in
`num_bins` equal bins over [-T, T], T the largest magnitude seen (over [min|x|, max|x|] of |x| for
symmetric percentile). T is only known at the end, so values go into many more, finer bins over
[-R, R] with T <= R < 2T: when a sample reaches beyond R, R doubles and neighbouring fine bins pair
up (exact, and the bin count never grows). At the end the fine counts are re-binned onto ORT's grid
by interpolating the cumulative count, which moves each count by less than one fine bin.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from ortforge.core import runtime
from ortforge.core.errors import UserError
from ortforge.core.model import Model, fresh_name, iter_graphs, loaded_copy
from ortforge.core.progress import Progress
from ortforge.core.session import SessionConfig
from ortforge.data import Feed, FeedSet

METHODS = ("minmax", "entropy", "percentile", "distribution")
HISTOGRAM_METHODS = ("entropy", "percentile", "distribution")
SCENARIOS = ("same", "p3")
# ORT's defaults, as `onnxruntime.quantization.calibrate.create_calibrator` sets them per method.
DEFAULT_NUM_BINS = {"entropy": 128, "percentile": 2048, "distribution": 2048}
DEFAULT_SYMMETRIC = {"minmax": False, "entropy": False, "percentile": True, "distribution": False}
MIN_DISTRIBUTION_BINS = 512  # ORT refuses fewer for the distribution method
CALIBRATED_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16)  # what ORT's calibrator looks at

# Fine bins per final bin: at least FINE_FACTOR / 2 after the range doubled, so re-binning moves a
# count by well under one final bin; capped so a 2048-bin tensor holds 128 KiB of counts.
FINE_FACTOR = 16
MAX_FINE_BINS = 16384
CHUNK = 1 << 20  # values binned at a time: bounds the temporaries to a few MiB per tensor
SMOOTHING_EPS = 1e-4  # what ORT's KL search adds to empty bins
INITIALIZER_STUB_BYTES = 1024  # shape inference gets larger initializers as shape-only stubs


# --- options and result -------------------------------------------------------------------------


@dataclass(frozen=True)
class CalibrationOptions:
    """How to calibrate; None means ORT's default for the method (as `quantize_static` would use)."""

    method: str = "minmax"
    num_bins: int | None = None  # entropy 128, percentile 2048, distribution 2048
    num_quantized_bins: int = 128  # entropy: bins of the quantized distribution in the KL search
    percentile: float = 99.999
    symmetric: bool | None = None  # percentile: True (histogram of |x|); minmax: False; ORT ignores it otherwise
    moving_average: bool = False  # minmax: mean of per-sample min/max instead of the extremes
    averaging_constant: float = 0.01  # minmax with stride: weight of each new chunk's range
    stride: int | None = None  # minmax: ORT's CalibStridedMinMax, chunks of this many samples
    scenario: str = "same"  # distribution: 'same' or 'p3' (float8: values ~ x**3)
    op_types: tuple[str, ...] | None = None  # None: every op type ORT can quantize

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise UserError(f"calibration method '{self.method}' is not one of {', '.join(METHODS)}")
        if self.num_bins is not None and self.num_bins < 2:
            raise UserError(f"num_bins must be at least 2, got {self.num_bins}")
        if self.method == "distribution" and self.bins < MIN_DISTRIBUTION_BINS:
            raise UserError(f"the distribution method needs num_bins >= {MIN_DISTRIBUTION_BINS}, got {self.bins}")
        if self.method == "entropy" and not 2 <= self.num_quantized_bins <= self.bins:
            raise UserError(f"num_quantized_bins must lie in [2, num_bins={self.bins}], got {self.num_quantized_bins}")
        if not 0 <= self.percentile <= 100:
            raise UserError(f"percentile must lie in [0, 100], got {self.percentile}")
        if not 0 <= self.averaging_constant <= 1:
            raise UserError(f"averaging_constant must lie in [0, 1], got {self.averaging_constant}")
        if self.stride is not None and (self.method != "minmax" or self.stride < 1):
            raise UserError("stride (CalibStridedMinMax) is a positive sample count, for the minmax method only")
        if self.scenario not in SCENARIOS:
            raise UserError(f"scenario '{self.scenario}' is not one of {', '.join(SCENARIOS)}")

    @property
    def bins(self) -> int:
        """Histogram bins, ORT's default for the method when not given (0 for minmax)."""
        return self.num_bins if self.num_bins is not None else DEFAULT_NUM_BINS.get(self.method, 0)

    @property
    def is_symmetric(self) -> bool:
        return DEFAULT_SYMMETRIC[self.method] if self.symmetric is None else self.symmetric

    @property
    def absolute_histogram(self) -> bool:
        """Whether ORT histograms |x| (symmetric percentile) rather than x."""
        return self.method == "percentile" and self.is_symmetric


@dataclass
class Histogram:
    """A final histogram as ORT builds it: int64 counts and float32 edges, plus the data's extremes."""

    counts: np.ndarray
    edges: np.ndarray
    low: float  # smallest raw (signed) value seen: ORT clamps thresholds to it
    high: float


@dataclass
class CalibrationResult:
    """Per-tensor (low, high) ranges, and what ORT's quantizers need to use them."""

    ranges: dict[str, tuple[float, float]]
    method: str
    samples: int
    notes: list[str] = field(default_factory=list)
    histograms: dict[str, Histogram] = field(default_factory=dict)  # histogram methods only
    moments: dict[str, tuple[float, float]] = field(default_factory=dict)  # distribution: (avg, std)

    def to_tensors_data(self) -> Any:
        """The ranges as ORT's `TensorsData`: what `QDQQuantizer` / `ONNXQuantizer` take as `tensors_range`.

        A fresh object each call: ORT's quantizers overwrite entries (Relu/Clip inputs, Softmax).
        """
        from onnxruntime.quantization.calibrate import (
            CalibrationMethod,
            TensorData,
            TensorsData,
        )

        data = {}
        for name, (low, high) in self.ranges.items():
            values: dict[str, Any] = {"lowest": np.array(low, np.float32), "highest": np.array(high, np.float32)}
            histogram = self.histograms.get(name)
            if self.method == "distribution" and histogram is not None:
                avg, std = self.moments[name]
                values.update(avg=np.array(avg, np.float32), std=np.array(std, np.float32))
                values.update(hist=histogram.counts, hist_edges=histogram.edges)
            elif histogram is not None:
                values.update(hist=histogram.counts, bins=histogram.edges)
            data[name] = TensorData(**values)
        return TensorsData(CalibrationMethod[_ORT_METHOD_NAMES[self.method]], data)

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "samples": self.samples,
            "tensors": len(self.ranges),
            "ranges": {name: list(pair) for name, pair in self.ranges.items()},
            "notes": self.notes,
        }


_ORT_METHOD_NAMES = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile", "distribution": "Distribution"}


# --- collectors: O(bins) state per tensor, whatever the sample count ---------------------------


@dataclass
class RunningRange:
    """Per-sample min/max folded as ORT's MinMax calibrator does: extremes, or means (moving average).

    With a stride, each chunk of samples gives a range that is merged into the previous chunks' by
    min/max or, with moving average, by an exponential moving average (ORT's `merge_range`).
    """

    moving_average: bool = False
    averaging_constant: float = 0.01
    symmetric: bool = False
    stride: int | None = None
    # The open chunk: extremes, or sums and counts of the non-NaN per-sample values.
    _low: float = np.inf
    _high: float = -np.inf
    _low_sum: float = 0.0
    _high_sum: float = 0.0
    _low_count: int = 0
    _high_count: int = 0
    _in_chunk: int = 0
    merged: tuple[float, float] | None = None

    def update(self, low: float, high: float) -> None:
        """Fold in one sample's min and max of the tensor (NaN ones are skipped, as ORT's nanmin does)."""
        if low > high:  # an empty tensor: ReduceMin gives +inf and ReduceMax -inf
            low = high = np.nan
        if not np.isnan(low):
            self._low, self._low_sum, self._low_count = min(self._low, low), self._low_sum + low, self._low_count + 1
        if not np.isnan(high):
            self._high, self._high_sum, self._high_count = max(self._high, high), self._high_sum + high, self._high_count + 1
        self._in_chunk += 1
        if self.stride is not None and self._in_chunk == self.stride:
            self._close_chunk()

    def range(self) -> tuple[float, float] | None:
        """The final range (closes a partly filled chunk), or None when no sample had a value."""
        if self._in_chunk:
            self._close_chunk()
        return self.merged

    def state_size(self) -> int:
        """Numbers held: constant, whatever the sample count."""
        return 9

    def _close_chunk(self) -> None:
        chunk = self._chunk_range()
        self._low, self._high, self._low_sum, self._high_sum = np.inf, -np.inf, 0.0, 0.0
        self._low_count = self._high_count = self._in_chunk = 0
        if chunk is None:
            return
        if self.merged is None:
            self.merged = chunk
        elif self.moving_average:
            rate = self.averaging_constant
            self.merged = tuple(_f32(old + rate * (new - old)) for old, new in zip(self.merged, chunk))  # type: ignore[assignment]
        else:
            self.merged = (min(self.merged[0], chunk[0]), max(self.merged[1], chunk[1]))

    def _chunk_range(self) -> tuple[float, float] | None:
        if not self._low_count or not self._high_count:
            return None
        if self.moving_average:
            low, high = _f32(self._low_sum / self._low_count), _f32(self._high_sum / self._high_count)
        else:
            low, high = self._low, self._high
        if self.symmetric:
            magnitude = max(abs(low), abs(high))
            return (-magnitude, magnitude)
        return (low, high)


@dataclass
class StreamingHistogram:
    """Counts of a tensor's values (or magnitudes) in a fixed number of fine bins over [-limit, limit].

    The limit starts at the first sample's largest magnitude and doubles when a later one reaches
    beyond it, merging neighbouring bins in pairs: memory is `bins` integers, whatever the data.
    """

    bins: int
    absolute: bool = False  # histogram |x| over [0, limit], as ORT does for symmetric percentile
    counts: np.ndarray = field(init=False)
    limit: float = 0.0
    zeros_before_limit: int = 0  # values seen while everything so far was exactly 0 (no limit yet)
    low: float = np.inf  # extremes of the raw (signed) values
    high: float = -np.inf
    low_magnitude: float = np.inf  # smallest |x|: the first edge of ORT's |x| histogram
    zeros: int = 0  # exact zeros (ReLU outputs, padding): placed in ORT's bin exactly, not spread
    total: int = 0
    skipped: int = 0  # NaN and infinite values, which ORT's histograms cannot hold either

    def __post_init__(self) -> None:
        if self.bins % 4:
            raise ValueError("fine bin count must be a multiple of 4 (bins merge in pairs around 0)")
        self.counts = np.zeros(self.bins, np.int64)

    def update(self, values: np.ndarray) -> None:
        """Fold one sample's values in: widen (merging bins) if needed, then count them."""
        flat = np.asarray(values).reshape(-1)
        if flat.size == 0:
            return
        low, high = flat.min(), flat.max()
        if not (np.isfinite(low) and np.isfinite(high)):
            finite = np.isfinite(flat)
            self.skipped += int(flat.size - np.count_nonzero(finite))
            flat = flat[finite]
            if flat.size == 0:
                return
            low, high = flat.min(), flat.max()
        self.low, self.high = min(self.low, float(low)), max(self.high, float(high))
        self._widen(max(abs(float(low)), abs(float(high))))
        for start in range(0, flat.size, CHUNK):
            self._count(flat[start : start + CHUNK])
        self.total += int(flat.size)

    def state_size(self) -> int:
        """Numbers held: the fine counts plus a few scalars, whatever the sample count."""
        return int(self.counts.size) + 8

    def fine_edges(self) -> np.ndarray:
        start = 0.0 if self.absolute else -self.limit
        return np.linspace(start, self.limit, self.bins + 1)

    def _widen(self, magnitude: float) -> None:
        if magnitude == 0.0:
            return
        if self.limit == 0.0:
            self.limit = magnitude
            if self.zeros_before_limit:
                self.counts[self._zero_bin()] += self.zeros_before_limit
                self.zeros_before_limit = 0
            return
        while self.limit < magnitude:
            self.limit *= 2.0
            pairs = self.counts.reshape(-1, 2).sum(axis=1)
            self.counts[:] = 0
            # Signed bins are centred on 0, so the old range lands in the middle half of the new one.
            offset = 0 if self.absolute else self.bins // 4
            self.counts[offset : offset + self.bins // 2] = pairs

    def _zero_bin(self) -> int:
        return 0 if self.absolute else self.bins // 2

    def _count(self, chunk: np.ndarray) -> None:
        values = chunk.astype(np.float64)
        if self.absolute:
            np.abs(values, out=values)
            self.low_magnitude = min(self.low_magnitude, float(values.min()))
        self.zeros += int(values.size - np.count_nonzero(values))
        if self.limit == 0.0:  # every value so far is 0
            self.zeros_before_limit += values.size
            return
        values *= self.bins / (self.limit if self.absolute else 2.0 * self.limit)
        np.floor(values, out=values)
        index = values.astype(np.intp)
        # Offsetting after the floor keeps 0 exactly on the edge of the zero bin, whatever the rounding.
        index += self._zero_bin()
        np.clip(index, 0, self.bins - 1, out=index)  # the top edge belongs to the last bin
        self.counts += np.bincount(index, minlength=self.bins)

    def final(self, num_bins: int) -> Histogram | None:
        """The histogram ORT would have built from the same values: `num_bins` bins over its range."""
        if self.total == 0:
            return None
        if self.absolute:
            first, last = np.float32(self.low_magnitude), np.float32(max(abs(self.low), abs(self.high)))
            support = (float(first), float(last))
        else:
            magnitude = np.float32(max(abs(self.low), abs(self.high)))
            first, last = -magnitude, magnitude
            support = (self.low, self.high)
        # np.histogram makes the edges, so they match ORT's to the bit (float32, degenerate ranges widened).
        edges = np.histogram(np.empty(0, np.float32), num_bins, range=(first, last))[1]
        if self.limit == 0.0 or support[0] == support[1]:
            # One value only (all zeros, say): every count goes to the bin holding it.
            counts = np.histogram(np.array([support[0]], np.float32), edges)[0] * self.total
        else:
            zero_bin = np.histogram(np.zeros(1, np.float32), edges)[0]
            counts = self._rebinned(edges.astype(np.float64), support) + zero_bin * self.zeros
        return Histogram(counts.astype(np.int64), edges, float(np.float32(self.low)), float(np.float32(self.high)))

    def _rebinned(self, edges: np.ndarray, support: tuple[float, float]) -> np.ndarray:
        """Counts on `edges`, from the fine counts' cumulative sum interpolated at each edge.

        Within a fine bin the values are taken as spread evenly over the part of it the data
        reaches (so the outermost bins do not leak counts beyond the data's extremes).
        """
        fine = self.fine_edges()
        counts = self.counts.copy()
        counts[self._zero_bin()] -= self.zeros  # placed exactly by the caller
        cumulative = np.concatenate(([0], np.cumsum(counts)))
        index = np.clip(np.searchsorted(fine, edges, side="right") - 1, 0, self.bins - 1)
        start = np.maximum(fine[index], support[0])
        end = np.minimum(fine[index + 1], support[1])
        width = end - start
        inside = np.clip((edges - start) / np.where(width > 0, width, 1.0), 0.0, 1.0)
        fraction = np.where(width > 0, inside, (edges >= end).astype(np.float64))
        below = cumulative[index] + counts[index] * fraction
        below[0], below[-1] = 0, cumulative[-1]  # all data lies within the outer edges
        return np.diff(np.round(below).astype(np.int64))


# --- range algorithms (ORT's, re-implemented over a final histogram) ----------------------------


def entropy_range(histogram: Histogram, num_quantized_bins: int) -> tuple[float, float]:
    """ORT's KL-divergence threshold: the symmetric window whose int8 version loses least information.

    Each candidate window around the middle bin keeps the outliers in its end bins (p), is squeezed
    into `num_quantized_bins` bins and expanded back (q); the window minimising KL(p || q) wins,
    clamped to the data's extremes.
    """
    counts, edges = histogram.counts, histogram.edges
    size = counts.size
    middle = size // 2
    half_quantized = num_quantized_bins // 2
    prefix = np.concatenate(([0], np.cumsum(counts)))
    divergences = []
    for half in range(half_quantized, middle + 1):
        start, end = middle - half, min(middle + half + 1, size)
        divergences.append(_window_divergence(counts[start:end], prefix[start], prefix[size] - prefix[end], num_quantized_bins))
    half = half_quantized + int(np.argmin(divergences))  # the first of equal minima, as ORT picks
    return _clamped(float(edges[middle - half]), float(edges[min(middle + half + 1, size)]), histogram)


def _window_divergence(window: np.ndarray, left_outliers: int, right_outliers: int, num_quantized_bins: int) -> float:
    """KL(p || q) for one candidate window, with ORT's float32 arithmetic and its quirks kept.

    q spreads each merged bin's count (truncated to an integer) over the bins where p is non-zero,
    and leaves the window's last `len % num_quantized_bins` bins at 0, as ORT does.
    """
    reference = window.copy()
    reference[0] += left_outliers
    reference[-1] += right_outliers
    nonzero = reference != 0
    merge = window.size // num_quantized_bins
    covered = merge * num_quantized_bins
    merged = window[:covered].reshape(num_quantized_bins, merge).sum(axis=1)
    merged[-1] += window[covered:].sum()
    occupied = nonzero[:covered].reshape(num_quantized_bins, merge).sum(axis=1)
    per_bin = np.where(occupied > 0, merged // np.maximum(occupied, 1), 0)
    expanded = np.zeros(window.size, np.int64)
    expanded[:covered] = np.repeat(per_bin, merge)
    p, q = _smoothed(reference), _smoothed(expanded)
    if p is None or q is None:
        return float(np.inf)
    p /= p.sum()
    q /= q.sum()
    return float((p * np.log(p / q)).sum(dtype=np.float32))


def _smoothed(counts: np.ndarray) -> np.ndarray | None:
    """Float32 distribution with empty bins raised to eps, paid for by the others (None if all empty)."""
    empty = counts == 0
    filled = counts.size - int(empty.sum())
    if filled == 0:
        return None
    taken = SMOOTHING_EPS * float(counts.size - filled) / float(filled)
    smoothed = counts.astype(np.float32)
    smoothed += np.where(empty, np.float32(SMOOTHING_EPS), np.float32(-taken)).astype(np.float32)
    return smoothed


def percentile_range(histogram: Histogram, percentile: float, absolute: bool) -> tuple[float, float]:
    """ORT's percentile range: the edges where the cumulative share crosses the cut-offs, clamped.

    On a histogram of |x| (symmetric) the range is +-edge at `percentile`; otherwise half of the
    excluded share is cut on each side.
    """
    cumulative = np.cumsum(histogram.counts / histogram.counts.sum())
    edges = histogram.edges
    if absolute:
        edge = float(edges[np.searchsorted(cumulative, percentile / 100.0)])
        return _clamped(-edge, edge, histogram)
    cut = (100.0 - percentile) / 200.0
    low = float(edges[np.searchsorted(cumulative, cut)])
    high = float(edges[np.searchsorted(cumulative, 1.0 - cut)])
    return _clamped(low, high, histogram)


def distribution_moments(histogram: Histogram, scenario: str) -> tuple[float, float]:
    """Mean and standard deviation of the bin centres (of x, or of x**(1/3) for 'p3'), as ORT computes them."""
    centres = (histogram.edges[:-1] + histogram.edges[1:]) * np.float32(0.5)
    if scenario == "p3":
        centres = np.cbrt(centres)  # odd root keeps the sign, as ORT's |x|**p * sign(x) does
    counts = histogram.counts
    mean = (counts * centres).sum() / counts.sum()
    spread = (counts * centres**2).sum() / counts.sum() - mean**2
    return float(np.float32(mean)), float(np.float32(max(spread, 0.0) ** 0.5))


def _clamped(low: float, high: float, histogram: Histogram) -> tuple[float, float]:
    """Thresholds never reach beyond the data (ORT clamps to the observed min and max)."""
    return (max(low, histogram.low), min(high, histogram.high))


def _f32(value: float) -> float:
    return float(np.float32(value))


# --- which tensors, and the model that exposes them -----------------------------------------------


def quantizable_op_types() -> tuple[str, ...]:
    """The op types `quantize_static` quantizes by default (ORT's QLinear and QDQ registries)."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return tuple(sorted(set(QLinearOpsRegistry) | set(QDQRegistry)))


def select_tensors(model: Model, op_types: Sequence[str] | None = None) -> tuple[list[str], dict[str, int]]:
    """The tensors ORT's calibrator would calibrate, and their element types.

    Float32/float16 inputs and outputs of the main graph's nodes of `op_types` (ORT's quantizable
    ops by default) whose type shape inference knows, initializers excepted. Sorted, for stable output.
    """
    wanted = set(op_types) if op_types is not None else set(quantizable_op_types())
    types = tensor_types(model.proto)
    initializers = {tensor.name for tensor in model.proto.graph.initializer}
    chosen = set()
    for node in model.proto.graph.node:
        if node.op_type not in wanted:
            continue
        for name in (*node.input, *node.output):
            if name and name not in initializers and types.get(name) in CALIBRATED_TYPES:
                chosen.add(name)
    return sorted(chosen), {name: types[name] for name in chosen}


def tensor_types(proto: onnx.ModelProto) -> dict[str, int]:
    """Element type of every main-graph tensor that shape inference types (as ORT's calibrator sees them)."""
    inferred = _infer_shapes(proto).graph
    types = {}
    for info in (*inferred.value_info, *inferred.output, *inferred.input):
        if info.type.HasField("tensor_type"):
            types[info.name] = info.type.tensor_type.elem_type
    return types


def _infer_shapes(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Shape inference on a copy of the graph without the weights' bytes (types and dims are enough)."""
    light = onnx.ModelProto()
    for name in ("ir_version", "producer_name", "producer_version", "domain", "model_version"):
        setattr(light, name, getattr(proto, name))
    light.opset_import.extend(proto.opset_import)
    light.functions.extend(proto.functions)
    graph = proto.graph
    light.graph.name = graph.name
    for part in ("node", "input", "output", "value_info", "sparse_initializer"):
        getattr(light.graph, part).extend(getattr(graph, part))
    # Small initializers keep their values: Reshape/Slice/... shapes are inferred from them.
    light.graph.initializer.extend(_stub(tensor) for tensor in graph.initializer)
    try:
        return onnx.shape_inference.infer_shapes(light)
    except Exception:  # onnx raises several types; ORT's calibrator would fail here, we calibrate what is typed
        return light


def _stub(tensor: onnx.TensorProto) -> onnx.TensorProto:
    if tensor.data_location != TensorProto.EXTERNAL and tensor.ByteSize() <= INITIALIZER_STUB_BYTES:
        return tensor
    return onnx.TensorProto(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims)


@dataclass
class _Probe:
    """How one tensor's values come back from a run: from the feed, the tensor itself, or its min/max."""

    tensor: str
    outputs: tuple[str, ...]  # empty: a graph input, read from the feed


def _plan_probes(model: Model, tensors: Sequence[str], method: str) -> tuple[list[_Probe], list[onnx.NodeProto], list[onnx.ValueInfoProto]]:
    """Probes per tensor, and the nodes and graph outputs to add for them.

    MinMax adds ReduceMin/ReduceMax so that a run returns two numbers per tensor instead of the
    whole tensor (ORT's MinMax calibrator does the same); the other methods need the values.
    """
    graph = model.proto.graph
    graph_inputs = {value.name for value in graph.input}
    graph_outputs = {value.name for value in graph.output}
    taken = _names_in_use(graph)
    probes, nodes, outputs = [], [], []
    for tensor in tensors:
        if tensor in graph_inputs:
            probes.append(_Probe(tensor, ()))
        elif method == "minmax":
            low, high = fresh_name(f"{tensor}__ortforge_min", taken), fresh_name(f"{tensor}__ortforge_max", taken)
            nodes.append(helper.make_node("ReduceMin", [tensor], [low], name=low, keepdims=1))
            nodes.append(helper.make_node("ReduceMax", [tensor], [high], name=high, keepdims=1))
            outputs += [helper.make_empty_tensor_value_info(low), helper.make_empty_tensor_value_info(high)]
            probes.append(_Probe(tensor, (low, high)))
        else:
            if tensor not in graph_outputs:
                outputs.append(helper.make_empty_tensor_value_info(tensor))
            probes.append(_Probe(tensor, (tensor,)))
    return probes, nodes, outputs


def _names_in_use(graph: onnx.GraphProto) -> set[str]:
    """Tensor and node names of the graph: added probes must not collide with either."""
    return {name for node in graph.node for name in (node.name, *node.input, *node.output)} | {value.name for value in graph.input}


def _augmented_session(model: Model, nodes: list[onnx.NodeProto], outputs: list[onnx.ValueInfoProto], config: SessionConfig) -> Any:
    """A session over the model plus the probe nodes/outputs, created from bytes (no files written).

    The probes are put into the caller's proto only while it is serialised, then taken out again,
    so the weights are not copied a second time in memory.
    """
    graph = model.proto.graph
    output_count = len(graph.output)
    added = _insert_after_producers(graph, nodes)
    graph.output.extend(outputs)
    try:
        augmented = Model(proto=model.proto, data_dir=model.base_dir, changes=["calibration outputs added"])
        source, entries = augmented.ort_source()
    finally:
        del graph.output[output_count:]
        for index in reversed(range(len(graph.node))):
            if graph.node[index].name in added:
                del graph.node[index]
    return _session(config, source, entries, model.name)


def _session(config: SessionConfig, source: bytes | str, entries: dict[str, str], name: str) -> Any:
    """Like `SessionConfig.create`, with ORT's priority-based node order (SessionConfig has no field for it).

    The default order runs the probes late, keeping every probed tensor alive at once: 2.8 GB instead
    of 0.34 GB for MinMax on PP-OCR det.
    """
    ort = runtime.ort()
    options = config.session_options(entries)
    options.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    config.check_providers()
    try:
        return ort.InferenceSession(source, options, providers=config.provider_names, provider_options=[p.options for p in config.providers])
    except Exception as exc:  # ORT raises its own exception types per failure kind
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{name}: onnxruntime could not create the calibration session: {message}") from None


def _insert_after_producers(graph: onnx.GraphProto, nodes: list[onnx.NodeProto]) -> set[str]:
    """Put each probe right after the node producing its input; returns the probes' names.

    With the priority-based order ORT keeps to this order: a probe left at the end would keep every
    tensor it reads alive until then (all of them at once); right after its producer, it can go.
    """
    by_input: dict[str, list[onnx.NodeProto]] = {}
    for node in nodes:
        by_input.setdefault(node.input[0], []).append(node)
    placements = []
    for index, node in enumerate(graph.node):
        after = [probe for output in node.output for probe in by_input.pop(output, [])]
        if after:
            placements.append((index + 1, after))
    leftovers = [probe for probes in by_input.values() for probe in probes]  # produced nowhere: graph inputs
    for index, probes in reversed([(0, leftovers), *placements]):
        for offset, probe in enumerate(probes):
            graph.node.insert(index + offset, probe)
    return {node.name for node in nodes}


# --- the calibration loop -------------------------------------------------------------------------


def calibrate(
    model: Model,
    feeds: Iterable[Feed] | FeedSet,
    options: CalibrationOptions | None = None,
    *,
    tensors: Sequence[str] | None = None,
    progress: Progress | None = None,
    total: int | None = None,
    session: SessionConfig | None = None,
    max_run_bytes: int | None = None,
) -> CalibrationResult:
    """Ranges of `tensors` (ORT's choice by default) over `feeds`, each sample run once and dropped.

    Feeds are consumed one at a time (a generator works); memory is one run's outputs plus a
    fixed-size state per tensor, whatever the number of samples. `max_run_bytes` caps that run's
    outputs for the histogram methods by running each sample once per group of tensors (slower).
    `session` sets providers and threads; by default the model runs unoptimised on CPU, as in ORT.
    """
    options = options or CalibrationOptions()
    config = session or SessionConfig(graph_optimization_level="disable")
    report = progress or (lambda what, fraction: None)
    samples = feeds.samples if isinstance(feeds, FeedSet) else feeds
    if total is None and hasattr(samples, "__len__"):
        total = len(samples)  # type: ignore[arg-type]
    names, notes = _tensors_to_calibrate(model, tensors, options)
    stream = iter(samples)
    first = next(stream, None)
    if first is None:
        raise UserError(f"{model.name}: calibration needs at least one sample, got none")
    report(f"calibrating {len(names)} tensors ({options.method})", 0.0)
    groups = [names]
    if max_run_bytes is not None and options.method in HISTOGRAM_METHODS:
        groups = _groups(model, names, first, max_run_bytes, config)
        if len(groups) > 1:
            notes.append(f"each sample ran {len(groups)} times, on groups of tensors of at most ~{max_run_bytes / 2**20:.4g} MiB each")
            # Without the arena each group's run gives its memory back before the next group's.
            config = replace(config, enable_cpu_mem_arena=False)
    runners = [_runner(model, group, options.method, config) for group in groups]
    collectors = {name: _collector(options) for name in names}
    count = _run_samples(runners, collectors, itertools.chain([first], stream), report, total, model.name)
    report(f"computing {options.method} ranges", 1.0)
    result = _finish(collectors, options, count)
    result.notes[:0] = notes
    return result


@dataclass
class _Runner:
    """A session exposing some tensors, and how to read each tensor back from its outputs."""

    session: Any
    probes: list[_Probe]
    wanted: list[str]


def _runner(model: Model, tensors: Sequence[str], method: str, config: SessionConfig) -> _Runner:
    probes, nodes, outputs = _plan_probes(model, tensors, method)
    wanted = list(dict.fromkeys(output for probe in probes for output in probe.outputs))
    return _Runner(_augmented_session(model, nodes, outputs, config), probes, wanted)


def _groups(model: Model, names: list[str], feed: Feed, budget: int, config: SessionConfig) -> list[list[str]]:
    """Tensors split, in order, into groups whose outputs for `feed` take at most `budget` bytes each.

    Sizes come from a run that returns only each tensor's element count (`Size` nodes), so finding
    them costs about one plain run; a tensor larger than the budget gets a group of its own.
    """
    graph_inputs = {value.name for value in model.proto.graph.input}
    measured = [name for name in names if name not in graph_inputs]
    if not measured:
        return [names]
    taken = _names_in_use(model.proto.graph)
    counters = {name: fresh_name(f"{name}__ortforge_size", taken) for name in measured}
    nodes = [helper.make_node("Size", [name], [counter], name=counter) for name, counter in counters.items()]
    outputs = [helper.make_empty_tensor_value_info(counter) for counter in counters.values()]
    sizes = dict(zip(measured, _augmented_session(model, nodes, outputs, config).run(list(counters.values()), feed)))
    types = tensor_types(model.proto)
    groups: list[list[str]] = [[]]
    used = 0
    for name in measured:
        size = int(sizes[name]) * (2 if types.get(name) == TensorProto.FLOAT16 else 4)
        if groups[-1] and used + size > budget:
            groups.append([])
            used = 0
        groups[-1].append(name)
        used += size
    groups[0].extend(name for name in names if name in graph_inputs)  # read from the feed: free
    return groups


def _tensors_to_calibrate(model: Model, tensors: Sequence[str] | None, options: CalibrationOptions) -> tuple[list[str], list[str]]:
    notes = []
    if any(graph is not model.proto.graph for graph in iter_graphs(model.proto.graph)):
        notes.append("tensors inside If/Loop/Scan subgraphs are not calibrated (ORT's calibrator skips them too)")
    if tensors is None:
        names, types = select_tensors(model, options.op_types)
    else:
        names, types = list(dict.fromkeys(tensors)), tensor_types(model.proto)
        initializers = {tensor.name for tensor in model.proto.graph.initializer}
        for name in names:
            if name in initializers:
                raise UserError(f"{model.name}: '{name}' is an initializer (a weight), not an activation to calibrate")
            if types.get(name) not in CALIBRATED_TYPES:
                raise UserError(f"{model.name}: no float32/float16 tensor '{name}' in the main graph to calibrate")
    if not names:
        raise UserError(f"{model.name}: no float tensors to calibrate (none feed or leave a quantizable op)")
    if any(types[name] == TensorProto.FLOAT16 for name in names):
        notes.append("float16 tensors are calibrated in float32 (ORT keeps float16 ranges; the values are the same)")
    return names, notes


def _collector(options: CalibrationOptions) -> RunningRange | StreamingHistogram:
    if options.method == "minmax":
        return RunningRange(options.moving_average, options.averaging_constant, options.is_symmetric, options.stride)
    fine = min(FINE_FACTOR * options.bins, max(MAX_FINE_BINS, 4 * options.bins))
    return StreamingHistogram(fine + (-fine) % 4, absolute=options.absolute_histogram)


def _run_samples(
    runners: list[_Runner],
    collectors: dict[str, RunningRange | StreamingHistogram],
    feeds: Iterator[Feed],
    report: Progress,
    total: int | None,
    name: str,
) -> int:
    """Run each sample once per runner and fold its values in; returns how many samples ran."""
    count = 0
    for feed in feeds:
        for runner in runners:
            values = _run(runner.session, runner.wanted, feed, name, count)
            for probe in runner.probes:
                _fold(collectors[probe.tensor], probe, feed, values)
            del values  # this group's outputs go before the next group's run
        count += 1
        fraction = min(count / total, 1.0) if total else 0.0
        report(f"calibrating: sample {count}" + (f"/{total}" if total else ""), fraction)
    return count


def _run(runner: Any, wanted: list[str], feed: Feed, name: str, index: int) -> dict[str, np.ndarray]:
    if not wanted:
        return {}
    try:
        return dict(zip(wanted, runner.run(wanted, feed)))
    except Exception as exc:  # ORT raises its own types for bad feeds
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{name}: calibration sample {index} failed to run: {first}") from None


def _fold(collector: RunningRange | StreamingHistogram, probe: _Probe, feed: Feed, values: dict[str, np.ndarray]) -> None:
    """Hand one sample's values of a tensor to its collector; its output array is released here."""
    if probe.outputs:
        arrays = [values.pop(output) for output in probe.outputs]
    elif probe.tensor in feed:
        arrays = [np.asarray(feed[probe.tensor])]
    else:
        raise UserError(f"calibration feed has no input '{probe.tensor}' (it has: {', '.join(feed)})")
    if isinstance(collector, StreamingHistogram):
        collector.update(arrays[0])
    elif len(arrays) == 2:  # ReduceMin / ReduceMax outputs: one number each
        collector.update(_first(arrays[0]), _first(arrays[1]))
    else:
        collector.update(*((float(arrays[0].min()), float(arrays[0].max())) if arrays[0].size else (np.nan, np.nan)))


def _first(array: np.ndarray) -> float:
    return float(array.reshape(-1)[0]) if array.size else np.nan


def _finish(collectors: dict[str, RunningRange | StreamingHistogram], options: CalibrationOptions, count: int) -> CalibrationResult:
    result = CalibrationResult({}, options.method, count)
    empty, skipped = [], 0
    for name, collector in collectors.items():
        if isinstance(collector, RunningRange):
            pair = collector.range()
        else:
            skipped += collector.skipped
            pair = _histogram_range(name, collector, options, result)
        if pair is None:
            empty.append(name)
        result.ranges[name] = pair or (0.0, 0.0)
    if empty:
        shown = ", ".join(empty[:5]) + (", ..." if len(empty) > 5 else "")
        result.notes.append(f"{len(empty)} tensor(s) were empty in every sample and got the range (0, 0): {shown}")
    if skipped:
        result.notes.append(f"{skipped} NaN/infinite value(s) left out of the histograms")
    return result


def _histogram_range(name: str, collector: StreamingHistogram, options: CalibrationOptions, result: CalibrationResult) -> tuple[float, float] | None:
    histogram = collector.final(options.bins)
    if histogram is None:
        return None
    result.histograms[name] = histogram
    if options.method == "entropy":
        return entropy_range(histogram, options.num_quantized_bins)
    if options.method == "percentile":
        return percentile_range(histogram, options.percentile, options.absolute_histogram)
    result.moments[name] = distribution_moments(histogram, options.scenario)
    return (float(histogram.edges.min()), float(histogram.edges.max()))


# --- handing the ranges to ORT's quantizers --------------------------------------------------------


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
    check_static_quant_arguments(quant_format, activation_type, weight_type)
    # ORT's own shape inference goes through a temporary folder of its own, removed afterwards.
    proto = save_and_reload_model_with_shape_infer(loaded_copy(model))
    # Older ORT (the OpenVINO flavour ships 1.24) takes fewer keywords here: pass only those it knows.
    accepted = inspect.signature(update_opset_version).parameters
    if len(accepted) == 2:  # ORT <= 1.24: (model, weight_type)
        proto = update_opset_version(proto, weight_type)
    else:
        optional = {"tensor_quant_overrides": extra.get("TensorQuantOverrides"), "block_size": extra.get("BlockSize", 0)}
        proto = update_opset_version(proto, weight_type, activation_type, **{k: v for k, v in optional.items() if k in accepted})
    arguments = (result.to_tensors_data(), list(nodes_to_quantize), list(nodes_to_exclude), list(op_types or quantizable_op_types()), extra)
    if quant_format == QuantFormat.QOperator:
        quantizer = ONNXQuantizer(proto, per_channel, reduce_range, QuantizationMode.QLinearOps, True, weight_type, activation_type, *arguments)
    else:
        quantizer = QDQQuantizer(proto, per_channel, reduce_range, weight_type, activation_type, *arguments)
    quantizer.quantize_model()
    quantizer.model.topological_sort()  # quantize_static sorts while saving
    return quantizer.model.model


