"""Where things live, resolved from the environment.

Everything is configuration, not code: the embedded default keeps all state
under ``FACTORY_HOME`` (``<repo>/.factory``) on this machine; a cluster points
the same variables at shared storage and real engines.

| variable              | embedded default                 |
|-----------------------|----------------------------------|
| ``FACTORY_HOME``      | ``<repo>/.factory``              |
| ``FACTORY_INCLUDE``   | ``<repo>/include``               |
| ``FACTORY_ML_PYTHON`` | ``<repo>/.venv/ml/bin/python``   |
| ``FACTORY_SPARK_MASTER`` | ``local[*]`` (written into the ``spark_default`` connection) |
| ``FACTORY_SPARK_CONNECT_PORT`` | ``15002``: the runtime's Spark Connect server on loopback (``spark_default`` = ``sc://127.0.0.1:15002`` under the runtime while the master is local) |
| ``FACTORY_SPARK_CONNECT_MEMORY`` | ``4g``: that server's driver memory (a 5M-row batch fits) |
| ``MLFLOW_TRACKING_URI`` | ``sqlite:///<home>/mlflow/mlflow.db`` |
| ``FACTORY_MLFLOW_ARTIFACTS`` | ``<home>/mlflow/artifacts``   |
| ``FACTORY_HOROVOD_HOSTS`` | ``localhost:<workers>`` (e.g. ``gpu1:4,gpu2:4``) |
| ``FACTORY_HOROVOD_CONTROLLER`` | ``gloo`` (or ``mpi``)      |
| ``FACTORY_HOROVOD_SSH_PORT`` | none: ssh's own (``horovodrun --ssh-port``, the hosts' sshd port) |
| ``FACTORY_HOROVOD_SSH_IDENTITY`` | none: ssh's own (``horovodrun --ssh-identity-file``, a private key) |
| ``FACTORY_HOROVOD_NETWORK_INTERFACE`` | none: Horovod finds the hosts' common interfaces (``horovodrun --network-interface``, e.g. ``eth0``) |
| ``FACTORY_TRAIN_THREADS`` | none: each training worker takes its share of the cores (``cores // workers`` intra-op threads); ``N``: N intra-op and N inter-op threads per worker |
| ``FACTORY_MAX_EPOCHS`` | none (e.g. ``fashion=3``: at most 3 epochs for that line's trainings; ``3``: for every line) |
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def include_dir() -> Path:
    return Path(os.environ.get("FACTORY_INCLUDE", REPO_ROOT / "include"))


def factory_home() -> Path:
    return Path(os.environ.get("FACTORY_HOME", REPO_ROOT / ".factory")).resolve()


def airflow_home(home: Path | None = None) -> Path:
    return (home or factory_home()) / "airflow"


def ml_python() -> Path:
    return Path(os.environ.get("FACTORY_ML_PYTHON", REPO_ROOT / ".venv" / "ml" / "bin" / "python"))


def mlflow_tracking_uri(home: Path | None = None) -> str:
    """MLflow tracking: a server URI from ``MLFLOW_TRACKING_URI`` at scale, else a local
    SQLite store under the factory home."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{(home or factory_home()) / 'mlflow' / 'mlflow.db'}"


def mlflow_artifact_root(home: Path | None = None) -> str:
    """Artifact location for new experiments (``FACTORY_MLFLOW_ARTIFACTS``: an s3:// or
    other store at scale); a server that proxies artifacts ignores it."""
    root = os.environ.get("FACTORY_MLFLOW_ARTIFACTS")
    return root or ((home or factory_home()) / "mlflow" / "artifacts").as_uri()


def optuna_storage(home: Path | None = None) -> str:
    """Where Optuna keeps the studies that every trial task shares: the deployment's
    database from ``FACTORY_OPTUNA_STORAGE`` (``postgresql+psycopg2://...``) at scale,
    else a SQLite file under the factory home."""
    uri = os.environ.get("FACTORY_OPTUNA_STORAGE")
    if uri:
        return uri
    return f"sqlite:///{(home or factory_home()) / 'tuning' / 'optuna.db'}"


def horovod_hosts(workers: int) -> str:
    """``horovodrun -H``: ``FACTORY_HOROVOD_HOSTS`` (e.g. ``gpu1:4,gpu2:4``) at scale,
    else ``workers`` processes on this machine."""
    return os.environ.get("FACTORY_HOROVOD_HOSTS") or f"localhost:{workers}"


def horovod_controller() -> str:
    """``gloo`` (default; no MPI needed) or ``mpi`` (``FACTORY_HOROVOD_CONTROLLER``)."""
    value = os.environ.get("FACTORY_HOROVOD_CONTROLLER", "gloo")
    if value not in ("gloo", "mpi"):
        raise ValueError(f"FACTORY_HOROVOD_CONTROLLER must be gloo or mpi, got {value!r}")
    return value


