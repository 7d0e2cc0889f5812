"""Training data for one run: the window of validated batches, checked against the
spec, split by a stable hash of the key, and sharded for the Horovod workers.

Runs on the Airflow side (pandas, pyarrow) before any worker starts, so bad input
(an empty window, a batch whose schema differs from the spec, parameters that
cannot work) fails here with a clear message. It writes, under the run folder::

    manifest.json                    what the workers and later stages read
    data/train/part-0000i.parquet    one shard per worker rank
    data/validation.parquet          early stopping
    data/eval.parquet                held out for the evaluation stage
    label_errors.json                suspected label errors in the train split (lines whose
                                     ``labelling.label_errors.mode`` is report or exclude)

The split is a function of the key only (MD5 of its text, bucketed into 100), so a
row lands in the same split in every run, whatever else is in the window.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.catalog import layout, ledger
from pipelines.catalog.layout import line_paths
from pipelines.catalog.records import read_manifest_data, write_manifest
from pipelines.config import max_epochs
from pipelines.specs import LineSpec, TrainingSpec, load_spec

if TYPE_CHECKING:
    import pandas as pd

SEED = 20261123


class TrainingInputError(ValueError):
    """Training cannot start: the message says why (no data, wrong schema, bad parameters)."""


class EmptyWindow(TrainingInputError):
    """No validated batch in the data window."""


@dataclass(frozen=True)
class RunParams:
    """The effective parameters of one training run: the spec's, overridden per run."""

    workers: int
    epochs: int
    batch_size: int
    learning_rate: float
    early_stopping_patience: int
    window_batches: int
    batches: tuple[str, ...] | None = None  # an explicit window (e.g. from a drift episode)
    learning_rate_decay: str = "none"

    def to_dict(self) -> dict[str, Any]:
        return {
            "workers": self.workers,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "learning_rate": self.learning_rate,
            "learning_rate_decay": self.learning_rate_decay,
            "early_stopping_patience": self.early_stopping_patience,
            "window_batches": self.window_batches,
            "batches": list(self.batches) if self.batches is not None else None,
            "seed": SEED,
        }


def resolve_params(spec: LineSpec, overrides: dict[str, Any] | None = None) -> RunParams:
    """The spec's training settings with per-run overrides (DAG params); ``None`` values
    keep the spec's. Raises :class:`TrainingInputError` naming the bad parameter."""
    t: TrainingSpec = spec.training
    o = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = set(o) - {"workers", "epochs", "batch_size", "learning_rate", "window_batches", "batches"}
    if unknown:
        raise TrainingInputError(f"unknown training parameter(s): {sorted(unknown)}")

    def integer(name: str, default: int, lo: int, hi: int) -> int:
        value = o.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise TrainingInputError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")
        return value

    lr = o.get("learning_rate", t.learning_rate)
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not 0 < lr <= 10:
        raise TrainingInputError(f"learning_rate must be a number in (0, 10], got {lr!r}")
    batches = o.get("batches")
    if batches is not None:
        if not isinstance(batches, list | tuple) or not batches or not all(isinstance(b, str) for b in batches):
            raise TrainingInputError(f"batches must be a non-empty list of batch ids, got {batches!r}")
        batches = tuple(batches)
    epochs = integer("epochs", t.epochs, 1, 1000)
    try:
        cap = max_epochs(spec.name)
    except ValueError as err:
        raise TrainingInputError(str(err)) from None
    return RunParams(
        workers=integer("workers", t.workers, 1, 64),
        epochs=epochs if cap is None else min(epochs, cap),
        batch_size=integer("batch_size", t.batch_size, 1, 65536),
        learning_rate=float(lr),
        early_stopping_patience=t.early_stopping_patience,
        window_batches=integer("window_batches", t.window.batches, 0, 100000),
        batches=batches,
        learning_rate_decay=t.learning_rate_decay,
    )


def window(spec: LineSpec, params: RunParams, home: Path | None = None) -> list[dict[str, Any]]:
    """The validated batches this run reads (ledger records, oldest first)."""
    records = [r for r in ledger.all_records(line_paths(spec.name, home)) if r.get("status") == ledger.VALIDATED]
    if params.batches is not None:
        by_id = {r["batch_id"]: r for r in records}
        missing = [b for b in params.batches if b not in by_id]
        if missing:
            raise TrainingInputError(
                f"{spec.name}: batch(es) {missing} are not validated; validated: {sorted(by_id) or 'none'}"
            )
        return [by_id[b] for b in params.batches]
    if params.window_batches:
        records = records[-params.window_batches :]
    if not records:
        raise EmptyWindow(
            f"{spec.name}: the data window is empty: no validated batch to train on "
            "(land batches and run the ingest DAG first)"
        )
    return records


