"""TensorRT int8: the calibration table and session config are written and readable; run where TensorRT exists."""

from __future__ import annotations

import json

import pytest

from helpers import wide_range_feeds, wide_range_model
from ortforge.commands.quantize import write_tensorrt_int8
from ortforge.core.model import from_proto
from ortforge.core.runtime import available_providers
from ortforge.core.session import SessionConfig
from ortforge.transforms.tensorrt import CONFIG_FILE, MODEL_FILE, TABLE_FILE, read_table


def test_table_holds_symmetric_ranges_of_the_activations(tmp_path):
    data = wide_range_feeds(8)
    result = write_tensorrt_int8(from_proto(wide_range_model()), data, tmp_path / "trt")
    table = read_table(tmp_path / "trt" / TABLE_FILE)
    assert {"h", "a"} <= set(table)
    assert table["h"] > 1000 > 100 > table["a"]  # h's one wide channel sets its symmetric range; a stays narrow
    assert json.loads((tmp_path / "trt" / "calibration.json").read_text())
    config = SessionConfig.load(tmp_path / "trt" / CONFIG_FILE)
    options = config.providers[0].options
    assert config.providers[0].name == "TensorrtExecutionProvider"
    assert options["trt_int8_enable"] == "True" and options["trt_int8_calibration_table_name"] == TABLE_FILE
    assert (tmp_path / "trt" / MODEL_FILE).exists() and result.tensors == len(table)
    assert not (tmp_path / "trt" / ".ortforge-table").exists()


@pytest.mark.skipif("TensorrtExecutionProvider" not in available_providers(), reason="needs onnxruntime-gpu with the TensorRT EP and an NVIDIA GPU")
def test_tensorrt_runs_with_the_table(tmp_path):  # pragma: no cover - GPU machines only
    from ortforge.core.model import load_model

    write_tensorrt_int8(from_proto(wide_range_model()), wide_range_feeds(8), tmp_path / "trt")
    session = SessionConfig.load(tmp_path / "trt" / CONFIG_FILE).build(load_model(tmp_path / "trt" / MODEL_FILE))
    assert session.get_providers()[0] == "TensorrtExecutionProvider"
    assert session.run(None, wide_range_feeds(1).samples[0])[0].shape == (1, 4)
