"""The model server, as a process over a serving store of real models.

One small employment model is really trained (one Horovod rank, a few epochs on real ACS
rows) and published as version 1; a small fashion CNN is published under ``fashion``.
The server runs as ``python -m pipelines.serving.server`` in the ML environment, and is
spoken to over HTTP only:

* the contract: status, metadata, row and columnar predictions with TF Serving's shapes,
  version pinning, the headers, outputs equal to the SavedModel's own;
* bad input is answered 4xx with a reason, and the server goes on answering;
* a new version pushed, then rolled back, under load: no request fails;
* a server killed under load: every request it answered is in the prediction log.
"""

from __future__ import annotations

import base64
import json
import signal
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
from serving_models import IMAGE_LINE, LINE, publish_again, publish_image_model, train_and_publish

from pipelines.catalog import layout
from pipelines.config import REPO_ROOT, ml_python
from pipelines.evaluation import serving
from pipelines.serving import predlog

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not (ml_python().parent / "horovodrun").exists(), reason="ML environment not set up"),
]

MAX_BYTES = 1024 * 1024
MAX_INSTANCES = 1000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A model server process on a free port."""

    def __init__(self, home: Path, log: Path, **extra: str) -> None:
        from pipelines.training.launch import worker_environment

        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = worker_environment({"FACTORY_HOME": str(home), "FACTORY_SERVING_POLL_S": "0.2",
                                  "FACTORY_SERVING_MAX_REQUEST_BYTES": str(MAX_BYTES),
                                  "FACTORY_SERVING_MAX_INSTANCES": str(MAX_INSTANCES)})
        for var in ("FACTORY_SERVING_STORE", "FACTORY_PREDICTION_LOG"):
            env.pop(var, None)
        env.update(extra)
        self.log = log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [str(ml_python()), "-m", "pipelines.serving.server", "--port", str(self.port), "--home", str(home)],
                cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)

    def wait(self, lines: dict[str, int], timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                health = httpx.get(f"{self.url}/healthz", timeout=2).json()
                if all(health["lines"].get(k) == v for k, v in lines.items()):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"the server did not serve {lines}: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    home = tmp_path_factory.mktemp("serving") / "factory"
    started = time.monotonic()
    version, run = train_and_publish(home)
    image_version, _ = publish_image_model(home)
    assert (version, image_version) == (1, 1)
    print(f"\ntrained and published the models in {time.monotonic() - started:.0f}s")
    return home, run


@pytest.fixture(scope="module")
def server(store, tmp_path_factory):
    home, _ = store
    s = Server(home, tmp_path_factory.mktemp("server") / "server.log")
    try:
        s.wait({LINE: 1, IMAGE_LINE: 1})
        yield s
    finally:
        s.stop()


def _rows(home: Path, n: int, year: int = 2016) -> list[dict]:
    """``n`` real ACS rows as JSON instances of the model's raw features."""
    from bench.realdata import employment_frame
    from pipelines.catalog.records import read_model_info

    info = read_model_info(layout.serving_base(LINE, home) / "1")
    cast = {"integer": int, "double": float, "string": str}
    frame = employment_frame(year).head(n)
    return [{f["name"]: cast[f["type"]](r[f["name"]]) for f in info["features"]} for _, r in frame.iterrows()]


_REFERENCE = """
import base64, json, sys
import tensorflow as tf
from pathlib import Path
from pipelines.catalog.records import read_model_info
model_dir, rows = sys.argv[1], json.load(sys.stdin)
features = {f["name"]: f["type"] for f in read_model_info(Path(model_dir))["features"]}
dtypes = {"integer": tf.int64, "double": tf.float32, "string": tf.string}
model = tf.saved_model.load(model_dir)
out = model.signatures["predict_features"](
    **{n: tf.constant([r[n] for r in rows], dtype=dtypes[t]) for n, t in features.items()})
def feature(kind, value):
    if kind == "integer":
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
    if kind == "double":
        return tf.train.Feature(float_list=tf.train.FloatList(value=[value]))
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value.encode()]))
examples = [tf.train.Example(features=tf.train.Features(
    feature={n: feature(t, r[n]) for n, t in features.items()})).SerializeToString() for r in rows]
print(json.dumps({"probabilities": out["probabilities"].numpy().tolist(), "logits": out["logits"].numpy().tolist(),
                  "examples": [base64.b64encode(e).decode() for e in examples]}))
"""


