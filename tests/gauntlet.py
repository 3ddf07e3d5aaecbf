"""The gauntlet's cases: bad inputs and bad output paths, command by command, as a user types them.

Shared by tests/test_bad_inputs.py (each case must exit 2 with one line naming the culprit, harming nothing)
and bench/bad_inputs.py (which prints the whole table, with the slow cases: interruption, a >2 GB model).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from helpers import linear_model, make_model, save, tensor, weight


@dataclass(frozen=True)
class Case:
    name: str
    argv: Callable[[Path], list[str]]  # from the work folder (holding m.onnx, data/, hook.py) to the command line
    culprit: str | tuple[str, ...]  # what the one line must name (and say)

    @property
    def parts(self) -> tuple[str, ...]:
        return (self.culprit,) if isinstance(self.culprit, str) else self.culprit


def folder_state(root: Path) -> dict[str, str]:
    """Every file under `root` with its sha256: equal before and after means nothing changed, nothing was left."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir" for p in sorted(root.rglob("*"))}


def build_work(tmp_path: Path) -> Path:
    """The work folder every case runs in: a good model, data, hooks, an artifact, and the broken inputs."""
    save(linear_model(), tmp_path / "m.onnx")
    (tmp_path / "data").mkdir()
    for index in range(4):
        np.savez(tmp_path / "data" / f"s{index}.npz", x=np.full((1, 8), index, np.float32))
    (tmp_path / "hook.py").write_text("def check(outputs, reference):\n    return True\n")
    (tmp_path / "art").mkdir()
    save(linear_model(), tmp_path / "art" / "model.onnx")
    (tmp_path / "art" / "ortforge.json").write_text("{}")
    (tmp_path / "a_file").write_text("not a folder")
    lookup = helper.make_node("Gather", ["table", "i"], ["y"], name="lookup")
    save(make_model([lookup], [tensor("i", [1], TensorProto.INT64)], [tensor("y", [1, 4])], [weight("table", np.ones((3, 4), np.float32))]),
         tmp_path / "lookup.onnx")  # fmt: skip
    np.savez(tmp_path / "far.npz", i=np.array([7], np.int64))  # row 7 of a 3-row table: ORT fails at run time
    _recipes(tmp_path)
    _broken_models(tmp_path / "broken")
    _bad_data(tmp_path / "bad")
    _bad_configs(tmp_path / "configs")
    return tmp_path


