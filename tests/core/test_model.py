"""Model loading, gating, normalisation and atomic saving."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import helper

from helpers import linear_model, make_model, save, tensor
from ortforge.core import model as model_module
from ortforge.core.errors import UserError
from ortforge.core.model import load_model, save_model
from ortforge.core.session import SessionConfig


def run(model, x):
    return SessionConfig().build(model).run(None, {"x": x})[0]


def test_loads_and_runs(tmp_path):
    model = load_model(save(linear_model(), tmp_path / "m.onnx"))
    assert model.changes == []
    assert model.ort_source()[0] == str(tmp_path / "m.onnx")
    assert run(model, np.ones((2, 8), np.float32)).shape == (2, 8)


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_model(tmp_path / "nope.onnx")


def test_text_file_named_onnx(tmp_path):
    path = tmp_path / "notes.onnx"
    path.write_text("this is a readme, not a model\n")
    with pytest.raises(UserError, match="not an ONNX model.*text file"):
        load_model(path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    with pytest.raises(UserError, match="empty"):
        load_model(path)


@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.9])
def test_truncated_model(tmp_path, fraction):
    data = linear_model(64).SerializeToString()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(UserError, match="truncated or corrupt|not an ONNX model|checker"):
        load_model(path)


def _external_model(tmp_path):
    path = tmp_path / "ext.onnx"
    onnx.save_model(linear_model(64), str(path), save_as_external_data=True, location="ext.data", size_threshold=0)
    return path


def test_external_data_loads_and_runs(tmp_path):
    model = load_model(_external_model(tmp_path))
    assert [p.name for p in model.external_data_files()] == ["ext.data"]
    assert run(model, np.ones((1, 64), np.float32)).shape == (1, 64)


def test_external_data_after_normalisation_runs_from_bytes(tmp_path):
    proto = linear_model(64)
    proto.graph.node[0].name = ""  # forces a normalised, in-memory copy
    path = tmp_path / "ext.onnx"
    onnx.save_model(proto, str(path), save_as_external_data=True, location="ext.data", size_threshold=0)
    model = load_model(path)
    assert model.changes
    source, entries = model.ort_source()
    assert isinstance(source, bytes) and entries
    assert run(model, np.ones((1, 64), np.float32)).shape == (1, 64)


def test_missing_external_data(tmp_path):
    path = _external_model(tmp_path)
    (tmp_path / "ext.data").unlink()
    with pytest.raises(UserError, match="external data file 'ext.data'.*missing"):
        load_model(path)


def test_truncated_external_data(tmp_path):
    path = _external_model(tmp_path)
    data = tmp_path / "ext.data"
    data.write_bytes(data.read_bytes()[:100])
    with pytest.raises(UserError, match="truncated"):
        load_model(path)


def test_ir_newer_than_ort(tmp_path):
    proto = linear_model()
    proto.ir_version = 14
    with pytest.raises(UserError, match="IR version 14 is newer than onnxruntime .* supports \\(at most 13\\)"):
        load_model(save(proto, tmp_path / "ir14.onnx"), check=False)


def test_opset_newer_than_ort(tmp_path):
    proto = linear_model()
    proto.opset_import[0].version = 27
    with pytest.raises(UserError, match="opset ai.onnx 27 is newer"):
        load_model(save(proto, tmp_path / "op27.onnx"), check=False)


@pytest.mark.skipif(__import__("ortforge.core.runtime").core.runtime.kernel_rows() is None, reason="this onnxruntime cannot list its kernels")
def test_old_op_without_kernel_names_the_node(tmp_path):
    proto = make_model(
        [helper.make_node("Add", ["x", "x"], ["y"], name="old_add")], [tensor("x", [2])], [tensor("y", [2])], opset=6, ir_version=3
    )
    with pytest.raises(UserError, match="'old_add' \\(Add-6\\).*no execution provider"):
        load_model(save(proto, tmp_path / "add6.onnx"))


def test_function_op_without_kernel_is_not_refused(tmp_path):
    # Ops with an ONNX function body are expanded by ORT, so a missing kernel is fine.
    proto = make_model([helper.make_node("Mish", ["x"], ["y"], name="mish")], [tensor("x", [4])], [tensor("y", [4])], opset=18)
    model = load_model(save(proto, tmp_path / "mish.onnx"))
    assert run(model, np.zeros(4, np.float32)).shape == (4,)


def test_names_unnamed_nodes_uniquely(tmp_path):
    proto = linear_model()
    for node in proto.graph.node:
        node.name = ""
    proto.graph.node[1].name = "MatMul_0"  # a clash the new names must avoid
    model = load_model(save(proto, tmp_path / "m.onnx"))
    names = [node.name for node in model.proto.graph.node]
    assert all(names) and len(set(names)) == len(names)
    assert any("unnamed" in change for change in model.changes)


def test_names_nodes_inside_subgraphs(tmp_path):
    branch = helper.make_graph([helper.make_node("Relu", ["x"], ["r"])], "b", [], [tensor("r", [2])])
    other = helper.make_graph([helper.make_node("Neg", ["x"], ["n"])], "c", [], [tensor("n", [2])])
    proto = make_model(
        [helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=other, name="if")],
        [tensor("cond", [], onnx.TensorProto.BOOL), tensor("x", [2])],
        [tensor("y", [2])],
    )
    model = load_model(save(proto, tmp_path / "if.onnx"))
    assert all(node.name for node in model_module.iter_nodes(model.proto))


def test_ir3_initializer_inputs_are_dropped(tmp_path):
    proto = linear_model()
    proto.ir_version = 3
    proto.opset_import[0].version = 8
    proto.graph.input.extend([helper.make_tensor_value_info("W", 1, [8, 8]), helper.make_tensor_value_info("b", 1, [8])])
    model = load_model(save(proto, tmp_path / "ir3.onnx"))
    assert [value.name for value in model.proto.graph.input] == ["x"]
    assert model.proto.ir_version == 4
    assert run(model, np.ones((1, 8), np.float32)).shape == (1, 8)


def test_checker_failure_is_one_line(tmp_path):
    proto = linear_model()
    proto.graph.node[0].input[1] = "nowhere"
    with pytest.raises(UserError, match="onnx.checker rejects"):
        load_model(save(proto, tmp_path / "bad.onnx"))


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path):
    out = save_model(linear_model(), tmp_path / "out" / "m.onnx")
    assert load_model(out).proto.graph.node
    assert sorted(os.listdir(tmp_path / "out")) == ["m.onnx"]


def test_save_refuses_to_overwrite_input(tmp_path):
    path = save(linear_model(), tmp_path / "m.onnx")
    before = path.read_bytes()
    model = load_model(path)
    with pytest.raises(UserError, match="overwrite the input"):
        save_model(model.proto, path, source=model)
    assert path.read_bytes() == before


def test_failed_save_leaves_nothing_behind(tmp_path, monkeypatch):
    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(onnx, "save_model", explode)
    with pytest.raises(OSError):
        save_model(linear_model(), tmp_path / "m.onnx")
    assert os.listdir(tmp_path) == []


def test_large_models_are_saved_with_external_data(tmp_path, monkeypatch):
    # The real threshold is ~1.8 GB; lowering it exercises the same path on a tiny model.
    monkeypatch.setattr(model_module, "EXTERNAL_DATA_THRESHOLD", 1000)
    proto = linear_model(64)
    out = save_model(proto, tmp_path / "big.onnx")
    assert (tmp_path / "big.onnx.data").stat().st_size >= 64 * 64 * 4
    reloaded = load_model(out)
    assert reloaded.external_data_files() == [tmp_path / "big.onnx.data"]
    assert run(reloaded, np.ones((1, 64), np.float32)).shape == (1, 64)


def test_save_copies_external_data_of_source(tmp_path):
    source = load_model(_external_model(tmp_path))
    out = save_model(source.proto, tmp_path / "copy" / "m.onnx", source=source)
    copy = load_model(out)
    x = np.ones((1, 64), np.float32)
    np.testing.assert_array_equal(run(copy, x), run(source, x))


def test_content_hash_follows_weights(tmp_path):
    a = load_model(save(linear_model(seed=0), tmp_path / "a.onnx"))
    b = load_model(save(linear_model(seed=1), tmp_path / "b.onnx"))
    assert a.content_hash() != b.content_hash()
    assert a.content_hash() == load_model(tmp_path / "a.onnx").content_hash()



def test_constant_nodes_need_no_kernel(tmp_path):
    # ORT registers no Constant kernel: it turns Constant nodes into initializers at load time.
    value = helper.make_tensor("c", onnx.TensorProto.FLOAT, [2], [1.0, 2.0])
    proto = make_model(
        [helper.make_node("Constant", [], ["c"], value=value, name="const"), helper.make_node("Add", ["x", "c"], ["y"], name="add")],
        [tensor("x", [2])],
        [tensor("y", [2])],
        opset=13,
    )
    model = load_model(save(proto, tmp_path / "const.onnx"))
    assert run(model, np.zeros(2, np.float32)).tolist() == [1.0, 2.0]
