"""SmoothQuant on the graph: MatMul inputs' outlier channels moved into the weights; the float model computes the same,
and dynamic int8 of the smoothed model is closer to float where one hidden channel dwarfs the others."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from helpers import make_model, tensor, weight
from ortforge.core.errors import OptionError
from ortforge.core.model import from_proto
from ortforge.core.session import run_outputs
from ortforge.data import FeedSet
from ortforge.transforms.quantize import QuantizeOptions, quantize
from ortforge.transforms.smooth import smooth, smooth_sites

HIDDEN = 32


def outlier_block():
    """x -> LayerNormalization (one gamma entry 60x the others: an outlier channel) -> two MatMuls, and a residual Add."""
    rng = np.random.default_rng(0)
    gamma = np.ones(HIDDEN, np.float32)
    gamma[3] = 60.0
    nodes = [
        helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["h"], axis=-1, name="norm"),
        helper.make_node("MatMul", ["h", "wq"], ["q"], name="query"),
        helper.make_node("MatMul", ["h", "wk"], ["k"], name="key"),
        helper.make_node("Add", ["q", "k"], ["qk"], name="sum"),
        helper.make_node("Add", ["qk", "h"], ["y"], name="residual"),  # h's other reader keeps the original
    ]
    weights = [weight("gamma", gamma), weight("beta", np.zeros(HIDDEN, np.float32)),
               weight("wq", (rng.standard_normal((HIDDEN, HIDDEN)) / 6).astype(np.float32)),
               weight("wk", (rng.standard_normal((HIDDEN, HIDDEN)) / 6).astype(np.float32))]  # fmt: skip
    return make_model(nodes, [tensor("x", [1, 16, HIDDEN])], [tensor("y", [1, 16, HIDDEN])], weights, opset=17)


def _feeds(count: int, seed: int) -> FeedSet:
    rng = np.random.default_rng(seed)
    return FeedSet([{"x": rng.standard_normal((1, 16, HIDDEN)).astype(np.float32)} for _ in range(count)], origin="test", generated=True)


@pytest.fixture(scope="module")
def block():
    return from_proto(outlier_block())


def test_the_matmuls_share_one_smoothing_and_the_float_model_computes_the_same(block):
    assert {tensor: [n.name for n in nodes] for tensor, nodes in smooth_sites(block.proto).items()} == {"h": ["query", "key"]}
    result = smooth(block, _feeds(8, 0), alpha=0.7)
    assert result.changed and result.details["smoothed"] == 1 and "alpha 0.7" in result.notes[0]
    smoothed = result.as_model(block)
    assert [n.op_type for n in smoothed.proto.graph.node].count("Mul") == 1  # one Mul before both MatMuls
    residual = next(n for n in smoothed.proto.graph.node if n.name == "residual")
    assert residual.input[1] == "h"  # the residual still reads the unsmoothed activation
    for before, after in zip(run_outputs(block, _feeds(4, 1)), run_outputs(smoothed, _feeds(4, 1))):
        np.testing.assert_allclose(after["y"], before["y"], rtol=1e-4, atol=1e-4)


def test_dynamic_int8_of_the_smoothed_model_is_closer_to_float(block):
    calibration, held_out = _feeds(8, 0), _feeds(8, 1)
    reference = run_outputs(block, held_out)

    def error(options: QuantizeOptions) -> float:
        model = quantize(block, options, calibration.samples if options.smooth else None).as_model(block)
        return float(np.mean([np.abs(o["y"] - r["y"]).mean() for o, r in zip(run_outputs(model, held_out), reference)]))

    plain = error(QuantizeOptions(mode="dynamic", op_types=("MatMul",)))
    smoothed = error(QuantizeOptions(mode="dynamic", op_types=("MatMul",), smooth=0.7))
    assert smoothed < 0.7 * plain, (plain, smoothed)


def test_smoothing_needs_calibration_samples_and_a_sane_alpha(block):
    with pytest.raises(OptionError, match="smooth"):
        quantize(block, QuantizeOptions(mode="dynamic", smooth=0.5))
    with pytest.raises(OptionError, match="must lie in"):
        QuantizeOptions(smooth=1.5)
