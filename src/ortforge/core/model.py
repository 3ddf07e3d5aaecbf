"""Loading, gating, normalising, hashing and atomically saving ONNX models.

A `Model` keeps the ModelProto *without* external data loaded (large weights stay on disk) and knows
how to hand itself to ORT: by path when unchanged, by bytes plus the external-data folder otherwise.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from ortforge.core import runtime
from ortforge.core.errors import OptionError, UserError, first_line
from ortforge.core.graph import subgraphs

# Leave headroom for the graph itself when deciding whether weights must go to external data.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000
KEEP_EXTERNAL_BYTES = 256 << 20  # a proto with this much in external data is saved with external data too
GATED_DOMAINS = ("ai.onnx", "ai.onnx.ml")
# Ops ORT folds into initializers while loading, so they need no kernel.
KERNEL_FREE_OPS = {"Constant"}
EXTERNAL_DATA_CONFIG_KEY = "session.model_external_initializers_file_folder_path"


@dataclass
class Model:
    """An ONNX model ready for ORT: gated against the installed ORT, harmlessly normalised."""

    proto: onnx.ModelProto
    path: Path | None = None
    changes: list[str] = field(default_factory=list)
    # Folder that external-data locations are relative to; the model file's folder by default.
    data_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.data_dir is None and self.path is not None:
            self.data_dir = self.path.parent

    @property
    def name(self) -> str:
        return self.path.name if self.path else "<in-memory model>"

    @property
    def base_dir(self) -> Path | None:
        return self.data_dir

    def external_data_files(self) -> list[Path]:
        """Files holding this model's external weights (relative to the model's folder)."""
        if self.base_dir is None:
            return []
        return sorted({self.base_dir / location for location in _external_locations(self.proto)})

    def ort_source(self) -> tuple[bytes | str, dict[str, str]]:
        """What to give `InferenceSession`: a path when the file on disk is exact, else bytes.

        Returns the model and the session config entries ORT then needs to find external data.
        """
        if self.path is not None and not self.changes:
            return str(self.path), {}
        if weight_bytes(self.proto) > EXTERNAL_DATA_THRESHOLD:
            raise UserError(f"{self.name}: model is over 2 GB in memory; save it with external data first")
        entries = {}
        if self.base_dir is not None and _external_locations(self.proto):
            entries[EXTERNAL_DATA_CONFIG_KEY] = str(self.base_dir)
        return self.proto.SerializeToString(), entries

    def content_hash(self) -> str:
        """sha256 of the model as ORT will see it, external data included."""
        digest = hashlib.sha256()
        digest.update(self.proto.SerializeToString(deterministic=True))
        for data_file in self.external_data_files():
            with open(data_file, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        return digest.hexdigest()


def load_model(path: str | os.PathLike[str], *, check: bool = True) -> Model:
    """Read, check and gate a model file; normalise what is harmless and record what changed."""
    model_path = Path(path)
    proto = _read_proto(model_path)
    model = Model(proto=proto, path=model_path)
    _check_external_data(model)
    if check:
        _run_checker(model)
    gate(model)
    model.changes.extend(normalise(proto))
    return model


def from_proto(proto: onnx.ModelProto, *, base_dir: Path | None = None) -> Model:
    """Wrap an in-memory model (e.g. a transform's output); external data resolves from base_dir."""
    model = Model(proto=proto, data_dir=base_dir)
    gate(model)
    return model


def _read_proto(path: Path) -> onnx.ModelProto:
    if not path.exists():
        raise UserError(f"{path}: model file not found")
    if path.is_dir():
        raise UserError(f"{path}: is a folder, not an .onnx model file")
    data = path.read_bytes()
    if not data:
        raise UserError(f"{path}: file is empty, not an ONNX model")
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except DecodeError:
        if _looks_like_text(data):
            raise UserError(f"{path}: not an ONNX model (it is a text file)") from None
        raise UserError(f"{path}: truncated or corrupt ONNX file (protobuf could not be parsed)") from None
    if not proto.HasField("graph") or proto.ir_version == 0:
        kind = "it is a text file" if _looks_like_text(data) else "no graph or IR version in it"
        raise UserError(f"{path}: not an ONNX model ({kind})")
    return proto


def _looks_like_text(data: bytes) -> bool:
    sample = data[:4096]
    try:
        text = sample.decode("utf-8")
    except UnicodeDecodeError:
        return False
    printable = sum(ch.isprintable() or ch in "\r\n\t" for ch in text)
    return printable >= 0.95 * max(len(text), 1)


def _external_locations(proto: onnx.ModelProto) -> set[str]:
    locations = set()
    for tensor in iter_tensors(proto):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            entries = {entry.key: entry.value for entry in tensor.external_data}
            locations.add(entries.get("location", ""))
    return locations


def weight_bytes(proto: onnx.ModelProto) -> int:
    """Bytes of tensor data held inside the proto (external data not counted).

    Estimated field by field because `ByteSize()` itself fails on protos over 2 GB.
    """
    total = 0
    for tensor in iter_tensors(proto):
        total += len(tensor.raw_data) + 8 * (len(tensor.int64_data) + len(tensor.double_data) + len(tensor.uint64_data))
        total += 4 * (len(tensor.float_data) + len(tensor.int32_data)) + sum(map(len, tensor.string_data))
    return total


def loaded_copy(model: Model) -> onnx.ModelProto:
    """A copy of the model's proto with any external weights read in (for tools that need them in memory)."""
    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    if model.base_dir is not None and model.external_data_files():
        onnx.load_external_data_for_model(proto, str(model.base_dir))
    return proto


def fresh_name(base: str, taken: set[str]) -> str:
    """`base`, or `base_1`, `base_2`, ... whichever is not yet in `taken`; recorded as taken."""
    name, index = base, 0
    while name in taken:
        index += 1
        name = f"{base}_{index}"
    taken.add(name)
    return name


def model_size(model: Model) -> int:
    """Bytes on disk the model needs: weights held in the proto plus its external data files."""
    return weight_bytes(model.proto) + sum(path.stat().st_size for path in model.external_data_files())


def iter_tensors(proto: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every initializer and tensor attribute, subgraphs included."""
    for graph in iter_graphs(proto.graph):
        yield from graph.initializer
        for node in graph.node:
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    yield attribute.t
                yield from attribute.tensors


def _check_external_data(model: Model) -> None:
    """Every external tensor's file must exist, stay inside the model's folder and be long enough."""
    assert model.base_dir is not None
    base = model.base_dir.resolve()
    for tensor in iter_tensors(model.proto):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        entries = {entry.key: entry.value for entry in tensor.external_data}
        location = entries.get("location", "")
        data_path = (base / location).resolve()
        if base not in data_path.parents:
            raise UserError(f"{model.path}: external data '{location}' of '{tensor.name}' lies outside the model's folder")
        if not data_path.is_file():
            raise UserError(
                f"{model.path}: external data file '{location}' (for initializer '{tensor.name}') is missing; "
                f"it must sit next to the model"
            )
        end = int(entries.get("offset", 0)) + int(entries.get("length", 0))
        if end > data_path.stat().st_size:
            raise UserError(f"{model.path}: external data file '{location}' is truncated (needs {end} bytes for '{tensor.name}')")


def model_checker_problem(model: Model) -> str | None:
    """`checker_problem` of a loaded model: by path where its weights are in external data (the checker reads them)."""
    return checker_problem(str(model.path) if model.path is not None and _external_locations(model.proto) else model.proto)


def _run_checker(model: Model) -> None:
    problem = model_checker_problem(model)
    if problem is not None:
        raise UserError(f"{model.name}: onnx.checker rejects the model: {problem}", hint="check=False (--no-check) loads it anyway")


# onnx.checker's words for an op it has no schema for at the model's opset.
UNKNOWN_OP = re.compile(r"No Op registered for (\w+) with domain_version of (\d+)")


def checker_problem(source: onnx.ModelProto | str, *, full: bool = False) -> str | None:
    """onnx.checker's first complaint about a model (a proto, or a path for models with external data), or None.

    ORT registers ops in the default domain that onnx does not know at every opset (its LayerNormalization
    below opset 17, SimplifiedLayerNormalization): models ORT itself writes and loads use them. A complaint
    about such an op, where this ORT has a kernel for it at that version, is not a problem."""
    try:
        onnx.checker.check_model(source, full_check=full)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        unknown = UNKNOWN_OP.search(str(exc))
        if unknown:
            providers = runtime.kernel_providers("ai.onnx", unknown.group(1), int(unknown.group(2)))
            # Where this build cannot list its kernels, ORT loading the model is the answer.
            if providers or (providers is None and runtime.loads_model(source)):
                return None
        return first_line(exc)
    return None


def iter_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """The graph and every subgraph nested in If/Loop/Scan attributes, depth first."""
    yield graph
    for node in graph.node:
        for _, subgraph in subgraphs(node):
            yield from iter_graphs(subgraph)


def iter_nodes(proto: onnx.ModelProto) -> Iterator[onnx.NodeProto]:
    for graph in iter_graphs(proto.graph):
        yield from graph.node


def require_in_model(option: str, names: Iterable[str], *protos: onnx.ModelProto, nodes: bool = True, op_types: bool = True) -> None:
    """Every name an option lists is a node (or op type) of one of `protos`, subgraphs included: a typo is one line
    before any work, not a silently ignored option."""
    known: set[str] = set()
    for proto in protos:
        for node in iter_nodes(proto):
            known |= ({node.name} if nodes else set()) | ({node.op_type} if op_types else set())
    unknown = sorted(set(names) - known)
    if unknown:
        what = "node or op type" if nodes and op_types else "node" if nodes else "op type"
        raise OptionError(option, unknown[0], f"no {what} of that name in the model")


def opset_versions(proto: onnx.ModelProto) -> dict[str, int]:
    """Domain -> imported opset version, with the default domain spelled 'ai.onnx'."""
    return {(entry.domain or "ai.onnx"): entry.version for entry in proto.opset_import}


def gate(model: Model) -> None:
    """Refuse, before ORT sees it, a model the installed ORT cannot load (IR, opsets, missing kernels)."""
    proto = model.proto
    limits = runtime.limits()
    ort_name = f"onnxruntime {runtime.version()}"
    if proto.ir_version > limits.max_ir_version:
        raise UserError(
            f"{model.name}: IR version {proto.ir_version} is newer than {ort_name} supports (at most {limits.max_ir_version})",
            hint="re-export it with an older onnx package, or upgrade onnxruntime",
        )
    opsets = opset_versions(proto)
    for domain, highest in limits.max_opset.items():
        if opsets.get(domain, 0) > highest:
            raise UserError(
                f"{model.name}: opset {domain} {opsets[domain]} is newer than {ort_name} supports (at most {highest})",
                hint="convert it with onnx.version_converter, or upgrade onnxruntime",
            )
    _gate_kernels(model, opsets, ort_name)


def _gate_kernels(model: Model, opsets: dict[str, int], ort_name: str) -> None:
    local_functions = {(f.domain, f.name) for f in model.proto.functions}
    for node in iter_nodes(model.proto):
        domain = node.domain or "ai.onnx"
        if node.op_type in KERNEL_FREE_OPS or (node.domain, node.op_type) in local_functions:
            continue
        if domain not in GATED_DOMAINS:
            if runtime.has_kernel(domain, node.op_type) is False:  # a custom op: its library would have to be registered
                raise UserError(f"{model.name}: node '{node.name or node.op_type}' ({domain}:{node.op_type}): no execution provider in {ort_name} "
                                "has this operator", hint="a custom op needs its library registered with the session, which ortforge does not do")  # fmt: skip
            continue
        try:
            schema = onnx.defs.get_schema(node.op_type, opsets.get(domain, 1), "" if domain == "ai.onnx" else domain)
        except onnx.defs.SchemaError:
            continue  # unknown to this onnx: let ORT judge it
        if schema.has_function or schema.has_context_dependent_function:
            continue  # ORT expands function ops it has no kernel for
        if runtime.kernel_providers(domain, node.op_type, schema.since_version) == set():  # None: ORT cannot say
            raise UserError(
                f"{model.name}: node '{node.name or node.op_type}' ({node.op_type}-{schema.since_version}): "
                f"no execution provider in {ort_name} has a kernel for this operator version",
                hint=f"convert the model to a newer opset (it imports {domain} {opsets.get(domain, 1)}) with onnx.version_converter",
            )


def normalise(proto: onnx.ModelProto) -> list[str]:
    """Harmless in-place fixes; returns a line per kind of change."""
    changes = []
    named = _name_unnamed_nodes(proto)
    if named:
        changes.append(f"gave {named} unnamed node(s) unique names")
    dropped = _drop_initializer_inputs(proto)
    if dropped:
        changes.append(f"dropped {dropped} initializer(s) listed as graph inputs (IR < 4), IR version set to 4")
    return changes


def _name_unnamed_nodes(proto: onnx.ModelProto) -> int:
    taken = {node.name for node in iter_nodes(proto) if node.name}
    count = 0
    for node in iter_nodes(proto):
        if node.name:
            continue
        index = count
        while f"{node.op_type}_{index}" in taken:
            index += 1
        node.name = f"{node.op_type}_{index}"
        taken.add(node.name)
        count += 1
    return count


def _drop_initializer_inputs(proto: onnx.ModelProto) -> int:
    """IR < 4 lists every initializer as an input; ORT then treats weights as overridable inputs."""
    if proto.ir_version >= 4:
        return 0
    initializers = {tensor.name for tensor in proto.graph.initializer}
    kept = [value for value in proto.graph.input if value.name not in initializers]
    dropped = len(proto.graph.input) - len(kept)
    if dropped:
        del proto.graph.input[:]
        proto.graph.input.extend(kept)
        proto.ir_version = 4
    return dropped


def save_model(
    proto: onnx.ModelProto,
    path: str | os.PathLike[str],
    *,
    source: Model | None = None,
    external_data: bool | None = None,
    data_dir: Path | None = None,
) -> Path:
    """Write atomically (temporary folder, then rename); never over the source model or its data.

    External data (resolved from `data_dir`, else the source's folder) is used when asked or when the
    weights approach protobuf's 2 GB limit; it is streamed tensor by tensor, so a model over 2 GB is
    never held in memory whole. The given proto is left referring to the saved file's external data.
    """
    out = Path(path)
    if out.exists() and out.is_dir():
        raise UserError(f"{out}: is a folder; give a file name such as {out / 'model.onnx'}")
    data_dir = data_dir if data_dir is not None else (source.base_dir if source is not None else None)
    if source is not None:
        _refuse_overwrite(out, source)
    if external_data is None:  # near protobuf's limit, or mostly on disk already (a big model's result): not loaded whole
        on_disk = external_bytes(proto)
        external_data = weight_bytes(proto) + on_disk > EXTERNAL_DATA_THRESHOLD or on_disk > KEEP_EXTERNAL_BYTES
    if not external_data and data_dir is not None and _external_locations(proto):
        onnx.load_external_data_for_model(proto, str(data_dir))  # small enough to hold: saved in one file
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".ortforge-", dir=out.parent))
    try:
        data_name = out.name + ".data"
        if external_data:
            stream_external_data(proto, staging / data_name, data_dir)
        onnx.save_model(proto, str(staging / out.name))
        os.chmod(staging / out.name, _default_mode())
        if external_data:
            os.chmod(staging / data_name, _default_mode())
            os.replace(staging / data_name, out.parent / data_name)
        os.replace(staging / out.name, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def _default_mode() -> int:
    """The mode a new file gets from the user's umask (temporary files are created 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def external_bytes(proto: onnx.ModelProto) -> int:
    """Bytes of tensor data the proto keeps in external files."""
    return sum(int(_external_entries(t).get("length", 0)) for t in iter_tensors(proto) if t.data_location == onnx.TensorProto.EXTERNAL)


def _external_entries(tensor: onnx.TensorProto) -> dict[str, str]:
    return {entry.key: entry.value for entry in tensor.external_data}


def stream_external_data(proto: onnx.ModelProto, data_file: Path, data_dir: Path | None, threshold: int = 1024) -> None:
    """Put every tensor's bytes into `data_file`, one tensor at a time: tensors already external are copied from their
    file (under `data_dir`) in blocks, in-memory raw data of `threshold` bytes or more is written out. Afterwards the
    proto refers to `data_file` (by name, beside the model) for all of them and holds no large weights."""
    offset = 0
    with open(data_file, "wb") as out:
        for tensor in iter_tensors(proto):
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                entries = _external_entries(tensor)
                if data_dir is None:
                    raise UserError(f"'{tensor.name}': its external data '{entries.get('location')}' has no folder to be read from")
                length = _copy_region(data_dir / entries["location"], int(entries.get("offset", 0)), entries.get("length"), out)
            elif tensor.HasField("raw_data") and len(tensor.raw_data) >= threshold:
                length = out.write(tensor.raw_data)
                tensor.ClearField("raw_data")
            else:
                continue
            del tensor.external_data[:]
            for key, value in (("location", data_file.name), ("offset", str(offset)), ("length", str(length))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
            tensor.data_location = onnx.TensorProto.EXTERNAL
            offset += length


def _copy_region(path: Path, start: int, length: str | None, out: object, block: int = 64 << 20) -> int:
    """Copy `length` bytes (to the end when None) of `path` from `start` into the open file `out`; bytes copied."""
    copied = 0
    with open(path, "rb") as handle:
        handle.seek(start)
        left = int(length) if length is not None else path.stat().st_size - start
        while left > 0:
            chunk = handle.read(min(block, left))
            if not chunk:
                raise UserError(f"{path}: external data ends before its tensors do")
            out.write(chunk)  # type: ignore[attr-defined]
            copied += len(chunk)
            left -= len(chunk)
    return copied


def _refuse_overwrite(out: Path, source: Model) -> None:
    protected = ([source.path] if source.path else []) + source.external_data_files()
    for guarded in protected:
        if guarded.exists() and out.exists() and os.path.samefile(out, guarded):
            raise UserError(f"{out}: refusing to overwrite the input model; choose another output path")
        if (out.parent / (out.name + ".data")).exists() and guarded.exists() and os.path.samefile(out.parent / (out.name + ".data"), guarded):
            raise UserError(f"{out}: its external data would overwrite the input's '{guarded.name}'; choose another output path")
