"""Bias correction on a quantized CNN: the mean output shift weight rounding causes is measured and taken out of the
int32 biases, layer by layer, without the corrections compounding."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import numpy_helper

from helpers import conv_net
from ortforge.core.model import from_proto
from ortforge.core.session import run_outputs
from ortforge.data import FeedSet
from ortforge.transforms.bias_correction import bias_sites, correct_biases
from ortforge.transforms.quantize import QuantizeOptions, prepare, quantize

# Per-tensor 7-bit weights round coarsely: a visible mean shift to correct.
RECIPE = QuantizeOptions(mode="static", reduce_range=True)


def _feeds(model, count: int, seed: int) -> FeedSet:
    graph_input = model.proto.graph.input[0]
    shape = [d.dim_value or 1 for d in graph_input.type.tensor_type.shape.dim]
    rng = np.random.default_rng(seed)
    return FeedSet([{graph_input.name: rng.standard_normal(shape).astype(np.float32)} for _ in range(count)], origin="test", generated=True)


@pytest.fixture(scope="module")
def quantized():
    model = from_proto(conv_net())
    calibration = _feeds(model, 16, 0)
    return model, calibration, quantize(model, RECIPE, calibration.samples).as_model(model)


def test_the_mean_error_of_the_outputs_shrinks_on_held_out_samples(quantized):
    model, calibration, plain = quantized
    result = correct_biases(prepare(model, RECIPE, []), plain, calibration)
    assert result.changed and result.details["bias_corrected"] >= 2 and "corrected for weight rounding" in result.notes[-1]
    corrected = result.as_model(model)
    held_out = _feeds(model, 16, 1)
    reference, before, after = (run_outputs(m, held_out) for m in (model, plain, corrected))
    name = next(iter(reference[0]))

    def mean_error(outputs: list) -> float:
        return float(np.mean([np.abs(o[name] - r[name]).mean() for o, r in zip(outputs, reference)]))

    assert mean_error(after) < 0.8 * mean_error(before)


def test_only_biases_change_and_only_in_their_own_scale(quantized):
    model, calibration, plain = quantized
    result = correct_biases(prepare(model, RECIPE, []), plain, calibration)
    sites, missing = bias_sites(plain.proto, prepare(model, RECIPE, []).proto)
    changed = {t.name for t, u in zip(plain.proto.graph.initializer, result.proto.graph.initializer)
               if not np.array_equal(numpy_helper.to_array(t), numpy_helper.to_array(u))}  # fmt: skip
    assert changed and changed <= {site.bias for site in sites} and missing == 0
    assert all(numpy_helper.to_array(t).dtype == np.int32 for t in result.proto.graph.initializer if t.name in changed)
    assert [n.op_type for n in result.proto.graph.node] == [n.op_type for n in plain.proto.graph.node]


def test_a_float_model_has_nothing_to_correct(quantized):
    model, calibration, _ = quantized
    result = correct_biases(model, model, calibration)
    assert not result.changed and "nothing to correct" in result.notes[-1]
