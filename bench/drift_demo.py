"""What the factory's drift monitor sees on real data, end to end with real models.

    .venv/airflow/bin/python bench/drift_demo.py [--shift-rows 20000] [--bootstrap 1000] [--keep]

Everything runs in a fresh temporary ``FACTORY_HOME`` with the factory's own code: batches
are landed as validated batches (``bench/realdata.make_validated_batch``), models are
trained by ``pipelines.training.prepare.prepare_run`` and the Horovod workers
(``pipelines.training.launch.run_workers``, 2 Gloo ranks, the spec's settings), each base
model's reference profile is written by ``pipelines.monitoring.stage.write_reference_profile``,
the model's scores come from ``pipelines.monitoring.stage.model_scores``, and every batch is
scored, reported and recorded by ``pipelines.monitoring.batch.monitor_batch`` with the line
spec's ``drift:`` section (scores: prediction drift; labels: ROC AUC on the batch).

employment (ACS Massachusetts, one batch per survey year, ~69k people each)
    The model is trained on 2015 only (all 68,785 rows; no subsampling). Scored against
    its profile: the 2015 rows held out from training (the stable eval split), the real
    2016, 2017 and 2018 years, and random halves of 2016 (profile from one half with the
    same model's scores, the other half scored). Then shifted batches of
    ``--shift-rows`` real 2018 rows, drawn WITHOUT replacement (no duplicated people,
    so the held-out rows below are never trained on), with an older age mix (exponential
    tilt on age; +2, +5 and +10 years of mean age), a more educated mix (bachelor's
    degree or higher, SCHL >= 21, up 30 points) and a label-rate change (employed rate
    -15 points, drawn within each class, so P(features | label) is unchanged). Each
    shifted batch is scored in its own drift state (so each shows whether IT opens an
    episode) and a retrain is claimed as the drift sensor would. For the +10 years,
    education and label batches, the model is retrained on 2015 + that batch (the
    spec's window is every validated batch; the run names the two explicitly, as a drift
    episode's run would in a world where only those are validated), and, as a control,
    on 2015 + a plain random sample of 2018 of the same size (is a gain due to the
    shifted rows or just to more data?). The models are compared by ROC AUC (paired
    bootstrap, ``--bootstrap`` resamples; training-run variance is not in the interval)
    on the rows of each batch whose ``person_id`` falls in the eval split
    (``split_bucket < eval_percent``: never trained on by any of the models), and on the
    2015 eval rows (did the retrain cost anything on the old population?).

credit_risk (Lending Club, 9,857 loans, no time column)
    The model is trained on slices 1-3 (the factory's replay: three landed batches, the
    spec's default window). Batches from slice 4 (2,462 loans the model never saw): as
    is; ``annual_inc`` x1.5 (clipped at the spec's 2,000,000, as cleaning would); a new
    ``verification_status`` value on a random 25% of loans (and the batch as cleaning
    would leave it: the spec quarantines unknown categories, so those rows never reach
    the monitor); the default rate raised to 15% (every bad loan of slice 4 and a random
    sample of good ones, without replacement).

Prints a machine line and markdown tables; writes ``bench/results/drift_demo.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# A fresh factory home before any pipelines module reads the environment.
HOME = Path(tempfile.mkdtemp(prefix="factory-drift-demo-"))
os.environ["FACTORY_HOME"] = str(HOME)
# ruff: noqa: E402 - the imports below must see that home

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the clone's root first
from bench.machine import describe, host  # noqa: E402
from bench.realdata import (  # noqa: E402
    employment_frame,
    label_rate_sample,
    lending_club_frame,
    make_validated_batch,
    tilt_to,
)
from pipelines.catalog.layout import training_root  # noqa: E402
from pipelines.config import REPO_ROOT  # noqa: E402
from pipelines.monitoring.batch import line_drift_spec, monitor_batch  # noqa: E402
from pipelines.monitoring.episodes import claim_retrain  # noqa: E402
from pipelines.monitoring.profile import build_profile, features_from_spec, save_profile  # noqa: E402
from pipelines.monitoring.stage import model_scores, write_reference_profile  # noqa: E402
from pipelines.monitoring.statistics import roc_auc  # noqa: E402
from pipelines.specs import load_spec  # noqa: E402
from pipelines.specs.drift import LABEL_FEATURE, SCORE_FEATURE  # noqa: E402
from pipelines.training.launch import run_workers  # noqa: E402
from pipelines.training.prepare import prepare_run, split_bucket  # noqa: E402

RESULTS = REPO_ROOT / "bench" / "results" / "drift_demo.json"
SEED = 20261123
RETRAIN = ("2018_age+10", "2018_educ+30pt", "2018_employed-15pt")
NEW_VERIFICATION = "Joint_Verified"


# -- machine, tables ----------------------------------------------------------------------


def machine() -> dict[str, Any]:
    return {
        **host(),
        "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "pandas": pd.__version__,
        "numpy": np.__version__,
    }


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A markdown table (readable on a terminal too)."""

    def cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, bool):
            return "yes" if v else "no"
        if isinstance(v, float):
            return f"{v:.4f}" if abs(v) < 100 else f"{v:,.0f}"
        return str(v)

    text = [[cell(v) for v in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in text)) if text else len(h) for i, h in enumerate(headers)]
    out = ["| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"]
    out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    out += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in text]
    return "\n".join(out)


