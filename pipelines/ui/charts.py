"""Inline SVG charts (no script, no external resource): a line chart of one feature's drift
score over the batches scored, with the alarm threshold as a dashed line
(``templates/line_chart.svg.j2``), and a tuning study's trials over time: each trial's
value by trial number, pruned trials at the last value they reported in another mark, and
the best value so far as a step line (``templates/trials_chart.svg.j2``). The geometry is
computed here; the markup is in the templates."""

from __future__ import annotations

import math

from pipelines.templating import environment
from pipelines.ui.data import DriftSeries, Study

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


def _frame(width: int, height: int) -> dict[str, object]:
    """Where a chart's plot area and axis label sit, for its SVG template."""
    plot_w, plot_h = width - LEFT - RIGHT, height - TOP - BOTTOM
    return {"left": LEFT, "right": width - RIGHT, "top": TOP, "bottom": TOP + plot_h,
            "middle": f"{LEFT + plot_w / 2:.1f}", "axis_label_y": TOP + plot_h + 16}


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
        **_frame(width, height),
        ticks=ticks,
        threshold=alarm,
        polyline=polyline,
        points=dots,
        first=_short(str(points[0].batch_id or "")) if points else "",
        last=_short(str(points[-1].batch_id or "")) if points else "",
    )


def nice_range(low: float, high: float) -> tuple[float, float, float]:
    """Round axis bounds around ``low``..``high`` and the step between four gridlines."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return 0.0, 1.0, 0.25
    if high - low < 1e-9:
        pad = abs(high) * 0.05 or 0.05
        low, high = low - pad, high + pad
    raw = (high - low) / 4
    exp = math.floor(math.log10(raw))
    step = next(s * 10**exp for s in (1, 2, 2.5, 5, 10) if s * 10**exp >= raw * 0.999)
    lo = math.floor(low / step + 1e-9) * step
    hi = math.ceil(high / step - 1e-9) * step
    while (hi - lo) / step > 4.001:  # widen the step until four gridlines cover the range
        step = nice_max(step * 1.01)
        lo, hi = math.floor(low / step + 1e-9) * step, math.ceil(high / step - 1e-9) * step
    return lo, hi, step


def trials_chart(study: Study, width: int = WIDTH * 2, height: int = HEIGHT + 20) -> str:
    """A study's trials over time as an SVG element: complete trials as dots at their value,
    pruned ones as crosses at the last value they reported, the best value so far as a step
    line (higher is better unless the study minimises)."""
    maximize = study.direction != "minimize"
    complete = [(t.number, t.value) for t in study.trials if t.state == "COMPLETE" and t.value is not None]
    pruned = [(t.number, t.last_intermediate, t.last_epoch) for t in study.trials
              if t.state == "PRUNED" and t.last_intermediate is not None]
    values = [v for _, v in complete] + [v for _, v, _ in pruned]
    numbers = [t.number for t in study.trials] or [0]
    lo, hi, step = nice_range(min(values), max(values)) if values else (0.0, 1.0, 0.25)
    n_lo, n_hi = min(numbers), max(numbers)
    plot_w, plot_h = width - LEFT - RIGHT, height - TOP - BOTTOM

    def x(n: int) -> float:
        return LEFT + (plot_w / 2 if n_hi == n_lo else plot_w * (n - n_lo) / (n_hi - n_lo))

    def y(v: float) -> float:
        return TOP + plot_h * (1 - (min(max(v, lo), hi) - lo) / (hi - lo))

    ticks = []
    for k in range(round((hi - lo) / step) + 1):
        v = lo + k * step
        ticks.append({"y": f"{y(v):.1f}", "label_y": f"{y(v) + 3:.1f}", "label": _fmt(round(v, 10))})
    best_points: list[str] = []
    best = None
    for number, value in complete:  # the best so far, as steps
        if best is None or (value > best if maximize else value < best):
            if best is not None:
                best_points.append(f"{x(number):.1f},{y(best):.1f}")
            best = value
            best_points.append(f"{x(number):.1f},{y(best):.1f}")
    if best is not None and complete and complete[-1][0] < n_hi:
        best_points.append(f"{x(n_hi):.1f},{y(best):.1f}")
    dots = [{"cx": f"{x(n):.1f}", "cy": f"{y(v):.1f}", "number": n, "value": _fmt(v), "best": v == best}
            for n, v in complete]
    crosses = [{"x": x(n), "y": y(v), "number": n, "value": _fmt(v), "epoch": e} for n, v, e in pruned]
    for c in crosses:
        c["path"] = (f"M{c['x'] - 3:.1f},{c['y'] - 3:.1f}L{c['x'] + 3:.1f},{c['y'] + 3:.1f}"
                     f"M{c['x'] - 3:.1f},{c['y'] + 3:.1f}L{c['x'] + 3:.1f},{c['y'] - 3:.1f}")
    return _ENV.get_template("trials_chart.svg.j2").render(
        width=width,
        height=height,
        metric=study.metric,
        label=_short(study.study, 40),
        best=None if best is None else _fmt(best),
        **_frame(width, height),
        ticks=ticks,
        best_line=" ".join(best_points) if len(best_points) > 1 else "",
        dots=dots,
        crosses=crosses,
        first=n_lo,
        last=n_hi,
        total=len(study.trials),
    )
