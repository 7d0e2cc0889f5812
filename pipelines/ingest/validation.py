"""Validation of cleaned batches with Great Expectations (GX 1.x).

Each product line has an expectation suite in GX's native JSON format under
``include/expectations/<line>.json`` (named by the spec's ``expectations``).
:func:`run_checkpoint` validates one cleaned batch (a pandas DataFrame) against
it through a file-based GX project rooted at ``gx_dir``: one pandas data
source, dataframe asset, whole-dataframe batch definition, validation
definition and checkpoint per line, all added-or-updated on every run so an
edit of the suite file takes effect and runs repeat safely, in one process or
many. Results are kept in the project's validation results store and rendered
into its Data Docs; the run is named after the batch id.

Great Expectations is imported inside the functions only: importing this
module stays cheap (DAG parsing imports it).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from pipelines.storage import exclusive_lock

if TYPE_CHECKING:
    import pandas as pd

# The GX context's data docs site (the default of a file context).
DOCS_SITE = "local_site"
# How much of each failed expectation's result GX keeps (counts and up to 20
# example values; "COMPLETE" would list every failing row of a 70k-row batch).
RESULT_FORMAT = "SUMMARY"
# Sample of unexpected values kept in a FailedExpectation.
MAX_EXAMPLES = 10


@dataclass(frozen=True)
class FailedExpectation:
    """One expectation a batch broke, with what GX observed instead."""

    expectation: str
    column: str | None
    kwargs: dict
    observed: Any

    def describe(self) -> str:
        where = f" on {self.column}" if self.column else ""
        return f"{self.expectation}{where}: observed {_short(self.observed)}"


@dataclass(frozen=True)
class ValidationOutcome:
    """The verdict of one checkpoint run on one batch."""

    success: bool
    evaluated: int
    successful: int
    failed: list[FailedExpectation] = field(default_factory=list)
    data_docs: str = ""
    result_id: str = ""
    # expectations not applied to this batch: a label batch is a chosen subset of rows, so
    # the suite's population expectations (``meta.population``) do not describe it
    skipped: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable form (what the batch ledger records)."""
        return asdict(self)

    def describe(self) -> str:
        """A human message: the verdict, each failed expectation, where the Data Docs are."""
        head = (
            f"{self.successful}/{self.evaluated} expectations passed"
            if self.success
            else f"{len(self.failed)} of {self.evaluated} expectations failed:"
        )
        lines = [head] + [f"  - {f.describe()}" for f in self.failed]
        lines.append(f"Data Docs: {self.data_docs}")
        return "\n".join(lines)


def load_suite_dict(suite_file: Path) -> dict:
    """Read an expectation suite JSON file; raise ValueError naming the file if it is not one."""
    suite_file = Path(suite_file)
    try:
        data = json.loads(suite_file.read_text())
    except FileNotFoundError:
        raise ValueError(f"{suite_file}: expectation suite file not found") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{suite_file}: not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{suite_file}: an expectation suite is a JSON object, got {type(data).__name__}")
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{suite_file}: 'name' must be a non-empty string")
    expectations = data.get("expectations")
    if not isinstance(expectations, list) or not expectations:
        raise ValueError(f"{suite_file}: 'expectations' must be a non-empty list")
    for i, exp in enumerate(expectations):
        if not isinstance(exp, dict) or not isinstance(exp.get("type"), str):
            raise ValueError(f"{suite_file}: expectations.{i}: each expectation needs a 'type'")
        if not isinstance(exp.get("kwargs", {}), dict):
            raise ValueError(f"{suite_file}: expectations.{i}.kwargs: must be an object")
    return data


def _name(exp: dict) -> str:
    column = (exp.get("kwargs") or {}).get("column")
    return f"{exp['type']} on {column}" if column else exp["type"]


