"""doctor: facts about ORT and this machine, and hints for missing EPs."""

from __future__ import annotations

import json
from pathlib import Path

from ortforge.commands.doctor import doctor, missing_providers
from ortforge.core.machine import cpu_features


def test_report_describes_this_ort_and_cpu():
    report = doctor()
    assert "CPUExecutionProvider" in report.available_providers
    assert report.max_ir_version >= 10
    assert report.machine.cpu.logical_cores and report.machine.cpu.logical_cores >= 1
    assert any(device.ep == "CPUExecutionProvider" for device in report.ep_devices)
    json.dumps(report.to_dict())
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists() and " avx2 " in cpuinfo.read_text():
        assert "avx2" in report.machine.cpu.features


def test_missing_eps_name_pip_package_and_build_flags():
    missing = {ep.name: ep for ep in missing_providers(["CPUExecutionProvider"])}
    assert missing["CUDAExecutionProvider"].pip == "onnxruntime-gpu"
    assert "--use_cuda --cuda_home" in missing["CUDAExecutionProvider"].build
    assert "--build_wheel --parallel --skip_tests --config Release" in missing["DnnlExecutionProvider"].build
    assert "--build_shared_lib" in missing["TensorrtExecutionProvider"].build
    assert missing["OpenVINOExecutionProvider"].pip == "onnxruntime-openvino"
    assert "CUDAExecutionProvider" not in {ep.name for ep in missing_providers(["CUDAExecutionProvider"])}


def test_only_eps_that_exist_for_this_system_are_listed_unless_all_are_asked_for(monkeypatch):
    import platform
    import sys

    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    here = {ep.name for ep in missing_providers(["CPUExecutionProvider"])}
    assert {"CUDAExecutionProvider", "OpenVINOExecutionProvider"} <= here
    assert not here & {"CoreMLExecutionProvider", "DmlExecutionProvider", "QNNExecutionProvider"}
    assert {"CoreMLExecutionProvider", "DmlExecutionProvider"} <= {ep.name for ep in missing_providers(["CPUExecutionProvider"], everywhere=True)}
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setattr(platform, "machine", lambda: "arm64")
    mac = {ep.name for ep in missing_providers(["CPUExecutionProvider"])}
    assert "CoreMLExecutionProvider" in mac and not mac & {"CUDAExecutionProvider", "OpenVINOExecutionProvider", "DmlExecutionProvider"}


def test_cpu_feature_names():
    assert cpu_features({"avx2", "avx512f", "avx512_vnni", "amx_int8"}, "x86_64") == ("avx2", "avx512f", "avx512_vnni", "amx_int8")
    assert cpu_features({"asimd", "asimddp", "i8mm"}, "aarch64") == ("neon", "dotprod", "i8mm")
