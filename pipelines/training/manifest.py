"""A training run's manifest (``<run>/manifest.json``): what the workers, the export and
the gate read about a run, validated by pydantic.

:mod:`pipelines.training.prepare` writes it (through the catalog); :func:`load_manifest`
reads and validates it and raises :class:`ManifestError` naming the field at fault.
Plain Python and pydantic: no TensorFlow, so a run is validated before anything pays
for importing it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    field_validator,
)
from pydantic_core import PydanticCustomError

from pipelines.catalog.layout import TRAINING_MANIFEST as MANIFEST
from pipelines.catalog.records import RecordError, read_manifest_data


class ManifestError(ValueError):
    """The run's manifest is missing or cannot be used; the message names the field."""


# --------------------------------------------------------------------------- manifest
#
# The pydantic models below are manifest.json's schema. Each section ignores keys it does
# not use (prepare.py also writes rows.read, label.positive, ...). Numbers are JSON's: an
# integer field takes no bool, float or string; a number field takes an integer or a
# finite float, no bool. A failing field reports the rule it breaks, e.g.
# ``manifest.json: model.dropout: must be in [0, 1)``.

FeatureType = Literal["integer", "double", "string", "image"]
FeatureKind = Literal["numeric", "categorical", "image"]
Modality = Literal["tabular", "image"]
Task = Literal["binary_classification", "multiclass_classification"]
ModelKind = Literal["tabular_dnn", "cnn"]
FEATURE_TYPES: tuple[str, ...] = get_args(FeatureType)
FEATURE_KINDS: tuple[str, ...] = get_args(FeatureKind)


def _problem(message: str) -> PydanticCustomError:
    """A validation error whose text is ``message``, as is."""
    return PydanticCustomError("manifest", "{reason}", {"reason": message})