def say(text: str = "") -> None:
    print(text, flush=True)


# -- factory steps ------------------------------------------------------------------------


def write_plain(frame: pd.DataFrame, path: Path) -> Path:
    """Plain Parquet the ML environment (pandas 1.5, pyarrow 10) reads: no pandas
    metadata, plain strings (as ``pipelines.training.prepare`` writes its shards)."""
    table_ = pa.Table.from_pandas(frame.reset_index(drop=True), preserve_index=False)
    fields = [
        pa.field(f.name, pa.string() if pa.types.is_large_string(f.type) else f.type) for f in table_.schema
    ]
    table_ = table_.cast(pa.schema(fields)).replace_schema_metadata(None)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table_, path)
    return path


def train(
    line: str, run_id: str, overrides: dict[str, Any] | None = None, profile: bool = False
) -> dict[str, Any]:
    """prepare_run + the Horovod workers (+ the reference profile, for a model that is
    then monitored against). Returns what the tables need."""
    spec = load_spec(line)
    run_dir = training_root(line) / run_id
    started = time.perf_counter()
    manifest = prepare_run(line, run_dir, {"workers": spec.training.workers, **(overrides or {})})
    run_workers(
        run_dir,
        manifest["params"]["workers"],
        timeout_s=spec.training.timeout_s,
        log_path=run_dir / "logs" / "horovodrun.log",
    )
    trained = time.perf_counter() - started
    result = json.loads((run_dir / "result.json").read_text())
    out = {
        "run_id": run_id,
        "run_dir": run_dir,
        "model_dir": run_dir / "model" / "Format-Serving",
        "batches": manifest["batches"],
        "rows": manifest["rows"],
        "workers": manifest["params"]["workers"],
        "epochs_run": result["epochs_run"],
        "val_auc": result["val_auc"],
        "train_seconds": round(trained, 1),
    }
    if profile:
        t = time.perf_counter()
        out["profile"] = write_reference_profile(run_dir)
        out["profile_seconds"] = round(time.perf_counter() - t, 1)
    say(
        f"  trained {line} {run_id}: batches {manifest['batches']}, rows {manifest['rows']}, "
        f"epochs {result['epochs_run']}, val AUC {result['val_auc']:.4f}, {trained:.0f}s"
    )
    return out


def score(model_dir: Path, frames: dict[str, pd.DataFrame], folder: Path) -> dict[str, np.ndarray]:
    """The model's scores for several frames in ONE scoring process (TF starts once)."""
    paths = [write_plain(f, folder / f"{i:02d}.parquet") for i, f in enumerate(frames.values())]
    flat = np.asarray(model_scores(model_dir, paths), dtype="float64")
    out, at = {}, 0
    for name, frame in frames.items():
        out[name] = flat[at : at + len(frame)]
        at += len(frame)
    assert at == len(flat), (at, len(flat))
    return out


