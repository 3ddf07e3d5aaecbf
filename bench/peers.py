"""ortforge tune against its peers on the same model, data and tolerance, in one run.

    python bench/peers.py [zoo:NAME | MODEL.onnx ...] [--data DIR] [--budget 5m] [--olive PATH_TO_olive]

Per model: ORT defaults (fp32); ORT's quantization tools with their defaults (quantize_dynamic;
quant_pre_process + quantize_static QDQ MinMax); Olive's `auto-opt` for the CPU EP (when an `olive`
executable from its own venv is given: --olive /work/olive-venv/bin/olive); and `ortforge tune`.
Each tool runs as its own process (wall time and peak RSS of its process tree are recorded); then
every model produced is checked for accuracy against fp32 on the same evaluation inputs and all are
timed interleaved in one bench run (with its A/A noise floor). "delivers" is yes only for a model that
is within tolerance, changed, and faster than fp32 beyond the noise; otherwise it says why not, and a
tool that failed prints its reason.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil

import ortforge
from ortforge.accuracy.judge import Judge
from ortforge.accuracy.tolerance import default_tolerances, parse_tolerances
from ortforge.commands.common import feeds_for
from ortforge.core.model import load_model
from ortforge.core.session import SessionConfig, run_outputs
from ortforge.measure.bench import BenchOptions, Variant, bench
from ortforge.measure.compare import beats, score

BASELINE = "ORT defaults"


@dataclass
class ToolRun:
    tool: str
    model: Path | None
    config: SessionConfig
    wall_s: float
    peak_rss: int
    exit_code: int
    message: str = ""
    detail: str = ""  # what the tool chose, where it says


def run_measured(command: list[str], env: dict | None = None, timeout: float = 1800, cwd: Path | None = None,
                 at_peak: list[int] | None = None) -> tuple[int, float, int, str]:  # fmt: skip
    """Exit code, wall seconds, peak RSS of the whole process tree, last line of output. Runs in `cwd`, where the
    tools leave their scratch files (Olive's .olive-cache, ORT's sym_shape_infer_temp.onnx and external data).
    `at_peak`, when given, receives each process's RSS at the moment of the peak (the root first)."""
    start = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd)
    peak = [0]

    def watch() -> None:
        while process.poll() is None:
            try:
                root = psutil.Process(process.pid)
                sizes = [p.memory_info().rss for p in [root, *root.children(recursive=True)]]
            except psutil.Error:
                sizes = []
            if sum(sizes) > peak[0]:
                peak[0] = sum(sizes)
                if at_peak is not None:
                    at_peak[:] = sizes
            time.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
    watcher.join()
    lines = [line for line in (output or "").splitlines() if line.strip()]
    return process.returncode, time.monotonic() - start, peak[0], (lines[-1] if lines else "")


ORT_DYNAMIC = """
import sys
from onnxruntime.quantization import quantize_dynamic
quantize_dynamic(sys.argv[1], sys.argv[2])
"""
ORT_STATIC = """
import sys, glob, numpy as np
from onnxruntime.quantization import quantize_static, quant_pre_process, CalibrationDataReader
class Reader(CalibrationDataReader):
    def __init__(self, files): self.files = iter(files)
    def get_next(self):
        path = next(self.files, None)
        return None if path is None else dict(np.load(path))
quant_pre_process(sys.argv[1], sys.argv[2] + ".pre.onnx")
quantize_static(sys.argv[2] + ".pre.onnx", sys.argv[2], Reader(sorted(glob.glob(sys.argv[3] + "/*.npz"))))
"""


