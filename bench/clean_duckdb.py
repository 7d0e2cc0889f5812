"""A DuckDB SQL reference implementation of the cleaning rules, for the benchmark.

Not production code: it exists so ``cleaning_bench.py`` can time the same
cleaning on another engine and check that the Spark job's counts agree. It
follows :mod:`pipelines.ingest.cleaning.rules` rule for rule:

- every cell is trimmed of spaces; the missing tokens (``""``, ``na``, ``n/a``,
  ``nan``, ``null``, ``none``, any case) mean "no value";
- a number is a cell matching ``NUMBER`` (plain decimal or exponent form),
  then cast to a double: unparseable, not-an-integer, an integer beyond 64
  bits (overflow), unknown numeric category, and out-of-range (quarantine, or
  clip and count the repair);
- string categories are matched case-insensitively, aliases included; unknown
  ones are quarantined or mapped to the spec's ``unknown_value``;
- missing values are quarantined, kept, or filled (and counted);
- a line that does not split into the header's columns is ``malformed_record``;
- among the rows without a reason, exact duplicates (identical typed rows) keep
  the last copy in file order, then rows sharing a key keep the last one
  (``keep_last``) or are all quarantined as a key conflict (``quarantine``);
- outputs: clean rows as Parquet (sorted by key) and quarantine as Parquet with
  the raw values, ``_reason`` and ``_reasons``.

Known, deliberate gap: a malformed line's ``_row`` is NULL here.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import duckdb

from pipelines.ingest.cleaning.rules import (
    FALSE_TOKENS,
    LONG_LIMIT,
    MISSING_TOKENS,
    NUMBER,
    TRUE_TOKENS,
    check_columns,
)
from pipelines.specs import FieldSpec, LineSpec


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _str(value: Any) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def _in(values) -> str:
    return ", ".join(_str(v) for v in values)


def _num(value: float) -> str:
    return repr(float(value))


def _field_sql(i: int, f: FieldSpec, raw: str) -> tuple[str, list[str], dict[str, str], dict[str, str]]:
    """SQL for one field: (typed value, reason expressions, repair flags, helper columns).

    ``raw`` names the trimmed, missing-token-nulled value; helper columns are
    computed one level below so every expression reads them once.
    """
    n = f.name
    reasons: list[str] = []
    repairs: dict[str, str] = {}
    helpers: dict[str, str] = {}
    sql_type = {"integer": "BIGINT", "double": "DOUBLE", "string": "VARCHAR", "boolean": "BOOLEAN"}[f.type]

    if f.numeric:
        p = f"p{i}"
        helpers[p] = f"CASE WHEN regexp_full_match({raw}, {_str(NUMBER)}) THEN TRY_CAST({raw} AS DOUBLE) END"
        reasons.append(f"CASE WHEN {raw} IS NOT NULL AND {p} IS NULL THEN {_str('unparseable:' + n)} END")
        if f.type == "integer":
            reasons.append(f"CASE WHEN {p} <> floor({p}) THEN {_str('not_an_integer:' + n)} END")
            reasons.append(f"CASE WHEN abs({p}) >= {_num(LONG_LIMIT)} THEN {_str('overflow:' + n)} END")
        if f.categories is not None:
            allowed = ", ".join(_num(c) for c in f.categories)
            reasons.append(f"CASE WHEN {p} NOT IN ({allowed}) THEN {_str('unknown_category:' + n)} END")
        bounds = []
        if f.min is not None:
            bounds.append(f"{p} < {_num(f.min)}")
        if f.max is not None:
            bounds.append(f"{p} > {_num(f.max)}")
        value = p
        if bounds:
            outside = f"coalesce({' OR '.join(bounds)}, false)"
            if f.out_of_range == "clip":
                repairs[f"clipped:{n}"] = outside
                if f.min is not None:
                    value = f"greatest({value}, {_num(f.min)})"
                if f.max is not None:
                    value = f"least({value}, {_num(f.max)})"
                value = f"CASE WHEN {p} IS NOT NULL THEN {value} END"
            else:
                reasons.append(f"CASE WHEN {outside} THEN {_str('out_of_range:' + n)} END")
        if f.type == "integer":  # Spark truncates a double to a long; DuckDB's cast would round
            value = f"TRY_CAST(trunc({value}) AS BIGINT)"
    elif f.type == "string":
        value = raw
        if f.categories is not None:
            pairs = {str(c).lower(): str(c) for c in f.categories}
            pairs.update({str(k).lower(): str(v) for k, v in f.aliases.items()})
            m = f"m{i}"
            helpers[m] = (
                f"CASE lower({raw}) "
                + " ".join(f"WHEN {_str(k)} THEN {_str(v)}" for k, v in pairs.items())
                + " END"
            )
            unknown = f"({raw} IS NOT NULL AND {m} IS NULL)"
            if f.unknown_category == "map":
                repairs[f"mapped_unknown:{n}"] = unknown
                value = f"CASE WHEN {unknown} THEN {_str(f.unknown_value)} ELSE {m} END"
            else:
                reasons.append(f"CASE WHEN {unknown} THEN {_str('unknown_category:' + n)} END")
                value = m
    elif f.type == "boolean":
        b = f"b{i}"
        helpers[b] = (
            f"CASE WHEN lower({raw}) IN ({_in(TRUE_TOKENS)}) THEN true WHEN lower({raw}) IN ({_in(FALSE_TOKENS)}) THEN false END"
        )
        reasons.append(f"CASE WHEN {raw} IS NOT NULL AND {b} IS NULL THEN {_str('unparseable:' + n)} END")
        value = b
    else:
        raise ValueError(f"field {n}: type {f.type} is not a tabular type")

    if f.missing == "quarantine":
        reasons.append(f"CASE WHEN {raw} IS NULL THEN {_str('missing:' + n)} END")
    elif f.missing == "fill":
        repairs[f"filled:{n}"] = f"({raw} IS NULL)"
        value = f"coalesce({value}, CAST({_str(f.fill_value)} AS {sql_type}))"
    return f"CAST({value} AS {sql_type})", reasons, repairs, helpers


def clean(path: Path, spec: LineSpec, out_dir: Path, threads: int | None = None) -> dict[str, Any]:
    """Clean one CSV batch with DuckDB; write ``clean.parquet`` and ``quarantine.parquet``
    under ``out_dir``; return the counts in the Spark job's report format."""
    with open(path, newline="") as fh:
        header = next(csv.reader(fh))
    check_columns(header, spec)
    out_dir.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    if threads:
        con.execute(f"SET threads = {int(threads)}")

    columns = "{" + ", ".join(f"{_str(c)}: 'VARCHAR'" for c in header) + "}"
    # Every column as text; a line with too few or too many fields is rejected
    # into reject_errors (Spark's PERMISSIVE mode with a corrupt-record column).
    # The table keeps file order, so its rowid is the row's position.
    con.execute(
        f"CREATE TEMP TABLE raw AS SELECT * FROM read_csv({_str(path)}, header = true, columns = {columns}, "
        "auto_detect = false, delim = ',', quote = '\"', escape = '\"', null_padding = false, "
        "ignore_errors = true, store_rejects = true)"
    )

    position = {c: i for i, c in enumerate(header)}
    missing = _in(MISSING_TOKENS)
    trimmed, helpers, typed, reasons, repairs = [], [], [], [], {}
    for i, f in enumerate(spec.schema.fields):
        col = _ident(f"c{position[f.name]}")
        trimmed.append(
            f"CASE WHEN lower(trim({col}, ' ')) IN ({missing}) THEN NULL ELSE trim({col}, ' ') END AS r{i}"
        )
        value, field_reasons, field_repairs, field_helpers = _field_sql(i, f, f"r{i}")
        typed.append(f"{value} AS t{i}")
        reasons += field_reasons
        repairs.update(field_repairs)
        helpers += [f"{expr} AS {name}" for name, expr in field_helpers.items()]
    raw_cols = ", ".join(f"{_ident(c)} AS c{i}" for i, c in enumerate(header))
    reason_list = (
        f"list_filter([{', '.join(reasons)}], lambda x: x IS NOT NULL)" if reasons else "[]::VARCHAR[]"
    )
    repair_cols = "".join(f", coalesce({expr}, false) AS f{j}" for j, expr in enumerate(repairs.values()))
    con.execute(
        f"""
        CREATE TEMP TABLE checked AS
        WITH r AS (SELECT rowid AS _row, {raw_cols} FROM raw),
             t AS (SELECT *, {", ".join(trimmed)} FROM r),
             h AS (SELECT *{"".join(", " + h for h in helpers)} FROM t)
        SELECT _row, {", ".join(f"c{i}" for i in range(len(header)))},
               {reason_list} AS _reasons, {", ".join(typed)}{repair_cols}
        FROM h
        """
    )
    con.execute("DROP TABLE raw")

    names, key = spec.schema.names, spec.schema.key
    t_names = [f"t{i}" for i in range(len(names))]
    t_key = ", ".join(f"t{names.index(k)}" for k in key)
    t_all = ", ".join(t_names)
    malformed = con.execute("SELECT count(DISTINCT (file_id, line)) FROM reject_errors").fetchone()[0]
    rows_ok, rows_bad = con.execute(
        "SELECT count(*) FILTER (len(_reasons) = 0), count(*) FILTER (len(_reasons) > 0) FROM checked"
    ).fetchone()
    # One version per distinct typed row, at the position of its last copy.
    exact_remove = spec.cleaning.exact_duplicates == "remove"
    con.execute(
        f"CREATE TEMP TABLE versions AS SELECT {t_all}, max(_row) AS _row FROM checked WHERE len(_reasons) = 0 GROUP BY ALL"
        if exact_remove
        else f"CREATE TEMP TABLE versions AS SELECT {t_all}, _row FROM checked WHERE len(_reasons) = 0"
    )
    exact = rows_ok - con.execute("SELECT count(*) FROM versions").fetchone()[0]
    # Each key's versions, newest first: keep_last keeps the newest; quarantine
    # rejects every version of a key that has more than one.
    con.execute(
        f"CREATE TEMP TABLE ranked AS SELECT *, row_number() OVER (PARTITION BY {t_key} ORDER BY _row DESC) AS _rank, "
        f"count(*) OVER (PARTITION BY {t_key}) AS _versions FROM versions"
    )
    if spec.cleaning.key_duplicates == "keep_last":
        keep, conflict_rows, key_dups = (
            "_rank = 1",
            "false",
            con.execute("SELECT count(*) FROM ranked WHERE _rank > 1").fetchone()[0],
        )
    else:
        keep, conflict_rows, key_dups = "_versions = 1", "_versions > 1", 0

    clean_cols = ", ".join(f"t{i} AS {_ident(n)}" for i, n in enumerate(names))
    con.execute(
        f"COPY (SELECT {clean_cols} FROM ranked WHERE {keep} ORDER BY {t_key}) "
        f"TO {_str(out_dir / 'clean.parquet')} (FORMAT parquet)"
    )
    rows_clean = con.execute(f"SELECT count(*) FROM ranked WHERE {keep}").fetchone()[0]

    conflict = f"key_conflict:{','.join(key)}"
    q_raw = ", ".join(f"c{i} AS {_ident(c)}" for i, c in enumerate(header))
    q_null = ", ".join(f"NULL::VARCHAR AS {_ident(c)}" for c in header)
    q_conflict = ", ".join(f"checked.c{i} AS {_ident(c)}" for i, c in enumerate(header))
    con.execute(
        f"""COPY (
            SELECT {q_raw}, array_to_string(_reasons, '; ') AS _reason, _reasons, NULL::VARCHAR AS _raw_record, _row
            FROM checked WHERE len(_reasons) > 0
            UNION ALL
            SELECT {q_conflict}, {_str(conflict)}, [{_str(conflict)}], NULL::VARCHAR, checked._row
            FROM ranked JOIN checked USING (_row) WHERE {conflict_rows}
            UNION ALL
            SELECT {q_null}, 'malformed_record', ['malformed_record'], any_value(csv_line), NULL::BIGINT
            FROM reject_errors GROUP BY file_id, line
        ) TO {_str(out_dir / "quarantine.parquet")} (FORMAT parquet)"""
    )
    # In quarantine mode the exact copies of a conflicting version are still
    # duplicates; only the versions themselves go to quarantine.
    conflicts = con.execute(f"SELECT count(*) FROM ranked WHERE {conflict_rows}").fetchone()[0]

    reason_counts = dict(
        con.execute(
            "SELECT r, count(*) FROM (SELECT unnest(_reasons) AS r FROM checked) GROUP BY r"
        ).fetchall()
    )
    if malformed:
        reason_counts["malformed_record"] = malformed
    if conflicts:
        reason_counts[conflict] = conflicts
    repair_counts: dict[str, int] = {}
    if repairs:
        sums = con.execute(
            "SELECT "
            + ", ".join(f"sum(f{j}::BIGINT)" for j in range(len(repairs)))
            + " FROM checked WHERE len(_reasons) = 0"
        ).fetchone()
        repair_counts = {name: int(v) for name, v in zip(repairs, sums, strict=True) if v}
    con.close()

    duplicates = {k: v for k, v in (("exact", exact), ("key", key_dups)) if v}
    return {
        "rows_in": rows_ok + rows_bad + malformed,
        "rows_clean": rows_clean,
        "rows_quarantined": rows_bad + malformed + conflicts,
        "duplicates_removed": exact + key_dups,
        "duplicates": duplicates,
        "quarantine_reasons": dict(sorted(reason_counts.items(), key=lambda kv: (-kv[1], kv[0]))),
        "repairs": repair_counts,
    }