def monitor(
    line: str,
    batch_id: str,
    frame: pd.DataFrame,
    profile: Path,
    scores: np.ndarray,
    drift_home: Path,
    *,
    claim: bool = True,
) -> dict[str, Any]:
    """monitor_batch with scores and labels, then (as the drift sensor would) a retrain
    claim; returns the numbers the tables show."""
    spec = load_spec(line)
    label = spec.schema.label.name
    summary = monitor_batch(
        line,
        frame,
        profile,
        batch_id=batch_id,
        scores=list(scores),
        labels=frame[label].astype(str).to_numpy(),
        positive=str(spec.schema.label.positive),
        home=drift_home,
    )
    report = json.loads(Path(summary["report_path"]).read_text())
    feats = {n: f for n, f in report["features"].items() if n != SCORE_FEATURE and f["status"] == "ok"}
    by_psi = sorted(feats, key=lambda n: -feats[n]["metrics"]["psi"]["value"])
    numeric = [n for n in feats if feats[n]["kind"] == "numeric"]
    by_ks = sorted(numeric, key=lambda n: -feats[n]["metrics"]["ks"]["statistic"])
    score_f = report["features"].get(SCORE_FEATURE) or {}
    perf = report.get("performance") or {}
    decision = None
    if claim:
        decision = claim_retrain(
            line, f"retrain-{batch_id}", policy=line_drift_spec(line).retrain, home=drift_home
        )
    labels01 = (frame[label].astype(str) == str(spec.schema.label.positive)).to_numpy()
    return {
        "batch_id": batch_id,
        "rows": int(report["n_cur"]),
        "positive_rate": float(labels01.mean()),
        "tests": report["tests"],
        "alpha_per_test": report["alpha_per_test"],
        "top_psi": [
            {
                "feature": n,
                "psi": feats[n]["metrics"]["psi"]["value"],
                "jsd": feats[n]["metrics"]["jsd"]["value"],
                "linf": feats[n]["metrics"]["linf"]["value"],
                "pvalue": feats[n]["pvalue"],
                "effect": feats[n]["effect"],
                "significant": feats[n]["significant"],
            }
            for n in by_psi[:5]
        ],
        "ks": [
            {
                "feature": n,
                "statistic": feats[n]["metrics"]["ks"]["statistic"],
                "pvalue": feats[n]["metrics"]["ks"]["pvalue"],
            }
            for n in by_ks[:3]
        ],
        "features_with_effect": [n for n in by_psi if feats[n]["effect"]],
        "features_significant": [n for n in by_psi if feats[n]["significant"]],
        "score_psi": score_f.get("metrics", {}).get("psi", {}).get("value"),
        "score_ks": score_f.get("metrics", {}).get("ks", {}).get("statistic"),
        "score_mean": float(np.mean(scores)) if len(scores) else None,
        "prediction_drift": report["prediction_drift"],
        "auc": perf.get("auc"),
        "auc_ref": perf.get("auc_ref"),
        "auc_drop": perf.get("auc_drop"),
        "auc_se": auc_se(labels01, np.asarray(scores)) if perf.get("auc") is not None else None,
        "labelled_rows": perf.get("n"),
        "max_auc_drop": perf.get("max_auc_drop"),
        "performance_alarm": bool(perf.get("auc_drifted")),
        "label_rate_alarm": bool(perf.get("label_rate_drifted")),
        "drifted": report["drifted"],
        "named": [{"feature": d["feature"], "by": d["by"]} for d in report["drifted_features"]],
        "unseen": {
            n: f["unseen"] for n, f in feats.items() if f["kind"] == "categorical" and f["unseen"]["rows"]
        },
        "episode_id": summary["episode_id"],
        "retrain_claimed": None if decision is None else decision.retrain,
        "retrain_reason": None if decision is None else decision.reason,
    }


# -- shifted batches from real rows -------------------------------------------------------


# -- comparing two models on held-out rows ------------------------------------------------


