"""Peak memory of the two memory-hungry paths: `ortforge tune` and quant-debug.

    python bench/memory_peaks.py tune MODEL [--data DIR] [--tolerance cosine=0.985] [--budget 5m]
    python bench/memory_peaks.py quant-debug MODEL [--data DIR] [--samples 4]

tune: one run with an empty cache (a temporary ORTFORGE_CACHE), the peak RSS of its whole process tree
(every finalist is a live process in the final run) and each process's RSS at that moment.
quant-debug: a static int8 model (per-channel, Conv+MatMul+Gemm), then quant-debug in a fresh process
twice: fetching activations in passes (ortforge's default) and all at once; the peak RSS of the
quant-debug step alone and its wall time for each.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from peers import run_measured

ALL_AT_ONCE = 1 << 62  # PASS_BYTES that puts every activation in one pass


def tune_peak(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="ortforge-memory-") as work:
        command = [str(Path(sys.executable).with_name("ortforge")), "tune", args.model, "-o", str(Path(work) / "artifact"), "--time-budget", args.budget]
        command += ["--data", args.data] if args.data else []
        for tolerance in args.tolerance:
            command += ["--tolerance", tolerance]
        sizes: list[int] = []
        env = {**os.environ, "ORTFORGE_CACHE": str(Path(work) / "cache")}
        code, wall, peak, last = run_measured(command, env=env, cwd=Path(work), at_peak=sizes)
    print(f"ortforge tune {args.model}: exit {code}, {wall:.0f} s, peak RSS of the process tree {peak / 2**30:.2f} GiB")
    print("  at the peak, per process (MiB): " + ", ".join(f"{size >> 20}" for size in sizes) + "  (the first is tune itself)")
    if code:
        print(f"  {last}")


def quant_debug_peak(args: argparse.Namespace) -> None:
    for label, pass_bytes in (("in passes (default)", None), ("all at once", ALL_AT_ONCE)):
        command = [sys.executable, __file__, "_child", args.model, "--samples", str(args.samples)]
        command += ["--data", args.data] if args.data else []
        command += ["--pass-bytes", str(pass_bytes)] if pass_bytes else []
        result = subprocess.run(command, capture_output=True, text=True, timeout=3600)
        print(f"quant-debug {args.model}, {args.samples} sample(s), {label}: {result.stdout.strip() or result.stderr.strip().splitlines()[-1]}")


def child(args: argparse.Namespace) -> None:
    """Quantize, then time quant-debug alone while a thread samples this process's RSS."""
    import importlib

    import psutil

    import ortforge
    from ortforge.commands.common import feeds_for
    from ortforge.core.model import from_proto
    from ortforge.transforms.quantize import QuantizeOptions, prepare, quantize

    quant_debug = importlib.import_module("ortforge.analysis.quant_errors")
    if args.pass_bytes:
        quant_debug.PASS_BYTES = args.pass_bytes
    model = ortforge.open_model(args.model)
    feeds = feeds_for(model, args.model, args.data, samples=args.samples)
    options = QuantizeOptions(mode="static", per_channel=True, op_types=("Conv", "MatMul", "Gemm"))
    quantized = from_proto(quantize(model, options, feeds.samples).proto)
    prepared = from_proto(prepare(model, options, []))
    process, peak, done = psutil.Process(), [0], threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.02)

    threading.Thread(target=watch, daemon=True).start()
    start = time.perf_counter()
    quant_debug.debug_quantization(prepared, quantized, feeds)
    done.set()
    print(f"peak RSS {peak[0] / 2**30:.2f} GiB, {time.perf_counter() - start:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    tune = commands.add_parser("tune")
    tune.add_argument("model")
    tune.add_argument("--data")
    tune.add_argument("--tolerance", action="append", default=[])
    tune.add_argument("--budget", default="5m")
    for name in ("quant-debug", "_child"):
        debug = commands.add_parser(name)
        debug.add_argument("model")
        debug.add_argument("--data")
        debug.add_argument("--samples", type=int, default=4)
        debug.add_argument("--pass-bytes", type=int)
    args = parser.parse_args()
    {"tune": tune_peak, "quant-debug": quant_debug_peak, "_child": child}[args.command](args)


if __name__ == "__main__":
    main()
