"""The Model Factory view's labelling section without a browser: a labelling line's
thresholds, labelling runs, review queues and imports of reviewed labels, written by the
label DAG's own code (a validated batch of real employment rows with blanked labels, the
thresholds chosen by :func:`~pipelines.labelling.thresholds.choose_thresholds`, the
machine labels landed as a label batch, a review queue exported in Label Studio's formats,
a reviewer's export imported back by :func:`~pipelines.labelling.stage.import_reviews`),
gathered and rendered."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.realdata import employment_frame, make_validated_batch
from pipelines.catalog import layout, ledger, records
from pipelines.ingest.landing import land_frame
from pipelines.labelling import stage, studio
from pipelines.labelling.thresholds import choose_thresholds
from pipelines.specs import load_spec
from pipelines.ui import render
from pipelines.ui.gather import gather

LINE = "employment"
SOURCE = "2016"
RUN = "scheduled__2026-12-01T10_00_00_00_00"
IMPORT = "manual__2026-12-02T09_00_00_00_00"
QUEUE = f"{SOURCE}-review-1"


def _section(html: str, line: str = LINE) -> str:
    section = html[html.index(f'id="labelling-{line}"'):]
    return section[:section.index("</section>")]


def _export(tasks: list[dict], choices: dict[int, str]) -> list[dict]:
    """Label Studio's JSON export of the reviewed project: each answered task with its annotation."""
    return [{**task, "id": 1000 + i, "annotations": [] if i not in choices else [
        {"id": i, "completed_by": {"id": 5, "email": "reviewer@factory.test"}, "was_cancelled": False,
         "created_at": "2026-12-02T08:00:00Z", "updated_at": "2026-12-02T08:00:00Z",
         "result": studio.choice_result(choices[i])}]} for i, task in enumerate(tasks)]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "factory"
    monkeypatch.setenv("FACTORY_HOME", str(home))
    monkeypatch.setattr(studio, "sdk_available", lambda: False)  # the SDK's own check has its own test
    spec = load_spec(LINE)
    rows = employment_frame(int(SOURCE)).head(60).copy()
    rows["employed"] = pd.array(rows["employed"], dtype="Int64")
    rows.loc[rows.index[:40], "employed"] = pd.NA  # 40 unlabelled rows
    make_validated_batch(home, LINE, SOURCE, rows)
    paths = layout.line_paths(LINE, home)
    cleaning = ledger.read(paths, SOURCE).cleaning.to_json()
    ledger.update(paths, SOURCE, "validated", cleaning={**cleaning, "rows_labelled": 20, "rows_unlabelled": 40,
                                                        "labels_by_source": {"given": 20, "machine": 0, "human": 0}})

    # the thresholds, chosen as the label DAG chooses them, on 400 held-out rows of model v3
    rng = np.random.default_rng(0)
    predicted = np.where(rng.random(400) < 0.7, "1", "0")
    confidence = rng.uniform(0.5, 1.0, 400)
    truth = np.where(rng.random(400) < confidence * 1.05, predicted, np.where(predicted == "1", "0", "1"))
    truth[(predicted == "0")] = np.where(rng.random((predicted == "0").sum()) < 0.6, "0", "1")  # class 0 never passes
    classes = choose_thresholds(predicted, confidence, truth, ["0", "1"], target_precision=0.9,
                                confidence_level=0.95, min_support=50)
    assert classes["1"]["threshold"] is not None and classes["0"]["threshold"] is None
    records.write_label_thresholds(LINE, {
        "line": LINE, "model_version": "3", "target_precision": 0.9, "confidence_level": 0.95, "min_support": 50,
        "classes": classes, "eval_rows": 400, "run_id": "employment-manual__2026-11-30", "at": "2026-12-01T10:00:02+00:00"},
        home)

    # the run: 25 rows labelled by the model (landed as a label batch), 15 queued for review
    unlabelled = stage.pending_rows(spec, SOURCE, home)
    assert len(unlabelled) == 40
    accepted, queued = unlabelled.iloc[:25], unlabelled.iloc[25:]
    records.write_labelling_run(LINE, {
        "line": LINE, "run_id": RUN, "source_batches": [SOURCE], "model_version": "3", "rows_unlabelled": 40,
        "auto_labelled": 25, "queued": 15, "label_batch": f"{SOURCE}-labels-1",
        "label_batches": {SOURCE: f"{SOURCE}-labels-1"}, "queue": QUEUE,
        "by_class": {"1": {"predicted": 30, "auto_labelled": 25, "queued": 5}},
        "state": "done", "at": "2026-12-01T10:00:05+00:00"}, home)
    land_frame(spec, stage.label_frame(spec, accepted, ["1"] * 25, "machine", ["3"] * 25, [0.97] * 25),
               f"{SOURCE}-labels-1", home)
    features = [f.name for f in spec.schema.features]
    tasks = [studio.build_task({f: r[f] for f in features}, batch_id=SOURCE, key={"person_id": int(r["person_id"])},
                               predicted="0", confidence=0.6, model_version="3",
                               meta={"drifted_region": i < 4, "rank": i + 1})
             for i, (_, r) in enumerate(queued.iterrows())]
    stage._export_queue(spec, QUEUE, tasks, {
        "line": LINE, "queue_id": QUEUE, "rows": 15, "created_at": "2026-12-01T10:00:06+00:00",
        "source_batches": [SOURCE], "model_version": "3", "run_id": RUN, "drifted_rows": 4,
        "keys": [{"batch_id": t["data"]["batch_id"], "key": t["data"]["key"]} for t in tasks], "imported": []}, home)
    return home


