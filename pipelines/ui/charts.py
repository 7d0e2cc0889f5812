"""Inline SVG charts (no script, no external resource): a line chart of one feature's drift
score over the batches scored, with the alarm threshold as a dashed line. The geometry is
computed here; the markup is ``templates/line_chart.svg.j2``."""

from __future__ import annotations

import math

from pipelines.templating import environment
from pipelines.ui.data import DriftSeries

WIDTH, HEIGHT = 330, 160
LEFT, RIGHT, TOP, BOTTOM = 44, 12, 24, 30

_ENV = environment(__file__)


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
    """The chart as an SVG element (a string of markup, its text escaped by the template)."""
    points = series.points
    threshold = series.threshold
    top_value = max([p.value for p in points] + ([threshold * 1.15] if threshold else []) + [1e-9])
    y_max = nice_max(top_value)
    plot_w, plot_h = width - LEFT - RIGHT, height - TOP - BOTTOM

    def x(i: int) -> float:
        return LEFT + (plot_w / 2 if len(points) == 1 else plot_w * i / (len(points) - 1))

    def y(v: float) -> float:
        return TOP + plot_h * (1 - min(max(v, 0.0), y_max) / y_max)

    ticks = []
    for k in range(5):  # gridlines and y ticks
        v = y_max * k / 4
        ticks.append({"y": f"{y(v):.1f}", "label_y": f"{y(v) + 3:.1f}", "label": _fmt(v)})
    alarm = None
    if threshold:
        ty = y(threshold)
        alarm = {"y": f"{ty:.1f}", "label_y": f"{ty - 3:.1f}", "label": _fmt(threshold)}
    polyline = " ".join(f"{x(i):.1f},{y(p.value):.1f}" for i, p in enumerate(points)) if len(points) > 1 else ""
    dots = [
        {
            "over": threshold is not None and p.value >= threshold,
            "cx": f"{x(i):.1f}",
            "cy": f"{y(p.value):.1f}",
            "batch_id": p.batch_id or "?",
            "value": _fmt(p.value),
            "scored_at": p.scored_at,
        }
        for i, p in enumerate(points)
    ]
    return _ENV.get_template("line_chart.svg.j2").render(
        width=width,
        height=height,
        metric=metric,
        label=series.label,
        peak=_fmt(series.peak),
        left=LEFT,
        right=width - RIGHT,
        top=TOP,
        bottom=TOP + plot_h,
        middle=f"{LEFT + plot_w / 2:.1f}",
        axis_label_y=TOP + plot_h + 16,
        ticks=ticks,
        threshold=alarm,
        polyline=polyline,
        points=dots,
        first=_short(str(points[0].batch_id or "")) if points else "",
        last=_short(str(points[-1].batch_id or "")) if points else "",
    )
