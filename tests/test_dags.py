"""Every DAG file parses cleanly, cheaply and without touching connections or
Variables; policies hold over all DAGs; Params reject bad values."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from pipelines.config import REPO_ROOT

PARSE = textwrap.dedent(
    """
    import json, sys
    def refuse(*a, **k):
        raise RuntimeError("connection or Variable lookup at parse time")
    from airflow.sdk import BaseHook, Variable
    BaseHook.get_connection = classmethod(refuse)
    Variable.get = staticmethod(refuse)
    from airflow.models.variable import Variable as ModelVariable
    ModelVariable.get = staticmethod(refuse)
    from airflow.dag_processing.dagbag import DagBag
    bag = DagBag(dag_folder=sys.argv[1])
    heavy = sorted({m.split(".")[0] for m in sys.modules} & {"pyspark", "tensorflow", "great_expectations", "tfx", "horovod", "mlflow", "pandas"})
    print(json.dumps({"errors": {k: str(v) for k, v in bag.import_errors.items()}, "dags": sorted(bag.dag_ids), "heavy": heavy}))
    """
)


@pytest.fixture(scope="module")
def parsed() -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PARSE, str(REPO_ROOT / "dags")], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_dag_files_parse_without_errors(parsed):
    assert parsed["errors"] == {}
    assert {"ingest_credit_risk", "ingest_employment"} <= set(parsed["dags"])


def test_no_heavy_imports_at_parse_time(parsed):
    assert parsed["heavy"] == []


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO_ROOT / "dags"))


# Tasks whose failure is a verdict on the data or the params: a retry cannot change it.
# A tuning trial is not retried either: a retry would ask Optuna for a new trial.
VERDICT_TASKS = {"batch.validate", "prepare", "verdict", "start", "trial"}


def test_policies(dagbag):
    from pipelines.specs import load_specs

    owners = {s.name: s.owner for s in load_specs()}
    for dag_id, dag in dagbag.dags.items():
        assert "factory" in dag.tags, dag_id
        assert dag.doc_md and len(dag.doc_md) > 100, dag_id
        assert dag.catchup is False, dag_id
        assert dag.max_active_runs == 1, dag_id
        line = dag_id.split("_", 1)[1]
        assert line in dag.tags
        for t in dag.tasks:
            assert t.owner == owners[line], (dag_id, t.task_id)
            if t.task_id in VERDICT_TASKS:
                assert t.retries == 0, (dag_id, t.task_id)
            else:
                assert t.retries >= 1, (dag_id, t.task_id)


def test_ingest_wiring(dagbag):
    dag = dagbag.dags["ingest_employment"]
    assert {t.task_id for t in dag.tasks} == {"plan", "batch.spark_args", "batch.clean", "batch.validate", "announce", "verdict"}
    clean = dag.get_task("batch.clean")
    from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

    # spark-submit to a master, or the job through Spark Connect: chosen by spark_default
    assert type(clean).__name__ == "CleanOperator" and isinstance(clean, SparkSubmitOperator)
    assert clean._conn_id == "spark_default"
    validate = dag.get_task("batch.validate")
    assert validate.retries == 0  # a data verdict is not retried
    announce = dag.get_task("announce")
    assert [o.name for o in announce.outlets] == ["employment.validated_data"]
    assert announce.trigger_rule == "all_done_min_one_success" and "batch.validate" in announce.upstream_task_ids


def test_ingest_runs_when_a_batch_lands_and_on_its_schedule(dagbag):
    from pipelines.specs import load_spec

    for line in ("credit_risk", "employment"):
        dag = dagbag.dags[f"ingest_{line}"]
        assert type(dag.timetable).__name__ == "AssetOrTimeSchedule"
        from airflow.sdk import CronTriggerTimetable

        cron = CronTriggerTimetable(load_spec(line).ingest.schedule, timezone="UTC").expression
        assert dag.timetable.timetable.expression == cron
        asset = dag.timetable.asset_condition
        assert asset.name == f"{line}.landed_data"
        (watcher,) = asset.watchers
        assert type(watcher.trigger).__name__ == "LandedBatchesTrigger" and watcher.trigger.line == line


@pytest.mark.parametrize("bad", ["../etc", "a b", 5, ["x"], "2016\n", "slice-1\n"])
def test_batch_id_param_rejects_bad_values(dagbag, bad):
    from airflow.exceptions import ParamValidationError

    param = dagbag.dags["ingest_credit_risk"].params.get_param("batch_id")
    with pytest.raises(ParamValidationError):
        param.resolve(bad)
    assert param.resolve("slice-1") == "slice-1"
    assert param.resolve(None) is None


def test_train_wiring(dagbag):
    from pipelines.specs import load_spec

    for line in ("credit_risk", "employment"):
        dag = dagbag.dags[f"train_{line}"]
        assert {t.task_id for t in dag.tasks} == {"prepare", "train", "evaluate", "finish"}
        assert dag.get_task("train").upstream_task_ids == {"prepare"}
        assert dag.get_task("evaluate").upstream_task_ids == {"prepare", "train"}
        # finish records how the run ended, whatever happened; the run's state is the work's
        finish = dag.get_task("finish")
        assert finish.is_teardown and finish.upstream_task_ids == {"evaluate"}
        # retrain_on: new_data: scheduled on the line's validated data (not on drift: a
        # drifted batch trains once) and on the spec's cron retrain
        assert load_spec(line).training.retrain_on == "new_data"
        timetable = dag.timetable
        assert type(timetable).__name__ == "AssetOrTimeSchedule", line
        assert f"{line}.validated_data" in str(dag.timetable.asset_condition)
        assert f"{line}.drift" not in str(dag.timetable.asset_condition)
        assert timetable.timetable.expression == load_spec(line).training.schedule
        assert dag.get_task("train").execution_timeout is not None


def test_train_on_drift_only_is_scheduled_on_the_drift_asset():
    import importlib.util

    from pipelines.config import REPO_ROOT
    from pipelines.specs import load_spec

    spec = load_spec("credit_risk")
    spec = spec.model_copy(update={"training": spec.training.model_copy(update={"retrain_on": "drift"})})
    loader = importlib.util.spec_from_file_location("factory_train_dags", REPO_ROOT / "dags" / "train.py")
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    condition = str(module.build(spec).timetable.asset_condition)
    assert "credit_risk.drift" in condition and "validated_data" not in condition


@pytest.mark.parametrize(
    "name,bad",
    [("workers", 0), ("workers", "2"), ("epochs", 0), ("batch_size", -1), ("learning_rate", -0.1),
     ("learning_rate", 0), ("window_batches", -1), ("batches", "2016"), ("batches", [1])],
)
def test_train_params_reject_bad_values(dagbag, name, bad):
    from airflow.exceptions import ParamValidationError

    param = dagbag.dags["train_employment"].params.get_param(name)
    with pytest.raises(ParamValidationError):
        param.resolve(bad)


def test_train_params_accept_good_values(dagbag):
    params = dagbag.dags["train_employment"].params
    assert params.get_param("workers").resolve(4) == 4
    assert params.get_param("learning_rate").resolve(0.01) == 0.01
    assert params.get_param("batches").resolve(["2015", "2016"]) == ["2015", "2016"]


def test_tune_wiring(dagbag):
    from pipelines.specs import load_specs

    tuned = [s for s in load_specs() if s.tuning is not None]
    assert {s.name for s in tuned} == {"credit_risk", "employment", "fashion"}
    for spec in tuned:
        dag = dagbag.dags[f"tune_{spec.name}"]
        assert {t.task_id for t in dag.tasks} == {"start", "trial", "finish"}
        assert {"tune", spec.name} <= set(dag.tags)
        trial = dag.get_task("trial")
        assert type(trial).__name__.endswith("MappedOperator") and trial.upstream_task_ids == {"start"}
        assert trial.max_active_tis_per_dagrun == spec.tuning.parallel and trial.retries == 0
        finish = dag.get_task("finish")
        assert finish.trigger_rule == "all_done" and finish.upstream_task_ids == {"trial"}
        assert [o.name for o in finish.outlets] == [f"{spec.name}.tuned_params"]
        assert type(dag.timetable).__name__ == ("NullTimetable" if spec.tuning.schedule is None
                                               else "CronTriggerTimetable")
        assert dag.params.get_param("space").resolve("default") == "default"
        assert dag.params.get_param("parallel").resolve(spec.tuning.parallel) == spec.tuning.parallel


@pytest.mark.parametrize(
    "name,bad",
    [("trials", 0), ("trials", 1001), ("trials", "3"), ("parallel", 0), ("parallel", 3), ("space", "nope"),
     ("epochs", 0), ("epochs", 1001), ("warm_start", "yes"), ("window_batches", -1), ("timeout_minutes", 0)],
)
def test_tune_params_reject_bad_values(dagbag, name, bad):
    from airflow.exceptions import ParamValidationError

    param = dagbag.dags["tune_credit_risk"].params.get_param(name)  # parallel: at most the spec's 2
    with pytest.raises(ParamValidationError):
        param.resolve(bad)


def test_tune_params_accept_good_values(dagbag):
    params = dagbag.dags["tune_credit_risk"].params
    assert params.get_param("space").resolve("optimizer") == "optimizer"
    assert params.get_param("epochs").resolve(None) is None and params.get_param("epochs").resolve(3) == 3
    assert params.get_param("window_batches").resolve(0) == 0
    assert params.get_param("warm_start").resolve(False) is False


def test_monitor_wiring(dagbag):
    for line in ("credit_risk", "employment"):
        dag = dagbag.dags[f"monitor_{line}"]
        assert {t.task_id for t in dag.tasks} == {"wait", "score", "live", "retrain"}
        wait = dag.get_task("wait")
        assert type(wait).__name__ == "NewBatchesSensor" and wait.soft_fail
        assert [o.name for o in dag.get_task("retrain").outlets] == [f"{line}.drift"]
        assert f"{line}.validated_data" in str(dag.timetable.asset_condition)
        assert f"{line}.live_labels" in str(dag.timetable.asset_condition)
        assert {t.task_id for t in dag.get_task("live").upstream_list} == {"wait"}


def test_labels_dags_take_a_label_file_and_announce_live_labels(dagbag):
    from airflow.exceptions import ParamValidationError

    for line in ("credit_risk", "employment", "fashion"):
        dag = dagbag.dags[f"labels_{line}"]
        assert type(dag.timetable).__name__ == "NullTimetable"  # triggered, never scheduled
        assert [o.name for o in dag.get_task("attach").outlets] == [f"{line}.live_labels"]
        param = dag.params.get_param("file")
        assert param.resolve("/data/labels.csv") == "/data/labels.csv"
        assert param.resolve("/data/day 2/labels.parquet") == "/data/day 2/labels.parquet"
        for bad in ("labels.csv", "/data/labels.txt", "/data/labels.csv\n", 3, ["/a.csv"]):
            with pytest.raises(ParamValidationError):
                param.resolve(bad)


def test_every_dag_refuses_unknown_conf_keys_in_its_first_task(dagbag, tmp_path, monkeypatch):
    """Airflow takes a conf key a DAG does not declare; each DAG's first task refuses it
    before doing anything (an empty factory home: any work would show or fail otherwise)."""
    from types import SimpleNamespace

    from airflow.sdk.exceptions import AirflowFailException

    monkeypatch.setenv("FACTORY_HOME", str(tmp_path / "factory"))
    for dag_id, dag in dagbag.dags.items():
        allowed = sorted(dag.params.keys())
        conf = {"wrokers": 3, **{k: dag.params[k] for k in allowed}}
        for task in dag.roots:
            context = {"dag_run": SimpleNamespace(conf=conf), "dag": dag}
            with pytest.raises(AirflowFailException) as err:
                if hasattr(task, "python_callable"):
                    task.python_callable(**context)
                else:
                    task.execute(context)
            assert str(err.value) == (f"{dag_id}: unknown conf key(s) ['wrokers'] in the run's conf; "
                                      + (f"the keys it takes: {allowed}" if allowed else "it takes none")), task.task_id
    assert not (tmp_path / "factory").exists()  # nothing was started


def test_unknown_conf_keys_helper():
    from pipelines.runtime.params import UnknownConfKeys, refuse_unknown_conf, unknown_conf_keys

    assert unknown_conf_keys({"wrokers": 3, "workers": 2, "a": None}, ["workers", "epochs"]) == ["a", "wrokers"]
    assert unknown_conf_keys(None, ["workers"]) == [] and unknown_conf_keys({}, []) == []
    refuse_unknown_conf("train_x", {"workers": 2}, ["workers", "epochs"])
    refuse_unknown_conf("monitor_x", {}, [])
    with pytest.raises(UnknownConfKeys, match=r"^train_x: unknown conf key\(s\) \['wrokers'\] in the run's conf; "
                                              r"the keys it takes: \['epochs', 'workers'\]$"):
        refuse_unknown_conf("train_x", {"wrokers": 3}, ["workers", "epochs"])
    with pytest.raises(UnknownConfKeys, match=r"monitor_x: unknown conf key\(s\) \['x'\] .*; it takes none"):
        refuse_unknown_conf("monitor_x", {"x": 1}, [])
    with pytest.raises(UnknownConfKeys, match="must be a JSON object"):
        refuse_unknown_conf("train_x", ["workers"], ["workers"])


def test_label_dags_run_on_validated_data_and_take_typed_params(dagbag):
    from airflow.exceptions import ParamValidationError

    from pipelines.specs import load_specs

    labelling = {s.name for s in load_specs() if s.labelling is not None}
    assert labelling == {"credit_risk", "employment"}
    assert {d for d in dagbag.dag_ids if d.startswith("label_")} == {f"label_{n}" for n in labelling}
    for line in labelling:
        dag = dagbag.dags[f"label_{line}"]
        assert {t.task_id for t in dag.tasks} == {"plan", "prelabel", "import_reviews", "done", "landed",
                                                  "ingest_labels"}
        # label batches it lands are ingested at once, not on the ingest DAG's schedule
        assert dag.get_task("ingest_labels").trigger_dag_id == f"ingest_{line}"
        assert [t.task_id for t in dag.get_task("ingest_labels").upstream_list] == ["landed"]
        assert f"{line}.validated_data" in str(dag.timetable.asset_condition)
        assert {t.task_id for t in dag.get_task("done").upstream_list} == {"prelabel", "import_reviews"}
        params = dag.params
        assert params.get_param("review_file").resolve("/data/export 1.json") == "/data/export 1.json"
        assert params.get_param("target_precision").resolve(0.9) == 0.9
        for name, bad in (("review_file", "export.json"), ("review_file", "/a/export.csv"), ("target_precision", 1),
                          ("target_precision", 0.5), ("batch_id", "../x"), ("batch_id", "2016\n")):
            with pytest.raises(ParamValidationError):
                params.get_param(name).resolve(bad)
