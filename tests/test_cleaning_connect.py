"""The cleaning job through a real Spark Connect server (started as the runtime starts it):
the same counts, quarantine and Parquet rows as the classic session on the same real
batch; a session per batch, two batches at once apart; a server that does not answer is
a clear error naming its address, and the batch loses nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from pgserver import free_port

from bench.cleaning_bench import dirty_batch, write_csv
from pipelines.catalog import ledger
from pipelines.catalog.layout import line_paths
from pipelines.config import REPO_ROOT, airflow_environment
from pipelines.ingest import landing
from pipelines.ingest.cleaning import job
from pipelines.runtime import supervisor
from pipelines.specs import load_spec

pytestmark = pytest.mark.integration

COUNTS = ("rows_in", "rows_clean", "rows_quarantined", "duplicates_removed", "duplicates",
          "quarantine_reasons", "repairs", "rows_labelled", "rows_unlabelled", "labels_by_source")


@pytest.fixture(scope="module")
def connect(tmp_path_factory):
    """A Spark Connect server on a free loopback port, the runtime's command line and
    environment (2 GiB is plenty for these batches)."""
    port = free_port()
    log = tmp_path_factory.mktemp("connect") / "spark-connect.log"
    env = supervisor.spark_connect_environment({**os.environ, **airflow_environment()})
    with open(log, "wb") as out:
        proc = subprocess.Popen(supervisor.spark_connect_argv(port, "local[2]", "2g"), env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    address = f"sc://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                with job.connect_mode():
                    job.connect_session(address).stop()
                break
            except job.ConnectUnreachable:
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(1)
        yield address
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def credit():
    return load_spec("credit_risk")


def _land(spec, home, batch_id: str, rows: int, seed: int, tmp_path) -> None:
    """Real credit_risk rows resampled with fresh keys and dirtied (the cleaning
    benchmark's generator), written as a landing CSV and landed."""
    table, malformed = dirty_batch(spec, rows, seed)
    path = tmp_path / f"{batch_id}.csv"
    write_csv(table, malformed, path)
    landing.land_file(spec, path, batch_id, home)


def _rows(report: dict, which: str, key: str) -> pd.DataFrame:
    return pd.read_parquet(report[which]).sort_values(key).reset_index(drop=True)


def test_connect_cleans_like_the_classic_session(connect, credit, tmp_path):
    classic_home, connect_home = tmp_path / "classic", tmp_path / "connect"
    for home in (classic_home, connect_home):
        _land(credit, home, "connect-1", 3000, 11, tmp_path)
    classic = job.run("credit_risk", ["connect-1"], classic_home)["connect-1"]
    remote = job.run("credit_risk", ["connect-1"], connect_home, remote=connect)["connect-1"]
    assert {k: remote[k] for k in COUNTS} == {k: classic[k] for k in COUNTS}
    assert remote["rows_quarantined"] > 0 and remote["duplicates_removed"] > 0 and remote["repairs"]
    key = credit.schema.key[0]
    pd.testing.assert_frame_equal(_rows(remote, "clean_path", key), _rows(classic, "clean_path", key))
    # the quarantine as written: the reasons of every row (the row number is the file's)
    q_remote, q_classic = (pd.read_parquet(r["quarantine_path"]) for r in (remote, classic))
    assert sorted(map(str, q_remote.to_dict("records"))) == sorted(map(str, q_classic.to_dict("records")))
    record = ledger.read(line_paths("credit_risk", connect_home), "connect-1")
    assert record["status"] == ledger.CLEANED and record["cleaning"]["rows_clean"] == remote["rows_clean"]


def test_two_batches_at_once_through_connect_stay_apart(connect, credit, tmp_path):
    """Two task processes clean different batches at the same time, each in sessions of its
    own; the one with two batches gets a fresh session for each."""
    home = tmp_path / "factory"
    _land(credit, home, "connect-a", 1500, 21, tmp_path)
    _land(credit, home, "connect-b", 2500, 22, tmp_path)
    _land(credit, home, "connect-c", 1000, 23, tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    tasks = [
        subprocess.Popen([sys.executable, "-m", "pipelines.ingest.cleaning.job", "--line", "credit_risk",
                          *[a for b in batches for a in ("--batch", b)], "--home", str(home), "--remote", connect],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for batches in (["connect-a", "connect-c"], ["connect-b"])
    ]
    reports: dict[str, dict] = {}
    for task in tasks:
        out, err = task.communicate(timeout=300)
        assert task.returncode == 0, err[-3000:]
        reports.update(json.loads(out[out.index("{"):]))
    paths = line_paths("credit_risk", home)
    for batch, rows in (("connect-a", 1500), ("connect-b", 2500), ("connect-c", 1000)):
        r = reports[batch]
        assert r["rows_in"] == rows == r["rows_clean"] + r["rows_quarantined"] + r["duplicates_removed"], batch
        assert len(pd.read_parquet(r["clean_path"])) == r["rows_clean"], batch
        assert ledger.read(paths, batch)["status"] == ledger.CLEANED
    # each batch's key range is its own: nothing of one batch in another's output
    keys = {b: set(pd.read_parquet(reports[b]["clean_path"])[credit.schema.key[0]]) for b in reports}
    assert max(keys["connect-c"]) <= 1000 < max(keys["connect-a"]) <= 1500 < max(keys["connect-b"])


def test_unreachable_server_is_a_clear_error_and_loses_nothing(credit, tmp_path):
    home = tmp_path / "factory"
    _land(credit, home, "connect-x", 200, 31, tmp_path)
    address = f"sc://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(job.ConnectUnreachable, match=address.replace(".", r"\.")):
        job.run("credit_risk", ["connect-x"], home, remote=address)
    assert time.monotonic() - started < 30
    record = ledger.read(line_paths("credit_risk", home), "connect-x")
    assert record["status"] == ledger.LANDED and "cleaning" not in record
    assert job.main(["--line", "credit_risk", "--batch", "connect-x", "--home", str(home), "--remote", address]) == 1


def test_an_image_batch_through_connect_decodes_in_the_servers_workers(connect, tmp_path):
    """The image line's checks run in Python workers of the server (``mapInPandas``): they
    import this clone's code there and judge as the classic session's do."""
    from pipelines.ingest.sources import load_source

    fashion = load_spec("fashion")
    frame = load_source(fashion, holdout="test").iloc[200:240].reset_index(drop=True)
    classic_home, connect_home = tmp_path / "classic", tmp_path / "connect"
    for home in (classic_home, connect_home):
        landing.land_frame(fashion, frame, "connect-img", home)
    classic = job.run("fashion", ["connect-img"], classic_home)["connect-img"]
    remote = job.run("fashion", ["connect-img"], connect_home, remote=connect)["connect-img"]
    counts = ("rows_in", "rows_clean", "rows_quarantined", "duplicates_removed", "quarantine_reasons")
    assert {k: remote[k] for k in counts} == {k: classic[k] for k in counts}
    assert remote["rows_in"] == 40 and remote["rows_clean"] > 0
    key = fashion.schema.key[0]
    pd.testing.assert_frame_equal(_rows(remote, "clean_path", key), _rows(classic, "clean_path", key))
