"""Reading user feeds (.npz, folders of .npz/.npy, ONNX test_data_set_* .pb, Python hooks) and checking them."""

from __future__ import annotations

import importlib
import importlib.util
import itertools
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from ortforge.core.errors import OptionError
from ortforge.data.specs import InputSpec, integer_info, is_ml_dtype, numpy_dtype

Feed = dict[str, Any]  # input name -> an array; a list of arrays for a sequence input; None for an absent optional


def is_hook(source: str) -> bool:
    """'module:function' or 'file.py:function', as opposed to a path (a Windows drive is not a hook)."""
    left, sep, right = source.rpartition(":")
    return bool(sep and left and right.isidentifier() and len(left) > 1 and not Path(source).exists())


def read_source(source: str, specs: list[InputSpec], limit: int | None, option: str = "data") -> Iterator[tuple[str, Feed]]:
    """Feeds from a user source, unvalidated, at most `limit` of them, each with where it came from (the file, or the
    hook and sample number) for error messages; errors name `option` (data, calib)."""
    if is_hook(source):
        return itertools.islice(_read_hook(source, option), limit)
    path = Path(source)
    if not path.exists():
        raise OptionError(option, source, "no such file or folder")
    if path.is_file():
        return iter([(str(path), _read_file_feed(path, specs, option))])
    return itertools.islice(_read_folder(path, specs, option), limit)


def _read_file_feed(path: Path, specs: list[InputSpec], option: str) -> Feed:
    if path.suffix == ".npz":
        return _read_npz(path, option)
    if path.suffix == ".npy" and len(specs) == 1:
        return {specs[0].name: _load_npy(path, option)}
    if path.suffix == ".pb" and len(specs) == 1:
        return {specs[0].name: _read_value(path, specs[0], option)[1]}
    raise OptionError(option, path, "expected an .npz file (one array per input), a folder, or module:function")


def _read_npz(path: Path, option: str) -> Feed:
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (OSError, ValueError) as exc:
        raise OptionError(option, path, f"not a readable .npz file ({exc})") from None