def _reference(home: Path, rows: list[dict]) -> dict:
    """The SavedModel's own ``predict_features`` outputs on ``rows`` (ML environment), and
    the rows as serialized tf.Examples."""
    from pipelines.training.launch import worker_environment

    done = subprocess.run([str(ml_python()), "-c", _REFERENCE, str(layout.serving_base(LINE, home) / "1")],
                          input=json.dumps(rows), capture_output=True, text=True, cwd=REPO_ROOT,
                          env=worker_environment(), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _close(a: list, b: list, tol: float = 1e-6) -> bool:
    """Equal within ``tol`` (relative beyond 1: logits are float32 too)."""
    return len(a) == len(b) and all(abs(x[0] - y[0]) <= tol * max(1.0, abs(y[0])) for x, y in zip(a, b, strict=True))


def test_contract_status_metadata_and_predictions_equal_the_saved_model(store, server):
    home, _ = store
    url = server.url
    status = httpx.get(f"{url}/v1/models/{LINE}").json()
    assert status == {"model_version_status": [{"version": "1", "state": "AVAILABLE",
                                                "status": {"error_code": "OK", "error_message": ""}}]}
    assert httpx.get(f"{url}/v1/models/{LINE}/versions/1").json() == status

    meta = httpx.get(f"{url}/v1/models/{LINE}/metadata").json()
    assert meta["model_spec"] == {"name": LINE, "signature_name": "", "version": "1"}
    sigs = meta["metadata"]["signature_def"]["signature_def"]
    assert set(sigs) == {"serving_default", "predict_features"}
    examples = sigs["serving_default"]["inputs"]["examples"]
    assert examples["dtype"] == "DT_STRING" and examples["tensor_shape"]["dim"] == [{"size": "-1", "name": ""}]
    assert sigs["serving_default"]["method_name"] == "tensorflow/serving/predict"
    assert set(sigs["serving_default"]["outputs"]) == {"probabilities", "logits"}
    assert sigs["predict_features"]["inputs"]["AGEP"]["dtype"] == "DT_FLOAT"

    rows = _rows(home, 40)
    ref = _reference(home, rows)
    # row format, the client's request id echoed
    r = httpx.post(f"{url}/v1/models/{LINE}:predict", json={"signature_name": "predict_features", "instances": rows},
                   headers={"X-Request-Id": "contract-rows"})
    assert r.status_code == 200, r.text
    assert r.headers["X-Model-Version"] == "1" and r.headers["X-Request-Id"] == "contract-rows"
    predictions = r.json()["predictions"]
    assert len(predictions) == 40 and all(set(p) == {"probabilities", "logits"} for p in predictions)
    assert all(len(p["probabilities"]) == 1 for p in predictions)
    assert _close([p["probabilities"] for p in predictions], ref["probabilities"])
    assert _close([p["logits"] for p in predictions], ref["logits"])
    # columnar format, pinned to version 1; a new request id when none was sent
    columns = {name: [row[name] for row in rows] for name in rows[0]}
    r = httpx.post(f"{url}/v1/models/{LINE}/versions/1:predict",
                   json={"signature_name": "predict_features", "inputs": columns})
    assert r.status_code == 200, r.text
    assert r.headers["X-Model-Version"] == "1" and len(r.headers["X-Request-Id"]) == 32
    outputs = r.json()["outputs"]
    assert _close(outputs["probabilities"], ref["probabilities"]) and _close(outputs["logits"], ref["logits"])
    # the default signature: serialized tf.Examples as {"b64": ...}
    r = httpx.post(f"{url}/v1/models/{LINE}:predict", json={"instances": [{"b64": e} for e in ref["examples"]]})
    assert r.status_code == 200, r.text
    assert _close([p["probabilities"] for p in r.json()["predictions"]], ref["probabilities"])
    # a version that is not there
    r = httpx.post(f"{url}/v1/models/{LINE}/versions/9:predict", json={"instances": rows[:1],
                                                                      "signature_name": "predict_features"})
    assert r.status_code == 404 and r.json() == {"error": f"Servable not found for request: Specific({LINE}, 9)"}

    # what was answered is in the prediction log, as sent and as answered
    logged = [rec for seg in sorted(layout.prediction_wal_dir(LINE, home).glob("*.jsonl"))
              for rec in predlog.read_segment(seg)[0] if rec["request_id"] == "contract-rows"]
    assert [rec["instance"] for rec in logged] == list(range(40))
    assert logged[3]["inputs"] == rows[3] and logged[3]["outputs"] == predictions[3]
    assert logged[0]["model_version"] == 1 and logged[0]["signature"] == "predict_features"

    metrics = httpx.get(f"{url}/monitoring/prometheus/metrics").text
    assert f'factory_model_server_requests_total{{code="200",line="{LINE}",version="1"}}' in metrics
    assert f'factory_model_server_served_version{{line="{LINE}"}} 1.0' in metrics
    assert "factory_model_server_batch_size_bucket" in metrics
    assert "factory_model_server_prediction_log_seconds_bucket" in metrics
    assert httpx.get(f"{url}/metrics").status_code == 200


def test_bad_requests_get_a_reason_and_the_server_goes_on(store, server):
    home, _ = store
    url = f"{server.url}/v1/models/{LINE}:predict"
    row = _rows(home, 1)[0]
    renamed = {**{k: v for k, v in row.items() if k != "AGEP"}, "AGE": row["AGEP"]}
    cases = [
        (f"{server.url}/v1/models/nosuchline:predict", {"instances": [row]}, 404, "Latest(nosuchline)"),
        (f"{server.url}/v1/models/{LINE}/versions/5:predict", {"instances": [row]}, 404, f"Specific({LINE}, 5)"),
        (url, {"signature_name": "predict_features", "instances": [renamed]}, 400, "['AGEP']"),
        (url, {"signature_name": "predict_features", "instances": [renamed]}, 400, "['AGE']"),
        (url, {"signature_name": "predict_features", "instances": [{**row, "AGEP": "old"}]}, 400, "AGEP"),
        (url, {"signature_name": "predict_features", "instances": [{**row, "SEX": 1}]}, 400, "SEX"),
        # a number the model's float32 cannot hold would be answered as infinity
        (url, {"signature_name": "predict_features", "instances": [{**row, "AGEP": 1e300}]}, 400, "float32"),
        (url, {"signature_name": "predict_features", "instances": [row], "inputs": {}}, 400, "exactly one"),
        (url, {"signature_name": "predict_features"}, 400, "exactly one"),
        (url, {"signature_name": "nope", "instances": [row]}, 400, "nope"),
        (url, {"instances": [{"b64": "not base64!"}]}, 400, "base64"),
        (url, {"instances": [{"b64": base64.b64encode(b"\x89PNG not an example").decode()}]}, 400, "tf.Example"),
        (url, {"signature_name": "predict_features", "instances": [row] * (MAX_INSTANCES + 1)}, 413, "at most"),
    ]
    for target, body, code, reason in cases:
        r = httpx.post(target, json=body)
        assert r.status_code == code, (body if len(str(body)) < 300 else reason, r.text)
        assert reason in r.json()["error"], r.text
    r = httpx.post(url, content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "not JSON" in r.json()["error"]
    r = httpx.post(url, content=b"[" + b"1," * MAX_BYTES + b"1]")
    assert r.status_code == 413 and "bytes" in r.json()["error"]
    # still answering, and well
    r = httpx.post(url, json={"signature_name": "predict_features", "instances": [row]})
    assert r.status_code == 200 and 0.0 <= r.json()["predictions"][0]["probabilities"][0] <= 1.0
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok", "lines": {LINE: 1, IMAGE_LINE: 1}}


class Load:
    """Client threads sending predictions until stopped; every answer is kept."""

    def __init__(self, url: str, rows: list[dict], threads: int = 8) -> None:
        self.url, self.rows = url, rows
        self.answers: list[tuple[float, int, str | None, str]] = []  # (time, status, version, request id)
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, i: int) -> None:
        with httpx.Client(timeout=30) as client:
            n = 0
            while not self._stop.is_set():
                rid = f"load-{i}-{n}-{uuid.uuid4().hex[:8]}"
                rows = [self.rows[(i + n + k) % len(self.rows)] for k in range(3)]
                n += 1
                try:
                    r = client.post(self.url, json={"signature_name": "predict_features", "instances": rows},
                                    headers={"X-Request-Id": rid})
                except httpx.HTTPError as err:
                    with self._lock:
                        self.errors.append(f"{type(err).__name__}: {err}")
                    if self._stop.is_set():
                        return
                    continue
                with self._lock:
                    self.answers.append((time.monotonic(), r.status_code, r.headers.get("X-Model-Version"), rid))

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)

    def wait_for(self, version: str, after: float, timeout: float = 60) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                seen = [t for t, _, v, _ in self.answers if t > after and v == version]
            if seen:
                return seen[0]
            time.sleep(0.05)
        raise AssertionError(f"no answer from version {version} within {timeout}s")


