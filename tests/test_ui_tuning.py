"""The Model Factory view's tuning section without a browser: studies and tuned settings
written by the catalog's own writers (:func:`~pipelines.catalog.records.write_study_record`,
:func:`~pipelines.catalog.records.write_tuned_params`), gathered and rendered."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from pipelines import storage
from pipelines.catalog import layout, records
from pipelines.specs import load_spec
from pipelines.ui import charts, render
from pipelines.ui.gather import gather, study_from_record, tuned_from_record

LINE = "credit_risk"
OLD = f"{LINE}-manual__2026-11-20T10_00_00_00_00"
NEW = f"{LINE}-scheduled__2026-11-27T03_00_00_00_00"
SVG = "{http://www.w3.org/2000/svg}"


def _trial(number: int, state: str, curve: list[float], *, params: dict | None = None, error: str | None = None) -> dict:
    """A trial as the study's summary keeps it: per-epoch validation values, and the best
    epoch's value for a complete one."""
    t = {"number": number, "state": state, "params": params or {"learning_rate": 0.001 * (number + 1),
                                                                  "hidden_units": [64, 32], "dropout": 0.1 * number},
         "intermediate": {str(e + 1): v for e, v in enumerate(curve)},
         "started": f"2026-11-27T03:{number:02d}:00+00:00", "mlflow_run_id": f"trial-run-{number}"}
    if state in ("COMPLETE", "PRUNED", "FAIL"):
        t["completed"] = f"2026-11-27T03:{number:02d}:50+00:00"
        t["seconds"] = 50.0
    if state == "COMPLETE":
        t["value"] = max(curve)
    if error:
        t["error"] = error
    return t


# value by trial: complete 0.70, 0.72 (best so far), pruned at 0.61 after 2 epochs,
# complete 0.69, failed, pruned at 0.64 after 3 epochs, complete 0.745 (the best), running
NEW_TRIALS = [
    _trial(0, "COMPLETE", [0.65, 0.69, 0.70], params={"learning_rate": 0.001, "hidden_units": [64, 32], "dropout": 0.1}),
    _trial(1, "COMPLETE", [0.66, 0.72, 0.715]),
    _trial(2, "PRUNED", [0.58, 0.61]),
    _trial(3, "COMPLETE", [0.67, 0.69]),
    _trial(4, "FAIL", [], error="horovodrun exited with 1 (worker killed by signal 9)"),
    _trial(5, "PRUNED", [0.60, 0.62, 0.64]),
    _trial(6, "COMPLETE", [0.70, 0.74, 0.745],
           params={"learning_rate": 0.00042, "hidden_units": [128, 64], "dropout": 0.25}),
    _trial(7, "RUNNING", [0.68]),
]
BEST = {"trial": 6, "value": 0.745, "params": {"learning_rate": 0.00042, "hidden_units": [128, 64], "dropout": 0.25}}
IMPORTANCES = {"dropout": 0.12, "learning_rate": 0.61, "hidden_units": 0.27}


def _study(name: str, started: str, trials: list[dict], **extra) -> dict:
    return {"study": name, "line": LINE, "metric": "val_auc", "direction": "maximize", "state": "finished",
            "space": "default", "sampler": "tpe", "pruner": "median", "trials_requested": 8, "parallel": 2,
            "batches": ["slice-1", "slice-2"], "started": started, "mlflow_run_id": f"parent-{started[8:10]}",
            "trials": trials, **extra}


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "factory"
    records.write_study_record(LINE, OLD, _study(OLD, "2026-11-20T10:00:05+00:00", [
        _trial(0, "COMPLETE", [0.66, 0.68]), _trial(1, "COMPLETE", [0.64, 0.67])],
        finished="2026-11-20T10:30:00+00:00", best={"trial": 0, "value": 0.68, "params": {"learning_rate": 0.001}},
        importances={"learning_rate": 1.0}), home)
    records.write_study_record(LINE, NEW, _study(NEW, "2026-11-27T03:00:04+00:00", NEW_TRIALS,
                                                 finished="2026-11-27T03:58:00+00:00", best=BEST,
                                                 importances=IMPORTANCES, warm_start_from=OLD), home)
    records.write_tuned_params(LINE, {"line": LINE, "params": BEST["params"], "study": NEW, "trial": 6,
                                      "metric": "val_auc", "value": 0.745, "batches": ["slice-1", "slice-2"],
                                      "space": "default", "spec_version": 1, "mlflow_run_id": "trial-run-6",
                                      "at": "2026-11-27T03:58:01+00:00"}, home)
    return home