_KINDS = {"integer": "iu", "double": "fiu", "string": "OSU", "image": "O"}


def check_schema(spec: LineSpec, frame: pd.DataFrame, batch_id: str) -> None:
    """A cleaned batch must have exactly the spec's columns with the spec's types."""
    import pandas as pd

    from pipelines.labelling import PROVENANCE_COLUMNS

    names = spec.schema.names
    optional = PROVENANCE_COLUMNS if spec.labelling is not None else ()
    missing = [n for n in names if n not in frame.columns]
    extra = [c for c in frame.columns if c not in names and c not in optional]
    problems = []
    if missing:
        problems.append(f"missing column(s) {missing}")
    if extra:
        problems.append(f"unexpected column(s) {extra}")
    for f in spec.schema.fields:
        if f.name in frame.columns:
            dtype = frame[f.name].dtype
            ok = (
                pd.api.types.is_string_dtype(dtype)
                if f.type == "string"
                else dtype.kind in _KINDS.get(f.type, "")
            )
            if not ok:
                problems.append(f"{f.name} is {dtype}, the spec says {f.type}")
    if problems:
        raise TrainingInputError(
            f"{spec.name}: batch {batch_id!r} does not match the spec's schema (v{spec.version}): "
            + "; ".join(problems)
        )


def split_bucket(keys: pd.DataFrame) -> pd.Series:
    """0..99 per row, from the MD5 of the key's text: stable across runs and machines."""
    text = keys.astype(str).agg("|".join, axis=1) if keys.shape[1] > 1 else keys.iloc[:, 0].astype(str)
    return text.map(lambda s: int(hashlib.md5(s.encode()).hexdigest()[:8], 16) % 100)


def _label01(spec: LineSpec, values: pd.Series) -> pd.Series:
    positive = str(spec.schema.label.positive)
    return (values.astype(str) == positive).astype("int64")


def _write(frame: pd.DataFrame, path: Path) -> None:
    """Plain Parquet: no pandas metadata, plain strings (the ML side reads it with
    pandas 1.5 and pyarrow 10)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame.reset_index(drop=True), preserve_index=False)
    fields = [pa.field(f.name, pa.string() if pa.types.is_large_string(f.type) else f.type) for f in table.schema]
    table = table.cast(pa.schema(fields)).replace_schema_metadata(None)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


@dataclass
class _Prepared:
    """One modality's split of the window: the data parts and its manifest sections."""

    parts: dict[str, pd.DataFrame]  # train, validation, eval
    sections: dict[str, Any]  # label, features, rows (read, ...) and what else the modality adds
    batch_of: pd.Series | None = None  # the batch each train row came from (tabular)


def _read_window(spec: LineSpec, records: list[dict[str, Any]], **options: Any) -> list[tuple[str, pd.DataFrame]]:
    """Each window batch's clean rows (``options``: pandas.read_parquet's)."""
    import pandas as pd

    frames = []
    for r in records:
        path = Path(r["cleaning"]["clean_path"])
        if not path.exists():
            raise TrainingInputError(f"{spec.name}: batch {r['batch_id']!r} is validated but its data is gone: {path}")
        frames.append((r["batch_id"], pd.read_parquet(path, **options)))
    return frames


