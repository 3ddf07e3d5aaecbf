"""apply: a recipe redone on a retrained model (re-calibrated, judged against its own fp32), refused on another architecture
or when it misses its gate there."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import ortforge
from helpers import conv_net, linear_model, save
from ortforge.commands.apply import apply
from ortforge.core.errors import UserError
from ortforge.core.model import load_model
from ortforge.core.session import SessionConfig
from ortforge.searches.trial import Candidate
from ortforge.transforms.quantize import QuantizeOptions
from ortforge.tuning.artifact import MODEL_FILE, read_artifact
from ortforge.tuning.recipe import Recipe, model_shape, read_recipe

STATIC = QuantizeOptions(mode="static", per_channel=True, op_types=("Conv", "Gemm"))


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ORTFORGE_CACHE", str(tmp_path / "cache"))


def _recipe_file(folder, model_path, tolerances=("cosine=0.99", "top1=1.0")):
    """A static int8 recipe as tune records it, for the model at `model_path`."""
    recipe = Recipe(Candidate.of_recipe(STATIC), SessionConfig(intra_op_num_threads=1), "1 intra-op thread(s)", "threads",
                    tolerances=tuple(tolerances), data={"calib_samples": 8, "samples": 8, "generated": True, "shapes": {"x": [1, 3, 16, 16]}},
                    model=model_shape(load_model(model_path)))  # fmt: skip
    path = folder / "recipe.json"
    path.write_text(json.dumps(recipe.to_dict()))
    return path


def _retrained(proto: onnx.ModelProto, scale: float = 1.5, seed: int = 1) -> onnx.ModelProto:
    """The same graph with every weight perturbed and scaled (a retraining's new ranges)."""
    rng = np.random.default_rng(seed)
    changed = onnx.ModelProto()
    changed.CopyFrom(proto)
    for index, tensor in enumerate(changed.graph.initializer):
        array = numpy_helper.to_array(tensor)
        new = (array * scale + 0.05 * rng.standard_normal(array.shape)).astype(array.dtype)
        changed.graph.initializer[index].CopyFrom(numpy_helper.from_array(new, tensor.name))
    return changed


def _scales(path) -> dict[str, np.ndarray]:
    proto = onnx.load(str(path))
    return {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer if t.name.endswith("_scale")}


def test_a_recipe_round_trips_through_its_record(tmp_path):
    model = save(conv_net(), tmp_path / "cnn.onnx")
    recipe = read_recipe(_recipe_file(tmp_path, model))
    assert recipe.candidate == Candidate.of_recipe(STATIC)  # the same candidate, so the same build-cache key
    assert recipe.session.intra_op_num_threads == 1 and recipe.gate()[0].metric == "cosine"


def test_apply_recalibrates_a_retrained_model_and_judges_it_against_its_own_fp32(tmp_path):
    original = save(conv_net(), tmp_path / "cnn.onnx")
    retrained = save(_retrained(conv_net()), tmp_path / "cnn-v2.onnx")
    recipe = _recipe_file(tmp_path, original, tolerances=("cosine=0.99",))
    first = apply(recipe, original, tmp_path / "v1", time_budget_s=10)
    second = apply(recipe, retrained, tmp_path / "v2", time_budget_s=10)
    for report in (first, second):
        assert report.result.chosen.trial.candidate == Candidate.of_recipe(STATIC) and report.result.chosen.trial.passed
        assert report.result.chosen.session.config.intra_op_num_threads == 1
    # Calibrated on the retrained model's own activations: its activation scales are not the first model's.
    old, new = _scales(tmp_path / "v1" / MODEL_FILE), _scales(tmp_path / "v2" / MODEL_FILE)
    assert old.keys() == new.keys() and any(not np.allclose(old[name], new[name]) for name in old)
    path, config, record = read_artifact(tmp_path / "v2")
    assert record["recipe"]["transform"]["kind"] == "int8" and config.intra_op_num_threads == 1
    assert ortforge.load(tmp_path / "v2").run(None, {"x": np.zeros((1, 3, 16, 16), np.float32)})[0].shape == (1, 10)


def test_another_architecture_is_refused_before_any_work_naming_the_difference(tmp_path):
    recipe = _recipe_file(tmp_path, save(conv_net(), tmp_path / "cnn.onnx"))
    other = save(linear_model(), tmp_path / "linear.onnx")
    with pytest.raises(UserError, match=r"linear.onnx: not the architecture the recipe was made for: 1 Add node\(s\) here, 0 in the recipe"):
        apply(recipe, other, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_recipe_that_misses_its_gate_on_the_new_model_writes_nothing_and_says_which_check(tmp_path):
    model = save(conv_net(), tmp_path / "cnn.onnx")
    recipe = _recipe_file(tmp_path, model, tolerances=("max_abs=1e-9",))
    with pytest.raises(UserError, match=r"out: not written, the recipe's static .* on cnn.onnx: max_abs .* misses max_abs <= 1e-09"):
        apply(recipe, model, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_file_that_is_not_a_recipe_is_one_line(tmp_path):
    (tmp_path / "r.json").write_text(json.dumps({"format": "something/2"}))
    model = save(conv_net(), tmp_path / "cnn.onnx")
    with pytest.raises(UserError, match="r.json: recipe format 'something/2' is not ortforge-recipe/1"):
        apply(tmp_path / "r.json", model, tmp_path / "out")
    with pytest.raises(UserError, match="is a folder without ortforge.json"):
        apply(tmp_path, model, tmp_path / "out")