def test_studies_newest_first_with_counts_best_and_importances(home):
    view = gather(home, [LINE]).line(LINE)
    assert view.notes == []
    tuning = view.tuning
    assert [s.study for s in tuning.studies] == [NEW, OLD] and tuning.study_total == 2
    latest = tuning.studies[0]
    assert latest.counts == {"complete": 4, "pruned": 2, "failed": 1, "running": 1}
    assert (latest.best_trial, latest.best_value, latest.best_params) == (6, 0.745, BEST["params"])
    assert latest.importances == [("learning_rate", 0.61), ("hidden_units", 0.27), ("dropout", 0.12)]
    pruned = {t.number: (t.last_epoch, t.last_intermediate) for t in latest.trials if t.state == "PRUNED"}
    assert pruned == {2: (2, 0.61), 5: (3, 0.64)}
    tuned = tuning.tuned
    assert (tuned.study, tuned.trial, tuned.value, tuned.batches, tuned.used) == (NEW, 6, 0.745, ["slice-1", "slice-2"], True)


def test_the_page_shows_the_tuning_section(home):
    html = render.page(gather(home, [LINE]))
    section = html[html.index('id="tuning-credit_risk"'):]
    section = section[:section.index("<h3", 10)]
    for text in (NEW, OLD, "0.7450", "4 complete", "2 pruned", "1 failed", "1 running", "of 8 requested",
                 "tpe / median", "warm start from", "in use", "data window slice-1, slice-2", "trial 6",
                 "[128, 64]", "0.00042"):
        assert text in section, text
    names = re.findall(r'<li><code>(\w+)</code><span class="bar"><span style="width:([\d.]+)%', section)
    assert names == [("learning_rate", "100.0"), ("hidden_units", "44.3"), ("dropout", "19.7")]
    assert section.index(NEW) < section.index(OLD)  # newest first
    svg = re.search(r"<svg class=\"chart trials\".*?</svg>", section, re.S).group(0)
    ET.fromstring(svg)


def test_the_trials_chart_marks_pruned_trials_and_the_best_so_far(home):
    study = gather(home, [LINE]).line(LINE).tuning.studies[0]
    root = ET.fromstring(charts.trials_chart(study))
    dots = root.findall(f"{SVG}circle")
    assert [d.find(f"{SVG}title").text for d in dots] == [
        "trial 0: val_auc 0.7", "trial 1: val_auc 0.72", "trial 3: val_auc 0.69", "trial 6: val_auc 0.745"]
    crosses = [p.find(f"{SVG}title").text for p in root.findall(f"{SVG}path[@class='pruned']")]
    assert crosses == ["trial 2 pruned after epoch 2: val_auc 0.61", "trial 5 pruned after epoch 3: val_auc 0.64"]
    # the best so far: steps up at trials 1 and 6 and runs on to the last trial number
    points = [tuple(map(float, p.split(","))) for p in root.find(f"{SVG}polyline[@class='best']").get("points").split()]
    ys = [y for _, y in points]
    assert ys == sorted(ys, reverse=True) and len(set(ys)) == 3  # higher is better: y only goes up the chart
    xs = {n: float(d.get("cx")) for n, d in zip((0, 1, 3, 6), dots, strict=True)}
    assert points[0][0] == xs[0] and xs[6] in [x for x, _ in points] and points[-1][0] > xs[6]
    y_of = {round(float(d.get("cy")), 1) for d in dots}
    assert round(points[-1][1], 1) in y_of  # ends at the best trial's value
    assert charts.nice_range(0.61, 0.745) == pytest.approx((0.6, 0.75, 0.05), abs=1e-9)


