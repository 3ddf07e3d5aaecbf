"""Activation equalization: channels of per-tensor-quantized activations brought to one range, the float model's outputs
unchanged, and int8 of the equalized model closer to float where channels were far apart."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from helpers import make_model, tensor, weight
from ortforge.core.model import from_proto
from ortforge.core.session import run_outputs
from ortforge.data import FeedSet
from ortforge.transforms.equalize import equalize, find_sites
from ortforge.transforms.quantize import QuantizeOptions, quantize

CHANNELS = 8


def separable_block():
    """Conv -> Mul/Add (a learnable affine, as PP-LCNet writes it) -> Relu -> Mul/Add -> depthwise Conv -> Mul -> pointwise Conv,
    with channels whose ranges span 1000x (scaled weights), as trained depthwise-separable CNNs have; the depthwise weights
    undo the spread, so every channel matters to the output."""
    rng = np.random.default_rng(0)
    spread = np.logspace(-3, 0, CHANNELS).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Mul", ["scale1", "c1"], ["m1"], name="affine1_mul"),  # the constant first, as Paddle exports it
        helper.make_node("Add", ["m1", "shift1"], ["a1"], name="affine1_add"),
        helper.make_node("Relu", ["a1"], ["r1"], name="relu1"),
        helper.make_node("Mul", ["scale2", "r1"], ["m2"], name="affine2_mul"),
        helper.make_node("Add", ["m2", "shift2"], ["a2"], name="affine2_add"),
        helper.make_node("Conv", ["a2", "dw", "bdw"], ["c2"], pads=[1, 1, 1, 1], group=CHANNELS, name="depthwise"),
        helper.make_node("Mul", ["scale3", "c2"], ["m3"], name="affine3_mul"),
        helper.make_node("Conv", ["m3", "pw"], ["y"], name="pointwise"),
    ]
    weights = [
        weight("w1", (rng.standard_normal((CHANNELS, 3, 3, 3)) * spread[:, None, None, None]).astype(np.float32)),
        weight("b1", (0.01 * rng.standard_normal(CHANNELS)).astype(np.float32)),
        weight("scale1", np.array(1.5, np.float32)), weight("shift1", np.array(0.01, np.float32)),
        weight("scale2", np.array(0.8, np.float32)), weight("shift2", np.array(0.002, np.float32)),
        weight("dw", (rng.standard_normal((CHANNELS, 1, 3, 3)) / spread[:, None, None, None] / 30).astype(np.float32)),
        weight("bdw", np.zeros(CHANNELS, np.float32)),
        weight("scale3", np.full((1, CHANNELS, 1, 1), 0.5, np.float32)),
        weight("pw", (rng.standard_normal((4, CHANNELS, 1, 1)) / 3).astype(np.float32)),
    ]
    return make_model(nodes, [tensor("x", [1, 3, 12, 12])], [tensor("y", [1, 4, 12, 12])], weights)


def _feeds(count: int, seed: int) -> FeedSet:
    rng = np.random.default_rng(seed)
    return FeedSet([{"x": rng.standard_normal((1, 3, 12, 12)).astype(np.float32)} for _ in range(count)], origin="test", generated=True)


@pytest.fixture(scope="module")
def block():
    return from_proto(separable_block())


def test_sites_are_the_free_rescalings_only(block):
    sites = {(s.tensor, s.kind) for s in find_sites(block.proto)}
    # conv1's output (read by a Mul), the depthwise input (written by Mul then Add), the depthwise output (read by a Mul);
    # the pointwise conv's input is not free to rescale (it mixes channels) and the Relu's input is behind a nonlinearity.
    assert sites == {("c1", "producer"), ("a2", "consumer"), ("c2", "producer")}


def test_the_float_model_computes_the_same_and_the_channels_share_one_range(block):
    result = equalize(block, _feeds(8, 0))
    assert result.changed and result.details["equalized"] == 3 and "equalized" in result.notes[0]
    equalized = result.as_model(block)
    held_out = _feeds(4, 1)
    for before, after in zip(run_outputs(block, held_out), run_outputs(equalized, held_out)):
        np.testing.assert_allclose(after["y"], before["y"], rtol=1e-4, atol=1e-5 * np.abs(before["y"]).max())
    used = {name for node in equalized.proto.graph.node for name in node.input}
    assert {t.name for t in equalized.proto.graph.initializer} <= used  # the constants it replaced are gone


def test_int8_of_the_equalized_model_is_closer_to_float(block):
    calibration, held_out = _feeds(16, 0), _feeds(8, 1)
    recipe = QuantizeOptions(mode="static", per_channel=True, op_types=("Conv",))
    reference = run_outputs(block, held_out)

    def error(options: QuantizeOptions) -> float:
        outputs = run_outputs(quantize(block, options, calibration.samples).as_model(block), held_out)
        return float(np.mean([np.abs(o["y"] - r["y"]).mean() / np.abs(r["y"]).mean() for o, r in zip(outputs, reference)]))

    plain, equalized = error(recipe), error(QuantizeOptions(**{**recipe.__dict__, "equalize": True}))
    assert equalized < 0.5 * plain, (plain, equalized)


def test_a_model_with_nothing_to_equalize_is_left_as_it_is():
    model = from_proto(make_model([helper.make_node("Relu", ["x"], ["y"])], [tensor("x", [1, 4])], [tensor("y", [1, 4])], []))
    result = equalize(model, FeedSet([{"x": np.ones((1, 4), np.float32)}], origin="test", generated=True))
    assert not result.changed and "no activation" in result.notes[0]
