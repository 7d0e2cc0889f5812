"""Automated labelling: thresholds, review queues in Label Studio's formats, the label DAG.

The thresholds are checked on real ACS employment rows: chosen on one held-out set,
their precision is measured on rows they were not chosen on. The label DAG runs through
``dag.test()`` with a real employment model in serving (trained as the training stage
does), on a validated batch of real rows whose labels were blanked; its review queue is
checked with Label Studio's SDK, answered as a reviewer would and imported back.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.catalog import layout, ledger, records
from pipelines.config import REPO_ROOT
from pipelines.labelling import studio
from pipelines.labelling.thresholds import accept, binary_predictions, choose_thresholds

LINE = "employment"


def _real_rows():
    from bench.realdata import employment_frame
    from pipelines.specs import load_spec

    spec = load_spec(LINE)
    features = [f.name for f in spec.schema.features]
    return employment_frame(2015), employment_frame(2016), features


def _encode(frame: pd.DataFrame, features: list[str]) -> np.ndarray:
    out = frame[features].copy()
    for c in features:
        if out[c].dtype == object or str(out[c].dtype) == "str":
            out[c] = out[c].astype(int)
    return out.to_numpy(dtype=float)


def test_thresholds_reach_the_target_precision_on_rows_they_were_not_chosen_on():
    from sklearn.ensemble import HistGradientBoostingClassifier

    train_year, _, features = _real_rows()
    # the source is ordered (not by chance); the gate's held-out split is by key hash
    train_year = train_year.sample(frac=1, random_state=1).reset_index(drop=True)
    train, held_out = train_year.iloc[:20000], train_year.iloc[20000:30000]
    model = HistGradientBoostingClassifier(max_iter=60, random_state=0).fit(
        _encode(train, features), train["employed"].to_numpy())
    classes = ["0", "1"]
    target = 0.9  # employed (1) cannot reach 0.95 on these features
    predicted, confidence = binary_predictions(model.predict_proba(_encode(held_out, features))[:, 1], classes, "1")
    chosen = choose_thresholds(predicted, confidence, held_out["employed"].astype(str).to_numpy(), classes,
                               target_precision=target, confidence_level=0.95, min_support=50)
    assert all(chosen[c]["threshold"] is not None for c in classes), chosen
    for c in classes:
        assert chosen[c]["precision_lower"] >= target and chosen[c]["support"] > 1000
        assert 0 < chosen[c]["accepted_share"] < 1  # a real trade-off, not all or nothing

    # rows they were not chosen on: the accepted labels reach the target, per class
    new = train_year.iloc[30000:60000]
    p_new, c_new = binary_predictions(model.predict_proba(_encode(new, features))[:, 1], classes, "1")
    ok = accept(p_new, c_new, chosen)
    truth = new["employed"].astype(str).to_numpy()
    for c in classes:
        mine = ok & (p_new == c)
        assert mine.sum() > 500
        assert (truth[mine] == c).mean() >= target, (c, (truth[mine] == c).mean())
    # the plain argmax would not: that is what the thresholds are for
    assert (truth == p_new).mean() < target

    # too little support: never accepted
    few = choose_thresholds(predicted[:60], confidence[:60], held_out["employed"].astype(str).to_numpy()[:60], classes,
                            target_precision=target, confidence_level=0.95, min_support=50)
    assert all(v["threshold"] is None and "min_support" in v["reason"] for v in few.values())
    assert not accept(p_new, c_new, few).any()


def test_a_small_perfect_sample_is_not_enough_for_a_high_target():
    # 40 of 40 right: precision 1.0, but its 95% lower bound is 0.928 < 0.98
    predicted = np.array(["1"] * 40)
    chosen = choose_thresholds(predicted, np.linspace(0.9, 0.99, 40), predicted, ["0", "1"],
                               target_precision=0.98, confidence_level=0.95, min_support=10)
    assert chosen["1"]["threshold"] is None and chosen["0"]["support"] == 0


def test_spec_refuses_labelling_that_cannot_work(tmp_path):
    import yaml

    from pipelines.specs import SpecError, load_spec_file

    data = yaml.safe_load((REPO_ROOT / "include" / "lines" / "employment.yaml").read_text())
    for f in data["schema"]["fields"]:
        if f["name"] == "employed":
            f["missing"] = "quarantine"
    path = tmp_path / "employment.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SpecError, match="label field 'employed' must use missing: keep"):
        load_spec_file(path)

    image = yaml.safe_load((REPO_ROOT / "include" / "lines" / "fashion.yaml").read_text())
    label = image["schema"]["label"]["name"]
    for f in image["schema"]["fields"]:
        if f["name"] == label:
            f["missing"] = "keep"
    image["labelling"] = {"label_errors": {"mode": "report"}}
    path = tmp_path / "fashion.yaml"
    path.write_text(yaml.safe_dump(image))
    with pytest.raises(SpecError, match="label errors are found on tabular lines only"):
        load_spec_file(path)
    image["labelling"] = {"label_errors": {"mode": "off"}}
    path.write_text(yaml.safe_dump(image))
    assert load_spec_file(path).labelling.label_errors.mode == "off"


@pytest.mark.skipif(not studio.sdk_available(), reason="Label Studio's SDK environment is not built")
def test_the_sdk_refuses_a_prediction_outside_the_interface(tmp_path):
    config = tmp_path / "label_config.xml"
    config.write_text(studio.label_config(["0", "1"]))
    good = studio.build_task({"AGEP": 30.0, "SCHL": "16"}, batch_id="b", key={"person_id": 7}, predicted="1",
                             confidence=0.8, model_version="3")
    tasks = tmp_path / "tasks.json"
    tasks.write_text(json.dumps([good]))
    assert studio.check_with_sdk(config, tasks) == {"tasks": 1}
    bad = json.loads(json.dumps(good))
    bad["predictions"][0]["result"][0]["value"]["choices"] = ["7"]
    tasks.write_text(json.dumps([good, bad]))
    with pytest.raises(studio.StudioError, match="task 1, prediction 0"):
        studio.check_with_sdk(config, tasks)


# ---------------------------------------------------------------- the label DAG, end to end


def _export(tasks: list[dict], choices: dict[int, str]) -> list[dict]:
    """Label Studio's JSON export of the reviewed tasks: each answered task with its
    annotations (an earlier one replaced, one cancelled)."""
    out = []
    for i, task in enumerate(tasks):
        entry = {**task, "id": 1000 + i, "annotations": []}
        if i in choices:
            entry["annotations"] = [
                {"id": 1, "completed_by": {"id": 4, "email": "first@factory.test"}, "was_cancelled": False,
                 "created_at": "2026-01-01T10:00:00Z", "updated_at": "2026-01-01T10:00:00Z",
                 "result": studio.choice_result("0" if choices[i] == "1" else "1")},
                {"id": 2, "completed_by": {"id": 5, "email": "reviewer@factory.test"}, "was_cancelled": False,
                 "created_at": "2026-01-02T10:00:00Z", "updated_at": "2026-01-02T10:00:00Z",
                 "result": studio.choice_result(choices[i])},
                {"id": 3, "completed_by": 6, "was_cancelled": True, "created_at": "2026-01-03T10:00:00Z",
                 "updated_at": "2026-01-03T10:00:00Z", "result": []},
            ]
        out.append(entry)
    return out


def _run(dag, conf: dict | None = None):
    """One run of the DAG (``dag.test``), at its own date: each run its own run id and conf."""
    from datetime import UTC, datetime, timedelta

    _run.n = getattr(_run, "n", 0) + 1
    when = datetime.now(UTC) + timedelta(minutes=_run.n)
    # every param given: dag.test keeps an earlier run's conf in the DAG's params
    conf = {"batch_id": None, "review_file": None, "target_precision": None, **(conf or {})}
    return dag.test(run_after=when, logical_date=when, run_conf=conf)


@pytest.mark.integration
def test_label_dag_prelabels_queues_and_imports_human_labels(airflow_db, tmp_path, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag
    from serving_models import train_and_publish

    from bench.realdata import employment_frame, make_validated_batch
    from pipelines.labelling import stage

    home = tmp_path / "factory"
    monkeypatch.setenv("FACTORY_HOME", str(home))
    version, run = train_and_publish(home, rows=4000, epochs=3)

    rows = employment_frame(2016).head(800).copy()
    truth = dict(zip(rows["person_id"], rows["employed"].astype(str), strict=True))
    blank = rows.index[:600]
    rows["employed"] = pd.array(rows["employed"], dtype="Int64")
    rows.loc[blank, "employed"] = pd.NA
    make_validated_batch(home, LINE, "2016", rows)

    bag = DagBag(dag_folder=str(REPO_ROOT / "dags"))
    dag = bag.dags[f"label_{LINE}"]

    # bad params fail the run and change nothing
    for conf in ({"batch_id": "2099"}, {"review_file": str(tmp_path / "missing.json")}):
        failed = _run(dag, conf)
        assert failed.get_task_instance("plan").state == "failed", conf
    before = sorted(p.relative_to(home) for p in layout.labelling_dir(LINE, home).rglob("*"))
    # (the training's label-error report is the only labelling record so far)
    assert before in ([], [Path("labelling", LINE, "label_errors.json")]), before

    target = 0.9
    result = _run(dag, {"target_precision": target})
    states = {ti.task_id: ti.state for ti in result.get_task_instances()}
    assert states == {"plan": "success", "prelabel": "success", "import_reviews": "skipped", "done": "success",
                      "landed": "success", "ingest_labels": "success"}

    labelled = records.read_labelling_runs(LINE, home)
    assert len(labelled) == 1
    done = labelled[0]
    assert done.rows_unlabelled == 600 and done.auto_labelled + done.queued <= 600
    assert done.auto_labelled > 0 and done.queued > 0 and done.label_batch == "2016-labels-1"
    thresholds = records.read_label_thresholds(LINE, home)
    assert thresholds.model_version == str(version) and thresholds.target_precision == target
    assert thresholds.eval_rows == len(pd.read_parquet(layout.eval_data_path(run)))

    # the machine label batch: landed like any batch, the spec's columns and provenance
    paths = layout.line_paths(LINE, home)
    machine_record = ledger.read(paths, "2016-labels-1")
    assert machine_record.status == ledger.LANDED
    machine = pd.read_parquet(machine_record["file"])
    from pipelines.specs import load_spec

    spec = load_spec(LINE)
    assert list(machine.columns) == [*spec.schema.names, "label_source", "label_model", "label_confidence"]
    assert set(machine["label_source"]) == {"machine"} and set(machine["label_model"]) == {str(version)}
    assert machine["employed"].notna().all() and set(machine["person_id"]) <= set(rows.loc[blank, "person_id"])
    # accepted labels vs the true labels of the blanked rows: the target holds per class
    for cls, part in machine.groupby(machine["employed"].astype(str)):
        if len(part) >= 30:
            assert np.mean([truth[p] == cls for p in part["person_id"]]) >= target - 0.03, cls
        assert (part["label_confidence"] >= thresholds.classes[cls].threshold).all()

    # the review queue: the rest, least confident first, in Label Studio's formats
    queue_dir = layout.review_queue_dir(LINE, done.queue, home)
    tasks = json.loads(layout.review_tasks_path(queue_dir).read_text())
    queue = records.read_review_queue(queue_dir)
    assert len(tasks) == queue.rows == done.queued
    confidences = [t["predictions"][0]["score"] for t in tasks]
    drifted = [t["meta"]["drifted_region"] for t in tasks]
    assert drifted == sorted(drifted, reverse=True)
    assert confidences == sorted(confidences) or any(drifted)
    assert not set(t["data"]["key"]["person_id"] for t in tasks) & set(machine["person_id"])
    assert studio.check_with_sdk(layout.review_config_path(queue_dir), layout.review_tasks_path(queue_dir)) \
        == {"tasks": len(tasks)}

    # nothing new: a second run skips after plan and lands nothing
    again = _run(dag)
    assert again.get_task_instance("plan").state == "skipped"
    # a retried prelabel (same run id) lands no second batch
    assert stage.prelabel(LINE, done.run_id, {"batches": [{"batch_id": "2016"}]}, home=home)["label_batch"] \
        == "2016-labels-1"
    assert [r.batch_id for r in ledger.all_records(paths) if "-labels-" in r.batch_id] == ["2016-labels-1"]

    # the reviewer answers the first 20 tasks, against the model for every one of them
    flipped = {i: ("0" if t["predictions"][0]["result"][0]["value"]["choices"][0] == "1" else "1")
               for i, t in enumerate(tasks[:20])}
    exported = _export(tasks, flipped)
    exported.append({**exported[0], "id": 99, "data": {**exported[0]["data"], "key": {"person_id": -5}}})
    export = tmp_path / "export.json"
    export.write_text(json.dumps(exported))
    assert studio.check_with_sdk(layout.review_config_path(queue_dir), export, kind="export") == {"tasks": len(exported)}

    garbled = tmp_path / "garbled.json"
    garbled.write_text("{not json")
    failed = _run(dag, {"review_file": str(garbled)})
    assert failed.get_task_instance("import_reviews").state == "failed"
    assert ledger.read(paths, "2016-labels-2") is None  # nothing landed

    imported = _run(dag, {"review_file": str(export)})
    assert imported.get_task_instance("import_reviews").state == "success"
    record = records.read_label_imports(LINE, home)[-1]
    assert record.labels == 20 and record.label_batch == "2016-labels-2"
    assert record.skipped_by_reason == {"no annotation that was not cancelled": len(tasks) - 20,
                                        "its row is in no review queue of the line": 1}
    human = pd.read_parquet(ledger.read(paths, "2016-labels-2")["file"])
    assert set(human["label_source"]) == {"human"} and set(human["label_model"]) == {"reviewer@factory.test"}
    assert human["label_confidence"].isna().all()
    chosen = {t["data"]["key"]["person_id"]: flipped[i] for i, t in enumerate(tasks[:20])}
    assert {p: str(v) for p, v in zip(human["person_id"], human["employed"], strict=True)} == chosen
    # features come from the clean batch, not from what the task showed
    clean = rows.set_index("person_id")
    assert (human.set_index("person_id")["AGEP"] == clean.loc[human["person_id"], "AGEP"]).all()
    assert records.read_review_queue(queue_dir).imported[0]["label_batch"] == "2016-labels-2"

    # the same export again lands nothing new
    _run(dag, {"review_file": str(export)})
    assert ledger.read(paths, "2016-labels-3") is None
