"""A real >2 GB model through ortforge's loader and saver, then through every command (not in CI: ~15 GB of disk).

    python bench/large_model.py [FOLDER]              # load, run, save a copy
    python bench/large_model.py --commands [FOLDER]   # and every command, each with its wall time and peak RSS

Builds a MatMul chain with 2.4 GB of weights in external data, then checks that `load_model` reads it
without loading the weights (checker by path), that a session runs it, and that `save_model` writes a
copy with external data that gives the same outputs. With --commands, runs inspect, optimize, quantize
(dynamic, static, int4), fp16, quant-debug, bench and tune on it as a user would, each in its own process,
and prints a table: exit code, wall time, the process tree's peak RSS and its ratio to the model's size.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ortforge.core.model import load_model, save_model
from ortforge.core.session import SessionConfig
from ortforge.measure.memory import peak_rss

WIDTH = 8192  # 256 MiB per float32 matrix
LAYERS = 9  # 2.25 GiB in all


def build(folder: Path) -> Path:
    nodes, initializers, previous = [], [], "x"
    for index in range(LAYERS):
        weight = numpy_helper.from_array(np.full((WIDTH, WIDTH), 1.0 / WIDTH, np.float32), f"w{index}")
        initializers.append(weight)
        nodes.append(helper.make_node("MatMul", [previous, f"w{index}"], [f"h{index}"], name=f"mm{index}"))
        previous = f"h{index}"
    graph = helper.make_graph(
        nodes,
        "large",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, WIDTH])],
        [helper.make_tensor_value_info(previous, TensorProto.FLOAT, [1, WIDTH])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    path = folder / "large.onnx"
    (folder / "large.onnx.data").unlink(missing_ok=True)  # onnx appends to an existing data file
    onnx.save_model(model, str(path), save_as_external_data=True, location="large.onnx.data")
    return path


def timed(label: str, function):  # noqa: ANN001, ANN201
    start = time.perf_counter()
    result = function()
    print(f"{label}: {time.perf_counter() - start:.1f} s, peak RSS {peak_rss() / 2**30:.2f} GiB")
    return result


# Runs one command and reports the peak RSS of its whole process tree (Linux folds waited-for descendants into it).
MEASURED = """
import resource, subprocess, sys, time
start = time.perf_counter()
code = subprocess.run(sys.argv[2:], stdout=subprocess.DEVNULL, stderr=open(sys.argv[1], "w")).returncode
print(code, time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)
"""


def commands(path: Path, folder: Path, tune_budget: str) -> list[tuple[str, list[str]]]:
    out = folder / "out"
    model = str(path)
    return [
        ("inspect", ["inspect", model]),
        ("optimize", ["optimize", model, "-o", str(out / "optimized.onnx")]),
        ("quantize --mode dynamic", ["quantize", model, "-o", str(out / "dynamic.onnx"), "--mode", "dynamic", "--no-measure"]),
        ("quantize --mode static", ["quantize", model, "-o", str(out / "static.onnx"), "--mode", "static", "--calib-samples", "4",
                                    "--samples", "4", "--no-measure"]),  # fmt: skip
        ("quantize --mode int4", ["quantize", model, "-o", str(out / "int4.onnx"), "--mode", "int4", "--no-measure", "--force"]),
        # For a GPU's kernels (judged by simulation here): on the CPU EP a MatMul chain stays fp32, a copy of the input.
        ("fp16 --ep cuda", ["fp16", model, "-o", str(out / "fp16.onnx"), "--ep", "CUDAExecutionProvider"]),
        ("quant-debug", ["quant-debug", model, str(out / "dynamic.onnx"), "--samples", "2"]),
        ("bench", ["bench", model, "--time", "2"]),
        ("tune", ["tune", model, "-o", str(out / "tuned"), "--time-budget", tune_budget, "--samples", "8", "--calib-samples", "4"]),
    ]


def run_commands(path: Path, folder: Path, tune_budget: str) -> None:
    size = path.stat().st_size + (path.parent / "large.onnx.data").stat().st_size
    print(f"\nmodel: {size / 1e9:.2f} GB ({path})")
    print(f"{'command':<26} {'exit':>4} {'wall s':>8} {'peak RSS GB':>12} {'x model':>8}  first error line")
    (folder / "out").mkdir(exist_ok=True)
    for label, arguments in commands(path, folder, tune_budget):
        errors = folder / "stderr.txt"
        shown = subprocess.run([sys.executable, "-c", MEASURED, str(errors), sys.executable, "-m", "ortforge", *arguments],
                               capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
        code, wall, peak = shown.stdout.split()
        lines = [line for line in errors.read_text(errors="replace").splitlines() if "error" in line.lower()]
        print(f"{label:<26} {code:>4} {float(wall):>8.1f} {int(peak) / 1e9:>12.2f} {int(peak) / size:>8.2f}  {lines[0][:90] if lines else ''}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", nargs="?", help="where to write the models (default: a temporary folder)")
    parser.add_argument("--commands", action="store_true", help="also run every command on the model")
    parser.add_argument("--tune-budget", default="10m", help="tune's --time-budget (default 10m)")
    args = parser.parse_args()
    folder = Path(args.folder) if args.folder else Path(tempfile.mkdtemp(prefix="ortforge-large-"))
    folder.mkdir(parents=True, exist_ok=True)
    path = timed("build", lambda: build(folder))
    model = timed("load_model (checker by path)", lambda: load_model(path))
    x = np.ones((1, WIDTH), np.float32)
    original = timed("session + run", lambda: SessionConfig().build(model).run(None, {"x": x})[0])
    model.proto.graph.node[0].name = "renamed"  # a change, so the copy is written from the proto
    copy_path = timed("save_model", lambda: save_model(model.proto, folder / "copy" / "large.onnx", source=model))
    data = copy_path.parent / "large.onnx.data"
    print(f"copy: {copy_path.stat().st_size} bytes of graph, {data.stat().st_size / 2**30:.2f} GiB of external data")
    copied = timed("reload + run copy", lambda: SessionConfig().build(load_model(copy_path)).run(None, {"x": x})[0])
    print("outputs equal:", bool(np.array_equal(original, copied)))
    if args.commands:
        del model, original, copied
        run_commands(path, folder, args.tune_budget)


if __name__ == "__main__":
    main()
