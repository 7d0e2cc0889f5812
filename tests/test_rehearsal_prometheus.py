"""The rehearsal's Prometheus: the shipped configuration rewritten for local addresses
(checked by promtool), and the real metrics exporter scraped by the real Prometheus."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import pytest
import yaml

from deploy.rehearsal.process import free_port, port_open
from deploy.rehearsal.prometheus import (
    PROMETHEUS,
    check_config,
    dropped_jobs,
    prometheus_config,
    query,
    shipped_config,
    start_exporter,
    start_prometheus,
    targets_health,
    wait_targets_up,
    write_config,
)
from pipelines.config import REPO_ROOT

TARGETS = {
    "factory-metrics:9108": "127.0.0.1:19108",
    "tf-serving:8501": "127.0.0.1:18501",
    "localhost:9090": "127.0.0.1:19090",
}
LINES = sorted(p.stem for p in (REPO_ROOT / "include" / "lines").glob("*.yaml"))

needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
needs_prometheus = pytest.mark.skipif(not Path(PROMETHEUS).exists(), reason="prometheus is not installed")


def _poll(ask, timeout: float = 15.0):
    """``ask()`` until it gives something: the target's health and its samples are
    written by the same scrape, not at the same instant."""
    deadline = time.monotonic() + timeout
    while not (answer := ask()) and time.monotonic() < deadline:
        time.sleep(0.25)
    return answer


def _jobs(config: dict) -> dict[str, dict]:
    return {job["job_name"]: job for job in config["scrape_configs"]}


def test_targets_are_rewritten_to_local_addresses_and_the_rest_kept():
    shipped, config = _jobs(shipped_config()), _jobs(prometheus_config(TARGETS))
    assert set(config) == {"factory", "tf-serving", "prometheus"}
    assert config["factory"]["static_configs"] == [{"targets": ["127.0.0.1:19108"], "labels": {"component": "factory"}}]
    assert config["tf-serving"]["static_configs"] == [{"targets": ["127.0.0.1:18501"],
                                                      "labels": {"component": "serving"}}]
    assert config["tf-serving"]["metrics_path"] == shipped["tf-serving"]["metrics_path"] == \
        "/monitoring/prometheus/metrics"
    assert config["prometheus"]["static_configs"] == [{"targets": ["127.0.0.1:19090"]}]
    # nothing else of a job changes but its interval
    for name, job in config.items():
        rest = {k: v for k, v in job.items() if k not in ("static_configs", "scrape_interval")}
        assert rest == {k: v for k, v in shipped[name].items() if k not in ("static_configs", "scrape_interval")}
    assert prometheus_config(TARGETS)["global"]["external_labels"] == shipped_config()["global"]["external_labels"]


def test_the_statsd_job_is_dropped_and_said_so(tmp_path):
    config = prometheus_config(TARGETS)
    assert "airflow" not in _jobs(config)
    assert dropped_jobs(config) == ["airflow"]
    assert dropped_jobs(shipped_config()) == []
    text = write_config(tmp_path, config).read_text()
    assert "# dropped: airflow\n" in text
    assert "statsd-exporter" not in text and "factory-metrics" not in text


def test_intervals_are_shortened_and_timeouts_fit_them():
    config = prometheus_config(TARGETS, scrape_interval="5s")
    assert config["global"]["scrape_interval"] == "5s"
    assert config["global"]["scrape_timeout"] == "5s"  # shipped 10s: longer than the interval
    assert _jobs(config)["factory"]["scrape_interval"] == "5s"  # shipped 30s
    assert "scrape_interval" not in _jobs(config)["prometheus"]  # inherits the global one
    as_shipped = prometheus_config(TARGETS, scrape_interval=None)
    assert as_shipped["global"]["scrape_interval"] == "15s" and as_shipped["global"]["scrape_timeout"] == "10s"
    assert _jobs(as_shipped)["factory"]["scrape_interval"] == "30s"
    assert prometheus_config(TARGETS, scrape_interval="1m")["global"]["scrape_timeout"] == "10s"
    with pytest.raises(ValueError, match="duration"):
        prometheus_config(TARGETS, scrape_interval="5 seconds")


def test_a_target_that_is_no_compose_target_is_refused():
    with pytest.raises(ValueError, match="tf-serving:8051"):
        prometheus_config({**TARGETS, "tf-serving:8051": "127.0.0.1:1"})


@needs_promtool
def test_the_rewritten_config_passes_promtool(tmp_path):
    for interval in ("5s", "1s", None):
        path = write_config(tmp_path / str(interval), prometheus_config(TARGETS, interval))
        assert "SUCCESS" in check_config(path)


@needs_promtool
def test_promtool_failures_are_raised_with_its_output(tmp_path):
    config = prometheus_config(TARGETS, scrape_interval=None)
    config["global"]["scrape_interval"] = "5s"  # the global timeout (10s) is now longer than that
    with pytest.raises(ValueError, match="scrape timeout greater than scrape interval"):
        check_config(write_config(tmp_path, config))


@pytest.mark.integration
@needs_prometheus
@needs_promtool
def test_prometheus_scrapes_the_factory_exporter(tmp_path, factory_home):
    exporter_port, prom_port, nobody = free_port(), free_port(), free_port()
    assert not port_open("127.0.0.1", nobody)
    config = prometheus_config({"factory-metrics:9108": f"127.0.0.1:{exporter_port}",
                                "tf-serving:8501": f"127.0.0.1:{nobody}",
                                "localhost:9090": f"127.0.0.1:{prom_port}"})
    env = dict(os.environ, FACTORY_HOME=str(factory_home))
    logs = tmp_path / "logs"
    exporter = prom = None
    try:
        exporter = start_exporter(Path(sys.executable), exporter_port, env, logs)
        prom = start_prometheus(tmp_path / "prometheus", config, prom_port, logs)
        url = prom.info["url"]
        assert yaml.safe_load(prom.info["config"].read_text()) == config
        assert prom.info["dropped"] == ["airflow"]

        # the first scrape comes after the target manager's first update (about 5 s)
        # and the target's offset within its interval: poll, within a generous bound
        health = wait_targets_up(url, ["factory", "prometheus"], timeout=90)
        assert set(health) == {"factory", "prometheus", "tf-serving"}
        deadline = time.monotonic() + 30  # the unanswered target may be scraped later than the others
        while not health["tf-serving"].startswith("down") and time.monotonic() < deadline:
            time.sleep(0.5)
            health = targets_health(url)
        assert health["tf-serving"].startswith("down: "), health
        assert "connection refused" in health["tf-serving"] and f":{nobody}/monitoring/prometheus/metrics" in \
            health["tf-serving"]

        series = _poll(lambda: query(url, 'factory_line_info{job="factory"}'))
        assert sorted(s["metric"]["line"] for s in series) == LINES
        for s in series:
            assert s["metric"]["component"] == "factory"
            assert s["metric"]["instance"] == f"127.0.0.1:{exporter_port}"
            assert s["value"][1] == "1"
        up = {s["metric"]["job"]: s["value"][1] for s in query(url, "up")}
        assert up == {"factory": "1", "prometheus": "1", "tf-serving": "0"}
        assert query(url, 'up{job="airflow"}') == []
        with pytest.raises(ValueError, match="bad_data"):
            query(url, "factory_line_info{")
    finally:
        for engine in (prom, exporter):
            if engine is not None:
                engine.stop()
    assert not exporter.alive() and not prom.alive()
    assert not port_open("127.0.0.1", exporter_port) and not port_open("127.0.0.1", prom_port)
