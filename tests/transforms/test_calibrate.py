"""Streaming calibration: the same ranges as ORT's calibrators on the same data, in bounded memory."""

from __future__ import annotations

import contextlib
import inspect
import io
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod
from onnxruntime.quantization.calibrate import HistogramCollector, TensorsData, create_calibrator

from helpers import make_model, tensor, weight
from ortforge.core.errors import UserError
from ortforge.core.model import from_proto
from ortforge.data import FeedSet
from ortforge.transforms.calibrate import (
    CalibrationOptions,
    RunningRange,
    StreamingHistogram,
    calibrate,
    histogram_ranges,
    quantizable_op_types,
)
from ortforge.transforms.calibrate.collectors import make_collector
from ortforge.transforms.calibrate.ranges import ort_collector

SAMPLES = 12


def small_cnn() -> onnx.ModelProto:
    """Conv, Relu (a spike of exact zeros), Conv, residual Add, MaxPool: signed, one-sided and mixed tensors."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Add", ["c2", "c1"], ["s"], name="add"),
        helper.make_node("MaxPool", ["s"], ["y"], kernel_shape=[2, 2], strides=[2, 2], name="pool"),
    ]
    weights = [
        weight("w1", rng.standard_normal((8, 3, 3, 3)).astype(np.float32)),
        weight("w2", (rng.standard_normal((8, 8, 3, 3)) / 5).astype(np.float32)),
    ]
    return make_model(nodes, [tensor("x", [1, 3, 16, 16])], [tensor("y", None)], weights)


def sample_feeds(count: int = SAMPLES, seed: int = 1) -> list[dict[str, np.ndarray]]:
    """Samples of different spreads, so later samples widen the range (the histogram must re-bin)."""
    rng = np.random.default_rng(seed)
    return [{"x": (rng.standard_normal((1, 3, 16, 16)) * rng.uniform(0.5, 4.0)).astype(np.float32)} for _ in range(count)]


class Reader(CalibrationDataReader):
    """ORT's data reader over a list of feeds (with set_range, which strided MinMax uses)."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self.feeds, self.position, self.end = feeds, 0, len(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.position >= self.end:
            return None
        self.position += 1
        return self.feeds[self.position - 1]

    def __len__(self) -> int:
        return len(self.feeds)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.position, self.end = start_index, end_index


def ort_calibration(proto: onnx.ModelProto, feeds: list, method: CalibrationMethod, extra: dict, stride: int | None = None) -> TensorsData:
    """ORT's own calibrator on the same model and feeds, the way quantize_static drives it."""
    with tempfile.TemporaryDirectory() as folder, contextlib.redirect_stdout(io.StringIO()):
        path = Path(folder) / "model.onnx"
        onnx.save_model(proto, str(path))
        calibrator = create_calibrator(
            path, quantizable_op_types(), augmented_model_path=str(Path(folder) / "augmented.onnx"), calibrate_method=method, extra_options=extra
        )
        reader = Reader(feeds)
        for start in range(0, len(feeds), stride or len(feeds)):
            reader.set_range(start, start + (stride or len(feeds)))
            calibrator.collect_data(reader)
        return calibrator.compute_data()


def ort_pairs(data: TensorsData) -> dict[str, tuple[float, float]]:
    return {name: tuple(float(np.asarray(v).reshape(-1)[0]) for v in item.range_value) for name, item in data.items()}


@pytest.fixture(scope="module")
def model():
    return from_proto(small_cnn())


# --- the same ranges as ORT ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "extra"),
    [
        (CalibrationOptions("minmax"), {}),
        (CalibrationOptions("minmax", symmetric=True), {"symmetric": True}),
    ],
    ids=["plain", "symmetric"],
)
def test_minmax_equals_ort_exactly(model, options, extra):
    feeds = sample_feeds()
    expected = ort_pairs(ort_calibration(model.proto, feeds, CalibrationMethod.MinMax, extra))
    result = calibrate(model, feeds, options)
    assert result.ranges == expected
    assert result.samples == SAMPLES and result.method == "minmax"