def auc_se(y: np.ndarray, scores: np.ndarray) -> float | None:
    """Hanley & McNeil (1982) standard error of a ROC AUC: how far a batch's AUC moves by
    sampling alone."""
    y = np.asarray(y, dtype=bool)
    a = roc_auc(y, scores)
    if a is None:
        return None
    n1, n0 = int(y.sum()), int((~y).sum())
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    return float(np.sqrt((a * (1 - a) + (n1 - 1) * (q1 - a * a) + (n0 - 1) * (q2 - a * a)) / (n1 * n0)))


def auc_fast(y: np.ndarray, ranks: np.ndarray) -> float:
    n1 = y.sum()
    n0 = len(y) - n1
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def logloss(y: np.ndarray, s: np.ndarray) -> float:
    y = np.asarray(y, dtype=bool)
    s = np.clip(np.asarray(s, dtype="float64"), 1e-7, 1 - 1e-7)
    return float(-np.mean(y * np.log(s) + (~y) * np.log(1 - s)))


def compare_models(y: np.ndarray, old: np.ndarray, new: np.ndarray, draws: int, seed: int) -> dict[str, Any]:
    """ROC AUC of both models, the difference (new - old) with a paired bootstrap 95%
    interval, and log loss / mean score (calibration, which AUC does not see)."""
    y = np.asarray(y, dtype=bool)
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(draws):
        i = rng.integers(0, len(y), len(y))
        yi = y[i]
        if yi.all() or not yi.any():
            continue
        diffs.append(auc_fast(yi, stats.rankdata(new[i])) - auc_fast(yi, stats.rankdata(old[i])))
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    auc_old, auc_new = roc_auc(y, old), roc_auc(y, new)
    return {
        "rows": int(len(y)),
        "positive_rate": float(y.mean()),
        "auc_old": auc_old,
        "auc_new": auc_new,
        "auc_diff": auc_new - auc_old,
        "auc_diff_ci95": [float(lo), float(hi)],
        "retrained_better": bool(lo > 0),
        "retrained_worse": bool(hi < 0),
        "logloss_old": logloss(y, old),
        "logloss_new": logloss(y, new),
        "mean_score_old": float(old.mean()),
        "mean_score_new": float(new.mean()),
    }


# -- the two lines ------------------------------------------------------------------------


