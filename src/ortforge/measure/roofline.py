"""How close a model runs to what this machine can do: achieved GFLOP/s against its measured fp32 and int8 GEMM peaks.

The peaks are ORT's own: a large fp32 MatMul and a u8 x s8 MatMulInteger with ORT's default session (all cores), timed
once per machine and cached (a second, a few dozen runs). A model's achieved rate is 2 x its MACs (inspect's count, for
the shapes it was measured on) over its median latency; the share of each peak says how much headroom is left and
whether only a lower precision could reach it (a model at 60% of the fp32 peak gains little from fusion or threads,
only from int8).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ortforge.core.cache import cache_root
from ortforge.core.files import atomic_write_text
from ortforge.core.model import from_proto
from ortforge.core.session import SessionConfig

GEMM_SIZE = 1024  # M = N = K: large enough to run at the kernels' peak, small enough for ~10 ms per run
SECONDS_EACH = 0.4  # timed runs per precision, after warm-up
CACHE_PART = "runtime"  # facts about this machine's ORT live beside the other runtime probes


@dataclass(frozen=True)
class Peaks:
    """This machine's ORT GEMM peaks with the default session (all cores)."""

    fp32_gflops: float
    int8_gops: float
    size: int = GEMM_SIZE
    measured_at: float = 0.0

    @property
    def int8_over_fp32(self) -> float:
        return self.int8_gops / self.fp32_gflops if self.fp32_gflops else 0.0


@dataclass(frozen=True)
class Roofline:
    """A model's achieved rate and its share of each peak."""

    macs: int
    latency_ms: float
    achieved_gflops: float
    peaks: Peaks

    @property
    def fp32_share(self) -> float:
        return self.achieved_gflops / self.peaks.fp32_gflops if self.peaks.fp32_gflops else 0.0

    @property
    def int8_share(self) -> float:
        return self.achieved_gflops / self.peaks.int8_gops if self.peaks.int8_gops else 0.0

    def describe(self) -> str:
        """One line: the rate, both shares, and what they leave."""
        return (f"{self.achieved_gflops:.1f} GFLOP/s ({self.macs / 1e6:.0f} M MACs in {self.latency_ms:.2f} ms): "
                f"{self.fp32_share:.0%} of this machine's fp32 GEMM peak ({self.peaks.fp32_gflops:.0f} GFLOP/s), "
                f"{self.int8_share:.0%} of its int8 peak ({self.peaks.int8_gops:.0f} GOP/s)")  # fmt: skip

    def to_dict(self) -> dict:
        return {"macs": self.macs, "latency_ms": self.latency_ms, "achieved_gflops": self.achieved_gflops, "fp32_share": self.fp32_share,
                "int8_share": self.int8_share, "peaks": asdict(self.peaks), "text": self.describe()}  # fmt: skip


def roofline(macs: int, latency_ms: float, peaks: Peaks) -> Roofline | None:
    """The model's place under this machine's peaks (None when its MACs or latency are unknown)."""
    if macs <= 0 or latency_ms <= 0:
        return None
    return Roofline(macs, latency_ms, 2 * macs / (latency_ms * 1e-3) / 1e9, peaks)


def _gemm_model(integer: bool) -> onnx.ModelProto:
    n = GEMM_SIZE
    rng = np.random.default_rng(0)
    if integer:
        weight = numpy_helper.from_array(rng.integers(-127, 128, (n, n), dtype=np.int8), "w")
        node = helper.make_node("MatMulInteger", ["a", "w"], ["y"])
        a_type, y_type = TensorProto.UINT8, TensorProto.INT32
    else:
        weight = numpy_helper.from_array(rng.standard_normal((n, n), dtype=np.float32), "w")
        node = helper.make_node("MatMul", ["a", "w"], ["y"])
        a_type, y_type = TensorProto.FLOAT, TensorProto.FLOAT
    graph = helper.make_graph([node], "gemm", [helper.make_tensor_value_info("a", a_type, [n, n])],
                              [helper.make_tensor_value_info("y", y_type, [n, n])], [weight])  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _rate(integer: bool) -> float:
    """G(FL)OP/s of one GEMM precision: the median of runs over SECONDS_EACH, after warm-up."""
    n = GEMM_SIZE
    session = SessionConfig().build(from_proto(_gemm_model(integer)))
    rng = np.random.default_rng(1)
    feed = {"a": rng.integers(0, 256, (n, n), dtype=np.uint8) if integer else rng.standard_normal((n, n), dtype=np.float32)}
    for _ in range(3):
        session.run(None, feed)
    times: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < SECONDS_EACH or len(times) < 5:
        begin = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - begin)
    return 2 * n**3 / float(np.median(times)) / 1e9


def _cache_file() -> Path:
    from ortforge.core.target import this_target

    return cache_root() / CACHE_PART / f"gemm-peaks-{this_target().id}.json"


_MEASURED: dict[Path, Peaks] = {}  # this process's measurements: a process that moves its cache does not measure again


def machine_peaks(*, refresh: bool = False) -> Peaks:
    """This machine's GEMM peaks, measured once (about two seconds) and then read from the cache."""
    path = _cache_file()
    if not refresh and path.is_file():
        try:
            return Peaks(**json.loads(path.read_text()))
        except (ValueError, TypeError):
            pass  # an older or damaged record: measure again
    peaks = next(iter(_MEASURED.values())) if _MEASURED and not refresh else Peaks(_rate(integer=False), _rate(integer=True), GEMM_SIZE, time.time())
    _MEASURED[path] = peaks
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(asdict(peaks)))
    return peaks
