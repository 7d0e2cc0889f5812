"""One loaded version of a line's model: its signatures, what each expects, and the JSON
both ways (ML environment: imports TensorFlow).

A request is checked here against the version's inputs before it joins a micro-batch,
so that one bad request never fails the others of its batch: names against the
signature's inputs, values against the model info's feature types (``integer``,
``double``, ``string``, ``image``). Binary values travel in JSON as ``{"b64": ...}``,
as in TF Serving's REST API; so do bytes outputs.
"""

from __future__ import annotations

import base64
import binascii
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.catalog.records import read_model_info

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
FLOAT32_MAX = 3.4028234663852886e38
INIT_OP = "__saved_model_init_op"


class BadInput(ValueError):
    """The request does not fit the signature: answered 400 with this message."""


def _tf():
    import tensorflow as tf

    return tf


@dataclass(frozen=True)
class Input:
    name: str
    # integer | double (float32) | float64 | string | image | example (a serialized tf.Example) | binary
    kind: str


def _check_value(inp: Input, value: Any, where: str) -> Any:
    """The value as the signature takes it, or :class:`BadInput`."""
    kind = inp.kind
    if kind == "integer":
        if isinstance(value, bool) or not isinstance(value, int):
            raise BadInput(f"{where}: {inp.name!r} must be an integer, got {_shown(value)}")
        if not INT64_MIN <= value <= INT64_MAX:
            raise BadInput(f"{where}: {inp.name!r} is out of the int64 range")
        return value
    if kind in ("double", "float64"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise BadInput(f"{where}: {inp.name!r} must be a number, got {_shown(value)}")
        if not math.isfinite(value):
            raise BadInput(f"{where}: {inp.name!r} must be finite")
        if kind == "double" and abs(value) > FLOAT32_MAX:  # the model would see infinity
            raise BadInput(f"{where}: {inp.name!r} = {value!r} is beyond the float32 range of the model's input")
        return float(value)
    if isinstance(value, dict):
        if set(value) != {"b64"} or not isinstance(value["b64"], str):
            raise BadInput(f"{where}: {inp.name!r}: a binary value is {{\"b64\": \"<base64>\"}}, got {_shown(value)}")
        try:
            data = base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, ValueError):
            raise BadInput(f"{where}: {inp.name!r}: {{\"b64\": ...}} is not valid base64") from None
        if kind == "example":
            _check_example(data, inp.name, where)
        return data
    if kind == "string" and isinstance(value, str):
        return value.encode()
    expected = "a string" if kind == "string" else '{"b64": "<base64>"}'
    raise BadInput(f"{where}: {inp.name!r} must be {expected}, got {_shown(value)}")


def _check_column(inp: Input, values: list[Any]) -> list[Any] | None:
    """A whole column checked at once, as :func:`_check_value` would pass each value; None
    when some value does not pass (the caller then finds it, value by value, to name it).
    The common case of a large request: a few C-speed passes instead of a call per value."""
    kind = inp.kind
    if kind == "integer":
        if not all(type(v) is int for v in values) or min(values) < INT64_MIN or max(values) > INT64_MAX:
            return None
        return values
    if kind in ("double", "float64"):
        if not all(type(v) is float or type(v) is int for v in values):
            return None
        floats = [float(v) for v in values]
        low, high = min(floats), max(floats)
        if not (math.isfinite(low) and math.isfinite(high)) or any(map(math.isnan, floats)):
            return None
        if kind == "double" and max(-low, high) > FLOAT32_MAX:
            return None
        return floats
    if kind == "string" and all(type(v) is str for v in values):
        return [v.encode() for v in values]
    return None  # binary values: checked one by one (base64, tf.Example)


def _check_example(data: bytes, name: str, where: str) -> None:
    from google.protobuf.message import DecodeError
    from tensorflow.core.example.example_pb2 import Example

    try:
        Example.FromString(data)
    except DecodeError:
        raise BadInput(f"{where}: {name!r} is not a serialized tf.Example") from None


