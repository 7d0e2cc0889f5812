"""Search spaces checked at spec load, tuned settings applied over a spec, the choice
encoding, suggestions inside the space, and the tuned settings a training prepares with."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from bench.realdata import lending_club_frame, make_validated_batch
from pipelines.catalog import records
from pipelines.config import include_dir
from pipelines.specs import SpecError, load_spec, parse_spec
from pipelines.training.prepare import prepare_run
from pipelines.tuning import study as studies
from pipelines.tuning.params import TuningError, current_params, tuned_spec, with_params

REAL = {p.stem: yaml.safe_load(p.read_text()) for p in (include_dir() / "lines").glob("*.yaml")}


def _load_with_space(line: str, dims: dict) -> str:
    data = copy.deepcopy(REAL[line])
    data["tuning"]["spaces"]["broken"] = dims
    with pytest.raises(SpecError) as err:
        parse_spec(data, Path(f"{line}.yaml"))
    return str(err.value)


@pytest.mark.parametrize(
    "line,dims,expected",
    [
        ("credit_risk", {"hidden_units": {"low": 1, "high": 4}}, "spaces.broken.hidden_units: takes choices"),
        ("credit_risk", {"momentum": {"low": 0.1, "high": 0.9}}, "spaces.broken.momentum: not a tunable setting"),
        ("credit_risk", {"conv_filters": {"choices": [[16, 32]]}}, "spaces.broken.conv_filters: does not apply to a "
                                                                  "tabular_dnn model"),
        ("fashion", {"embedding_dim": {"low": 1, "high": 4}}, "spaces.broken.embedding_dim: does not apply to a cnn"),
        ("credit_risk", {"dropout": {"low": 0.1, "high": 1.5}}, "spaces.broken.dropout: 1.5 is not a valid setting"),
        ("credit_risk", {"batch_size": {"choices": [64, 0]}}, "spaces.broken.batch_size: 0 is not a valid setting"),
        ("credit_risk", {"learning_rate": {"low": 0.0, "high": 0.01, "log": True}}, "a log range needs low > 0"),
        ("credit_risk", {"dropout": {"low": 0.1, "high": 0.3, "choices": [0.2]}}, "either choices or a range"),
        ("credit_risk", {"embedding_dim": {"low": 1.5, "high": 4}}, "an integer range needs whole numbers"),
    ],
)
def test_bad_search_spaces_are_refused_at_load_naming_the_field(line, dims, expected):
    message = _load_with_space(line, dims)
    assert expected in message, message
    assert "tuning" in message, message


def test_a_pruning_warmup_as_long_as_the_epochs_is_refused():
    data = copy.deepcopy(REAL["credit_risk"])
    data["tuning"]["prune_warmup_epochs"] = data["tuning"]["epochs"]
    with pytest.raises(SpecError, match="prune_warmup_epochs .* must be below epochs"):
        parse_spec(data, Path("credit_risk.yaml"))
    data["tuning"]["pruner"] = "none"  # nothing to prune: no warm-up to check
    assert parse_spec(data, Path("credit_risk.yaml")).tuning.pruner == "none"


def test_real_lines_declare_tuning():
    for line in ("credit_risk", "employment", "fashion"):
        tuning = load_spec(line).tuning
        assert tuning is not None and "default" in tuning.spaces


def test_with_params_applies_and_checks_settings():
    spec = load_spec("credit_risk")
    tuned = with_params(spec, {"learning_rate": 0.001, "hidden_units": [128, 64], "dropout": 0.2})
    assert tuned.training.learning_rate == 0.001 and tuned.training.model.hidden_units == [128, 64]
    assert tuned.training.model.dropout == 0.2 and spec.training.model.dropout == 0.5  # the spec is kept
    assert with_params(spec, None) is spec
    assert current_params(tuned, ["learning_rate", "hidden_units"]) == {"learning_rate": 0.001,
                                                                        "hidden_units": [128, 64]}
    with pytest.raises(TuningError, match="not tunable"):
        with_params(spec, {"momentum": 0.9})
    with pytest.raises(TuningError, match="conv_filters does not apply to a tabular_dnn"):
        with_params(spec, {"conv_filters": [16, 32]})
    with pytest.raises(TuningError, match=r"invalid training\.model\.dropout"):
        with_params(spec, {"dropout": 2.0})


def test_choice_encoding_round_trips():
    for value in ([64, 32], [256, 128, 64], "balanced", True, 128, 0.5, None):
        assert studies.decode(studies.encode(value)) == value
    assert studies.encode([64, 32]) == "[64, 32]"
    assert studies.decode("plain text") == "plain text"


def test_suggest_draws_only_inside_the_space():
    import optuna

    for line in ("credit_risk", "fashion"):
        spec = load_spec(line)
        dims = spec.tuning.spaces["default"]
        study = optuna.create_study(storage=optuna.storages.InMemoryStorage(), direction="maximize",
                                    sampler=optuna.samplers.RandomSampler(seed=7))
        drawn: list[dict] = []

        def objective(trial, dims=dims, drawn=drawn, spec=spec):
            params = studies.suggest(trial, dims)
            drawn.append(params)
            with_params(spec, params)  # every draw is a setting the training takes
            return 0.5

        study.optimize(objective, n_trials=25)
        for params in drawn:
            assert set(params) == set(dims)
            for name, value in params.items():
                assert studies.fits(dims[name], name, value), (name, value)
        lists = [p[n] for p in drawn for n in p if isinstance(dims[n].choices, list)
                 and isinstance(dims[n].choices[0], list)]
        assert lists and all(isinstance(v, list) for v in lists)  # lists come back as lists
        # the study's record gives them decoded too
        assert all(isinstance(t.params[n], str) for t in study.trials for n in t.params if n in
                   ("hidden_units", "conv_filters"))


def test_tuned_settings_are_used_with_their_provenance(home, tmp_path):
    make_validated_batch(home, "credit_risk", "s1", lending_club_frame(1))
    tuned = {"line": "credit_risk", "params": {"learning_rate": 0.001, "hidden_units": [128, 64], "batch_size": 64},
             "study": "credit_risk-s", "trial": 4, "metric": "val_auc", "value": 0.74, "batches": ["s1"],
             "space": "default", "spec_version": 1, "mlflow_run_id": "abc", "at": "2026-11-30T00:00:00+00:00"}
    records.write_tuned_params("credit_risk", tuned, home)
    m = prepare_run("credit_risk", tmp_path / "run", {"workers": 1}, home)
    assert m["params"]["learning_rate"] == 0.001 and m["params"]["batch_size"] == 64
    assert m["model"]["hidden_units"] == [128, 64] and m["model"]["dropout"] == 0.5  # not tuned: the spec's
    assert m["tuned"]["used"] is True and m["tuned"]["study"] == "credit_risk-s" and m["tuned"]["trial"] == 4
    assert m["tuned"]["params"] == tuned["params"] and m["tuned"]["value"] == 0.74
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["tuned"] == m["tuned"]

    # a run's own parameter still wins over the tuned one
    m2 = prepare_run("credit_risk", tmp_path / "run2", {"workers": 1, "batch_size": 32}, home)
    assert m2["params"]["batch_size"] == 32 and m2["params"]["learning_rate"] == 0.001

    # a record that no longer fits the spec is not used, and the manifest says why
    records.write_tuned_params("credit_risk", {**tuned, "params": {"conv_filters": [16, 32]}}, home)
    spec, provenance = tuned_spec(load_spec("credit_risk"), home)
    assert spec == load_spec("credit_risk")
    m3 = prepare_run("credit_risk", tmp_path / "run3", {"workers": 1}, home)
    assert m3["tuned"]["used"] is False and "does not apply to a tabular_dnn" in m3["tuned"]["why"]
    assert m3["params"]["batch_size"] == 128 and m3["model"]["hidden_units"] == [64, 32]
    assert provenance["used"] is False


# -- the study's stages: what they refuse before any trial trains --------------------------


def test_bad_options_or_an_empty_window_create_nothing(home):
    from pipelines.tuning.stage import StudyInputError, start_study

    for options, message in [({"parallel": 3}, r"parallel must be an integer in \[1, 2\]"),
                             ({"trials": 0}, "trials must be"), ({"space": "nope"}, "space 'nope' is not one"),
                             ({"warm_start": "yes"}, "warm_start must be"), ({"epochs": 1.5}, "epochs must be"),
                             ({}, "data window is empty")]:
        with pytest.raises(StudyInputError, match=message):
            start_study("credit_risk", "manual__x", options, home)
    assert not home.exists()  # no study, storage, MLflow run or record


def test_a_trial_waits_for_a_slot_and_is_skipped_past_the_budget(home):
    import subprocess
    import sys
    from datetime import UTC, datetime, timedelta

    from pipelines.catalog import layout
    from pipelines.tuning.stage import BudgetSpent, NoFreeSlot, run_trial

    name = "credit_risk-manual__x"
    slot = layout.study_slot_lock(layout.study_dir("credit_risk", name, home), 0)
    slot.parent.mkdir(parents=True)
    holder = subprocess.Popen(  # another trial's task holds the only slot
        [sys.executable, "-c", "import fcntl, os, sys, time\n"
         f"fd = os.open({str(slot)!r}, os.O_RDWR | os.O_CREAT)\nfcntl.flock(fd, fcntl.LOCK_EX)\n"
         "print('held', flush=True)\ntime.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        soon = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
        info = {"study": name, "deadline": soon, "parallel": 1}
        with pytest.raises(NoFreeSlot):
            run_trial("credit_risk", info, 0, home)
        past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
        with pytest.raises(BudgetSpent):
            run_trial("credit_risk", {**info, "deadline": past}, 0, home)
    finally:
        holder.kill()
        holder.wait()
    assert not (home / "tuning" / "optuna.db").exists()  # no trial was asked


_ASKER = """
import json, sys
from pathlib import Path
from pipelines.tuning import stage, study as studies
study = studies.load(sys.argv[1], Path(sys.argv[2]))
print(json.dumps([stage.ask(study, Path(sys.argv[3])).number for _ in range(int(sys.argv[4]))]))
"""


def test_trial_tasks_asking_at_once_never_get_the_same_enqueued_trial(tmp_path):
    """Four processes ask a SQLite study with enqueued trials at once, as parallel trial tasks
    do: every trial goes to exactly one of them (without the study's ask lock, SQLite let two
    take the same enqueued trial)."""
    import subprocess
    import sys

    import optuna

    from pipelines.config import REPO_ROOT

    home = tmp_path / "home"
    study = optuna.create_study(study_name="s", storage=studies.storage(home), direction="maximize")
    for i in range(16):
        study.enqueue_trial({"x": float(i)})
    folder = tmp_path / "study"
    env = {**__import__("os").environ, "PYTHONPATH": str(REPO_ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", _ASKER, "s", str(home), str(folder), "4"], env=env,
                              stdout=subprocess.PIPE, text=True) for _ in range(4)]
    asked = [n for p in procs for n in json.loads(p.communicate(timeout=120)[0])]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(asked) == list(range(16)), asked