def test_hot_swap_and_rollback_under_load_fail_no_request(store, server):
    home, run = store
    base = layout.serving_base(LINE, home)
    with Load(f"{server.url}/v1/models/{LINE}:predict", _rows(home, 30)) as load:
        time.sleep(1.0)
        pushed = time.monotonic()
        assert publish_again(home, run, "hot-swap") == 2
        on_v2 = load.wait_for("2", pushed)
        time.sleep(0.5)
        rolled = time.monotonic()
        assert serving.retire_latest(base, "hot swap test") == (2, 1)
        back = load.wait_for("1", rolled)
        time.sleep(1.0)
    answers = load.answers
    assert not load.errors, load.errors[:5]
    assert answers and all(code == 200 for _, code, _, _ in answers), {c for _, c, _, _ in answers}
    assert {v for _, _, v, _ in answers} == {"1", "2"}
    assert all(v == "1" for t, _, v, _ in answers if t < pushed)
    # after the switch back, version 1 answers (the rollback needs no load: 1 stayed loaded)
    assert all(v == "1" for t, _, v, _ in answers if t > back + 0.5)
    assert back - rolled < 5.0, f"the rollback took {back - rolled:.1f}s to be served"
    print(f"\n{len(answers)} answers; v2 served {on_v2 - pushed:.1f}s after the push, "
          f"v1 again {back - rolled:.2f}s after the rollback")
    r = httpx.get(f"{server.url}/v1/models/{LINE}/versions/2")
    assert r.status_code == 404 and "Specific(employment, 2)" in r.json()["error"]