def leave_out(suite_dict: dict, *, label_batch: bool = False, unlabelled: str | None = None) -> tuple[dict, list[str]]:
    """The suite without the population expectations (``"meta": {"population": true}``: row
    counts, class sets and rates, means, medians) that do not describe a batch:

    - ``label_batch``: a batch of labels given later to chosen rows (the confident ones,
      the reviewed ones): their mix says nothing about the data, while every row-level
      expectation still holds for each of them; all population expectations are left out;
    - ``unlabelled``: the label column of a batch that has no labelled row yet (the labels
      come later): the population expectations on that column have nothing to measure.

    Returns the reduced suite (under its own name when anything was left out) and the
    names of what was left out."""
    def out(exp: dict) -> bool:
        if (exp.get("meta") or {}).get("population") is not True:
            return False
        return label_batch or (unlabelled is not None and (exp.get("kwargs") or {}).get("column") == unlabelled)

    kept = [e for e in suite_dict["expectations"] if not out(e)]
    skipped = [_name(e) for e in suite_dict["expectations"] if out(e)]
    if not skipped:
        return suite_dict, []
    suffix = "label_batches" if label_batch else "unlabelled"
    return {**suite_dict, "name": f"{suite_dict['name']}.{suffix}", "expectations": kept}, skipped


def run_checkpoint(
    df: pd.DataFrame, suite_file: Path, *, line: str, batch_id: str, gx_dir: Path, label_batch: bool = False,
    unlabelled: str | None = None,
) -> ValidationOutcome:
    """Validate ``df`` (a cleaned batch of ``line``) against the suite in ``suite_file``.
    ``label_batch``, ``unlabelled``: population expectations that do not describe this
    batch are left out (:func:`leave_out`), and the outcome lists them.

    The GX project at ``gx_dir`` is created if absent. Runs against the same
    ``gx_dir`` are serialised with a file lock, so concurrent tasks do not
    interleave writes to its config and stores.
    """
    gx_dir = Path(gx_dir)
    suite_dict = load_suite_dict(Path(suite_file))
    suite_dict, skipped = leave_out(suite_dict, label_batch=label_batch, unlabelled=unlabelled)
    gx_dir.mkdir(parents=True, exist_ok=True)
    _quiet_gx()
    with exclusive_lock(gx_dir, ".validation.lock"):
        outcome = _run(df, suite_dict, Path(suite_file), line=line, batch_id=batch_id, gx_dir=gx_dir)
    return replace(outcome, skipped=skipped) if skipped else outcome


# -- internals --------------------------------------------------------------


def _run(
    df: pd.DataFrame, suite_dict: dict, suite_file: Path, *, line: str, batch_id: str, gx_dir: Path
) -> ValidationOutcome:
    with warnings.catch_warnings():
        # GX probes pyspark on import, which warns about pandas 3 (irrelevant here).
        warnings.filterwarnings("ignore", message="PySpark does not yet fully support", category=FutureWarning)
        import great_expectations as gx
        from great_expectations.checkpoint import UpdateDataDocsAction
        from great_expectations.core.run_identifier import RunIdentifier
        from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="file", project_root_dir=str(gx_dir))
    progress = context.variables.progress_bars
    if progress is None or progress.get("globally", True) or progress.get("metric_calculations", True):
        context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
        context.variables.save()

    # A pandas data source per line; the batch is passed in at run time.
    try:
        source = context.data_sources.get(line)
    except KeyError:
        source = context.data_sources.add_pandas(name=line)
    try:
        asset = source.get_asset(line)
    except LookupError:
        asset = source.add_dataframe_asset(name=line)
    try:
        batch_definition = asset.get_batch_definition(line)
    except KeyError:
        batch_definition = asset.add_batch_definition_whole_dataframe(line)

    # GX logs and drops an expectation whose configuration it cannot build, so
    # count: a suite that silently loses checks must not pass a batch.
    suite = gx.ExpectationSuite(**_suite_kwargs(suite_dict))
    if len(suite.expectations) != len(suite_dict["expectations"]):
        built = {e.expectation_type for e in suite.expectations}
        bad = sorted({e["type"] for e in suite_dict["expectations"]} - built) or "(see the GX log)"
        raise ValueError(f"{suite_file}: GX could not build some expectations: {bad}")
    suite = context.suites.add_or_update(suite)

    definition = context.validation_definitions.add_or_update(
        gx.ValidationDefinition(name=line, data=batch_definition, suite=suite)
    )
    checkpoint = context.checkpoints.add_or_update(
        gx.Checkpoint(
            name=line,
            validation_definitions=[definition],
            actions=[UpdateDataDocsAction(name="update_data_docs", site_names=[DOCS_SITE])],
            result_format={"result_format": RESULT_FORMAT},
        )
    )
    # run_time is explicit: without it GX parses run_name as a date ("2018" -> 2018-11-22),
    # and re-runs of one batch would overwrite each other's stored result.
    run_id = RunIdentifier(run_name=batch_id, run_time=dt.datetime.now(dt.UTC))
    result = checkpoint.run(batch_parameters={"dataframe": df}, run_id=run_id)

    (key, validation), *_ = result.run_results.items()
    return ValidationOutcome(
        success=bool(validation.success),
        evaluated=int(validation.statistics["evaluated_expectations"]),
        successful=int(validation.statistics["successful_expectations"]),
        failed=[_failed(r) for r in validation.results if not r.success],
        data_docs=_docs_path(context, key, gx_dir),
        result_id="/".join(str(part) for part in key.to_tuple()),
    )