CASES = [
    # Outputs that are, or hold, what the command reads.
    Case("tune-session over its input", lambda w: ["tune-session", str(w / "m.onnx"), "-o", str(w / "m.onnx")], "m.onnx"),
    Case("optimize over its input", lambda w: ["optimize", str(w / "m.onnx"), "-o", str(w / "m.onnx")], "m.onnx"),
    Case("quantize over its input", lambda w: ["quantize", str(w / "m.onnx"), "-o", str(w / "m.onnx")], "m.onnx"),
    Case("fp16 over its input", lambda w: ["fp16", str(w / "m.onnx"), "-o", str(w / "m.onnx")], "m.onnx"),
    Case("quantize over its eval hook", lambda w: ["quantize", str(w / "m.onnx"), "-o", str(w / "hook.py"), "--eval", f"{w / 'hook.py'}:check"],
         "hook.py"),
    Case("quant-debug plot over the float model", lambda w: ["quant-debug", str(w / "m.onnx"), str(w / "m.onnx"), "--plot", str(w / "m.onnx")],
         "--plot"),
    Case("tune an artifact into its own folder", lambda w: ["tune", str(w / "art" / "model.onnx"), "-o", str(w / "art")], "model.onnx"),
    Case("tune into the data folder", lambda w: ["tune", str(w / "m.onnx"), "-o", str(w / "data"), "--data", str(w / "data")], "data"),
    Case("tensorrt target over the data folder", lambda w: ["quantize", str(w / "m.onnx"), "-o", str(w / "data"), "--target", "tensorrt",
                                                            "--calib", str(w / "data")], "data"),
    # Output places that cannot take the output.
    Case("tune into a non-empty folder", lambda w: ["tune", str(w / "m.onnx"), "-o", str(w / "data")], "not empty"),
    Case("tune over an earlier artifact", lambda w: ["tune", str(w / "m.onnx"), "-o", str(w / "art")], "--overwrite"),
    Case("tune into a file", lambda w: ["tune", str(w / "m.onnx"), "-o", str(w / "a_file")], "is a file"),
    Case("optimize into a folder", lambda w: ["optimize", str(w / "m.onnx"), "-o", str(w / "data")], "is a folder"),
    Case("optimize below a file", lambda w: ["optimize", str(w / "m.onnx"), "-o", str(w / "a_file" / "x.onnx")], "not a folder"),
]
# Options checked before any work, each error naming the flag typed.
M = "m.onnx"
CASES += [
    Case("tolerance out of its metric's range", lambda w: ["quantize", str(w / M), "-o", str(w / "q.onnx"), "--tolerance", "cosine=2"], "--tolerance"),
    Case("negative max_abs", lambda w: ["tune", str(w / M), "-o", str(w / "t"), "--tolerance", "max_abs=-1"], "--tolerance"),
    Case("nan tolerance", lambda w: ["fp16", str(w / M), "-o", str(w / "h.onnx"), "--tolerance", "cosine=nan"], "--tolerance"),
    Case("nan time budget", lambda w: ["tune", str(w / M), "-o", str(w / "t"), "--time-budget", "nan"], "--time-budget"),
    Case("negative bench time", lambda w: ["bench", str(w / M), "--time", "-1"], "--time"),
    Case("zero calibration samples", lambda w: ["quantize", str(w / M), "-o", str(w / "q.onnx"), "--calib-samples", "0"], "--calib-samples"),
    Case("negative samples", lambda w: ["bench", str(w / M), "--samples", "-3"], "--samples"),
    Case("zero samples", lambda w: ["tune", str(w / M), "-o", str(w / "t"), "--samples", "0"], "--samples"),
    Case("unknown EP", lambda w: ["fp16", str(w / M), "-o", str(w / "h.onnx"), "--ep", "bogus"], "bogus"),
    Case("unknown EP for bench", lambda w: ["bench", str(w / M), "--ep", "bogus"], "bogus"),
    Case("unknown node to block", lambda w: ["fp16", str(w / M), "-o", str(w / "h.onnx"), "--block-node", "nosuchnode"], "nosuchnode"),
    Case("unknown op to block", lambda w: ["fp16", str(w / M), "-o", str(w / "h.onnx"), "--block-op", "NoSuchOp"], "NoSuchOp"),
    Case("unknown node to exclude", lambda w: ["quantize", str(w / M), "-o", str(w / "q.onnx"), "--exclude", "nosuchnode"], "nosuchnode"),
    Case("shape for an input that does not exist", lambda w: ["inspect", str(w / M), "--shape", "nosuchinput=1x3"], "nosuchinput"),
    Case("shape for an input that does not exist (bench)", lambda w: ["bench", str(w / M), "--shape", "nosuchinput=1x3"], "nosuchinput"),
    Case("missing calib folder", lambda w: ["quantize", str(w / M), "-o", str(w / "q.onnx"), "--calib", str(w / "nope")], "--calib"),
    Case("missing eval module", lambda w: ["quantize", str(w / M), "-o", str(w / "q.onnx"), "--eval", "nosuchmodule:check"], "--eval"),
    Case("zero budget", lambda w: ["tune", str(w / M), "-o", str(w / "t"), "--time-budget", "0s"], "--time-budget"),
    # Budgets too short for even one timed comparison: said at the start, not found out after the budget.
    Case("tune budget too short to compare", lambda w: ["tune", str(w / M), "-o", str(w / "t"), "--time-budget", "1s"], "--time-budget"),
    Case("quantize auto budget too short", lambda w: ["quantize", str(w / M), "-o", str(w / "q.onnx"), "--mode", "auto", "--time-budget", "1s"],
         "--time-budget"),
    Case("fp16 budget not a duration", lambda w: ["fp16", str(w / M), "-o", str(w / "h.onnx"), "--auto", "--time-budget", "soon"], "--time-budget"),
]

# ORT failing at run time: one line naming the model and ORT's message, and none of ORT's own log lines.
CASES += [Case(f"{command} where ORT fails at run time", lambda w, c=command: [c, str(w / "lookup.onnx"), "--data", str(w / "far.npz")], "lookup.onnx")
          for command in ("run", "bench")]
