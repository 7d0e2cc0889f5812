"""The Model Factory page: server-rendered HTML with inline CSS and inline SVG.

Nothing on the page is fetched from anywhere (no CDN, no font, no script file); the one
inline script (allowed by a per-response nonce) only makes links to Airflow pages open in
the Airflow UI's own window when the page is shown inside the UI's plugin frame, whose
sandbox does not let the frame navigate the window itself.

Links are relative to the page (served at ``<airflow>/factory/``): ``../dags/...`` is the
Airflow UI, ``docs/...`` the Data Docs, so the page works under any base URL.
"""

from __future__ import annotations

from html import escape
from urllib.parse import quote

from pipelines.ui.charts import line_chart
from pipelines.ui.data import Batch, LineView, Model, Overview, RunRef, mlflow_run_url

MAX_CHARTS = 24
MAX_DRIFT_ROWS = 10

CSS = """
:root{--bg:#f6f7f9;--card:#fff;--fg:#1d2330;--mute:#667085;--line:#e4e7ec;--accent:#0b6bcb;
--ok:#067647;--okbg:#dcfae6;--bad:#b42318;--badbg:#fee4e2;--info:#175cd3;--infobg:#d1e9ff;
--warn:#b54708;--warnbg:#fef0c7;--grey:#475467;--greybg:#eaecf0}
@media (prefers-color-scheme:dark){:root{--bg:#0f131a;--card:#171c25;--fg:#e6e9ef;--mute:#98a2b3;
--line:#2a313d;--accent:#6cb4ff;--okbg:#053321;--ok:#75e0a7;--badbg:#55160c;--bad:#fda29b;
--infobg:#102a56;--info:#84caff;--warnbg:#4e1d09;--warn:#fec84b;--greybg:#2a313d;--grey:#cfd4dc}}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
background:var(--bg);color:var(--fg)}
header{padding:14px 24px;border-bottom:1px solid var(--line);background:var(--card);display:flex;
gap:16px;align-items:baseline;flex-wrap:wrap}
header h1{font-size:20px;margin:0}
header .meta{color:var(--mute);font-size:12px}
nav.lines a{margin-right:12px}
main{padding:16px 24px 40px}
section.line{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:16px 20px;
margin:0 0 20px}
section.line>h2{margin:0;font-size:18px}
.desc{color:var(--mute);margin:2px 0 10px}
h3{font-size:14px;margin:18px 0 6px;text-transform:uppercase;letter-spacing:.04em;color:var(--mute)}
a{color:var(--accent);text-decoration:none}a:hover{text-decoration:underline}
.chips{display:flex;flex-wrap:wrap;gap:8px;margin:8px 0}
.chip{border:1px solid var(--line);border-radius:999px;padding:2px 10px;font-size:12px}
.chip b{font-weight:600}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid var(--line);vertical-align:top}
th{font-weight:600;color:var(--mute);font-size:12px;white-space:nowrap}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.scroll{overflow-x:auto}
.badge{display:inline-block;border-radius:6px;padding:0 7px;font-size:12px;font-weight:600;white-space:nowrap}
.s-validated,.s-blessed,.s-passed,.s-serving,.s-success{background:var(--okbg);color:var(--ok)}
.s-failed,.s-not-blessed,.s-drifted{background:var(--badbg);color:var(--bad)}
.s-cleaned,.s-running,.s-queued,.s-champion{background:var(--infobg);color:var(--info)}
.s-forced,.s-retired,.s-upstream_failed{background:var(--warnbg);color:var(--warn)}
.s-landed,.s-unknown,.s-none,.s-stable{background:var(--greybg);color:var(--grey)}
.mute{color:var(--mute)}.small{font-size:12px}
code{font:12px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
.notes{background:var(--warnbg);color:var(--warn);border-radius:6px;padding:6px 10px;font-size:12px;margin:8px 0}
.notes li{margin-left:14px}
.empty{color:var(--mute);font-style:italic;padding:4px 0}
.charts{display:flex;flex-wrap:wrap;gap:10px}
svg.chart{background:var(--card);border:1px solid var(--line);border-radius:8px}
svg .ct{font-size:12px;font-weight:600;fill:var(--fg)}
svg .cm,svg .tick{font-size:10px;fill:var(--mute)}
svg .grid{stroke:var(--line);stroke-width:1}
svg .axis{stroke:var(--mute);stroke-width:1}
svg .thr{stroke:var(--bad);stroke-width:1;stroke-dasharray:4 3}
svg .thrl{font-size:9px;fill:var(--bad)}
svg .series{fill:none;stroke:var(--accent);stroke-width:2}
svg .pt{fill:var(--accent)}svg .pt.over{fill:var(--bad)}
footer{color:var(--mute);font-size:12px;padding:0 24px 24px}
"""

