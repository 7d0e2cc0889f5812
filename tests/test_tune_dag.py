"""The tuning DAG and its stages on real parts: an Optuna study in the SQLite storage,
real ``horovodrun`` workers per trial, a real MLflow store, ``dag.test()`` on a real
Airflow database. Small: one or two real batches of loans, two or three epochs a trial."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from bench.realdata import lending_club_frame, make_validated_batch
from pipelines import storage, tracking
from pipelines.catalog import layout, ledger, records
from pipelines.config import REPO_ROOT, factory_home, ml_python

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not (ml_python().parent / "horovodrun").exists(), reason="ML environment not set up"),
]

LINE = "credit_risk"


def _processes_naming(text: str) -> list[str]:
    """Command lines of live processes that name ``text`` (a trial's run folder)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{pid}: {cmdline}")
    return found


@pytest.fixture(scope="module")
def dagbag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO_ROOT / "dags"))


def test_tune_dag_end_to_end(dagbag):
    from pipelines.specs import load_spec
    from pipelines.training import stage as training
    from pipelines.tuning.params import current_params

    home = factory_home()
    paths = layout.line_paths(LINE, home)
    if ledger.read(paths, "tune-e2e") is None:
        make_validated_batch(home, LINE, "tune-e2e", lending_club_frame(3))
    spec = load_spec(LINE)
    # The study's yardstick is the line's current settings, tuned ones included; a tuning
    # run of another test module (the runtime's, on the same home) may have left tuned
    # settings behind, so this study starts from the spec's own.
    layout.tuned_params_path(LINE, home).unlink(missing_ok=True)
    run = dagbag.dags[f"tune_{LINE}"].test(
        run_conf={"trials": 3, "epochs": 2, "parallel": 1, "window_batches": 1, "warm_start": False})
    states = {}
    for ti in run.get_task_instances():
        states.setdefault(ti.task_id, []).append(ti.state)
    assert states == {"start": ["success"], "trial": ["success"] * 3, "finish": ["success"]}, states

    info = run.get_task_instance("start").xcom_pull(task_ids="start", key="study")
    name = info["study"]
    assert info["batches"] == ["tune-e2e"] and info["metric"] == "val_auc" and info["epochs"] == 2
    record = records.read_study_record(LINE, name, home)
    assert record.state == "finished" and record.trials_requested == 3 and record.batches == ["tune-e2e"]
    assert [t.number for t in record.trials] == [0, 1, 2] and {t.state for t in record.trials} == {"COMPLETE"}
    first = record.trials[0]
    assert first.enqueued is True and first["origin"] == "current settings"
    assert first.params == current_params(spec, list(spec.tuning.spaces["default"]))
    assert first.params["hidden_units"] == [64, 32] and first.params["batch_size"] == 128
    assert [t.enqueued for t in record.trials[1:]] == [False, False]  # sampled
    for t in record.trials:
        assert sorted(t.intermediate) == ["1", "2"] and t.value == pytest.approx(max(t.intermediate.values()), abs=5e-5)  # printed to 4 places
        folder = layout.trial_dir(layout.study_dir(LINE, name, home), t.number)
        assert layout.training_result_path(folder).exists() and layout.manifest_path(folder).exists()
        assert not layout.run_data_dir(folder).exists() and not layout.checkpoints_dir(folder).exists()
    best = max(record.trials, key=lambda t: t.value)
    assert record.best["trial"] == best.number and record.best["value"] == best.value

    c = tracking.client(home)
    parent = c.get_run(record.mlflow_run_id)
    assert parent.info.status == "FINISHED" and parent.info.run_name == name
    assert parent.data.tags["factory.kind"] == "study" and parent.data.tags["airflow.dag_id"] == f"tune_{LINE}"
    assert parent.data.tags["airflow.run_id"] == run.run_id
    assert parent.data.metrics["best_val_auc"] == pytest.approx(best.value)
    nested = c.search_runs([parent.info.experiment_id],
                           filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(int(r.data.tags["factory.trial"]) for r in nested) == [0, 1, 2]
    for r in nested:
        assert r.info.status == "FINISHED" and r.data.tags["factory.trial_state"] == "COMPLETE"
        assert [m.step for m in c.get_metric_history(r.info.run_id, "val_auc")] == [1, 2]
        assert "final_val_auc" in r.data.metrics
    assert {r.info.run_id for r in nested} == {t.mlflow_run_id for t in record.trials}

    tuned = records.read_tuned_params(LINE, home)
    assert tuned.study == name and tuned.trial == best.number and tuned.value == pytest.approx(best.value)
    assert tuned.params == best.params and tuned.batches == ["tune-e2e"] and tuned.metric == "val_auc"
    assert tuned.mlflow_run_id == best.mlflow_run_id and tuned.space == "default"

    # the next training trains with the best trial's settings and says where they came from
    prepared = training.prepare(LINE, f"after-{name}", {"workers": 1, "epochs": 1, "window_batches": 1}, home)
    manifest = json.loads(Path(prepared["run_dir"], "manifest.json").read_text())
    assert manifest["tuned"]["used"] is True and manifest["tuned"]["study"] == name
    assert manifest["tuned"]["trial"] == best.number and manifest["tuned"]["params"] == best.params
    assert manifest["params"]["batch_size"] == best.params["batch_size"]
    assert manifest["params"]["learning_rate"] == pytest.approx(best.params["learning_rate"])
    assert manifest["model"]["hidden_units"] == best.params["hidden_units"]
    assert manifest["model"]["dropout"] == pytest.approx(best.params["dropout"])


def _small_batch() -> object:
    """330 real loans of the second slice, with all its bad ones: about 215 training rows,
    enough for batches of 128 rows and too few for one of 256."""
    frame = lending_club_frame(2)
    bad = frame[frame["Class"] == "bad"]
    return frame.loc[sorted([*bad.index, *frame[frame["Class"] == "good"].index[: 330 - len(bad)]])]


def test_trials_fail_prune_and_warm_start_through_the_stages(home, monkeypatch, tmp_path):
    import optuna

    from pipelines.tuning import stage
    from pipelines.tuning import study as studies

    make_validated_batch(home, LINE, "big", lending_club_frame(1))
    make_validated_batch(home, LINE, "small", _small_batch())

    # a study on the small batch: a trial that cannot train fails and the study goes on
    info = stage.start_study(LINE, "manual__one", {"trials": 5, "parallel": 1, "epochs": 2, "window_batches": 1},
                             home)
    assert info["batches"] == ["small"] and info["enqueued"] == ["current settings"]
    assert info["indices"] == [0, 1, 2, 3, 4]
    study = studies.load(info["study"], home)
    study.enqueue_trial({"batch_size": 256}, user_attrs={"enqueued": "too large a batch"})
    study.enqueue_trial({"batch_size": 64}, user_attrs={"enqueued": "a batch that fits"})
    study.enqueue_trial({"embedding_dim": 0}, user_attrs={"enqueued": "a setting the line refuses"})
    assert stage.run_trial(LINE, info, 0, home)["state"] == "COMPLETE"
    with pytest.raises(stage.TrialFailed, match="too few for 1 workers with batch size 256"):
        stage.run_trial(LINE, info, 1, home)
    after = stage.run_trial(LINE, info, 2, home)
    assert after["state"] == "COMPLETE" and after["params"]["batch_size"] == 64 and after["value"] > 0
    with pytest.raises(stage.TrialFailed, match=r"TuningError: .*invalid training\.model\.embedding_dim"):
        stage.run_trial(LINE, info, 3, home)
    # a trial whose task died: asked, never told
    left = studies.load(info["study"], home).ask()
    assert left.number == 4
    done = stage.finish_study(LINE, info, home)
    assert done["trials"] == {"COMPLETE": 2, "PRUNED": 0, "FAIL": 3, "RUNNING": 0, "WAITING": 0}
    record = records.read_study_record(LINE, info["study"], home)
    by_number = {t.number: t for t in record.trials}
    assert by_number[1].state == "FAIL" and "too few" in by_number[1].error
    assert by_number[3].state == "FAIL" and "embedding_dim" in by_number[3].error
    assert by_number[4].state == "FAIL" and "task ended before the trial" in by_number[4].error
    c = tracking.client(home)
    failed_run = c.get_run(by_number[1].mlflow_run_id)
    assert failed_run.info.status == "FAILED" and "too few" in failed_run.data.tags["factory.error"]
    assert c.get_run(by_number[3].mlflow_run_id).data.tags["factory.trial_state"] == "FAIL"
    assert records.read_tuned_params(LINE, home).study == info["study"]

    # the next study starts from the first one's results: its best is now the line's tuned
    # settings (today's settings, tried first); its other completed trial is the warm start
    best, other = record.best["trial"], ({0, 2} - {record.best["trial"]}).pop()
    second = stage.start_study(LINE, "manual__two", {"trials": 2, "parallel": 1, "epochs": 3, "window_batches": 0},
                               home)
    assert second["enqueued"] == ["current settings", f"warm start: {info['study']} trial {other}"]
    waiting = studies.load(second["study"], home).get_trials(states=(optuna.trial.TrialState.WAITING,))
    fixed = [{k: studies.decode(v) for k, v in t.system_attrs["fixed_params"].items()} for t in waiting]
    assert fixed == [by_number[best].params, by_number[other].params]

    # pruning: six finished trials that scored 1.0 at every epoch; a real one falls behind at once
    prior = studies.load(second["study"], home)
    for _ in range(6):
        prior.add_trial(optuna.trial.create_trial(
            params={"batch_size": 128}, distributions={"batch_size": optuna.distributions.CategoricalDistribution(
                [64, 128, 256])}, value=1.0, intermediate_values={1: 1.0, 2: 1.0, 3: 1.0}))
    # a copy of the specs whose credit_risk trials may be pruned from their first epoch on
    include = tmp_path / "include"
    shutil.copytree(REPO_ROOT / "include", include)
    path = include / "lines" / f"{LINE}.yaml"
    spec_data = yaml.safe_load(path.read_text())
    spec_data["tuning"]["prune_warmup_epochs"] = 1
    path.write_text(yaml.safe_dump(spec_data, sort_keys=False))
    monkeypatch.setenv("FACTORY_INCLUDE", str(include))
    pruned = stage.run_trial(LINE, second, 0, home)
    assert pruned["state"] == "PRUNED"
    folder = layout.trial_dir(layout.study_dir(LINE, second["study"], home), pruned["number"])
    assert _processes_naming(str(folder)) == []  # horovodrun and its workers are gone
    os.close(storage.hold_lock(layout.run_lock_path(folder), 0))  # nothing holds the run folder
    trial = next(t for t in studies.load(second["study"], home).get_trials() if t.number == pruned["number"])
    assert trial.state == optuna.trial.TrialState.PRUNED and list(trial.intermediate_values) == [1]
    assert "epoch 1 " in layout.training_log_path(folder).read_text()
    assert not layout.training_result_path(folder).exists()  # stopped before it could finish
    assert c.get_run(trial.user_attrs["mlflow_run_id"]).info.status == "KILLED"
