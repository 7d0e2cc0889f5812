"""The factory's metrics exporter and Prometheus scraping it, as local processes.

Prometheus runs the shipped ``deploy/prometheus/prometheus.yml``; only what differs from
the cluster network changes: each compose ``service:port`` target becomes the local
``host:port`` its engine listens on, and the scrape interval may be shortened so a
rehearsal sees scrapes within seconds. A job none of whose targets runs locally is left
out (Airflow's StatsD job: there is no statsd-exporter to run here), and the written file
says so in a ``# dropped:`` comment; :func:`dropped_jobs` gives the same list.

    config = prometheus_config({"factory-metrics:9108": "127.0.0.1:19108",
                                "localhost:9090": "127.0.0.1:19090"})
    exporter = start_exporter(python, 19108, env, logs)
    prom = start_prometheus(workdir, config, 19090, logs)
    wait_targets_up(prom.info["url"], ["factory", "prometheus"], timeout=60)
    query(prom.info["url"], 'factory_line_info{job="factory"}')

The first scrape of a target comes after the target manager's first update (about 5 s
after Prometheus is ready) plus the target's offset within its interval (spread by a hash
of the target): measured here, 5-6 s with a 1 s interval, 6-9 s with 5 s, 25 s with the
shipped 30 s of the factory job. So wait with :func:`wait_targets_up`, never a fixed sleep.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

from deploy.rehearsal.compose import REPO_ROOT
from deploy.rehearsal.process import Engine, EngineFailed, spawn

SHIPPED = REPO_ROOT / "deploy" / "prometheus" / "prometheus.yml"
PROMETHEUS = "/usr/bin/prometheus"

_DURATION = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000,
            "y": 31_536_000_000}


def _duration_ms(text: str) -> int:
    """A Prometheus duration (``5s``, ``1m30s``, ``500ms``) in milliseconds."""
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a Prometheus duration: {text!r}")
    return sum(int(n) * _UNIT_MS[u] for n, u in parts)


def shipped_config() -> dict:
    return yaml.safe_load(SHIPPED.read_text())


def prometheus_config(targets: dict[str, str], scrape_interval: str | None = "5s") -> dict:
    """The shipped Prometheus configuration with each static target rewritten from its
    compose ``service:port`` to the local ``host:port`` of ``targets``.

    A job none of whose targets is in ``targets`` is left out (see :func:`dropped_jobs`);
    a job with only some of its targets mapped, or a key of ``targets`` that is no target
    of the shipped file, is an error (a typo would otherwise scrape nothing). Every
    ``scrape_interval`` (global and per job) becomes ``scrape_interval`` (``None``: as
    shipped), and a ``scrape_timeout`` longer than its interval is cut to it, as
    Prometheus requires. Labels, metrics paths and everything else stay as shipped.
    """
    config = copy.deepcopy(shipped_config())
    known: set[str] = set()
    jobs = []
    for job in config.get("scrape_configs") or []:
        names = [t for sc in job.get("static_configs") or [] for t in sc.get("targets") or []]
        known.update(names)
        mapped = [t for t in names if t in targets]
        if not mapped:
            continue
        if len(mapped) != len(names):
            missing = sorted(set(names) - set(mapped))
            raise ValueError(f"job {job['job_name']}: targets {missing} have no local address")
        for sc in job["static_configs"]:
            sc["targets"] = [targets[t] for t in sc["targets"]]
        jobs.append(job)
    unknown = sorted(set(targets) - known)
    if unknown:
        raise ValueError(f"{unknown} are no targets of {SHIPPED.name} (its targets: {sorted(known)})")
    config["scrape_configs"] = jobs

    if scrape_interval is not None:
        interval_ms = _duration_ms(scrape_interval)
        glob = config.setdefault("global", {})
        for section in [glob, *jobs]:
            if section is glob or "scrape_interval" in section:
                section["scrape_interval"] = scrape_interval
            timeout = section.get("scrape_timeout")
            if timeout is not None and _duration_ms(timeout) > interval_ms:
                section["scrape_timeout"] = scrape_interval
    return config


def dropped_jobs(config: dict) -> list[str]:
    """The shipped jobs that ``config`` (from :func:`prometheus_config`) leaves out."""
    kept = {job["job_name"] for job in config.get("scrape_configs") or []}
    return [job["job_name"] for job in shipped_config().get("scrape_configs") or [] if job["job_name"] not in kept]


def _get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.read()


def _answers(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=3) as resp:
        return resp.status == 200


def start_exporter(python: Path, port: int, env: dict, logs: Path, host: str = "127.0.0.1",
                   timeout: float = 60.0) -> Engine:
    """``python -m pipelines.observability.exporter`` on ``host:port`` (the compose service's
    command, with this machine's address) with the factory's environment ``env``
    (``FACTORY_HOME``, ``FACTORY_SERVING_STORE``), waited for on its ``/healthz``."""
    argv = [str(python), "-m", "pipelines.observability.exporter", "--host", host, "--port", str(port)]
    url = f"http://{host}:{port}"
    engine = spawn("factory-metrics", argv, env=dict(env), logs=logs, cwd=REPO_ROOT,
                   info={"url": url, "metrics": f"{url}/metrics"})
    try:
        engine.wait_healthy(lambda: _answers(f"{url}/healthz"), timeout, pause=0.5)
    except BaseException:
        engine.stop()
        raise
    return engine


def write_config(workdir: Path, config: dict) -> Path:
    """``config`` as ``<workdir>/prometheus.yml``, headed by the jobs it leaves out."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "prometheus.yml"
    dropped = dropped_jobs(config)
    header = f"# Rehearsal's rewrite of deploy/prometheus/prometheus.yml\n# dropped: {', '.join(dropped) or '-'}\n"
    path.write_text(header + yaml.safe_dump(config, sort_keys=False))
    return path


def check_config(path: Path) -> str:
    """``promtool check config``; its output, or :class:`ValueError` with it when it fails."""
    promtool = shutil.which("promtool") or "/usr/bin/promtool"
    done = subprocess.run([promtool, "check", "config", str(path)], capture_output=True, text=True, timeout=60)
    output = (done.stdout + done.stderr).strip()
    if done.returncode != 0:
        raise ValueError(f"promtool check config {path} failed ({done.returncode}):\n{output}")
    return output


def start_prometheus(workdir: Path, config: dict, port: int, logs: Path, host: str = "127.0.0.1",
                     retention: str = "1d", timeout: float = 60.0) -> Engine:
    """Prometheus on ``host:port`` with ``config`` (written to ``<workdir>/prometheus.yml`` and
    checked by promtool first) and its database in ``<workdir>/data``, waited for on
    ``/-/ready``. ``info["url"]`` is its address; ``info["dropped"]`` the jobs left out."""
    path = write_config(workdir, config)
    check_config(path)
    argv = [PROMETHEUS, f"--config.file={path}", f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address={host}:{port}", f"--storage.tsdb.retention.time={retention}"]
    url = f"http://{host}:{port}"
    engine = spawn("prometheus", argv, env={"PATH": "/usr/bin:/bin"}, logs=logs, cwd=workdir,
                   info={"url": url, "config": path, "dropped": dropped_jobs(config)})
    try:
        engine.wait_healthy(lambda: _answers(f"{url}/-/ready"), timeout, pause=0.5)
    except BaseException:
        engine.stop()
        raise
    return engine


def _api(prom_url: str, path: str, params: dict | None = None) -> dict:
    url = f"{prom_url.rstrip('/')}{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    try:
        body = json.loads(_get(url))
    except urllib.error.HTTPError as err:  # a bad query answers 400 with the error in JSON
        body = json.loads(err.read() or b"{}")
    if body.get("status") != "success":
        raise ValueError(f"{url}: {body.get('errorType')}: {body.get('error')}")
    return body["data"]


def targets_health(prom_url: str) -> dict[str, str]:
    """Each scraped job's health from ``/api/v1/targets``: ``up``, ``unknown`` (not scraped
    yet) or ``down: <last scrape error>``; a job with several targets is as healthy as its
    worst one."""
    rank = {"up": 0, "unknown": 1, "down": 2}
    health: dict[str, str] = {}
    for target in _api(prom_url, "/api/v1/targets", {"state": "active"})["activeTargets"]:
        job = target["labels"].get("job") or target.get("scrapePool", "")
        state = target.get("health", "unknown")
        text = f"{state}: {target['lastError']}" if target.get("lastError") else state
        current = health.get(job)
        if current is None or rank.get(state, 1) > rank.get(current.split(":")[0], 1):
            health[job] = text
    return health


def wait_targets_up(prom_url: str, jobs: list[str], timeout: float = 60.0, pause: float = 0.5) -> dict[str, str]:
    """Wait until every job of ``jobs`` has been scraped successfully; the health of all
    jobs then. :class:`EngineFailed` with the last health seen when not within ``timeout``."""
    deadline = time.monotonic() + timeout
    health: dict[str, str] = {}
    while True:
        try:
            health = targets_health(prom_url)
        except (OSError, ValueError) as err:
            health = {"<prometheus>": f"unknown: {err}"}
        if all(health.get(job) == "up" for job in jobs):
            return health
        if time.monotonic() >= deadline:
            raise EngineFailed(f"jobs {jobs} not all up within {timeout:.0f}s: {health}")
        time.sleep(pause)


def query(prom_url: str, promql: str) -> list:
    """The result vector of an instant query (``/api/v1/query``): ``[{"metric": {...},
    "value": [ts, "v"]}, ...]``."""
    data = _api(prom_url, "/api/v1/query", {"query": promql})
    if data.get("resultType") != "vector":
        raise ValueError(f"{promql!r} gives a {data.get('resultType')}, not an instant vector")
    return data["result"]
