"""Product-line specs: the real ones load; broken ones fail naming the field."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from pipelines.config import include_dir
from pipelines.specs import SpecError, load_specs, parse_spec

REAL = {p.stem: yaml.safe_load(p.read_text()) for p in (include_dir() / "lines").glob("*.yaml")}


def test_real_lines_load():
    specs = {s.name: s for s in load_specs()}
    assert set(specs) == {"credit_risk", "employment", "fashion"}
    credit = specs["credit_risk"]
    assert credit.schema.key == ["loan_id"]
    assert credit.schema.label.positive == "bad"
    assert "loan_id" not in [f.name for f in credit.schema.features]
    employment = specs["employment"]
    assert "year" not in [f.name for f in employment.schema.features]
    assert employment.source.batching.by == "year"
    fashion = specs["fashion"]
    assert fashion.modality == "image" and fashion.training.model.kind == "cnn"
    assert [f.name for f in fashion.schema.features] == ["image"]
    assert fashion.training.split.eval_batches == ["test"] and "test" in fashion.source.holdout
    for spec in specs.values():
        assert (include_dir() / spec.expectations).exists(), spec.expectations


def _broken(mutate) -> str:
    data = copy.deepcopy(REAL["credit_risk"])
    mutate(data)
    with pytest.raises(SpecError) as err:
        parse_spec(data, Path("credit_risk.yaml"))
    return str(err.value)


def _field(data, name):
    return next(f for f in data["schema"]["fields"] if f["name"] == name)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: _field(d, "funded_amnt").update(min=50000), "schema.fields.1 (funded_amnt): min must be <= max"),
        (lambda d: _field(d, "term").update(type="double"), "categories only apply"),
        (lambda d: _field(d, "term")["aliases"].update({"x": "term_99"}), "not one of the categories"),
        (lambda d: _field(d, "int_rate").update(typ="double"), "schema.fields.3 (int_rate).typ: Extra inputs are not permitted"),
        (lambda d: _field(d, "int_rate").update(type="decimal"), "schema.fields.3 (int_rate).type"),
        (lambda d: d["schema"].update(key=["nope"]), "key names columns that are not fields"),
        (lambda d: d["schema"]["label"].update(positive="maybe"), "label.positive"),
        (lambda d: d.update(name="Credit Risk"), "name: String should match pattern"),
        (lambda d: d.pop("owner"), "owner: Field required"),
        (lambda d: d["source"].update(batching={"by": "nope"}), "source.batching.by"),
        (lambda d: d["source"].update(batching={"by": "term", "slices": 3}), "exactly one of"),
        (lambda d: d.update(expectations="../../etc/passwd"), "expectations: Value error, must be a path inside"),
        (lambda d: _field(d, "emp_length").update(unknown_value="emp_99"), "unknown_value"),
        (lambda d: _field(d, "loan_id").update(missing="keep"), "key column 'loan_id' must use missing: quarantine"),
        # the evaluation section fails at load too, not when a candidate reaches the gate
        (lambda d: d["evaluation"]["slices"].append("nope"), "evaluation.slices.2: 'nope' is not a field"),
        (lambda d: d["evaluation"]["thresholds"].update(aucc={"min": 0.5}), "evaluation.thresholds"),
        # the serving section
        (lambda d: d["serving"]["live"].update(window_minutes=0), "serving.live.window_minutes: Input should be"),
        (lambda d: d["serving"]["prediction_log"].update(retention_days=0), "serving.prediction_log.retention_days"),
        (lambda d: d["serving"]["live"].update(min_row=10), "serving.live.min_row: Extra inputs are not permitted"),
        # the labelling section: unlabelled rows must survive cleaning
        (lambda d: _field(d, "Class").update(missing="quarantine"),
         "labelling: the label field 'Class' must use missing: keep"),
        (lambda d: d["labelling"].update(target_precision=1.0), "labelling.target_precision: Input should be less"),
        (lambda d: d["labelling"].update(machine_weight=0), "labelling.machine_weight: Input should be greater"),
        (lambda d: d["labelling"].update(machine_labels="trust"), "labelling.machine_labels"),
        (lambda d: d["labelling"]["label_errors"].update(mode="fix"), "labelling.label_errors.mode"),
    ],
)
def test_invalid_spec_names_the_field(mutate, expected):
    message = _broken(mutate)
    assert expected.replace("Value error, ", "") in message
    assert message.startswith("invalid product-line spec") or "credit_risk.yaml" in message


def test_serving_settings_default_when_absent():
    data = copy.deepcopy(REAL["credit_risk"])
    assert parse_spec(data, Path("credit_risk.yaml")).serving.live.min_rows == 200
    data.pop("serving")
    serving = parse_spec(data, Path("credit_risk.yaml")).serving
    assert (serving.prediction_log.retention_days, serving.live.window_minutes, serving.live.min_rows) == (30, 60, 200)


def test_name_must_match_file():
    data = copy.deepcopy(REAL["credit_risk"])
    with pytest.raises(SpecError, match="must match the file name"):
        parse_spec(data, Path("other.yaml"))


def test_not_a_mapping():
    with pytest.raises(SpecError, match="a spec is a mapping"):
        parse_spec(["x"], Path("credit_risk.yaml"))


def test_image_line_fits_the_same_mechanism():
    """An image line declares image fields; the spec mechanism is not tabular-only."""
    data = {
        "name": "fashion",
        "version": 1,
        "description": "Fashion-MNIST",
        "owner": "vision",
        "modality": "image",
        "task": "multiclass_classification",
        "source": {"kind": "files", "options": {"path": "x.zip"}, "batching": {"slices": 6}, "format": "images"},
        "schema": {
            "key": ["image_id"],
            "label": {"name": "label"},
            "fields": [
                {"name": "image_id", "type": "integer"},
                {"name": "image", "type": "image", "shape": [28, 28, 1]},
                {"name": "label", "type": "integer", "categories": list(range(10))},
            ],
        },
        "expectations": "expectations/fashion.json",
        "training": {"model": {"kind": "cnn"}},
        "evaluation": {"thresholds": {"accuracy": {"min": 0.5}}},
    }
    spec = parse_spec(data, Path("fashion.yaml"))
    assert [f.name for f in spec.schema.features] == ["image"]
    for mutate, message in [
        (lambda d: d.update(modality="tabular"), "image fields need modality: image"),
        (lambda d: d["source"].update(format="parquet"), "an image line lands images"),
        (lambda d: d["training"]["model"].update(kind="tabular_dnn"), "does not fit modality: image"),
        (lambda d: d["schema"]["fields"].append({"name": "extra", "type": "double"}), "exactly one feature"),
        (lambda d: d["schema"]["label"].update(names=["a", "b"]), "one display name per category"),
        (lambda d: d.update(training={"model": {"kind": "cnn"}, "split": {"eval_batches": ["test"]}}),
         "not source.holdout batches"),
    ]:
        broken = copy.deepcopy(data)
        mutate(broken)
        with pytest.raises(SpecError, match=message):
            parse_spec(broken, Path("fashion.yaml"))


def test_labelling_defaults_and_image_lines():
    """A bare ``labelling:`` takes the shared defaults; an image line may label but finds
    no label errors (they are for tabular lines)."""
    data = copy.deepcopy(REAL["credit_risk"])
    data["labelling"] = {}
    labelling = parse_spec(data, Path("credit_risk.yaml")).labelling
    assert (labelling.target_precision, labelling.confidence_level, labelling.min_support) == (0.98, 0.95, 50)
    assert (labelling.machine_labels, labelling.machine_weight, labelling.trigger) == ("downweight", 0.5, "on_validated")
    assert (labelling.label_errors.mode, labelling.label_errors.folds) == ("report", 5)
    assert REAL["fashion"].get("labelling") is None

    fashion = copy.deepcopy(REAL["fashion"])
    fashion["labelling"] = {"label_errors": {"mode": "report"}}
    with pytest.raises(SpecError, match="label errors are found on tabular lines only"):
        parse_spec(fashion, Path("fashion.yaml"))
    fashion["labelling"] = {"label_errors": {"mode": "off"}}
    assert parse_spec(fashion, Path("fashion.yaml")).labelling.label_errors.mode == "off"
