"""GPU int8 through TensorRT: ortforge's calibration written as ORT's TensorRT calibration table.

TensorRT quantizes a float model itself when given a table of activation ranges; the model stays
float. Ranges are symmetric (TensorRT int8 activations are symmetric, ORT #6732) and come from the
same bounded-memory calibration as CPU int8. The folder written holds the model, the table and a
session config that turns the TensorRT EP's int8 mode on with that table.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .data import GENERATED_WARNING, FeedSet
from .errors import UserError
from .model import Model, atomic_write_text, save_model
from .session import ProviderSpec, SessionConfig
from .transforms.calibrate import CalibrationOptions, calibrate

TABLE_FILE = "calibration.flatbuffers"
CONFIG_FILE = "session.json"
MODEL_FILE = "model.onnx"


@dataclass
class TensorRTInt8:
    folder: str
    tensors: int
    samples: int
    config: SessionConfig
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"folder": self.folder, "tensors": self.tensors, "samples": self.samples, "config": self.config.to_dict(), "notes": self.notes}


def tensorrt_config(folder: Path) -> SessionConfig:
    """TensorRT with int8 on and the table from `folder`, then CUDA and the CPU as fallbacks."""
    options = {
        "trt_int8_enable": "True",
        "trt_int8_calibration_table_name": TABLE_FILE,
        "trt_int8_use_native_calibration_table": "False",
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(folder.resolve()),  # TensorRT looks for the table here
    }
    return SessionConfig(providers=[ProviderSpec("TensorrtExecutionProvider", options), ProviderSpec("CUDAExecutionProvider"), ProviderSpec("CPUExecutionProvider")])


def read_table(path: Path) -> dict[str, float]:
    """Tensor name -> the range TensorRT will read (to check a written table)."""
    from onnxruntime.quantization.CalTableFlatBuffers.TrtTable import TrtTable

    table = TrtTable.GetRootAsTrtTable(path.read_bytes(), 0)
    entries = (table.Dict(index) for index in range(table.DictLength()))
    return {entry.Key().decode(): float(entry.Value()) for entry in entries}


def write_tensorrt_int8(model: Model, feeds: FeedSet, folder: str | os.PathLike[str], method: str = "minmax") -> TensorRTInt8:
    """Calibrate symmetrically, write model + TensorRT table + session config into `folder`."""
    from onnxruntime.quantization import write_calibration_table

    out = Path(folder)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: --target tensorrt writes a folder (model, calibration table, session config); this is a file")
    out.mkdir(parents=True, exist_ok=True)
    result = calibrate(model, feeds, CalibrationOptions(method=method, symmetric=True))
    staging = out / ".ortforge-table"
    staging.mkdir(exist_ok=True)
    try:
        write_calibration_table(dict(result.to_tensors_data().items()), dir=str(staging))
        for name in (TABLE_FILE, "calibration.cache", "calibration.json"):
            os.replace(staging / name, out / name)
    finally:
        for leftover in staging.iterdir():
            leftover.unlink()
        staging.rmdir()
    save_model(model.proto, out / MODEL_FILE, source=model)
    config = tensorrt_config(out)
    atomic_write_text(out / CONFIG_FILE, config.to_json())
    notes = [GENERATED_WARNING] if feeds.generated else []
    notes.append(f"run it with `ortforge bench {out / MODEL_FILE} {out / CONFIG_FILE}` on a machine with the TensorRT EP")
    return TensorRTInt8(str(out), len(result.ranges), result.samples, config, notes)