def horovod_ssh_options() -> list[str]:
    """The ``horovodrun`` options that reach hosts over SSH and pick the network, each
    only when its variable is set: ``--ssh-port`` (``FACTORY_HOROVOD_SSH_PORT``),
    ``--ssh-identity-file`` (``FACTORY_HOROVOD_SSH_IDENTITY``) and ``--network-interface``
    (``FACTORY_HOROVOD_NETWORK_INTERFACE``). With an interface named, horovodrun uses it
    for the rendezvous and Gloo and skips its interface discovery (a service started on
    every remote host over SSH)."""
    options: list[str] = []
    port = os.environ.get("FACTORY_HOROVOD_SSH_PORT", "").strip()
    if port:
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"FACTORY_HOROVOD_SSH_PORT must be a port number, got {port!r}")
        options += ["--ssh-port", port]
    identity = os.environ.get("FACTORY_HOROVOD_SSH_IDENTITY", "").strip()
    if identity:
        options += ["--ssh-identity-file", identity]
    interface = os.environ.get("FACTORY_HOROVOD_NETWORK_INTERFACE", "").strip()
    if interface:
        options += ["--network-interface", interface]
    return options


def ml_subprocess_environment() -> dict[str, str]:
    """The environment of a subprocess in the ML environment (workers, the evaluation
    gate, scoring): no Airflow or Spark settings, the ML venv first on PATH, this
    clone's code importable, quiet TF logs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PYSPARK", "SPARK"))}
    env["PATH"] = f"{ml_python().parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(REPO_ROOT)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def spark_master() -> str:
    return os.environ.get("FACTORY_SPARK_MASTER", "local[*]")


def spark_master_is_local(master: str | None = None) -> bool:
    """``local``/``local[N]``/``local[*]``: Spark on this machine. A ``spark://``, ``yarn`` or
    ``k8s://`` master is a cluster, reached through ``spark-submit``."""
    master = spark_master() if master is None else master
    return master == "local" or master.startswith("local[")


def spark_connect_port() -> int:
    """The loopback port of the runtime's Spark Connect server (``FACTORY_SPARK_CONNECT_PORT``)."""
    raw = os.environ.get("FACTORY_SPARK_CONNECT_PORT", "15002").strip()
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise ValueError(f"FACTORY_SPARK_CONNECT_PORT must be a port number, got {raw!r}")
    return int(raw)


def spark_connect_address() -> str:
    """``sc://127.0.0.1:<port>``: where the runtime's Spark Connect server answers."""
    return f"sc://127.0.0.1:{spark_connect_port()}"


def spark_connect_memory() -> str:
    return os.environ.get("FACTORY_SPARK_CONNECT_MEMORY", "4g")


def spark_connection(host: str) -> str:
    """The ``spark_default`` connection (``AIRFLOW_CONN_SPARK_DEFAULT``) for a master or an
    ``sc://`` Connect address."""
    return json.dumps({"conn_type": "spark", "host": host})


def max_epochs(line: str) -> int | None:
    """The cap ``FACTORY_MAX_EPOCHS`` puts on a line's training epochs, or None.

    ``N`` caps every line, ``line=N,other=M`` the lines named; a quick demonstration run
    (the main job) uses it to shorten the long trainings without editing the specs."""
    raw = os.environ.get("FACTORY_MAX_EPOCHS", "").strip()
    if not raw:
        return None
    caps: dict[str | None, int] = {}
    for part in raw.split(","):
        name, _, value = part.strip().rpartition("=")
        if not value.strip().isdigit() or int(value) < 1:
            raise ValueError(f"FACTORY_MAX_EPOCHS: {part.strip()!r} is not N or line=N with N >= 1")
        caps[name.strip() or None] = int(value)
    return caps.get(line, caps.get(None))


def train_threads() -> int | None:
    """The TensorFlow threads ``FACTORY_TRAIN_THREADS`` gives each training worker, or None.

    Unset, a worker sizes its pools from its share of the cores; ``N`` fixes both its
    intra-op and inter-op pools at N, so that, say, each of two workers on two cores is
    held to one core's worth of threads (how ``bench/training_bench.py`` compares launchers)."""
    raw = os.environ.get("FACTORY_TRAIN_THREADS", "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"FACTORY_TRAIN_THREADS must be a whole number of threads >= 1, got {raw!r}")
    return int(raw)


def airflow_environment(home: Path | None = None) -> dict[str, str]:
    """Environment for Airflow on the embedded default (SQLite, LocalExecutor).

    Values already set in the process environment win, so a deployment overrides
    any of them (a PostgreSQL ``SQL_ALCHEMY_CONN``, a ``spark://`` master).
    """
    home = home or factory_home()
    ahome = airflow_home(home)
    bin_dir = str(Path(sys.executable).parent)
    defaults = {
        "FACTORY_HOME": str(home),
        "AIRFLOW_HOME": str(ahome),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        # 2 cores here: the default of 32 forks 32 idle workers.
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{ahome}/airflow.db",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW_CONN_SPARK_DEFAULT": spark_connection(spark_master()),
        "SPARK_LOCAL_IP": "127.0.0.1",
        # spark-submit runs the job with the interpreter of this environment
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
    }
    env = {k: os.environ.get(k, v) for k, v in defaults.items()}
    path = os.environ.get("PATH", "")
    if bin_dir not in path.split(os.pathsep):
        path = bin_dir + os.pathsep + path
    env["PATH"] = path
    # The environments are shared by every clone on a machine and the editable install
    # points at the clone set up last: this clone's code comes first for its own tasks.
    pythonpath = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(REPO_ROOT)]
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *pythonpath])
    return env


def apply_airflow_environment(home: Path | None = None) -> dict[str, str]:
    """Set :func:`airflow_environment` in this process (before Airflow is imported)."""
    env = airflow_environment(home)
    os.environ.update(env)
    return env