@pytest.mark.parametrize("stride", [None, 4])
def test_moving_average_matches_ort(model, stride):
    """Mean of per-sample extremes; with a stride, chunk means merged by ORT's exponential moving average."""
    feeds = sample_feeds()
    extra = {"moving_average": True, "averaging_constant": 0.25}
    expected = ort_pairs(ort_calibration(model.proto, feeds, CalibrationMethod.MinMax, extra, stride))
    result = calibrate(model, feeds, CalibrationOptions("minmax", moving_average=True, averaging_constant=0.25, stride=stride))
    assert result.ranges.keys() == expected.keys()
    for name, pair in expected.items():
        np.testing.assert_allclose(result.ranges[name], pair, rtol=1e-5, err_msg=name)


@pytest.mark.parametrize(
    ("options", "method", "extra"),
    [
        (CalibrationOptions("entropy"), CalibrationMethod.Entropy, {}),
        (CalibrationOptions("entropy", num_bins=512), CalibrationMethod.Entropy, {"num_bins": 512}),
        (CalibrationOptions("percentile", percentile=99.9), CalibrationMethod.Percentile, {"percentile": 99.9}),
        (
            CalibrationOptions("percentile", percentile=99.9, symmetric=False),
            CalibrationMethod.Percentile,
            {"percentile": 99.9, "symmetric": False},
        ),
        (CalibrationOptions("distribution"), CalibrationMethod.Distribution, {}),
    ],
    ids=["entropy", "entropy-512", "percentile-abs", "percentile-signed", "distribution"],
)
def test_histogram_methods_within_one_bin_of_ort(model, options, method, extra):
    feeds = sample_feeds()
    expected = ort_calibration(model.proto, feeds, method, extra)
    result = calibrate(model, feeds, options)
    assert result.ranges.keys() == set(expected.keys())
    for name, (low, high) in ort_pairs(expected).items():
        edges = result.histograms[name].edges
        width = float(edges[1] - edges[0]) * (1 + 1e-6)
        assert abs(result.ranges[name][0] - low) <= width, name
        assert abs(result.ranges[name][1] - high) <= width, name
        if options.method == "distribution":
            np.testing.assert_allclose(result.moments[name], expected[name].avg_std, atol=width, err_msg=name)


def test_grouped_runs_give_the_same_ranges(model):
    """Capping one run's outputs (one tensor per run here) changes the runs, not the answer."""
    feeds = sample_feeds(4)
    options = CalibrationOptions("percentile", percentile=99.0)
    whole = calibrate(model, feeds, options)
    grouped = calibrate(model, feeds, options, max_run_bytes=1)
    assert grouped.ranges == whole.ranges
    assert any("ran 5 times" in note for note in grouped.notes)


def test_explicit_tensors_and_their_errors(model):
    result = calibrate(model, sample_feeds(2), tensors=["r1", "x"])
    assert sorted(result.ranges) == ["r1", "x"]
    with pytest.raises(UserError, match="initializer"):
        calibrate(model, sample_feeds(2), tensors=["w1"])
    with pytest.raises(UserError, match="no float32/float16 tensor 'nope'"):
        calibrate(model, sample_feeds(2), tensors=["nope"])


# --- ORT's HistogramCollector: its maths run on our histograms, its collection cannot stream --------


def widening_stream(count: int = 20, size: int = 20_000) -> list[np.ndarray]:
    """Samples whose spread keeps growing: every one widens the histogram's range."""
    rng = np.random.default_rng(3)
    return [(rng.standard_normal(size) * (1 + index / 2)).astype(np.float32) for index in range(count)]


def test_ort_histogram_collector_interface():
    """What ranges.py uses of ORT's HistogramCollector (the same in ORT 1.24 to 1.32)."""
    found = tuple(inspect.signature(HistogramCollector.__init__).parameters)[1:]
    assert found == ("method", "symmetric", "num_bins", "num_quantized_bins", "percentile", "scenario")
    collector = ort_collector(CalibrationOptions("entropy"))
    assert collector.get_histogram_dict() is collector.get_histogram_dict() == {}  # filled in place


