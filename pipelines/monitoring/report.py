"""A drift report a person can read: one self-contained HTML file per batch.

The page has the verdict, the drifted features with by how much, a table of every
score of every feature (PSI, JSD, L-inf, KS, chi-square, the thresholds and the
decision), the performance figures when labels came with the batch, and one chart per
drifted feature: reference against current shares per bucket (the numeric bins or the
categories). Charts are drawn with matplotlib (Agg, no display) and embedded as PNG;
without matplotlib a plain inline SVG chart is drawn instead. Everything comes from the
report dict, so a stored JSON report can be re-rendered later.
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path
from typing import Any

from pipelines.specs.drift import EFFECT_METRICS

MAX_BARS = 30
CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f2f2f2} td.l{text-align:left}
tr.drifted td{background:#fde2e2} tr.missing td{background:#fbd0a8} td.over{font-weight:bold;color:#b00}
.verdict{font-size:1.3em;padding:.4em .8em;display:inline-block;border-radius:4px}
.bad{background:#fde2e2;color:#900} .good{background:#e2f5e2;color:#060} .none{background:#eee}
.chart{margin:1em 0 2em 0}
"""


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
    return html.escape(str(x))


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
    return f'<img alt="{html.escape(name)}: reference vs current" src="data:image/png;base64,{data}">'