def employment(args: argparse.Namespace, timings: dict[str, float]) -> dict[str, Any]:
    line = "employment"
    spec = load_spec(line)
    key, label = spec.schema.key, spec.schema.label.name
    eval_cut = spec.training.split.eval_percent
    years = {y: employment_frame(y) for y in (2015, 2016, 2017, 2018)}

    say("employment: land 2015, train on it, write its reference profile")
    t = time.perf_counter()
    make_validated_batch(HOME, line, "2015", years[2015])
    base = train(line, "base-2015", {"batches": ["2015"]}, profile=True)
    timings["employment_base_train_s"] = round(time.perf_counter() - t, 1)

    eval_2015 = years[2015][split_bucket(years[2015][key]) < eval_cut].reset_index(drop=True)
    y2018 = years[2018]
    n = args.shift_rows
    mean_age = float(y2018["AGEP"].mean())
    age = y2018["AGEP"].to_numpy(dtype="float64")
    shifted: dict[str, pd.DataFrame] = {}
    knobs: dict[str, Any] = {}
    # the control: a plain random sample of 2018, no shift
    shifted["2018_random"] = y2018.iloc[
        np.sort(np.random.default_rng(SEED).choice(len(y2018), n, replace=False))
    ]
    shifted["2018_random"] = shifted["2018_random"].reset_index(drop=True)
    knobs["2018_random"] = None
    for years_up in (2, 5, 10):
        shifted[f"2018_age+{years_up}"], knobs[f"2018_age+{years_up}"] = tilt_to(
            y2018,
            n,
            SEED + years_up,
            lambda a: np.exp(a * (age - mean_age) / 10.0),
            lambda f: float(f["AGEP"].mean()),
            mean_age + years_up,
        )
    ba = y2018["SCHL"].astype(int).to_numpy() >= 21
    shifted["2018_educ+30pt"], knobs["2018_educ+30pt"] = tilt_to(
        y2018,
        n,
        SEED + 30,
        lambda k: np.where(ba, 1.0 + k, 1.0),
        lambda f: float((f["SCHL"].astype(int) >= 21).mean()),
        float(ba.mean()) + 0.30,
    )
    rate_2018 = float((y2018[label] == 1).mean())
    shifted["2018_employed-15pt"] = label_rate_sample(y2018, label, 1, rate_2018 - 0.15, n, SEED + 15)
    knobs["2018_employed-15pt"] = rate_2018 - 0.15
    shift_desc = {}
    for name, f in shifted.items():
        shift_desc[name] = {
            "rows": len(f),
            "tilt_parameter": knobs[name],
            "mean_age": float(f["AGEP"].mean()),
            "bachelor_plus_share": float((f["SCHL"].astype(int) >= 21).mean()),
            "employed_rate": float((f[label] == 1).mean()),
            "unique_person_ids": bool(f["person_id"].is_unique),
        }
    shift_desc["2018 (all)"] = {
        "rows": len(y2018),
        "tilt_parameter": None,
        "mean_age": mean_age,
        "bachelor_plus_share": float(ba.mean()),
        "employed_rate": rate_2018,
        "unique_person_ids": True,
    }

    halves = {}
    for seed in (0, 1, 2):
        first = np.random.default_rng(seed).permutation(len(years[2016])) < len(years[2016]) // 2
        halves[seed] = first

    say("employment: the 2015 model scores every batch (one scoring process)")
    t = time.perf_counter()
    to_score = {
        "2015_eval": eval_2015,
        "2016": years[2016],
        "2017": years[2017],
        "2018": years[2018],
        **shifted,
    }
    scores = score(base["model_dir"], to_score, HOME / "scoring" / "employment-base")
    timings["employment_base_scoring_s"] = round(time.perf_counter() - t, 1)

    say("employment: monitor_batch on the real years and same-distribution controls")
    t = time.perf_counter()
    rows_years = [
        monitor(line, b, to_score[b], base["profile"], scores[b], HOME / "drift" / "years")
        for b in ("2015_eval", "2016", "2017", "2018")
    ]
    cfg = line_drift_spec(line)
    rows_halves = []
    y16, s16 = years[2016], scores["2016"]
    for seed, first in halves.items():
        ref = y16[first].reset_index(drop=True)
        prof = build_profile(
            ref,
            features_from_spec(spec),
            scores=s16[first],
            labels=(ref[label] == 1).to_numpy(),
            config=cfg,
            meta={"line": line, "model_version": "base-2015", "reference": f"2016 half {seed}"},
            seed=seed,
        )
        path = save_profile(prof, HOME / "profiles" / f"2016-half-{seed}.json")
        rows_halves.append(
            monitor(
                line,
                f"2016_half_{seed}",
                y16[~first].reset_index(drop=True),
                path,
                s16[~first],
                HOME / "drift" / f"halves-{seed}",
            )
        )
    rows_shift = [
        monitor(line, b, shifted[b], base["profile"], scores[b], HOME / "drift" / f"shift-{b}")
        for b in shifted
    ]
    timings["employment_monitor_s"] = round(time.perf_counter() - t, 1)

    say("employment: retrain on 2015 + the control and each shifted batch; compare on held-out rows")
    t = time.perf_counter()
    # held-out rows: the eval split of the stable key hash, never trained on by any model here
    held_masks = {b: (split_bucket(shifted[b][key]) < eval_cut).to_numpy() for b in ("2018_random", *RETRAIN)}
    held = {b: shifted[b][m].reset_index(drop=True) for b, m in held_masks.items()}
    held["2015_eval"] = eval_2015
    truth = {b: (f[label] == 1).to_numpy() for b, f in held.items()}
    by_model: dict[str, dict[str, np.ndarray]] = {
        "2015 only": {**{b: scores[b][m] for b, m in held_masks.items()}, "2015_eval": scores["2015_eval"]}
    }
    runs = {}
    for b in ("2018_random", *RETRAIN):
        make_validated_batch(HOME, line, b, shifted[b])
        run = train(line, f"retrain-{b}", {"batches": ["2015", b]})
        runs[f"2015 + {b}"] = {k: v for k, v in run.items() if k not in ("run_dir", "model_dir")}
        by_model[f"2015 + {b}"] = score(run["model_dir"], held, HOME / "scoring" / f"retrain-{b}")
    auc_table = {
        m: {
            h: {
                "auc": roc_auc(truth[h], s_),
                "mean_score": float(s_.mean()),
                "actual_rate": float(truth[h].mean()),
                "logloss": logloss(truth[h], s_),
            }
            for h, s_ in per.items()
        }
        for m, per in by_model.items()
    }
    comparisons = []
    control = "2015 + 2018_random"
    for b in RETRAIN:
        new = f"2015 + {b}"
        for on, against in ((b, "2015 only"), (b, control), ("2015_eval", "2015 only")):
            comparisons.append(
                {
                    "retrained": new,
                    "against": against,
                    "evaluated_on": on,
                    **compare_models(
                        truth[on], by_model[against][on], by_model[new][on], args.bootstrap, SEED
                    ),
                }
            )
    comparisons.append(
        {
            "retrained": control,
            "against": "2015 only",
            "evaluated_on": "2018_random",
            **compare_models(
                truth["2018_random"],
                by_model["2015 only"]["2018_random"],
                by_model[control]["2018_random"],
                args.bootstrap,
                SEED,
            ),
        }
    )
    timings["employment_retrains_s"] = round(time.perf_counter() - t, 1)
    retrains = {
        "runs": runs,
        "held_out_rows": {h: len(f) for h, f in held.items()},
        "auc": auc_table,
        "comparisons": comparisons,
    }
    base_info = {k: v for k, v in base.items() if k not in ("run_dir", "model_dir", "profile")}
    return {
        "base_model": base_info,
        "shifts": shift_desc,
        "years": rows_years,
        "halves_2016": rows_halves,
        "shifted": rows_shift,
        "retrains": retrains,
    }