def test_ort_collector_cannot_stream():
    """Why ortforge keeps its own histogram: ORT's collector fed one sample at a time is not ORT's answer.

    ORT's calibrator hands its collector every sample's values at once. Fed one sample at a time (the
    only way to bound memory), the collector adds bins whenever the range widens (10x here) and its
    entropy threshold moves by several bins; ortforge's streaming histogram stays at 128 bins, within one.
    """
    options = CalibrationOptions("entropy")
    samples = widening_stream()
    one_shot, per_sample = ort_collector(options), ort_collector(options)
    with contextlib.redirect_stdout(io.StringIO()):
        one_shot.collect({"t": samples})
        for sample in samples:
            per_sample.collect({"t": [sample]})
        expected, drifted = (c.compute_collection_result()["t"][:2] for c in (one_shot, per_sample))
    collector = make_collector(options)
    for sample in samples:
        collector.update(sample)
    ours = histogram_ranges({"t": collector.final(options.bins)}, options)[0]["t"]
    width = float(one_shot.histogram_dict["t"][1][1] - one_shot.histogram_dict["t"][1][0])
    assert per_sample.histogram_dict["t"][0].size > 5 * options.bins
    assert max(abs(float(a) - float(b)) for a, b in zip(drifted, expected)) > 2 * width
    assert max(abs(a - float(b)) for a, b in zip(ours, expected)) <= width * (1 + 1e-6)


# --- bounded memory ------------------------------------------------------------------------------


def test_histogram_state_does_not_grow_with_samples():
    """Same numbers held after 10 and 100 samples, even though the range keeps widening."""
    rng = np.random.default_rng(0)
    histogram = StreamingHistogram(2048)
    sizes = []
    for index in range(100):
        histogram.update((rng.standard_normal(1000) * (1 + index)).astype(np.float32))
        if index + 1 in (10, 100):
            sizes.append(histogram.state_size())
    assert sizes[0] == sizes[1] == 2048 + 8
    assert histogram.counts.sum() == histogram.total == 100_000  # re-binning never loses a count


def test_running_range_state_does_not_grow_with_samples():
    running = RunningRange(moving_average=True, stride=7)
    sizes = []
    for index in range(100):
        running.update(-float(index), float(index))
        if index + 1 in (10, 100):
            sizes.append(running.state_size())
    assert sizes[0] == sizes[1]


def test_feeds_are_consumed_one_at_a_time(model):
    """Each sample is asked for only after the previous one has run: a generator is never materialised."""
    runs: list[float] = []
    feeds = sample_feeds(6)

    def generator():
        for index, feed in enumerate(feeds):
            assert len(runs) == index, "a sample was asked for before the previous one ran"
            yield feed

    def progress(what: str, fraction: float) -> None:
        if what.startswith("calibrating: sample"):
            runs.append(fraction)

    result = calibrate(model, generator(), CalibrationOptions("entropy"), progress=progress)
    assert result.samples == 6 and len(runs) == 6
    assert runs == [0.0] * 6  # no length known and none given: no fraction made up


def test_progress_reports_each_sample(model):
    calls: list[tuple[str, float]] = []
    calibrate(model, FeedSet(sample_feeds(4), origin="test", generated=True), progress=lambda what, fraction: calls.append((what, fraction)))
    fractions = [fraction for what, fraction in calls if what.startswith("calibrating: sample")]
    assert fractions == [0.25, 0.5, 0.75, 1.0]
    assert calls[-1][0].startswith("computing")
    assert "sample 4/4" in calls[-2][0]


def test_total_gives_fractions_for_a_generator(model):
    calls: list[float] = []
    calibrate(model, iter(sample_feeds(2)), total=4, progress=lambda what, fraction: calls.append(fraction))
    assert 0.25 in calls and 0.5 in calls


def test_writes_no_files(model, tmp_path, monkeypatch):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.chdir(tmp_path)
    calibrate(model, sample_feeds(2), CalibrationOptions("entropy"))
    assert sorted(path.name for path in tmp_path.rglob("*")) == ["tmp"]


# --- handing the ranges to ORT -----------------------------------------------------------------


def test_tensors_data_carries_histograms(model):
    result = calibrate(model, sample_feeds(3), CalibrationOptions("percentile"))
    data = result.to_tensors_data()
    assert isinstance(data, TensorsData) and data.calibration_method == CalibrationMethod.Percentile
    item = data["c1"]
    assert item.range_value == (np.float32(result.ranges["c1"][0]), np.float32(result.ranges["c1"][1]))
    assert item.hist.sum() == 3 * 8 * 16 * 16 and item.bins.size == 2049
    assert result.to_tensors_data() is not data  # ORT's quantizers edit it: a fresh one each call


