"""A second real EP: OpenVINO (the onnxruntime-openvino flavour). Runs where that flavour is installed:

    python3 -m venv ov && ov/bin/pip install onnxruntime-openvino && ov/bin/pip install -e ".[zoo,test]"
    ov/bin/python -m pytest tests/commands/test_openvino.py
"""

from __future__ import annotations

import numpy as np
import pytest

from helpers import conv_net, save
from ortforge import bench, tune
from ortforge.commands.doctor import doctor
from ortforge.core.model import load_model
from ortforge.core.runtime import available_providers
from ortforge.core.session import ProviderSpec, SessionConfig
from ortforge.measure.bench import BenchOptions
from ortforge.measure.placement import placement_for

OPENVINO = "OpenVINOExecutionProvider"
pytestmark = pytest.mark.skipif(OPENVINO not in available_providers(), reason="needs the onnxruntime-openvino flavour")
QUICK = BenchOptions(max_seconds=0.5, warmup_seconds=0.05, block_seconds=0.05, min_rounds=3, profile_seconds=0.1)


@pytest.fixture
def cnn(tmp_path):
    return save(conv_net(), tmp_path / "cnn.onnx")


def test_doctor_sees_openvino_and_its_flavour():
    report = doctor()
    assert OPENVINO in report.available_providers
    assert "onnxruntime-openvino" in report.flavour
    assert OPENVINO not in {ep.name for ep in report.missing}


def test_openvino_takes_the_nodes(cnn):
    placement = placement_for(load_model(cnn), OPENVINO)
    assert placement.error is None
    assert placement.counts.get(OPENVINO, 0) >= 1 and not placement.cpu_fallback


def test_bench_runs_both_eps_side_by_side(cnn, tmp_path):
    config = tmp_path / "openvino.json"
    config.write_text(SessionConfig(providers=[ProviderSpec(OPENVINO), ProviderSpec("CPUExecutionProvider")]).to_json())
    report = bench([str(cnn), str(config)], options=QUICK)
    cpu, openvino = report.variants
    assert cpu.providers[0] == "CPUExecutionProvider" and openvino.providers[0] == OPENVINO
    assert openvino.latency.p50 > 0 and openvino.placement.counts.get(OPENVINO, 0) >= 1


def test_tune_measures_openvino_instead_of_assuming(cnn, tmp_path, monkeypatch):
    monkeypatch.setenv("ORTFORGE_CACHE", str(tmp_path / "cache"))
    report = tune(str(cnn), tmp_path / "artifact", time_budget_s=30)
    openvino = [f for f in report.result.finalists if f.session.label == "OpenVINO"]
    screened_out = [why for label, why in report.result.rejected if label.endswith("| OpenVINO")]
    # Measured against the CPU EP, not assumed: a finalist with a score, or screened out with its ratio.
    assert (openvino and all(f.score is not None for f in openvino)) or (screened_out and "x its ORT defaults" in screened_out[0])
    chosen = report.result.chosen
    if chosen.session.label == "OpenVINO":
        assert chosen.score.ratio < 1.0
    x = np.zeros((1, 3, 16, 16), np.float32)
    from ortforge import load

    assert load(tmp_path / "artifact").run(None, {"x": x})[0].shape == (1, 10)