# Links marked data-top open in the top window when the page is framed by the Airflow UI
# (its plugin iframe is sandboxed without allow-top-navigation or allow-popups; the
# frame is same-origin, so a link placed in the top document and clicked there works).
SCRIPT = """
(function(){
  if (window.top === window) return;
  document.addEventListener('click', function(e){
    var a = e.target.closest && e.target.closest('a[data-top]');
    if (!a || e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey) return;
    try {
      var doc = window.top.document, link = doc.createElement('a');
      link.href = a.href;
      if (a.target === '_blank') { link.target = '_blank'; link.rel = 'noopener'; }
      link.style.display = 'none';
      doc.body.appendChild(link); link.click(); link.remove();
      e.preventDefault();
    } catch (err) { /* not same-origin: leave the click alone */ }
  });
})();
"""


def _num(value: int | float | None) -> str:
    if value is None:
        return '<span class="mute">\u2013</span>'
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    return f"{value:,}"


def _when(value: str | None) -> str:
    if not value:
        return '<span class="mute">\u2013</span>'
    text = str(value).replace("T", " ")
    for suffix in ("+00:00", "Z"):
        text = text.removesuffix(suffix)
    return f'<span title="{escape(str(value))}">{escape(text[:16])}</span>'


def _badge(text: str | None, kind: str | None = None, title: str | None = None) -> str:
    if not text:
        return '<span class="mute">\u2013</span>'
    cls = (kind or text).lower().replace(" ", "-").replace("_", "-")
    tip = f' title="{escape(title)}"' if title else ""
    return f'<span class="badge s-{escape(cls)}"{tip}>{escape(text.replace("_", " "))}</span>'


def _airflow_link(ref: RunRef | None, ui_base: str, label: str = "Airflow run") -> str:
    if ref is None:
        return ""
    state = f" {_badge(ref.state)}" if ref.state else ""
    return (
        f'<a data-top href="{escape(ui_base + ref.path)}" title="{escape(ref.dag_id)} / {escape(ref.run_id)}">'
        f"{escape(label)}</a>{state}"
    )


def _mlflow_link(run_id: str | None, overview: Overview, line: LineView) -> str:
    if not run_id:
        return ""
    url = mlflow_run_url(overview.mlflow_ui, run_id, line.mlflow_experiment_id)
    if url:
        return f'<a data-top target="_blank" rel="noopener" href="{escape(url)}">MLflow run</a>'
    return f'<span class="small">MLflow run <code>{escape(run_id)}</code></span>'


def _validation_cell(b: Batch, docs_base: str) -> str:
    v = b.validation
    if v is None:
        return '<span class="mute">not validated</span>'
    if v.success is None:
        verdict = _badge("unknown")
    else:
        verdict = _badge("passed" if v.success else "failed")
    counts = ""
    if v.evaluated is not None:
        counts = f' <span class="small mute">{v.successful if v.successful is not None else "?"}/{v.evaluated}</span>'
    failed = ""
    if v.failed:
        items = ", ".join(escape(f) for f in v.failed[:4]) + (" \u2026" if len(v.failed) > 4 else "")
        failed = f'<div class="small">{items}</div>'
    if v.docs:
        docs = f' <a href="{escape(docs_base + v.docs)}">Data Docs</a>'
    elif v.docs_file:
        docs = f' <span class="small mute" title="{escape(v.docs_file)}">Data Docs not found</span>'
    else:
        docs = ""
    return f"{verdict}{counts}{docs}{failed}"