def save_feeds(feeds, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index, sample in enumerate(feeds.samples):
        np.savez(folder / f"sample_{index:03d}.npz", **sample)
    return folder


def run_tools(reference: str, model_path: Path, data: Path, work: Path, budget: str, olive: str | None, tolerances: list[str]) -> list[ToolRun]:
    runs = [ToolRun(BASELINE, model_path, SessionConfig(), 0.0, 0, 0)]
    for tool, script, extra in (("ORT quantize_dynamic", ORT_DYNAMIC, []), ("ORT pre_process + quantize_static", ORT_STATIC, [str(data)])):
        out = work / (tool.split()[-1] + ".onnx")
        code, wall, peak, message = run_measured([sys.executable, "-c", script, str(model_path), str(out), *extra], cwd=work)
        runs.append(ToolRun(tool, out if out.exists() else None, SessionConfig(), wall, peak, code, message))
    if olive:
        out = work / "olive"
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        code, wall, peak, message = run_measured([olive, "auto-opt", "--model_name_or_path", str(model_path), "--output_path", str(out),
                                                  "--device", "cpu", "--provider", "CPUExecutionProvider", "--precision", "int8"], env=env, cwd=work)  # fmt: skip
        produced = sorted(out.rglob("*.onnx")) if out.exists() else []
        runs.append(ToolRun("Olive auto-opt int8", produced[0] if produced else None, SessionConfig(), wall, peak, code, message))
    artifact = work / "ortforge"
    target = reference if reference.startswith("zoo:") else str(Path(reference).resolve())  # the tools run in `work`
    command = [str(Path(sys.executable).with_name("ortforge")), "tune", target, "-o", str(artifact), "--time-budget", budget]
    if not reference.startswith("zoo:"):
        command += ["--data", str(Path(data).resolve())]
    for tolerance in tolerances:
        command += ["--tolerance", tolerance]
    code, wall, peak, message = run_measured(command, cwd=work)
    record = json.loads((artifact / "ortforge.json").read_text()) if code == 0 else {}
    config = SessionConfig.from_dict(record["session"]) if record else SessionConfig()
    chosen = f"chose {record['chosen']['label']}" if record else ""
    runs.append(ToolRun("ortforge tune", artifact / "model.onnx" if code == 0 else None, config, wall, peak, code, message, chosen))
    return runs


def compare_runs(reference: str, runs: list[ToolRun], evaluation, seconds: float, given: list[str]) -> None:
    original = ortforge.open_model(reference)
    expected = run_outputs(original, evaluation)
    judge = Judge(expected, parse_tolerances(given) or default_tolerances(expected))
    tolerances = judge.tolerances
    usable, rows = [], []
    for run in runs:
        if run.model is None:
            rows.append((run, None, "produced no model"))
            continue
        try:
            model = load_model(run.model, check=False)
            verdict = judge(run_outputs(model, evaluation, run.config))
        except Exception as exc:  # a peer's output that ORT cannot run is a finding, not a crash of this script
            rows.append((run, None, f"unusable: {str(exc).splitlines()[0][:80]}"))
            continue
        usable.append((run, model))
        rows.append((run, verdict, "within tolerance" if verdict.passed else "OUTSIDE tolerance"))
    report = bench([Variant(run.tool, model, run.config, evaluation) for run, model in usable],
                   BenchOptions(max_seconds=seconds, profile=False))  # fmt: skip
    speed = {result.label: score(result, report.variants[0]) for result in report.variants}
    noise = report.noise_floor
    print(f"{reference} ({', '.join(t.describe() for t in tolerances)}; {len(evaluation)} evaluation samples; noise ±{noise:.1%}"
          + (f"; {report.load.describe()}" if report.load and report.load.busy else "") + ")")
    fingerprint = original.content_hash()
    for run, judged, verdict in rows:
        s = speed.get(run.tool)
        ratio = s.text() if s else "-"
        cosine = f"cos {judged.measured['cosine']:.4f}" if judged and "cosine" in judged.measured else ""
        cost = "tuning      -    peak RSS       -    " if run.tool == BASELINE else f"tuning {run.wall_s:6.1f} s  peak RSS {run.peak_rss / 2**20:7.0f} MiB  "
        print(f"  {run.tool:<36} latency {ratio:<24} {cosine:<12} {verdict:<20} {cost}"
              f"exit {run.exit_code}  delivers: {_delivers(run, judged, s, noise, fingerprint)}")
        if run.detail:
            print(f"    {run.detail}")
        if run.exit_code != 0 and run.message:
            print(f"    failed: {run.message}")


def _delivers(run: ToolRun, judged, speed, noise: float, original_hash: str) -> str:  # noqa: ANN001
    """yes only for a result within tolerance that changed something (the model or its session settings) and is
    faster than fp32 with ORT defaults beyond the noise; otherwise why not."""
    if run.tool == BASELINE:
        return "baseline"
    if run.model is None:
        return "NO: no model" + (", yet exit 0" if run.exit_code == 0 else "")
    if judged is None or not judged.passed:
        return "NO: outside tolerance" if judged is not None else "NO: unusable model"
    same_model = load_model(run.model, check=False).content_hash() == original_hash
    if same_model and run.config == SessionConfig():
        return "NO: model and session settings unchanged"
    if speed is None or not beats(speed, noise):
        return f"NO: not faster beyond noise ({speed.text() if speed else 'not timed'})"
    return "yes (session settings only)" if same_model else "yes"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", default=["zoo:magika", "zoo:ppocr-cls", "zoo:silero-vad", "zoo:ppocr-det"])
    parser.add_argument("--data", help="data folder for non-zoo models (.npz per sample)")
    parser.add_argument("--budget", default="5m")
    parser.add_argument("--olive", help="path to an `olive` executable in its own venv")
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per variant in the comparison")
    parser.add_argument("--tolerance", action="append", default=[], help="as `ortforge tune --tolerance` (default: ortforge's)")
    args = parser.parse_args()
    for reference in args.models:
        with tempfile.TemporaryDirectory() as temporary:
            work = Path(temporary)
            model = ortforge.open_model(reference)
            calibration = feeds_for(model, reference, args.data, samples=16)
            evaluation = feeds_for(model, reference, args.data, samples=32, seed=1)
            data = Path(args.data) if args.data else save_feeds(calibration, work / "calibration")
            runs = run_tools(reference, model.path, data, work, args.budget, args.olive, args.tolerance)
            compare_runs(reference, runs, evaluation, args.seconds, args.tolerance)


if __name__ == "__main__":
    main()
