"""GPTQ as a weight fit: each chosen MatMul's weights are quantized one input channel at a time, and each channel's
rounding error is pushed onto the channels not yet quantized, weighted by the inverse Hessian of the calibration
activations (Frantar et al., 2022), so that X W changes least; the same block quantizer as round-to-nearest then packs
the fitted weights.

Written here because ORT 1.31's GPTQ (its bundled neural-compressor port) fits nothing: it takes the lower half of an
upper-triangular factor, so no error is carried and the result equals round-to-nearest (`python bench/gptq_fit.py`:
relative output error on held-out correlated activations 0.0808 for both, this fit 0.0586, 0.0618 once packed), and
its entry point imports torch for every calibration feed. The packer derives each block's grid again from the fitted weights (min/max), which rounds
again where a block's extremes moved; the judge sees what was packed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from ortforge.analysis.tap import passes, tap_session
from ortforge.core.errors import OptionError
from ortforge.core.model import Model
from ortforge.core.values import ort_feed
from ortforge.data import Feed
from ortforge.transforms.weight_only.graph import _lookup
from ortforge.transforms.weight_only.options import WeightOnlyOptions
from ortforge.transforms.weight_only.sites import _Site, _weight_index

DAMPING = 0.01  # share of the Hessian's mean diagonal added to it (ORT's and the paper's default)
COLUMN_BLOCK = 128  # input channels updated together in one GPTQ step (the paper's lazy batch)
HESSIAN_BYTES = 1 << 30  # Hessians held at once (a 7B decoder's would take ~44 GB together): more passes over the data


def fit_gptq(model: Model, proto: onnx.ModelProto, chosen: list[_Site], options: WeightOnlyOptions, calibration: Sequence[Feed]) -> list[str]:
    """Replace the float weights of the chosen top-level MatMuls in `proto` by GPTQ's fit to `calibration`; notes of
    what was fitted and what was left to round-to-nearest. Hessians are collected in passes of at most HESSIAN_BYTES."""
    if not calibration:
        raise OptionError("algorithm", "gptq", "GPTQ fits weights to calibration activations, and none were given",
                          hint="give calibration data: --calib for quantize, --data for tune")  # fmt: skip
    by_input: dict[str, list[onnx.TensorProto]] = {}  # activation -> the weights it multiplies
    for site in chosen:
        tensor, _ = _lookup(site.node.input[_weight_index(site.kind)], site.stack)
        if len(site.stack) == 1 and site.kind == "MatMul" and len(tensor.dims) == 2:
            by_input.setdefault(site.node.input[0], []).append(tensor)
    sizes = {name: 8 * tensors[0].dims[0] ** 2 for name, tensors in by_input.items()}  # float64 [K, K]
    done = 0
    for group in passes(sorted(by_input), sizes, HESSIAN_BYTES):
        hessians = _hessians(model, group, calibration)
        for name in group:
            for tensor in by_input[name]:
                weight = numpy_helper.to_array(tensor)
                fit = gptq_fit(weight, hessians[name], options.bits, options.block_size, options.symmetric)
                if fit is not None:
                    tensor.CopyFrom(numpy_helper.from_array(fit.astype(weight.dtype), tensor.name))
                    done += 1
    notes = [f"GPTQ fitted {done} MatMul weight(s) to {len(calibration)} calibration sample(s) (damping {DAMPING:g})"]
    if done < len(chosen):
        notes.append(f"{len(chosen) - done} weight(s) rounded to nearest (outside the main graph, of a Gemm, or a Hessian that would not factor)")
    return notes


def gptq_fit(weight: np.ndarray, hessian: np.ndarray, bits: int, block_size: int, symmetric: bool) -> np.ndarray | None:
    """The GPTQ-quantized (dequantized) weights [K, N] for activations with Hessian [K, K]; None when the damped
    Hessian is not positive definite even after more damping."""
    work = weight.astype(np.float64).copy()
    rows = work.shape[0]
    h = hessian.copy()
    dead = np.diag(h) == 0  # inputs that are always zero: their weights do not matter
    h[dead, dead], work[dead] = 1.0, 0.0
    factor = _inverse_factor(h)
    if factor is None:
        return None
    fitted = np.zeros_like(work)
    for start in range(0, rows, COLUMN_BLOCK):
        stop = min(start + COLUMN_BLOCK, rows)
        errors = np.zeros((stop - start, work.shape[1]))
        for row in range(start, stop):
            if row % block_size == 0:  # a new quantization block: its grid from the weights as updated so far
                scale, zero, low, high = _grid(work[row : row + block_size], bits, symmetric)
            quantized = (np.clip(np.round(work[row] / scale) + zero, low, high) - zero) * scale
            fitted[row] = quantized
            error = (work[row] - quantized) / factor[row, row]
            work[row:stop] -= np.outer(factor[row, row:stop], error)
            errors[row - start] = error
        work[stop:] -= factor[start:stop, stop:].T @ errors
    return fitted


def _inverse_factor(hessian: np.ndarray) -> np.ndarray | None:
    """Upper Cholesky factor U of the damped inverse Hessian (H^-1 = U^T U); more damping while it does not factor."""
    mean = float(np.mean(np.diag(hessian)))
    for damping in (DAMPING, 10 * DAMPING, 100 * DAMPING):
        damped = hessian + damping * mean * np.eye(len(hessian))
        try:
            return np.linalg.cholesky(np.linalg.inv(damped)).T
        except np.linalg.LinAlgError:
            continue
    return None


def _grid(block: np.ndarray, bits: int, symmetric: bool) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Per output channel: step, zero point and code range of a block, as ORT's packer derives them, so that it keeps the
    fitted values: asymmetric, min/max with zero inside; symmetric, the weight of largest magnitude, sign kept, on code
    -2^(bits-1). `python bench/gptq_fit.py --symmetric`: packed 0.0626, the fit 0.0625, rounding 0.0863; with a step of
    |max| / 2^(bits-1), as before, the packer rounded a third of the fitted weights again: 0.0886, worse than rounding."""
    if symmetric:
        extreme = np.take_along_axis(block, np.abs(block).argmax(axis=0)[None, :], axis=0)[0]
        step = extreme / -(2 ** (bits - 1))
        step[step == 0] = 1.0
        return step, np.zeros_like(step), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    low, high = np.minimum(block.min(axis=0), 0.0), np.maximum(block.max(axis=0), 0.0)
    step = (high - low) / (2**bits - 1)
    step[step == 0] = 1.0
    return step, np.round(-low / step), 0, 2**bits - 1


def _hessians(model: Model, activations: list[str], calibration: Sequence[Feed]) -> dict[str, np.ndarray]:
    """2/n * sum(x^T x) over every row x of each activation across the calibration feeds (float64)."""
    session = tap_session(model, activations, purpose="GPTQ activations")
    sums: dict[str, np.ndarray] = {}
    rows: dict[str, int] = {}
    for feed in calibration:
        for name, value in zip(activations, session.run(activations, ort_feed(feed))):
            flat = np.asarray(value, np.float64).reshape(-1, value.shape[-1])
            sums[name] = sums.get(name, 0.0) + flat.T @ flat
            rows[name] = rows.get(name, 0) + flat.shape[0]
    return {name: 2.0 * total / rows[name] for name, total in sums.items()}


