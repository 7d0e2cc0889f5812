"""The evaluation gate's entry point in the ML environment.

    python -m pipelines.evaluation.gate --line LINE --run-dir DIR [--force-bless-reason TEXT]

1. checks the inputs (manifest, evaluation split, the candidate's signature) and the
   line's ``evaluation:`` settings: a bad input fails here, nothing is evaluated or pushed;
2. writes the split as gzipped TFRecords of tf.Example (``<run>/evaluation/examples/``);
3. runs the line's TFX pipeline (:mod:`pipelines.evaluation.pipeline`) under a per-line
   lock: ImportExampleGen, Importer (candidate), Resolver (baseline: latest blessed),
   Evaluator, Pusher (into the serving store, atomically);
4. writes ``<run>/evaluation/result.json`` (per-slice metrics of candidate and baseline,
   the verdict and why, what was pushed) and ``report.html``, and prints the result;
   a multi-class line also gets its confusion matrix and misclassified images
   (:mod:`pipelines.evaluation.artefacts`).

Which inputs, metrics and artefacts apply is looked up by the spec's ``task``
(:data:`pipelines.evaluation.inputs.PARTS`, :data:`pipelines.evaluation.eval_config.BUILDERS`,
:data:`pipelines.evaluation.artefacts.ARTEFACTS`).

Exit status: 0 with a verdict (BLESSED, NOT_BLESSED or FORCED: all are results), 2 for
bad input (one line ``factory-eval: error: ...`` on stderr), 1 for anything else.

Re-running a run that was already pushed returns the recorded result and pushes
nothing (an Airflow retry is safe). A run that was not pushed is evaluated again, which
is how a rejected candidate is force-blessed: ``--force-bless-reason "why"``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from pipelines import storage
from pipelines.catalog import layout, records
from pipelines.evaluation import exit_without_teardown, serving
from pipelines.evaluation.inputs import GateInputError
from pipelines.specs.evaluation import TFMA_TO_SPEC, EvaluationSettingsError

BLESSED, NOT_BLESSED, FORCED = "BLESSED", "NOT_BLESSED", "FORCED"


class ForceBlessError(GateInputError):
    """A force-bless without a written reason."""


def check_force_reason(reason: str | None) -> str | None:
    """None: no force-bless. Otherwise the stripped reason; refuses an empty one."""
    if reason is None:
        return None
    text = str(reason).strip()
    if not text:
        raise ForceBlessError(
            "force-bless refused: a written reason is required (it is recorded with the model version)"
        )
    return text


def line_lock(line: str, home: Path | None = None):
    """One gate or rollback at a time per line (the SQLite MLMD store and the baseline)."""
    return storage.exclusive_lock(layout.tfx_root(line, home), layout.GATE_LOCK)


# --------------------------------------------------------------------------- results


def _slice_name(slice_key_proto) -> str:
    import tensorflow_model_analysis as tfma

    return tfma.slicer.stringify_slice_key(tfma.slicer.deserialize_slice_key(slice_key_proto))


def metric_name(key) -> str | None:
    """A TFMA MetricKey as the spec names it; a per-class value: ``recall/class_6``."""
    name = TFMA_TO_SPEC.get(key.name)
    if name is not None and key.HasField("sub_key") and key.sub_key.HasField("class_id"):
        name = f"{name}/class_{key.sub_key.class_id.value}"
    return name


def read_metrics(evaluation_uri: str) -> dict[str, dict[str, dict[str, float]]]:
    """slice -> {"candidate": {...}, "baseline": {...}, "diff": {...}} with spec metric names."""
    import math

    import tensorflow_model_analysis as tfma

    out: dict[str, dict[str, dict[str, float]]] = {}
    for m in tfma.load_metrics(evaluation_uri):
        entry = out.setdefault(_slice_name(m.slice_key), {"candidate": {}, "baseline": {}, "diff": {}})
        for kv in m.metric_keys_and_values:
            name = metric_name(kv.key)
            if name is None or kv.value.WhichOneof("type") != "double_value":
                continue
            value = kv.value.double_value.value
            value = None if math.isnan(value) else value
            role = "diff" if kv.key.is_diff else ("baseline" if kv.key.model_name == "baseline" else "candidate")
            entry[role][name] = value
    return out


def _threshold_text(name: str, threshold, value: float | None, is_diff: bool) -> str:
    v = "n/a" if value is None else f"{value:.4f}"
    if threshold.HasField("change_threshold"):
        drop = -threshold.change_threshold.absolute.value
        return f"{name} changed by {v} vs the baseline; it may drop by at most {drop:g}"
    vt = threshold.value_threshold
    parts = []
    if vt.HasField("lower_bound"):
        parts.append(f">= {vt.lower_bound.value:g}")
    if vt.HasField("upper_bound"):
        parts.append(f"<= {vt.upper_bound.value:g}")
    return f"{name} = {v}; must be {' and '.join(parts)}"


def read_failures(evaluation_uri: str) -> tuple[bool, list[dict[str, Any]]]:
    import math

    import tensorflow_model_analysis as tfma

    result = tfma.load_validation_result(evaluation_uri)
    failures = []
    for per_slice in result.metric_validations_per_slice:
        where = _slice_name(per_slice.slice_key)
        for f in per_slice.failures:
            name = metric_name(f.metric_key) or f.metric_key.name
            value = f.metric_value.double_value.value if f.HasField("metric_value") else None
            value = None if value is None or math.isnan(value) else value
            kind = "change" if f.metric_threshold.HasField("change_threshold") else "value"
            failures.append({
                "slice": where,
                "metric": name,
                "kind": kind,
                "value": value,
                "message": _threshold_text(name, f.metric_threshold, value, f.metric_key.is_diff)
                + (f" ({f.message.strip()})" if f.message.strip() else ""),
            })
    return bool(result.validation_ok), failures


def _run_of_model_uri(uri: str) -> Path:
    """A Model artifact's URI is ``<run>/model``."""
    return Path(uri).parent