def credit_risk(args: argparse.Namespace, timings: dict[str, float]) -> dict[str, Any]:
    line = "credit_risk"
    spec = load_spec(line)
    label, positive = spec.schema.label.name, spec.schema.label.positive
    say("credit_risk: land slices 1-3, train on them (the spec's window: every validated batch)")
    t = time.perf_counter()
    for i in (1, 2, 3):
        make_validated_batch(HOME, line, f"slice-{i}", lending_club_frame(i))
    base = train(line, "base-slices-1-3", profile=True)
    timings["credit_base_train_s"] = round(time.perf_counter() - t, 1)

    s4 = lending_club_frame(4)
    rng = np.random.default_rng(SEED)
    inc = s4.copy()
    inc["annual_inc"] = np.minimum(inc["annual_inc"] * 1.5, 2_000_000.0)
    new_cat = s4.copy()
    picked = rng.permutation(len(s4)) < round(0.25 * len(s4))
    new_cat.loc[picked, "verification_status"] = NEW_VERIFICATION
    bad_rate = float((s4[label] == positive).mean())
    n_bad = int((s4[label] == positive).sum())
    size_15 = int(n_bad / 0.15)
    batches = {
        "slice-4": s4,
        "annual_inc_x1.5": inc,
        "verification_new_25pct": new_cat,
        "verification_new_after_cleaning": new_cat[~picked].reset_index(drop=True),
        "bad_rate_15pct": label_rate_sample(s4, label, positive, n_bad / size_15, size_15, SEED),
    }
    say("credit_risk: score and monitor the slice-4 batches")
    t = time.perf_counter()
    # the model's own held-out rows of slices 1-3 (label already 0/1 there)
    own_eval = pd.read_parquet(base["run_dir"] / "data" / "eval.parquet")
    scores = score(base["model_dir"], {**batches, "_eval": own_eval}, HOME / "scoring" / "credit-base")
    y_eval = own_eval[label].to_numpy() == 1
    own = {
        "rows": len(own_eval),
        "bad": int(y_eval.sum()),
        "auc": roc_auc(y_eval, scores["_eval"]),
        "auc_se": auc_se(y_eval, scores["_eval"]),
    }
    say(
        f"  credit_risk model on its own eval split (slices 1-3, never trained on): AUC {own['auc']:.4f} "
        f"+- {own['auc_se']:.4f} ({own['rows']} loans, {own['bad']} bad)"
    )
    rows = [
        monitor(line, b, f, base["profile"], scores[b], HOME / "drift" / f"credit-{b}")
        for b, f in batches.items()
    ]
    timings["credit_monitor_s"] = round(time.perf_counter() - t, 1)
    base_info = {k: v for k, v in base.items() if k not in ("run_dir", "model_dir", "profile")}
    return {
        "base_model": base_info,
        "slice_4_bad_rate": bad_rate,
        "own_eval_split": own,
        "batches": {
            b: {"rows": len(f), "bad_rate": float((f[label] == positive).mean())} for b, f in batches.items()
        },
        "monitored": rows,
    }


