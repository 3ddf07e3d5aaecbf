"""The tune report: one self-contained HTML file (inline CSS and SVG, no scripts from anywhere else)."""

from __future__ import annotations

from html import escape
from typing import Any

from ortforge.report.svg import paired_bars, scatter

STYLE = """
body { font-family: -apple-system, Segoe UI, sans-serif; margin: 2em auto; max-width: 1000px; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; } td, th { border: 1px solid #ddd; padding: 4px 8px; text-align: left; }
.figures { display: flex; gap: 1.5em; flex-wrap: wrap; } .figure { background: #f5f7fa; padding: 0.8em 1.2em; border-radius: 6px; }
.figure b { display: block; font-size: 1.5em; } .note { color: #8a6d00; } code { background: #f0f0f0; padding: 1px 4px; }
"""
# Marks in the page how many plot elements drew, so a headless browser test can check it.
COUNT_SCRIPT = "<script>document.body.dataset.plotElements = document.querySelectorAll('svg .point, svg .bar').length;</script>"


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _figure(label: str, value: str) -> str:
    return f'<div class="figure">{escape(label)}<b>{escape(value)}</b></div>'


RATIO_LABELS = {"throughput": "time per request vs ORT defaults", "startup": "start-up vs ORT defaults"}


def render_report(data: dict[str, Any]) -> str:
    """HTML from the artifact record (what ortforge.json holds) plus the plot inputs."""
    summary = data["summary"]
    sections = [
        f"<h1>ortforge tune: {escape(data['model_name'])}</h1>",
        f"<p>{escape(data['why'])}</p>",
        '<div class="figures">'
        + _figure(RATIO_LABELS.get(data.get("objective", "latency"), "latency vs ORT defaults"), summary["speedup"])
        + _figure("accuracy", summary["accuracy"])
        + _figure("size", summary["size"])
        + _figure("start-up", summary["startup"])
        + (_figure("throughput", summary["throughput"]) if "throughput" in summary else "")
        + "</div>",
        f"<p>Still right: {escape(summary.get('evidence', '-'))}. Faster: {escape(summary['speedup'])} (95% interval), against a noise floor of "
        f"{escape(summary.get('noise', '-'))}; {escape(summary.get('machine', ''))}.</p>",
        "".join(f'<p class="note">{escape(note)}</p>' for note in data.get("notes", [])),
        "<h2>Latency vs accuracy</h2>",
        f"<p>Points from the {escape(data.get('points_run', 'final interleaved run'))}; ratios are medians of per-round ratios with 95% intervals. "
        f"Noise floor of that run (fp32 measured twice, A/A): {escape(summary.get('noise', '-'))}.</p>",
        scatter(data["points"], title="Latency ratio to fp32 + ORT defaults vs error", x_label="latency ratio (lower is faster)",
                y_label=data["error_label"], front=data["front"]),  # fmt: skip
        ("<h2>Head to head: the choice and each of its components</h2>"
         + _table(["variant", "p50", "ratio [95% interval]", "vs fp32 + ORT defaults", data["error_label"], "on the front", ""], data["ablation_rows"])
         if data.get("ablation_rows") else ""),
        "<h2>Finalists (final interleaved run)</h2>",
        _table(["candidate", "p50", "latency ratio [95% interval]", "rounds won", data["error_label"]], data["finalist_rows"]),
        "<h2>Time per op type, before and after</h2>",
        paired_bars(data["ops"]["labels"], data["ops"]["before"], data["ops"]["after"], title="kernel time per run (ms), ORT profiler",
                    unit=" ms", names=("fp32, ORT defaults", "chosen")) if data["ops"]["labels"] else "<p>no profile</p>",  # fmt: skip
        "<h2>Node placement</h2>",
        _table(["candidate", "nodes per EP", "left to the CPU"], data["placement_rows"]),
        "<h2>Rejected candidates</h2>",
        _table(["candidate", "why"], data["rejected"]) if data["rejected"] else "<p>none</p>",
        "<h2>Reproduce</h2>",
        "".join(f"<p><code>{escape(command)}</code></p>" for command in data["commands"]),
        "<h2>Environment</h2>",
        _table(["", ""], [[k, v] for k, v in data["environment"].items()]),
    ]
    return f"<!doctype html><html><head><meta charset='utf-8'><title>ortforge tune report</title><style>{STYLE}</style></head><body>{''.join(sections)}{COUNT_SCRIPT}</body></html>"
