"""A client of TF Serving's REST API, as the docs show it: the same calls work against the
factory's model server and the deployment's TF Serving. Plain ``httpx``; no TensorFlow.

    from pipelines.serving.client import predict
    answer = predict("http://127.0.0.1:8501", "employment", [{"AGEP": 35, ...}])
    answer.version, answer.predictions      # "3", [{"probabilities": [0.91], "logits": [2.3]}]

:func:`example_instances` turns rows of a line's cleaned data into the instances a client
sends (named raw features; images as ``{"b64": ...}``): what ``factory run`` asks the
served model after a line has run.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SIGNATURE = "predict_features"  # named raw features in, as a client has them


class ServingError(RuntimeError):
    """The server answered with an error (its ``{"error": ...}``) or not at all."""


@dataclass(frozen=True)
class Answer:
    version: str | None  # the X-Model-Version header (the factory's server; TF Serving has none)
    request_id: str | None
    predictions: list[Any]


def predict(url: str, line: str, instances: list[dict[str, Any]], *, version: int | None = None,
            signature: str = SIGNATURE, request_id: str | None = None, timeout: float = 30.0) -> Answer:
    """``POST /v1/models/<line>[/versions/<n>]:predict`` in the row format."""
    import httpx

    path = f"/v1/models/{line}" + (f"/versions/{version}" if version is not None else "") + ":predict"
    headers = {"X-Request-Id": request_id} if request_id else {}
    try:
        r = httpx.post(url.rstrip("/") + path, json={"signature_name": signature, "instances": instances},
                       headers=headers, timeout=timeout)
    except httpx.HTTPError as err:
        raise ServingError(f"{url}: no answer ({type(err).__name__}: {err})") from None
    if r.status_code != 200:
        try:
            reason = r.json().get("error", r.text)
        except ValueError:
            reason = r.text
        raise ServingError(f"{r.status_code}: {reason}")
    return Answer(r.headers.get("X-Model-Version"), r.headers.get("X-Request-Id"), r.json()["predictions"])


def served_version(url: str, line: str, timeout: float = 5.0) -> str | None:
    """The version ``GET /v1/models/<line>`` reports AVAILABLE, or None."""
    import httpx

    try:
        r = httpx.get(f"{url.rstrip('/')}/v1/models/{line}", timeout=timeout)
    except httpx.HTTPError:
        return None
    if r.status_code != 200:
        return None
    states = [s for s in r.json().get("model_version_status", []) if s.get("state") == "AVAILABLE"]
    return states[0]["version"] if states else None


def wait_for_version(url: str, line: str, version: int | str, timeout_s: float = 60.0) -> bool:
    """Wait until the server serves ``version`` of ``line`` (it polls the store)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if served_version(url, line) == str(version):
            return True
        time.sleep(1)
    return False


def _json_value(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return {"b64": base64.b64encode(bytes(value)).decode()}
    return value.item() if hasattr(value, "item") else value


def example_instances(features: list[str], clean_path: Path, n: int = 3) -> list[dict[str, Any]]:
    """The first ``n`` rows of a cleaned batch as instances of the model's raw ``features``
    (the names in its model info)."""
    import pyarrow.parquet as pq

    files = sorted(Path(clean_path).glob("*.parquet")) or [Path(clean_path)]
    table = pq.read_table(files[0], columns=features).slice(0, n)
    return [{k: _json_value(v) for k, v in row.items()} for row in table.to_pylist()]