def _says(message: str) -> WrapValidator:
    """Report any failure of the annotated value as ``message`` (``{input!r}``: the value)."""

    def check(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        try:
            return handler(value)
        except ValidationError:
            raise _problem(message.format(input=value)) from None

    return WrapValidator(check)


_Finite = Annotated[float, Strict(), Field(allow_inf_nan=False)]
_String = Annotated[str, Strict(), _says("must be a string, got {input!r}")]
_Integer = Annotated[int, Strict(), _says("must be an integer, got {input!r}")]
_Count = Annotated[int, Strict(), Field(ge=0), _says("must be an integer >= 0, got {input!r}")]
_AtLeastOne = Annotated[int, Strict(), Field(ge=1), _says("must be an integer >= 1, got {input!r}")]


class _Section(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Feature(_Section):
    """One model input: numeric (scaled by its train mean and std, optionally after
    ``log1p``), categorical (looked up in its categories) or image (encoded PNG bytes
    of ``shape`` [height, width, channels]). What does not apply to the feature's kind
    is None (categories of a numeric, mean and std of a categorical or an image)."""

    name: Annotated[str, Strict(), Field(min_length=1), _says("needs a name")]
    type: Annotated[FeatureType, _says(f"must be one of {list(FEATURE_TYPES)}, got {{input!r}}")]
    kind: Annotated[FeatureKind, _says(f"must be one of {list(FEATURE_KINDS)}, got {{input!r}}")]
    log: Annotated[bool, Strict(), _says("must be true or false")] = False
    categories: Annotated[
        tuple[Annotated[str, Strict()], ...] | None, _says("categories must be strings")
    ] = Field(None, validate_default=True)
    mean: Annotated[_Finite | None, _says("a numeric feature needs a finite mean, got {input!r}")] = Field(
        None, validate_default=True
    )
    std: Annotated[
        Annotated[_Finite, Field(ge=0)] | None, _says("a numeric feature needs a finite std >= 0, got {input!r}")
    ] = Field(None, validate_default=True)
    shape: Annotated[
        tuple[Annotated[int, Strict(), Field(ge=1)], ...] | None,
        _says("must be [height, width, channels] (positive integers), got {input!r}"),
    ] = Field(None, validate_default=True)

    @field_validator("kind")
    @classmethod
    def _kind_fits_type(cls, kind: str, info: ValidationInfo) -> str:
        allowed = {"categorical": ("string", "integer"), "numeric": ("integer", "double"), "image": ("image",)}[kind]
        ftype = info.data.get("type")  # absent when the type itself is wrong
        if ftype is not None and ftype not in allowed:
            raise _problem(f"a {kind} feature must be of type {' or '.join(allowed)}")
        return kind

    @field_validator("log")
    @classmethod
    def _log_numeric_only(cls, log: bool, info: ValidationInfo) -> bool:
        if log and info.data.get("kind") == "categorical":
            raise _problem("only numeric features can be log-transformed")
        return log

    @field_validator("categories")
    @classmethod
    def _categories(cls, cats: tuple[str, ...] | None, info: ValidationInfo) -> tuple[str, ...] | None:
        if info.data.get("kind") != "categorical":
            return None
        if not cats:
            raise _problem("a categorical needs categories")
        if info.data.get("type") == "integer" and not all(re.fullmatch(r"-?[0-9]+", c) for c in cats):
            raise _problem("an integer categorical's categories must be integers written as strings")
        if len(set(cats)) != len(cats):
            raise _problem("categories must be unique")
        return cats

    @field_validator("mean", "std")
    @classmethod
    def _numeric_stats(cls, value: float | None, info: ValidationInfo) -> float | None:
        if info.data.get("kind") != "numeric":
            return None
        if value is None:
            rule = "a finite mean" if info.field_name == "mean" else "a finite std >= 0"
            raise _problem(f"a numeric feature needs {rule}, got None")
        return value

    @field_validator("shape")
    @classmethod
    def _image_shape(cls, shape: tuple[int, ...] | None, info: ValidationInfo) -> tuple[int, ...] | None:
        if info.data.get("kind") != "image":
            return None
        if shape is None or len(shape) != 3:
            raise _problem(f"an image feature needs a shape [height, width, channels], got {shape!r}")
        return shape

    @property
    def scale(self) -> float:
        """The standard deviation used for scaling (1 for a constant feature)."""
        return self.std if self.std else 1.0

    def default(self) -> int | float | str:
        """What a missing value in a tf.Example stands for: the train mean (raw scale), or OOV."""
        if self.kind == "categorical":
            if self.type == "integer":  # a code none of the categories has: out of vocabulary
                return min(int(c) for c in self.categories) - 1
            return ""
        raw = math.expm1(self.mean) if self.log else self.mean
        return int(round(raw)) if self.type == "integer" else float(raw)


class Params(_Section):
    workers: _AtLeastOne
    epochs: _AtLeastOne
    batch_size: _AtLeastOne
    learning_rate: Annotated[_Finite, Field(gt=0), _says("must be > 0, got {input!r}")]
    learning_rate_decay: Annotated[
        Literal["none", "cosine"], _says("must be 'none' or 'cosine', got {input!r}")
    ] = "none"
    early_stopping_patience: _AtLeastOne
    seed: _Integer


class Augmentation(_Section):
    """Random changes to training images (``cnn``); the shares and degrees of the spec."""

    horizontal_flip: Annotated[bool, Strict(), _says("must be true or false")] = False
    translate: Annotated[_Finite, Field(ge=0, le=0.5), _says("must be in [0, 0.5]")] = 0.0
    rotate_degrees: Annotated[_Finite, Field(ge=0, le=180), _says("must be in [0, 180]")] = 0.0
    zoom: Annotated[_Finite, Field(ge=0, le=0.5), _says("must be in [0, 0.5]")] = 0.0

    @property
    def any(self) -> bool:
        return self.horizontal_flip or bool(self.translate or self.rotate_degrees or self.zoom)


class ModelConfig(_Section):
    kind: Annotated[ModelKind, _says("unsupported model {input!r}")] = "tabular_dnn"
    hidden_units: Annotated[
        tuple[Annotated[int, Strict(), Field(ge=1)], ...], _says("must be a list of positive integers")
    ] = (64, 32)
    dropout: Annotated[_Finite, Field(ge=0, lt=1), _says("must be in [0, 1)")] = 0.0
    one_hot_max: _Count = 12
    embedding_dim: _AtLeastOne = 8
    log_features: Annotated[tuple[Annotated[str, Strict()], ...], _says("must be a list of feature names")] = ()
    class_weight: Annotated[
        Literal["balanced", "none"], _says("must be 'balanced' or 'none', got {input!r}")
    ] = "none"
    # cnn
    conv_filters: Annotated[
        tuple[Annotated[int, Strict(), Field(ge=1)], ...], _says("must be a list of positive integers")
    ] = (32, 64)
    dense_units: _AtLeastOne = 128
    augmentation: Augmentation = Augmentation()


class _Label(_Section):
    """The label. Binary: ``positive_rate`` (train split). Multiclass: ``classes`` (the label
    field's category values; a row's label in the data files is its class's index) and
    ``class_names`` (display names, one per class)."""

    name: _String
    positive_rate: Annotated[
        _Finite | None, Field(gt=0, lt=1), _says("must be strictly between 0 and 1, got {input!r}")
    ] = None
    classes: Annotated[tuple[Any, ...] | None, _says("must be a list of class values")] = None
    class_names: Annotated[tuple[Annotated[str, Strict()], ...] | None, _says("must be a list of strings")] = None


class _Rows(_Section):
    train: _Count
    validation: _Count
    eval: _Count
    # a labelling line's train rows by label source (given, machine, human), and the keys
    # left out for want of a label
    by_source: dict[str, _Count] | None = None
    unlabelled: _Count | None = None


class _LabelErrors(_Section):
    """Label errors found in the train split (:mod:`pipelines.labelling.errors`): with mode
    ``exclude`` the ``excluded`` rows are not in the shards."""

    mode: Annotated[Literal["report", "exclude"], _says("must be 'report' or 'exclude', got {input!r}")]
    found: _Count
    excluded: _Count
    rows_checked: _Count

    @field_validator("excluded")
    @classmethod
    def _excluded_were_found(cls, excluded: int, info: ValidationInfo) -> int:
        found = info.data.get("found")
        if found is not None and excluded > found:
            raise _problem(f"{excluded} rows excluded but only {found} found")
        return excluded


class _ManifestFile(_Section):
    """``manifest.json`` as written by :mod:`pipelines.training.prepare`. The fields are
    validated in this order, so a check can use the fields above it."""

    line: _String
    spec_version: _Integer
    run_id: _String  # the exact run id (runs prepared before kept their folder's name)
    modality: Annotated[Modality, _says("must be 'tabular' or 'image', got {input!r}")] = "tabular"
    task: Annotated[Task, _says(f"must be one of {list(get_args(Task))}, got {{input!r}}")] = "binary_classification"
    batches: list[Any]
    key: list[Any]
    features: Annotated[list[Feature], Field(min_length=1)]
    label: _Label
    rows: _Rows
    # label-error detection on the train split: mode, found, excluded, rows_checked
    label_errors: dict[str, Any] | None = None
    shards: Annotated[list[Annotated[int, Strict(), Field(ge=0)]], _says("must be row counts (integers >= 0)")]
    params: Params
    model: ModelConfig
    label_errors: _LabelErrors | None = None

    @field_validator("features")
    @classmethod
    def _unique_names(cls, features: list[Feature]) -> list[Feature]:
        names = [f.name for f in features]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise _problem(f"duplicate names {dupes}")
        return features

    @field_validator("features")
    @classmethod
    def _features_fit_modality(cls, features: list[Feature], info: ValidationInfo) -> list[Feature]:
        images = [f for f in features if f.kind == "image"]
        if info.data.get("modality") == "image" and (len(images) != 1 or len(features) != 1):
            raise _problem("an image run has exactly one feature, of kind image")
        if info.data.get("modality") == "tabular" and images:
            raise _problem("image features need modality: image")
        return features

    @field_validator("label")
    @classmethod
    def _label_not_a_feature(cls, label: _Label, info: ValidationInfo) -> _Label:
        if label.name in {f.name for f in info.data.get("features", ())}:
            raise _problem(f"the label {label.name!r} cannot also be a feature")
        task = info.data.get("task")
        if task == "binary_classification" and label.positive_rate is None:
            raise _problem("a binary_classification run needs label.positive_rate")
        if task == "multiclass_classification":
            if label.classes is None or len(label.classes) < 3:
                raise _problem("a multiclass_classification run needs label.classes (three or more)")
            if len({str(c) for c in label.classes}) != len(label.classes):
                raise _problem("label.classes must be unique")
            if label.class_names is not None and len(label.class_names) != len(label.classes):
                raise _problem("label.class_names: give one name per class")
        return label

    @field_validator("shards")
    @classmethod
    def _shards_hold_the_train_rows(cls, shards: list[int], info: ValidationInfo) -> list[int]:
        if not shards:
            raise _problem("must list at least one shard")
        rows = info.data.get("rows")
        if rows is not None and sum(shards) != rows.train:
            raise _problem(f"add up to {sum(shards)}, but rows.train is {rows.train}")
        return shards

    @field_validator("model")
    @classmethod
    def _model_fits_modality(cls, model: ModelConfig, info: ValidationInfo) -> ModelConfig:
        wanted = MODEL_KINDS.get(info.data.get("modality"))
        if wanted is not None and model.kind != wanted:
            raise _problem(f"kind {model.kind!r} does not fit modality {info.data.get('modality')!r} (wants {wanted!r})")
        return model


# the model kind each modality trains
MODEL_KINDS: dict[str, str] = {"tabular": "tabular_dnn", "image": "cnn"}

# pydantic's own wording for the errors no field above words itself
_PYDANTIC_ERRORS = {
    "missing": "missing",
    "model_type": "must be a mapping",
    "list_type": "must be a list",
    "too_short": "must not be empty",
}


@dataclass(frozen=True)
class Manifest:
    raw: dict
    line: str
    spec_version: int
    run_id: str
    batches: tuple[str, ...]
    key: tuple[str, ...]
    label: str
    positive_rate: float | None
    features: tuple[Feature, ...]
    rows: dict[str, Any]  # counts; by_source a count per label source
    shards: tuple[int, ...]
    params: Params
    model: ModelConfig
    modality: str = "tabular"
    task: str = "binary_classification"
    classes: tuple[Any, ...] = ()
    class_names: tuple[str, ...] = ()

    @property
    def image(self) -> Feature | None:
        """The image feature of an image run (None for tabular)."""
        return next((f for f in self.features if f.kind == "image"), None)

    @property
    def num_classes(self) -> int:
        return len(self.classes) if self.task == "multiclass_classification" else 2

    @property
    def numeric(self) -> list[Feature]:
        return [f for f in self.features if f.kind == "numeric"]

    @property
    def categorical(self) -> list[Feature]:
        return [f for f in self.features if f.kind == "categorical"]

    @property
    def positive_weight(self) -> float:
        """Weight of a positive example in the loss: (1-p)/p when class_weight is balanced
        (binary runs; 1 for any other task)."""
        if self.model.class_weight == "balanced" and self.positive_rate is not None:
            return (1.0 - self.positive_rate) / self.positive_rate
        return 1.0


def _where(data: Any, loc: tuple[int | str, ...]) -> str:
    """``features.0 (funded_amnt).mean``: a field's path, list items named by their ``name``."""
    parts, node = [], data
    for p in loc:
        try:
            node = node[p]
        except (KeyError, IndexError, TypeError):
            node = None
        name = node.get("name") if isinstance(p, int) and isinstance(node, dict) else None
        parts.append(f"{p} ({name})" if isinstance(name, str) and name else str(p))
    return ".".join(parts) or "(top level)"


def _describe(data: Any, err: ValidationError) -> str:
    problems = []
    for e in err.errors():
        msg = _PYDANTIC_ERRORS.get(e["type"], e["msg"])
        if e["type"] in ("model_type", "list_type"):
            msg += f", got {type(e['input']).__name__}"
        problems.append(f"{_where(data, e['loc'])}: {msg}")
    return f"{MANIFEST}: " + "; ".join(problems)


def parse_manifest(data: Any) -> Manifest:
    """Validate a manifest's parsed JSON; raise :class:`ManifestError` naming the field."""
    if not isinstance(data, dict):
        raise ManifestError(f"{MANIFEST}: (top level): must be a JSON object")
    try:
        doc = _ManifestFile.model_validate(data)
    except ValidationError as err:
        raise ManifestError(_describe(data, err)) from None
    return Manifest(
        raw=data, line=doc.line, spec_version=doc.spec_version, run_id=doc.run_id,
        batches=tuple(str(b) for b in doc.batches), key=tuple(doc.key), label=doc.label.name,
        positive_rate=doc.label.positive_rate, features=tuple(doc.features), rows=doc.rows.model_dump(exclude_none=True),
        shards=tuple(doc.shards), params=doc.params, model=doc.model, modality=doc.modality, task=doc.task,
        classes=tuple(doc.label.classes or ()),
        class_names=tuple(doc.label.class_names or (str(c) for c in doc.label.classes or ())),
    )


def load_manifest(run_dir: Path | str) -> Manifest:
    path = Path(run_dir) / MANIFEST
    try:
        data = read_manifest_data(Path(run_dir))
    except RecordError as err:
        raise ManifestError(str(err)) from None
    if data is None:
        raise ManifestError(f"{path} not found")
    return parse_manifest(data)


def prior_correction(manifest: Manifest) -> float:
    """What the exported model subtracts from the core's logit: ``log(positive_weight)``.

    Weighting positive examples by ``w`` in the loss multiplies the odds the network
    learns by ``w`` (with balanced weights, a 5% class reads as 50%). Subtracting
    ``log(w)`` restores probabilities calibrated to the training data's rate; the ranking,
    and so every AUC, is unchanged. 0 when the line trains unweighted.
    """
    return math.log(manifest.positive_weight)


def model_info(manifest: Manifest, metrics: dict[str, Any]) -> dict[str, Any]:
    """The manifest subset written next to the exported model (``assets.extra/factory_model.json``)."""
    raw = manifest.raw
    info = {k: raw[k] for k in ("line", "spec_version", "run_id", "batches", "features", "label", "params")}
    info["key"] = raw["key"]
    info["metrics"] = metrics
    info["prior_correction"] = prior_correction(manifest)
    info.update(_MODEL_INFO_BY_MODALITY[manifest.modality](manifest))
    return info


def _image_model_info(manifest: Manifest) -> dict[str, Any]:
    """What a client of an image model needs besides the signatures (contract of the image line)."""
    return {
        "modality": manifest.modality,
        "task": manifest.task,
        "classes": list(manifest.classes),
        "class_names": list(manifest.class_names),
        "image_shape": list(manifest.image.shape),
        "embedding_dim": manifest.model.dense_units,
    }


# the model-info fields each modality adds (tabular: none, so its file is as before)
_MODEL_INFO_BY_MODALITY = {"tabular": lambda manifest: {}, "image": _image_model_info}
