"""The timeline arithmetic behind the orchestration overhead figures (the real records are
exercised in tests/test_runtime.py, which runs a DAG through the real runtime)."""

from __future__ import annotations

from pipelines.runtime import timing


def test_union_merges_overlaps_and_drops_empty_spans():
    assert timing.union([(5, 7), (0, 2), (1, 3), (4, 4)]) == [(0, 3), (5, 7)]


def test_minus_cuts_holes():
    assert timing.minus([(0, 10)], [(2, 3), (5, 12)]) == [(0, 2), (3, 5)]


def test_every_second_falls_in_exactly_one_part():
    tis = [
        # queued at 1, its process starts at 2, works 3..8, ends at 9
        {"operator": "_PythonDecoratedOperator", "queued_when": "2026-01-01T00:00:01Z",
         "start_date": "2026-01-01T00:00:02Z", "end_date": "2026-01-01T00:00:09Z"},
        # a sensor's own span covers its deferral: only its work span counts
        {"operator": "NewBatchesSensor", "queued_when": "2026-01-01T00:00:00Z",
         "start_date": "2026-01-01T00:00:00Z", "end_date": "2026-01-01T00:00:20Z"},
    ]
    base = timing.epoch("2026-01-01T00:00:00Z")
    work = [{"start": base + 3, "end": base + 8}, {"start": base + 19, "end": base + 20}]
    t = timing.breakdown(tis, work, since=base)
    assert t["wall_s"] == 20
    assert t["work_s"] == 6
    assert t["task_startup_s"] == 2  # 2..3 and 8..9
    assert t["queued_s"] == 1  # 1..2
    assert t["scheduling_s"] == 11  # 0..1 and 9..19
    assert t["overhead_share"] == 0.7


def test_factory_run_refuses_a_timings_file_it_could_not_write_before_starting_anything(tmp_path, capsys):
    import pytest

    from pipelines import cli

    for bad, said in ((tmp_path / "no-such-folder" / "t.json", "no folder"), (tmp_path, "is a folder")):
        with pytest.raises(SystemExit) as exit_:
            cli.main(["run", "credit_risk", "--timings", str(bad)])
        assert exit_.value.code == 2
        assert said in capsys.readouterr().err
    assert not (tmp_path / "no-such-folder").exists()