def _import(home: Path, tmp_path: Path, choices: dict[int, str], extra: list[dict] = (), run: str = IMPORT) -> dict:
    queued = json.loads(layout.review_tasks_path(layout.review_queue_dir(LINE, QUEUE, home)).read_text())
    export = tmp_path / f"export-{run}.json"
    export.write_text(json.dumps(_export(queued, choices) + list(extra)))
    return stage.import_reviews(LINE, run, export, home)


def test_thresholds_runs_and_a_waiting_queue_are_gathered(home):
    view = gather(home, [LINE]).line(LINE)
    assert view.notes == []
    lab = view.labelling
    assert lab.label_dag == "label_employment"
    t = lab.thresholds
    assert (t.model_version, t.target_precision, t.confidence_level, t.eval_rows, t.stale) == ("3", 0.9, 0.95, 400, False)
    assert [c.value for c in t.classes] == ["0", "1"]
    zero, one = t.classes
    assert zero.threshold is None and "no threshold reaches precision 0.9" in zero.reason and zero.support > 50
    assert one.threshold is not None and one.precision_lower >= 0.9 and 0 < one.accepted_share < 1
    assert one.support == 400 - zero.support

    (run,) = lab.runs
    assert (run.run_id, run.state, run.source_batches, run.rows_unlabelled, run.auto_labelled, run.queued,
            run.label_batches, run.queue) == (RUN, "done", [SOURCE], 40, 25, 15, [f"{SOURCE}-labels-1"], QUEUE)
    (queue,) = lab.queues
    folder = layout.review_queue_dir(LINE, QUEUE, home)
    assert (queue.queue_id, queue.rows, queue.drifted_rows, queue.imports) == (QUEUE, 15, 4, [])
    assert queue.tasks_file == str(layout.review_tasks_path(folder))
    assert queue.config_file == str(layout.review_config_path(folder))
    assert lab.imports == [] and lab.import_total == 0

    # the batch table: the cleaning report's unlabelled rows (the label batch counts none)
    by_id = {b.batch_id: b for b in view.batches}
    assert by_id[SOURCE].rows_unlabelled == 40 and by_id[f"{SOURCE}-labels-1"].rows_unlabelled is None


