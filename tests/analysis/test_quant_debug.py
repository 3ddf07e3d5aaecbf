"""quant-debug names the layer a bad quantization breaks; automatic exclusion then repairs it."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import save, wide_range_feeds, wide_range_model
from ortforge.accuracy.tolerance import Tolerance
from ortforge.analysis.quant_errors import debug_quantization
from ortforge.commands.quant_debug import plot_svg, quant_debug
from ortforge.commands.quantize import quantize_model
from ortforge.core.model import from_proto, load_model
from ortforge.measure.bench import BenchOptions
from ortforge.transforms.quantize import QuantizeOptions, quantize


@pytest.fixture
def wide(tmp_path):
    return load_model(save(wide_range_model(), tmp_path / "wide.onnx"))


def test_names_the_consumer_of_the_wide_range_tensor_first(wide, tmp_path):
    data = wide_range_feeds()
    quantized = from_proto(quantize(wide, QuantizeOptions(mode="static", op_types=("MatMul",)), data.samples).proto)
    np.savez(tmp_path / "x.npz", **data.samples[0])
    # Pre-processing fused narrow + bias into one Gemm; quant-debug compares against that graph then.
    save(quantized.proto, tmp_path / "q.onnx")
    via_api = quant_debug(str(tmp_path / "wide.onnx"), str(tmp_path / "q.onnx"), data=str(tmp_path / "x.npz"))
    assert via_api.activations[0].node == "narrow/MatMulAddFusion"
    report = debug_quantization(wide, quantized, data)
    assert report.activations[0].node in ("narrow", "bias")
    assert report.activations[0].drop_db > 10
    assert report.end_to_end.metric("cosine") < 0.99
    wide_input = next(e for e in report.activations if e.tensor == "h")
    assert wide_input.float_absmax > 1000
    assert {"w1", "w2"} <= {e.tensor for e in report.weights}
    assert "<svg" in plot_svg(via_api) and "narrow" in plot_svg(via_api)


def test_qoperator_models_are_matched_too(wide):
    data = wide_range_feeds()
    quantized = from_proto(quantize(wide, QuantizeOptions(mode="static", format="qoperator", op_types=("MatMul",)), data.samples).proto)
    report = debug_quantization(wide, quantized, data)
    assert report.activations[0].node in ("narrow", "bias")


def test_identical_models_are_exact(wide):
    report = debug_quantization(wide, wide, wide_range_feeds(4))
    assert all(e.sqnr_db == float("inf") for e in report.activations)
    assert report.end_to_end.metric("max_abs") == 0


def test_automatic_exclusion_meets_a_tolerance_plain_quantization_misses(wide, tmp_path):
    calibration, evaluation = wide_range_feeds(16, 0), wide_range_feeds(16, 1)
    recipe = QuantizeOptions(mode="static", op_types=("MatMul",))
    tolerance = [Tolerance("cosine", 0.99)]
    quick = BenchOptions(max_seconds=0.3, warmup_seconds=0.05, block_seconds=0.05, min_rounds=2)
    report = quantize_model(wide, tmp_path / "q.onnx", [recipe], calibration, evaluation, tolerances=tolerance, measure=quick)
    plain, repaired = report.trials[1], report.trials[2]
    assert not plain.passed and repaired.passed and report.chosen is repaired
    assert report.exclusion.met and 1 <= len(report.exclusion.excluded) <= 2
    assert report.exclusion.excluded[0].node == "narrow/MatMulAddFusion"
    # The set and the speed it leaves: its share of the MACs the recipe quantized, and no node of it can go back to int8.
    assert report.exclusion.minimal and 0 < report.exclusion.float_macs_share < 1
    assert f"{report.exclusion.float_macs_share:.0%} of the MACs the recipe quantized" in " ".join(report.exclusion.notes)
    assert (tmp_path / "q.onnx").exists()


def test_fetching_activations_in_passes_gives_the_same_report(wide, monkeypatch):
    import importlib

    quant_debug = importlib.import_module("ortforge.analysis.quant_errors")

    data = wide_range_feeds(4)
    quantized = from_proto(quantize(wide, QuantizeOptions(mode="static", op_types=("MatMul",)), data.samples).proto)
    whole = debug_quantization(wide, quantized, data)
    monkeypatch.setattr(quant_debug, "PASS_BYTES", 1)  # one activation per pass
    assert len(quant_debug._passes(wide, [e.tensor for e in whole.activations], data)) == len(whole.activations) > 1
    split = debug_quantization(wide, quantized, data)
    assert [(e.tensor, e.sqnr_db) for e in split.activations] == [(e.tensor, e.sqnr_db) for e in whole.activations]
    assert split.end_to_end.metric("cosine") == whole.end_to_end.metric("cosine")
