"""Every input kind ORT takes, read from data and generated: sequences, optionals, float8 and int4 tensors."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from helpers import save
from ortforge.core.errors import UserError
from ortforge.core.model import load_model
from ortforge.core.session import SessionConfig, run_outputs
from ortforge.data import generate_feeds, input_specs, load_feeds


def model_of(nodes, inputs, outputs, opset=21, ir=10):
    model = helper.make_model(helper.make_graph(nodes, "kinds", inputs, outputs), opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir
    return model


def cast_model(element: int):
    """y = float(x) for an x of `element` type."""
    return model_of([helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT)], [helper.make_tensor_value_info("x", element, [2, 3])],
                    [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])  # fmt: skip


@pytest.mark.parametrize("element", [TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT8E5M2, TensorProto.INT4, TensorProto.UINT4, TensorProto.FLOAT4E2M1,
                                     TensorProto.BFLOAT16, TensorProto.INT2, TensorProto.UINT2])  # fmt: skip
def test_narrow_tensor_types_are_generated_and_run(tmp_path, element):
    model = load_model(save(cast_model(element), tmp_path / "m.onnx"))
    if element in (TensorProto.FLOAT4E2M1, TensorProto.INT2, TensorProto.UINT2):
        try:
            SessionConfig().build(model)
        except UserError as exc:  # ORT 1.31's Cast does not take float4 yet: the packing is then untested here
            pytest.skip(f"this onnxruntime cannot run this Cast: {exc}")
    feeds = generate_feeds(model, 2)
    x = feeds.samples[0]["x"]
    assert x.dtype == np.dtype(helper.tensor_dtype_to_np_dtype(element)) and x.shape == (2, 3)
    outputs = run_outputs(model, feeds)  # ORT's binding refuses these arrays as they are (Numpy_type 260 ...)
    for sample, output in zip(feeds.samples, outputs):
        np.testing.assert_array_equal(output["y"], sample["x"].astype(np.float32))  # 4-bit values packed right


def test_float8_data_stored_as_bytes_is_read_as_float8(tmp_path):
    model = load_model(save(cast_model(TensorProto.FLOAT8E4M3FN), tmp_path / "m.onnx"))
    values = np.array([[0.5, 1.0, -2.0], [3.0, 0.0, 4.0]], np.float32).astype(ml_dtypes.float8_e4m3fn)
    np.savez(tmp_path / "x.npz", x=values)  # numpy keeps them as raw bytes (void)
    feeds = load_feeds(model, str(tmp_path / "x.npz"))
    np.testing.assert_array_equal(run_outputs(model, feeds)[0]["y"], values.astype(np.float32))


def test_int4_data_out_of_range_is_refused_naming_the_input(tmp_path):
    model = load_model(save(cast_model(TensorProto.INT4), tmp_path / "m.onnx"))
    np.savez(tmp_path / "x.npz", x=np.full((2, 3), 9, np.int8))
    with pytest.raises(UserError, match="input 'x' expects dtype int4, got int8"):
        load_feeds(model, str(tmp_path / "x.npz"))


def test_float8_outputs_come_back_as_float8(tmp_path):
    model = model_of([helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT8E4M3FN)], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                     [helper.make_tensor_value_info("y", TensorProto.FLOAT8E4M3FN, [4])])  # fmt: skip
    loaded = load_model(save(model, tmp_path / "m.onnx"))
    out = run_outputs(loaded, generate_feeds(loaded))[0]["y"]
    assert out.dtype == ml_dtypes.float8_e4m3fn  # not ORT's raw uint8 bits


def sequence_model():
    """y = the sequence's items concatenated."""
    return model_of([helper.make_node("ConcatFromSequence", ["s"], ["y"], axis=0)], [helper.make_tensor_sequence_value_info("s", TensorProto.FLOAT, [2, 3])],
                    [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])], opset=17, ir=8)  # fmt: skip


def test_sequence_inputs_are_generated_read_from_pb_and_from_hooks(tmp_path):
    model = load_model(save(sequence_model(), tmp_path / "m.onnx"))
    specs = input_specs(model)
    assert specs[0].kind == "sequence" and specs[0].describe_shape() == "sequence of [2, 3]"
    generated = generate_feeds(model)
    assert isinstance(generated.samples[0]["s"], list) and len(generated.samples[0]["s"]) == 2
    assert run_outputs(model, generated)[0]["y"].shape == (4, 3)
    items = [np.full((2, 3), i, np.float32) for i in range(3)]
    folder = tmp_path / "test_data_set_0"
    folder.mkdir()
    (folder / "input_0.pb").write_bytes(numpy_helper.from_list(items, "s").SerializeToString())
    from_pb = load_feeds(model, str(tmp_path))
    np.testing.assert_array_equal(run_outputs(model, from_pb)[0]["y"], np.concatenate(items))
    (tmp_path / "hooks.py").write_text("import numpy as np\ndef feeds():\n    yield {'s': [np.ones((2, 3), np.float32)]}\n    yield {'s': np.ones((2, 3), np.float32)}\n")
    with pytest.raises(UserError, match="input 's' is a sequence: give a list of arrays, got ndarray"):
        load_feeds(model, f"{tmp_path / 'hooks.py'}:feeds")


