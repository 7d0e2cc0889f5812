"""Tuning benchmark: default vs tuned settings next to the baselines, TPE vs random search,
and the time per trial with and without pruning, in one run.

    .venv/airflow/bin/python bench/tuning_bench.py [--lines credit_risk,employment]
        [--trials N] [--compare credit_risk] [--keep DIR]

Runs in the orchestration environment, like the tuning DAG's tasks: a study is the tuning
stage's own ``start_study`` -> ``run_trial`` (one per trial, ``parallel`` at a time, in
threads instead of Airflow task instances) -> ``finish_study``, on an Optuna SQLite storage
and a local MLflow store in a temporary ``FACTORY_HOME``; each trial trains through the
Horovod launcher and worker like any training run. Data: every real row of both tabular lines
(``bench/realdata.py``) as validated batches.

1. **Quality** (each line of ``--lines``): a study with the spec's ``tuning:`` settings (TPE,
   median pruning, the spec's trial count unless ``--trials``); then two trainings with the
   spec's training settings (its epochs and workers): the spec's own model settings
   ("default") and the line's tuned settings the study wrote ("tuned"), both scored on the
   gate's held-out evaluation split by their exported SavedModels, next to a logistic
   regression and LightGBM fitted on the same training rows (``bench/training_bench.py``'s
   baselines). Trials are judged on the validation split only; the evaluation split is seen
   once, by the final models.
2. **Search** (each line of ``--compare``, same trial budget): TPE against random search
   (best validation value reached by trial count), and TPE with the median pruner against TPE
   without pruning (time per trial and the study's wall time). The yardstick trial (the
   spec's current settings) opens every study alike; no study is warm-started here.

Prints the machine and the tables; writes ``bench/results/tuning.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.machine import describe, write_results  # noqa: E402
from bench.training_bench import (  # noqa: E402
    baselines,
    delong,
    horovod,
    log,
    machine,
    read_split,
    score_models,
    write_batches,
)

GOALS = {"credit_risk": 0.75, "employment": 0.908}
CHECKPOINTS = (4, 8, 12, 16, 20, 24, 32, 48)


def include_copy(work: Path, name: str, line: str, **tuning: Any) -> Path:
    """A copy of ``include/`` whose ``line`` spec has these ``tuning:`` settings changed."""
    import yaml

    # one folder per line and change: the specs are cached by folder, so a folder reused for
    # another line would hand back the first line's changed spec
    target = work / f"include-{name}-{line}"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(REPO / "include", target)
    path = target / "lines" / f"{line}.yaml"
    data = yaml.safe_load(path.read_text())
    data["tuning"].update(tuning)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return target


def run_study(line: str, home: Path, tag: str, options: dict[str, Any], include: Path | None = None) -> dict[str, Any]:
    """One study through the tuning stage's functions; trials ``parallel`` at a time."""
    # every study here starts from the spec's settings: no tuned settings of an earlier study
    from pipelines.catalog import layout, records
    from pipelines.specs import load_spec
    from pipelines.tuning import stage

    layout.tuned_params_path(line, home).unlink(missing_ok=True)
    previous = os.environ.get("FACTORY_INCLUDE")
    if include is not None:
        os.environ["FACTORY_INCLUDE"] = str(include)
    try:
        spec = load_spec(line)
        started = time.perf_counter()
        info = stage.start_study(line, f"bench-{tag}", options, home)
        parallel = int(info.get("parallel") or spec.tuning.parallel)

        def one(index: int) -> dict[str, Any]:
            t0 = time.perf_counter()
            try:
                out = stage.run_trial(line, info, index, home)
            except Exception as err:  # a failed trial is recorded by the stage; the study goes on
                out = {"state": "FAIL", "error": str(err)[:300]}
            out = dict(out or {})
            out["wall_s"] = round(time.perf_counter() - t0, 2)
            return out

        with ThreadPoolExecutor(max_workers=parallel) as pool:
            trials = list(pool.map(one, info["indices"]))
        try:
            stage.finish_study(line, info, home)
        except Exception as err:  # noqa: BLE001 - no trial completed: reported below
            log(f"{line} {tag}: finish: {err}")
        wall = time.perf_counter() - started
        record = records.read_study_record(line, info["study"], home)
    finally:
        if include is not None:
            if previous is None:
                os.environ.pop("FACTORY_INCLUDE", None)
            else:
                os.environ["FACTORY_INCLUDE"] = previous
    values = []
    best_so_far = []
    for t in sorted(record.trials, key=lambda t: t.number):
        if t.state == "COMPLETE" and t.value is not None:
            values.append(t.value)
        best_so_far.append(max(values) if values else None)
    states: dict[str, int] = {}
    for t in record.trials:
        states[t.state] = states.get(t.state, 0) + 1
    seconds = [t.seconds for t in record.trials if t.seconds is not None]
    return {
        "study": info["study"],
        "options": options,
        "sampler": record.sampler,
        "pruner": record.pruner,
        "wall_s": round(wall, 1),
        "trials": len(record.trials),
        "states": states,
        "mean_trial_s": round(sum(seconds) / len(seconds), 1) if seconds else None,
        "mean_trial_wall_s": round(sum(t["wall_s"] for t in trials) / len(trials), 1) if trials else None,
        "task_errors": [t["error"] for t in trials if t.get("error")],
        "best": record.best,
        "best_so_far": best_so_far,
        "importances": record.importances,
        "trial_table": [
            {"number": t.number, "state": t.state, "value": t.value, "seconds": t.seconds,
             "enqueued": bool(t.enqueued), "params": t.params}
            for t in sorted(record.trials, key=lambda t: t.number)
        ],
    }


