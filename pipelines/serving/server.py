"""The model server: TF Serving's REST API over the serving store, with server-side
micro-batching and a prediction log (ML environment).

    python -m pipelines.serving.server [--host H] [--port P] [--home DIR]

Serves every line with a folder in the serving store (:func:`layout.serving_store`;
lines that appear later too): the highest live integer version answers, the one below it
stays loaded so a rollback switches back at once. The store is polled every
``FACTORY_SERVING_POLL_S`` seconds (default 1); a new version is loaded and warmed (one
call) before it is switched in, and a request keeps the version it started with.
Micro-batching (:mod:`pipelines.serving.batching`) takes the requests waiting when a
line's worker is free; ``FACTORY_SERVING_BATCH_WINDOW_MS`` (default 0) makes it also wait
that long for more, as TF Serving's ``batch_timeout_micros`` does.

API (https://www.tensorflow.org/tfx/serving/api_rest):

| method and path | answer |
|---|---|
| ``GET /v1/models/<line>[/versions/<n>]`` | the version's status |
| ``GET /v1/models/<line>[/versions/<n>]/metadata`` | its signature defs |
| ``POST /v1/models/<line>[/versions/<n>]:predict`` | outputs, row (``instances``) or columnar (``inputs``) |
| ``GET /monitoring/prometheus/metrics``, ``GET /metrics`` | Prometheus metrics |
| ``GET /healthz`` | ``{"status": "ok", "lines": {line: version}}`` |

Every answered instance is in the prediction log (:mod:`pipelines.serving.predlog`)
before its answer leaves: one append (one fsync) per micro-batch, and a 503 for the
requests of a batch that could not be logged. Errors are TF Serving's:
``{"error": "<reason>"}`` with 400 (bad request), 404 (no such line or version), 413
(over ``FACTORY_SERVING_MAX_REQUEST_BYTES``, default 8 MiB, or
``FACTORY_SERVING_MAX_INSTANCES`` rows, default 10000), 503 (the log cannot be written).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.catalog import layout
from pipelines.config import factory_home
from pipelines.serving.batching import Batcher, Pending
from pipelines.serving.predlog import PredictionLog, PredictionLogError, now_iso

log = logging.getLogger("factory.model_server")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8501
MAX_REQUEST_BYTES = 8 * 1024 * 1024
MAX_INSTANCES = 10_000
POLL_S = 1.0
KEEP_VERSIONS = 2  # the served version and the one a rollback goes back to
MAX_REQUEST_ID = 128
DEFAULT_SIGNATURE = "serving_default"

_MODEL_PATH = re.compile(r"^(?P<line>[^/:]+)(?:/versions/(?P<version>[^/:]+))?(?P<tail>/metadata|:[A-Za-z]+)?$")


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    return int(raw) if raw else default


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    return float(raw) if raw else default


class HTTPError(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _not_found(line: str, version: int | str | None) -> HTTPError:
    spec = f"Latest({line})" if version is None else f"Specific({line}, {version})"
    return HTTPError(404, f"Servable not found for request: {spec}")


@dataclass
class LineState:
    name: str
    versions: dict[int, Any] = field(default_factory=dict)  # loaded live versions -> Servable
    served: int | None = None
    log: PredictionLog | None = None


class Metrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("factory_model_server_requests_total", "Predict requests answered",
                                ["line", "version", "code"], registry=self.registry)
        self.seconds = Histogram("factory_model_server_request_seconds", "Predict request time in the server",
                                 ["line", "version"], registry=self.registry,
                                 buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
        self.batch = Histogram("factory_model_server_batch_size", "Rows per signature call", ["line"],
                               registry=self.registry, buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096))
        self.served = Gauge("factory_model_server_served_version", "The version each line serves", ["line"],
                            registry=self.registry)
        self.log_seconds = Histogram("factory_model_server_prediction_log_seconds",
                                     "Prediction log append (write + fsync) per micro-batch", ["line"],
                                     registry=self.registry,
                                     buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1))

    def text(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class ModelServer:
    """The store's lines, their loaded versions and the request handling (no HTTP here
    beyond status codes)."""

    def __init__(self, home: Path | None = None) -> None:
        self.home = Path(home) if home is not None else factory_home()
        self.store = layout.serving_store(self.home)
        self.lines: dict[str, LineState] = {}
        self.failed: dict[tuple[str, int], float] = {}  # loads that failed (by the folder's mtime)
        self.max_bytes = _env_int("FACTORY_SERVING_MAX_REQUEST_BYTES", MAX_REQUEST_BYTES)
        self.max_instances = _env_int("FACTORY_SERVING_MAX_INSTANCES", MAX_INSTANCES)
        self.poll_s = _env_float("FACTORY_SERVING_POLL_S", POLL_S)
        self.metrics = Metrics()
        self.batcher = Batcher(
            window_s=_env_float("FACTORY_SERVING_BATCH_WINDOW_MS", 0.0) / 1000.0,
            on_batch=lambda key, rows: self.metrics.batch.labels(key[0]).observe(rows),
            on_log=lambda key, s: self.metrics.log_seconds.labels(key[0]).observe(s),
        )

    # ------------------------------------------------------------------ the store

    def _scan(self) -> dict[str, list[int]]:
        if not self.store.is_dir():
            return {}
        return {p.name: layout.int_dirs(p) for p in sorted(self.store.iterdir())
                if p.is_dir() and not p.name.startswith(".")}

    def _switch(self, state: LineState, live: list[int]) -> None:
        """Serve the highest live version that is loaded."""
        ready = [v for v in live if v in state.versions]
        served = ready[-1] if ready else None
        if served != state.served:
            log.info("%s: serving version %s (was %s)", state.name, served, state.served)
            state.served = served
        if served is not None:
            self.metrics.served.labels(state.name).set(served)

    async def refresh(self) -> None:
        """Follow the store: load new versions (warmed before they are switched in), switch
        at once to a loaded one when the served one is retired, unload what is no longer
        among the two highest live versions."""
        listing = await asyncio.to_thread(self._scan)
        for name in list(self.lines):
            if name not in listing:
                state = self.lines.pop(name)  # its folder is gone: not served, its segment closed
                if state.served is not None:
                    self.metrics.served.remove(name)
                if state.log is not None:
                    await asyncio.to_thread(_close_log, state.log)
        for name, live in listing.items():
            state = self.lines.get(name)
            if state is None:
                state = self.lines[name] = LineState(name)
            for v in [v for v in state.versions if v not in live]:
                del state.versions[v]  # retired: requests holding it finish on it
            self._switch(state, live)
            keep = live[-KEEP_VERSIONS:]
            for v in reversed(keep):
                if v not in state.versions:
                    servable = await self._load(name, v)
                    if servable is not None:
                        state.versions[v] = servable
                        self._switch(state, layout.int_dirs(self.store / name))
            for v in [v for v in state.versions if v not in keep]:
                del state.versions[v]

    async def _load(self, line: str, version: int) -> Any:
        from pipelines.serving.servable import Servable

        path = self.store / line / str(version)
        try:
            mtime = path.stat().st_mtime
        except OSError:
            return None
        if self.failed.get((line, version)) == mtime:
            return None
        started = time.monotonic()
        try:
            servable = await asyncio.to_thread(_load_warm, Servable, line, version, path)
        except Exception as err:  # noqa: BLE001 - a broken version is not served; the rest is
            self.failed[(line, version)] = mtime
            log.error("%s: version %s cannot be loaded from %s: %s", line, version, path, err)
            return None
        log.info("%s: version %s loaded and warmed in %.1fs", line, version, time.monotonic() - started)
        return servable

    async def poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                await self.refresh()
            except Exception:  # noqa: BLE001 - keep serving what is loaded
                log.exception("reading the serving store %s failed", self.store)

    def health(self) -> dict[str, Any]:
        return {"status": "ok",
                "lines": {n: s.served for n, s in sorted(self.lines.items()) if s.served is not None}}

    def close(self) -> None:
        for state in self.lines.values():
            if state.log is not None:
                _close_log(state.log)

    # ------------------------------------------------------------------ requests

    def servable(self, line: str, version: str | None) -> Any:
        state = self.lines.get(line)
        if version is None:
            if state is None or state.served is None or state.served not in state.versions:
                raise _not_found(line, None)
            return state.versions[state.served]
        try:
            number = int(version)
        except ValueError:
            raise HTTPError(400, f"the version must be an integer, got {version!r}") from None
        if state is None or number not in state.versions:
            raise _not_found(line, number)
        return state.versions[number]

    def status(self, line: str, version: str | None) -> dict[str, Any]:
        servable = self.servable(line, version)
        return {"model_version_status": [{"version": str(servable.version), "state": "AVAILABLE",
                                          "status": {"error_code": "OK", "error_message": ""}}]}

    def metadata(self, line: str, version: str | None) -> dict[str, Any]:
        servable = self.servable(line, version)
        return {"model_spec": {"name": line, "signature_name": "", "version": str(servable.version)},
                "metadata": {"signature_def": {"signature_def": servable.metadata}}}

    def prediction_log(self, line: str) -> PredictionLog:
        state = self.lines[line]
        if state.log is None:
            state.log = PredictionLog(line, self.home, encode=_encode_record)
        return state.log

    async def predict(self, line: str, version: str | None, raw: bytes, request_id: str,
                      arrived: float, headers: dict[str, str]) -> dict[str, Any]:
        from pipelines.serving.servable import BadInput, split_rows

        servable = self.servable(line, version)
        headers["X-Model-Version"] = str(servable.version)
        try:
            body = _orjson().loads(raw)
        except (ValueError, UnicodeDecodeError) as err:
            raise HTTPError(400, f"the request body is not JSON: {err}") from None
        if not isinstance(body, dict):
            raise HTTPError(400, "the request body must be a JSON object")
        name = body.get("signature_name") or DEFAULT_SIGNATURE
        signature = servable.signatures.get(name) if isinstance(name, str) else None
        if signature is None:
            raise HTTPError(400, f"Serving signature name: {name!r} not found in signature def; "
                                 f"the model has {sorted(servable.signatures)}")
        try:
            columns, sent, fmt = signature.columns(body)
        except BadInput as err:
            raise HTTPError(400, str(err)) from None
        rows = len(sent)
        if rows > self.max_instances:
            raise HTTPError(413, f"{rows} instances: at most {self.max_instances} per request "
                                 "(FACTORY_SERVING_MAX_INSTANCES)")

        def records(outputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
            latency = (time.perf_counter() - arrived) * 1000.0
            at = now_iso()
            return [{"request_id": request_id, "instance": i, "time": at, "line": line,
                     "model_version": servable.version, "signature": name, "inputs": sent[i],
                     "outputs": outputs[i], "latency_ms": round(latency, 3)} for i in range(rows)]

        def call(cols: dict[str, list[Any]]) -> list[dict[str, Any]]:
            return split_rows(signature(cols), len(next(iter(cols.values()))))

        pending = Pending(columns, rows, records)
        try:
            outputs = await self.batcher.submit((line, servable.version, name), call, self.prediction_log(line),
                                                pending)
        except PredictionLogError as err:
            log.error("%s: %s", line, err)
            raise HTTPError(503, f"the prediction log cannot be written, so nothing is answered: {err}") from None
        except Exception as err:  # noqa: BLE001 - the model refused this request's values
            if _is_invalid_argument(err):
                raise HTTPError(400, _tf_message(err)) from None
            raise
        return _answer(outputs, fmt)


def _orjson():
    """orjson, imported where the server runs (the ML environment); the module's metrics and
    helpers stay importable from the orchestration environment."""
    import orjson

    return orjson


def _encode_record(record: dict[str, Any]) -> bytes:
    """A prediction record as JSON bytes: orjson (apache-beam's and tfx's pin in the ML
    environment) encodes a 512-row batch's records several times faster than ``json``."""
    return _orjson().dumps(record)


