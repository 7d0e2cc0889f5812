"""A self-contained HTML report of one evaluation, from its result (both environments;
the page is ``templates/report.html.j2``): the verdict and why, then one table per slice with the candidate's
metrics, the baseline's, their difference and the thresholds that applied; for a
multi-class line, first its confusion matrix and per-class metrics.

:func:`write_plot` (where matplotlib is installed: the ML environment) draws the ROC
AUC of every slice, candidate against baseline, as ``slices_auc.png`` next to the
report; the report shows it when it is there."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.templating import environment

PLOT = "slices_auc.png"
ORDER = ["example_count", "auc", "pr_auc", "calibration", "binary_accuracy", "mean_label", "mean_prediction"]
COLOURS = {"BLESSED": "#1a7f37", "NOT_BLESSED": "#cf222e", "FORCED": "#9a6700"}

_ENV = environment(__file__)


def _number(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.0f}" if v.is_integer() and abs(v) >= 10 else f"{v:.4f}"
    return str(v)


_ENV.filters["number"] = _number
_ENV.filters["format_as"] = format


def _slices(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Per slice with metrics: its figures and one row per metric, in ORDER first."""
    settings = result.get("settings") or {}
    overall_t = settings.get("thresholds") or {}
    slice_t = (settings.get("slice_thresholds") or {}).get("thresholds") or {}
    failed = {(f["slice"], f["metric"]) for f in result.get("failures", [])}
    metrics = result.get("metrics") or {}
    out = []
    for s in result.get("slices", []):
        name = s["slice"]
        m = metrics.get(name)
        if m is None:
            continue
        gated = s.get("gated")
        thresholds = overall_t if name == "Overall" else (slice_t if gated else {})
        names = [n for n in ORDER if n in m["candidate"]] + [n for n in m["candidate"] if n not in ORDER]
        rows = [
            {
                "metric": n,
                "candidate": m["candidate"].get(n),
                "baseline": (m.get("baseline") or {}).get(n),
                "diff": (m.get("diff") or {}).get(n),
                "bound": thresholds.get(n),
                "failed": (name, n) in failed,
                "checked": n in thresholds,
            }
            for n in names
        ]
        out.append({
            "name": name,
            "examples": s.get("examples"),
            "positives": s.get("positives"),
            "note": "gated" if gated else "reported only (too small to gate)",
            "rows": rows,
        })
    return out


def _per_class(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Multi-class lines: one row per class with its precision and recall (TFMA, one class
    against the rest at probability 0.5) and its accuracy in its own slice (argmax)."""
    cm = result.get("confusion_matrix") or {}
    overall = ((result.get("metrics") or {}).get("Overall") or {}).get("candidate") or {}
    label = result.get("label") or "label"
    out = []
    for c, name in zip(cm.get("classes") or [], cm.get("class_names") or [], strict=False):
        sliced = ((result.get("metrics") or {}).get(f"{label}:{c}") or {}).get("candidate") or {}
        out.append({"class": c, "name": name, "precision": overall.get(f"precision/class_{c}"),
                    "recall": overall.get(f"recall/class_{c}"), "accuracy": sliced.get("accuracy")})
    return out


def render(result: dict[str, Any]) -> str:
    plot = Path((result.get("report") or {}).get("html") or ".").parent / PLOT
    return _ENV.get_template("report.html.j2").render(
        result=result,
        colour=COLOURS.get(result["blessing"], "#000"),
        baseline=result.get("baseline"),
        serving=result.get("serving"),
        registry=result.get("registry"),
        plot=PLOT if plot.exists() else None,
        slices=_slices(result),
        confusion=result.get("confusion_matrix"),
        per_class=_per_class(result),
        misclassified=result.get("misclassified"),
    ) + "\n"


def write_report(result: dict[str, Any], path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(render(result), encoding="utf-8")
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
    if not names or not any("auc" in metrics[n]["candidate"] for n in names):
        return None  # a line without AUC (multi-class): the report's tables show its metrics
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