# -- printing -----------------------------------------------------------------------------


def top(row: dict[str, Any], k: int = 3) -> str:
    return ", ".join(f"{t['feature']} {t['psi']:.4f}" for t in row["top_psi"][:k])


def alarms(row: dict[str, Any]) -> str:
    """What the batch alarmed on: data, prediction, performance (or no)."""
    kinds = []
    if any(d["feature"] not in (SCORE_FEATURE, LABEL_FEATURE) for d in row["named"]):
        kinds.append("data")
    if row["prediction_drift"]:
        kinds.append("prediction")
    if row["label_rate_alarm"]:
        kinds.append("label rate")
    if row["performance_alarm"]:
        kinds.append("AUC")
    return "YES: " + "+".join(kinds) if row["drifted"] else "no"


def named(row: dict[str, Any]) -> str:
    items = [f"{d['feature']}: {d['by']}" for d in row["named"]]
    if row["performance_alarm"]:
        items.append(
            f"performance: AUC {row['auc']:.3f} vs reference {row['auc_ref']:.3f}, drop {row['auc_drop']:.3f} "
            f">= {row['max_auc_drop']:g}"
        )
    return "; ".join(items) or "none"


def monitored_table(rows: list[dict[str, Any]]) -> str:
    return table(
        [
            "batch",
            "rows",
            "top features by PSI",
            "KS (stat, p)",
            "score PSI",
            "AUC +- SE (ref)",
            "label rate / mean score",
            "alarm",
            "episode",
        ],
        [
            [
                r["batch_id"],
                f"{r['rows']:,}",
                top(r),
                ", ".join(f"{k['feature']} {k['statistic']:.3f} ({k['pvalue']:.2g})" for k in r["ks"][:1]),
                r["score_psi"],
                f"{r['auc']:.4f} +- {r['auc_se']:.4f} ({r['auc_ref']:.4f})" if r["auc"] is not None else "-",
                f"{r['positive_rate']:.3f} / {r['score_mean']:.3f}",
                alarms(r),
                "opened" if r["episode_id"] else "none",
            ]
            for r in rows
        ],
    )


def named_table(rows: list[dict[str, Any]]) -> str:
    return table(
        [
            "batch",
            "what the factory names (most severe first)",
            "over an effect threshold",
            "retrain claimed",
        ],
        [
            [r["batch_id"], named(r), ", ".join(r["features_with_effect"]) or "none", r["retrain_claimed"]]
            for r in rows
        ],
    )