def test_killed_server_loses_no_acknowledged_prediction(store, tmp_path):
    home, _ = store
    wal = layout.prediction_wal_dir(LINE, home)
    s = Server(home, tmp_path / "killed.log")
    try:
        s.wait({LINE: 1, IMAGE_LINE: 1})
        with Load(f"{s.url}/v1/models/{LINE}:predict", _rows(home, 30, year=2017), threads=4) as load:
            time.sleep(2.0)
            s.proc.send_signal(signal.SIGKILL)
            s.proc.wait(10)
        acknowledged = {rid for _, code, _, rid in load.answers if code == 200}
        assert len(acknowledged) > 20 and all(code == 200 for _, code, _, _ in load.answers)
        segments = [p for p in wal.iterdir() if predlog.segment_pid(p) == s.proc.pid]
        assert segments and all(predlog.is_open_segment(p) for p in segments)  # killed: never closed
        logged: dict[str, set[int]] = {}
        for seg in wal.iterdir():
            for rec in predlog.read_segment(seg)[0]:
                logged.setdefault(rec["request_id"], set()).add(rec["instance"])
        missing = sorted(acknowledged - set(logged))
        assert not missing, f"{len(missing)} acknowledged requests are not in the log, e.g. {missing[:3]}"
        assert all(logged[rid] == {0, 1, 2} for rid in acknowledged)
    finally:
        s.stop()


def test_image_model_answers_png_as_b64_and_a_bad_png_fails_alone(store, server):
    home, _ = store
    import pyarrow.parquet as pq

    images = pq.read_table(layout.eval_data_path(layout.run_dir(IMAGE_LINE, "serving", home))).column("image")
    pngs = [base64.b64encode(v.as_py()).decode() for v in images][:6]
    url = f"{server.url}/v1/models/{IMAGE_LINE}:predict"
    r = httpx.post(url, json={"signature_name": "predict_features", "instances": [{"image": {"b64": pngs[0]}}]})
    assert r.status_code == 200, r.text
    answer = r.json()["predictions"][0]
    assert len(answer["probabilities"]) == 10 and abs(sum(answer["probabilities"]) - 1.0) < 1e-4
    assert isinstance(answer["class_ids"], int) and 0 <= answer["class_ids"] < 10
    assert answer["probabilities"].index(max(answer["probabilities"])) == answer["class_ids"]

    # a PNG the model cannot decode passes the checks and fails in the model: alone
    broken = base64.b64encode(b"\x89PNG\r\n\x1a\n broken").decode()
    results: dict[int, httpx.Response] = {}

    def send(i: int, png: str) -> None:
        results[i] = httpx.post(url, json={"signature_name": "predict_features",
                                           "instances": [{"image": {"b64": png}}]}, timeout=30)

    for _ in range(3):  # several rounds so that the broken one shares a batch
        threads = [threading.Thread(target=send, args=(i, png)) for i, png in enumerate([*pngs, broken])]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [results[i].status_code for i in range(len(pngs))] == [200] * len(pngs)
        assert results[len(pngs)].status_code == 400, results[len(pngs)].text

    # a line that appears in the store is served without a restart
    run = layout.run_dir(IMAGE_LINE, "serving", home)
    assert publish_again(home, run, "another-line", line="fashion_copy") == 1
    server.wait({"fashion_copy": 1}, timeout=30)
    r = httpx.post(f"{server.url}/v1/models/fashion_copy:predict", json={"instances": [{"image": {"b64": pngs[1]}}],
                                                                         "signature_name": "predict_features"})
    assert r.status_code == 200 and r.headers["X-Model-Version"] == "1"
    assert r.json()["predictions"][0]["class_ids"] == results[1].json()["predictions"][0]["class_ids"]

    # ... and one that leaves it is no longer served, its prediction-log segment closed
    import shutil

    shutil.rmtree(layout.serving_base("fashion_copy", home))
    deadline = time.monotonic() + 30
    while "fashion_copy" in httpx.get(f"{server.url}/healthz").json()["lines"]:
        assert time.monotonic() < deadline, "the line is still served"
        time.sleep(0.2)
    assert httpx.post(f"{server.url}/v1/models/fashion_copy:predict", json={}).status_code == 404
    segments = [p for p in layout.prediction_wal_dir("fashion_copy", home).iterdir()
                if predlog.segment_pid(p) == server.proc.pid]
    assert len(segments) == 1 and not predlog.is_open_segment(segments[0]), segments


