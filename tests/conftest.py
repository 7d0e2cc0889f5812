"""Test set-up: a throw-away factory home and Airflow home for the whole session.

The environment is set before anything imports Airflow, so every test (and
every subprocess it starts) runs against the embedded default in a temp folder.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import pytest

_HOME = Path(tempfile.mkdtemp(prefix="factory-test-"))
os.environ["FACTORY_HOME"] = str(_HOME)
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
# py4j logs "Closing down clientserver connection" from __del__ after pytest has
# closed its capture streams, which prints a logging traceback at exit.
logging.getLogger("py4j").setLevel(logging.WARNING)

from pipelines.config import apply_airflow_environment  # noqa: E402

apply_airflow_environment(_HOME)


@pytest.fixture(scope="session")
def factory_home() -> Path:
    return _HOME


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A fresh factory home for one test."""
    return tmp_path / "factory"


@pytest.fixture(scope="session")
def spark():
    pyspark = pytest.importorskip("pyspark")
    del pyspark
    from pipelines.ingest.cleaning.job import spark_session

    session = spark_session("factory-tests")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def airflow_db(factory_home: Path) -> Path:
    """A migrated Airflow metadata database (SQLite) for dag.test()."""
    import subprocess
    import sys

    airflow = Path(sys.executable).parent / "airflow"
    Path(os.environ["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
    subprocess.run([str(airflow), "db", "migrate"], check=True, capture_output=True, env=os.environ.copy())
    return Path(os.environ["AIRFLOW_HOME"]) / "airflow.db"
