"""The tensor tap: intermediate tensors read back without changing the model, sized, and cut into passes."""

from __future__ import annotations

import numpy as np
from onnx import helper

from helpers import linear_model
from ortforge.analysis.tap import element_counts, passes, tap_session
from ortforge.core.model import from_proto

FEED = {"x": np.arange(8, dtype=np.float32).reshape(1, 8) - 4}


def test_a_tap_returns_intermediate_tensors_and_probe_outputs_and_leaves_the_proto_alone():
    model = from_proto(linear_model(8, batch=1))
    before = model.proto.SerializeToString()
    probe = helper.make_node("ReduceMax", ["z"], ["z_max"], name="z_max", keepdims=0)
    session = tap_session(model, ["h", "z_max"], probes=[probe])
    y, h, z_max = session.run(["y", "h", "z_max"], FEED)
    assert h.shape == (1, 8) and np.isclose(z_max, (h + 0).max())  # b is zero: z == h
    np.testing.assert_allclose(y, np.maximum(h, 0))
    assert model.proto.SerializeToString() == before


def test_sizes_and_bounded_passes():
    model = from_proto(linear_model(8, batch=1))
    assert element_counts(model, ["h", "z"], FEED) == {"h": 8, "z": 8}
    assert passes(["a", "b", "c"], {"a": 40, "b": 40, "c": 40}, budget=80) == [["a", "b"], ["c"]]
    assert passes(["big", "small"], {"big": 500, "small": 1}, budget=100) == [["big"], ["small"]]  # too big: alone
    assert passes([], {}, budget=10) == []