def _shown(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"


def _json_value(value: Any) -> Any:
    """A numpy scalar/array element as plain JSON (bytes as {"b64": ...})."""
    if isinstance(value, bytes):
        return {"b64": base64.b64encode(value).decode()}
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    return value


class Signature:
    """A signature of a loaded version and its inputs, in a fixed order."""

    def __init__(self, name: str, fn: Any, inputs: list[Input]) -> None:
        self.name = name
        self.fn = fn
        self.inputs = inputs
        self.by_name = {i.name: i for i in inputs}
        self._dtypes = dict(fn.structured_input_signature[1].items())

    def columns(self, body: dict[str, Any]) -> tuple[dict[str, list[Any]], list[dict[str, Any]], str]:
        """(checked columns, the rows as sent, "row"|"columnar") of a request body."""
        has_instances, has_inputs = "instances" in body, "inputs" in body
        if has_instances == has_inputs:
            raise BadInput('the request must have exactly one of "instances" (row format) or "inputs" (columnar format)')
        single = self.inputs[0].name if len(self.inputs) == 1 else None
        if has_instances:
            rows = body["instances"]
            if not isinstance(rows, list) or not rows:
                raise BadInput('"instances" must be a non-empty list')
            if single is not None:
                rows = [r if isinstance(r, dict) and set(r) == {single} else {single: r} for r in rows]
            for i, row in enumerate(rows):
                if not isinstance(row, dict):
                    raise BadInput(f"instance {i} must be an object of named inputs, got {_shown(row)}")
                self._check_names(set(row), f"instance {i}")
            sent = rows
            fmt = "row"
        else:
            cols = body["inputs"]
            if single is not None and not isinstance(cols, dict):
                cols = {single: cols}
            if not isinstance(cols, dict):
                raise BadInput('"inputs" must be an object of named inputs')
            self._check_names(set(cols), "inputs")
            lengths = {name: len(v) if isinstance(v, list) else None for name, v in cols.items()}
            if any(n is None for n in lengths.values()):
                raise BadInput(f'"inputs": every input must be a list, not {sorted(k for k, n in lengths.items() if n is None)}')
            if len(set(lengths.values())) != 1 or not next(iter(lengths.values())):
                raise BadInput(f'"inputs": the inputs must be non-empty lists of one length, got {lengths}')
            n = next(iter(lengths.values()))
            sent = [{name: cols[name][i] for name in cols} for i in range(n)]
            fmt = "columnar"
        out = {}
        for inp in self.inputs:
            values = cols[inp.name] if fmt == "columnar" else [row[inp.name] for row in sent]
            checked = _check_column(inp, values)
            if checked is None:  # some value does not fit: the first one, with its place
                checked = [_check_value(inp, v, f"instance {i}" if fmt == "row" else f'"inputs"[{i}]')
                           for i, v in enumerate(values)]
            out[inp.name] = checked
        return out, sent, fmt

    def _check_names(self, names: set[str], where: str) -> None:
        expected = set(self.by_name)
        missing, unknown = sorted(expected - names), sorted(names - expected)
        if missing or unknown:
            parts = []
            if missing:
                parts.append(f"missing input(s) {missing}")
            if unknown:
                parts.append(f"unknown input(s) {unknown}")
            raise BadInput(f"{where}: {' and '.join(parts)} for signature {self.name!r}; "
                           f"it takes {sorted(expected)}")

    def __call__(self, columns: dict[str, list[Any]]) -> dict[str, Any]:
        """Call the signature on whole columns; numpy outputs by name."""
        tf = _tf()
        tensors = {name: tf.constant(values, dtype=self._dtypes[name].dtype) for name, values in columns.items()}
        return {name: t.numpy() for name, t in self.fn(**tensors).items()}

    def warm(self) -> None:
        """One call on no rows: traces and runs the graph once before any request."""
        tf = _tf()
        self.fn(**{name: tf.zeros([0], spec.dtype) for name, spec in self._dtypes.items()})


def split_rows(outputs: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """Per-row plain-JSON outputs of a signature call on ``n`` rows."""
    rows: list[dict[str, Any]] = [{} for _ in range(n)]
    for name, array in outputs.items():
        values = array.tolist()
        if len(values) != n:
            raise RuntimeError(f"output {name!r} has {len(values)} rows for {n} inputs")
        for row, value in zip(rows, values, strict=True):
            row[name] = _json_value(value)
    return rows


def signature_defs(version_dir: Path) -> dict[str, Any]:
    """The SavedModel's signature defs as TF Serving's metadata answer prints them."""
    from google.protobuf import json_format
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((Path(version_dir) / "saved_model.pb").read_bytes())
    out = {}
    for graph in saved.meta_graphs:
        for name, sig in graph.signature_def.items():
            if name != INIT_OP:
                out[name] = json_format.MessageToDict(sig, preserving_proto_field_name=True,
                                                      including_default_value_fields=True)
    return out


_KINDS = {"integer", "double", "string", "image"}


class Servable:
    """A version of a line's model, loaded and ready to call."""

    def __init__(self, line: str, version: int, path: Path) -> None:
        tf = _tf()
        self.line = line
        self.version = version
        self.path = Path(path)
        self.info = read_model_info(self.path) or {}
        self.model = tf.saved_model.load(str(self.path))
        self.metadata = signature_defs(self.path)
        features = {f["name"]: f.get("type") for f in self.info.get("features") or [] if isinstance(f, dict)}
        self.signatures: dict[str, Signature] = {}
        for name, fn in self.model.signatures.items():
            specs = fn.structured_input_signature[1]
            inputs = []
            for arg, spec in sorted(specs.items()):
                kind = features.get(arg)
                if kind not in _KINDS:  # not a feature of the model info: by the tensor's dtype
                    kind = {tf.int64: "integer", tf.int32: "integer", tf.float32: "double",
                            tf.float64: "double"}.get(spec.dtype, "binary")
                    if kind == "binary" and arg == "examples" and len(specs) == 1:
                        kind = "example"
                if kind == "double" and spec.dtype == tf.float64:
                    kind = "float64"
                inputs.append(Input(arg, kind))
            self.signatures[name] = Signature(name, fn, inputs)

    def warm(self) -> None:
        for sig in self.signatures.values():
            sig.warm()