# --- edges ---------------------------------------------------------------------------------------


def test_subgraphs_and_empty_tensors_are_noted():
    """An If's branches are not calibrated (nor by ORT); an empty Resize roi gets (0, 0)."""
    then_branch = helper.make_graph([helper.make_node("Relu", ["x"], ["t"])], "then", [], [tensor("t", [1, 2, 4, 4])])
    else_branch = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [], [tensor("e", [1, 2, 4, 4])])
    nodes = [
        helper.make_node("If", ["flag"], ["branch"], then_branch=then_branch, else_branch=else_branch),
        helper.make_node("Constant", [], ["roi"], value=numpy_helper.from_array(np.zeros(0, np.float32))),
        helper.make_node("Constant", [], ["scales"], value=numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32))),
        helper.make_node("Resize", ["branch", "roi", "scales"], ["y"], mode="nearest"),
    ]
    proto = make_model(nodes, [tensor("x", [1, 2, 4, 4]), tensor("flag", [], TensorProto.BOOL)], [tensor("y", None)])
    feeds = [{"x": np.full((1, 2, 4, 4), value, np.float32), "flag": np.array(value > 0)} for value in (-1.0, 2.0)]
    result = calibrate(from_proto(proto), feeds, CalibrationOptions("minmax"))
    assert result.ranges["branch"] == (1.0, 2.0) and result.ranges["roi"] == (0.0, 0.0)
    assert "t" not in result.ranges and "e" not in result.ranges
    assert any("subgraphs" in note for note in result.notes) and any("empty" in note for note in result.notes)


def test_all_zero_tensor_histogram():
    histogram = StreamingHistogram(64)
    histogram.update(np.zeros(10, np.float32))
    final = histogram.final(8)
    assert final.counts.sum() == 10 and final.edges[0] == -0.5  # numpy's (and ORT's) widened empty range
    histogram.update(np.array([1.0, -2.0], np.float32))  # zeros seen before any range now get a bin
    assert histogram.final(8).counts.sum() == 12


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "kl"}, "not one of"),
        ({"method": "distribution", "num_bins": 128}, "512"),
        ({"method": "entropy", "num_bins": 64, "num_quantized_bins": 128}, "num_quantized_bins"),
        ({"method": "entropy", "stride": 4}, "stride"),
        ({"percentile": 101}, "percentile"),
    ],
)
def test_bad_options(kwargs, message):
    with pytest.raises(UserError, match=message):
        CalibrationOptions(**kwargs)


def test_no_samples(model):
    with pytest.raises(UserError, match="at least one sample"):
        calibrate(model, iter([]))


def test_mse_ranges_clip_heavy_tails_and_keep_a_range_the_data_fills():
    from ortforge.transforms.calibrate import StreamingHistogram
    from ortforge.transforms.calibrate.ranges import mse_range

    rng = np.random.default_rng(0)
    tails = rng.standard_t(2, 200_000).astype(np.float32)  # heavy tails: a few values far beyond the bulk
    outliers = StreamingHistogram(8192)
    outliers.update(tails)
    low, high = mse_range(outliers.final(2048))
    assert 0.3 * tails.min() > low > 0.9 * tails.min() and 0.3 * tails.max() < high < 0.9 * tails.max()  # clipped, not collapsed
    filled = StreamingHistogram(8192)
    filled.update(rng.uniform(0, 1, 100_000).astype(np.float32))
    low, high = mse_range(filled.final(2048))
    assert low == 0.0 and high > 0.97  # uniform data: clipping any of it costs more than it saves


def test_mse_calibration_feeds_ort_plain_ranges(model):
    options = CalibrationOptions(method="mse")
    result = calibrate(model, sample_feeds(), options)
    data = result.to_tensors_data()
    assert result.ranges and all(low <= 0 <= high for low, high in result.ranges.values())
    minmax = calibrate(model, sample_feeds(), CalibrationOptions("minmax")).ranges
    assert all(minmax[name][0] <= low and high <= minmax[name][1] for name, (low, high) in result.ranges.items())  # within the data
    assert {name: tuple(float(np.asarray(v).reshape(-1)[0]) for v in item.range_value) for name, item in data.items()} == result.ranges