def test_a_stopped_server_closes_its_segment_and_an_unwritable_log_answers_nothing(store, tmp_path):
    home, _ = store
    row = _rows(home, 1)[0]
    body = {"signature_name": "predict_features", "instances": [row]}
    s = Server(home, tmp_path / "stopped.log")
    try:
        s.wait({LINE: 1, IMAGE_LINE: 1})
        assert httpx.post(f"{s.url}/v1/models/{LINE}:predict", json=body,
                          headers={"X-Request-Id": "before-stop"}).status_code == 200
    finally:
        s.stop()
    # uvicorn shuts down gracefully, then re-raises the signal it caught
    assert s.proc.returncode in (0, -signal.SIGTERM)
    mine = [p for p in layout.prediction_wal_dir(LINE, home).iterdir() if predlog.segment_pid(p) == s.proc.pid]
    assert len(mine) == 1 and not predlog.is_open_segment(mine[0])  # SIGTERM: closed, renamed
    assert [r["request_id"] for r in predlog.read_segment(mine[0])[0]] == ["before-stop"]

    # the log's folder cannot be made: 503, and the server goes on answering so
    (tmp_path / "not-a-folder").write_text("")
    s = Server(home, tmp_path / "unlogged.log", FACTORY_PREDICTION_LOG=str(tmp_path / "not-a-folder" / "log"))
    try:
        s.wait({LINE: 1, IMAGE_LINE: 1})
        for _ in range(2):
            r = httpx.post(f"{s.url}/v1/models/{LINE}:predict", json=body)
            assert r.status_code == 503 and "prediction log" in r.json()["error"], r.text
            assert "predictions" not in r.json()
        assert 'code="503"' in httpx.get(f"{s.url}/metrics").text
    finally:
        s.stop()


def test_the_documented_client_asks_with_rows_of_a_cleaned_batch(store, server):
    """``pipelines.serving.client`` (what ``factory run`` and the docs use): rows of the
    validated batch the model was trained on, as instances of the model's features, answered
    by the served version; an error answer is raised with the server's reason."""
    from pipelines.catalog import ledger
    from pipelines.catalog.records import read_model_info
    from pipelines.serving.client import ServingError, example_instances, predict, served_version

    home, _ = store
    [batch] = ledger.all_records(layout.line_paths(LINE, home))
    features = [f["name"] for f in read_model_info(layout.serving_base(LINE, home) / "1")["features"]]
    instances = example_instances(features, Path(batch["cleaning"]["clean_path"]), n=5)
    assert len(instances) == 5 and set(instances[0]) == set(features)
    assert served_version(server.url, LINE) == "1"
    answer = predict(server.url, LINE, instances, request_id="client-1")
    assert answer.version == "1" and answer.request_id == "client-1" and len(answer.predictions) == 5
    assert all(0.0 <= p["probabilities"][0] <= 1.0 for p in answer.predictions)
    with pytest.raises(ServingError, match="404"):
        predict(server.url, "no_such_line", instances)
    with pytest.raises(ServingError, match="400: .*unknown input"):
        predict(server.url, LINE, [{**instances[0], "height_cm": 180}])
