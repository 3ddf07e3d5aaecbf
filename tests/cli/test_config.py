"""--config FILE.toml: a command's options from a file, the typed flags winning; bad files are one line."""

from __future__ import annotations

import pytest

from ortforge.cli import _with_config, build_parser, main

TUNE_TOML = """
model = "zoo:ppocr-cls"
time-budget = "2m"
objective = "latency"
calib_samples = 8
tolerance = ["cosine=0.995", "top1=1"]
ep = ["cpu"]
overwrite = true
shape = ["x=1x3x48x192"]
"""


def _parsed(tmp_path, text: str, *typed: str):
    (tmp_path / "tune.toml").write_text(text)
    parser = build_parser()
    argv, model = _with_config(parser, ["tune", "--config", str(tmp_path / "tune.toml"), *typed])
    return parser.parse_args(argv), model


def test_a_config_file_sets_tune_options_by_flag_or_python_name(tmp_path):
    args, model = _parsed(tmp_path, TUNE_TOML, "-o", "out")
    assert model == "zoo:ppocr-cls" and args.model is None  # the CLI takes the file's model when none is typed
    assert (args.time_budget_s, args.objective, args.calib_samples, args.overwrite) == ("2m", "latency", 8, True)
    assert args.tolerances == ["cosine=0.995", "top1=1"] and args.providers == ["cpu"] and args.shapes == ["x=1x3x48x192"]


def test_flags_typed_on_the_command_line_win(tmp_path):
    args, _ = _parsed(tmp_path, TUNE_TOML, "m.onnx", "-o", "out", "--objective", "throughput", "--time-budget", "30s")
    assert (args.model, args.objective, args.time_budget_s) == ("m.onnx", "throughput", "30s")


@pytest.mark.parametrize(
    "text, fragment",
    [
        ('objectiv = "latency"', "unknown key 'objectiv' (known: model, "),
        ("overwrite = 3", "'overwrite' is a switch: give true or false, not 3"),
        ("calib-samples = [1, 2]", "'calib-samples' takes one value, not 2"),
        ("time-budget = ", "not valid TOML"),
        ("model = 3", "'model' must be a string"),
    ],
)
def test_a_bad_config_file_is_one_line_naming_the_file(tmp_path, capsys, text, fragment):
    (tmp_path / "bad.toml").write_text(text + "\n")
    assert main(["tune", "--config", str(tmp_path / "bad.toml"), "-o", str(tmp_path / "out")]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "bad.toml" in lines[0] and fragment in lines[0], lines
    assert not (tmp_path / "out").exists()


def test_no_model_typed_or_configured_is_one_line(tmp_path, capsys):
    (tmp_path / "empty.toml").write_text('objective = "latency"\n')
    with pytest.raises(SystemExit) as exited:
        main(["tune", "--config", str(tmp_path / "empty.toml"), "-o", str(tmp_path / "out")])
    assert exited.value.code == 2 and "give a MODEL (or `model = ...` in the --config file)" in capsys.readouterr().err