def _batches(line: LineView, ui_base: str, docs_base: str) -> str:
    if not line.batches:
        return '<div class="empty">No batch has landed yet.</div>'
    rows = []
    for b in line.batches:
        err = ""
        if b.error:
            where = f"{b.failed_stage}: " if b.failed_stage else ""
            err = f'<div class="small" style="color:var(--bad)">{escape(where + str(b.error))[:300]}</div>'
        reasons = ""
        if b.quarantine_reasons:
            reasons = escape(", ".join(f"{k}: {v}" for k, v in list(b.quarantine_reasons.items())[:5]))
        rows.append(
            "<tr>"
            f"<td><b>{escape(b.batch_id)}</b></td>"
            f"<td>{_badge(b.status or 'unknown')}{err}</td>"
            f"<td>{_when(b.landed_at)}</td>"
            f'<td class="n">{_num(b.rows_in)}</td>'
            f'<td class="n">{_num(b.rows_clean)}</td>'
            f'<td class="n" title="{reasons}">{_num(b.rows_quarantined)}</td>'
            f'<td class="n">{_num(b.duplicates_removed)}</td>'
            f"<td>{_validation_cell(b, docs_base)}</td>"
            f"<td>{_airflow_link(b.airflow, ui_base) or '<span class=mute>&ndash;</span>'}</td>"
            "</tr>"
        )
    more = ""
    if line.batch_total > len(line.batches):
        more = f'<div class="small mute">The {len(line.batches)} latest of {line.batch_total} batches.</div>'
    return (
        '<div class="scroll"><table class="batches"><thead><tr><th>Batch</th><th>Status</th><th>Landed</th>'
        '<th class="n">Rows in</th><th class="n">Clean</th><th class="n">Quarantined</th>'
        '<th class="n">Duplicates</th><th>Validation</th><th>Airflow</th></tr></thead><tbody>'
        + "".join(rows)
        + "</tbody></table></div>"
        + more
    )


def _metrics(m: Model) -> str:
    if not m.eval_metrics:
        return '<span class="mute">not evaluated</span>' if not m.evaluated else '<span class="mute">\u2013</span>'
    items = list(m.eval_metrics.items())[:6]
    return '<span class="small">' + ", ".join(f"{escape(k)} {v:.4g}" for k, v in items) + "</span>"


def _serving_cell(m: Model) -> str:
    if m.serving_version is None:
        return '<span class="mute">\u2013</span>'
    out = f"v{m.serving_version}"
    if m.in_serving:
        out += " " + _badge("serving")
    elif m.retired:
        out += " " + _badge("retired")
    return out


def _registry_cell(m: Model) -> str:
    if not m.registry_version:
        return '<span class="mute">\u2013</span>'
    return f"v{escape(m.registry_version)} " + " ".join(_badge(a, "champion" if a == "champion" else "none")
                                                      for a in m.aliases)


