"""What ortforge learns from the installed ORT by asking it."""

from __future__ import annotations

import onnxruntime
import pytest

from ortforge.core import runtime


def test_limits_match_what_ort_loads():
    limits = runtime.limits()
    assert runtime._loads(limits.max_ir_version, {"ai.onnx": 13})
    assert not runtime._loads(limits.max_ir_version + 1, {"ai.onnx": 13})
    top = limits.max_opset["ai.onnx"]
    assert runtime._loads(limits.max_ir_version, {"ai.onnx": top})
    assert not runtime._loads(limits.max_ir_version, {"ai.onnx": top + 1})


@pytest.mark.skipif(runtime.kernel_rows() is None, reason="this onnxruntime cannot list its kernels")
def test_kernel_registry_knows_old_and_new_add():
    assert "CPUExecutionProvider" in runtime.kernel_providers("ai.onnx", "Add", 14)
    assert runtime.kernel_providers("ai.onnx", "Add", 6) == set()


def test_flavour_names_the_installed_distribution():
    assert "onnxruntime" in runtime.flavour()
    assert runtime.version() == onnxruntime.__version__


def test_limits_are_probed_once_per_ort_build_and_cached(tmp_path, monkeypatch):
    import json

    monkeypatch.setenv("ORTFORGE_CACHE", str(tmp_path))
    runtime.limits.cache_clear()
    try:
        probed = runtime.limits()
        (cached,) = (tmp_path / "runtime").glob("limits-*.json")
        assert json.loads(cached.read_text())["max_ir_version"] == probed.max_ir_version
        cached.write_text(json.dumps({"max_ir_version": 5, "max_opset": {"ai.onnx": 9}}))
        runtime.limits.cache_clear()
        assert runtime.limits().max_ir_version == 5  # read from the cache, not probed again
    finally:
        runtime.limits.cache_clear()