def final_models(line: str, home: Path, work: Path, repeats: int) -> dict[str, Any]:
    """The spec's settings and the tuned settings, each trained ``repeats`` times with the
    spec's training settings (the worker's dropout masks are not reproducible under XLA, so
    one training is one draw) and scored on the held-out evaluation split, next to the
    baselines fitted on the same training rows."""
    import numpy as np
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    from pipelines.specs import load_spec
    from pipelines.training.prepare import prepare_run

    runs: dict[str, list[Path]] = {"default": [], "tuned": []}
    manifests: dict[str, dict[str, Any]] = {}
    trained: dict[str, list[dict[str, Any]]] = {"default": [], "tuned": []}
    for r in range(repeats):
        for name in runs:
            run = work / f"final-{line}-{name}-{r}"
            # exactly the spec (no tuned settings), and what the next training would use
            manifest = prepare_run(line, run, None, home, spec=load_spec(line) if name == "default" else None)
            if name == "tuned" and (manifest.get("tuned") or {}).get("used") is not True:
                raise RuntimeError(f"{line}: the tuned settings were not applied: {manifest.get('tuned')}")
            manifests[name] = manifest
            runs[name].append(run)
            trained[name].append(horovod(run, manifest["params"]["workers"]))
            log(f"{line} {name} #{r + 1}: val AUC {trained[name][-1]['val_auc']:.4f} "
                f"best epoch {trained[name][-1]['best_epoch']}, wall {trained[name][-1]['wall_s']:.0f}s")
    score_models([(run / "model" / "Format-Serving", run / "data" / "eval.parquet", run / "eval_scores.parquet")
                  for name in runs for run in runs[name]])
    first = runs["default"][0]
    split = read_split(first)
    label = manifests["default"]["label"]["name"]
    y = split["eval"][label].to_numpy()
    for run in runs["tuned"]:
        other = pd.read_parquet(run / "data" / "eval.parquet")[label].to_numpy()
        if len(other) != len(y) or not (other == y).all():
            raise RuntimeError(f"{line}: the runs' evaluation splits differ")
    base = baselines(first, split)
    out: dict[str, Any] = {"rows": manifests["default"]["rows"], "goal_auc": GOALS.get(line), "repeats": repeats}
    for name in runs:
        scores = [pd.read_parquet(run / "eval_scores.parquet")["score"].to_numpy() for run in runs[name]]
        aucs = [float(roc_auc_score(y, s)) for s in scores]
        mean_scores = np.mean(scores, axis=0)
        out[name] = {
            "eval_auc": float(np.mean(aucs)),
            "eval_auc_each": aucs,
            "eval_auc_sd": float(np.std(aucs, ddof=1)) if len(aucs) > 1 else None,
            "val_auc_each": [t["val_auc"] for t in trained[name]],
            "best_epoch_each": [t["best_epoch"] for t in trained[name]],
            "wall_s_each": [t["wall_s"] for t in trained[name]],
            "params": {k: manifests[name]["params"][k] for k in ("batch_size", "learning_rate", "learning_rate_decay")},
            "model": manifests[name]["model"],
            # the repeats' mean score against each baseline, paired on the same rows
            "mean_score_minus_logreg": delong(y, mean_scores, base["logreg"]["_scores"]),
            "mean_score_minus_lightgbm": delong(y, mean_scores, base["lightgbm"]["_scores"]),
        }
    out["tuned"]["provenance"] = manifests["tuned"]["tuned"]
    out["logreg"] = {k: v for k, v in base["logreg"].items() if not k.startswith("_")}
    out["lightgbm"] = {k: v for k, v in base["lightgbm"].items() if not k.startswith("_")}
    best_baseline = max(out["logreg"]["auc"], out["lightgbm"]["auc"])
    goal = GOALS.get(line)
    out["goal_met"] = bool(goal is not None and out["tuned"]["eval_auc"] >= goal
                           and out["tuned"]["eval_auc"] > best_baseline)
    out["short_of_goal"] = None if goal is None else round(goal - out["tuned"]["eval_auc"], 4)
    return out


