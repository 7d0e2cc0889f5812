"""The evaluation gate's parts that need no TensorFlow: the spec's ``evaluation:``
settings (and the sections proposed for both lines), per-slice gating, the serving
store (atomic, concurrent pushes; rollback), force-bless refusal, the registry's
``champion`` following the store, and the HTML report."""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path

import pytest
import yaml

from pipelines.catalog import layout
from pipelines.evaluation import serving
from pipelines.evaluation.eval_config import gated_slices
from pipelines.evaluation.gate import ForceBlessError, check_force_reason
from pipelines.evaluation.report import render
from pipelines.specs import load_spec
from pipelines.specs.evaluation import EvaluationSettingsError, load_settings, parse_settings

# Example sections exercising every field (the lines' YAML files hold the production ones).
PROPOSED = {
    "credit_risk": """
evaluation:
  slices: [term, verification_status]
  thresholds:
    auc: {min: 0.60, max_drop: 0.03}
    pr_auc: {min: 0.07}
  slice_thresholds:
    min_examples: 300
    min_per_class: 25
    thresholds:
      auc: {min: 0.55}
  min_eval_examples: 200
""",
    "employment": """
evaluation:
  slices: [SEX, age_band, [SEX, age_band]]
  derived_features:
    age_band: {from: AGEP, bins: [16, 25, 35, 45, 55, 65]}
  thresholds:
    auc: {min: 0.80, max_drop: 0.01}
    binary_accuracy: {min: 0.72}
    calibration: {min: 0.9, max: 1.1}
  slice_thresholds:
    min_examples: 1000
    min_per_class: 100
    thresholds:
      auc: {min: 0.70}
  min_eval_examples: 1000
""",
}


def _fields(line: str) -> tuple[dict[str, str], set[str]]:
    spec = load_spec(line)
    return {f.name: f.type for f in spec.schema.fields}, {*spec.schema.key, spec.schema.label.name}


# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize("line", ["credit_risk", "employment"])
def test_the_lines_specs_have_valid_evaluation_settings(line):
    settings = load_settings(load_spec(line))
    assert settings.thresholds, "a line needs at least one overall threshold to bless anything"


@pytest.mark.parametrize("line", sorted(PROPOSED))
def test_proposed_sections_are_valid(line):
    data = yaml.safe_load(PROPOSED[line])["evaluation"]
    fields, not_sliceable = _fields(line)
    settings = parse_settings(line, data, fields, not_sliceable)
    assert settings.thresholds["auc"].max_drop is not None
    if line == "employment":
        assert ("SEX", "age_band") in settings.slice_features
        assert settings.derived_features["age_band"].labels() == [
            "<16", "[16,25)", "[25,35)", "[35,45)", "[45,55)", "[55,65)", ">=65"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"thresholds": {"roc": {"min": 0.5}}}, r"evaluation\.thresholds\.roc: unknown metric 'roc'"),
        ({"thresholds": {"calibration": {"max_drop": 0.1}}}, r"thresholds\.calibration: max_drop only applies to metrics where higher is better"),
        ({"thresholds": {"auc": {}}}, r"give at least one of min, max, max_drop"),
        ({"thresholds": {"auc": {"min": 0.9, "max": 0.8}}}, r"min must be <= max"),
        ({"thresholds": {}}, r"at least one overall threshold"),
        ({"slices": ["tenure"]}, r"evaluation\.slices\.0: 'tenure' is not a field or a derived feature"),
        ({"slices": ["int_rate"]}, r"'int_rate' is a double: slice on a derived band"),
        ({"slices": ["loan_id"]}, r"'loan_id' is the key or the label"),
        ({"derived_features": {"band": {"from": "term", "bins": [1]}}}, r"derived_features\.band\.from: 'term' is not a numeric"),
        ({"derived_features": {"band": {"from": "int_rate", "bins": [5, 5]}}}, r"bins must be strictly increasing"),
        ({"slice_thresholds": {"min_examples": 0}}, r"evaluation\.slice_thresholds\.min_examples"),
        ({"surprise": 1}, r"evaluation\.surprise: Extra inputs are not permitted"),
    ],
)
def test_bad_settings_name_the_field(data, message):
    fields, not_sliceable = _fields("credit_risk")
    with pytest.raises(EvaluationSettingsError, match=message):
        parse_settings("credit_risk", data, fields, not_sliceable)


def test_only_slices_with_enough_rows_of_each_class_are_gated():
    fields, not_sliceable = _fields("credit_risk")
    settings = parse_settings("credit_risk", {
        "slices": ["term", ["term", "verification_status"]],
        "slice_thresholds": {"min_examples": 300, "min_per_class": 25, "thresholds": {"auc": {"min": 0.55}}},
    }, fields, not_sliceable)
    counts = {
        "term": {"term_36": [1800, 90], "term_60": [650, 20]},  # term_60: too few positives
        "term x verification_status": {"term_36\x1fVerified": [400, 30], "term_60\x1fVerified": [120, 10]},
    }
    assert gated_slices(settings, counts) == [{"term": "term_36"}, {"term": "term_36", "verification_status": "Verified"}]


