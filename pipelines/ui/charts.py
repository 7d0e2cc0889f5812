"""Inline SVG charts (no script, no external resource): a line chart of one feature's drift
score over the batches scored, with the alarm threshold as a dashed line."""

from __future__ import annotations

import math
from html import escape

from pipelines.ui.data import DriftSeries

WIDTH, HEIGHT = 330, 160
LEFT, RIGHT, TOP, BOTTOM = 44, 12, 24, 30


def nice_max(value: float) -> float:
    """A round upper bound for an axis whose quarters are round too (1, 2, 4 or 8 times a
    power of ten)."""
    if value <= 0 or not math.isfinite(value):
        return 1.0
    exp = math.floor(math.log10(value))
    for step in (1, 2, 4, 8, 10):
        bound = step * 10**exp
        if bound >= value * 0.999:
            return bound
    return 10 ** (exp + 1)


def _fmt(x: float) -> str:
    if x == 0:
        return "0"
    return f"{x:.3g}" if abs(x) >= 0.001 else f"{x:.1e}"


def _short(text: str, n: int = 14) -> str:
    return text if len(text) <= n else text[: n - 1] + "\u2026"


def line_chart(series: DriftSeries, metric: str = "PSI", width: int = WIDTH, height: int = HEIGHT) -> str:
    points = series.points
    threshold = series.threshold
    top_value = max([p.value for p in points] + ([threshold * 1.15] if threshold else []) + [1e-9])
    y_max = nice_max(top_value)
    plot_w, plot_h = width - LEFT - RIGHT, height - TOP - BOTTOM

    def x(i: int) -> float:
        return LEFT + (plot_w / 2 if len(points) == 1 else plot_w * i / (len(points) - 1))

    def y(v: float) -> float:
        return TOP + plot_h * (1 - min(max(v, 0.0), y_max) / y_max)

    label = escape(series.label)
    out = [
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(metric)} of {label} over {len(points)} batches">',
        f'<text class="ct" x="{LEFT}" y="15">{label}</text>',
        f'<text class="cm" x="{width - RIGHT}" y="15" text-anchor="end">{escape(metric)}, peak {_fmt(series.peak)}</text>',
    ]
    for k in range(5):  # gridlines and y ticks
        v = y_max * k / 4
        yy = y(v)
        out.append(f'<line class="grid" x1="{LEFT}" x2="{width - RIGHT}" y1="{yy:.1f}" y2="{yy:.1f}"/>')
        out.append(f'<text class="tick" x="{LEFT - 5}" y="{yy + 3:.1f}" text-anchor="end">{_fmt(v)}</text>')
    out.append(f'<line class="axis" x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{TOP + plot_h}"/>')
    out.append(f'<line class="axis" x1="{LEFT}" x2="{width - RIGHT}" y1="{TOP + plot_h}" y2="{TOP + plot_h}"/>')
    if threshold:
        ty = y(threshold)
        out.append(f'<line class="thr" x1="{LEFT}" x2="{width - RIGHT}" y1="{ty:.1f}" y2="{ty:.1f}"/>')
        out.append(f'<text class="thrl" x="{width - RIGHT - 2}" y="{ty - 3:.1f}" text-anchor="end">alarm {_fmt(threshold)}</text>')
    if len(points) > 1:
        path = " ".join(f"{x(i):.1f},{y(p.value):.1f}" for i, p in enumerate(points))
        out.append(f'<polyline class="series" points="{path}"/>')
    for i, p in enumerate(points):
        over = threshold is not None and p.value >= threshold
        tip = escape(f"{p.batch_id or '?'}: {metric} {_fmt(p.value)}" + (f" ({p.scored_at})" if p.scored_at else ""))
        out.append(
            f'<circle class="{"pt over" if over else "pt"}" cx="{x(i):.1f}" cy="{y(p.value):.1f}" r="3">'
            f"<title>{tip}</title></circle>"
        )
    if points:
        base = TOP + plot_h + 16
        first, last = points[0].batch_id or "", points[-1].batch_id or ""
        out.append(f'<text class="tick" x="{LEFT}" y="{base}">{escape(_short(str(first)))}</text>')
        if len(points) > 1:
            out.append(
                f'<text class="tick" x="{width - RIGHT}" y="{base}" text-anchor="end">{escape(_short(str(last)))}</text>'
            )
        out.append(
            f'<text class="tick" x="{LEFT + plot_w / 2:.1f}" y="{base + 11}" text-anchor="middle">'
            f"{len(points)} batch{'es' if len(points) != 1 else ''}</text>"
        )
    out.append("</svg>")
    return "".join(out)
