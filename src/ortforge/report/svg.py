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


def scatter(points: Sequence[tuple[str, float, float, str]], *, title: str, x_label: str, y_label: str, front: Sequence[str] = ()) -> str:
    """Labelled points (label, x, y, role: 'chosen' | 'baseline' | 'other'), the Pareto front joined by a line."""
    width, height, margin = 640, 360, 56
    xs = [p[1] for p in points] or [1.0]
    ys = [p[2] for p in points] or [0.0]
    x_low, x_high = min(xs + [1.0]) * 0.95, max(xs + [1.0]) * 1.05
    y_low, y_high = 0.0, max(ys) * 1.15 or 1e-6

    def px(x: float) -> float:
        return margin + (x - x_low) / (x_high - x_low or 1) * (width - 2 * margin)

    def py(y: float) -> float:
        return height - margin - (y - y_low) / (y_high - y_low or 1) * (height - 2 * margin)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">',
        f'<text x="{PAD}" y="16" font-weight="bold" font-size="13">{escape(title)}</text>',
        f'<line x1="{margin}" y1="{height - margin}" x2="{width - margin}" y2="{height - margin}" stroke="#444"/>',
        f'<line x1="{margin}" y1="{margin}" x2="{margin}" y2="{height - margin}" stroke="#444"/>',
        f'<text x="{width / 2}" y="{height - 18}" text-anchor="middle">{escape(x_label)}</text>',
        f'<text x="14" y="{height / 2}" transform="rotate(-90 14 {height / 2})" text-anchor="middle">{escape(y_label)}</text>',
        f'<line x1="{px(1.0):.1f}" y1="{margin}" x2="{px(1.0):.1f}" y2="{height - margin}" stroke="#bbb" stroke-dasharray="4 3"/>',
    ]
    for value in (x_low, (x_low + x_high) / 2, x_high):
        parts.append(f'<text x="{px(value):.1f}" y="{height - margin + 14}" text-anchor="middle">{value:.2f}x</text>')
    for value in (y_low, y_high / 2, y_high):
        parts.append(f'<text x="{margin - 4}" y="{py(value) + 4:.1f}" text-anchor="end">{value:.2g}</text>')
    on_front = sorted((p for p in points if p[0] in front), key=lambda p: p[1])
    if len(on_front) > 1:
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for _, x, y, _ in on_front)
        parts.append(f'<polyline class="front" points="{path}" fill="none" stroke="#2ca02c" stroke-width="2"/>')
    colours = {"chosen": "#d62728", "baseline": "#444444", "other": "#1f77b4"}
    for label, x, y, role in points:
        parts.append(f'<circle class="point" cx="{px(x):.1f}" cy="{py(y):.1f}" r="{6 if role == "chosen" else 4}" fill="{colours.get(role, "#1f77b4")}"><title>{escape(label)}: {x:.3f}x, {y:.3g}</title></circle>')
        if role != "other" or label in front:  # labelling every point makes them unreadable; the table names all
            short = label if len(label) <= 40 else label[:39] + "…"
            parts.append(f'<text x="{px(x) + 7:.1f}" y="{py(y) - 5:.1f}">{escape(short)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def paired_bars(labels: Sequence[str], before: Sequence[float], after: Sequence[float], *, title: str, unit: str, names: tuple[str, str]) -> str:
    """Two bars per label (e.g. per-op time before and after), on one scale."""
    top = PAD * 2 + ROW * 2
    row = ROW * 2
    height = top + row * len(labels) + PAD
    width = LABEL_WIDTH + BAR_WIDTH + 100
    peak = max(list(before) + list(after) + [1e-12])
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
        f'<text x="{PAD}" y="{PAD + 12}" font-weight="bold">{escape(title)}</text>',
        f'<rect x="{LABEL_WIDTH}" y="{PAD + 18}" width="10" height="8" fill="#999"/><text x="{LABEL_WIDTH + 14}" y="{PAD + 26}">{escape(names[0])}</text>',
        f'<rect x="{LABEL_WIDTH + 150}" y="{PAD + 18}" width="10" height="8" fill="#1f77b4"/><text x="{LABEL_WIDTH + 164}" y="{PAD + 26}">{escape(names[1])}</text>',
    ]
    for index, label in enumerate(labels):
        y = top + index * row
        parts.append(f'<text x="{LABEL_WIDTH - 4}" y="{y + 16}" text-anchor="end">{escape(label)}</text>')
        for offset, value, colour in ((0, before[index], "#999"), (ROW - 4, after[index], "#1f77b4")):
            length = max(1.0, BAR_WIDTH * value / peak)
            parts.append(f'<rect class="bar" x="{LABEL_WIDTH}" y="{y + offset + 2}" width="{length:.1f}" height="{ROW - 8}" fill="{colour}"/>')
            parts.append(f'<text x="{LABEL_WIDTH + length + 4:.1f}" y="{y + offset + 12}">{value:.3g}{escape(unit)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)
