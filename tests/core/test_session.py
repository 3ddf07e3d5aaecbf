"""SessionConfig: validation, JSON round trip, and real sessions built from it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import linear_model, save
from ortforge.core.errors import UserError
from ortforge.core.model import load_model
from ortforge.core.session import ProviderSpec, SessionConfig


def test_json_round_trip(tmp_path):
    config = SessionConfig(
        providers=[ProviderSpec("cpu", {"arena_extend_strategy": "kSameAsRequested"})],
        graph_optimization_level="extended",
        intra_op_num_threads=1,
        execution_mode="parallel",
        config_entries={"session.intra_op.allow_spinning": "0"},
    )
    path = tmp_path / "cfg.json"
    path.write_text(config.to_json())
    again = SessionConfig.load(path)
    assert again == config
    assert again.provider_names == ["CPUExecutionProvider"]


def test_options_reach_the_session(tmp_path):
    model = load_model(save(linear_model(), tmp_path / "m.onnx"))
    config = SessionConfig(intra_op_num_threads=1, graph_optimization_level="basic", config_entries={"session.intra_op.allow_spinning": "0"})
    session = config.build(model)
    options = session.get_session_options()
    assert options.intra_op_num_threads == 1
    assert str(options.graph_optimization_level).endswith("ORT_ENABLE_BASIC")
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert session.run(None, {"x": np.ones((1, 8), np.float32)})[0].shape == (1, 8)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"graph_optimization_level": "max"}, "graph_optimization_level 'max'"),
        ({"execution_mode": "fast"}, "execution_mode 'fast'"),
        ({"intra_op_num_threads": -1}, "non-negative"),
        ({"threads": 2}, "unknown key 'threads'"),
        ({"providers": []}, "at least one"),
    ],
)
def test_invalid_configs(data, message):
    with pytest.raises(UserError, match=message):
        SessionConfig.from_dict(data)


def test_bad_json_and_missing_file(tmp_path):
    with pytest.raises(UserError, match="not valid JSON"):
        SessionConfig.from_json("{nope")
    with pytest.raises(UserError, match="not found"):
        SessionConfig.load(tmp_path / "none.json")


def test_unavailable_provider_is_named(tmp_path):
    model = load_model(save(linear_model(), tmp_path / "m.onnx"))
    with pytest.raises(UserError, match="'NoSuchExecutionProvider' is not available"):
        SessionConfig(providers=[ProviderSpec("NoSuchExecutionProvider")]).build(model)


def test_config_is_json_serialisable():
    assert json.loads(SessionConfig().to_json())["providers"] == [{"name": "CPUExecutionProvider", "options": {}}]


def test_a_config_on_an_ep_falls_back_to_the_cpu():
    from ortforge.core.session import SessionConfig

    assert SessionConfig.on("CUDAExecutionProvider").provider_names == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert SessionConfig.on("CPUExecutionProvider").provider_names == ["CPUExecutionProvider"]