def optional_model():
    """y = the optional's value if present, else zeros."""
    optional = helper.make_optional_type_proto(helper.make_tensor_type_proto(TensorProto.FLOAT, [3]))
    zeros = helper.make_tensor("zeros", TensorProto.FLOAT, [3], [0.0, 0.0, 0.0])
    present = helper.make_graph([helper.make_node("OptionalGetElement", ["o"], ["v"])], "present", [], [helper.make_tensor_value_info("v", TensorProto.FLOAT, [3])])
    absent = helper.make_graph([helper.make_node("Constant", [], ["z"], value=zeros)], "absent", [], [helper.make_tensor_value_info("z", TensorProto.FLOAT, [3])])
    nodes = [helper.make_node("OptionalHasElement", ["o"], ["has"]), helper.make_node("If", ["has"], ["y"], then_branch=present, else_branch=absent)]
    return model_of(nodes, [helper.make_value_info("o", optional)], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])], opset=18, ir=8)


def test_optional_inputs_may_be_present_or_absent(tmp_path):
    model = load_model(save(optional_model(), tmp_path / "m.onnx"))
    assert input_specs(model)[0].kind == "optional"
    generated = generate_feeds(model)
    np.testing.assert_array_equal(run_outputs(model, generated)[0]["y"], generated.samples[0]["o"])  # generated present
    (tmp_path / "hooks.py").write_text("import numpy as np\ndef feeds():\n    yield {'o': None}\n    yield {}\n    yield {'o': np.ones(3, np.float32)}\n")
    feeds = load_feeds(model, f"{tmp_path / 'hooks.py'}:feeds")
    assert [s["o"] is None for s in feeds.samples] == [True, True, False]
    assert [float(o["y"].sum()) for o in run_outputs(model, feeds)] == [0.0, 0.0, 3.0]
    folder = tmp_path / "set" / "test_data_set_0"
    folder.mkdir(parents=True)
    (folder / "input_0.pb").write_bytes(numpy_helper.from_optional(np.full(3, 2.0, np.float32), "o").SerializeToString())
    assert float(run_outputs(model, load_feeds(model, str(tmp_path / "set")))[0]["y"].sum()) == 6.0


def test_maps_are_refused_in_one_line_naming_the_input(tmp_path):
    value = helper.make_value_info("m", helper.make_map_type_proto(TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.FLOAT, [])))
    model = model_of([helper.make_node("Identity", ["x"], ["y"])], [value, helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                     [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], opset=17, ir=8)  # fmt: skip
    onnx.save(model, tmp_path / "m.onnx")
    loaded = load_model(tmp_path / "m.onnx", check=False)
    with pytest.raises(UserError, match="input 'm' is a map"):
        generate_feeds(loaded)


@pytest.mark.parametrize("build", [sequence_model, optional_model, lambda: cast_model(TensorProto.INT4)], ids=["sequence", "optional", "int4"])
def test_every_kind_goes_through_bench_and_run(tmp_path, build, capsys):
    from ortforge.cli import main
    from ortforge.core.session import SessionConfig
    from ortforge.measure.bench import BenchOptions, Variant, bench

    path = save(build(), tmp_path / "m.onnx")
    model = load_model(path)
    quick = BenchOptions(max_seconds=0.2, warmup_seconds=0.02, block_seconds=0.02, min_rounds=2, profile_seconds=0.05)
    report = bench([Variant("m", model, SessionConfig(), generate_feeds(model, 2))], quick)
    assert report.variants[0].latency.p50 > 0
    assert main(["run", str(path)]) == 0


def test_a_hook_value_numpy_cannot_hold_is_one_line(tmp_path):
    model = load_model(save(cast_model(TensorProto.FLOAT8E4M3FN), tmp_path / "m.onnx"))
    (tmp_path / "hooks.py").write_text("def feeds():\n    yield {'x': [[1.0, 2.0], [3.0]]}\n")
    with pytest.raises(UserError, match="input 'x' is not an array"):
        load_feeds(model, f"{tmp_path / 'hooks.py'}:feeds")


def test_calibration_feeds_float8_inputs_as_ort_takes_them(tmp_path):
    from ortforge.transforms.calibrate import calibrate

    model = load_model(save(cast_model(TensorProto.FLOAT8E4M3FN), tmp_path / "m.onnx"))
    ranges = calibrate(model, generate_feeds(model, 2).samples, tensors=["y"])  # before: "Numpy_type 260 can't be converted"
    assert "y" in ranges.to_tensors_data()


@pytest.mark.parametrize("dtype, width", [(ml_dtypes.int4, 4), (ml_dtypes.uint4, 4), (ml_dtypes.int2, 2), (ml_dtypes.uint2, 2)])
def test_narrow_integers_are_packed_as_onnx_packs_them(dtype, width):
    from ortforge.core.values import pack

    info = ml_dtypes.iinfo(dtype)
    values = np.arange(info.min, info.max + 1).repeat(3)[:7].astype(dtype)  # an odd count: the last byte is part-filled
    assert pack(values.view(np.uint8), width).tobytes() == numpy_helper.from_array(values).raw_data
