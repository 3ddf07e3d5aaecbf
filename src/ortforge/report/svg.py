"""Small SVG charts written by hand: self-contained, viewable offline, no plotting library to install."""

from __future__ import annotations

import math
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
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
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
        short = label if len(label) <= 44 else "…" + label[-43:]  # 44 characters fit LABEL_WIDTH at this font size
        parts.append(f'<text x="{LABEL_WIDTH - 4}" y="{y + 13}" text-anchor="end">{escape(short)}</text>')
        parts.append(f'<rect class="bar" x="{LABEL_WIDTH}" y="{y + 3}" width="{length:.1f}" height="{ROW - 6}" fill="{colour}"/>')
        text = f"{value:.1f}{unit}" if value == value and abs(value) != float("inf") else "exact"
        parts.append(f'<text x="{LABEL_WIDTH + length + 4:.1f}" y="{y + 13}">{escape(text)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


COLOURS = {"chosen": "#d62728", "baseline": "#444444", "other": "#1f77b4"}
EXACT_DECADES = 3  # errors this many decades under the gate's bound are drawn as "exact": the gate cannot see them


def scatter(points: Sequence[tuple[str, float, float, float, float, str]], *, title: str, x_label: str, y_label: str,
            front: Sequence[str] = (), bound: float | None = None) -> str:  # fmt: skip
    """Numbered points (label, ratio, interval low, high, error, role: 'chosen' | 'baseline' | 'other') with their
    intervals as error bars, the Pareto front joined by a line, the gate's bound as a dashed line, and a legend.

    The error axis is logarithmic down to a floor `EXACT_DECADES` below the bound: smaller errors sit on the floor,
    labelled "exact", rather than spreading differences the gate cannot see over the plot. Full names are in each
    point's tooltip and in the numbered table beside the plot."""
    width, height, left, right, top, bottom = 640, 380, 78, 24, 56, 52
    floor = (bound if bound else 1e-4) / 10**EXACT_DECADES
    errors = [max(p[4], floor) for p in points] or [floor]
    ceiling = max(errors + [bound or floor * 10]) * 3
    xs = [v for p in points for v in (p[2], p[3])] + [1.0]
    x_low, x_high = min(xs) - 0.05 * (max(xs) - min(xs) or 1), max(xs) + 0.05 * (max(xs) - min(xs) or 1)

    def px(x: float) -> float:
        return left + (x - x_low) / (x_high - x_low or 1) * (width - left - right)

    lift = 14  # the floor sits above the x axis, so markers on it clear the axis's tick labels

    def py(y: float) -> float:
        span = math.log10(ceiling) - math.log10(floor)
        return height - bottom - lift - (math.log10(max(y, floor)) - math.log10(floor)) / span * (height - top - bottom - lift)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" height="{height}" font-family="sans-serif" font-size="11">',
        f'<text x="{PAD}" y="16" font-weight="bold" font-size="13">{escape(title)}</text>',
        _legend(PAD, 34, bound is not None),
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" stroke="#444"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="#444"/>',
        f'<text x="{(left + width - right) / 2}" y="{height - 12}" text-anchor="middle">{escape(x_label)}</text>',
        f'<text x="14" y="{(top + height - bottom) / 2}" transform="rotate(-90 14 {(top + height - bottom) / 2})" text-anchor="middle">{escape(y_label)} (log)</text>',
        f'<line x1="{px(1.0):.1f}" y1="{top}" x2="{px(1.0):.1f}" y2="{height - bottom}" stroke="#bbb" stroke-dasharray="4 3"/>',
    ]
    ticks = [x_low, x_high] + ([1.0] if min(px(1.0) - px(x_low), px(x_high) - px(1.0)) > 40 else [])
    for value in ticks:  # the end ticks are aligned inwards, clear of the error axis's labels and the plot's edge
        anchor = "start" if value == x_low else "end" if value == x_high else "middle"
        parts.append(f'<text x="{px(value):.1f}" y="{height - bottom + 14}" text-anchor="{anchor}">{value:.2f}x</text>')
    decade = math.ceil(math.log10(floor) + 0.5)
    while 10.0**decade < ceiling:
        parts.append(f'<text x="{left - 5}" y="{py(10.0**decade) + 4:.1f}" text-anchor="end">1e{decade}</text>')
        decade += 1
    parts.append(f'<text x="{left - 5}" y="{py(floor) + 4:.1f}" text-anchor="end">exact</text>')
    if bound:
        parts.append(f'<line class="bound" x1="{left}" y1="{py(bound):.1f}" x2="{width - right}" y2="{py(bound):.1f}" stroke="#d62728" stroke-dasharray="6 4"/>')
    on_front = sorted((p for p in points if p[0] in front), key=lambda p: p[1])
    if len(on_front) > 1:
        path = " ".join(f"{px(p[1]):.1f},{py(p[4]):.1f}" for p in on_front)
        parts.append(f'<polyline class="front" points="{path}" fill="none" stroke="#2ca02c" stroke-width="2"/>')
    groups: list[tuple[float, float, list[int]]] = []  # points drawn within a marker of each other share one label
    for number, (label, x, low, high, y, role) in enumerate(points, 1):
        cx, cy, colour = px(x), py(y), COLOURS.get(role, COLOURS["other"])
        parts.append(f'<line class="interval" x1="{px(low):.1f}" y1="{cy:.1f}" x2="{px(high):.1f}" y2="{cy:.1f}" stroke="{colour}" stroke-width="1.5"/>')
        tip = f"#{number} {label}: {x:.3f}x [{low:.3f}-{high:.3f}], {y_label} {y:.3g}" + (" (exact)" if y <= floor else "")
        parts.append(f'<circle class="point" cx="{cx:.1f}" cy="{cy:.1f}" r="8" fill="{colour}"><title>{escape(tip)}</title></circle>')
        near = next((g for g in groups if abs(g[0] - cx) < 16 and abs(g[1] - cy) < 16), None)
        if near:
            near[2].append(number)
        else:
            groups.append((cx, cy, [number]))
    for cx, cy, numbers in groups:
        if len(numbers) == 1:
            parts.append(f'<text class="number" x="{cx:.1f}" y="{cy + 4:.1f}" text-anchor="middle" fill="white" font-size="10">{numbers[0]}</text>')
        else:  # beside the markers, above the interval bars
            parts.append(f'<text class="number" x="{cx + 10:.1f}" y="{cy - 9:.1f}" font-size="10">{",".join(map(str, numbers))}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def _legend(x: float, y: float, bound: bool) -> str:
    """The marks of the scatter: chosen, baseline, other candidates, interval, front, gate."""
    items = [("circle", COLOURS["chosen"], "chosen"), ("circle", COLOURS["baseline"], "fp32, ORT defaults"), ("circle", COLOURS["other"], "other"),
             ("line", "#444", "95% interval"), ("front", "#2ca02c", "front")] + ([("bound", "#d62728", "gate's bound")] if bound else [])  # fmt: skip
    parts, offset = ['<g class="legend" font-size="10">'], x
    for kind, colour, text in items:
        if kind == "circle":
            parts.append(f'<circle cx="{offset + 5}" cy="{y - 3}" r="5" fill="{colour}"/>')
        else:
            dash = ' stroke-dasharray="6 4"' if kind == "bound" else ""
            parts.append(f'<line x1="{offset}" y1="{y - 3}" x2="{offset + 14}" y2="{y - 3}" stroke="{colour}" stroke-width="2"{dash}/>')
        parts.append(f'<text x="{offset + 18}" y="{y}">{escape(text)}</text>')
        offset += 26 + 6 * len(text)
    return "".join(parts) + "</g>"


def paired_bars(labels: Sequence[str], before: Sequence[float], after: Sequence[float], *, title: str, unit: str, names: tuple[str, str]) -> str:
    """Two bars per label (e.g. per-op time before and after), on one scale."""
    top = PAD * 2 + ROW * 2
    row = ROW * 2
    height = top + row * len(labels) + PAD
    width = LABEL_WIDTH + BAR_WIDTH + 100
    peak = max(list(before) + list(after) + [1e-12])
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
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