def test_the_page_shows_the_labelling_section(home):
    html = render.page(gather(home, [LINE]))
    section = _section(html)
    t = gather(home, [LINE]).line(LINE).labelling.thresholds
    one = t.classes[1]
    for text in ("label_employment", "v3", "0.9", "95% lower bound", "400 held-out rows", f"{one.threshold:.4f}",
                 f"{one.precision_lower:.4f}", f"{one.accepted_share:.1%}", "all to review", t.classes[0].reason,
                 RUN, f"{SOURCE}-labels-1", QUEUE, "waiting",
                 str(layout.review_tasks_path(layout.review_queue_dir(LINE, QUEUE, home))),
                 str(layout.review_config_path(layout.review_queue_dir(LINE, QUEUE, home))), "No review imported yet."):
        assert text in section, text
    run_row = re.search(r"<td class=\"n\">(\d+)</td>\s*<td class=\"n\">(\d+)</td>\s*<td class=\"n\">(\d+)</td>", section)
    assert run_row.groups() == ("40", "25", "15")
    queue_row = section[section.index(f"<b>{QUEUE}</b>"):]
    assert re.match(rf"<b>{QUEUE}</b>.*?</td>\s*<td class=\"n\">15</td>\s*<td class=\"n\">4</td>", queue_row, re.S)

    # the batch table has the unlabelled column, 40 for the source batch
    batches = html[html.index('<table class="batches">'):]
    batches = batches[:batches.index("</table>")]
    assert "Unlabelled" in batches
    source_row = batches[batches.index(f"<b>{SOURCE}</b>"):]
    assert re.search(r'<td class="n unlabelled">40</td>', source_row[:source_row.index("</tr>")])


def test_an_import_is_shown_with_what_it_skipped(home, tmp_path):
    unknown_row = {**json.loads(layout.review_tasks_path(layout.review_queue_dir(LINE, QUEUE, home)).read_text())[0]}
    unknown_row["data"] = {**unknown_row["data"], "key": {"person_id": 999999999}}
    done = _import(home, tmp_path, {0: "1", 1: "0", 2: "1", 3: "7"},
                   extra=_export([unknown_row], {0: "1"}))
    assert done["labels"] == 3
    lab = gather(home, [LINE]).line(LINE).labelling
    (imp,) = lab.imports
    assert (imp.import_id, imp.tasks, imp.labels, imp.skipped, imp.state) == (IMPORT, 16, 3, 13, "done")
    assert imp.label_batches == [f"{SOURCE}-labels-2"] and imp.queues == [QUEUE]
    reasons = dict(imp.skipped_by_reason)
    assert imp.skipped_by_reason[0] == ("no annotation that was not cancelled", 11)  # the most first
    assert reasons["its row is in no review queue of the line"] == 1
    assert reasons["label '...' is not one of the classes ['...', '...']"] == 1
    (queue,) = lab.queues
    assert queue.imported_labels == 3 and queue.imports[0]["label_batch"] == f"{SOURCE}-labels-2"

    section = _section(render.page(gather(home, [LINE])))
    assert "imported" in section and "No review imported yet." not in section
    for text in (IMPORT, str(tmp_path / f"export-{IMPORT}.json"), "its row is in no review queue of the line",
                 f"{SOURCE}-labels-2"):
        assert text in section, text
    row = section[section.index(f'<code title="{IMPORT}">'):]
    assert re.search(r'<td class="n">16</td>\s*<td class="n">3</td>\s*<td class="small"><b>13</b>', row)
    assert "11 &times; no annotation that was not cancelled" in row


@pytest.mark.parametrize("record", ["thresholds", "run", "queue", "import"])
def test_a_malformed_record_is_a_note(home, tmp_path, record):
    _import(home, tmp_path, {0: "1"})
    path = {"thresholds": layout.label_thresholds_path(LINE, home),
            "run": layout.labelling_run_path(LINE, RUN, home),
            "queue": layout.review_queue_record_path(layout.review_queue_dir(LINE, QUEUE, home)),
            "import": layout.label_import_path(LINE, IMPORT, home)}[record]
    path.write_text(path.read_text()[:40])  # cut short
    view = gather(home, [LINE]).line(LINE)
    what = {"thresholds": "label thresholds", "run": "labelling runs", "queue": "review queues",
            "import": "label imports"}[record]
    rel = str(path.relative_to(home))
    assert len(view.notes) == 1 and view.notes[0].startswith(f"{what}: {rel}: not valid JSON"), view.notes
    lab = view.labelling
    assert (lab.thresholds is None) == (record == "thresholds")
    assert len(lab.runs) == (record != "run") and len(lab.queues) == (record != "queue")
    assert len(lab.imports) == (record != "import")
    html = render.page(gather(home, [LINE]))
    assert f"{what}: {rel}" in html and 'id="labelling-employment"' in html