# Broken model files, through every command that opens one.
MODEL_COMMANDS = {
    "inspect": lambda m, w: ["inspect", m, "--no-placement"],
    "run": lambda m, w: ["run", m],
    "bench": lambda m, w: ["bench", m, "--time", "0.2"],
    "optimize": lambda m, w: ["optimize", m, "-o", str(w / "out.onnx")],
    "quantize": lambda m, w: ["quantize", m, "-o", str(w / "out.onnx")],
    "fp16": lambda m, w: ["fp16", m, "-o", str(w / "out.onnx")],
    "tune": lambda m, w: ["tune", m, "-o", str(w / "out")],
    "apply": lambda m, w: ["apply", str(w / "recipe_art"), m, "-o", str(w / "out")],
    "tune-session": lambda m, w: ["tune-session", m, "-o", str(w / "out.json")],
    "quant-debug": lambda m, w: ["quant-debug", m, m],
}
BROKEN_MODELS = {  # file name -> what the line must say besides the file's name
    "truncated.onnx": "truncated or corrupt",
    "text.onnx": "not an ONNX model",
    "empty.onnx": "empty",
    "noise.onnx": "truncated or corrupt",
    "external.onnx": "missing",
    "short.onnx": "short.data' is truncated",
    "ir14.onnx": "IR version 14",
    "opset99.onnx": "opset",
    "custom_op.onnx": "NoSuchOp",
    "absent.onnx": "not found",
}
CASES += [Case(f"{command} on {name}", lambda w, c=command, n=name: MODEL_COMMANDS[c](str(w / "broken" / n), w), (name.split(".")[0], says))
          for command in MODEL_COMMANDS for name, says in BROKEN_MODELS.items()]


