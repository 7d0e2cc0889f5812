"""A vectorised pandas reference implementation of the cleaning rules, for the benchmark.

Not production code: it exists so ``cleaning_bench.py`` can time the same
cleaning on another engine and check that the Spark job's counts agree. The
rules are those of :mod:`pipelines.ingest.cleaning.rules` (see ``clean_duckdb`` for
the list). The CSV is read by pyarrow's reader, the one behind
``pandas.read_csv(engine="pyarrow")``, called directly so the lines that do not
split into the header's columns can be counted as ``malformed_record``; all
the rules then run as whole-column pandas operations (no per-row Python).

Known, deliberate gap: a malformed line's ``_row`` is missing here.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from pipelines.ingest.cleaning.rules import (
    FALSE_TOKENS,
    LONG_LIMIT,
    MISSING_TOKENS,
    NUMBER,
    TRUE_TOKENS,
    check_columns,
)
from pipelines.specs import FieldSpec, LineSpec

DTYPES = {"integer": "int64", "double": "float64", "string": "str", "boolean": "bool"}
NULLABLE = {"integer": "Int64", "double": "float64", "string": "str", "boolean": "boolean"}


def _read(path: Path, header: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """Every column as text, in file order, and the raw text of the malformed lines."""
    malformed: list[str] = []

    def on_invalid(row) -> str:
        malformed.append(row.text)
        return "skip"

    table = pacsv.read_csv(
        path,
        parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid),
        convert_options=pacsv.ConvertOptions(
            column_types={c: pa.string() for c in header},
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        ),
    )
    return table.to_pandas(), malformed


def _check(
    f: FieldSpec, cell: pd.Series
) -> tuple[pd.Series, list[tuple[str, pd.Series]], dict[str, pd.Series]]:
    """One field: (typed value, [(reason, mask)], {repair: mask})."""
    n = f.name
    trimmed = cell.str.strip(" ")
    lowered = trimmed.str.lower()
    absent = lowered.isin(MISSING_TOKENS).to_numpy(bool) | trimmed.isna().to_numpy(bool)
    present = ~absent
    reasons: list[tuple[str, np.ndarray]] = []
    repairs: dict[str, np.ndarray] = {}

    if f.numeric:
        number = trimmed.str.fullmatch(NUMBER).fillna(False).to_numpy(bool)
        parsed = pd.to_numeric(trimmed.where(present & number), errors="coerce").astype("float64").to_numpy()
        known = ~np.isnan(parsed)
        reasons.append((f"unparseable:{n}", present & ~known))
        with np.errstate(invalid="ignore"):
            if f.type == "integer":
                reasons.append((f"not_an_integer:{n}", known & (parsed != np.floor(parsed))))
                reasons.append((f"overflow:{n}", known & (np.abs(parsed) >= LONG_LIMIT)))
            if f.categories is not None:
                allowed = np.array([float(c) for c in f.categories])
                reasons.append((f"unknown_category:{n}", known & ~np.isin(parsed, allowed)))
            outside = np.zeros(len(parsed), bool)
            if f.min is not None:
                outside |= parsed < f.min
            if f.max is not None:
                outside |= parsed > f.max
        value = parsed
        if f.out_of_range == "clip":
            repairs[f"clipped:{n}"] = outside
            value = np.clip(
                parsed, f.min if f.min is not None else -np.inf, f.max if f.max is not None else np.inf
            )
        else:
            reasons.append((f"out_of_range:{n}", outside))
        if f.type == "integer":  # like Spark's cast of a double to a long
            value = np.trunc(value)
        if f.missing == "fill":
            repairs[f"filled:{n}"] = absent
            value = np.where(absent, float(f.fill_value), value)
        typed = pd.Series(value, index=cell.index)
    elif f.type == "string":
        typed = trimmed.where(present)
        if f.categories is not None:
            lookup = {str(c).lower(): str(c) for c in f.categories}
            lookup.update({str(k).lower(): str(v) for k, v in f.aliases.items()})
            # the distinct spellings are few: map them, then take by code
            codes, spellings = pd.factorize(lowered.where(present))
            canonical = np.array([lookup.get(s) for s in spellings] + [None], dtype=object)
            mapped = canonical[codes]  # code -1 (absent) takes the trailing None
            unknown = present & pd.isna(mapped)
            if f.unknown_category == "map":
                repairs[f"mapped_unknown:{n}"] = unknown
                mapped[unknown] = str(f.unknown_value)
            else:
                reasons.append((f"unknown_category:{n}", unknown))
            typed = pd.Series(mapped, index=cell.index)
        if f.missing == "fill":
            repairs[f"filled:{n}"] = absent
            typed = typed.where(~absent, str(f.fill_value))
    elif f.type == "boolean":
        value = np.full(len(cell), None, dtype=object)
        value[lowered.isin(TRUE_TOKENS).to_numpy(bool)] = True
        value[lowered.isin(FALSE_TOKENS).to_numpy(bool)] = False
        reasons.append((f"unparseable:{n}", present & pd.isna(value)))
        if f.missing == "fill":
            repairs[f"filled:{n}"] = absent
            value[absent] = bool(f.fill_value)
        typed = pd.Series(value, index=cell.index)
    else:
        raise ValueError(f"field {n}: type {f.type} is not a tabular type")

    if f.missing == "quarantine":
        reasons.append((f"missing:{n}", absent))
    return typed, reasons, repairs


def clean(path: Path, spec: LineSpec, out_dir: Path) -> dict[str, Any]:
    """Clean one CSV batch with pandas; write ``clean.parquet`` and ``quarantine.parquet``
    under ``out_dir``; return the counts in the Spark job's report format."""
    with open(path, newline="") as fh:
        header = next(csv.reader(fh))
    check_columns(header, spec)
    out_dir.mkdir(parents=True, exist_ok=True)
    frame, malformed = _read(path, header)
    rows = len(frame)

    typed: dict[str, pd.Series] = {}
    reasons: list[tuple[str, np.ndarray]] = []
    repairs: dict[str, np.ndarray] = {}
    for f in spec.schema.fields:
        typed[f.name], field_reasons, field_repairs = _check(f, frame[f.name])
        reasons += field_reasons
        repairs.update(field_repairs)
    bad = np.zeros(rows, bool)
    for _, mask in reasons:
        bad |= mask
    ok = ~bad

    # Exact duplicates keep their last copy, then each key keeps its last row
    # (keep_last) or, with more than one version, goes to quarantine.
    names, key = spec.schema.names, spec.schema.key
    kept = pd.DataFrame({n: s[ok] for n, s in typed.items()})
    kept["_row"] = np.flatnonzero(ok)
    if spec.cleaning.exact_duplicates == "remove":
        exact = kept.duplicated(subset=names, keep="last").to_numpy()
    else:
        exact = np.zeros(len(kept), bool)
    versions = kept[~exact]
    if spec.cleaning.key_duplicates == "keep_last":
        later = versions.duplicated(subset=key, keep="last").to_numpy()
        clean_rows, conflicts = versions[~later], versions.iloc[:0]
        key_dups = int(later.sum())
    else:
        shared = versions.duplicated(subset=key, keep=False).to_numpy()
        clean_rows, conflicts = versions[~shared], versions[shared]
        key_dups = 0
    out = clean_rows[names].sort_values(key, kind="stable").reset_index(drop=True)
    for f in spec.schema.fields:
        nullable = f.missing == "keep" and out[f.name].isna().any()
        out[f.name] = out[f.name].astype((NULLABLE if nullable else DTYPES)[f.type])
    out.to_parquet(out_dir / "clean.parquet", index=False)

    # Quarantine: the raw values as they arrived and every reason, in field order.
    quarantined = np.flatnonzero(bad)
    row_reasons: list[list[str]] = [[] for _ in quarantined]
    reason_counts: dict[str, int] = {}
    for name, mask in reasons:
        hits = np.flatnonzero(mask[quarantined])
        if len(hits):
            reason_counts[name] = reason_counts.get(name, 0) + len(hits)
        for i in hits:
            row_reasons[i].append(name)
    conflict = f"key_conflict:{','.join(key)}"
    parts = [frame.iloc[quarantined].assign(_reasons=row_reasons, _raw_record=None, _row=quarantined)]
    if len(conflicts):
        reason_counts[conflict] = len(conflicts)
        c_rows = conflicts["_row"].to_numpy()
        parts.append(
            frame.iloc[c_rows].assign(_reasons=[[conflict]] * len(c_rows), _raw_record=None, _row=c_rows)
        )
    if malformed:
        reason_counts["malformed_record"] = len(malformed)
        parts.append(
            pd.DataFrame({c: [None] * len(malformed) for c in header}).assign(
                _reasons=[["malformed_record"]] * len(malformed), _raw_record=malformed, _row=None
            )
        )
    quarantine = pd.concat(parts, ignore_index=True)
    quarantine.insert(len(header), "_reason", quarantine["_reasons"].map("; ".join))
    quarantine["_row"] = quarantine["_row"].astype("Int64")
    quarantine.to_parquet(out_dir / "quarantine.parquet", index=False)

    repair_counts = {name: int(mask[ok].sum()) for name, mask in repairs.items() if mask[ok].any()}
    duplicates = {k: v for k, v in (("exact", int(exact.sum())), ("key", key_dups)) if v}
    return {
        "rows_in": rows + len(malformed),
        "rows_clean": len(out),
        "rows_quarantined": len(quarantine),
        "duplicates_removed": sum(duplicates.values()),
        "duplicates": duplicates,
        "quarantine_reasons": dict(sorted(reason_counts.items(), key=lambda kv: (-kv[1], kv[0]))),
        "repairs": repair_counts,
    }
