"""The report's HTML and SVG, and the terminal rendering, drawn from result objects."""

from __future__ import annotations

import re

from rich.console import Console

from ortforge.report.html import render_report
from ortforge.report.svg import bar_chart, paired_bars, scatter
from ortforge.report.terminal import render_zoo


def test_scatter_draws_every_point_and_joins_the_front():
    points = [("fp32 | ORT defaults", 1.0, 0.0, "baseline"), ("int8 <a>", 0.5, 0.002, "chosen"), ("other", 0.8, 0.01, "other")]
    svg = scatter(points, title="t", x_label="x", y_label="y", front=["fp32 | ORT defaults", "int8 <a>"])
    assert svg.count('class="point"') == 3 and 'class="front"' in svg
    assert "int8 &lt;a&gt;" in svg and "<a>" not in svg  # labels are escaped


def test_bar_charts_mark_infinite_values_as_exact():
    svg = bar_chart(["a", "b"], [float("inf"), 12.5], title="SQNR")
    assert svg.count('class="bar"') == 2 and "exact" in svg and "12.5" in svg
    paired = paired_bars(["MatMul"], [2.0], [1.0], title="ops", unit=" ms", names=("before", "after"))
    assert paired.count('class="bar"') == 2 and "before" in paired


def _record() -> dict:
    return {
        "model_name": "zoo:<tiny>", "why": "int8 won", "objective": "latency",
        "summary": {"speedup": "0.50x (0.45-0.55)", "accuracy": "cosine 0.999", "size": "1 MiB", "startup": "5 ms", "throughput": "10/s"},
        "notes": ["a note"], "points": [("fp32", 1.0, 0.0, "baseline"), ("int8", 0.5, 0.001, "chosen")], "front": ["fp32", "int8"],
        "error_label": "1 - cosine", "finalist_rows": [["int8", "0.5", "100%", "0.001", "yes"]],
        "ops": {"labels": ["MatMul"], "before": [1.0], "after": [0.5]}, "placement_rows": [["int8", "CPU 3", "0"]],
        "rejected": [["static", "cosine 0.5 misses cosine >= 0.99"]], "commands": ["ortforge tune m.onnx -o out"],
        "environment": {"onnxruntime": "1.31.1"},
    }  # fmt: skip


def test_the_html_report_holds_every_section_escaped():
    html = render_report(_record())
    for heading in ("Latency vs accuracy", "Time per op type", "Node placement", "Rejected candidates", "Reproduce", "Environment"):
        assert f"<h2>{heading}" in html
    assert "zoo:&lt;tiny&gt;" in html and "0.50x (0.45-0.55)" in html and "cosine 0.5 misses" in html
    assert not re.search(r"<(script|link)[^>]+src=", html)  # self-contained: nothing fetched


def test_terminal_rendering_escapes_rich_markup():
    console = Console(record=True, width=200)
    render_zoo([{"name": "m", "family": "cnn", "package": "p", "version": "1", "license": "MIT", "description": "[bold]x[/bold]"}], console)
    assert "[bold]x[/bold]" in console.export_text()
