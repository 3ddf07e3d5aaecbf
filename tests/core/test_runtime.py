"""What ortforge learns from the installed ORT by asking it."""

from __future__ import annotations

import onnx
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


def test_where_the_build_cannot_list_its_kernels_ort_loading_the_model_answers_the_checker(monkeypatch):
    from onnx import TensorProto, helper

    from ortforge.core.model import checker_problem

    def norm_model(op_type: str) -> onnx.ModelProto:  # SimplifiedLayerNormalization: ORT's, in the default domain
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])
        scale = helper.make_tensor("scale", TensorProto.FLOAT, [8], [1.0] * 8)
        node = helper.make_node(op_type, ["x", "scale"], ["y"], axis=-1, epsilon=1e-5)
        graph = helper.make_graph([node], "g", [x], [y], [scale])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 22)], ir_version=10)

    assert checker_problem(norm_model("SimplifiedLayerNormalization")) is None  # the registry says ORT has it
    monkeypatch.setattr(runtime, "kernel_providers", lambda *args: None)  # as in a build whose registry cannot be listed
    assert checker_problem(norm_model("SimplifiedLayerNormalization")) is None
    assert "NoSuchNorm" in checker_problem(norm_model("NoSuchNorm"))
