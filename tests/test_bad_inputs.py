"""The gauntlet: bad inputs and bad output paths, command by command, as a user types them.

Each case must end with exit code 2, one line naming the culprit, no traceback, the user's files unchanged
(hashed before and after) and nothing left behind in the folder.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

from helpers import linear_model, make_model, save, tensor, weight
from ortforge.cli import main


@dataclass(frozen=True)
class Case:
    name: str
    argv: Callable[[Path], list[str]]  # from the work folder (holding m.onnx, data/, hook.py) to the command line
    culprit: str  # what the one line must name


def _folder_state(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir" for p in sorted(root.rglob("*"))}


@pytest.fixture
def work(tmp_path):
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
]

# ORT failing at run time: one line naming the model and ORT's message, and none of ORT's own log lines.
CASES += [Case(f"{command} where ORT fails at run time", lambda w, c=command: [c, str(w / "lookup.onnx"), "--data", str(w / "far.npz")], "lookup.onnx")
          for command in ("run", "bench")]
if Path("/proc/self").is_dir():  # a place nobody can write, root included (a chmod-ed folder does not stop root)
    CASES.append(Case("fp16 where nothing can be written", lambda w: ["fp16", str(w / "m.onnx"), "-o", "/proc/ortforge-out.onnx"], "cannot write"))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_bad_inputs_get_one_line_and_harm_nothing(work, capfd, case):
    before = _folder_state(work)
    assert main(case.argv(work)) == 2
    error = capfd.readouterr().err.strip()  # file-descriptor level: ORT's C++ log would show here
    assert "Traceback" not in error and len(error.splitlines()) == 1, error
    assert case.culprit in error, error
    assert _folder_state(work) == before  # inputs unchanged, nothing written, nothing left behind
