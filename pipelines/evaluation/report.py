"""A self-contained HTML report of one evaluation, from its result (plain Python, both
environments): the verdict and why, then one table per slice with the candidate's
metrics, the baseline's, their difference and the thresholds that applied.

:func:`write_plot` (where matplotlib is installed: the ML environment) draws the ROC
AUC of every slice, candidate against baseline, as ``slices_auc.png`` next to the
report; the report shows it when it is there."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

PLOT = "slices_auc.png"
ORDER = ["example_count", "auc", "pr_auc", "calibration", "binary_accuracy", "mean_label", "mean_prediction"]
COLOURS = {"BLESSED": "#1a7f37", "NOT_BLESSED": "#cf222e", "FORCED": "#9a6700"}


def _fmt(v: Any) -> str:
    if v is None:
        return "&ndash;"
    if isinstance(v, float):
        return f"{v:.0f}" if v.is_integer() and abs(v) >= 10 else f"{v:.4f}"
    return html.escape(str(v))


def _bounds(bound: dict[str, Any] | None) -> str:
    if not bound:
        return ""
    parts = []
    if bound.get("min") is not None:
        parts.append(f"&ge; {bound['min']:g}")
    if bound.get("max") is not None:
        parts.append(f"&le; {bound['max']:g}")
    if bound.get("max_drop") is not None:
        parts.append(f"drop &le; {bound['max_drop']:g}")
    return ", ".join(parts)


def render(result: dict[str, Any]) -> str:
    e = html.escape
    verdict = result["blessing"]
    settings = result.get("settings") or {}
    overall_t = settings.get("thresholds") or {}
    slice_t = (settings.get("slice_thresholds") or {}).get("thresholds") or {}
    failed = {(f["slice"], f["metric"]) for f in result.get("failures", [])}
    baseline = result.get("baseline")
    serving = result.get("serving")
    rows = [
        f"<h1>{e(result['line'])} &middot; {e(result['training_run'])}: "
        f"<span style='color:{COLOURS.get(verdict, '#000')}'>{e(verdict)}</span></h1>",
        f"<p><b>Why:</b> {e(result.get('why', ''))}</p>",
        f"<p><b>Blessed on:</b> {e(result.get('blessed_on', ''))}</p>",
        "<p><b>Baseline:</b> "
        + (e(f"run {baseline['training_run']} ({baseline['model_uri']})") if baseline else "none (first model)")
        + "</p>",
        "<p><b>Serving:</b> "
        + (e(f"version {serving['version']} at {serving['path']}") if serving else "not pushed")
        + "</p>",
    ]
    if result.get("force_bless_reason"):
        rows.append(f"<p><b>Force-bless reason:</b> {e(result['force_bless_reason'])}</p>")
    if result.get("registry"):
        r = result["registry"]
        rows.append(f"<p><b>Registry:</b> {e(str(r.get('name')))} version {e(str(r.get('version')))}</p>")
    rows.append(f"<p><small>{e(str(result.get('rows')))} evaluation rows; TFX pipeline run "
                f"{e(str((result.get('tfx') or {}).get('pipeline_run_id')))}</small></p>")
    plot = Path((result.get("report") or {}).get("html") or ".").parent / PLOT
    if plot.exists():
        rows.append(f"<p><img src='{PLOT}' alt='ROC AUC per slice' style='max-width:100%'></p>")
    metrics = result.get("metrics") or {}
    for s in result.get("slices", []):
        name = s["slice"]
        m = metrics.get(name)
        if m is None:
            continue
        gated = s.get("gated")
        thresholds = overall_t if name == "Overall" else (slice_t if gated else {})
        note = "gated" if gated else "reported only (too small to gate)"
        rows.append(
            f"<h2>{e(name)}</h2><p><small>{_fmt(s.get('examples'))} rows, {_fmt(s.get('positives'))} positive"
            f" &middot; {note}</small></p>"
        )
        rows.append("<table><tr><th>metric</th><th>candidate</th><th>baseline</th><th>change</th>"
                    "<th>threshold</th><th></th></tr>")
        names = [n for n in ORDER if n in m["candidate"]] + [n for n in m["candidate"] if n not in ORDER]
        for n in names:
            bad = (name, n) in failed
            status = "<span style='color:#cf222e'>FAIL</span>" if bad else ("ok" if n in thresholds else "")
            rows.append(
                f"<tr><td>{e(n)}</td><td>{_fmt(m['candidate'].get(n))}</td>"
                f"<td>{_fmt((m.get('baseline') or {}).get(n))}</td><td>{_fmt((m.get('diff') or {}).get(n))}</td>"
                f"<td>{_bounds(thresholds.get(n))}</td><td>{status}</td></tr>"
            )
        rows.append("</table>")
    style = ("body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}td:first-child{text-align:left}")
    title = e(f"Evaluation: {result['line']} {result['training_run']}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>"
            f"<style>{style}</style></head><body>" + "\n".join(rows) + "</body></html>\n")


def write_report(result: dict[str, Any], path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(render(result))
    tmp.replace(path)
    return path


def write_plot(result: dict[str, Any], path: Path) -> Path | None:
    """ROC AUC per slice (candidate, baseline, the overall minimum); None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    metrics = result.get("metrics") or {}
    names = [s["slice"] for s in result.get("slices", []) if s["slice"] in metrics]
    if not names:
        return None
    cand = [metrics[n]["candidate"].get("auc") or 0.0 for n in names]
    base = [((metrics[n].get("baseline") or {}).get("auc") or 0.0) for n in names]
    gated = {s["slice"]: s.get("gated") for s in result.get("slices", [])}
    fig, ax = plt.subplots(figsize=(9, 0.3 * len(names) + 1.2), layout="constrained")
    y = list(range(len(names)))
    ax.barh([i + 0.2 for i in y], cand, height=0.4, label="candidate", color="#0969da")
    if any(base):
        ax.barh([i - 0.2 for i in y], base, height=0.4, label="baseline", color="#8c959f")
    minimum = (((result.get("settings") or {}).get("thresholds") or {}).get("auc") or {}).get("min")
    if minimum is not None:
        ax.axvline(minimum, color="#cf222e", linestyle="--", linewidth=1, label=f"overall min {minimum:g}")
    ax.set_yticks(y, [n + ("" if gated.get(n) else " (not gated)") for n in names], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("ROC AUC")
    ax.set_title(f"{result['line']} {result['training_run']}: {result['blessing']}", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
