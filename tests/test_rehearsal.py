"""The scale-out rehearsal (scripts/rehearse-scale-out.sh) on one real batch of
credit_risk: every engine of docker-compose.yaml as a local process, a Spark worker
killed while the cleaning job runs on it and the GPU-queue Celery worker killed while it
trains, and the line still finishes with its counts whole.

The rehearsal's configuration is the shipped one (deploy/rehearsal/rehearsal.env) except
its folder; the engines' settings come from docker-compose.yaml."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from deploy.rehearsal.compose import read_env_file
from deploy.rehearsal.rehearse import CONFIG
from pipelines.catalog import ledger
from pipelines.catalog.layout import line_paths
from pipelines.config import REPO_ROOT

LINE, BATCH = "credit_risk", "slice-1"


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("rehearsal")
    report = root / "report.json"
    # the rehearsal's own settings, not the test session's embedded default
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AIRFLOW", "FACTORY_", "PYSPARK", "SPARK", "MLFLOW"))}
    env["REHEARSAL_DIR"] = str(root / "state")
    done = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "rehearse-scale-out.sh"), LINE, "--batch", BATCH,
         "--fault", "spark-worker", "--fault", "celery-worker", "--report", str(report)],
        env=env, capture_output=True, text=True, timeout=1800, cwd=REPO_ROOT)
    (root / "output.log").write_text(done.stdout + done.stderr)
    assert report.exists(), done.stdout[-6000:] + done.stderr[-3000:]
    return {"rc": done.returncode, "out": done.stdout, "err": done.stderr,
            "report": json.loads(report.read_text()), "home": root / "state" / "home"}


def _tail(r: dict) -> str:
    return r["out"][-6000:] + r["err"][-2000:]


@pytest.mark.integration
def test_the_line_finishes_on_the_deployments_engines_and_leaves_nothing_running(rehearsal):
    assert rehearsal["rc"] == 0, _tail(rehearsal)
    assert "rehearsal passed" in rehearsal["out"]
    assert rehearsal["report"]["left_running"] == []
    assert "nothing left running" in rehearsal["out"]


@pytest.mark.integration
def test_tasks_ran_on_the_celery_workers_of_their_queues(rehearsal):
    tasks = rehearsal["report"]["tasks"]
    train = [t for t in tasks if t["dag_id"] == f"train_{LINE}" and t["task_id"] == "train"]
    assert train and all(t["queue"] == "gpu" and t["hostname"] == "airflow-worker-gpu" for t in train), train
    assert any(t["state"] == "success" for t in train), train
    others = [t for t in tasks if t["task_id"] != "train" and t["state"] == "success"]
    assert others and all(t["queue"] == "default" for t in others), others
    assert {t["hostname"] for t in others} == {"airflow-worker"}, others


@pytest.mark.integration
def test_the_cleaning_ran_on_the_spark_cluster_and_survived_a_dead_worker(rehearsal):
    report = rehearsal["report"]
    apps = [a for a in report["spark"]["applications"] if a["name"] == f"factory-clean-{LINE}"]
    assert apps and all(a["state"] == "FINISHED" for a in apps), report["spark"]
    killed = [f for f in report["faults"] if f["fault"] == "spark-worker"]
    assert len(killed) == 1 and killed[0]["app"] in {a["id"] for a in apps}, report["faults"]
    # the killed worker's executor was lost (its worker process is gone, so it reports
    # nothing); executors on the live workers (the other one, the restarted one) finished it
    finished_on = {a["id"]: a["workers"] for a in apps}[killed[0]["app"]]
    assert finished_on and not any(killed[0]["worker_id"] in w for w in finished_on), (finished_on, killed)


@pytest.mark.integration
def test_counts_reconcile_after_the_faults(rehearsal):
    records = [r for r in ledger.all_records(line_paths(LINE, rehearsal["home"])) if r.batch_id == BATCH]
    assert len(records) == 1 and records[0].status == ledger.VALIDATED, records
    c = records[0].cleaning
    from pipelines.ingest.landing import source_batches
    from pipelines.ingest.sources import load_source
    from pipelines.specs import load_spec

    spec = load_spec(LINE)
    assert c.rows_in == len(source_batches(spec, load_source(spec))[BATCH])
    assert c.rows_in == c.rows_clean + c.rows_quarantined + (c.duplicates_removed or 0), c


@pytest.mark.integration
def test_training_ran_on_both_horovod_hosts_after_its_worker_was_killed(rehearsal):
    report = rehearsal["report"]
    killed = [f for f in report["faults"] if f["fault"] == "celery-worker"]
    assert len(killed) == 1 and killed[0]["worker"] == "airflow-worker-gpu", report["faults"]
    train = [t for t in report["tasks"] if t["dag_id"] == f"train_{LINE}" and t["task_id"] == "train"]
    assert max(t["try_number"] for t in train) >= 2, train  # Airflow retried it
    hosts = read_env_file(CONFIG)["HOROVOD_HOST_ADDRESSES"].split(",")
    finished = [r for r in report["mlflow"] if r["status"] == "FINISHED" and r["horovod_hosts"]]
    assert finished, report["mlflow"]
    for run in finished:  # the tag is "0=<host>,1=<host>"
        ranks = dict(part.split("=", 1) for part in run["horovod_hosts"].split(","))
        assert sorted(ranks.values()) == sorted(hosts) and sorted(ranks) == ["0", "1"], run
    assert set(report["ssh_logins"]) >= set(hosts), report["ssh_logins"]


@pytest.mark.integration
def test_the_runs_are_in_the_mlflow_server_and_prometheus_scraped_the_factory(rehearsal):
    report = rehearsal["report"]
    assert any(r["experiment"] == LINE for r in report["mlflow"]), report["mlflow"]
    health = report["prometheus"]
    assert health.get("factory") == "up", health


def test_the_rehearsal_configuration_names_only_loopback_and_relative_folders():
    cfg = read_env_file(CONFIG)
    assert not Path(cfg["REHEARSAL_DIR"]).is_absolute()
    assert all(a.startswith("127.") for a in cfg["HOROVOD_HOST_ADDRESSES"].split(","))
    assert cfg["FACTORY_TRAIN_QUEUE"] == "gpu"
    assert len(cfg["WORKER_NAMES"].split(",")) == len(cfg["WORKER_LOG_PORTS"].split(",")) == 2


def test_the_airflow_settings_are_the_compose_files_with_this_machines_hosts(tmp_path):
    """Every Airflow setting of docker-compose.yaml's services, with only the compose
    network's hosts and the containers' folders replaced."""
    from deploy.rehearsal.compose import load_compose
    from deploy.rehearsal.rehearse import airflow_env, compose_env, settings

    cfg = settings()
    compose = load_compose(compose_env(cfg, tmp_path))
    env = airflow_env(compose, cfg, tmp_path)
    shipped = compose["services"]["airflow-worker"]["environment"]
    assert set(shipped) <= set(env)
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://airflow:")
    assert f"@127.0.0.1:{cfg['POSTGRES_PORT']}/airflow" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    assert env["AIRFLOW__CELERY__BROKER_URL"].endswith(f"@127.0.0.1:{cfg['REDIS_PORT']}/0")
    assert env["MLFLOW_TRACKING_URI"] == f"http://127.0.0.1:{cfg['MLFLOW_PORT']}"
    assert env["AIRFLOW_CONN_SPARK_DEFAULT"] == (
        f'{{"conn_type": "spark", "host": "spark://127.0.0.1:{cfg["SPARK_MASTER_PORT"]}"}}')
    assert env["FACTORY_HOME"] == str(tmp_path / "home")
    assert env["FACTORY_TRAIN_QUEUE"] == "gpu"
    assert env["FACTORY_HOROVOD_HOSTS"] == "127.0.0.2:1,127.0.0.3:1"
    assert env["FACTORY_HOROVOD_SSH_PORT"] == cfg["SSH_PORT"]
    # the secrets are make_env.py's, the same in every service
    assert env["AIRFLOW__CORE__FERNET_KEY"] == shipped["AIRFLOW__CORE__FERNET_KEY"] != ""


def test_a_setting_left_naming_a_container_is_refused(tmp_path):
    from deploy.rehearsal.compose import load_compose
    from deploy.rehearsal.process import EngineFailed
    from deploy.rehearsal.rehearse import airflow_env, compose_env, settings

    cfg = settings()
    compose = load_compose(compose_env(cfg, tmp_path))
    compose["services"]["airflow-worker"]["environment"]["FACTORY_EXTRA"] = "http://statsd:1/x"
    airflow_env(compose, cfg, tmp_path)  # a host the rehearsal does not know is not a container's service
    compose["services"]["airflow-worker"]["environment"]["FACTORY_EXTRA"] = "/opt/factory/other"
    compose["services"]["airflow-worker"]["environment"]["FACTORY_HOME"] = "/opt/elsewhere"
    with pytest.raises(EngineFailed, match="FACTORY_HOME"):
        airflow_env(compose, cfg, tmp_path)