def _models(line: LineView, overview: Overview, ui_base: str) -> str:
    if not line.models:
        return '<div class="empty">No model trained yet.</div>'
    rows = []
    for m in line.models:
        blessing = _badge(m.blessing, title=m.blessing_why) if m.blessing else (
            '<span class="mute">not evaluated</span>' if not m.evaluated else _badge("unknown"))
        batches = ", ".join(m.batches[:6]) + (" \u2026" if len(m.batches) > 6 else "")
        report = f'<a href="{escape(m.eval_report)}">Evaluation report</a>' if m.eval_report else ""
        links = " ".join(x for x in (_airflow_link(m.airflow, ui_base), _mlflow_link(m.mlflow_run_id, overview, line),
                                     report) if x)
        trained = _when(m.trained_at) if m.has_result else _badge("no result", "none")
        rows.append(
            "<tr>"
            f'<td><b title="{escape(m.run)}">{escape(m.run[:40])}</b></td>'
            f"<td>{trained}</td>"
            f'<td class="small">{escape(batches) or "&ndash;"}</td>'
            f'<td class="n">{_num(m.rows_train)}</td>'
            f'<td class="n">{_num(m.val_auc)}</td>'
            f"<td>{_metrics(m)}</td>"
            f"<td>{blessing}</td>"
            f"<td>{_serving_cell(m)}</td>"
            f"<td>{_registry_cell(m)}</td>"
            f"<td>{links or '<span class=mute>&ndash;</span>'}</td>"
            "</tr>"
        )
    more = ""
    if line.model_total > len(line.models):
        more = f'<div class="small mute">The {len(line.models)} latest of {line.model_total} training runs.</div>'
    serving = ""
    if line.serving:
        items = []
        for s in line.serving[:8]:
            state = _badge("serving") if s.in_serving else (_badge("retired") if s.retired else "")
            run = f' run <code>{escape(s.run)}</code>' if s.run else ""
            why = f' <span class="small mute">({escape(str(s.retired_reason))})</span>' if s.retired_reason else ""
            items.append(f"<li>v{s.version} {state} {_badge(s.blessing) if s.blessing else ''}"
                         f' <span class="small mute">pushed {_when(s.pushed_at)}</span>{run}{why}</li>')
        serving = f'<div class="small"><b>Serving store</b><ul>{"".join(items)}</ul></div>'
    return (
        '<div class="scroll"><table class="models"><thead><tr><th>Training run</th><th>Trained</th>'
        '<th>Batches</th><th class="n">Train rows</th><th class="n">Val AUC</th><th>Evaluation</th>'
        "<th>Blessing</th><th>Serving</th><th>Registry</th><th>Runs</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table></div>"
        + more
        + serving
    )


def _drift(line: LineView) -> str:
    if not line.drift_series and not line.drift_batches:
        return '<div class="empty">No drift scores yet.</div>'
    charts = "".join(line_chart(s, metric=line.drift_metric.upper()) for s in line.drift_series[:MAX_CHARTS])
    more = ""
    if len(line.drift_series) > MAX_CHARTS:
        more = (f'<div class="small mute">{len(line.drift_series) - MAX_CHARTS} more features, '
                "all with smaller peaks, are not charted.</div>")
    rows = []
    for d in line.drift_batches[:MAX_DRIFT_ROWS]:
        feats = ", ".join(d.drifted_features[:5]) + (" \u2026" if len(d.drifted_features) > 5 else "")
        report = f'<a href="{escape(d.report)}">Report</a>' if d.report else ""
        top = f"{d.max_psi:.3g}" + (f" ({escape(str(d.max_psi_feature))})" if d.max_psi_feature else "") \
            if d.max_psi is not None else "&ndash;"
        rows.append(
            f"<tr><td><b>{escape(str(d.batch_id or '?'))}</b></td><td>{_when(d.scored_at)}</td>"
            f"<td>{escape(str(d.model_version or '–'))}</td>"
            f"<td>{_badge('drifted') if d.drifted else _badge('stable')}</td>"
            f'<td class="small">{escape(feats) or "&ndash;"}</td><td class="small">{top}</td>'
            f"<td>{report}</td></tr>"
        )
    table = (
        '<div class="scroll"><table class="drift"><thead><tr><th>Batch</th><th>Scored</th><th>Model version</th>'
        "<th>Verdict</th><th>Drifted features</th><th>Largest PSI</th><th></th></tr></thead><tbody>"
        + "".join(rows) + "</tbody></table></div>"
    ) if rows else ""
    return f'<div class="charts">{charts}</div>{more}{table}'