def test_a_malformed_study_record_is_noted_and_the_rest_shows(home):
    broken = layout.study_record_path(layout.study_dir(LINE, f"{LINE}-manual__2026-11-28T00_00_00_00_00", home))
    broken.parent.mkdir(parents=True)
    broken.write_text('{"study": "x", "line": "credit_risk", "trials": [')  # cut short
    shapeless = layout.study_record_path(layout.study_dir(LINE, f"{LINE}-manual__2026-11-29T00_00_00_00_00", home))
    shapeless.parent.mkdir(parents=True)
    storage.write_json_atomic(shapeless, {"study": "y", "line": LINE, "trials": "none"})  # no metric, bad trials
    layout.study_dir(LINE, f"{LINE}-manual__2026-11-30T00_00_00_00_00", home).mkdir()  # started, not yet recorded
    view = gather(home, [LINE]).line(LINE)
    assert [s.study for s in view.tuning.studies] == [NEW, OLD]
    assert len(view.notes) == 2 and all(n.startswith("tuning studies: tuning/credit_risk/studies/") for n in view.notes)
    assert any("2026-11-28" in n and "not valid JSON" in n for n in view.notes)
    assert any("2026-11-29" in n for n in view.notes)
    html = render.page(gather(home, [LINE]))
    assert "not valid JSON" in html and "0.7450" in html and "4 complete" in html


def test_malformed_tuned_settings_are_noted(home):
    layout.tuned_params_path(LINE, home).write_text("[")
    view = gather(home, [LINE]).line(LINE)
    assert view.tuning.tuned is None and [s.study for s in view.tuning.studies] == [NEW, OLD]
    assert [n.split(":")[0] for n in view.notes] == ["tuned settings"]


def test_tuned_settings_the_line_does_not_use(home):
    spec = load_spec(LINE)
    tuned = records.read_tuned_params(LINE, home)
    off = spec.model_copy(update={"tuning": spec.tuning.model_copy(update={"use_tuned": False})})
    assert (tuned_from_record(tuned, off).used, tuned_from_record(tuned, off).why_not) == (
        False, "tuning.use_tuned is false")
    stale = tuned.model_copy(update={"params": {"dropout": 1.5}})  # outside what training accepts
    assert not tuned_from_record(stale, spec).used and "dropout" in tuned_from_record(stale, spec).why_not
    assert tuned_from_record(tuned, spec).used


def test_a_running_study_shows_its_best_so_far():
    record = records.StudyRecord.model_validate(_study(NEW, "2026-11-27T03:00:04+00:00", NEW_TRIALS[:4], state="running"))
    study = study_from_record(record)
    assert (study.state, study.best_trial, study.best_value) == ("running", 1, 0.72) and study.importances == []


def test_lines_without_studies_show_nothing_new(home, tmp_path):
    overview = gather(home, [LINE, "employment"])
    assert overview.line("employment").tuning is None
    html = render.page(overview)
    assert 'id="tuning-credit_risk"' in html and 'id="tuning-employment"' not in html
    assert gather(tmp_path / "empty", [LINE]).line(LINE).tuning is None


def test_each_record_is_read_once_per_page(home, monkeypatch):
    reads: list[Path] = []
    real = storage.read_json

    def counting(path, *args, **kwargs):
        reads.append(Path(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(storage, "read_json", counting)
    render.page(gather(home, [LINE]))
    tuning = [p for p in reads if "tuning" in p.parts]
    assert sorted(p.name for p in tuning) == ["study.json", "study.json", "tuned_params.json"]
    assert len(set(tuning)) == len(tuning)