# --------------------------------------------------------------------------- force-bless


@pytest.mark.parametrize("reason", ["", "   ", "\n\t"])
def test_force_bless_without_a_reason_is_refused(reason):
    with pytest.raises(ForceBlessError, match="a written reason is required"):
        check_force_reason(reason)
    assert check_force_reason(None) is None
    assert check_force_reason("  ticket 12: recall matters more  ") == "ticket 12: recall matters more"


def test_stage_refuses_force_bless_without_reason_before_running_anything(tmp_path):
    from pipelines.evaluation.stage import evaluate_and_push

    started = time.monotonic()
    with pytest.raises(ForceBlessError):
        evaluate_and_push("credit_risk", tmp_path / "no-such-run", force_bless=True, home=tmp_path)
    assert time.monotonic() - started < 2
    assert not (tmp_path / "serving").exists()


# --------------------------------------------------------------------------- serving store


def _fake_model(root: Path, tag: str) -> Path:
    model = root / tag
    (model / "variables").mkdir(parents=True)
    (model / "variables" / "variables.data-00000-of-00001").write_bytes(tag.encode() * 2000)
    (model / "saved_model.pb").write_bytes(b"pb-" + tag.encode())
    return model


def _publish(args: tuple[str, str, str]) -> int:
    model, base, tag = args
    version, _ = serving.publish(Path(model), Path(base), {"tag": tag})
    return version


def test_concurrent_pushes_get_distinct_versions_and_nothing_half_written(tmp_path):
    base = tmp_path / "serving" / "credit_risk"
    models = [_fake_model(tmp_path / "models", f"m{i}") for i in range(6)]
    # Fresh interpreters: a fork of this process (Spark's JVM gateway and other threads
    # live in it by now) can inherit a lock some thread held and hang in the child.
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(3) as pool:
        versions = pool.map(_publish, [(str(m), str(base), m.name) for m in models])
    assert sorted(versions) == [1, 2, 3, 4, 5, 6]
    assert serving.live_versions(base) == [1, 2, 3, 4, 5, 6]
    for v in versions:
        d = base / str(v)
        info = serving.push_info(d)
        assert info["version"] == v
        tag = info["tag"]
        assert (d / "saved_model.pb").read_bytes() == b"pb-" + tag.encode()
        assert (d / "variables" / "variables.data-00000-of-00001").stat().st_size == len(tag) * 2000
    # only integer directories and hidden entries TF Serving ignores
    assert sorted(p.name for p in base.iterdir()) == [".lock", "1", "2", "3", "4", "5", "6"]