def _prepare_tabular(spec: LineSpec, records: list[dict[str, Any]]) -> _Prepared:
    """Tabular rows: the key hash cuts eval, validation and train; numerics get their train stats."""
    import numpy as np
    import pandas as pd

    from pipelines.labelling import LABEL_SOURCE, MACHINE

    frames = []
    for batch_id, frame in _read_window(spec, records):
        frame = _label_as_declared(spec, frame)
        check_schema(spec, frame, batch_id)
        frames.append(_with_source(spec, frame).assign(_batch=batch_id))
    data = pd.concat(frames, ignore_index=True)
    rows_read = len(data)
    data, unlabelled = merge_labels(spec, data)
    label = spec.schema.label.name
    data[label] = _label01(spec, data[label])

    bucket = split_bucket(data[spec.schema.key])
    cut_eval = spec.training.split.eval_percent
    cut_val = cut_eval + spec.training.split.validation_percent
    # Machine labels are the model's own guesses: they may be trained on (as the spec
    # says), but validation and evaluation judge a model on labels it did not make.
    judged = data[LABEL_SOURCE] != MACHINE
    parts = {
        "eval": data[(bucket < cut_eval) & judged],
        "validation": data[(bucket >= cut_eval) & (bucket < cut_val) & judged],
        "train": data[bucket >= cut_val],
    }
    train, by_source = _machine_labels(spec, parts["train"])
    batch_of = train.pop("_batch")
    parts = {
        "eval": parts["eval"][spec.schema.names], "validation": parts["validation"][spec.schema.names],
        "train": train.drop(columns=[LABEL_SOURCE]),
    }
    train = parts["train"]
    if train[label].nunique() < 2 or parts["validation"][label].nunique() < 2:
        raise TrainingInputError(
            f"{spec.name}: the window ({len(data)} rows) needs both classes in its train and validation splits"
        )
    model = spec.training.model
    features = []
    for f in spec.schema.features:
        categorical = f.type == "string" or f.categories is not None
        entry: dict[str, Any] = {
            "name": f.name,
            "type": f.type,
            "kind": "categorical" if categorical else "numeric",
            "categories": [str(c) for c in f.categories] if categorical and f.categories else None,
            "log": f.name in model.log_features,
            "mean": None,
            "std": None,
        }
        if not categorical:
            x = train[f.name].astype("float64")
            if entry["log"]:
                x = np.log1p(x.clip(lower=0))
            std = float(x.std(ddof=0))
            entry["mean"], entry["std"] = float(x.mean()), (std if std > 0 else 1.0)
        features.append(entry)
    sections = {
        "label": {"name": label, "positive": str(spec.schema.label.positive), "positive_rate": float(train[label].mean())},
        "features": features,
        "rows": {"read": rows_read, **({"by_source": by_source, "unlabelled": unlabelled}
                                       if spec.labelling is not None else {})},
    }
    return _Prepared(parts, sections, batch_of)


def _label_as_declared(spec: LineSpec, frame: pd.DataFrame) -> pd.DataFrame:
    """An integer label with missing values (a labelling line's unlabelled rows) reads from
    Parquet as float64 (1.0, NaN): back to integers, nullable, so the schema check passes
    and the classes compare as the spec writes them ("1", not "1.0")."""
    field = spec.schema.field(spec.schema.label.name)
    column = frame.get(field.name)
    if spec.labelling is None or column is None or field.type != "integer" or column.dtype.kind != "f":
        return frame
    values = column.dropna()
    if not (values == values.round()).all():
        return frame  # not integers: the schema check names the type
    return frame.assign(**{field.name: column.astype("Int64")})


def _with_source(spec: LineSpec, frame: pd.DataFrame) -> pd.DataFrame:
    """The spec's columns and ``label_source``: a batch cleaned without the provenance
    columns has given labels where it has labels."""
    import numpy as np
    import pandas as pd

    from pipelines.labelling import GIVEN, LABEL_SOURCE

    out = frame[spec.schema.names].copy()
    if LABEL_SOURCE in frame.columns:
        out[LABEL_SOURCE] = frame[LABEL_SOURCE].astype(object).where(frame[LABEL_SOURCE].notna(), None)
    else:
        labelled = frame[spec.schema.label.name].notna()
        out[LABEL_SOURCE] = pd.Series(np.where(labelled, GIVEN, None), index=frame.index, dtype=object)
    return out


# Which of a key's rows is its truth: a label beats none; a given (data-native) or human
# label beats a machine one; among equals the later batch wins.
LABEL_PRIORITY = {"given": 2, "human": 2, "machine": 1}


