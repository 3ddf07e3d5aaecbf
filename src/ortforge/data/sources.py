"""Reading user feeds (.npz, folders of .npz/.npy, ONNX test_data_set_* .pb, Python hooks) and checking them."""

from __future__ import annotations

import importlib
import importlib.util
import itertools
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ortforge.core.errors import OptionError, UserError
from ortforge.data.specs import InputSpec

Feed = dict[str, np.ndarray]


def is_hook(source: str) -> bool:
    """'module:function' or 'file.py:function', as opposed to a path (a Windows drive is not a hook)."""
    left, sep, right = source.rpartition(":")
    return bool(sep and left and right.isidentifier() and len(left) > 1 and not Path(source).exists())


def read_source(source: str, specs: list[InputSpec], limit: int | None) -> Iterator[Feed]:
    """Feeds from a user source, unvalidated, at most `limit` of them."""
    if is_hook(source):
        return itertools.islice(_read_hook(source), limit)
    path = Path(source)
    if not path.exists():
        raise UserError(f"--data {source}: no such file or folder")
    if path.is_file():
        return iter([_read_file_feed(path, specs)])
    return itertools.islice(_read_folder(path, specs), limit)


def _read_file_feed(path: Path, specs: list[InputSpec]) -> Feed:
    if path.suffix == ".npz":
        return _read_npz(path)
    if path.suffix == ".npy" and len(specs) == 1:
        return {specs[0].name: _load_npy(path)}
    if path.suffix == ".pb" and len(specs) == 1:
        return {specs[0].name: _read_pb(path)}
    raise UserError(f"--data {path}: expected an .npz file (one array per input), a folder, or module:function")


def _read_npz(path: Path) -> Feed:
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (OSError, ValueError) as exc:
        raise UserError(f"--data {path}: not a readable .npz file ({exc})") from None


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise UserError(f"--data {path}: not a readable .npy file ({exc})") from None


def _read_pb(path: Path) -> np.ndarray:
    tensor = onnx.TensorProto()
    try:
        tensor.ParseFromString(path.read_bytes())
        return numpy_helper.to_array(tensor)
    except Exception as exc:
        raise UserError(f"--data {path}: not a TensorProto .pb file ({exc})") from None


def _read_pb_set(folder: Path, specs: list[InputSpec]) -> Feed:
    """An ONNX test_data_set_N folder: input_K.pb, named in the tensor or else by position."""
    files = sorted(folder.glob("input_*.pb"), key=lambda p: int(p.stem.split("_")[-1]) if p.stem.split("_")[-1].isdigit() else 0)
    feed: Feed = {}
    for position, file in enumerate(files):
        tensor = onnx.TensorProto()
        tensor.ParseFromString(file.read_bytes())
        name = tensor.name or (specs[position].name if position < len(specs) else file.stem)
        feed[name] = numpy_helper.to_array(tensor)
    return feed


def _read_folder(folder: Path, specs: list[InputSpec]) -> Iterator[Feed]:
    sets = sorted(p for p in folder.glob("test_data_set_*") if p.is_dir())
    if sets:
        return (_read_pb_set(s, specs) for s in sets)
    if list(folder.glob("input_*.pb")):
        return iter([_read_pb_set(folder, specs)])
    npz = sorted(folder.glob("*.npz"))
    if npz:
        return (_read_npz(p) for p in npz)
    npy = sorted(folder.glob("*.npy"))
    names = {spec.name for spec in specs}
    if npy and {p.stem for p in npy} >= names:
        return iter([{p.stem: _load_npy(p) for p in npy if p.stem in names}])
    if npy and len(specs) == 1:
        return ({specs[0].name: _load_npy(p)} for p in npy)
    raise UserError(
        f"--data {folder}: found no test_data_set_*/input_*.pb, *.npz, or *.npy named after the inputs "
        f"({', '.join(sorted(names))})"
    )


def _read_hook(source: str) -> Iterator[Feed]:
    module_name, _, function_name = source.rpartition(":")
    module = import_hook_module(module_name, spec=source)
    function = getattr(module, function_name, None)
    if not callable(function):
        raise UserError(f"--data {source}: '{module_name}' has no function '{function_name}'")
    try:
        produced = function()
    except Exception as exc:
        raise UserError(f"--data {source}: the hook raised {type(exc).__name__}: {exc}") from None
    if isinstance(produced, dict):
        produced = [produced]
    if not isinstance(produced, Iterable):
        raise UserError(f"--data {source}: the hook must return or yield dicts of input name -> array")
    for index, feed in enumerate(produced):
        if not isinstance(feed, dict):
            raise UserError(f"--data {source}: item {index} is a {type(feed).__name__}, expected a dict of input name -> array")
        yield {name: np.asarray(value) for name, value in feed.items()}


def import_hook_module(module_name: str, option: str = "data", spec: str | None = None):  # noqa: ANN202 - a module
    """A user's hook module, by import name or .py path; errors name the option and the `spec` the user gave."""
    given = spec or module_name
    if module_name.endswith(".py"):
        path = Path(module_name)
        if not path.is_file():
            raise OptionError(option, given, f"hook file {module_name} not found")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    if "" not in sys.path:
        sys.path.insert(0, "")  # so a hook module in the current folder is found, as `python -m` would
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        raise OptionError(option, given, f"hook module cannot be imported: {exc}") from None


def validate_feed(feed: Feed, specs: list[InputSpec], where: str) -> Feed:
    """Check names, dtypes and shapes against the model; the error names the input at fault."""
    expected = {spec.name: spec for spec in specs}
    unknown = sorted(set(feed) - set(expected))
    if unknown:
        raise UserError(f"{where}: '{unknown[0]}' is not an input of the model (inputs: {', '.join(expected)})")
    missing = [name for name in expected if name not in feed]
    if missing:
        raise UserError(f"{where}: input '{missing[0]}' is missing (expected {expected[missing[0]].dtype} {expected[missing[0]].describe_shape()})")
    for name, spec in expected.items():
        _check_array(feed[name], spec, where)
    return {name: feed[name] for name in expected}


def _check_array(array: np.ndarray, spec: InputSpec, where: str) -> None:
    given_dtype = "str" if array.dtype.kind in "US" or array.dtype == object else array.dtype.name
    if given_dtype != spec.dtype:
        raise UserError(f"{where}: input '{spec.name}' expects dtype {spec.dtype}, got {given_dtype}")
    if spec.shape is None:
        return
    if array.ndim != len(spec.shape):
        raise UserError(
            f"{where}: input '{spec.name}' expects shape {spec.describe_shape()} (rank {len(spec.shape)}), "
            f"got {list(array.shape)}"
        )
    for axis, (given, wanted) in enumerate(zip(array.shape, spec.shape)):
        if isinstance(wanted, int) and wanted > 0 and given != wanted:
            raise UserError(
                f"{where}: input '{spec.name}' expects shape {spec.describe_shape()}, got {list(array.shape)} "
                f"(axis {axis} must be {wanted})"
            )
