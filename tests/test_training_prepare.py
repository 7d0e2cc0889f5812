"""The training stage's input checks and data preparation (no workers start)."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from bench.realdata import lending_club_frame, make_validated_batch
from pipelines.catalog import layout, records
from pipelines.catalog.layout import is_run_folder_name, run_folder_name
from pipelines.specs import load_spec
from pipelines.training import stage
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


def test_max_epochs_caps_the_lines_it_names(monkeypatch):
    credit, employment = load_spec("credit_risk"), load_spec("employment")
    monkeypatch.setenv("FACTORY_MAX_EPOCHS", "credit_risk=3")
    assert resolve_params(credit).epochs == 3 and resolve_params(credit, {"epochs": 2}).epochs == 2
    assert resolve_params(employment).epochs == employment.training.epochs
    monkeypatch.setenv("FACTORY_MAX_EPOCHS", "4")
    assert resolve_params(employment).epochs == 4
    monkeypatch.setenv("FACTORY_MAX_EPOCHS", "credit_risk=0")
    with pytest.raises(TrainingInputError, match="FACTORY_MAX_EPOCHS: 'credit_risk=0'"):
        resolve_params(credit)


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


# -- run folders: one per run id, and a reused run id is checked --------------------------


def test_run_ids_differing_only_in_colon_or_plus_get_different_folders():
    a, b = "manual__2026-11-29T10:00:00+00:00", "manual__2026-11-29T10_00_00_00_00"
    assert run_folder_name(a) != run_folder_name(b)
    assert run_folder_name("x:y") != run_folder_name("x+y") != run_folder_name("x_y")
    assert run_folder_name(a).startswith("manual__2026-11-29T10_00_00_00_00--")  # still readable
    assert run_folder_name(b) == b  # a safe id, like every folder named before, is its own name


def test_run_folder_name_is_injective_and_safe():
    alphabet = "a0:+_.-~/ é"
    ids = {"".join(p) for n in range(4) for p in itertools.product(alphabet, repeat=n)}
    base = "scheduled__2026-11-22T03:00:00+00:00"
    ids |= {base, base.replace(":", "_"), base.replace("+", "_"), base.replace(":", "-"), "run", "x" * 300,
            "x" * 301, "." + "x" * 199}
    ids |= {run_folder_name(i) for i in list(ids)}  # ids that look like hashed folder names
    names = {i: run_folder_name(i) for i in ids}
    assert len(set(names.values())) == len(ids)
    for run_id, name in names.items():
        assert re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*", name) and not name.endswith("."), (run_id, name)
        assert len(name) <= 214 and is_run_folder_name(name)


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*")}


def test_two_run_ids_differing_only_in_colon_or_plus_prepare_two_folders(home):
    make_validated_batch(home, "credit_risk", "s1", lending_club_frame(1))
    a = stage.prepare("credit_risk", "manual__2026-11-29T10:00:00+00:00", {"workers": 1}, home)
    b = stage.prepare("credit_risk", "manual__2026-11-29T10_00_00_00_00", {"workers": 1}, home)
    assert a["run_dir"] != b["run_dir"]
    assert json.loads(Path(a["run_dir"], "manifest.json").read_text())["run_id"] == "manual__2026-11-29T10:00:00+00:00"
    assert json.loads(Path(b["run_dir"], "manifest.json").read_text())["run_id"] == "manual__2026-11-29T10_00_00_00_00"
    assert {Path(r.path).name for r in records.training_runs("credit_risk", home)} == {
        Path(a["run_dir"]).name, Path(b["run_dir"]).name}


def test_a_reused_run_id_with_other_params_is_refused_before_writing(home):
    make_validated_batch(home, "credit_risk", "s1", lending_club_frame(1))
    run_id = "manual__2026-11-29T10:00:00+00:00"
    first = stage.prepare("credit_risk", run_id, {"workers": 1, "epochs": 3}, home)
    before = _snapshot(Path(first["run_dir"]))
    with pytest.raises(TrainingInputError, match=r"other parameters \(epochs: 3 then, 5 now; workers: 1 then, 2 now\)"):
        stage.prepare("credit_risk", run_id, {"workers": 2, "epochs": 5}, home)
    assert _snapshot(Path(first["run_dir"])) == before


def test_a_folder_prepared_for_another_run_id_is_refused(home):
    make_validated_batch(home, "credit_risk", "s1", lending_club_frame(1))
    folder = layout.run_dir("credit_risk", "nightly", home)
    prepare_run("credit_risk", folder, {"workers": 1}, home, run_id="nightly:old")
    before = _snapshot(folder)
    with pytest.raises(TrainingInputError, match=r"belongs to run 'nightly:old', not 'nightly'"):
        stage.prepare("credit_risk", "nightly", {"workers": 1}, home)
    assert _snapshot(folder) == before


def test_a_retry_with_the_same_params_reuses_the_folder(home):
    make_validated_batch(home, "credit_risk", "s1", lending_club_frame(1))
    run_id = "scheduled__2026-11-29T03:00:00+00:00"
    first = stage.prepare("credit_risk", run_id, {"workers": 1, "epochs": 3, "batches": None}, home)
    before = _snapshot(Path(first["run_dir"]))
    again = stage.prepare("credit_risk", run_id, {"workers": 1, "epochs": 3, "batches": None}, home)
    assert again == first and _snapshot(Path(first["run_dir"])) == before  # kept as the first try wrote it


def test_train_threads_is_a_whole_number_or_unset(monkeypatch):
    from pipelines.config import train_threads

    monkeypatch.delenv("FACTORY_TRAIN_THREADS", raising=False)
    assert train_threads() is None
    monkeypatch.setenv("FACTORY_TRAIN_THREADS", "1")
    assert train_threads() == 1
    for bad in ("0", "two", "-1", "1.5"):
        monkeypatch.setenv("FACTORY_TRAIN_THREADS", bad)
        with pytest.raises(ValueError, match=f"FACTORY_TRAIN_THREADS .* got {bad!r}"):
            train_threads()


def test_a_worker_with_bad_train_threads_stops_with_one_line(monkeypatch, tmp_path, capsys):
    """Refused before TensorFlow loads and before the run folder is read: nothing is touched."""
    from pipelines.training import worker

    monkeypatch.setenv("FACTORY_TRAIN_THREADS", "0")
    assert worker.main(["--run-dir", str(tmp_path / "run")]) == worker.EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["factory-train: error: FACTORY_TRAIN_THREADS must be a whole number of threads >= 1, got '0'"]
