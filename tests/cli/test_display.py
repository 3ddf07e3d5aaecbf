"""What a run shows away from a terminal: progress lines at least every HEARTBEAT_S, the settings in effect once work
starts, a log file, --quiet, and the settings in --json."""

from __future__ import annotations

import json
import re
import time

import pytest

from helpers import linear_model, save
from ortforge.cli import display, main


@pytest.fixture(autouse=True)
def fresh_display():
    display.configure()
    yield
    display.configure()


def test_away_from_a_terminal_progress_is_plain_lines_with_a_heartbeat(capsys, monkeypatch):
    monkeypatch.setattr(display, "HEARTBEAT_S", 0.2)
    with display.progress_bar(budget_s=60) as progress:
        progress("building int8 (1/3)", 0.1)
        time.sleep(0.7)  # no update: the heartbeat repeats the state
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) >= 3 and all("building int8 (1/3)" in line for line in lines)
    assert lines[0].startswith("[0:00]  10% building int8") and lines[0].endswith("left)")


def test_time_left_is_the_budget_s_or_extrapolated_from_the_fraction():
    assert display.time_left(20.0, 0.5, 120.0) == 100.0
    assert display.time_left(20.0, 0.5, None) == 20.0
    assert display.time_left(1.0, 0.01, None) is None  # too early to say


def test_the_log_file_gets_the_settings_progress_and_outcome(tmp_path, capsys):
    model = save(linear_model(), tmp_path / "m.onnx")
    log = tmp_path / "run.log"
    assert main(["inspect", str(model), "--no-placement", "--log-file", str(log)]) == 0
    text = log.read_text()
    assert f"inspect: model {model}, no-placement" in text and text.rstrip().endswith("inspect: done")
    assert main(["inspect", str(tmp_path / "absent.onnx"), "--log-file", str(log)]) == 2
    assert log.read_text().rstrip().endswith("not found")  # the error, in the log too


def test_quiet_shows_the_result_only_and_json_holds_the_settings(tmp_path, capsys):
    model = save(linear_model(), tmp_path / "m.onnx")
    assert main(["inspect", str(model), "--no-placement", "--quiet"]) == 0
    assert capsys.readouterr().err == ""
    assert main(["inspect", str(model), "--no-placement", "--json"]) == 0
    settings = json.loads(capsys.readouterr().out)["settings"]
    assert settings == {"model": str(model), "no-placement": True}


def test_a_log_file_that_cannot_be_written_is_one_line(tmp_path, capsys):
    model = save(linear_model(), tmp_path / "m.onnx")
    assert main(["inspect", str(model), "--no-placement", "--log-file", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(f"ortforge: error: --log-file {tmp_path}: cannot write")


def test_cache_info_and_clear_touch_only_the_parts_asked_for(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ORTFORGE_CACHE", str(tmp_path / "cache"))
    for part in ("tune", "zoo"):
        (tmp_path / "cache" / part / "entry").mkdir(parents=True)
        (tmp_path / "cache" / part / "entry" / "f.bin").write_bytes(b"x" * 1000)
    assert main(["cache", "info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["root"] == str(tmp_path / "cache") and {p["name"]: p["bytes"] for p in info["parts"]} == {"tune": 1000, "zoo": 1000, "runtime": 0}
    assert main(["cache", "clear", "--json"]) == 0  # tune's builds by default
    cleared = json.loads(capsys.readouterr().out)
    assert cleared["freed_bytes"] == 1000 and not (tmp_path / "cache" / "tune").exists() and (tmp_path / "cache" / "zoo").exists()
    with pytest.raises(SystemExit) as exited:
        main(["cache", "clear", "--part", "everything"])
    assert exited.value.code == 2


def test_in_an_80_column_terminal_the_elapsed_time_and_time_left_stay_visible(monkeypatch):
    import io

    from rich.console import Console

    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=80, color_system=None)
    monkeypatch.setattr(display, "stderr_console", lambda: console)
    with display.progress_bar(budget_s=120) as progress:
        progress("final interleaved run: timing round 12 | best so far: static qdq s8s8 per-channel Conv+MatMul+Gemm minmax", 0.7)
        time.sleep(0.3)  # the live display refreshes
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.getvalue())  # cursor and line controls take no columns
    drawn = [line for line in text.replace("\r", "\n").splitlines() if "final interleaved" in line]
    assert drawn and all(len(line.rstrip()) <= 80 for line in drawn)
    assert "0:00:00" in drawn[-1] and "left" in drawn[-1] and "…" in drawn[-1]  # the description is cut, the clock is not
