"""The report's HTML and SVG, and the terminal rendering, drawn from result objects."""

from __future__ import annotations

import re

from rich.console import Console

from ortforge.report.html import render_report
from ortforge.report.svg import bar_chart, paired_bars, scatter
from ortforge.report.terminal import render_zoo


def test_scatter_draws_numbered_points_with_intervals_the_front_and_the_bound():
    points = [("fp32 | ORT defaults", 1.0, 0.98, 1.02, 0.0, "baseline"), ("int8 <a>", 0.5, 0.45, 0.55, 0.002, "chosen"),
              ("other", 0.8, 0.7, 0.9, 0.01, "other")]  # fmt: skip
    svg = scatter(points, title="t", x_label="x", y_label="y", front=["fp32 | ORT defaults", "int8 <a>"], bound=0.01)
    assert svg.count('class="point"') == 3 and svg.count('class="interval"') == 3 and 'class="front"' in svg and 'class="bound"' in svg
    assert "#2 int8 &lt;a&gt;" in svg and "<a>" not in svg  # full names in the tooltips, escaped
    assert ">exact</text>" in svg and "(exact)" in svg  # fp32's zero error sits on the floor, said so
    # Points drawn on one spot share one label beside them, so no two numbers overlap.
    same = scatter([("a", 1.0, 0.9, 1.1, 0.0, "baseline"), ("b", 1.0, 0.9, 1.1, 0.0, "other")], title="t", x_label="x", y_label="y")
    assert same.count('class="number"') == 1 and ">1,2</text>" in same


def test_bar_charts_mark_infinite_values_as_exact():
    svg = bar_chart(["a", "b"], [float("inf"), 12.5], title="SQNR")
    assert svg.count('class="bar"') == 2 and "exact" in svg and "12.5" in svg
    paired = paired_bars(["MatMul"], [2.0], [1.0], title="ops", unit=" ms", names=("before", "after"))
    assert paired.count('class="bar"') == 2 and "before" in paired


def _record() -> dict:
    return {
        "model_name": "zoo:<tiny>", "why": "int8 won", "objective": "latency",
        "summary": {"speedup": "0.50x (0.45-0.55)", "accuracy": "cosine 0.999", "size": "1 MiB", "startup": "5 ms", "throughput": "10/s"},
        "notes": ["a note"], "points": [("fp32", 1.0, 1.0, 1.0, 0.0, "baseline"), ("int8", 0.5, 0.4, 0.6, 0.001, "chosen")], "front": ["fp32", "int8"],
        "error_label": "1 - cosine", "error_bound": 0.01, "finalist_rows": [["int8", "1.2 ms", "0.5", "100%", "0.001"]],
        "figures": {"latency_ms": {"chosen": {"p50": 1.2, "p90": 1.3, "p99": 1.5}, "baseline": {"p50": 2.4, "p90": 2.6, "p99": 3.0}}},
        "inputs": {"origin": "data (samples 4-7)", "samples": 4, "generated": False, "shapes": {"x": [1, 8]}},
        "session": {"intra_op_num_threads": 1, "config_entries": {"session.intra_op.allow_spinning": "0"}},
        "ops": {"labels": ["MatMul"], "before": [1.0], "after": [0.5]}, "placement_rows": [["int8", "CPU 3", "0"]],
        "rejected": [["static", "cosine 0.5 misses cosine >= 0.99"]], "commands": ["ortforge tune m.onnx -o out"],
        "environment": {"onnxruntime": "1.31.1"},
    }  # fmt: skip


def test_the_html_report_holds_every_section_escaped():
    html = render_report(_record())
    for heading in ("Latency vs accuracy", "Time per op type", "Node placement", "Rejected candidates", "Reproduce", "Environment"):
        assert f"<h2>{heading}" in html
    assert "zoo:&lt;tiny&gt;" in html and "0.50x (0.45-0.55)" in html and "cosine 0.5 misses" in html
    assert "1.2 / 1.3 / 1.5 ms (was 2.4 / 2.6 / 3)" in html and "data (samples 4-7)" in html
    assert "options.intra_op_num_threads = 1" in html and "options.SetIntraOpNumThreads(1);" in html
    assert not re.search(r"<(script|link)[^>]+src=", html)  # self-contained: nothing fetched


def test_terminal_rendering_escapes_rich_markup():
    console = Console(record=True, width=200)
    render_zoo([{"name": "m", "family": "cnn", "package": "p", "version": "1", "license": "MIT", "description": "[bold]x[/bold]"}], console)
    assert "[bold]x[/bold]" in console.export_text()


def test_the_python_deploy_snippet_opens_the_session_the_config_describes(tmp_path):
    from helpers import linear_model, save
    from ortforge.core.session import ProviderSpec, SessionConfig
    from ortforge.report.deploy import python_snippet

    save(linear_model(), tmp_path / "model.onnx")
    config = SessionConfig(providers=[ProviderSpec("CPUExecutionProvider")], graph_optimization_level="extended", intra_op_num_threads=1,
                           execution_mode="parallel", enable_cpu_mem_arena=False, config_entries={"session.intra_op.allow_spinning": "0"})  # fmt: skip
    scope: dict = {}
    exec(python_snippet(config, str(tmp_path / "model.onnx")), scope)  # the code a user copies, run as they would
    options = scope["session"].get_session_options()
    assert options.intra_op_num_threads == 1 and not options.enable_cpu_mem_arena
    assert str(options.graph_optimization_level).endswith("ORT_ENABLE_EXTENDED") and str(options.execution_mode).endswith("ORT_PARALLEL")
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
