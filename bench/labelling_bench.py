"""Automated labelling on real rows: auto-labels at a target precision, and label errors.

    .venv/airflow/bin/python -m bench.labelling_bench [--part withheld|flips|all] [--epochs N]

Everything runs in a fresh temporary ``FACTORY_HOME`` with the factory's own code and the
lines' own specs (include/lines/*.yaml): the real Spark cleaning job and the real Great
Expectations checkpoint for every batch, ``prepare_run`` + the Horovod workers (2 Gloo
ranks) for every training, the label DAG's stage functions for labelling.

``withheld`` (employment): a model is trained on the 2015 survey year and published to the
serving store as the pusher does; the 2018 year (70k people) is landed with its labels
withheld (kept aside as the truth). The label stage's ``plan`` and ``prelabel`` choose the
per-class thresholds on the served model's held-out split (target precision 0.98, one-sided
95% lower bound), land the accepted labels as a label batch and queue the rest for review
as Label Studio tasks. The auto-labels are compared with the withheld truth. A reviewer is
simulated by answering the queued tasks with their true labels as a Label Studio export,
which ``import_reviews`` lands as human labels. Then two models train on 2015 + 2018: one
with the 2018 auto-labels plus the reviewed rows (the spec's ``machine_labels``), one with
all 2018 true labels; both (and the 2015 model) are scored on the same held-out rows with
their true labels.

``flips`` (credit_risk, employment 2015): 5% of the real labels are flipped at random
(seeded) in the landed batch; two trainings read it: label-error detection in ``report``
mode (nothing excluded) and in ``exclude`` mode. The rows the exclude run left out of its
train shards are the detector's suspects: their precision and recall against the flipped
train rows, and both models' ROC AUC on the held-out split with its true labels.

Prints a machine line and tables; writes ``bench/results/labelling.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

HOME = Path(tempfile.mkdtemp(prefix="factory-labelling-bench-"))
os.environ["FACTORY_HOME"] = str(HOME)
for _var in ("FACTORY_SERVING_STORE", "FACTORY_PREDICTION_LOG", "MLFLOW_TRACKING_URI", "FACTORY_MLMD_URI",
             "FACTORY_INCLUDE", "FACTORY_MAX_EPOCHS"):
    os.environ.pop(_var, None)
# ruff: noqa: E402 - the imports below must see that home

import sys  # noqa: E402

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the clone's root first
from bench.machine import describe, host, write_results  # noqa: E402
from bench.realdata import employment_frame, lending_club_frame  # noqa: E402
from pipelines.catalog import layout, ledger, records  # noqa: E402
from pipelines.catalog.layout import line_paths  # noqa: E402
from pipelines.labelling import LABEL_CONFIDENCE, LABEL_SOURCE  # noqa: E402

SEED = 20261130
FLIP_SHARE = 0.05


def say(text: str = "") -> None:
    print(text, flush=True)


def ingest(line: str, frame: pd.DataFrame, batch_id: str, *, suite: bool = True) -> dict[str, Any]:
    """Land ``frame`` and run the real cleaning job and checkpoint on it; the cleaning report.
    ``suite=False``: a batch the suite refuses (flipped labels move the class rate) is marked
    validated as the checkpoint would, and the result says so."""
    from pipelines.ingest import landing, stage
    from pipelines.ingest.cleaning import job
    from pipelines.specs import load_spec

    landing.land_frame(load_spec(line), frame, batch_id, HOME)
    report = job.run(line, [batch_id], HOME)[batch_id]
    try:
        stage.validate_batch(line, batch_id, HOME)
        report["validated_by_suite"] = True
    except stage.ValidationFailed as err:
        if suite:
            raise
        ledger.update(line_paths(line, HOME), batch_id, "validated", status=ledger.VALIDATED,
                      validated_at=ledger.now(), error=None, failed_stage=None)
        report["validated_by_suite"] = False
        report["suite_failures"] = str(err).splitlines()[1:6]
    return report


def ingest_landed(line: str, batch_ids: list[str]) -> None:
    """Clean and validate batches the label stage landed."""
    from pipelines.ingest import stage
    from pipelines.ingest.cleaning import job

    job.run(line, batch_ids, HOME)
    for b in batch_ids:
        stage.validate_batch(line, b, HOME)


def train(line: str, name: str, batches: list[str], epochs: int | None, spec=None) -> tuple[Path, dict[str, Any]]:
    from pipelines.specs import load_spec
    from pipelines.training.launch import run_workers
    from pipelines.training.prepare import prepare_run

    run = layout.run_dir(line, name, HOME)
    overrides: dict[str, Any] = {"batches": batches}
    if epochs:
        overrides["epochs"] = epochs
    manifest = prepare_run(line, run, overrides, HOME, spec=spec)
    started = time.perf_counter()
    run_workers(run, manifest["params"]["workers"], timeout_s=(spec or load_spec(line)).training.timeout_s,
                log_path=layout.training_log_path(run))
    manifest["_wall_s"] = round(time.perf_counter() - started, 1)
    return run, manifest


def publish(line: str, run: Path) -> int:
    from pipelines.evaluation import serving
    from pipelines.monitoring.stage import write_reference_profile

    write_reference_profile(run)
    info = {"model_uri": f"runs:/{run.name}/model", "run_dir": str(run), "training_run": run.name,
            "line": line, "blessing": "BLESSED"}
    version, _ = serving.publish(layout.exported_model(run), layout.serving_base(line, HOME), info)
    return version


def scores(run: Path, data: Path) -> np.ndarray:
    from pipelines.monitoring.stage import model_predictions

    return model_predictions(layout.exported_model(run), [data])["score"].to_numpy()


def auc(y: np.ndarray, s: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return round(float(roc_auc_score(y, s)), 4)


# -- withheld labels -----------------------------------------------------------------------


def withheld(epochs: int | None) -> dict[str, Any]:
    from pipelines.labelling import stage
    from pipelines.labelling.studio import choice_result
    from pipelines.specs import load_spec

    line = "employment"
    spec = load_spec(line)
    label, key = spec.schema.label.name, spec.schema.key[0]
    out: dict[str, Any] = {"line": line, "target_precision": spec.labelling.target_precision,
                           "confidence_level": spec.labelling.confidence_level,
                           "machine_labels": spec.labelling.machine_labels,
                           "machine_weight": spec.labelling.machine_weight}
    t0 = time.perf_counter()
    ingest(line, employment_frame(2015), "2015")
    base, _ = train(line, "base-2015", ["2015"], epochs)
    out["served_version"] = publish(line, base)
    say(f"base model on 2015 published ({time.perf_counter() - t0:.0f}s)")

    year = employment_frame(2018)
    truth = year.set_index(key)[label].astype(int)
    blind = year.copy()
    blind[label] = pd.array([pd.NA] * len(blind), dtype="Int64")
    report = ingest(line, blind, "2018")
    out["ingest_2018"] = {k: report.get(k) for k in ("rows_in", "rows_clean", "rows_quarantined", "rows_labelled",
                                                     "rows_unlabelled", "labels_by_source")}

    planned = stage.plan(line, {}, HOME)
    t1 = time.perf_counter()
    run = stage.prelabel(line, "bench-prelabel", planned, HOME)
    out["prelabel_s"] = round(time.perf_counter() - t1, 1)
    thresholds = json.loads(layout.label_thresholds_path(line, HOME).read_text())
    out["thresholds"] = thresholds["classes"]
    out["thresholds_eval_rows"] = thresholds["eval_rows"]
    label_batches = sorted(set((run.get("label_batches") or {}).values()))
    ingest_landed(line, label_batches)
    auto = pd.concat([pd.read_parquet(ledger.read(line_paths(line, HOME), b)["cleaning"]["clean_path"])
                      for b in label_batches], ignore_index=True)
    auto = auto[auto[LABEL_SOURCE] == "machine"]
    real = truth.loc[auto[key].to_numpy()].to_numpy()
    given = auto[label].astype(int).to_numpy()
    per_class = {}
    for c in (0, 1):
        mine = given == c
        per_class[str(c)] = {"auto_labelled": int(mine.sum()),
                             "real_precision": round(float((real[mine] == c).mean()), 4) if mine.any() else None,
                             "truly_this_class": int((truth == c).sum())}
    out["auto"] = {
        "rows_unlabelled": run["rows_unlabelled"],
        "auto_labelled": int(len(auto)),
        "share": round(len(auto) / run["rows_unlabelled"], 4),
        "real_precision": round(float((real == given).mean()), 4),
        "per_class": per_class,
        "confidence_min": round(float(auto[LABEL_CONFIDENCE].min()), 4),
        "queued": run["queued"],
        "label_batches": label_batches,
    }
    say(f"auto-labelled {len(auto)} of {run['rows_unlabelled']} ({out['auto']['share']:.1%}), "
        f"real precision {out['auto']['real_precision']:.4f}; {run['queued']} queued for review")

    # a reviewer answers the queue in Label Studio: its export, with the true labels
    queue = layout.review_queue_dir(line, run["queue"], HOME)
    tasks = json.loads(layout.review_tasks_path(queue).read_text())
    for i, t in enumerate(tasks):
        person = t["data"]["key"][key]
        t["id"] = i + 1
        t["annotations"] = [{"id": i + 1, "completed_by": {"email": "reviewer@example.org"}, "was_cancelled": False,
                             "result": choice_result(str(int(truth.loc[person]))),
                             "created_at": "2026-11-30T10:00:00Z", "updated_at": "2026-11-30T10:00:00Z"}]
    export = HOME / "label-studio-export.json"
    export.write_text(json.dumps(tasks))
    imported = stage.import_reviews(line, "bench-review", export, HOME)
    human_batches = sorted(set((imported.get("label_batches") or {}).values())) or (
        [imported["label_batch"]] if imported.get("label_batch") else [])
    ingest_landed(line, human_batches)
    reviewed_truth = [truth.loc[t["data"]["key"][key]] for t in tasks]
    reviewed_pred = [t["predictions"][0]["result"][0]["value"]["choices"][0] for t in tasks]
    out["review"] = {
        "tasks": len(tasks),
        "imported": imported.get("labels") or imported.get("rows"),
        "drifted_region_tasks": sum(1 for t in tasks if t.get("meta", {}).get("drifted_region")),
        "model_agreed_with_truth": round(float(np.mean([str(a) == b for a, b in zip(reviewed_truth, reviewed_pred,
                                                                                  strict=True)])), 4),
        "mean_confidence": round(float(np.mean([t["predictions"][0]["score"] for t in tasks])), 4),
        "label_batches": human_batches,
    }

    # the same year with every true label, as its own batch
    ingest(line, year, "2018-truth")
    assisted, m_assisted = train(line, "assisted", ["2015", "2018", *label_batches, *human_batches], epochs)
    full, m_full = train(line, "all-true-labels", ["2015", "2018-truth"], epochs)
    ev = pd.read_parquet(layout.eval_data_path(full))  # true labels, the same keys' split in both runs
    y = ev[label].to_numpy()
    new = (ev["year"] == 2018).to_numpy()
    s = {"base": scores(base, layout.eval_data_path(full)), "assisted": scores(assisted, layout.eval_data_path(full)),
         "all_true": scores(full, layout.eval_data_path(full))}
    out["models"] = {
        name: {"eval_auc": auc(y, v), "eval_auc_2018": auc(y[new], v[new]),
               "rows": m.get("rows") if m else None, "wall_s": m.get("_wall_s") if m else None}
        for name, v, m in (("base_2015", s["base"], None), ("auto_labels_plus_reviewed", s["assisted"], m_assisted),
                           ("all_true_labels", s["all_true"], m_full))
    }
    out["eval_rows"] = int(len(ev))
    out["eval_rows_2018"] = int(new.sum())
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


# -- flipped labels ------------------------------------------------------------------------


def flips(line: str, epochs: int | None) -> dict[str, Any]:
    from pipelines.specs import load_spec

    spec = load_spec(line)
    label, key = spec.schema.label.name, list(spec.schema.key)
    frame = lending_club_frame() if line == "credit_risk" else employment_frame(2015)
    frame = frame.reset_index(drop=True)
    rng = np.random.default_rng(SEED)
    flipped = rng.random(len(frame)) < FLIP_SHARE
    positive = str(spec.schema.label.positive)
    classes = [str(c) for c in spec.schema.field(label).categories]
    other = {classes[0]: classes[1], classes[1]: classes[0]}
    noisy = frame.copy()
    as_text = noisy[label].astype(str)
    noisy[label] = np.where(flipped, as_text.map(other), as_text)
    noisy[label] = noisy[label].astype(frame[label].dtype)
    truth = frame.assign(_k=frame[key].astype(str).agg("|".join, axis=1)).set_index("_k")[label].astype(str)
    flipped_keys = set(frame.loc[flipped, key].astype(str).agg("|".join, axis=1))
    report = ingest(line, noisy, "flipped", suite=False)
    out: dict[str, Any] = {"line": line, "rows": int(len(frame)), "flipped": int(flipped.sum()),
                           "validated_by_suite": report["validated_by_suite"],
                           "suite_failures": report.get("suite_failures")}

    def variant(mode: str):
        data = spec.model_dump(by_alias=True)
        data["labelling"]["label_errors"]["mode"] = mode
        return type(spec).model_validate(data)

    runs = {}
    for mode in ("report", "exclude"):
        runs[mode] = train(line, f"flips-{mode}", ["flipped"], epochs, spec=variant(mode))

    def train_keys(run: Path) -> set[str]:
        parts = [pd.read_parquet(p) for p in layout.train_shards(run)]
        rows = pd.concat(parts, ignore_index=True)
        return set(rows[key].astype(str).agg("|".join, axis=1))

    kept, checked = train_keys(runs["exclude"][0]), train_keys(runs["report"][0])
    suspects = checked - kept
    in_train = flipped_keys & checked
    hits = len(suspects & in_train)
    found = runs["report"][1].get("label_errors") or {}
    out["detection"] = {
        "train_rows": len(checked), "flipped_in_train": len(in_train), "suspects": len(suspects),
        "found_in_report_mode": found.get("found"),
        "precision": round(hits / len(suspects), 4) if suspects else None,
        "recall": round(hits / len(in_train), 4) if in_train else None,
        "excluded_unflipped": len(suspects - in_train),
        "detection_s": records.read_label_errors(runs["report"][0]).seconds,
    }
    ev_path = layout.eval_data_path(runs["report"][0])
    ev = pd.read_parquet(ev_path)
    y = (truth.loc[ev[key].astype(str).agg("|".join, axis=1)].to_numpy() == positive).astype(int)
    y_noisy = ev[label].to_numpy()
    out["models"] = {}
    for mode, (run, manifest) in runs.items():
        s = scores(run, ev_path)
        out["models"][mode] = {"eval_auc_true_labels": auc(y, s), "eval_auc_noisy_labels": auc(y_noisy, s),
                               "train_rows": manifest["rows"]["train"], "wall_s": manifest["_wall_s"]}
    out["auc_change_true_labels"] = round(out["models"]["exclude"]["eval_auc_true_labels"]
                                          - out["models"]["report"]["eval_auc_true_labels"], 4)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["withheld", "flips", "all"], default="all")
    parser.add_argument("--epochs", type=int, default=None, help="instead of each spec's epochs")
    args = parser.parse_args(argv)
    machine = host()
    say(describe(machine))
    started = time.perf_counter()
    result: dict[str, Any] = {"seed": SEED, "flip_share": FLIP_SHARE, "epochs": args.epochs or "spec"}
    if args.part in ("withheld", "all"):
        result["withheld"] = withheld(args.epochs)
        say(json.dumps(result["withheld"], indent=1, default=str))
    if args.part in ("flips", "all"):
        result["flips"] = {}
        for line in ("credit_risk", "employment"):
            result["flips"][line] = flips(line, args.epochs)
            say(json.dumps(result["flips"][line], indent=1, default=str))
    command = "python -m bench.labelling_bench" + (f" --part {args.part}" if args.part != "all" else "") + (
        f" --epochs {args.epochs}" if args.epochs else "")
    path = write_results("labelling" if args.part == "all" else f"labelling_{args.part}", command, machine,
                         time.perf_counter() - started, result)
    say(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
