"""How to calibrate: the methods, ORT's defaults for each, and the options a caller sets."""

from __future__ import annotations

from dataclasses import dataclass

from onnx import TensorProto

from ortforge.core.errors import UserError

METHODS = ("minmax", "entropy", "percentile", "distribution", "mse")
HISTOGRAM_METHODS = ("entropy", "percentile", "distribution", "mse")
SCENARIOS = ("same", "p3")
# ORT's defaults, as `onnxruntime.quantization.calibrate.create_calibrator` sets them per method.
DEFAULT_NUM_BINS = {"entropy": 128, "percentile": 2048, "distribution": 2048, "mse": 2048}
DEFAULT_SYMMETRIC = {"minmax": False, "entropy": False, "percentile": True, "distribution": False, "mse": False}
# mse is ortforge's own (ORT has none): per tensor, the clipped range whose 8-bit rounding plus clipping error over the
# histogram is least; minmax's range is among those tried, so it is never worse than minmax by that measure.
MIN_DISTRIBUTION_BINS = 512  # ORT refuses fewer for the distribution method
CALIBRATED_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16)  # what ORT's calibrator looks at


@dataclass(frozen=True)
class CalibrationOptions:
    """How to calibrate; None means ORT's default for the method (as `quantize_static` would use)."""

    method: str = "minmax"
    num_bins: int | None = None  # entropy 128, percentile 2048, distribution 2048
    num_quantized_bins: int = 128  # entropy: bins of the quantized distribution in the KL search
    percentile: float = 99.999
    symmetric: bool | None = None  # percentile: True (histogram of |x|); minmax: False; ORT ignores it otherwise
    moving_average: bool = False  # minmax: mean of per-sample min/max instead of the extremes
    averaging_constant: float = 0.01  # minmax with stride: weight of each new chunk's range
    stride: int | None = None  # minmax: ORT's CalibStridedMinMax, chunks of this many samples
    scenario: str = "same"  # distribution: 'same' or 'p3' (float8: values ~ x**3)
    op_types: tuple[str, ...] | None = None  # None: every op type ORT can quantize

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise UserError(f"calibration method '{self.method}' is not one of {', '.join(METHODS)}")
        if self.num_bins is not None and self.num_bins < 2:
            raise UserError(f"num_bins must be at least 2, got {self.num_bins}")
        if self.method == "distribution" and self.bins < MIN_DISTRIBUTION_BINS:
            raise UserError(f"the distribution method needs num_bins >= {MIN_DISTRIBUTION_BINS}, got {self.bins}")
        if self.method == "entropy" and not 2 <= self.num_quantized_bins <= self.bins:
            raise UserError(f"num_quantized_bins must lie in [2, num_bins={self.bins}], got {self.num_quantized_bins}")
        if not 0 <= self.percentile <= 100:
            raise UserError(f"percentile must lie in [0, 100], got {self.percentile}")
        if not 0 <= self.averaging_constant <= 1:
            raise UserError(f"averaging_constant must lie in [0, 1], got {self.averaging_constant}")
        if self.stride is not None and (self.method != "minmax" or self.stride < 1):
            raise UserError("stride (CalibStridedMinMax) is a positive sample count, for the minmax method only")
        if self.scenario not in SCENARIOS:
            raise UserError(f"scenario '{self.scenario}' is not one of {', '.join(SCENARIOS)}")

    @property
    def bins(self) -> int:
        """Histogram bins, ORT's default for the method when not given (0 for minmax)."""
        return self.num_bins if self.num_bins is not None else DEFAULT_NUM_BINS.get(self.method, 0)

    @property
    def is_symmetric(self) -> bool:
        return DEFAULT_SYMMETRIC[self.method] if self.symmetric is None else self.symmetric

    @property
    def absolute_histogram(self) -> bool:
        """Whether ORT histograms |x| (symmetric percentile) rather than x."""
        return self.method == "percentile" and self.is_symmetric
