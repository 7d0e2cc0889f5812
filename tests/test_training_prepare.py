"""The training stage's input checks and data preparation (no workers start)."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow.parquet as pq
import pytest

from bench.realdata import lending_club_frame, make_validated_batch
from pipelines.specs import load_spec
from pipelines.training.prepare import TrainingInputError, prepare_run, resolve_params, split_bucket


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"workers": 0}, "workers must be an integer in"),
        ({"learning_rate": -0.1}, "learning_rate must be a number in"),
        ({"learning_rate": 0}, "learning_rate must be a number in"),
        ({"epochs": "ten"}, "epochs must be an integer"),
        ({"batch_size": True}, "batch_size must be an integer"),
        ({"batches": []}, "batches must be a non-empty list"),
        ({"optimizer": "sgd"}, "unknown training parameter"),
    ],
)
def test_bad_params_are_refused(overrides, message):
    with pytest.raises(TrainingInputError, match=message):
        resolve_params(load_spec("credit_risk"), overrides)


def test_params_default_to_the_spec_and_none_keeps_it():
    spec = load_spec("credit_risk")
    p = resolve_params(spec, {"workers": None, "epochs": 3})
    assert p.workers == spec.training.workers and p.epochs == 3


def test_empty_window_is_a_clear_error(home, tmp_path):
    with pytest.raises(TrainingInputError, match="data window is empty"):
        prepare_run("credit_risk", tmp_path / "run", home=home)
    assert not (tmp_path / "run").exists()  # nothing written


def test_batch_with_a_different_schema_is_refused(home, tmp_path):
    frame = lending_club_frame(1)
    make_validated_batch(home, "credit_risk", "ok", lending_club_frame(2))
    make_validated_batch(home, "credit_risk", "drifted", frame.drop(columns=["int_rate"]).assign(int_rate_v2=1.0))
    with pytest.raises(TrainingInputError, match=r"'drifted'.*missing column\(s\) \['int_rate'\].*int_rate_v2"):
        prepare_run("credit_risk", tmp_path / "run", home=home)


def test_wrong_type_is_refused(home, tmp_path):
    make_validated_batch(home, "credit_risk", "b", lending_club_frame(1).astype({"funded_amnt": str}))
    with pytest.raises(TrainingInputError, match="funded_amnt is .*the spec says integer"):
        prepare_run("credit_risk", tmp_path / "run", home=home)


def test_too_little_data_for_the_workers(home, tmp_path):
    make_validated_batch(home, "credit_risk", "tiny", lending_club_frame(1).iloc[:300])
    with pytest.raises(TrainingInputError, match="too few for 2 workers with batch size 128"):
        prepare_run("credit_risk", tmp_path / "run", home=home)


def test_prepare_splits_stably_and_shards_per_worker(home, tmp_path):
    for n in (1, 2, 3):
        make_validated_batch(home, "credit_risk", f"s{n}", lending_club_frame(n))
    m = prepare_run("credit_risk", tmp_path / "a", {"workers": 3}, home=home)
    rows = m["rows"]
    assert rows["train"] + rows["validation"] + rows["eval"] == rows["read"] == sum(
        len(lending_club_frame(n)) for n in (1, 2, 3)
    )
    assert sum(m["shards"]) == rows["train"] and max(m["shards"]) - min(m["shards"]) <= 1
    assert 0.2 < rows["eval"] / rows["read"] < 0.3  # eval_percent 25
    parts = sorted((tmp_path / "a" / "data" / "train").glob("part-*.parquet"))
    assert len(parts) == 3
    eval_a = pd.read_parquet(tmp_path / "a" / "data" / "eval.parquet")
    assert set(eval_a["Class"]) == {0, 1}  # label as 0/1, 1 = bad
    assert pq.read_schema(parts[0]).metadata is None  # plain Parquet for the ML side

    # the same key is in the same split in another run with a different window
    m2 = prepare_run("credit_risk", tmp_path / "b", {"batches": ["s1"], "workers": 1}, home=home)
    eval_b = pd.read_parquet(tmp_path / "b" / "data" / "eval.parquet")
    assert set(eval_b["loan_id"]) == set(eval_a["loan_id"]) & set(lending_club_frame(1)["loan_id"])
    assert m2["batches"] == ["s1"]

    features = {f["name"]: f for f in m["features"]}
    assert features["annual_inc"]["log"] is True and features["annual_inc"]["std"] > 0
    assert features["term"]["categories"] == ["term_36", "term_60"]
    assert "loan_id" not in features and "Class" not in features
    assert json.loads((tmp_path / "a" / "manifest.json").read_text()) == m


def test_split_bucket_is_a_function_of_the_key():
    keys = pd.DataFrame({"k": [1, 2, 3, 1]})
    b = split_bucket(keys)
    assert b.iloc[0] == b.iloc[3] and b.between(0, 99).all()