def _close_log(plog: PredictionLog) -> None:
    try:
        plog.close()
    except OSError as err:
        log.error("closing the prediction log %s failed: %s", plog.dir, err)


def _load_warm(cls: Any, line: str, version: int, path: Path) -> Any:
    servable = cls(line, version, path)
    servable.warm()
    return servable


def _is_invalid_argument(err: BaseException) -> bool:
    """The model refused the request's values (TF fails with UnicodeDecodeError when its own
    message quotes binary input)."""
    return type(err).__name__ in ("InvalidArgumentError", "UnimplementedError", "OutOfRangeError",
                                  "UnicodeDecodeError")


def _tf_message(err: BaseException) -> str:
    """TF's reason without its graph trace: the last line that says something."""
    if isinstance(err, UnicodeDecodeError):
        return "the model could not read the input values"
    text = getattr(err, "message", None) or str(err)
    lines = [ln.strip() for ln in text.splitlines()
             if ln.strip() and not ln.strip().startswith(("Graph execution error", "Detected at node"))]
    return f"the model refused the input: {lines[-1][:500] if lines else type(err).__name__}"


def _answer(outputs: list[dict[str, Any]], fmt: str) -> dict[str, Any]:
    """TF Serving's answer: a single output's values bare, several by name."""
    names = list(outputs[0]) if outputs else []
    single = names[0] if len(names) == 1 else None
    if fmt == "row":
        return {"predictions": [o[single] if single else o for o in outputs]}
    columns = {n: [o[n] for o in outputs] for n in names}
    return {"outputs": columns[single] if single else columns}


