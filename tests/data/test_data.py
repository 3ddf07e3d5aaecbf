"""Input specs, shape resolution, user feed sources and generated feeds."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from helpers import linear_model, make_model, save, tensor, weight
from ortforge.core.errors import UserError
from ortforge.core.model import load_model
from ortforge.core.session import SessionConfig
from ortforge.data import (
    ShapeOptions,
    generate_feeds,
    input_specs,
    load_feeds,
    parse_dim_option,
    parse_shape_option,
    resolve_shapes,
)


@pytest.fixture
def linear(tmp_path):
    return load_model(save(linear_model(), tmp_path / "m.onnx"))


def bert_like(vocab: int = 30) -> onnx.ModelProto:
    """Token ids -> embedding Gather; mask and segment ids are added in so every input is used."""
    nodes = [
        helper.make_node("Gather", ["emb", "input_ids"], ["e"], name="embed"),
        helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT, name="cast_mask"),
        helper.make_node("Unsqueeze", ["m", "axes"], ["m3"], name="unsq"),
        helper.make_node("Mul", ["e", "m3"], ["y"], name="mask"),
    ]
    return make_model(
        nodes,
        [tensor("input_ids", ["batch", "sequence"], TensorProto.INT64), tensor("attention_mask", ["batch", "sequence"], TensorProto.INT64)],
        [tensor("y", ["batch", "sequence", 4])],
        [weight("emb", np.zeros((vocab, 4), np.float32)), weight("axes", np.array([2], np.int64))],
    )


def test_specs_keep_symbolic_dims(linear):
    (spec,) = input_specs(linear)
    assert (spec.name, spec.dtype, spec.shape) == ("x", "float32", ("batch", 8))


def test_defaults_are_visible_and_named_dims_shared(tmp_path):
    model = load_model(save(bert_like(), tmp_path / "b.onnx"))
    resolved = resolve_shapes(input_specs(model))
    assert resolved.shapes == {"input_ids": (1, 128), "attention_mask": (1, 128)}
    assert any("'batch'" in line and "batch default" in line for line in resolved.defaults)
    assert any("'sequence'" in line and "= 128" in line for line in resolved.defaults)
    assert len(resolved.defaults) == 2  # each named dim is chosen once


def test_shape_and_dim_overrides(tmp_path):
    model = load_model(save(bert_like(), tmp_path / "b.onnx"))
    options = ShapeOptions(shapes={"input_ids": (2, 16)}, dims={"sequence": 16, "batch": 2})
    assert resolve_shapes(input_specs(model), options).shapes == {"input_ids": (2, 16), "attention_mask": (2, 16)}


def test_image_sides_default(tmp_path):
    proto = make_model([helper.make_node("Relu", ["x"], ["y"])], [tensor("x", ["N", 3, "H", "W"])], [tensor("y", ["N", 3, "H", "W"])])
    model = load_model(save(proto, tmp_path / "i.onnx"))
    assert resolve_shapes(input_specs(model)).shapes["x"] == (1, 3, 224, 224)


@pytest.mark.parametrize(
    "options, message",
    [
        (ShapeOptions(shapes={"nope": (1, 8)}), "not an input"),
        (ShapeOptions(shapes={"x": (1, 9)}), "axis 1 is fixed to 8"),
        (ShapeOptions(shapes={"x": (1, 8, 1)}), "rank 3"),
    ],
)
def test_bad_overrides(linear, options, message):
    with pytest.raises(UserError, match=message):
        resolve_shapes(input_specs(linear), options)


def test_option_parsing():
    assert parse_shape_option("x=1x3x224x224") == ("x", (1, 3, 224, 224))
    assert parse_shape_option("a=b=2x3") == ("a=b", (2, 3))
    assert parse_dim_option("batch=8") == ("batch", 8)
    for bad in ("x", "x=1xa"):
        with pytest.raises(UserError, match=f"^shapes={bad}: "):
            parse_shape_option(bad)
    with pytest.raises(UserError, match="^dims=batch=eight: "):
        parse_dim_option("batch=eight")


def test_generated_token_ids_respect_vocabulary_and_masks_are_ones(tmp_path):
    model = load_model(save(bert_like(vocab=30), tmp_path / "b.onnx"))
    feeds = generate_feeds(model, count=3, seed=1)
    assert feeds.generated and len(feeds) == 3
    for sample in feeds.samples:
        assert sample["input_ids"].dtype == np.int64 and sample["input_ids"].max() < 30
        assert (sample["attention_mask"] == 1).all()
    assert any("vocabulary" in note for note in feeds.notes)
    SessionConfig().build(model).run(None, feeds.samples[0])


def test_generation_is_seeded(linear):
    first = generate_feeds(linear, seed=3).samples[0]["x"]
    np.testing.assert_array_equal(first, generate_feeds(linear, seed=3).samples[0]["x"])
    assert not np.array_equal(first, generate_feeds(linear, seed=4).samples[0]["x"])


def test_npz_feed(linear, tmp_path):
    np.savez(tmp_path / "in.npz", x=np.ones((3, 8), np.float32))
    feeds = load_feeds(linear, str(tmp_path / "in.npz"))
    assert not feeds.generated and feeds.samples[0]["x"].shape == (3, 8)


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"x": np.ones((3, 9), np.float32)}, "input 'x' expects shape \\[batch, 8\\], got \\[3, 9\\]"),
        ({"x": np.ones((3, 8), np.float64)}, "input 'x' expects dtype float32, got float64"),
        ({"x": np.ones(8, np.float32)}, "rank 2"),
        ({"y": np.ones((3, 8), np.float32)}, "'y' is not an input"),
        ({}, "input 'x' is missing"),
    ],
)
def test_bad_npz_names_the_input(linear, tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(UserError, match=message):
        load_feeds(linear, str(tmp_path / "bad.npz"))


def test_folder_of_npz_and_npy(linear, tmp_path):
    for index in range(3):
        np.savez(tmp_path / f"s{index}.npz", x=np.full((1, 8), index, np.float32))
    assert len(load_feeds(linear, str(tmp_path))) == 3
    assert len(load_feeds(linear, str(tmp_path), count=2)) == 2
    npy = tmp_path / "npy"
    npy.mkdir()
    for index in range(2):
        np.save(npy / f"sample{index}.npy", np.zeros((1, 8), np.float32))
    assert len(load_feeds(linear, str(npy))) == 2


def test_onnx_test_data_sets(linear, tmp_path):
    for index in range(2):
        folder = tmp_path / f"test_data_set_{index}"
        folder.mkdir()
        tensor_proto = numpy_helper.from_array(np.full((1, 8), index, np.float32))  # unnamed: matched by position
        (folder / "input_0.pb").write_bytes(tensor_proto.SerializeToString())
    feeds = load_feeds(linear, str(tmp_path))
    assert [float(s["x"][0, 0]) for s in feeds.samples] == [0.0, 1.0]


def test_python_hook(linear, tmp_path, monkeypatch):
    (tmp_path / "myfeeds.py").write_text(
        "import numpy as np\n"
        "def samples():\n"
        "    for i in range(4):\n"
        "        yield {'x': np.full((1, 8), i, np.float32)}\n"
        "def broken():\n"
        "    raise RuntimeError('no camera')\n"
        "def flaky():\n"
        "    yield {'x': np.zeros((1, 8), np.float32)}\n"
        "    raise OSError('disk gone')\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert len(load_feeds(linear, "myfeeds:samples")) == 4
    assert len(load_feeds(linear, "myfeeds.py:samples", count=2)) == 2
    with pytest.raises(UserError, match="hook raised RuntimeError: no camera"):
        load_feeds(linear, "myfeeds:broken")
    with pytest.raises(UserError, match="has no function 'missing'"):
        load_feeds(linear, "myfeeds:missing")
    with pytest.raises(UserError, match="cannot be imported"):
        load_feeds(linear, "no_such_module_xyz:samples")
    with pytest.raises(UserError, match="^calib=myfeeds:flaky: the hook raised OSError at sample 1: disk gone$"):
        load_feeds(linear, "myfeeds:flaky", option="calib")  # part-way through: one line, the sample named


def test_missing_data_path(linear, tmp_path):
    with pytest.raises(UserError, match="no such file"):
        load_feeds(linear, str(tmp_path / "absent.npz"))


def test_string_inputs_cannot_be_generated(tmp_path):
    proto = make_model([helper.make_node("Identity", ["s"], ["t"])], [tensor("s", [1], TensorProto.STRING)], [tensor("t", [1], TensorProto.STRING)])
    model = load_model(save(proto, tmp_path / "s.onnx"))
    with pytest.raises(UserError, match="takes strings"):
        generate_feeds(model)


def test_user_data_is_split_between_calibration_and_evaluation(linear, tmp_path):
    from ortforge.commands.common import calibration_and_evaluation

    for index in range(10):
        np.savez(tmp_path / f"s{index:02d}.npz", x=np.full((1, 8), index, np.float32))
    calibration, evaluation = calibration_and_evaluation(linear, "m.onnx", str(tmp_path), calib_samples=16, samples=4, shape_options=None)
    seen = [float(s["x"][0, 0]) for s in calibration.samples], [float(s["x"][0, 0]) for s in evaluation.samples]
    assert not set(seen[0]) & set(seen[1]) and len(seen[0]) + len(seen[1]) == 10
    assert len(seen[1]) == 4
    generated = calibration_and_evaluation(linear, "m.onnx", None, calib_samples=2, samples=2, shape_options=None)
    assert not np.array_equal(generated[0].samples[0]["x"], generated[1].samples[0]["x"])


def test_token_ids_stay_within_a_fused_embedding_table(tmp_path):
    """After transformer fusion the table sits in EmbedLayerNormalization: ids beyond it fail ORT ('input index out of range')."""
    from helpers import VOCAB, bert_encoder
    from ortforge.core.model import from_proto
    from ortforge.transforms.fusion import FusionOptions, fuse_transformer

    model = load_model(save(bert_encoder(), tmp_path / "bert.onnx"))
    fused = from_proto(fuse_transformer(model, FusionOptions()).proto)
    assert any(node.op_type == "EmbedLayerNormalization" for node in fused.proto.graph.node)
    feeds = generate_feeds(fused, 4, shape_options=ShapeOptions(dims={"batch": 1, "seq": 7}))  # within its 16 positions
    assert max(int(sample["input_ids"].max()) for sample in feeds.samples) < VOCAB
    SessionConfig().build(fused).run(None, feeds.samples[0])


@pytest.mark.parametrize(
    "node, weight_shape, input_shape, expected",
    [
        (helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"), (16, 4), ["batch", None], (1, 16)),
        (helper.make_node("Gemm", ["x", "w"], ["y"], name="fc", transB=1), (4, 24), ["batch", "features"], (1, 24)),
        (helper.make_node("Conv", ["x", "w"], ["y"], name="conv", group=2), (4, 3, 1, 1), ["batch", "c", 5, 5], (1, 6, 5, 5)),
        (helper.make_node("Add", ["x", "w"], ["y"], name="bias"), (1, 12), ["batch", None], (1, 12)),
    ],
    ids=["matmul", "gemm-transB", "conv-grouped", "broadcast-add"],
)
def test_free_dims_take_the_size_a_weight_fixes(tmp_path, node, weight_shape, input_shape, expected):
    model = load_model(save(make_model([node], [tensor("x", input_shape)], [tensor("y", [f"o{i}" for i in range(len(expected))])], [weight("w", np.ones(weight_shape, np.float32))]),
                            tmp_path / "m.onnx"))  # fmt: skip
    feeds = generate_feeds(model, 1)
    assert feeds.samples[0]["x"].shape == expected
    assert any(f"fixed by the weights of {node.op_type}" in note for note in feeds.notes)
    SessionConfig().build(model).run(None, feeds.samples[0])  # the generated input fits
    given = generate_feeds(model, 1, shape_options=ShapeOptions(shapes={"x": (2, *expected[1:])}))
    assert given.samples[0]["x"].shape == (2, *expected[1:])  # what the user sets still wins
