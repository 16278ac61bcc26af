"""Charts drawn on the server as inline SVG: no script, no CDN, nothing fetched by the browser.

Pure functions from numbers to SVG markup (escaped; safe to insert as-is). Two shapes cover the
network page: `bars` (one bar per bucket, stacked when there are several series: requests per block
range, verifications by outcome) and `lines` (one polyline per series: total stake over time,
active nodes per epoch). Every chart carries `role="img"`, a `<title>` and an `aria-label`, a
y-axis with rounded ticks, x labels at a few buckets, a legend, and per-bar `<title>` tooltips,
so it reads without hovering and with a screen reader.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape

W, H = 720, 220
LEFT, RIGHT, TOP, BOTTOM = 64, 12, 24, 40
MAX_BAR = 48  # px: one epoch's bar stays a bar, not a wall
PALETTE = {"passed": "#1a7f37", "fraud": "#cf222e", "refunded": "#bc4c00",
           "unresolved": "#8250df", "pending": "#9a6700", "suspected": "#bf8700",
           "void": "#57606a"}
DEFAULT_COLORS = ("#0b5cad", "#2da44e", "#bf3989", "#6e7781", "#e16f24")


def _color(name: str, i: int) -> str:
    return PALETTE.get(name, DEFAULT_COLORS[i % len(DEFAULT_COLORS)])


def nice_max(v: float) -> float:
    """The smallest 1, 2 or 5 × 10^k at or above `v` (the y axis's top)."""
    if v <= 0:
        return 1.0
    e = 10 ** math.floor(math.log10(v))
    for m in (1, 2, 5, 10):
        if m * e >= v:
            return float(m * e)
    return float(10 * e)  # pragma: no cover - the loop always returns


def _fmt(v: float) -> str:
    if v >= 1e6:
        return f"{v / 1e6:g}M"
    if v >= 1e3:
        return f"{v / 1e3:g}k"
    return f"{v:g}"


def _frame(chart_id: str, title: str, top: float, unit: str, labels: Sequence[str],
           series: Sequence[str], body: list[str]) -> str:
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM
    out = [f'<svg id="{escape(chart_id)}" class="chart" viewBox="0 0 {W} {H}" role="img" '
           f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
           f"<title>{escape(title)}</title>"]
    for k in range(5):  # y grid and ticks
        v = top * k / 4
        y = TOP + ph - ph * k / 4
        out.append(f'<line class="grid" x1="{LEFT}" x2="{LEFT + pw}" y1="{y:.1f}" y2="{y:.1f}"/>')
        out.append(f'<text class="tick" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">'
                   f"{_fmt(v)}</text>")
    if unit:
        out.append(f'<text class="unit" x="4" y="12">{escape(unit)}</text>')
    n = len(labels)
    step = max(1, math.ceil(n / 8))
    for i in range(0, n, step):  # a few x labels, never crowded
        x = LEFT + pw * (i + 0.5) / n
        out.append(f'<text class="tick" x="{x:.1f}" y="{TOP + ph + 16}" text-anchor="middle">'
                   f"{escape(labels[i])}</text>")
    out.extend(body)
    lx = LEFT
    for i, name in enumerate(series):  # legend under the axis
        out.append(f'<rect x="{lx}" y="{H - 14}" width="10" height="10" '
                   f'fill="{_color(name, i)}"/>')
        out.append(f'<text class="legend" x="{lx + 14}" y="{H - 5}">{escape(name)}</text>')
        lx += 24 + 7 * len(name)
    out.append("</svg>")
    return "".join(out)


def bars(chart_id: str, title: str, labels: Sequence[str], series: Mapping[str, Sequence[float]],
         unit: str = "") -> str:
    """One bar per label, the series stacked bottom-up in their order (counts: the axis has
    whole-number ticks)."""
    names = list(series)
    totals = [sum(series[s][i] for s in names) for i in range(len(labels))]
    top = max(4.0, nice_max(max(totals, default=0)))
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM
    n = max(1, len(labels))
    bw = pw / n
    w = min(bw * 0.8, MAX_BAR)
    body: list[str] = []
    for i, label in enumerate(labels):
        base = 0.0
        for j, name in enumerate(names):
            v = float(series[name][i])
            if v <= 0:
                continue
            y0 = TOP + ph - ph * base / top
            h = ph * v / top
            body.append(f'<rect class="bar" data-series="{escape(name)}" data-value="{v:g}" '
                        f'x="{LEFT + i * bw + (bw - w) / 2:.1f}" y="{y0 - h:.1f}" '
                        f'width="{w:.1f}" height="{h:.1f}" fill="{_color(name, j)}">'
                        f"<title>{escape(label)}: {v:g} {escape(name)}</title></rect>")
            base += v
    if not any(totals):
        body.append(f'<text class="empty" x="{LEFT + pw / 2}" y="{TOP + ph / 2}" '
                    f'text-anchor="middle">nothing yet</text>')
    return _frame(chart_id, title, top, unit, labels, names, body)


def lines(chart_id: str, title: str, labels: Sequence[str], series: Mapping[str, Sequence[float]],
          unit: str = "") -> str:
    """One polyline per series over the labels (a dot per point, with its value as a tooltip)."""
    names = list(series)
    top = nice_max(max((max(v, default=0) for v in series.values()), default=0))
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM
    n = max(1, len(labels))
    body: list[str] = []
    for j, name in enumerate(names):
        pts = [(LEFT + pw * (i + 0.5) / n, TOP + ph - ph * float(v) / top)
               for i, v in enumerate(series[name])]
        if len(pts) > 1:
            body.append(f'<polyline class="line" data-series="{escape(name)}" fill="none" '
                        f'stroke="{_color(name, j)}" stroke-width="2" points="'
                        + " ".join(f"{x:.1f},{y:.1f}" for x, y in pts) + '"/>')
        for (x, y), label, v in zip(pts, labels, series[name], strict=True):
            body.append(f'<circle class="point" cx="{x:.1f}" cy="{y:.1f}" r="3" '
                        f'fill="{_color(name, j)}"><title>{escape(label)}: {float(v):g} '
                        f"{escape(name)}</title></circle>")
    if not labels:
        body.append(f'<text class="empty" x="{LEFT + pw / 2}" y="{TOP + ph / 2}" '
                    f'text-anchor="middle">nothing yet</text>')
    return _frame(chart_id, title, top, unit, labels, names, body)