def fmt(v: Any, spec: str = ".4f") -> str:
    return "-" if v is None else format(v, spec)


def quality_table(quality: dict[str, Any]) -> list[str]:
    rows = ["Held-out evaluation split, ROC AUC (final models: the spec's training settings; "
            "default and tuned: mean of the repeats)",
            f"{'line':<12} {'default':>8} {'tuned':>8} {'logreg':>8} {'LightGBM':>9} {'goal':>6}  met",
            "-" * 62]
    for line, q in quality.items():
        rows.append(f"{line:<12} {q['default']['eval_auc']:>8.4f} {q['tuned']['eval_auc']:>8.4f} "
                    f"{q['logreg']['auc']:>8.4f} {q['lightgbm']['auc']:>9.4f} {fmt(q['goal_auc'], '.3f'):>6}  "
                    f"{'yes' if q['goal_met'] else 'no'}")
    for line, q in quality.items():
        each = {k: ", ".join(f"{v:.4f}" for v in q[k]["eval_auc_each"]) for k in ("default", "tuned")}
        rows.append(f"{line}: default runs {each['default']}; tuned runs {each['tuned']}; "
                    f"tuned - default {q['tuned']['eval_auc'] - q['default']['eval_auc']:+.4f}")
        d = q["tuned"]["mean_score_minus_lightgbm"]
        rows.append(f"{line}: tuned (mean score of the runs) - LightGBM {d['diff']:+.4f} "
                    f"(95% CI {d['ci95'][0]:+.4f} .. {d['ci95'][1]:+.4f})")
    return rows


def study_table(line: str, name: str, s: dict[str, Any]) -> list[str]:
    best = s["best"] or {}
    return [f"{line} {name}: {s['trials']} trials {s['states']}, wall {s['wall_s']:.0f}s, "
            f"mean {fmt(s['mean_trial_s'], '.1f')}s/trial, best val {fmt(best.get('value'))} "
            f"(trial {best.get('trial')}): {json.dumps(best.get('params'))}",
            "   importances: " + ", ".join(f"{k} {v:.2f}" for k, v in (s["importances"] or {}).items())]