def report(out: dict[str, Any]) -> None:
    m = out["machine"]
    say()
    say(
        f"{describe(m)}; pandas {m['pandas']}; {m['date_utc']}; total {out['total_seconds']:.0f}s"
    )
    e = out["employment"]
    b = e["base_model"]
    say(
        f"\nemployment base model: batches {b['batches']}, rows {b['rows']}, {b['epochs_run']} epochs, "
        f"val AUC {b['val_auc']:.4f}"
    )
    say("\n### employment: real years and same-distribution controls against the 2015 model\n")
    say(monitored_table(e["years"] + e["halves_2016"]))
    say("\n### employment: shifted batches of real 2018 rows (drawn without replacement)\n")
    say(
        table(
            ["batch", "rows", "mean age", "bachelor+ share", "employed rate"],
            [
                [
                    name,
                    f"{d['rows']:,}",
                    round(d["mean_age"], 2),
                    round(d["bachelor_plus_share"], 3),
                    round(d["employed_rate"], 3),
                ]
                for name, d in e["shifts"].items()
            ],
        )
    )
    say()
    say(monitored_table(e["shifted"]))
    say()
    say(named_table(e["shifted"]))
    r = e["retrains"]
    say("\n### employment: ROC AUC of each model on held-out rows (eval split of the key hash)\n")
    held = list(r["held_out_rows"])
    say(
        table(
            ["model (trained on)", *[f"{h} ({r['held_out_rows'][h]:,})" for h in held]],
            [[model, *[r["auc"][model][h]["auc"] for h in held]] for model in r["auc"]],
        )
    )
    say("\nmean score vs actual positive rate on the same rows (calibration, which AUC does not see):\n")
    say(
        table(
            ["model (trained on)", *held],
            [
                [
                    model,
                    *[
                        f"{r['auc'][model][h]['mean_score']:.3f} ({r['auc'][model][h]['actual_rate']:.3f})"
                        for h in held
                    ],
                ]
                for model in r["auc"]
            ],
        )
    )
    say("\n### employment: retrained vs old / control, paired bootstrap 95% interval of the AUC difference\n")
    say(
        table(
            [
                "retrained on",
                "against",
                "evaluated on",
                "rows",
                "AUC against",
                "AUC retrained",
                "diff [95% CI]",
                "log loss against / retrained",
            ],
            [
                [
                    c["retrained"],
                    c["against"],
                    c["evaluated_on"],
                    f"{c['rows']:,}",
                    c["auc_old"],
                    c["auc_new"],
                    f"{c['auc_diff']:+.4f} [{c['auc_diff_ci95'][0]:+.4f}, {c['auc_diff_ci95'][1]:+.4f}]",
                    f"{c['logloss_old']:.4f} / {c['logloss_new']:.4f}",
                ]
                for c in r["comparisons"]
            ],
        )
    )
    c = out["credit_risk"]
    b = c["base_model"]
    o = c["own_eval_split"]
    say(
        f"\ncredit_risk base model: batches {b['batches']}, rows {b['rows']}, {b['epochs_run']} epochs, "
        f"val AUC {b['val_auc']:.4f}; on its own eval split AUC {o['auc']:.4f} +- {o['auc_se']:.4f} "
        f"({o['rows']:,} loans, {o['bad']} bad)"
    )
    say("\n### credit_risk: slice-4 batches against the slices 1-3 model\n")
    say(monitored_table(c["monitored"]))
    say()
    say(named_table(c["monitored"]))
    t = out["timings_s"]
    say("\ntimings (s): " + ", ".join(f"{k} {v}" for k, v in t.items()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--shift-rows", type=int, default=20_000, help="rows of each shifted employment batch"
    )
    parser.add_argument(
        "--bootstrap", type=int, default=1000, help="paired bootstrap resamples of the AUC difference"
    )
    parser.add_argument("--keep", action="store_true", help=f"keep the temporary FACTORY_HOME ({HOME})")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    started = time.perf_counter()
    say(f"FACTORY_HOME={HOME}")
    timings: dict[str, float] = {}
    try:
        out: dict[str, Any] = {"machine": machine(), "settings": vars(args) | {"output": str(args.output)}}
        out["employment"] = employment(args, timings)
        out["credit_risk"] = credit_risk(args, timings)
        out["timings_s"] = timings
        out["total_seconds"] = round(time.perf_counter() - started, 1)
        report(out)
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(out, indent=2, default=str) + "\n")
        say(f"\nwrote {args.output}")
    finally:
        if args.keep:
            say(f"kept {HOME}")
        else:
            shutil.rmtree(HOME, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