def svg_chart(name: str, finding: dict[str, Any]) -> str:
    """The same chart as inline SVG, without matplotlib."""
    labels, ref, cur = _chart_data(finding)
    top = max(ref + cur + [1e-9])
    bar, gap, height, left, bottom = 12, 10, 200, 50, 90
    width = left + len(labels) * (2 * bar + gap) + 20
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + bottom + 30}" '
        f'role="img" aria-label="{html.escape(name)}: reference vs current">',
        f'<text x="{left}" y="16" font-size="13">{html.escape(name)}: PSI '
        f'{finding["metrics"]["psi"]["value"]:.3f} (blue: reference, orange: current)</text>',
        f'<line x1="{left}" y1="{height + 25}" x2="{width - 10}" y2="{height + 25}" stroke="#444"/>',
        f'<text x="{left - 5}" y="30" font-size="10" text-anchor="end">{top:.2f}</text>',
        f'<text x="{left - 5}" y="{height + 25}" font-size="10" text-anchor="end">0</text>',
    ]
    for i, (label, r, c) in enumerate(zip(labels, ref, cur, strict=True)):
        x = left + i * (2 * bar + gap)
        for j, (value, color) in enumerate(((r, "#4c72b0"), (c, "#dd8452"))):
            h = height * value / top
            parts.append(
                f'<rect x="{x + j * bar}" y="{height + 25 - h:.1f}" width="{bar - 1}" height="{h:.1f}" '
                f'fill="{color}"><title>{html.escape(label)}: {value:.4f}</title></rect>'
            )
        parts.append(
            f'<text font-size="9" transform="translate({x + bar},{height + 35}) rotate(45)">{html.escape(label)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def chart(name: str, finding: dict[str, Any]) -> str:
    """An HTML fragment with the feature's chart: matplotlib PNG, else inline SVG."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return svg_chart(name, finding)
    return _png_chart(name, finding)


def _row(name: str, f: dict[str, Any]) -> str:
    status = f["status"]
    cls = "missing" if status == "missing" else ("drifted" if f.get("drifted") else "")
    cells = [f'<td class="l">{html.escape(name)}</td>', f'<td class="l">{f["kind"]}</td>',
             f'<td class="l">{status}</td>', f"<td>{_fmt(f.get('n_ref'))}</td>", f"<td>{_fmt(f.get('n_cur'))}</td>"]
    m = f.get("metrics")
    if m is None:
        cells += ["<td>-</td>"] * 12
    else:
        for metric in EFFECT_METRICS:
            over = ' class="over"' if m[metric]["exceeded"] else ""
            cells.append(f"<td{over}>{_fmt(m[metric]['value'])}</td><td>{_fmt(m[metric]['threshold'], 2)}</td>")
        ks = m.get("ks") or {}
        cells += [
            f"<td>{_fmt(ks.get('statistic'))}</td>",
            f"<td>{_fmt(ks.get('pvalue'))}</td>",
            f"<td>{_fmt(m['chi2']['pvalue'])}</td>",
            f"<td>{_fmt(f['pvalue'])} {'&lt;' if f['significant'] else '&ge;'} {_fmt(f['alpha'])}</td>",
            f"<td>{_fmt(f['effect'])}</td>",
            f"<td>{_fmt(f['severity'], 2)}</td>",
        ]
    cells.append(f"<td><b>{_fmt(bool(f.get('drifted')))}</b></td>")
    return f'<tr class="{cls}">' + "".join(cells) + "</tr>"


def render_html(report: dict[str, Any], title: str | None = None) -> str:
    """The report page as a string."""
    meta = report.get("profile", {}).get("meta", {})
    title = title or f"Drift report: {meta.get('line') or ''} batch {report.get('batch_id') or '?'}"
    if report["status"] == "empty":
        verdict = '<span class="verdict none">EMPTY BATCH: no rows, nothing scored, no alarm</span>'
    elif report["drifted"]:
        verdict = '<span class="verdict bad">DRIFT</span>'
    else:
        verdict = '<span class="verdict good">no drift</span>'
    out = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{verdict}</p>",
        "<p>"
        + " &middot; ".join(
            f"{html.escape(k)}: <b>{_fmt(v)}</b>"
            for k, v in (
                ("scored at", report.get("scored_at")),
                ("model", meta.get("model_version")),
                ("reference rows", report.get("n_ref")),
                ("batch rows", report.get("n_cur")),
                ("alpha", report.get("alpha")),
                ("tests", report.get("tests")),
                ("alpha per test (Bonferroni)", report.get("alpha_per_test")),
            )
        )
        + "</p>",
        "<p>A feature drifts when an effect size reaches its threshold AND its p-value (the smaller of "
        "KS and chi-square for numeric features) is below alpha per test.</p>",
    ]
    for note in report.get("notes") or []:
        out.append(f"<p><i>Note: {html.escape(note)}</i></p>")
    if report["drifted_features"]:
        out.append("<h2>Drifted, most severe first</h2><ol>")
        for d in report["drifted_features"]:
            sev = "" if d["severity"] is None else f" &times;{d['severity']:.2f} of its threshold"
            out.append(f"<li><b>{html.escape(d['feature'])}</b>: {html.escape(d['by'])}{sev}</li>")
        out.append("</ol>")
    perf = report.get("performance")
    if perf:
        out.append(
            "<h2>Performance</h2><p>"
            + " &middot; ".join(
                f"{k}: <b>{_fmt(perf.get(k))}</b>"
                for k in (
                    "auc", "auc_ref", "auc_drop", "n", "positives",
                    "positive_rate", "positive_rate_ref", "positive_rate_change",
                )
            )
            + (" &middot; <b>AUC drop over its limit</b>" if perf.get("auc_drifted") else "")
            + (" &middot; <b>positive rate changed beyond its limit</b>" if perf.get("label_rate_drifted") else "")
            + "</p>"
        )
    out.append(
        "<h2>Every feature</h2><table><tr><th>feature</th><th>kind</th><th>status</th><th>n ref</th>"
        "<th>n cur</th><th>PSI</th><th>thr</th><th>JSD (bits)</th><th>thr</th><th>L-inf</th><th>thr</th>"
        "<th>KS D</th><th>KS p</th><th>chi2 p</th><th>p vs alpha/m</th><th>effect</th><th>severity</th>"
        "<th>drifted</th></tr>"
    )
    for name, f in report["features"].items():
        out.append(_row(name, f))
    out.append("</table>")
    unseen = {n: f["unseen"] for n, f in report["features"].items() if f.get("unseen", {}).get("rows")}
    if unseen:
        out.append("<h2>Values the reference does not name</h2><ul>")
        for n, u in unseen.items():
            listed = ", ".join(f"{html.escape(k)} ({v:,})" for k, v in u["values"].items())
            new = " (new: none in the reference)" if u["new"] else ""
            out.append(f"<li><b>{html.escape(n)}</b>: {u['rows']:,} rows{new}: {listed}</li>")
        out.append("</ul>")
    charted = [(n, f) for n, f in report["features"].items() if f.get("drifted") and f["status"] == "ok"]
    if charted:
        out.append("<h2>Drifted features: reference vs current</h2>")
        for name, f in charted:
            out.append(f'<div class="chart"><h3>{html.escape(name)}</h3>{chart(name, f)}</div>')
    out.append("</body></html>")
    return "\n".join(out)


def write_json_report(report: dict[str, Any], path: Path) -> Path:
    """Write the report dict as JSON (atomically), e.g. next to the HTML page."""
    from pipelines.monitoring.files import write_json_atomic

    return write_json_atomic(Path(path), report, indent=1)


def write_html_report(report: dict[str, Any], path: Path, title: str | None = None) -> Path:
    """Write the report page to ``path`` (atomically: temp file, then rename)."""
    from pipelines.monitoring.files import write_text_atomic

    return write_text_atomic(Path(path), render_html(report, title))
