"""The corpus's cases: ONNX's backend node tests regenerated from the `onnx` package's own generators,
plus the model folders its wheel still ships.

Recent onnx wheels ship the node-test *generators* (`onnx/backend/test/case/node`) but no longer the
data written from them, so the node cases are written once into a cache folder with onnx's own data
writer (`onnx.backend.test.cmd_tools.generate_data`) and reused from there. `pytorch-converted`,
`pytorch-operator` and `simple` are used where the wheel installed them; the `light` models come
without inputs, so their folders are laid out in the cache with the same deterministic inputs
onnx's backend runner gives them. Cases are never altered: a case this ORT cannot run stays in the
corpus and is counted as such.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import tempfile
import types
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

SHIPPED_SOURCES = ("pytorch-converted", "pytorch-operator", "simple")
LIGHT_SOURCE = "light"
NODE_SOURCE = "node"
COMPLETE_MARKER = ".complete"  # written last: a folder without it is a partial generation


@dataclass(frozen=True)
class Case:
    """One model with its input data sets: `folder/model.onnx` and `folder/test_data_set_*/input_*.pb`."""

    source: str  # node, pytorch-converted, pytorch-operator, simple or light
    folder: Path

    @property
    def name(self) -> str:
        return f"{self.source}/{self.folder.name}"

    @property
    def model_path(self) -> Path:
        return self.folder / "model.onnx"


class CaseDataError(Exception):
    """A case's data files do not fit its model (the case itself is broken, not a transform)."""


def default_cache() -> Path:
    """Per onnx version: another onnx generates other cases."""
    return Path.home() / ".cache" / "ortforge" / "corpus" / f"onnx-{onnx.__version__}"


def onnx_data_dir() -> Path:
    """`onnx/backend/test/data` of the installed onnx package."""
    import onnx.backend.test

    return Path(onnx.backend.test.__file__).parent / "data"


def ensure_corpus(cache: Path, log: Callable[[str], None] = lambda _: None) -> list[Case]:
    """Every case, generating the cached parts first when they are missing; sorted by name."""
    cache.mkdir(parents=True, exist_ok=True)
    folders = {NODE_SOURCE: _ensure(cache / NODE_SOURCE, _write_node_cases, log)}
    folders[LIGHT_SOURCE] = _ensure(cache / LIGHT_SOURCE, _write_light_cases, log)
    data = onnx_data_dir()
    for source in SHIPPED_SOURCES:
        if (data / source).is_dir():
            folders[source] = data / source
        else:
            log(f"this onnx wheel ships no {source} folder: skipped")
    cases = [Case(source, folder) for source, root in folders.items() for folder in sorted(root.iterdir()) if (folder / "model.onnx").is_file()]
    return sorted(cases, key=lambda case: case.name)


def _ensure(target: Path, write: Callable[[Path], int], log: Callable[[str], None]) -> Path:
    """Reuse `target` when a previous generation completed; else write it into a staging folder and rename."""
    if (target / COMPLETE_MARKER).is_file():
        return target
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        log(f"generating {target.name} cases into {target} ...")
        count = write(staging)
        (staging / COMPLETE_MARKER).write_text(f"{count} cases, onnx {onnx.__version__}\n")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
        log(f"generated {count} {target.name} cases")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _write_node_cases(staging: Path) -> int:
    """Run onnx's node-test generators and write their cases with onnx's own data writer.

    This onnx's `generate_data` writes only the cases of `onnx.backend.test.case.model` (older ones
    also wrote the node cases); it is handed the node cases through that module attribute for the
    call, so the files are byte for byte what onnx's writer makes of them.
    """
    from onnx.backend.test import cmd_tools
    from onnx.backend.test.case import node as node_generators

    with _quiet_numpy():
        cases = node_generators.collect_testcases()
    shim = types.SimpleNamespace(collect_testcases=lambda: cases)
    with _swapped(cmd_tools, "model_test", shim), tempfile.TemporaryDirectory(dir=staging) as written:
        cmd_tools.generate_data(argparse.Namespace(output=written))
        for folder in sorted((Path(written) / "node").iterdir()):
            os.replace(folder, staging / folder.name)
    return len(cases)


