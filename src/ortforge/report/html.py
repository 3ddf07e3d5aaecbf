"""The tune report: one self-contained HTML file (inline CSS and SVG, no scripts from anywhere else)."""

from __future__ import annotations

from html import escape
from typing import Any

from ortforge.report.deploy import snippets
from ortforge.report.svg import paired_bars, scatter

STYLE = """
body { font-family: -apple-system, Segoe UI, sans-serif; margin: 2em auto; max-width: 1000px; padding: 0 1em; color: #222; }
svg { max-width: 100%; height: auto; } .scroll { overflow-x: auto; } pre { background: #f5f7fa; padding: 0.8em; overflow-x: auto; }
h1 { font-size: 1.6em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; } td, th { border: 1px solid #ddd; padding: 4px 8px; text-align: left; }
.figures { display: flex; gap: 1.5em; flex-wrap: wrap; } .figure { background: #f5f7fa; padding: 0.8em 1.2em; border-radius: 6px; }
.figure b { display: block; font-size: 1.5em; } .note { color: #8a6d00; } code { background: #f0f0f0; padding: 1px 4px; }
"""
# Marks in the page how many plot elements drew, so a headless browser test can check it.
COUNT_SCRIPT = "<script>document.body.dataset.plotElements = document.querySelectorAll('svg .point, svg .bar').length;</script>"


def _table(headers: list[str], rows: list[list[Any]], numbered: bool = False) -> str:
    """A table that scrolls sideways on a narrow page instead of overflowing it; `numbered` keys rows to plot points."""
    if numbered:
        headers, rows = ["#", *headers], [[index, *row] for index, row in enumerate(rows, 1)]
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f'<div class="scroll"><table><tr>{head}</tr>{body}</table></div>'


def _figure(label: str, value: str) -> str:
    return f'<div class="figure">{escape(label)}<b>{escape(value)}</b></div>'


RATIO_LABELS = {"throughput": "time per request vs ORT defaults", "startup": "start-up vs ORT defaults",
                "decode": "time per generated token vs ORT defaults", "prefill": "prefill latency vs ORT defaults"}


def _latency(figures: dict[str, Any]) -> str:
    """p50 / p90 / p99 of the chosen model and of fp32 with ORT defaults, in ms."""
    chosen, baseline = figures["latency_ms"]["chosen"], figures["latency_ms"]["baseline"]
    return " / ".join(f"{chosen[q]:.3g}" for q in ("p50", "p90", "p99")) + " ms (was " + " / ".join(f"{baseline[q]:.3g}" for q in ("p50", "p90", "p99")) + ")"


def _inputs(data: dict[str, Any]) -> str:
    rows = []
    for role, inputs in (("judged on", data.get("inputs")), ("calibrated on", data.get("calibration_inputs"))):
        if inputs:
            shapes = ", ".join(f"{name} {shape}" for name, shape in inputs.get("shapes", {}).items())
            rows.append([role, inputs.get("origin", "-"), inputs.get("samples", "-"), "generated" if inputs.get("generated") else "real", shapes])
    return _table(["", "source", "samples", "kind", "shapes"], rows) if rows else "<p>not recorded</p>"


def _deploy(data: dict[str, Any]) -> str:
    if "session" not in data:
        return ""
    code = snippets(data["session"], "model.onnx", data.get("requests_in_flight", 1))
    return ("<h2>Deploy with plain ONNX Runtime</h2><p>The session config (as in ortforge.json) in Python:</p>"
            f"<pre><code>{escape(code['python'])}</code></pre><p>In C++:</p><pre><code>{escape(code['cpp'])}</code></pre>")  # fmt: skip


def render_report(data: dict[str, Any]) -> str:
    """HTML from the artifact record (what ortforge.json holds) plus the plot inputs."""
    summary = data["summary"]
    numbered = data.get("points_from", "finalists")
    ablation = data.get("ablation_rows")
    sections = [
        f"<h1>ortforge tune: {escape(data['model_name'])}</h1>",
        f"<p>{escape(data['why'])}</p>",
        '<div class="figures">'
        + _figure(RATIO_LABELS.get(data.get("objective", "latency"), "latency vs ORT defaults"), summary["speedup"])
        + _figure("latency p50 / p90 / p99", _latency(data["figures"]))
        + _figure("accuracy", summary["accuracy"])
        + _figure("size", summary["size"])
        + _figure("start-up", summary["startup"])
        + (_figure("throughput", summary["throughput"]) if "throughput" in summary else "")
        + "</div>",
        f"<p>Still right: {escape(summary.get('evidence', '-'))}. Faster: {escape(summary['speedup'])} (95% interval), against a noise floor of "
        f"{escape(summary.get('noise', '-'))}; {escape(summary.get('machine', ''))}.</p>",
        (f"<p>Roofline: {escape(summary['roofline'])}.</p>" if "roofline" in summary else ""),
        "".join(f'<p class="note">{escape(note)}</p>' for note in data.get("notes", [])),
        "<h2>Latency vs accuracy</h2>",
        f"<p>Points from the {escape(data.get('points_run', 'final interleaved run'))}, numbered as the rows of the "
        f"{'head-to-head' if numbered == 'ablation' else 'finalists'} table below; each bar is the ratio's 95% interval. Noise floor of that "
        f"run (fp32 measured twice, A/A): {escape(summary.get('noise', '-'))}. Errors far below the gate's bound are drawn as exact.</p>",
        scatter(data["points"], title="Latency ratio to fp32 + ORT defaults vs error", x_label="latency ratio (lower is faster)",
                y_label=data["error_label"], front=data["front"], bound=data.get("error_bound")),  # fmt: skip
        ("<h2>Head to head: the choice and each of its components</h2>"
         + _table(["variant", "p50", "ratio [95% interval]", "vs fp32 + ORT defaults", data["error_label"], "on the front", ""], ablation,
                  numbered=numbered == "ablation") if ablation else ""),  # fmt: skip
        "<h2>Finalists (final interleaved run)</h2>",
        _table(["candidate", "p50", "latency ratio [95% interval]", "rounds won", data["error_label"]], data["finalist_rows"], numbered=numbered == "finalists"),
        "<h2>Time per op type, before and after</h2>",
        paired_bars(data["ops"]["labels"], data["ops"]["before"], data["ops"]["after"], title="kernel time per run (ms), ORT profiler",
                    unit=" ms", names=("fp32, ORT defaults", "chosen")) if data["ops"]["labels"] else "<p>no profile</p>",  # fmt: skip
        "<h2>Inputs</h2>",
        _inputs(data),
        _deploy(data),
        "<h2>Node placement</h2>",
        _table(["candidate", "nodes per EP", "left to the CPU"], data["placement_rows"]),
        "<h2>Rejected candidates</h2>",
        _table(["candidate", "why"], data["rejected"]) if data["rejected"] else "<p>none</p>",
        "<h2>Reproduce</h2>",
        "".join(f"<p><code>{escape(command)}</code></p>" for command in data["commands"]),
        "<h2>Environment</h2>",
        _table(["", ""], [[k, v] for k, v in data["environment"].items()]),
    ]
    return f"<!doctype html><html><head><meta charset='utf-8'><meta name='viewport' content='width=device-width'><title>ortforge tune report</title><style>{STYLE}</style></head><body>{''.join(sections)}{COUNT_SCRIPT}</body></html>"