def _broken_models(folder: Path) -> None:
    folder.mkdir()
    good = linear_model().SerializeToString()
    (folder / "truncated.onnx").write_bytes(good[: len(good) // 2])
    (folder / "text.onnx").write_text("name,value\nalpha,1\n")
    (folder / "empty.onnx").write_bytes(b"")
    (folder / "noise.onnx").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    for name in ("external", "short"):
        onnx.save_model(linear_model(), str(folder / f"{name}.onnx"), save_as_external_data=True, location=f"{name}.data", size_threshold=0)
    (folder / "external.data").unlink()
    (folder / "short.data").write_bytes((folder / "short.data").read_bytes()[:40])
    newer = linear_model()
    newer.ir_version = 14
    save(newer, folder / "ir14.onnx")
    save(make_model([helper.make_node("Relu", ["x"], ["y"])], [tensor("x", [1, 8])], [tensor("y", [1, 8])], opset=99), folder / "opset99.onnx")
    custom = make_model([helper.make_node("NoSuchOp", ["x"], ["y"], domain="example.custom")], [tensor("x", [1, 8])], [tensor("y", [1, 8])])
    custom.opset_import.append(helper.make_opsetid("example.custom", 1))
    save(custom, folder / "custom_op.onnx")


# Bad data, through every command that reads data (and quantize's --calib).
DATA_COMMANDS = {
    "run": lambda d, w: ["run", str(w / M), "--data", d],
    "bench": lambda d, w: ["bench", str(w / M), "--data", d, "--time", "0.2"],
    "optimize": lambda d, w: ["optimize", str(w / M), "-o", str(w / "out.onnx"), "--data", d],
    "quantize": lambda d, w: ["quantize", str(w / M), "-o", str(w / "out.onnx"), "--data", d],
    "quantize --calib": lambda d, w: ["quantize", str(w / M), "-o", str(w / "out.onnx"), "--calib", d],
    "fp16": lambda d, w: ["fp16", str(w / M), "-o", str(w / "out.onnx"), "--data", d],
    "quant-debug": lambda d, w: ["quant-debug", str(w / M), str(w / M), "--data", d],
    "tune": lambda d, w: ["tune", str(w / M), "-o", str(w / "out"), "--data", d],
    "apply": lambda d, w: ["apply", str(w / "recipe_art"), str(w / M), "-o", str(w / "out"), "--data", d],
    "tune-session": lambda d, w: ["tune-session", str(w / M), "-o", str(w / "out.json"), "--data", d],
}
BAD_DATA = {  # source (relative to the work folder, or a hook) -> what the line must name
    "bad/name.npz": ("name.npz", "'y' is not an input"),
    "bad/dtype.npz": ("dtype.npz", "float64"),
    "bad/rank.npz": ("rank.npz", "rank 2"),
    "bad/shape.npz": ("shape.npz", "[1, 5]"),
    "bad/empty": ("empty", "found no"),
    "bad/absent.npz": ("absent.npz", "no such file"),
    "hooks.py:raises": ("hooks.py:raises", "RuntimeError"),
    "hooks.py:raises_later": ("hooks.py:raises_later", "at sample 2"),
    "hooks.py:not_dicts": ("hooks.py:not_dicts", "expected a dict"),
}
CASES += [Case(f"{command} with {source}", lambda w, c=command, d=source: DATA_COMMANDS[c](str(w / d) if ":" not in d else f"{w / d}", w), says)
          for command in DATA_COMMANDS for source, says in BAD_DATA.items()]


def _bad_data(folder: Path) -> None:
    folder.mkdir()
    np.savez(folder / "name.npz", y=np.ones((1, 8), np.float32))
    np.savez(folder / "dtype.npz", x=np.ones((1, 8), np.float64))
    np.savez(folder / "rank.npz", x=np.ones((8,), np.float32))
    np.savez(folder / "shape.npz", x=np.ones((1, 5), np.float32))
    (folder / "empty").mkdir()
    (folder.parent / "hooks.py").write_text(
        "import numpy as np\n"
        "def raises():\n    raise RuntimeError('no camera')\n"
        "def raises_later():\n    for i in range(5):\n        if i == 2:\n            raise OSError('disk gone')\n"
        "        yield {'x': np.ones((1, 8), np.float32)}\n"
        "def not_dicts():\n    return [np.ones((1, 8), np.float32)]\n"
    )


# apply: recipes that are not, that do not fit, and outputs over them.
CASES += [
    Case("apply a folder that is not an artifact", lambda w: ["apply", str(w / "data"), str(w / M), "-o", str(w / "out")], ("data", "without ortforge.json")),
    Case("apply an artifact record without a recipe", lambda w: ["apply", str(w / "art"), str(w / M), "-o", str(w / "out")], ("ortforge.json", "no ortforge recipe")),
    Case("apply a recipe of an unknown transform", lambda w: ["apply", str(w / "configs" / "recipe_kind.json"), str(w / M), "-o", str(w / "out")],
         ("recipe_kind.json", "magic")),
    Case("apply to another architecture", lambda w: ["apply", str(w / "recipe_art"), str(w / "lookup.onnx"), "-o", str(w / "out")],
         ("lookup.onnx", "not the architecture")),
    Case("apply over its own recipe", lambda w: ["apply", str(w / "recipe_art"), str(w / M), "-o", str(w / "recipe_art"), "--overwrite"], "recipe_art"),
    Case("quant-debug given a float model as the quantized one", lambda w: ["quant-debug", str(w / M), str(w / "art" / "model.onnx")],
         ("model.onnx", "not a quantized model")),
    Case("tune with a config naming no flag", lambda w: ["tune", "--config", str(w / "configs" / "typo.toml"), "-o", str(w / "out")],
         ("typo.toml", "objectiv")),
]


def _recipes(work: Path) -> None:
    """An artifact folder whose ortforge.json holds a recipe for m.onnx (as tune writes it)."""
    from ortforge.core.model import load_model
    from ortforge.core.session import SessionConfig
    from ortforge.searches.trial import Candidate
    from ortforge.tuning.recipe import Recipe, model_shape

    folder = work / "recipe_art"
    folder.mkdir()
    save(linear_model(), folder / "model.onnx")
    recipe = Recipe(Candidate("fp32", "fp32"), SessionConfig(), tolerances=("cosine=0.99",), model=model_shape(load_model(work / M)))
    (folder / "ortforge.json").write_text(json.dumps({"format": "ortforge-artifact/1", "session": {}, "recipe": recipe.to_dict()}))


# Malformed session configs.
BAD_CONFIGS = {
    "not_json.json": ("not_json.json", "JSON"),
    "unknown_key.json": ("unknown_key.json", "threads_please"),
    "wrong_type.json": ("wrong_type.json", "intra_op_num_threads"),
    "unknown_level.json": ("unknown_level.json", "graph_optimization_level"),
    "unknown_ep.json": ("unknown_ep.json", "NoSuchExecutionProvider"),
    "a_list.json": ("a_list.json", "object"),
}
CASES += [Case(f"bench with {name}", lambda w, n=name: ["bench", str(w / M), str(w / "configs" / n), "--time", "0.2"], says)
          for name, says in BAD_CONFIGS.items()]


def _bad_configs(folder: Path) -> None:
    folder.mkdir()
    (folder / "not_json.json").write_text("{intra_op_num_threads: 1")
    (folder / "unknown_key.json").write_text('{"threads_please": 2}')
    (folder / "wrong_type.json").write_text('{"intra_op_num_threads": "two"}')
    (folder / "unknown_level.json").write_text('{"graph_optimization_level": "turbo"}')
    (folder / "unknown_ep.json").write_text('{"providers": [{"name": "NoSuchExecutionProvider", "options": {}}]}')
    (folder / "a_list.json").write_text("[1, 2]")
    (folder / "recipe_kind.json").write_text(json.dumps({"format": "ortforge-recipe/1", "transform": {"kind": "magic", "label": "m"}, "session": {}}))
    (folder / "typo.toml").write_text(f'model = "{folder.parent / M}"\nobjectiv = "latency"\n')


if Path("/proc/self").is_dir():  # a place nobody can write, root included (a chmod-ed folder does not stop root)
    CASES.append(Case("fp16 where nothing can be written", lambda w: ["fp16", str(w / "m.onnx"), "-o", "/proc/ortforge-out.onnx"], "cannot write"))


