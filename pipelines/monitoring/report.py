"""A drift report a person can read: one self-contained HTML file per batch.

The page has the verdict, the drifted features with by how much, a table of every
score of every feature (PSI, JSD, L-inf, KS, chi-square, the thresholds and the
decision), the performance figures when labels came with the batch, and one chart per
drifted feature: reference against current shares per bucket (the numeric bins or the
categories). Charts are drawn with matplotlib (Agg, no display) and embedded as PNG;
without matplotlib a plain inline SVG chart is drawn instead. Everything comes from the
report dict, so a stored JSON report can be re-rendered later. The markup is in
``templates/`` (Jinja2, autoescaped).
"""

from __future__ import annotations

import base64
import io
import math
from pathlib import Path
from typing import Any

from markupsafe import Markup

from pipelines.specs.drift import EFFECT_METRICS
from pipelines.templating import environment

MAX_BARS = 30
PERFORMANCE_KEYS = (
    "auc", "auc_ref", "auc_drop", "auc_se", "auc_threshold", "auc_pvalue", "n", "positives",
    "positive_rate", "positive_rate_ref", "positive_rate_change",
)


def _fmt(x: Any, digits: int = 4) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        if not math.isfinite(x):
            return str(x)
        if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e6):
            return f"{x:.2e}"
        return f"{x:.{digits}f}"
    return str(x)


_ENV = environment(__file__)
_ENV.filters["fmt"] = _fmt
_ENV.filters["format_as"] = format


def _chart_data(finding: dict[str, Any]) -> tuple[list[str], list[float], list[float]]:
    """Buckets to draw (empty ones dropped; categorical: the largest MAX_BARS)."""
    dist = finding["distribution"]
    rows = [(b, r, c) for b, r, c in zip(dist["buckets"], dist["ref"], dist["cur"], strict=True) if r > 0 or c > 0]
    if finding["kind"] == "categorical" and len(rows) > MAX_BARS:
        rows = sorted(rows, key=lambda t: -max(t[1], t[2]))[:MAX_BARS]
    return [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]


def _png_chart(name: str, finding: dict[str, Any]) -> str:
    import numpy as np
    from matplotlib.figure import Figure

    labels, ref, cur = _chart_data(finding)
    x = np.arange(len(labels))
    fig = Figure(figsize=(max(6.0, 0.35 * len(labels) + 2), 3.6), dpi=100)
    ax = fig.add_subplot()
    ax.bar(x - 0.2, ref, width=0.4, label=f"reference (n={finding['n_ref']:,})", color="#4c72b0")
    ax.bar(x + 0.2, cur, width=0.4, label=f"current (n={finding['n_cur']:,})", color="#dd8452")
    ax.set_xticks(x, labels, rotation=45 if len(labels) > 6 else 0, ha="right" if len(labels) > 6 else "center",
                  fontsize=8)
    ax.set_ylabel("share of rows")
    psi = finding["metrics"]["psi"]["value"]
    ax.set_title(f"{name}: PSI {psi:.3f}", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    data = base64.b64encode(buf.getvalue()).decode()
    return _ENV.get_template("png_chart.html.j2").render(name=name, data=data)


def svg_chart(name: str, finding: dict[str, Any]) -> str:
    """The same chart as inline SVG, without matplotlib."""
    labels, ref, cur = _chart_data(finding)
    top = max(ref + cur + [1e-9])
    bar, gap, height, left, bottom = 12, 10, 200, 50, 90
    width = left + len(labels) * (2 * bar + gap) + 20
    buckets = []
    for i, (label, r, c) in enumerate(zip(labels, ref, cur, strict=True)):
        x = left + i * (2 * bar + gap)
        bars = []
        for j, (value, colour) in enumerate(((r, "#4c72b0"), (c, "#dd8452"))):
            h = height * value / top
            bars.append({"x": x + j * bar, "y": height + 25 - h, "width": bar - 1, "height": h,
                         "colour": colour, "value": value})
        buckets.append({"label": label, "label_x": x + bar, "bars": bars})
    return _ENV.get_template("bar_chart.svg.j2").render(
        name=name, psi=finding["metrics"]["psi"]["value"], top=top, width=width, height=height + bottom + 30,
        left=left, axis_y=height + 25, label_y=height + 35, buckets=buckets,
    )


def chart(name: str, finding: dict[str, Any]) -> str:
    """An HTML fragment with the feature's chart: matplotlib PNG, else inline SVG."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return svg_chart(name, finding)
    return _png_chart(name, finding)


def render_html(report: dict[str, Any], title: str | None = None) -> str:
    """The report page as a string."""
    meta = report.get("profile", {}).get("meta", {})
    title = title or f"Drift report: {meta.get('line') or ''} batch {report.get('batch_id') or '?'}"
    facts = [
        ("scored at", report.get("scored_at")),
        ("model", meta.get("model_version")),
        ("reference rows", report.get("n_ref")),
        ("batch rows", report.get("n_cur")),
        ("alpha", report.get("alpha")),
        ("tests", report.get("tests")),
        ("alpha per test (Bonferroni)", report.get("alpha_per_test")),
    ]
    unseen = [(n, f["unseen"]) for n, f in report["features"].items() if f.get("unseen", {}).get("rows")]
    charts = [
        # chart() output comes from the autoescaping chart templates
        (name, Markup(chart(name, f)))
        for name, f in report["features"].items()
        if f.get("drifted") and f["status"] == "ok"
    ]
    return _ENV.get_template("drift_report.html.j2").render(
        report=report, title=title, facts=facts, unseen=unseen, charts=charts,
        effect_metrics=EFFECT_METRICS, performance_keys=PERFORMANCE_KEYS,
    )


def write_json_report(report: dict[str, Any], path: Path) -> Path:
    """Write the report dict as JSON (atomically), e.g. next to the HTML page."""
    from pipelines.catalog.records import write_drift_report

    return write_drift_report(Path(path), report)


def write_html_report(report: dict[str, Any], path: Path, title: str | None = None) -> Path:
    """Write the report page to ``path`` (atomically: temp file, then rename)."""
    from pipelines.storage import write_text_atomic

    return write_text_atomic(Path(path), render_html(report, title))
