"""The robustness corpus's classification (bench/corpus) on tiny cases built here, not on the corpus."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from helpers import make_model, tensor
from ortforge.core.errors import UserError
from ortforge.core.model import load_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from corpus.classify import (
    Tolerance,
    Transform,
    Written,
    compare_arrays,
    evaluate_case,
    interrupted_result,
)
from corpus.generate import Case, select
from corpus.pool import PoolOptions, Task, run_tasks


def write_case(folder: Path, model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> Case:
    """A case folder as onnx's data writer lays it out: model.onnx and test_data_set_0/input_N.pb."""
    data_set = folder / "test_data_set_0"
    data_set.mkdir(parents=True)
    onnx.save_model(model, str(folder / "model.onnx"))
    for index, (name, value) in enumerate(inputs.items()):
        (data_set / f"input_{index}.pb").write_bytes(numpy_helper.from_array(value, name).SerializeToString())
    return Case("tiny", folder)


def relu_case(folder: Path) -> Case:
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [tensor("x", [2, 3])], [tensor("y", [2, 3])])
    return write_case(folder, model, {"x": np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)})


def fake(apply, name: str = "fake", **kwargs) -> Transform:
    return Transform(name, "a fake transform", load_model, apply, Tolerance(1e-5, 1e-5), **kwargs)


def identity(model) -> Written:
    return Written(model.proto, changed=False)


def refuse(model) -> Written:
    raise UserError(f"{model.name}: not this one")


def crash(model) -> Written:
    raise RuntimeError("bug")


def doubled(model) -> Written:
    """Deliberately broken: Relu(x) * 2 under the same signature."""
    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    proto.graph.node[0].output[0] = "half"
    proto.graph.initializer.append(numpy_helper.from_array(np.array(2, np.float32), "two"))
    proto.graph.node.append(helper.make_node("Mul", ["half", "two"], ["y"]))
    return Written(proto)


def retyped(model) -> Written:
    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    proto.graph.output[0].type.tensor_type.elem_type = TensorProto.FLOAT16
    return Written(proto)


def unloadable(model) -> Written:
    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    proto.graph.node[0].op_type = "NoSuchOp"
    return Written(proto)


@pytest.mark.parametrize(
    ("apply", "verdict", "words"),
    [
        (identity, "correct", ""),
        (refuse, "refused", "not this one"),
        (crash, "crashed", "RuntimeError"),
        (doubled, "wrong", "values outside"),
        (retyped, "wrong", "signature"),
        (unloadable, "wrong", "fails to load"),
    ],
)
def test_verdicts(tmp_path: Path, apply, verdict: str, words: str) -> None:
    case = relu_case(tmp_path / "relu")
    result = evaluate_case(case, fake(apply), tmp_path / "work")
    assert result.verdict == verdict, result.reason
    assert words in result.reason
    assert "\n" not in result.reason


def test_comparison_tool_exceptions_are_loud(tmp_path: Path) -> None:
    result = evaluate_case(relu_case(tmp_path / "relu"), fake(crash, comparison=True), tmp_path)
    assert result.verdict == "loud"


def test_original_ort_cannot_run_is_excluded(tmp_path: Path) -> None:
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [tensor("x", [2])], [tensor("y", [2])], ir_version=99)
    case = write_case(tmp_path / "newer", model, {"x": np.ones(2, np.float32)})
    result = evaluate_case(case, fake(identity), tmp_path)
    assert (result.verdict, result.category) == ("excluded", "IR version newer than ORT supports")


def test_float_only_transform_skips_integer_cases(tmp_path: Path) -> None:
    model = make_model(
        [helper.make_node("Neg", ["x"], ["y"])], [tensor("x", [2], TensorProto.INT64)], [tensor("y", [2], TensorProto.INT64)]
    )
    case = write_case(tmp_path / "ints", model, {"x": np.array([1, 2], np.int64)})
    assert evaluate_case(case, fake(identity, float_only=True), tmp_path).verdict == "not-float"


def test_compare_arrays_rules() -> None:
    loose = Tolerance(1e-2, 1e-3)
    assert compare_arrays(np.array([1.0, np.nan], np.float32), np.array([1.005, np.nan], np.float32), loose) == ""
    assert "NaN" in compare_arrays(np.array([1.0, np.nan], np.float32), np.array([1.0, 0.0], np.float32), loose)
    assert "must be equal" in compare_arrays(np.array([1, 2]), np.array([1, 3]), loose)
    assert "dtype" in compare_arrays(np.array([1.0], np.float32), np.array([1.0], np.float16), loose)
    assert compare_arrays(np.array([1.0], np.float32), np.array([5.0], np.float32), Tolerance(0, 0, values=False)) == ""
    # one fp16 ulp is within any tolerance: an fp16 output cannot be closer than its own rounding
    assert compare_arrays(np.array([0.702637], np.float16), np.array([0.703125], np.float16), Tolerance(1e-5, 1e-5)) == ""


def test_interrupted_worker_is_attributed_to_its_step(tmp_path: Path) -> None:
    case, transform = Case("tiny", tmp_path), fake(identity)
    assert interrupted_result(case, transform, "original", "crashed", "SIGSEGV").verdict == "excluded"
    assert interrupted_result(case, transform, "transform", "hung", "timed out").verdict == "crashed"
    assert interrupted_result(case, transform, "candidate", "crashed", "SIGSEGV").verdict == "wrong"


def test_limit_picks_an_even_spread() -> None:
    cases = [Case("s", Path(f"/c/{index:02}")) for index in range(10)]
    assert [c.folder.name for c in select(cases, limit=3)] == ["00", "03", "06"]
    assert [c.folder.name for c in select(cases, "0")] == [f"0{i}" for i in range(10)]


def test_pool_runs_a_real_transform_in_workers(tmp_path: Path) -> None:
    tasks = [Task(relu_case(tmp_path / f"relu{index}"), "optimize") for index in range(2)]
    results = []
    run_tasks(tasks, PoolOptions(jobs=2, timeout=60), results.append)
    assert sorted(r.verdict for r in results) == ["correct", "correct"]
