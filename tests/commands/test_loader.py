"""The guarded loader (`ortforge run`, `ortforge.load`): stamps honoured, mismatches refused or re-optimized."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from helpers import linear_model, onnxruntime_version, save, small_cnn
from ortforge.commands.optimize import optimize
from ortforge.commands.run import load_checked, run
from ortforge.core import stamp as stamp_module
from ortforge.core.errors import UserError
from ortforge.core.machine import cpu_info
from ortforge.core.model import load_model
from ortforge.core.stamp import LAYOUT_FEATURES, STAMP_KEY, read_stamp


@pytest.fixture
def cnn_path(tmp_path):
    return save(small_cnn(), tmp_path / "cnn.onnx")


# A layout-relevant ISA feature this CPU lacks (the test machine may have any of them, AMX included).
MISSING_FEATURE = sorted(LAYOUT_FEATURES - set(cpu_info().features))[0]


def _restamp(path, out, **changes):
    proto = onnx.load(str(path))
    for entry in proto.metadata_props:
        if entry.key == STAMP_KEY:
            data = json.loads(entry.value)
            data.update(changes)
            entry.value = json.dumps(data)
    onnx.save(proto, str(out))
    return out


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"isa_features": ["avx2", MISSING_FEATURE]}, f"made for {MISSING_FEATURE}, this CPU has .* only"),
        ({"ort_version": "1.2.0"}, "made with onnxruntime 1.2.0"),
        ({"architecture": "riscv64"}, "made for a riscv64 CPU"),
        ({"providers": [{"name": "NoSuchExecutionProvider", "options": {}}]}, "made for NoSuchExecutionProvider"),
    ],
)
def test_mismatched_stamp_is_refused_then_reoptimized(cnn_path, tmp_path, changes, message):
    optimized = tmp_path / "opt.onnx"
    optimize(str(cnn_path), str(optimized))
    foreign = _restamp(optimized, tmp_path / "foreign.onnx", **changes)
    before = foreign.read_bytes()
    with pytest.raises(UserError, match=message):
        load_checked(foreign)
    loaded = load_checked(foreign, original=cnn_path, reoptimize=True)
    assert loaded.reoptimized and read_stamp(loaded.model.proto).ort_version == onnxruntime_version()
    x = np.ones((1, 3, 16, 16), np.float32)
    assert loaded.session.run(None, {"x": x})[0].shape == (1, 16, 16, 16)
    assert foreign.read_bytes() == before  # re-optimization happens in memory only


def test_reoptimize_needs_the_right_original(cnn_path, tmp_path):
    optimized = tmp_path / "opt.onnx"
    optimize(str(cnn_path), str(optimized))
    foreign = _restamp(optimized, tmp_path / "foreign.onnx", isa_features=[MISSING_FEATURE])
    other = small_cnn()
    other.graph.initializer[0].raw_data = bytes(len(other.graph.initializer[0].raw_data))
    other_path = save(other, tmp_path / "other.onnx")
    with pytest.raises(UserError, match="is not the model foreign.onnx was made from"):
        load_checked(foreign, original=other_path, reoptimize=True)


def test_extra_cpu_features_also_mismatch(cnn_path, tmp_path):
    from ortforge.core.machine import cpu_info

    if not set(cpu_info().features) & stamp_module.LAYOUT_FEATURES:
        pytest.skip("this CPU has none of the ISA features a layout depends on")
    optimized = tmp_path / "opt.onnx"
    optimize(str(cnn_path), str(optimized))
    fewer = _restamp(optimized, tmp_path / "fewer.onnx", isa_features=[])
    assert any("without" in problem for problem in stamp_module.mismatches(read_stamp(load_model(fewer).proto)))


def test_unstamped_models_load_with_defaults(cnn_path):
    loaded, feeds, outputs = run(str(cnn_path))
    assert loaded.stamp is None and outputs[0]["y"].shape == (1, 16, 16, 16)


def test_run_on_an_artifact_feeds_the_input_shapes_it_was_tuned_on(tmp_path):
    folder = tmp_path / "artifact"
    folder.mkdir()
    save(linear_model(batch="batch"), folder / "model.onnx")
    record = {"format": "ortforge-artifact/1", "model": "model.onnx", "session": {}, "inputs": {"shapes": {"x": [3, 8]}}}
    (folder / "ortforge.json").write_text(json.dumps(record))
    _, feeds, outputs = run(folder)
    assert feeds.samples[0]["x"].shape == (3, 8) and outputs[0]["y"].shape == (3, 8)
    _, plain, _ = run(folder / "model.onnx")  # a plain model: the default batch
    assert plain.samples[0]["x"].shape == (1, 8)