def test_publish_refuses_a_directory_that_is_not_a_saved_model(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(serving.ServingStoreError, match="not a SavedModel"):
        serving.publish(tmp_path / "empty", tmp_path / "store" / "x", {})
    assert serving.live_versions(tmp_path / "store" / "x") == []


def test_rollback_retires_the_served_version_and_numbers_are_not_reused(tmp_path):
    base = tmp_path / "serving" / "employment"
    one, two = _fake_model(tmp_path, "one"), _fake_model(tmp_path, "two")
    serving.publish(one, base, {})
    with pytest.raises(serving.ServingStoreError, match="nothing to roll back to"):
        serving.retire_latest(base, "only one")
    serving.publish(two, base, {})
    with pytest.raises(serving.ServingStoreError, match="version 2 is being served, not 1"):
        serving.retire_latest(base, "stale", expected=1)
    assert serving.retire_latest(base, "bad model", expected=2) == (2, 1)
    assert serving.serving_version(base) == 1
    assert serving.retired_versions(base) == [2]
    assert json.loads((base / ".retired" / "2.json").read_text())["reason"] == "bad model"
    version, _ = serving.publish(two, base, {})
    assert version == 3


# --------------------------------------------------------------------------- registry follows the store


@pytest.mark.integration  # MLflow's SQLite store: ~10 s to create
def test_champion_follows_the_serving_store(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from pipelines import tracking
    from pipelines.evaluation import registry

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    home = tmp_path / "home"
    base = layout.serving_base("credit_risk", home)
    client = tracking.client(home)
    name = registry.ensure_registered_model(client, "credit_risk")
    run = tracking.start_run("credit_risk", "r", {}, {}, home=home)
    for i, tag in enumerate(["a", "b"], start=1):
        version, _ = serving.publish(_fake_model(tmp_path, tag), base, {})
        client.create_model_version(name, source=f"runs:/{run}/model", run_id=run,
                                    tags={"serving_version": str(version)})
        assert registry.sync_serving_state("credit_risk", home) == str(i)
    assert str(registry.champion("credit_risk", home).version) == "2"
    serving.retire_latest(base, "incident 7")
    assert registry.sync_serving_state("credit_risk", home) == "1"
    by_version = {str(v.version): v.tags for v in registry.versions(client, "credit_risk")}
    assert by_version["1"]["serving_status"] == "SERVING"
    assert by_version["2"]["serving_status"] == "RETIRED"
    assert by_version["2"]["rolled_back_reason"] == "incident 7"


# --------------------------------------------------------------------------- report


def test_report_has_a_table_per_slice_and_says_why():
    result = {
        "line": "credit_risk", "training_run": "r1", "blessing": "NOT_BLESSED", "why": "[Overall] auc = 0.5",
        "blessed_on": "value thresholds only (no blessed model yet)", "baseline": None, "serving": None,
        "failures": [{"slice": "Overall", "metric": "auc", "message": "auc = 0.5000; must be >= 0.62"}],
        "settings": {"thresholds": {"auc": {"min": 0.62}}, "slice_thresholds": {"thresholds": {}}},
        "slices": [{"slice": "Overall", "examples": 900, "positives": 50, "gated": True},
                   {"slice": "term:term_60", "examples": 40, "positives": 3, "gated": False}],
        "metrics": {"Overall": {"candidate": {"auc": 0.5, "example_count": 900.0}, "baseline": None, "diff": None},
                    "term:term_60": {"candidate": {"auc": 0.41}, "baseline": None, "diff": None}},
    }
    page = render(result)
    assert "NOT_BLESSED" in page and "<h2>Overall</h2>" in page and "<h2>term:term_60</h2>" in page
    assert "FAIL" in page and "reported only (too small to gate)" in page


# --------------------------------------------------------------------------- multi-class lines


def test_the_fashion_spec_gates_accuracy_per_class_slices_and_precision():
    settings = load_settings(load_spec("fashion"))
    assert settings.thresholds["accuracy"].min == 0.85 and settings.thresholds["accuracy"].max_drop == 0.01
    assert settings.thresholds["precision"].min == 0.5
    assert settings.slice_features == [("label",)]
    assert settings.slice_thresholds.thresholds["accuracy"].min == 0.5


def _image_fields() -> tuple[dict[str, str], set[str]]:
    spec = load_spec("fashion")
    return {f.name: f.type for f in spec.schema.fields}, set(spec.schema.key)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"thresholds": {"auc": {"min": 0.8}}},
         r"fashion\.yaml: evaluation\.thresholds\.auc: unknown metric 'auc' for task multiclass_classification"),
        ({"thresholds": {"accuracy": {"min": 0.8}}, "slice_thresholds": {"thresholds": {"pr_auc": {"min": 0.5}}}},
         r"evaluation\.slice_thresholds\.thresholds\.pr_auc: unknown metric 'pr_auc'"),
        ({}, r"evaluation\.thresholds: at least one overall threshold"),
        ({"thresholds": {"accuracy": {"min": 0.8}}, "slices": ["image"]}, r"'image' is an image: not a slice"),
        ({"thresholds": {"accuracy": {"min": 0.8}}, "slices": ["image_id"]}, r"'image_id' is the key or the label"),
    ],
)
def test_multiclass_settings_refuse_what_the_task_does_not_measure(data, message):
    fields, not_sliceable = _image_fields()
    with pytest.raises(EvaluationSettingsError, match=message):
        parse_settings("fashion", data, fields, not_sliceable, task="multiclass_classification")


def test_a_multiclass_metric_is_refused_on_a_binary_line():
    fields, not_sliceable = _fields("credit_risk")
    with pytest.raises(EvaluationSettingsError, match=r"unknown metric 'recall' for task binary_classification"):
        parse_settings("credit_risk", {"thresholds": {"recall": {"min": 0.5}}}, fields, not_sliceable)
    # top-1 accuracy over class ids means nothing for one probability per example
    with pytest.raises(EvaluationSettingsError, match=r"unknown metric 'accuracy' for task binary_classification"):
        parse_settings("credit_risk", {"thresholds": {"accuracy": {"min": 0.5}}}, fields, not_sliceable)


def test_an_unknown_multiclass_metric_fails_at_spec_load(tmp_path, monkeypatch):
    from pipelines.config import include_dir
    from pipelines.specs import SpecError

    include = tmp_path / "include"
    (include / "lines").mkdir(parents=True)
    data = yaml.safe_load((include_dir() / "lines" / "fashion.yaml").read_text())
    data["evaluation"]["thresholds"]["auc"] = {"min": 0.9}
    (include / "lines" / "fashion.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    monkeypatch.setenv("FACTORY_INCLUDE", str(include))
    with pytest.raises((SpecError, EvaluationSettingsError), match=r"unknown metric 'auc' for task multiclass"):
        load_spec("fashion")


def test_multiclass_slices_are_gated_on_their_rows_and_smallest_class():
    fields, not_sliceable = _image_fields()
    settings = parse_settings("fashion", {
        "slices": ["label"], "thresholds": {"accuracy": {"min": 0.8}},
        "slice_thresholds": {"min_examples": 100, "min_per_class": 100, "thresholds": {"accuracy": {"min": 0.5}}},
    }, fields, not_sliceable, task="multiclass_classification")
    # a class slice holds one class: [rows, rows of its smallest class]
    counts = {"label": {"0": [120, 120], "6": [80, 80]}}
    assert gated_slices(settings, counts, task="multiclass_classification") == [{"label": "0"}]
