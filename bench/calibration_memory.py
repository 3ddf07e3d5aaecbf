"""Peak memory of calibration vs sample count: ortforge's streaming calibrator next to ORT's quantize_static.

    python bench/calibration_memory.py [--ortforge 4 16 128] [--ort 4 8 16] [--method entropy] [--guard-gib 18]
                                       [--max-run-mib N]

Each measurement runs in its own process (peak RSS is per process), on PP-OCR det with realistic
rendered pages generated one at a time (seed = sample index), so no run holds its samples in memory.
ortforge calibrates and then quantizes with its ranges (`quantize_with_ranges`); ORT runs
`quantize_static(..., calibrate_method=...)`, which keeps every sample's intermediate outputs until it
builds its histograms. A run whose RSS passes the guard is killed and reported as such. When both
finish at the same count, their ranges are compared (ORT's via its calibration cache file).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil

MODEL = "ppocr-det"
POLL_S = 0.2


# --- the measured process ------------------------------------------------------------------------


def pages(count: int) -> Iterator[dict[str, np.ndarray]]:
    """Realistic PP-OCR det inputs (a rendered page each, ~10 MB), made one at a time."""
    from ortforge.zoo import realistic_feeds

    for index in range(count):
        yield realistic_feeds(MODEL, 1, seed=index).samples[0]


def child(tool: str, count: int, method: str, max_run_mib: int | None, cache: str) -> None:
    """Run one calibration + quantization and print its peak RSS, ranges (and bin widths) as JSON."""
    from ortforge.measure.memory import peak_rss
    from ortforge.zoo import fetch

    model_path = fetch(MODEL)
    start = time.perf_counter()
    widths: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="ortforge-calib-bench-") as folder:
        if tool == "ortforge":
            ranges, widths = run_ortforge(model_path, count, method, max_run_mib)
        else:
            ranges = run_ort(model_path, Path(folder), count, method, cache)
    print(json.dumps({"peak": peak_rss(), "seconds": time.perf_counter() - start, "ranges": ranges, "widths": widths}))


def run_ortforge(model_path: Path, count: int, method: str, max_run_mib: int | None) -> tuple[dict[str, list[float]], dict[str, float]]:
    from ortforge.core.model import load_model
    from ortforge.transforms.calibrate import CalibrationOptions, calibrate
    from ortforge.transforms.ort_quantizer import quantize_with_ranges

    model = load_model(model_path)
    budget = max_run_mib << 20 if max_run_mib else None
    result = calibrate(model, pages(count), CalibrationOptions(method), total=count, max_run_bytes=budget)
    quantize_with_ranges(model, result)
    widths = {name: float(h.edges[1] - h.edges[0]) for name, h in result.histograms.items()}
    return {name: list(pair) for name, pair in result.ranges.items()}, widths


def run_ort(model_path: Path, folder: Path, count: int, method: str, cache: str) -> dict[str, list[float]]:
    import shutil

    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        quantize_static,
    )
    from onnxruntime.quantization.calibrate import load_tensors_data

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = pages(count)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.feeds, None)

    # A copy: quantize_static writes a '-inferred' model next to its input.
    source = Path(shutil.copy(model_path, folder / "model.onnx"))
    calibrate_method = getattr(CalibrationMethod, {"minmax": "MinMax"}.get(method, method.capitalize()))
    quantize_static(str(source), str(folder / "quantized.onnx"), Reader(), calibrate_method=calibrate_method, calibration_cache_path=cache)
    data = load_tensors_data(cache)
    return {name: [float(np.asarray(v).reshape(-1)[0]) for v in item.range_value] for name, item in data.items()}


# --- the driver ----------------------------------------------------------------------------------


def measure(tool: str, count: int, args: argparse.Namespace) -> dict:
    """Run one measurement in a fresh process, killing it if its RSS passes the guard."""
    guard = int(args.guard_gib * 2**30)
    with tempfile.TemporaryDirectory(prefix="ortforge-calib-bench-") as folder:
        command = [sys.executable, __file__, "--child", tool, str(count), "--method", args.method, "--cache", str(Path(folder) / "cache.json")]
        if args.max_run_mib:
            command += ["--max-run-mib", str(args.max_run_mib)]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        watched, highest, start = psutil.Process(process.pid), 0, time.perf_counter()
        while process.poll() is None:
            try:
                highest = max(highest, watched.memory_info().rss)
            except psutil.NoSuchProcess:
                break
            if highest > guard:
                process.kill()
                process.wait()
                return {"killed": True, "peak": highest, "seconds": time.perf_counter() - start}
            time.sleep(POLL_S)
        out, err = process.communicate()
    if process.returncode != 0:
        return {"failed": err.strip().splitlines()[-1] if err.strip() else f"exit {process.returncode}", "peak": highest}
    return json.loads(out.strip().splitlines()[-1])


def describe(tool: str, count: int, figures: dict) -> str:
    peak = f"{figures['peak'] / 2**30:6.2f} GiB"
    if figures.get("killed"):
        return f"{tool:<9} {count:>4} samples: peak RSS > {peak} (killed at the guard after {figures['seconds']:.0f} s)"
    if "failed" in figures:
        return f"{tool:<9} {count:>4} samples: failed ({figures['failed']}), RSS seen {peak}"
    return f"{tool:<9} {count:>4} samples: peak RSS {peak}  ({figures['seconds']:.0f} s)"


def compare(ours: dict, theirs: dict) -> str:
    """How far our ranges are from ORT's: relative, and in histogram bins where there are bins."""
    common = sorted(set(ours["ranges"]) & set(theirs["ranges"]))
    # ORT's MinMax gives empty tensors (Resize's roi) the range (inf, -inf); ortforge gives (0, 0).
    shared = [name for name in common if all(np.isfinite(theirs["ranges"][name]))]
    pairs = {name: list(zip(ours["ranges"][name], theirs["ranges"][name])) for name in shared}
    relative = max(abs(a - b) / max(abs(b), 1e-12) for name in shared for a, b in pairs[name])
    text = f"{len(common)} shared tensors (ours {len(ours['ranges'])}, ORT {len(theirs['ranges'])}), largest relative difference {relative:.2e}"
    if len(shared) < len(common):
        text += f" ({len(common) - len(shared)} left out: ORT's range is not finite)"
    widths = ours.get("widths") or {}
    if widths:
        bins = {name: max(abs(a - b) for a, b in pairs[name]) / widths[name] for name in shared if widths.get(name)}
        beyond = sorted((name for name, count in bins.items() if count > 1.0001), key=bins.get, reverse=True)
        text += f"; in bins: largest {max(bins.values()):.2f}, {len(beyond)} tensor(s) beyond one bin"
        text += f" ({', '.join(f'{name} {bins[name]:.1f}' for name in beyond[:5])})" if beyond else ""
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ortforge", type=int, nargs="*", default=[4, 16, 128], help="sample counts for ortforge")
    parser.add_argument("--ort", type=int, nargs="*", default=[4, 8, 16], help="sample counts for ORT's quantize_static")
    parser.add_argument("--method", default="entropy", choices=["minmax", "entropy", "percentile", "distribution"])
    parser.add_argument("--guard-gib", type=float, default=18.0, help="kill a run whose RSS passes this")
    parser.add_argument("--max-run-mib", type=int, default=None, help="ortforge: cap one run's outputs (groups of tensors)")
    parser.add_argument("--child", nargs=2, metavar=("TOOL", "COUNT"), help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), args.method, args.max_run_mib, args.cache)
        return
    print(f"{MODEL}, {args.method} calibration, guard {args.guard_gib:g} GiB" + (f", runs capped at {args.max_run_mib} MiB" if args.max_run_mib else ""))
    results: dict[tuple[str, int], dict] = {}
    for tool, counts in (("ortforge", args.ortforge), ("ort", args.ort)):
        for count in counts:
            results[tool, count] = measure(tool, count, args)
            print(describe(tool, count, results[tool, count]), flush=True)
    finished = {key: value for key, value in results.items() if "ranges" in value}
    ours = sorted(count for tool, count in finished if tool == "ortforge")
    for count in ours[:-1]:
        low, high = finished["ortforge", count]["peak"], finished["ortforge", ours[-1]]["peak"]
        print(f"ortforge peak RSS {ours[-1]} vs {count} samples: {high / low:.3f}x ({(high / low - 1) * 100:+.1f}%)")
    for tool, count in finished:
        if tool == "ort" and ("ortforge", count) in finished:
            print(f"at {count} samples, ranges vs ORT: {compare(finished['ortforge', count], finished['ort', count])}")


if __name__ == "__main__":
    main()
