"""The roofline: achieved GFLOP/s from MACs and latency, against this machine's ORT GEMM peaks measured once and cached."""

from __future__ import annotations

import json

import pytest

from ortforge.measure import roofline as module
from ortforge.measure.roofline import Peaks, machine_peaks, roofline


def test_achieved_rate_and_shares_follow_from_macs_and_latency():
    peaks = Peaks(fp32_gflops=100.0, int8_gops=400.0)
    line = roofline(macs=500_000_000, latency_ms=10.0, peaks=peaks)  # 1 GFLOP in 10 ms: 100 GFLOP/s
    assert line is not None and line.achieved_gflops == pytest.approx(100.0)
    assert line.fp32_share == pytest.approx(1.0) and line.int8_share == pytest.approx(0.25)
    assert "100% of this machine's fp32 GEMM peak" in line.describe() and "25% of its int8 peak" in line.describe()
    assert roofline(0, 10.0, peaks) is None and roofline(10, 0.0, peaks) is None  # nothing counted, nothing claimed


def test_peaks_are_measured_with_ort_once_then_read_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ORTFORGE_CACHE", str(tmp_path))
    monkeypatch.setattr(module, "_MEASURED", {})
    measured = machine_peaks()
    assert measured.fp32_gflops > 1 and measured.int8_gops > 1  # real MatMul and MatMulInteger runs
    cached = json.loads(next((tmp_path / "runtime").glob("gemm-peaks-*.json")).read_text())
    assert cached["fp32_gflops"] == measured.fp32_gflops
    monkeypatch.setattr(module, "_rate", lambda integer: pytest.fail("measured again"))
    assert machine_peaks() == measured
