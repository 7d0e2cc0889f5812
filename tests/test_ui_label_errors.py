"""The Model Factory view's label-error section without a browser: a line's latest
label-error report written by the catalog's own writer
(:func:`~pipelines.catalog.records.write_label_errors`), gathered and rendered."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipelines import storage
from pipelines.catalog import layout, records
from pipelines.ui import render
from pipelines.ui.data import MAX_SUSPECTED_LABELS
from pipelines.ui.gather import gather

LINE = "credit_risk"
RUN = "manual__2026-12-01T10_00_00_00_00"


def _rows(n: int) -> list[dict]:
    """Suspected rows, worst first: scores rising from 0.01, batches slice-1 (even) and slice-2 (odd)."""
    return [{"batch_id": f"slice-{1 + i % 2}", "key": {"loan_id": 1000 + i}, "given": "good" if i % 3 else "bad",
             "suggested": "bad" if i % 3 else "good", "score": round(0.01 + 0.005 * i, 4)} for i in range(n)]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "factory"
    rows = _rows(30)
    records.write_label_errors(layout.latest_label_errors_path(LINE, home), {
        "line": LINE, "run_id": RUN, "mode": "exclude", "method": "cleanlab.find_label_issues (confident learning)",
        "model": "logistic regression; out-of-fold", "folds": 5, "rows_checked": 6427, "found": 367, "excluded": 367,
        "at": "2026-12-01T10:00:09+00:00", "by_batch": {"slice-1": 180, "slice-2": 150, "slice-3": 37},
        "rows": rows})
    return home


def test_the_latest_report_is_gathered(home):
    view = gather(home, [LINE]).line(LINE)
    assert view.notes == []
    e = view.label_errors
    assert (e.mode, e.run_id, e.rows_checked, e.found, e.excluded, e.folds) == ("exclude", RUN, 6427, 367, 367, 5)
    assert e.by_batch == [("slice-1", 180), ("slice-2", 150), ("slice-3", 37)]  # most suspects first
    assert len(e.rows) == MAX_SUSPECTED_LABELS and e.rows_listed == 30
    first = e.rows[0]
    assert (first.batch_id, first.key, first.given, first.suggested, first.score) == (
        "slice-1", {"loan_id": 1000}, "bad", "good", 0.01)


def test_the_page_shows_the_label_errors_section(home):
    html = render.page(gather(home, [LINE]))
    section = html[html.index('id="label-errors-credit_risk"'):]
    section = section[:section.index("</section>")]
    for text in ("exclude", "6,427", "367", RUN, "5 folds", "slice-1: 180", "slice-2: 150", "slice-3: 37",
                 "The 20 most suspect of 367"):
        assert text in section, text
    cells = re.findall(r"<tr>\s*<td>([^<]*)</td>\s*<td><code>loan_id</code>&nbsp;(\d+)</td>\s*<td>(\w+)</td>\s*"
                       r"<td><b>(\w+)</b></td>\s*<td class=\"n\">([\d.]+)</td>", section)
    assert len(cells) == MAX_SUSPECTED_LABELS
    assert cells[0] == ("slice-1", "1000", "bad", "good", "0.010")
    assert cells[1] == ("slice-2", "1001", "good", "bad", "0.015")
    assert [float(c[4]) for c in cells] == sorted(float(c[4]) for c in cells)  # the worst first


def test_a_malformed_report_is_noted(home):
    layout.latest_label_errors_path(LINE, home).write_text('{"line": "credit_risk", "mode": "report", "rows": [')
    view = gather(home, [LINE]).line(LINE)
    assert view.label_errors is None
    assert len(view.notes) == 1 and view.notes[0].startswith("label errors: labelling/credit_risk/label_errors.json")
    storage.write_json_atomic(layout.latest_label_errors_path(LINE, home), {"line": LINE, "mode": "report",
                                                                           "rows": [{"given": "good"}]})
    assert gather(home, [LINE]).line(LINE).notes[0].startswith("label errors:")  # a wrong shape too
    html = render.page(gather(home, [LINE]))
    assert "label errors: labelling/credit_risk/label_errors.json" in html and 'id="label-errors-' not in html


def test_lines_without_a_report_show_nothing_new(home, tmp_path):
    overview = gather(home, [LINE, "employment"])
    assert overview.line("employment").label_errors is None
    html = render.page(overview)
    assert 'id="label-errors-credit_risk"' in html and 'id="label-errors-employment"' not in html


def test_a_report_with_nothing_found(tmp_path):
    home = tmp_path / "factory"
    records.write_label_errors(layout.latest_label_errors_path(LINE, home), {
        "line": LINE, "mode": "report", "rows_checked": 500, "found": 0, "excluded": 0, "by_batch": {}, "rows": []})
    html = render.page(gather(home, [LINE]))
    section = html[html.index('id="label-errors-credit_risk"'):]
    assert "No suspected label errors." in section[:section.index("</section>")]