def test_a_queue_whose_files_are_gone_is_a_note(home):
    layout.review_tasks_path(layout.review_queue_dir(LINE, QUEUE, home)).unlink()
    view = gather(home, [LINE]).line(LINE)
    assert view.labelling.queues[0].tasks_file is None and view.labelling.queues[0].config_file is not None
    assert view.notes == [f"review queue {QUEUE}: labelling/{LINE}/queue/{QUEUE}/tasks.json is missing"]
    assert "missing" in _section(render.page(gather(home, [LINE])))


def test_thresholds_of_a_model_no_longer_in_serving_are_stale(home):
    from pipelines.ui.gather import read_labelling

    spec = load_spec(LINE)
    assert read_labelling(LINE, spec, home, [], serving_version=3).thresholds.stale is False
    assert read_labelling(LINE, spec, home, [], serving_version=4).thresholds.stale is True


def test_lines_without_labelling_show_nothing_new(tmp_path):
    home = tmp_path / "factory"
    overview = gather(home, [LINE, "fashion"])
    assert overview.line("fashion").labelling is None  # no labelling section, no record
    empty = overview.line(LINE).labelling  # declared, nothing run yet
    assert empty is not None and empty.thresholds is None and empty.runs == [] and empty.queues == []
    html = render.page(overview)
    assert 'id="labelling-fashion"' not in html
    section = _section(html)
    for text in ("No thresholds chosen yet", "No labelling run yet.", "No review queue yet.", "No review imported yet."):
        assert text in section, text


def test_an_import_spanning_two_queues_counts_each_queues_own_labels(home, tmp_path):
    """A reviewer may import two queues' tasks into one Label Studio project: each queue
    then records the labels of its own rows and the label batch they landed in."""
    spec = load_spec(LINE)
    other, other_queue = "2017", "2017-review-1"
    rows = employment_frame(int(other)).head(10).copy()
    rows["employed"] = pd.array([pd.NA] * len(rows), dtype="Int64")
    make_validated_batch(home, LINE, other, rows)
    features = [f.name for f in spec.schema.features]
    tasks = [studio.build_task({f: r[f] for f in features}, batch_id=other, key={"person_id": int(r["person_id"])},
                               predicted="1", confidence=0.7, model_version="3", meta={"drifted_region": False,
                                                                                      "rank": i + 1})
             for i, (_, r) in enumerate(stage.pending_rows(spec, other, home).iterrows())]
    stage._export_queue(spec, other_queue, tasks, {
        "line": LINE, "queue_id": other_queue, "rows": len(tasks), "created_at": "2026-12-01T11:00:00+00:00",
        "source_batches": [other], "model_version": "3", "drifted_rows": 0,
        "keys": [{"batch_id": t["data"]["batch_id"], "key": t["data"]["key"]} for t in tasks], "imported": []}, home)

    # one project, both queues' tasks: 3 answered of the first, 2 of the second
    first = json.loads(layout.review_tasks_path(layout.review_queue_dir(LINE, QUEUE, home)).read_text())
    export = tmp_path / "one-project.json"
    export.write_text(json.dumps(_export(first[:3] + tasks[:2], {0: "1", 1: "0", 2: "1", 3: "0", 4: "0"})))
    done = stage.import_reviews(LINE, IMPORT, export, home)
    assert done["labels"] == 5 and done["label_batches"] == {SOURCE: f"{SOURCE}-labels-2", other: f"{other}-labels-1"}

    queues = {q.queue_id: q for q in gather(home, [LINE]).line(LINE).labelling.queues}
    assert queues[QUEUE].imported_labels == 3 and queues[other_queue].imported_labels == 2
    assert queues[QUEUE].imports[0]["label_batch"] == f"{SOURCE}-labels-2"
    assert queues[other_queue].imports[0]["label_batch"] == f"{other}-labels-1"
    section = _section(render.page(gather(home, [LINE])))
    row = section[section.index(f"<b>{other_queue}</b>"):]
    row = row[:row.index("</tr>")]
    assert "2 labels" in row and f"{other}-labels-1" in row and f"{SOURCE}-labels-2" not in row