def _slices(settings, counts: dict, gated: list[dict[str, str]], second: str = "positives") -> list[dict[str, Any]]:
    from pipelines.evaluation.inputs import SEP, slice_name

    gated_names = {slice_name(g) for g in gated}
    out = [{"slice": "Overall", "examples": None, second: None, "gated": True}]
    for s in settings.slice_features:
        for value, (rows, n) in counts.get(" x ".join(s), {}).items():
            name = slice_name(dict(zip(s, value.split(SEP), strict=True)))
            out.append({"slice": name, "examples": rows, second: n, "gated": name in gated_names})
    return out


def _training_mlflow_run(run_dir: Path) -> str | None:
    return records.read_mlflow_run_id(run_dir)


def previous_result(run_dir: Path, home: Path | None = None) -> dict[str, Any] | None:
    """A recorded result whose push is still in the store (live or retired), else None."""
    try:
        record = records.read_evaluation_result(run_dir)
    except records.RecordError:
        return None
    if record is None:
        return None
    prior = record.to_json()
    pushed = prior.get("serving") or {}
    version = pushed.get("version")
    if version is None:
        return None
    base = layout.serving_base(prior["line"], home)
    for candidate in (base / str(version), layout.retired_dir(base) / str(version)):
        if serving.push_info(candidate).get("run_dir") == str(run_dir):
            return prior
    return None


# --------------------------------------------------------------------------- the gate