def compare_table(line: str, c: dict[str, Any]) -> list[str]:
    n = max(len(c[k]["best_so_far"]) for k in ("tpe", "random"))
    marks = [m for m in CHECKPOINTS if m <= n] or [n]
    rows = [f"{line}: best validation value by trial count (same budget, same first trial)",
            f"{'trials':<22}" + "".join(f"{m:>8}" for m in marks), "-" * (22 + 8 * len(marks))]
    for key, title in (("tpe", "TPE + median pruner"), ("random", "random + median pruner"),
                       ("tpe_no_pruning", "TPE, no pruning")):
        b = c[key]["best_so_far"]
        rows.append(f"{title:<22}" + "".join(f"{fmt(b[m - 1] if m <= len(b) else None):>8}" for m in marks))
    rows.append("")
    rows.append(f"{'':<22}{'study wall':>12}{'s/trial':>10}{'complete':>10}{'pruned':>8}{'failed':>8}")
    for key, title in (("tpe", "TPE + median pruner"), ("random", "random + median pruner"),
                       ("tpe_no_pruning", "TPE, no pruning")):
        s = c[key]
        rows.append(f"{title:<22}{s['wall_s']:>11.0f}s{fmt(s['mean_trial_s'], '.1f'):>10}"
                    f"{s['states'].get('COMPLETE', 0):>10}{s['states'].get('PRUNED', 0):>8}{s['states'].get('FAIL', 0):>8}")
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", default="credit_risk,employment")
    ap.add_argument("--trials", type=int, default=0, help="trials per study (0: the spec's)")
    ap.add_argument("--compare", default="credit_risk", help="lines for TPE vs random and pruning ('' none)")
    ap.add_argument("--repeats", type=int, default=3, help="trainings of each final model")
    ap.add_argument("--keep", type=Path, help="work here and keep it (default: a temp dir, removed)")
    ap.add_argument("--out", default="tuning")
    args = ap.parse_args()
    lines = [x for x in args.lines.split(",") if x]
    compare = [x for x in args.compare.split(",") if x]
    t0 = time.perf_counter()
    work = args.keep.resolve() if args.keep else Path(tempfile.mkdtemp(prefix="tuning-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    home = work / "home"
    os.environ["FACTORY_HOME"] = str(home)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.pop("FACTORY_OPTUNA_STORAGE", None)
    mc = machine()
    log(f"work dir {work}")
    write_batches(home)
    report: dict[str, Any] = {"studies": {}, "quality": {}, "compare": {}}
    try:
        for line in lines:
            options = {"trials": args.trials} if args.trials else {}
            report["studies"][line] = run_study(line, home, f"{line}-tpe", {**options, "warm_start": False})
            for row in study_table(line, "study (spec's settings)", report["studies"][line]):
                log(row)
            report["quality"][line] = final_models(line, home, work, args.repeats)
        for line in compare:
            options = {"trials": args.trials} if args.trials else {}
            c = {"tpe": report["studies"].get(line)}
            if c["tpe"] is None:
                c["tpe"] = run_study(line, home, f"{line}-tpe", {**options, "warm_start": False})
            c["random"] = run_study(line, home, f"{line}-random", {**options, "warm_start": False},
                                    include_copy(work, "random", line, sampler="random"))
            c["tpe_no_pruning"] = run_study(line, home, f"{line}-nopruning", {**options, "warm_start": False},
                                            include_copy(work, "nopruning", line, pruner="none"))
            report["compare"][line] = c
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    seconds = time.perf_counter() - t0
    print(describe(mc))
    print(f"benchmark total {seconds:.0f} s")
    print()
    print("\n".join(quality_table(report["quality"])))
    for line, s in report["studies"].items():
        print()
        print("\n".join(study_table(line, "study", s)))
    for line, c in report["compare"].items():
        print()
        print("\n".join(compare_table(line, c)))
    command = "bench/tuning_bench.py " + " ".join(sys.argv[1:])
    path = write_results(args.out, command.strip(), mc, seconds, report)
    print(f"\nresults: {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
