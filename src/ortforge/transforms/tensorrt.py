"""GPU int8 through TensorRT: ortforge's calibration written as ORT's TensorRT calibration table.

TensorRT quantizes a float model itself when given a table of activation ranges; the model stays
float. Ranges are symmetric (TensorRT int8 activations are symmetric, ORT #6732) and come from the
same bounded-memory calibration as CPU int8. `ortforge quantize --target tensorrt` writes the model, the table
and a session config that turns the TensorRT EP's int8 mode on with that table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ortforge.core.model import Model
from ortforge.core.session import ProviderSpec, SessionConfig
from ortforge.data import FeedSet
from ortforge.transforms.calibrate import (
    CalibrationOptions,
    CalibrationResult,
    calibrate,
)

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


def calibration_table(model: Model, feeds: FeedSet, method: str = "minmax") -> tuple[dict[str, bytes], CalibrationResult]:
    """Symmetric ranges from ortforge's calibration, as the files ORT's `write_calibration_table` makes (name -> bytes)."""
    import tempfile

    from onnxruntime.quantization import write_calibration_table

    result = calibrate(model, feeds, CalibrationOptions(method=method, symmetric=True))
    with tempfile.TemporaryDirectory(prefix="ortforge-table-") as folder:
        write_calibration_table(dict(result.to_tensors_data().items()), dir=folder)
        files = {name: (Path(folder) / name).read_bytes() for name in (TABLE_FILE, "calibration.cache", "calibration.json")}
    return files, result