@contextlib.contextmanager
def _quiet_numpy() -> Iterator[None]:
    """The generators compute expected values of overflow/NaN cases on purpose; their warnings are noise here."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        yield


@contextlib.contextmanager
def _swapped(owner: Any, attribute: str, value: Any) -> Iterator[None]:
    previous = getattr(owner, attribute)
    setattr(owner, attribute, value)
    try:
        yield
    finally:
        setattr(owner, attribute, previous)


def _write_light_cases(staging: Path) -> int:
    """One case folder per shipped `light_*.onnx`, with the inputs onnx's backend runner feeds them.

    The runner's inputs are float32 `arange(n) / n` in the input's shape (symbolic dims as 1); the
    shipped expected output is copied beside them.
    """
    light = onnx_data_dir() / LIGHT_SOURCE
    count = 0
    for model_file in sorted(light.glob("light_*.onnx")) if light.is_dir() else []:
        folder = staging / model_file.stem.removeprefix("light_")
        data_set = folder / "test_data_set_0"
        data_set.mkdir(parents=True)
        shutil.copyfile(model_file, folder / "model.onnx")
        graph = onnx.load(str(model_file), load_external_data=False).graph
        for index, value_info in enumerate(real_inputs(graph)):
            tensor = numpy_helper.from_array(_runner_input(value_info), value_info.name)
            (data_set / f"input_{index}.pb").write_bytes(tensor.SerializeToString())
        for expected in sorted(light.glob(f"{model_file.stem}_output_*.pb")):
            shutil.copyfile(expected, data_set / expected.name.removeprefix(f"{model_file.stem}_"))
        count += 1
    return count


def _runner_input(value_info: onnx.ValueInfoProto) -> np.ndarray:
    shape = tuple(d.dim_value if d.HasField("dim_value") else 1 for d in value_info.type.tensor_type.shape.dim)
    size = int(np.prod(shape))
    return (np.arange(size).reshape(shape) / max(size, 1)).astype(np.float32)


def real_inputs(graph: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs that are not initializers (IR < 4 lists every weight as an input too)."""
    initializers = {tensor.name for tensor in graph.initializer}
    return [value for value in graph.input if value.name not in initializers]


def read_feeds(case: Case, graph: onnx.GraphProto) -> list[dict[str, Any]]:
    """One feed per `test_data_set_*`: input file j feeds the j-th real graph input, parsed by its type."""
    inputs = real_inputs(graph)
    feeds = []
    for data_set in sorted(case.folder.glob("test_data_set_*")):
        files = sorted(data_set.glob("input_*.pb"), key=lambda path: int(path.stem.split("_")[1]))
        if len(files) > len(inputs):
            raise CaseDataError(f"{data_set.name} has {len(files)} inputs, the model {len(inputs)}")
        feeds.append({value.name: read_value(file, value.type) for file, value in zip(files, inputs)})
    if not feeds:
        raise CaseDataError("no test_data_set_* folder")
    return feeds


def read_value(path: Path, type_proto: onnx.TypeProto) -> Any:
    """A tensor, sequence, optional or map input file as the Python value ORT takes for that type."""
    data = path.read_bytes()
    kind = type_proto.WhichOneof("value")
    if kind == "sequence_type":
        sequence = onnx.SequenceProto()
        sequence.ParseFromString(data)
        return numpy_helper.to_list(sequence)
    if kind == "optional_type":
        optional = onnx.OptionalProto()
        optional.ParseFromString(data)
        return numpy_helper.to_optional(optional)
    if kind == "map_type":
        mapping = onnx.MapProto()
        mapping.ParseFromString(data)
        return numpy_helper.to_dict(mapping)
    tensor = onnx.TensorProto()
    tensor.ParseFromString(data)
    return numpy_helper.to_array(tensor)


def select(cases: list[Case], substring: str | None = None, limit: int | None = None) -> list[Case]:
    """Cases whose name contains `substring`; with `limit`, that many spread evenly over the sorted list.

    Evenly spread (not the first N) so a limited run still samples every source and op family, and
    the same arguments always pick the same cases.
    """
    chosen = [case for case in cases if substring is None or substring in case.name]
    if limit is None or limit >= len(chosen):
        return chosen
    if limit <= 0:
        return []
    step = len(chosen) / limit
    return [chosen[int(index * step)] for index in range(limit)]
