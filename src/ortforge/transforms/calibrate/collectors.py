"""Per-tensor collectors whose state does not grow with the number of samples.

`RunningRange` folds per-sample min/max as ORT's MinMax calibrator does; `StreamingHistogram` counts
values into a fixed number of fine bins and, at the end, gives the histogram ORT would have built
from all the values at once (`final`), within one bin.

How the streaming histogram reproduces ORT's one-shot histogram: ORT bins all values of a tensor in
`num_bins` equal bins over [-T, T], T the largest magnitude seen (over [min|x|, max|x|] of |x| for
symmetric percentile). T is only known at the end, so values go into many more, finer bins over
[-R, R] with T <= R < 2T: when a sample reaches beyond R, R doubles and neighbouring fine bins pair
up (exact, and the bin count never grows). At the end the fine counts are re-binned onto ORT's grid
by interpolating the cumulative count, which moves each count by less than one fine bin.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ortforge.transforms.calibrate.options import CalibrationOptions
from ortforge.transforms.calibrate.result import Histogram

# Fine bins per final bin: at least FINE_FACTOR / 2 after the range doubled, so re-binning moves a
# count by well under one final bin; capped so a 2048-bin tensor holds 128 KiB of counts.
FINE_FACTOR = 16
MAX_FINE_BINS = 16384
CHUNK = 1 << 20  # values binned at a time: bounds the temporaries to a few MiB per tensor


@dataclass
class RunningRange:
    """Per-sample min/max folded as ORT's MinMax calibrator does: extremes, or means (moving average).

    With a stride, each chunk of samples gives a range that is merged into the previous chunks' by
    min/max or, with moving average, by an exponential moving average (ORT's `merge_range`).
    """

    moving_average: bool = False
    averaging_constant: float = 0.01
    symmetric: bool = False
    stride: int | None = None
    # The open chunk: extremes, or sums and counts of the non-NaN per-sample values.
    _low: float = np.inf
    _high: float = -np.inf
    _low_sum: float = 0.0
    _high_sum: float = 0.0
    _low_count: int = 0
    _high_count: int = 0
    _in_chunk: int = 0
    merged: tuple[float, float] | None = None

    def update(self, low: float, high: float) -> None:
        """Fold in one sample's min and max of the tensor (NaN ones are skipped, as ORT's nanmin does)."""
        if low > high:  # an empty tensor: ReduceMin gives +inf and ReduceMax -inf
            low = high = np.nan
        if not np.isnan(low):
            self._low, self._low_sum, self._low_count = min(self._low, low), self._low_sum + low, self._low_count + 1
        if not np.isnan(high):
            self._high, self._high_sum, self._high_count = max(self._high, high), self._high_sum + high, self._high_count + 1
        self._in_chunk += 1
        if self.stride is not None and self._in_chunk == self.stride:
            self._close_chunk()

    def range(self) -> tuple[float, float] | None:
        """The final range (closes a partly filled chunk), or None when no sample had a value."""
        if self._in_chunk:
            self._close_chunk()
        return self.merged

    def state_size(self) -> int:
        """Numbers held: constant, whatever the sample count."""
        return 9

    def _close_chunk(self) -> None:
        chunk = self._chunk_range()
        self._low, self._high, self._low_sum, self._high_sum = np.inf, -np.inf, 0.0, 0.0
        self._low_count = self._high_count = self._in_chunk = 0
        if chunk is None:
            return
        if self.merged is None:
            self.merged = chunk
        elif self.moving_average:
            rate = self.averaging_constant
            self.merged = tuple(_f32(old + rate * (new - old)) for old, new in zip(self.merged, chunk))  # type: ignore[assignment]
        else:
            self.merged = (min(self.merged[0], chunk[0]), max(self.merged[1], chunk[1]))

    def _chunk_range(self) -> tuple[float, float] | None:
        if not self._low_count or not self._high_count:
            return None
        if self.moving_average:
            low, high = _f32(self._low_sum / self._low_count), _f32(self._high_sum / self._high_count)
        else:
            low, high = self._low, self._high
        if self.symmetric:
            magnitude = max(abs(low), abs(high))
            return (-magnitude, magnitude)
        return (low, high)


@dataclass
class StreamingHistogram:
    """Counts of a tensor's values (or magnitudes) in a fixed number of fine bins over [-limit, limit].

    The limit starts at the first sample's largest magnitude and doubles when a later one reaches
    beyond it, merging neighbouring bins in pairs: memory is `bins` integers, whatever the data.
    """

    bins: int
    absolute: bool = False  # histogram |x| over [0, limit], as ORT does for symmetric percentile
    counts: np.ndarray = field(init=False)
    limit: float = 0.0
    zeros_before_limit: int = 0  # values seen while everything so far was exactly 0 (no limit yet)
    low: float = np.inf  # extremes of the raw (signed) values
    high: float = -np.inf
    low_magnitude: float = np.inf  # smallest |x|: the first edge of ORT's |x| histogram
    zeros: int = 0  # exact zeros (ReLU outputs, padding): placed in ORT's bin exactly, not spread
    total: int = 0
    skipped: int = 0  # NaN and infinite values, which ORT's histograms cannot hold either

    def __post_init__(self) -> None:
        if self.bins % 4:
            raise ValueError("fine bin count must be a multiple of 4 (bins merge in pairs around 0)")
        self.counts = np.zeros(self.bins, np.int64)

    def update(self, values: np.ndarray) -> None:
        """Fold one sample's values in: widen (merging bins) if needed, then count them."""
        flat = np.asarray(values).reshape(-1)
        if flat.size == 0:
            return
        low, high = flat.min(), flat.max()
        if not (np.isfinite(low) and np.isfinite(high)):
            finite = np.isfinite(flat)
            self.skipped += int(flat.size - np.count_nonzero(finite))
            flat = flat[finite]
            if flat.size == 0:
                return
            low, high = flat.min(), flat.max()
        self.low, self.high = min(self.low, float(low)), max(self.high, float(high))
        self._widen(max(abs(float(low)), abs(float(high))))
        for start in range(0, flat.size, CHUNK):
            self._count(flat[start : start + CHUNK])
        self.total += int(flat.size)

    def state_size(self) -> int:
        """Numbers held: the fine counts plus a few scalars, whatever the sample count."""
        return int(self.counts.size) + 8

    def fine_edges(self) -> np.ndarray:
        start = 0.0 if self.absolute else -self.limit
        return np.linspace(start, self.limit, self.bins + 1)

    def _widen(self, magnitude: float) -> None:
        if magnitude == 0.0:
            return
        if self.limit == 0.0:
            self.limit = magnitude
            if self.zeros_before_limit:
                self.counts[self._zero_bin()] += self.zeros_before_limit
                self.zeros_before_limit = 0
            return
        while self.limit < magnitude:
            self.limit *= 2.0
            pairs = self.counts.reshape(-1, 2).sum(axis=1)
            self.counts[:] = 0
            # Signed bins are centred on 0, so the old range lands in the middle half of the new one.
            offset = 0 if self.absolute else self.bins // 4
            self.counts[offset : offset + self.bins // 2] = pairs

    def _zero_bin(self) -> int:
        return 0 if self.absolute else self.bins // 2

    def _count(self, chunk: np.ndarray) -> None:
        values = chunk.astype(np.float64)
        if self.absolute:
            np.abs(values, out=values)
            self.low_magnitude = min(self.low_magnitude, float(values.min()))
        self.zeros += int(values.size - np.count_nonzero(values))
        if self.limit == 0.0:  # every value so far is 0
            self.zeros_before_limit += values.size
            return
        values *= self.bins / (self.limit if self.absolute else 2.0 * self.limit)
        np.floor(values, out=values)
        index = values.astype(np.intp)
        # Offsetting after the floor keeps 0 exactly on the edge of the zero bin, whatever the rounding.
        index += self._zero_bin()
        np.clip(index, 0, self.bins - 1, out=index)  # the top edge belongs to the last bin
        self.counts += np.bincount(index, minlength=self.bins)

    def final(self, num_bins: int) -> Histogram | None:
        """The histogram ORT would have built from the same values: `num_bins` bins over its range."""
        if self.total == 0:
            return None
        if self.absolute:
            first, last = np.float32(self.low_magnitude), np.float32(max(abs(self.low), abs(self.high)))
            support = (float(first), float(last))
        else:
            magnitude = np.float32(max(abs(self.low), abs(self.high)))
            first, last = -magnitude, magnitude
            support = (self.low, self.high)
        # np.histogram makes the edges, so they match ORT's to the bit (float32, degenerate ranges widened).
        edges = np.histogram(np.empty(0, np.float32), num_bins, range=(first, last))[1]
        if self.limit == 0.0 or support[0] == support[1]:
            # One value only (all zeros, say): every count goes to the bin holding it.
            counts = np.histogram(np.array([support[0]], np.float32), edges)[0] * self.total
        else:
            zero_bin = np.histogram(np.zeros(1, np.float32), edges)[0]
            counts = self._rebinned(edges.astype(np.float64), support) + zero_bin * self.zeros
        return Histogram(counts.astype(np.int64), edges, float(np.float32(self.low)), float(np.float32(self.high)))

    def _rebinned(self, edges: np.ndarray, support: tuple[float, float]) -> np.ndarray:
        """Counts on `edges`, from the fine counts' cumulative sum interpolated at each edge.

        Within a fine bin the values are taken as spread evenly over the part of it the data
        reaches (so the outermost bins do not leak counts beyond the data's extremes).
        """
        fine = self.fine_edges()
        counts = self.counts.copy()
        counts[self._zero_bin()] -= self.zeros  # placed exactly by the caller
        cumulative = np.concatenate(([0], np.cumsum(counts)))
        index = np.clip(np.searchsorted(fine, edges, side="right") - 1, 0, self.bins - 1)
        start = np.maximum(fine[index], support[0])
        end = np.minimum(fine[index + 1], support[1])
        width = end - start
        inside = np.clip((edges - start) / np.where(width > 0, width, 1.0), 0.0, 1.0)
        fraction = np.where(width > 0, inside, (edges >= end).astype(np.float64))
        below = cumulative[index] + counts[index] * fraction
        below[0], below[-1] = 0, cumulative[-1]  # all data lies within the outer edges
        return np.diff(np.round(below).astype(np.int64))


def make_collector(options: CalibrationOptions) -> RunningRange | StreamingHistogram:
    """The collector one tensor gets for `options`: a running range for minmax, else a histogram."""
    if options.method == "minmax":
        return RunningRange(options.moving_average, options.averaging_constant, options.is_symmetric, options.stride)
    fine = min(FINE_FACTOR * options.bins, max(MAX_FINE_BINS, 4 * options.bins))
    return StreamingHistogram(fine + (-fine) % 4, absolute=options.absolute_histogram)


def _f32(value: float) -> float:
    return float(np.float32(value))