def _suite_kwargs(suite_dict: dict) -> dict:
    """The suite file's fields that ExpectationSuite takes (no stale store id)."""
    keys = ("name", "expectations", "suite_parameters", "meta", "notes")
    kwargs = {k: suite_dict[k] for k in keys if k in suite_dict}
    kwargs["expectations"] = [
        {k: v for k, v in exp.items() if k != "id"} for exp in suite_dict["expectations"]
    ]
    kwargs["meta"] = dict(suite_dict.get("meta") or {})
    return kwargs


def _failed(result: Any) -> FailedExpectation:
    config = result.expectation_config
    kwargs = {k: _jsonable(v) for k, v in dict(config.kwargs).items() if k not in ("batch_id",)}
    return FailedExpectation(
        expectation=config.type,
        column=kwargs.get("column"),
        kwargs=kwargs,
        observed=_observed(result),
    )


def _observed(result: Any) -> Any:
    """What GX saw: the observed value, or the unexpected count and a sample, or the error."""
    info = result.exception_info or {}
    if isinstance(info, dict) and info.get("raised_exception"):
        return {"error": str(info.get("exception_message") or "expectation raised an exception")}
    if isinstance(info, dict):  # GX 1.x may key exception info by metric
        for value in info.values():
            if isinstance(value, dict) and value.get("raised_exception"):
                return {"error": str(value.get("exception_message") or "expectation raised an exception")}
    res = dict(result.result or {})
    if "observed_value" in res:
        return _jsonable(res["observed_value"])
    if "unexpected_count" in res:
        out: dict[str, Any] = {"unexpected_count": _jsonable(res["unexpected_count"])}
        if res.get("unexpected_percent") is not None:
            out["unexpected_percent"] = round(float(res["unexpected_percent"]), 4)
        if res.get("partial_unexpected_list") is not None:
            out["unexpected_examples"] = _jsonable(list(res["partial_unexpected_list"])[:MAX_EXAMPLES])
        return out
    return _jsonable(res) if res else None


def _jsonable(value: Any) -> Any:
    """Coerce numpy/pandas scalars and containers into plain JSON values."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    item = getattr(value, "item", None)  # numpy scalar
    if callable(item):
        try:
            return _jsonable(item())
        except (TypeError, ValueError):
            pass
    tolist = getattr(value, "tolist", None)  # numpy array
    if callable(tolist):
        return _jsonable(tolist())
    try:
        import pandas as pd

        if pd.isna(value):
            return None
    except (TypeError, ValueError, ImportError):
        pass
    return str(value)


def _short(value: Any, limit: int = 200) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _docs_path(context: Any, key: Any, gx_dir: Path) -> str:
    """The Data Docs page of this result, else the site's index page."""
    try:
        sites = context.get_docs_sites_urls(resource_identifier=key, site_name=DOCS_SITE)
    except Exception:  # noqa: BLE001 - a missing page falls back to the index
        sites = []
    for site in sites or []:
        path = _url_path(site.get("site_url"))
        if path and Path(path).is_file():
            return path
    for site in context.get_docs_sites_urls(site_name=DOCS_SITE) or []:
        path = _url_path(site.get("site_url"))
        if path:
            return path
    return str(Path(context.root_directory) / "uncommitted" / "data_docs" / DOCS_SITE / "index.html")


def _url_path(url: str | None) -> str | None:
    if not url:
        return None
    parsed = urlparse(url)
    if parsed.scheme not in ("", "file"):
        return None
    return unquote(parsed.path)


def _quiet_gx() -> None:
    """No usage statistics and no progress bars from GX in task logs."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
