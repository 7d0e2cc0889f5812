"""The Model Factory page: server-rendered HTML with inline CSS and inline SVG.

Nothing on the page is fetched from anywhere (no CDN, no font, no script file); the one
inline script (allowed by a per-response nonce) only makes links to Airflow pages open in
the Airflow UI's own window when the page is shown inside the UI's plugin frame, whose
sandbox does not let the frame navigate the window itself.

Links are relative to the page (served at ``<airflow>/factory/``): ``../dags/...`` is the
Airflow UI, ``docs/...`` the Data Docs, so the page works under any base URL.

The markup is in ``templates/`` (Jinja2, autoescaped): ``page.html.j2`` and
``unauthorized.html.j2`` on ``_base.html.j2``, a line's section in ``_line.html.j2``, its
cells in ``_cells.html.j2``, its image parts (galleries, the confusion matrix) in
``_images.html.j2``, its hyperparameter search (studies, tuned settings) in
``_tuning.html.j2``, its labelling (thresholds, labelling runs, review queues, imports) and
label errors (the latest training's suspected rows) in ``_labelling.html.j2``. Images are inline ``data:`` URIs of PNGs re-encoded for display
(:mod:`pipelines.ui.images`), which the page's Content-Security-Policy allows
(``img-src 'self' data:``, see :mod:`pipelines.ui.app`).
"""

from __future__ import annotations

from urllib.parse import quote

from markupsafe import Markup

from pipelines.templating import environment
from pipelines.ui.charts import line_chart, trials_chart
from pipelines.ui.data import SHADES, DriftSeries, Overview, Study, mlflow_run_url

MAX_CHARTS = 24
MAX_DRIFT_ROWS = 10


def _number(value: int | float) -> str:
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    return f"{value:,}"


def _short_time(value: str) -> str:
    text = str(value).replace("T", " ")
    for suffix in ("+00:00", "Z"):
        text = text.removesuffix(suffix)
    return text[:16]


def _chart(series: DriftSeries, metric: str) -> Markup:
    return Markup(line_chart(series, metric=metric))  # rendered by the autoescaping line_chart.svg.j2


def _trials_chart(study: Study) -> Markup:
    return Markup(trials_chart(study))  # rendered by the autoescaping trials_chart.svg.j2


def _setting(value: object) -> str:
    """A tuned setting's value as text: floats to 4 significant digits, lists as written."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "[" + ", ".join(_setting(v) for v in value) + "]"
    return str(value)


_ENV = environment(__file__)
_ENV.filters.update(number=_number, short_time=_short_time, format_as=format, urlquote=lambda s: quote(s, safe=""),
                    setting=_setting)
_ENV.globals.update(
    line_chart=_chart, trials_chart=_trials_chart, mlflow_run_url=mlflow_run_url, max_charts=MAX_CHARTS,
    max_drift_rows=MAX_DRIFT_ROWS,
    shades=SHADES,
)


def page(
    overview: Overview,
    *,
    user: str | None = None,
    nonce: str = "",
    ui_base: str = "../",
    docs_base: str = "docs/",
) -> str:
    return _ENV.get_template("page.html.j2").render(
        overview=overview, user=user, nonce=nonce, ui_base=ui_base, docs_base=docs_base
    )


def unauthorized_page(status: int, detail: str, login_url: str) -> str:
    return _ENV.get_template("unauthorized.html.j2").render(status=status, detail=detail, login_url=login_url)