def _load_npy(path: Path, option: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise OptionError(option, path, f"not a readable .npy file ({exc})") from None


def _read_value(path: Path, spec: InputSpec | None, option: str) -> tuple[str, Any]:
    """A .pb file's stored name and value: a TensorProto, or the SequenceProto / OptionalProto the input's kind asks for."""
    kind = spec.kind if spec is not None else "tensor"
    message, read = ((onnx.OptionalProto(), numpy_helper.to_optional) if kind.startswith("optional") else
                     (onnx.SequenceProto(), numpy_helper.to_list) if kind == "sequence" else (onnx.TensorProto(), numpy_helper.to_array))  # fmt: skip
    try:
        message.ParseFromString(path.read_bytes())
        return message.name, read(message)
    except Exception as exc:  # protobuf and onnx raise several types for a bad file
        raise OptionError(option, path, f"not a {type(message).__name__} .pb file ({exc})") from None


def _read_pb_set(folder: Path, specs: list[InputSpec], option: str) -> Feed:
    """An ONNX test_data_set_N folder: input_K.pb, named in the tensor or else by position."""
    files = sorted(folder.glob("input_*.pb"), key=lambda p: int(p.stem.split("_")[-1]) if p.stem.split("_")[-1].isdigit() else 0)
    feed: Feed = {}
    for position, file in enumerate(files):
        stored, values = _read_value(file, specs[position] if position < len(specs) else None, option)
        feed[stored or (specs[position].name if position < len(specs) else file.stem)] = values
    return feed


def _read_folder(folder: Path, specs: list[InputSpec], option: str) -> Iterator[tuple[str, Feed]]:
    sets = sorted(p for p in folder.glob("test_data_set_*") if p.is_dir())
    if sets:
        return ((str(s), _read_pb_set(s, specs, option)) for s in sets)
    if list(folder.glob("input_*.pb")):
        return iter([(str(folder), _read_pb_set(folder, specs, option))])
    npz = sorted(folder.glob("*.npz"))
    if npz:
        return ((str(p), _read_npz(p, option)) for p in npz)
    npy = sorted(folder.glob("*.npy"))
    names = {spec.name for spec in specs}
    if npy and {p.stem for p in npy} >= names:
        return iter([(str(folder), {p.stem: _load_npy(p, option) for p in npy if p.stem in names})])
    if npy and len(specs) == 1:
        return ((str(p), {specs[0].name: _load_npy(p, option)}) for p in npy)
    raise OptionError(option, folder, f"found no test_data_set_*/input_*.pb, *.npz, or *.npy named after the inputs " f"({', '.join(sorted(names))})")


def _read_hook(source: str, option: str) -> Iterator[tuple[str, Feed]]:
    module_name, _, function_name = source.rpartition(":")
    module = import_hook_module(module_name, option, spec=source)
    function = getattr(module, function_name, None)
    if not callable(function):
        raise OptionError(option, source, f"'{module_name}' has no function '{function_name}'")
    try:
        produced = function()
    except Exception as exc:
        raise OptionError(option, source, f"the hook raised {type(exc).__name__}: {exc}") from None
    if isinstance(produced, dict):
        produced = [produced]
    if not isinstance(produced, Iterable):
        raise OptionError(option, source, "the hook must return or yield dicts of input name -> array")
    items = iter(produced)
    for index in itertools.count():
        try:
            feed = next(items)
        except StopIteration:
            return
        except Exception as exc:  # the user's generator failed part-way: one line naming the sample
            raise OptionError(option, source, f"the hook raised {type(exc).__name__} at sample {index}: {exc}") from None
        if not isinstance(feed, dict):
            raise OptionError(option, source, f"item {index} is a {type(feed).__name__}, expected a dict of input name -> array")
        yield f"{source} (sample {index})", feed  # arrays, lists (sequences) or None (absent optionals): validate_feed converts


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


def validate_feed(feed: Feed, specs: list[InputSpec], option: str, where: str) -> Feed:
    """Check names, dtypes and shapes against the model; the error names the option, the sample and the input at fault."""
    expected = {spec.name: spec for spec in specs}
    unknown = sorted(set(feed) - set(expected))
    if unknown:
        raise OptionError(option, where, f"'{unknown[0]}' is not an input of the model (inputs: {', '.join(expected)})")
    missing = [name for name in expected if name not in feed and not expected[name].optional]
    if missing:
        raise OptionError(option, where, f"input '{missing[0]}' is missing (expected {expected[missing[0]].dtype} {expected[missing[0]].describe_shape()})")
    return {name: _checked_value(feed.get(name), spec, option, where) for name, spec in expected.items()}


def _checked_value(value: Any, spec: InputSpec, option: str, where: str) -> Any:
    """The value as ORT will take it for this input's kind, checked element by element."""
    if value is None:
        if spec.optional:
            return None
        raise OptionError(option, where, f"input '{spec.name}' is None; only optional inputs may be absent")
    if spec.sequence:
        if isinstance(value, np.ndarray) or not isinstance(value, (list, tuple)):
            raise OptionError(option, where, f"input '{spec.name}' is a sequence: give a list of arrays, got {type(value).__name__}")
        return [_checked_array(item, spec, option, f"{where}, item {index}") for index, item in enumerate(value)]
    return _checked_array(value, spec, option, where)


def _checked_array(value: Any, spec: InputSpec, option: str, where: str) -> np.ndarray:
    try:
        array = _as_spec_dtype(np.asarray(value), spec)
    except (TypeError, ValueError) as exc:  # ragged lists, objects numpy cannot hold
        raise OptionError(option, where, f"input '{spec.name}' is not an array ({exc})") from None
    _check_array(array, spec, option, where)
    return array


def _as_spec_dtype(array: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Arrays numpy files cannot label: float8 stored as raw bytes (.npz keeps them as uint8 or void), int4 as int8/uint8."""
    target = numpy_dtype(spec.dtype) if spec.dtype != "str" else None
    if target is None or not is_ml_dtype(target) or array.dtype == target:
        return array
    if spec.dtype.startswith("float") and array.dtype.itemsize == 1 and array.dtype.kind in "uV":
        return array.view(target)
    if spec.dtype.startswith(("int", "uint")) and array.dtype.kind in "iu":
        info = integer_info(target)
        if array.size == 0 or (array.min() >= info.min and array.max() <= info.max):
            return array.astype(target)
    return array


def _check_array(array: np.ndarray, spec: InputSpec, option: str, where: str) -> None:
    given_dtype = "str" if array.dtype.kind in "US" or array.dtype == object else array.dtype.name
    if given_dtype != spec.dtype:
        raise OptionError(option, where, f"input '{spec.name}' expects dtype {spec.dtype}, got {given_dtype}")
    if spec.dtype.startswith(("float", "bfloat")) and not np.isfinite(array).all():  # a reference computed on them judges nothing
        bad = int(np.count_nonzero(~np.isfinite(array)))
        raise OptionError(option, where, f"input '{spec.name}' holds {bad} NaN/infinite value(s); accuracy cannot be judged on them")
    if spec.shape is None:
        return
    if array.ndim != len(spec.shape):
        raise OptionError(
            option, where, f"input '{spec.name}' expects shape {spec.describe_shape()} (rank {len(spec.shape)}), "
            f"got {list(array.shape)}"
        )
    for axis, (given, wanted) in enumerate(zip(array.shape, spec.shape)):
        if isinstance(wanted, int) and wanted > 0 and given != wanted:
            raise OptionError(
                option, where, f"input '{spec.name}' expects shape {spec.describe_shape()}, got {list(array.shape)} "
                f"(axis {axis} must be {wanted})"
            )
