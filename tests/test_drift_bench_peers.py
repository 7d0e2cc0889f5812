"""The drift benchmark's Evidently side (``bench/drift_evidently.py`` in ``.venv/bench``) on a
small real sample: the employment rows the benchmark writes (2015 reference; 2018; 2018 drawn
towards older people), the spec's column kinds, both preset configurations.

Skipped where the bench environment is not built (``scripts/setup.sh bench``; CI does not
build it)."""

from __future__ import annotations

import pytest

from bench.drift_bench import bench_python, datasets, run_evidently, verdicts
from pipelines.monitoring.profile import features_from_spec
from pipelines.specs import load_spec

pytestmark = pytest.mark.skipif(
    not bench_python().exists(), reason="no bench environment (.venv/bench): run scripts/setup.sh bench"
)


def test_evidently_finds_the_older_batch_on_a_small_real_sample(tmp_path):
    declared = features_from_spec(load_spec("employment"))
    names = [f["name"] for f in declared]
    paths = datasets(5000, names, where=tmp_path)
    result = run_evidently(paths, declared, repeats=1)
    assert "batches" in result, result
    older, same = result["batches"]["2018_older"]["configs"], result["batches"]["2018"]["configs"]
    assert set(older) == {"defaults", "psi"}
    for config in older.values():
        assert set(config["columns"]) == set(names)
        assert "AGEP" in config["drifted"]  # the mean age rose ten years
    assert same["psi"]["drifted"] == []  # three survey years apart, no PSI of 0.2
    methods = {c["method"] for c in older["defaults"]["columns"].values()}
    assert methods == {"Wasserstein distance (normed)", "Jensen-Shannon distance"}
    assert {c["method"] for c in older["psi"]["columns"].values()} == {"psi"}
    # the verdicts table takes Evidently's sides beside the factory's
    factory = {"batches": {b: {"features": {n: {"drifted": n == "AGEP" and b == "2018_older"} for n in names}}
                           for b in ("2018", "2018_older")}}
    table = verdicts(factory, {"skipped": "not here"}, result)
    assert set(table["2018_older"]["drifted"]) == {"factory", "evidently_defaults", "evidently_psi"}
    assert table["2018_older"]["drifted"]["evidently_psi"] == older["psi"]["drifted"]