# ---------------------------------------------------------------------------- HTTP


def create_app(server: ModelServer, *, record: Path | None = None, address: tuple[str, int] | None = None):
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    def error(status: int, reason: str, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"error": reason}, status_code=status, headers=headers)

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > server.max_bytes:
            raise HTTPError(413, f"the request body has {declared} bytes: at most {server.max_bytes} "
                                 "(FACTORY_SERVING_MAX_REQUEST_BYTES)")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > server.max_bytes:
                raise HTTPError(413, f"the request body is over {server.max_bytes} bytes "
                                     "(FACTORY_SERVING_MAX_REQUEST_BYTES)")
            chunks.append(chunk)
        return b"".join(chunks)

    async def models(request: Request) -> Response:
        m = _MODEL_PATH.match(request.path_params["rest"])
        if m is None:
            return error(404, f"Malformed request: {request.method} {request.url.path}")
        line, version, tail = m["line"], m["version"], m["tail"]
        if request.method == "GET":
            try:
                if tail is None:
                    return JSONResponse(server.status(line, version))
                if tail == "/metadata":
                    return JSONResponse(server.metadata(line, version))
            except HTTPError as err:
                return error(err.status, err.reason)
            return error(404, f"Malformed request: GET {request.url.path}")
        if tail != ":predict":
            return error(400 if tail and tail.startswith(":") else 404,
                         f"this server answers :predict only, not {tail or 'POST ' + request.url.path}")
        arrived = time.perf_counter()
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        headers = {"X-Request-Id": request_id}
        code, label_line, label_version = 500, line if line in server.lines else "", ""
        try:
            if len(request_id) > MAX_REQUEST_ID or not request_id.isprintable():
                request_id = headers["X-Request-Id"] = uuid.uuid4().hex
                raise HTTPError(400, f"X-Request-Id must be at most {MAX_REQUEST_ID} printable characters")
            raw = await read_body(request)
            answer = await server.predict(line, version, raw, request_id, arrived, headers)
            code = 200
            return Response(_orjson().dumps(answer), media_type="application/json", headers=headers)
        except HTTPError as err:
            code = err.status
            return error(err.status, err.reason, headers)
        except Exception as err:  # noqa: BLE001 - nothing crashes the server
            log.exception("%s: predict failed", line)
            return error(500, f"internal error: {type(err).__name__}: {err}", headers)
        finally:
            label_version = headers.get("X-Model-Version", "")
            server.metrics.requests.labels(label_line, label_version, str(code)).inc()
            if label_version:
                server.metrics.seconds.labels(label_line, label_version).observe(time.perf_counter() - arrived)

    async def metrics(request: Request) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(server.metrics.text(), media_type=CONTENT_TYPE_LATEST)

    async def healthz(request: Request) -> Response:
        return JSONResponse(server.health())

    async def not_found(request: Request, exc: Exception) -> Response:
        return error(404, f"Malformed request: {request.method} {request.url.path}")

    async def failed(request: Request, exc: Exception) -> Response:
        return error(500, f"internal error: {type(exc).__name__}")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await server.refresh()
        poller = asyncio.create_task(server.poll())
        if record is not None and address is not None:
            from pipelines.storage import write_json_atomic

            record.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(record, {"pid": os.getpid(), "host": address[0], "port": address[1],
                                       "url": f"http://{address[0]}:{address[1]}", "started_at": time.time(),
                                       "store": str(server.store)})
        try:
            yield
        finally:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
            server.close()
            if record is not None:
                with contextlib.suppress(OSError, ValueError):
                    if json.loads(record.read_text()).get("pid") == os.getpid():
                        record.unlink()

    routes = [
        Route("/v1/models/{rest:path}", models, methods=["GET", "POST"]),
        Route("/monitoring/prometheus/metrics", metrics, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan, exception_handlers={404: not_found, 405: not_found,
                                                                           Exception: failed})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipelines.serving.server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default=os.environ.get("FACTORY_SERVING_HOST", DEFAULT_HOST))
    parser.add_argument("--port", type=int, default=_env_int("FACTORY_SERVING_PORT", DEFAULT_PORT))
    parser.add_argument("--home", type=Path, default=None, help="the factory home (default: FACTORY_HOME)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import uvicorn

    server = ModelServer(args.home)
    app = create_app(server, record=layout.model_server_record(server.home), address=(args.host, args.port))
    log.info("serving the store %s on http://%s:%s", server.store, args.host, args.port)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False,
                timeout_graceful_shutdown=10)


if __name__ == "__main__":
    main()
