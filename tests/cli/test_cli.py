"""The command line as a user meets it: real processes, exit codes, one-line errors, parseable JSON."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

from helpers import conv_net, linear_model, save, the_error_line


def ortforge(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ortforge", *args], capture_output=True, text=True, cwd=cwd, timeout=240)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode != 0
    line = the_error_line(result.stderr)
    for fragment in fragments:
        assert fragment in line, line


@pytest.fixture
def bad_models(tmp_path):
    good = linear_model().SerializeToString()
    (tmp_path / "truncated.onnx").write_bytes(good[: len(good) // 2])
    (tmp_path / "text.onnx").write_text("name,value\nalpha,1\n")
    external = tmp_path / "external.onnx"
    onnx.save_model(linear_model(), str(external), save_as_external_data=True, location="external.data", size_threshold=0)
    (tmp_path / "external.data").unlink()
    ir14 = linear_model()
    ir14.ir_version = 14
    save(ir14, tmp_path / "ir14.onnx")
    return tmp_path


@pytest.mark.parametrize(
    "name, fragments",
    [
        ("truncated.onnx", ["truncated.onnx", "truncated or corrupt"]),
        ("text.onnx", ["text.onnx", "not an ONNX model"]),
        ("external.onnx", ["external.data", "missing"]),
        ("ir14.onnx", ["ir14.onnx", "IR version 14"]),
        ("absent.onnx", ["absent.onnx", "not found"]),
    ],
)
def test_bad_models_give_one_line(bad_models, name, fragments):
    assert_one_line_error(ortforge("inspect", str(bad_models / name), "--no-placement"), *fragments)


@pytest.mark.parametrize(
    "command",
    [["bench"], ["run"], ["optimize", "-o", "{out}"], ["quantize", "-o", "{out}", "--calib", "{bad}"], ["quantize", "-o", "{out}"],
     ["fp16", "-o", "{out}"], ["quant-debug", "{model}"], ["tune", "-o", "{out}"], ["tune-session", "-o", "{out}.json"]],  # fmt: skip
    ids=lambda c: " ".join(w for w in c if not w.startswith("{")),
)
def test_nan_in_data_is_refused_by_every_command_that_reads_data(tmp_path, capsys, command):
    from ortforge.cli import main

    model = save(linear_model(), tmp_path / "m.onnx")
    bad = np.ones((6, 1, 8), np.float32)
    bad[2, 0, 5] = np.inf
    folder = tmp_path / "samples"
    folder.mkdir()
    for index, row in enumerate(bad):
        np.savez(folder / f"s{index}.npz", x=row)
    words = [w.format(out=tmp_path / "out", bad=folder, model=model) for w in command]
    argv = [words[0], str(model), *words[1:]] + ([] if "--calib" in words else ["--data", str(folder)])
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "s2.npz" in error and "input 'x'" in error and "NaN/infinite" in error, error
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.json").exists()


def test_npz_with_wrong_shape_gives_one_line(tmp_path):
    model = save(linear_model(), tmp_path / "m.onnx")
    np.savez(tmp_path / "wrong.npz", x=np.ones((1, 5), np.float32))
    assert_one_line_error(ortforge("bench", str(model), "--data", str(tmp_path / "wrong.npz")), "input 'x'", "[1, 5]", "axis 1 must be 8")


def test_bad_option_values_give_one_line(tmp_path):
    model = save(linear_model(), tmp_path / "m.onnx")
    assert_one_line_error(ortforge("bench", str(model), "--shape", "x=1xz"), "--shape x=1xz: dimensions must be integers")
    assert_one_line_error(ortforge("bench", str(model), "--ep", "nosuch"), "not available")


def test_doctor_json_parses():
    result = ortforge("doctor", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert "CPUExecutionProvider" in data["available_providers"]
    assert data["machine"]["cpu"]["logical_cores"] >= 1


def test_bench_json_parses_and_compares(tmp_path):
    a = save(linear_model(), tmp_path / "a.onnx")
    b = save(linear_model(seed=1), tmp_path / "b.onnx")
    result = ortforge("bench", str(a), str(b), "--time", "0.3", "--no-profile", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert [v["label"] for v in data["variants"]] == ["a.onnx", "b.onnx"]
    assert data["variants"][0]["ratio"]["median"] == 1.0
    ratio = data["variants"][1]["ratio"]
    assert ratio["low"] <= ratio["median"] <= ratio["high"] and ratio["rounds"] == len(data["variants"][1]["latency"]["round_medians"])
    assert data["variants"][1]["latency"]["p50"] > 0
    assert data["noise"]["rounds"] > 0 and 0 <= data["load"]["others_share"] <= 1  # the A/A pair and what else ran


def test_bench_table_shows_variants_side_by_side(tmp_path):
    a = save(linear_model(), tmp_path / "a.onnx")
    b = save(linear_model(seed=1), tmp_path / "b.onnx")
    result = ortforge("bench", str(a), str(b), "--time", "0.3")
    assert result.returncode == 0, result.stderr
    assert "a.onnx" in result.stdout and "b.onnx" in result.stdout
    assert "p50 ratio to first" in result.stdout
    assert "op type" in result.stdout


def test_every_command_has_help():
    for command in ("doctor", "inspect", "bench", "optimize", "run", "quantize", "quant-debug", "fp16", "tune", "apply", "tune-session", "zoo"):
        result = ortforge(command, "--help")
        assert result.returncode == 0 and "--json" in result.stdout


def test_optimize_then_run(tmp_path):
    model = save(linear_model(), tmp_path / "m.onnx")
    out = tmp_path / "m.opt.onnx"
    result = ortforge("optimize", str(model), "-o", str(out), "--no-measure", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["verification"]["passed"] and data["stamp"]["level"] == "all"
    ran = ortforge("run", str(out), "--json")
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["outputs"][0]["y"]["shape"] == [1, 8]


def test_tune_json_names_the_artifact(tmp_path):
    model = save(conv_net(), tmp_path / "cnn.onnx")
    env_cache = {"ORTFORGE_CACHE": str(tmp_path / "cache")}
    import os

    result = subprocess.run([sys.executable, "-m", "ortforge", "tune", str(model), "-o", str(tmp_path / "out"), "--time-budget", "20s", "--json"],
                            capture_output=True, text=True, timeout=300, env={**os.environ, **env_cache})  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["artifact"] == str(tmp_path / "out") and (tmp_path / "out" / "ortforge.json").exists()
    assert data["figures"]["latency_ratio"]["median"] > 0


def test_fp16_auto_prints_the_search_and_json_parses(tmp_path):
    model = save(linear_model(), tmp_path / "m.onnx")
    shown = ortforge("fp16", str(model), "-o", str(tmp_path / "half.onnx"), "--ep", "cuda", "--auto", "--rtol", "1e-2", "--atol", "1e-3")
    assert shown.returncode == 0, shown.stderr
    assert "wrote" in shown.stdout and "within rtol=0.01 atol=0.001 of fp32" in shown.stdout and "of the MACs in fp16" in shown.stdout
    as_json = ortforge("fp16", str(model), "-o", str(tmp_path / "half2.onnx"), "--ep", "cuda", "--auto", "--json")
    report = json.loads(as_json.stdout)
    assert report["within_tolerance"] and report["search"]["evaluations"] >= 1 and 0 <= report["fp16_mac_share"] <= 1


def test_quant_debug_writes_its_plot_and_bench_times_startup(tmp_path):
    model = save(linear_model(), tmp_path / "m.onnx")
    quantized = ortforge("quantize", str(model), "-o", str(tmp_path / "q.onnx"), "--mode", "dynamic", "--force")
    assert quantized.returncode == 0, quantized.stderr
    debugged = ortforge("quant-debug", str(model), str(tmp_path / "q.onnx"), "--plot", str(tmp_path / "layers.svg"))
    assert debugged.returncode == 0, debugged.stderr
    assert (tmp_path / "layers.svg").read_text().lstrip().startswith("<svg")
    timed = ortforge("bench", str(model), "--startup", "3", "--time", "0.5", "--no-profile", "--json")
    assert timed.returncode == 0, timed.stderr
    startup = json.loads(timed.stdout)["variants"][0]["startup"]
    assert startup["count"] == 3 and startup["p50"] > 0


def test_inputs_ort_cannot_run_give_one_line_naming_the_model(tmp_path, capsys):
    from onnx import TensorProto, helper

    from helpers import make_model, tensor, weight
    from ortforge.cli import main

    lookup = helper.make_node("Gather", ["table", "i"], ["y"], name="lookup")
    model = save(make_model([lookup], [tensor("i", [1], TensorProto.INT64)], [tensor("y", [1, 4])], [weight("table", np.ones((3, 4), np.float32))]),
                 tmp_path / "lookup.onnx")  # fmt: skip
    np.savez(tmp_path / "far.npz", i=np.array([7], np.int64))  # row 7 of a 3-row table
    assert main(["bench", str(model), "--data", str(tmp_path / "far.npz"), "--time", "0.2"]) == 2
    error = the_error_line(capsys.readouterr().err)  # after the settings line: the failure came once measuring had started
    assert error.startswith("ortforge: error: lookup.onnx: onnxruntime failed to open and run it on the inputs")


def test_fp16_without_a_target_on_a_machine_without_fp16_kernels_says_so(tmp_path):
    from ortforge.core.runtime import GPU_PROVIDERS, available_providers

    if any(p in available_providers() for p in GPU_PROVIDERS):
        pytest.skip("this onnxruntime has a GPU EP: fp16 plans for it without --ep")
    model = save(linear_model(), tmp_path / "m.onnx")
    assert_one_line_error(ortforge("fp16", str(model), "-o", str(tmp_path / "h.onnx")), "--ep: no EP of this onnxruntime has fp16 kernels", "--ep cuda")
    assert not (tmp_path / "h.onnx").exists()
    assert ortforge("fp16", str(model), "-o", str(tmp_path / "h.onnx"), "--ep", "cpu").returncode == 0  # asked for: planned for the CPU EP
