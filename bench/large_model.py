"""A real >2 GB model through ortforge's loader and saver (not in CI: it writes ~4.5 GB).

    python bench/large_model.py [FOLDER]

Builds a MatMul chain with 2.1 GB of weights in external data, then checks that `load_model` reads it
without loading the weights (checker by path), that a session runs it, and that `save_model` writes a
copy with external data that gives the same outputs. Prints timings and peak memory.
"""

from __future__ import annotations

import argparse
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
    onnx.save_model(model, str(path), save_as_external_data=True, location="large.onnx.data")
    return path


def timed(label: str, function):  # noqa: ANN001, ANN201
    start = time.perf_counter()
    result = function()
    print(f"{label}: {time.perf_counter() - start:.1f} s, peak RSS {peak_rss() / 2**30:.2f} GiB")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", nargs="?", help="where to write the ~4.5 GB of models (default: a temporary folder)")
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


if __name__ == "__main__":
    main()