def evaluate(
    line: str,
    run_dir: Path,
    force_bless_reason: str | None = None,
    home: Path | None = None,
) -> dict[str, Any]:
    """Run the gate on one training run; return the result (also written to result.json)."""
    from pipelines.evaluation import inputs
    from pipelines.evaluation.artefacts import ARTEFACTS
    from pipelines.evaluation.eval_config import build_eval_config, gated_slices
    from pipelines.evaluation.report import PLOT, write_plot, write_report
    from pipelines.specs import SpecError, load_spec
    from pipelines.specs.evaluation import load_settings

    started = time.monotonic()
    timings: dict[str, float] = {}
    reason = check_force_reason(force_bless_reason)
    from pipelines.evaluation import pipeline

    try:
        evaluator = pipeline.evaluator_kind()
    except ValueError as err:
        raise GateInputError(str(err)) from None
    run_dir = Path(run_dir).resolve()
    if not run_dir.is_dir():
        raise GateInputError(f"run dir {run_dir} does not exist")
    try:
        spec = load_spec(line)
    except SpecError as err:
        raise GateInputError(str(err)) from None
    settings = load_settings(spec)
    out_dir = layout.evaluation_dir(run_dir)

    prior = previous_result(run_dir, home)
    if prior is not None:
        prior["reused"] = True
        return prior

    task = spec.task
    part = inputs.PARTS[task]
    ev = part.load(run_dir, settings, spec)
    if ev.line != line:
        raise GateInputError(f"{run_dir}: the run belongs to line {ev.line!r}, not {line!r}")
    frame, label = ev.frame, ev.label
    inputs.check_model(layout.model_root(run_dir))
    orders = {f.name: [str(c) for c in f.categories] for f in spec.schema.fields if f.categories}
    counts = part.counts(ev, settings, orders)
    timings["checks_s"] = time.monotonic() - started

    t = time.monotonic()
    inputs.write_records(frame, ev.kinds, layout.evaluation_examples_dir(run_dir), layout.evaluation_split_dir(run_dir))
    timings["examples_s"] = time.monotonic() - t

    classes = inputs.classes_of(spec) if task != "binary_classification" else None
    eval_config = build_eval_config(settings, label, counts, task, classes)
    gated = gated_slices(settings, counts, task)
    mlflow_run = _training_mlflow_run(run_dir)
    info = {"line": line, "run_dir": str(run_dir), "training_run": run_dir.name, "mlflow_run_id": mlflow_run}

    with line_lock(line, home):
        t = time.monotonic()
        # a retried gate: the earlier try's blessing of this candidate must not make it its own baseline
        withdrawn = pipeline.withdraw_blessings(line, str(layout.model_root(run_dir)), home)
        tfx_pipeline = pipeline.build(line, run_dir, layout.evaluation_examples_dir(run_dir), eval_config,
                                      force_bless_reason=reason, info=info, home=home)
        timings["build_s"] = time.monotonic() - t
        outputs = pipeline.run(tfx_pipeline, line, home)
        timings["pipeline_s"] = outputs.pop("pipeline_s")
        pushed_props = (outputs.get("pushed") or {}).get("properties", {})
        forced = bool(pushed_props.get("forced")) and bool(pushed_props.get("pushed"))
        if forced:
            pipeline.set_blessing_override(line, outputs["blessing"]["id"], True, "FORCED", reason or "", home)

    t = time.monotonic()
    evaluation_uri = outputs["evaluation"]["uri"]
    metrics = read_metrics(evaluation_uri)
    ok, failures = read_failures(evaluation_uri)
    blessing_props = outputs["blessing"]["properties"]
    evaluator_blessed = blessing_props.get("blessed") == 1 and not forced
    if evaluator_blessed != ok:
        raise RuntimeError(f"the Evaluator's blessing ({blessing_props}) disagrees with its validation result")
    verdict = FORCED if forced else (BLESSED if evaluator_blessed else NOT_BLESSED)

    baseline = outputs.get("baseline")
    if baseline is not None:
        brun = _run_of_model_uri(baseline["uri"])
        baseline_info = {"model_uri": baseline["uri"], "mlmd_model_id": baseline["id"], "run_dir": str(brun),
                         "training_run": brun.name, "mlflow_run_id": _training_mlflow_run(brun)}
        blessed_on = (f"value thresholds and change thresholds vs the baseline "
                      f"(the latest blessed model: run {brun.name})")
    else:
        baseline_info = None
        blessed_on = "value thresholds only (no blessed model yet)"
    for entry in metrics.values():
        if baseline is None:
            entry["baseline"] = None
            entry["diff"] = None

    if verdict == BLESSED:
        why = f"all thresholds met ({blessed_on})"
    else:
        why = "; ".join(f"[{f['slice']}] {f['message']}" for f in failures) or "not blessed"
        if verdict == FORCED:
            why = f"force-blessed despite: {why}. Reason given: {reason}"

    serving_info = None
    if pushed_props.get("pushed"):
        serving_info = {
            "version": int(pushed_props["pushed_version"]),
            "path": pushed_props["pushed_destination"],
            "base": str(layout.serving_base(line, home)),
        }
    second = "positives" if task == "binary_classification" else "smallest_class"
    slices = _slices(settings, counts, gated, second)
    slices[0]["examples"], slices[0][second] = part.overall(ev)
    timings["results_s"] = time.monotonic() - t
    timings["total_s"] = time.monotonic() - started

    result = {
        "line": line,
        "spec_version": spec.version,
        "task": task,
        "label": label,
        "run_dir": str(run_dir),
        "training_run": run_dir.name,
        "mlflow_run_id": mlflow_run,
        "blessing": verdict,
        "evaluator_blessed": evaluator_blessed,
        "blessed_on": blessed_on,
        "why": why,
        "force_bless_reason": reason,
        "failures": failures,
        "candidate": {"model_uri": outputs["candidate"]["uri"], "mlmd_model_id": outputs["candidate"]["id"]},
        "baseline": baseline_info,
        "pushed": serving_info is not None,
        "serving": serving_info,
        "overall": metrics.get("Overall", {}).get("candidate", {}),
        "metrics": metrics,
        "slices": slices,
        "settings": settings.model_dump(mode="json", by_alias=True),
        "rows": len(frame),
        "tfx": {
            "pipeline_run_id": outputs.get("pipeline_run_id"),
            "pipeline_root": str(layout.pipeline_root(line, home)),
            "metadata": layout.mlmd_uri(line, home).split("@")[-1],
            "evaluation_uri": evaluation_uri,
            "blessing_uri": outputs["blessing"]["uri"],
            "mlmd_blessing_id": outputs["blessing"]["id"],
            "examples_uri": outputs["examples"]["uri"],
            "evaluator": evaluator,
        },
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "withdrawn_blessings": withdrawn,
        "report": {"json": str(out_dir / layout.EVALUATION_RESULT), "html": str(out_dir / layout.EVALUATION_REPORT)},
    }
    t = time.monotonic()
    if task in ARTEFACTS:
        result.update(ARTEFACTS[task](run_dir, evaluation_uri, ev, spec))
        result["timings"]["artefacts_s"] = round(time.monotonic() - t, 3)
        t = time.monotonic()
    png = write_plot(result, out_dir / PLOT)
    if png is not None:
        result["report"]["png"] = str(png)
    write_report(result, out_dir / layout.EVALUATION_REPORT)
    result["timings"]["report_s"] = round(time.monotonic() - t, 3)
    records.write_evaluation_result(run_dir, result)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.evaluation.gate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--line", required=True)
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--force-bless-reason", default=None,
                        help="push even if the gate rejects the model; the reason is recorded")
    parser.add_argument("--verbose", action="store_true", help="TFX and Beam logs at INFO")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import logging

    import absl.logging

    absl.logging.set_verbosity(absl.logging.INFO if args.verbose else absl.logging.WARNING)
    if not args.verbose:
        logging.getLogger("tensorflow").setLevel(logging.ERROR)
    try:
        result = evaluate(args.line, args.run_dir, args.force_bless_reason)
    except (GateInputError, EvaluationSettingsError) as err:
        sys.stderr.write(f"factory-eval: error: {err}\n")
        return 2
    sys.stdout.write(
        f"factory-eval: {result['blessing']} {result['line']}/{result['training_run']} "
        f"{' '.join(f'{k}={v}' for k, v in result['overall'].items() if '/' not in k)} serving={result['serving']} report={result['report']['html']}\n"
    )
    sys.stdout.write(json.dumps(result, default=str) + "\n")
    return 0


if __name__ == "__main__":
    exit_without_teardown(main())