def _line(line: LineView, overview: Overview, ui_base: str, docs_base: str) -> str:
    counts = ", ".join(f"{n} {escape(s)}" for s, n in sorted(line.status_counts.items()))
    chips = [
        f'<span class="chip"><b>{line.batch_total}</b> batch{"es" if line.batch_total != 1 else ""}'
        + (f" ({counts})" if counts else "") + "</span>",
        f'<span class="chip"><b>{line.model_total}</b> training run{"s" if line.model_total != 1 else ""}</span>',
        '<span class="chip">serving: '
        + (f"<b>v{line.serving_version}</b>" if line.serving_version is not None else "none yet") + "</span>",
        '<span class="chip">champion: '
        + (f"<b>v{escape(line.champion)}</b>" if line.champion else "none yet") + "</span>",
    ]
    drifted = sum(1 for d in line.drift_batches if d.drifted)
    chips.append(f'<span class="chip">drift: <b>{len(line.drift_batches)}</b> scored'
                 + (f", {drifted} drifted" if drifted else "") + "</span>"
                 if line.drift_batches else '<span class="chip">drift: none yet</span>')
    notes = ""
    if line.notes:
        notes = '<ul class="notes">' + "".join(f"<li>{escape(n)}</li>" for n in line.notes[:10]) + "</ul>"
    dags = (
        f'<a data-top href="{escape(ui_base)}dags/{quote(line.ingest_dag, safe="")}">{escape(line.ingest_dag)}</a> \u00b7 '
        f'<a data-top href="{escape(ui_base)}dags/{quote(line.train_dag, safe="")}">{escape(line.train_dag)}</a>'
    )
    owner = f" \u00b7 owner {escape(line.owner)}" if line.owner else ""
    return (
        f'<section class="line" id="line-{escape(line.name)}" data-line="{escape(line.name)}">'
        f"<h2>{escape(line.name)}</h2>"
        f'<div class="desc">{escape(line.description)}{owner} \u00b7 {dags}</div>'
        f'<div class="chips">{"".join(chips)}</div>{notes}'
        f"<h3>Batches</h3>{_batches(line, ui_base, docs_base)}"
        f"<h3>Models</h3>{_models(line, overview, ui_base)}"
        f"<h3>Drift ({escape(line.drift_metric.upper())} per feature over time)</h3>{_drift(line)}"
        "</section>"
    )


def page(
    overview: Overview,
    *,
    user: str | None = None,
    nonce: str = "",
    ui_base: str = "../",
    docs_base: str = "docs/",
) -> str:
    nav = " ".join(f'<a href="#line-{escape(lv.name)}">{escape(lv.name)}</a>' for lv in overview.lines)
    body = "".join(_line(lv, overview, ui_base, docs_base) for lv in overview.lines) or (
        '<div class="empty">No product line to show (none declared, or none you may read).</div>'
    )
    who = f" \u00b7 signed in as {escape(user)}" if user else ""
    index = f'<a href="{escape(docs_base + overview.docs_index)}">Data Docs</a>' if overview.docs_index else ""
    return (
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        "<title>Model Factory</title>"
        f"<style>{CSS}</style></head><body>"
        f'<header><h1>Model Factory</h1><nav class="lines">{nav}{index}</nav>'
        f'<span class="meta">as of {_when(overview.generated_at)} UTC{who}</span></header>'
        f"<main>{body}</main>"
        f'<footer>Factory home <code>{escape(overview.home)}</code>. Batches from the ledger, models from the '
        "training runs, the evaluation gate and the serving store, drift from each line's history.</footer>"
        f'<script nonce="{escape(nonce)}">{SCRIPT}</script>'
        "</body></html>"
    )


def unauthorized_page(status: int, detail: str, login_url: str) -> str:
    return (
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Model Factory: sign in</title>"
        f"<style>{CSS}</style></head><body><main><section class=\"line\"><h2>Sign in to Airflow</h2>"
        f'<p class="desc">The Model Factory view needs an Airflow session ({status}: {escape(detail)}).</p>'
        f'<p><a data-top href="{escape(login_url)}">Sign in</a></p></section></main></body></html>'
    )