def merge_labels(spec: LineSpec, data: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """One row per key, by :data:`LABEL_PRIORITY` then batch order (``data`` is in window
    order, oldest first); rows still without a label are dropped. Returns the rows and
    how many keys were left unlabelled."""
    from pipelines.labelling import LABEL_SOURCE

    label = spec.schema.label.name
    rank = data[LABEL_SOURCE].map(LABEL_PRIORITY).fillna(0).where(data[label].notna(), 0)
    ordered = data.assign(_rank=rank.astype(int), _pos=range(len(data)))
    ordered = ordered.sort_values(["_rank", "_pos"], kind="stable")
    merged = ordered.drop_duplicates(subset=spec.schema.key, keep="last").sort_values("_pos")
    unlabelled = merged[label].isna()
    return merged[~unlabelled].drop(columns=["_rank", "_pos"]).reset_index(drop=True), int(unlabelled.sum())


def _machine_labels(spec: LineSpec, train: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """The train split as the spec's ``labelling.machine_labels`` says (ignore: machine-labelled
    rows left out; downweight: a ``_weight`` column, ``machine_weight`` for them and 1 for the
    rest; use: as they are), and its rows by label source."""
    from pipelines.labelling import LABEL_SOURCE, MACHINE, SOURCES

    labelling = spec.labelling
    machine = train[LABEL_SOURCE] == MACHINE
    if labelling is not None and labelling.machine_labels == "ignore":
        train = train[~machine]
    elif labelling is not None and labelling.machine_labels == "downweight":
        train = train.assign(_weight=machine.map({True: labelling.machine_weight, False: 1.0}).astype("float64"))
    counts = train[LABEL_SOURCE].value_counts()
    return train, {s: int(counts.get(s, 0)) for s in SOURCES}


def _prepare_image(spec: LineSpec, records: list[dict[str, Any]]) -> _Prepared:
    """Image rows (key, encoded image, label): unlabelled rows are left out and counted; the
    ``eval_batches`` are the eval split whole; the rest is cut train/validation by the key hash.
    A row's label becomes its class's index in the label field's categories."""
    import pandas as pd

    key, label = list(spec.schema.key), spec.schema.label.name
    image = spec.schema.features[0]
    frames = []
    # nullable types: a missing label stays missing (not NaN in a float column)
    for batch_id, frame in _read_window(spec, records, dtype_backend="numpy_nullable"):
        # the cleaner's quality columns (sha256, width, ...) travel with the rows; training reads these
        check_schema(spec, frame[[c for c in frame.columns if c in spec.schema.names]], batch_id)
        frames.append(frame[spec.schema.names].assign(_batch=batch_id))
    data = pd.concat(frames, ignore_index=True)
    rows_read = len(data)
    data = data.drop_duplicates(subset=key, keep="last").reset_index(drop=True)
    unlabelled = data[label].isna()
    data = data[~unlabelled].reset_index(drop=True)

    categories = spec.schema.field(label).categories or []
    index = {str(c): i for i, c in enumerate(categories)}
    as_text = data[label].astype(str)
    codes = as_text.map(index)
    if codes.isna().any():
        bad = sorted(set(as_text[codes.isna()]))[:5]
        raise TrainingInputError(f"{spec.name}: label value(s) {bad} are not among the classes {categories}")
    data[label] = codes.astype("int64")

    in_eval = data["_batch"].isin(spec.training.split.eval_batches)
    rest = data[~in_eval]
    bucket = split_bucket(rest[key])
    cut_val = spec.training.split.validation_percent
    columns = [*key, image.name, label]
    parts = {
        "eval": data[in_eval][columns],
        "validation": rest[bucket < cut_val][columns],
        "train": rest[bucket >= cut_val][columns],
    }
    if parts["train"][label].nunique() < 2 or parts["validation"][label].nunique() < 2:
        raise TrainingInputError(
            f"{spec.name}: the window ({len(rest)} labelled training rows) needs two or more classes "
            "in its train and validation splits"
        )
    counts = parts["train"][label].value_counts()
    sections = {
        "modality": "image",
        "task": spec.task,
        "label": {
            "name": label,
            "classes": list(categories),
            "class_names": list(spec.schema.label.names or [str(c) for c in categories]),
            "train_counts": [int(counts.get(i, 0)) for i in range(len(categories))],
        },
        "features": [{"name": image.name, "type": "image", "kind": "image", "categories": None, "log": False,
                      "mean": None, "std": None, "shape": list(image.shape)}],
        "rows": {"read": rows_read, "unlabelled": int(unlabelled.sum())},
        "eval_batches": sorted(set(data.loc[in_eval, "_batch"])),
    }
    return _Prepared(parts, sections)


# each modality's preparation: the spec's ``modality`` picks it
PREPARERS = {"tabular": _prepare_tabular, "image": _prepare_image}


def _check_labels(spec: LineSpec, prepared: _Prepared, run_dir: Path, run_id: str, home: Path | None) -> None:
    """Label errors in the train split (``labelling.label_errors``, tabular lines): the
    report goes to the run folder and the line's latest; mode ``exclude`` leaves the
    suspected rows out of the train split (validation and eval keep theirs); the manifest
    gets the ``label_errors`` section."""
    from pipelines.catalog.records import write_label_errors

    settings = spec.labelling.label_errors if spec.labelling is not None else None
    if settings is None or settings.mode == "off" or spec.modality != "tabular":
        layout.label_errors_path(run_dir).unlink(missing_ok=True)  # a retry's stale report
        return
    from pipelines.labelling.errors import detect_label_errors

    train = prepared.parts["train"]
    report = detect_label_errors(spec, train, prepared.sections["features"], batch_of=prepared.batch_of,
                                 run_id=run_id)
    if settings.mode == "exclude" and report.suspects:
        train = prepared.parts["train"] = train.drop(index=report.suspects)
        label = prepared.sections["label"]
        if label.get("positive_rate") is not None:
            label["positive_rate"] = float(train[label["name"]].mean())
    write_label_errors(layout.label_errors_path(run_dir), report)
    write_label_errors(layout.latest_label_errors_path(spec.name, home), report)
    prepared.sections["label_errors"] = {"mode": report.mode, "found": report.found, "excluded": report.excluded,
                                         "rows_checked": report.rows_checked}


def prepare_run(
    line: str, run_dir: Path, overrides: dict[str, Any] | None = None, home: Path | None = None,
    *, run_id: str | None = None, spec: LineSpec | None = None,
) -> dict[str, Any]:
    """Write the run's data and manifest; return the manifest. Idempotent for one
    run folder: a retried task rewrites the same files (and keeps its checkpoints).
    ``run_id``: the exact run id the manifest records (default: the folder's name).

    The settings are the spec's with the line's tuned settings over them
    (:func:`pipelines.tuning.params.tuned_spec`; their provenance goes into the manifest
    as ``tuned``), and ``overrides`` over both. ``spec``: train with exactly this spec
    instead (a tuning trial's settings), no tuned settings applied."""
    import numpy as np

    from pipelines.tuning.params import tuned_spec

    tuned = None
    if spec is None:
        spec, tuned = tuned_spec(load_spec(line), home)
    params = resolve_params(spec, overrides)
    records = window(spec, params, home)
    prepared = PREPARERS[spec.modality](spec, records)
    parts = prepared.parts
    _check_labels(spec, prepared, Path(run_dir), run_id if run_id is not None else Path(run_dir).name, home)
    train = parts["train"]
    per_worker = len(train) // params.workers
    if per_worker < params.batch_size:
        raise TrainingInputError(
            f"{line}: {len(train)} training rows are too few for {params.workers} workers with batch size "
            f"{params.batch_size} (each worker needs at least one full batch)"
        )

    # Shards: a seeded shuffle, then round-robin, so each rank gets a near-equal,
    # representative part and reads only its own file.
    order = np.random.default_rng(SEED).permutation(len(train))
    shuffled = train.iloc[order]
    shards = [shuffled.iloc[i :: params.workers] for i in range(params.workers)]

    run_dir = Path(run_dir)
    for old in layout.train_shards(run_dir):
        old.unlink()
    for i, shard in enumerate(shards):
        _write(shard, layout.train_shard_path(run_dir, i))
    _write(parts["validation"], layout.validation_data_path(run_dir))
    _write(parts["eval"], layout.eval_data_path(run_dir))

    sections = dict(prepared.sections)
    rows = {**sections.pop("rows"), "train": len(train), "validation": len(parts["validation"]),
            "eval": len(parts["eval"])}
    manifest = {
        "line": line,
        "spec_version": spec.version,
        "run_id": run_id if run_id is not None else run_dir.name,  # exact: the folder name may be hashed
        "batches": [r["batch_id"] for r in records],
        "key": list(spec.schema.key),
        "label": sections.pop("label"),
        "features": sections.pop("features"),
        "rows": rows,
        "shards": [len(s) for s in shards],
        "params": params.to_dict(),
        "model": spec.training.model.model_dump(),
        **sections,
    }
    if tuned is not None:
        manifest["tuned"] = tuned
    write_manifest(run_dir, manifest)
    return manifest


def read_manifest(run_dir: Path) -> dict[str, Any]:
    """The run's manifest as written (:func:`pipelines.training.manifest.load_manifest` validates it)."""
    manifest = read_manifest_data(Path(run_dir))
    if manifest is None:
        raise TrainingInputError(f"{run_dir}: no training manifest")
    return manifest
