"""Small SVG charts written by hand: self-contained, viewable offline, no plotting library to install."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

ROW = 18
LABEL_WIDTH = 320
BAR_WIDTH = 360
PAD = 8


def bar_chart(labels: Sequence[str], values: Sequence[float], *, title: str, unit: str = "", worse_is_lower: bool = True) -> str:
    """Horizontal bars, one row per label; the worst rows drawn in red when lower values are worse."""
    top = PAD * 2 + ROW
    height = top + ROW * len(labels) + PAD
    width = LABEL_WIDTH + BAR_WIDTH + 90
    finite = [v for v in values if v == v and abs(v) != float("inf")]
    peak = max((abs(v) for v in finite), default=1.0) or 1.0
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
        f'<text x="{PAD}" y="{PAD + 12}" font-weight="bold">{escape(title)}</text>',
    ]
    ordered = sorted(finite)
    threshold = ordered[len(ordered) // 4] if ordered else 0.0
    for index, (label, value) in enumerate(zip(labels, values)):
        y = top + index * ROW
        shown = value if value == value and abs(value) != float("inf") else peak
        length = max(1.0, BAR_WIDTH * abs(shown) / peak)
        bad = (value <= threshold) if worse_is_lower else (value >= ordered[-(len(ordered) // 4) - 1] if ordered else False)
        colour = "#d62728" if bad else "#1f77b4"
        short = label if len(label) <= 48 else "…" + label[-47:]
        parts.append(f'<text x="{LABEL_WIDTH - 4}" y="{y + 13}" text-anchor="end">{escape(short)}</text>')
        parts.append(f'<rect class="bar" x="{LABEL_WIDTH}" y="{y + 3}" width="{length:.1f}" height="{ROW - 6}" fill="{colour}"/>')
        text = f"{value:.1f}{unit}" if value == value and abs(value) != float("inf") else "exact"
        parts.append(f'<text x="{LABEL_WIDTH + length + 4:.1f}" y="{y + 13}">{escape(text)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)
