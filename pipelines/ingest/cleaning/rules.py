"""Cleaning rules as Spark DataFrame transformations, driven by the line's spec.

Input: a batch with every column as a string (as read from CSV, or cast from
Parquet), plus ``_row`` (position in the file) and ``_corrupt_record`` (the raw
line when the CSV parser could not split it into the header's columns).

Each field is parsed and checked; every problem with a row is named in its
``_reasons``. A row with any reason goes to quarantine with all of them; the
others are typed, standardised, de-duplicated and kept. Nothing is dropped
without being counted: rows in = clean + quarantined + duplicates removed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pyspark.sql import Column, DataFrame, Observation, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pipelines.labelling import (
    GIVEN,
    LABEL_CONFIDENCE,
    LABEL_MODEL,
    LABEL_SOURCE,
    PROVENANCE_COLUMNS,
    SOURCES,
)
from pipelines.specs import FieldSpec, LineSpec

ROW = "_row"
CORRUPT = "_corrupt_record"
REASONS = "_reasons"
REASON = "_reason"
DUP = "_duplicate"
# Tokens that mean "no value" in the files batches arrive in.
MISSING_TOKENS = ("", "na", "n/a", "nan", "null", "none")
SPARK_TYPES = {"integer": T.LongType(), "double": T.DoubleType(), "string": T.StringType(), "boolean": T.BooleanType()}
TRUE_TOKENS = ("true", "t", "yes", "y", "1")
# A number as people write it in a file: Spark's own cast also takes Java forms
# ("1.5d", "2f"), "Infinity" and "NaN", which no batch means as numbers.
NUMBER = r"^[+-]?([0-9]+[.]?[0-9]*|[.][0-9]+)([eE][+-]?[0-9]+)?$"
# Integers are parsed as doubles; beyond +-2^63 they do not fit the long column
# (and Spark's ANSI cast would fail the whole batch instead of the row).
LONG_LIMIT = 2.0**63
FALSE_TOKENS = ("false", "f", "no", "n", "0")


class BatchSchemaError(ValueError):
    """The batch's columns do not match the spec: the whole batch is refused."""


@dataclass
class Checked:
    """A field after parsing: its clean value and the reasons a row is rejected."""

    value: Column
    reasons: list[Column] = field(default_factory=list)
    # named counts of repairs (clipped, filled, mapped), for the run report
    repairs: dict[str, Column] = field(default_factory=dict)


def output_columns(spec: LineSpec) -> list[str]:
    """The columns of a clean batch: the spec's fields, then, on a line with
    ``labelling:``, the label provenance columns (:mod:`pipelines.labelling`)."""
    return [*spec.schema.names, *(PROVENANCE_COLUMNS if spec.labelling is not None else ())]


def check_columns(columns: list[str], spec: LineSpec) -> list[str]:
    """Compare a batch's header with the spec; return the extra columns allowed through.
    A labelling line's batch may carry the provenance columns, or not (they are filled)."""
    expected = spec.schema.names
    optional = PROVENANCE_COLUMNS if spec.labelling is not None else ()
    missing = [c for c in expected if c not in columns]
    extra = [c for c in columns if c not in expected and c not in optional]
    dupes = sorted({c for c in columns if columns.count(c) > 1})
    problems = []
    if dupes:
        problems.append(f"duplicate column(s) {dupes}")
    if missing:
        problems.append(f"missing column(s) {missing}")
    if extra and not spec.cleaning.allow_extra_columns:
        problems.append(f"unexpected column(s) {extra} (set cleaning.allow_extra_columns to accept them)")
    if problems:
        raise BatchSchemaError(f"batch does not match the {spec.name} schema: " + "; ".join(problems))
    return extra


def _raw(name: str) -> Column:
    v = F.trim(F.col(f"`{name}`"))
    return F.when(F.lower(v).isin(*MISSING_TOKENS), F.lit(None)).otherwise(v)


def _reason(cond: Column, text: str) -> Column:
    """``[text]`` where ``cond`` holds, else ``[]``: a row's reasons are their concatenation."""
    return F.when(cond, F.array(F.lit(text))).otherwise(F.array().cast("array<string>"))


def _lookup(categories: list, aliases: dict) -> Column:
    """A case-insensitive map from raw tokens to canonical categories."""
    pairs: dict[str, str] = {str(c).lower(): str(c) for c in categories}
    pairs.update({str(k).lower(): str(v) for k, v in aliases.items()})
    return F.create_map(*[F.lit(x) for kv in pairs.items() for x in kv])


def _value(i: int) -> str:
    return f"_v{i}"  # field i's raw value: trimmed, missing tokens as null


def _parsed(i: int) -> str:
    return f"_p{i}"  # field i parsed: a double, a canonical category or a boolean


def prepare_field(i: int, f: FieldSpec) -> Column | None:
    """Field ``i`` parsed from its raw value column, computed once and read by every check."""
    raw = F.col(_value(i))
    if f.type in ("integer", "double"):
        return F.when(raw.rlike(NUMBER), raw.try_cast("double"))
    if f.type == "string" and f.categories is not None:
        return F.try_element_at(_lookup(f.categories, f.aliases), F.lower(raw))
    if f.type == "boolean":
        low_raw = F.lower(raw)
        return F.when(low_raw.isin(*TRUE_TOKENS), F.lit(True)).when(low_raw.isin(*FALSE_TOKENS), F.lit(False))
    return None


def check_field(i: int, f: FieldSpec) -> Checked:
    """Field ``i``'s checks, over the columns :func:`prepare_field` computed."""
    raw = F.col(_value(i))
    n = f.name
    reasons: list[Column] = []
    repairs: dict[str, Column] = {}

    if f.type in ("integer", "double"):
        parsed = F.col(_parsed(i))
        reasons.append(_reason(raw.isNotNull() & parsed.isNull(), f"unparseable:{n}"))
        if f.type == "integer":
            # (x % 1, not floor: Spark's floor of a double is a long and overflows)
            reasons.append(_reason(parsed.isNotNull() & (parsed % 1 != 0), f"not_an_integer:{n}"))
            too_large = parsed.isNotNull() & (F.abs(parsed) >= F.lit(LONG_LIMIT))
            reasons.append(_reason(too_large, f"overflow:{n}"))
        value = parsed
        if f.categories is not None:
            allowed = [float(c) for c in f.categories]
            reasons.append(_reason(value.isNotNull() & ~value.isin(*allowed), f"unknown_category:{n}"))
        low = F.lit(f.min) if f.min is not None else None
        high = F.lit(f.max) if f.max is not None else None
        outside = F.lit(False)
        if low is not None:
            outside = outside | (value < low)
        if high is not None:
            outside = outside | (value > high)
        outside = value.isNotNull() & outside
        if f.out_of_range == "clip":
            repairs[f"clipped:{n}"] = outside
            # greatest/least skip nulls: a missing value stays missing, not the bound
            if low is not None:
                value = F.when(value.isNotNull(), F.greatest(value, low))
            if high is not None:
                value = F.when(value.isNotNull(), F.least(value, high))
        else:
            reasons.append(_reason(outside, f"out_of_range:{n}"))
        if f.type == "integer":
            # the row is quarantined for overflow; its typed value must not fail the cast
            value = F.when(F.abs(value) < F.lit(LONG_LIMIT), value)
        value = value.cast(SPARK_TYPES[f.type])
    elif f.type == "string":
        value = raw
        if f.categories is not None:
            mapped = F.col(_parsed(i))
            unknown = raw.isNotNull() & mapped.isNull()
            if f.unknown_category == "map":
                repairs[f"mapped_unknown:{n}"] = unknown
                mapped = F.when(unknown, F.lit(str(f.unknown_value))).otherwise(mapped)
            else:
                reasons.append(_reason(unknown, f"unknown_category:{n}"))
            value = mapped
    elif f.type == "boolean":
        value = F.col(_parsed(i))
        reasons.append(_reason(raw.isNotNull() & value.isNull(), f"unparseable:{n}"))
    else:  # image fields are handled by the image cleaner, never here
        raise BatchSchemaError(f"field {n}: type {f.type} is not a tabular type")

    if f.missing == "quarantine":
        reasons.append(_reason(raw.isNull(), f"missing:{n}"))
    elif f.missing == "fill":
        repairs[f"filled:{n}"] = raw.isNull()
        value = F.coalesce(value, F.lit(f.fill_value).cast(SPARK_TYPES[f.type]))
    return Checked(value.cast(SPARK_TYPES[f.type]).alias(n), reasons, repairs)


def _provenance(spec: LineSpec, raw_columns: list[str]) -> tuple[list[Column], list[Checked]]:
    """A labelling line's provenance columns: their raw values (for ``values``) and their
    checks. Present in the batch (a label batch), they are typed and checked: a
    ``label_source`` other than given, machine or human, a source on a row without a
    label, or a confidence that is not a probability quarantines the row. Absent (an
    ordinary batch), ``label_source`` is ``given`` where the label is present."""
    label_i = spec.schema.names.index(spec.schema.label.name)
    has_label = F.col(_value(label_i)).isNotNull()
    raw_values = [
        (_raw(c) if c in raw_columns else F.lit(None).cast("string")).alias(f"_prov_{c}") for c in PROVENANCE_COLUMNS
    ]
    source_raw = F.lower(F.col(f"_prov_{LABEL_SOURCE}"))
    source = Checked(
        F.when(has_label, F.coalesce(source_raw, F.lit(GIVEN))).cast("string").alias(LABEL_SOURCE),
        [
            _reason(source_raw.isNotNull() & ~source_raw.isin(*SOURCES), f"unknown_category:{LABEL_SOURCE}"),
            _reason(source_raw.isNotNull() & ~has_label, f"source_without_label:{LABEL_SOURCE}"),
        ],
    )
    model = Checked(F.col(f"_prov_{LABEL_MODEL}").cast("string").alias(LABEL_MODEL))
    conf_raw = F.col(f"_prov_{LABEL_CONFIDENCE}")
    conf = F.when(conf_raw.rlike(NUMBER), conf_raw.try_cast("double"))
    confidence = Checked(
        conf.cast("double").alias(LABEL_CONFIDENCE),
        [
            _reason(conf_raw.isNotNull() & conf.isNull(), f"unparseable:{LABEL_CONFIDENCE}"),
            _reason(conf.isNotNull() & ((conf < 0) | (conf > 1)), f"out_of_range:{LABEL_CONFIDENCE}"),
        ],
    )
    return raw_values, [source, model, confidence]


@dataclass
class Cleaned:
    checked: DataFrame  # every row with its reasons (cache it: the counts and both outputs read it)
    flagged: DataFrame  # rows without reasons, typed, with _duplicate set for removed ones
    quarantine: DataFrame  # raw columns + _reason, _reasons, _raw_record, _row
    repair_names: list[str]
    # the duplicates by kind, counted by the first action that computes `flagged`
    duplicate_counts: Observation | None = None

    def clean(self, names: list[str]) -> DataFrame:
        return self.flagged.filter(F.col(DUP).isNull()).select(*names)

    def duplicates(self) -> dict[str, int]:
        """Removed rows by kind (``exact``, ``key``, ``key_conflict``), once ``flagged`` has been computed."""
        assert self.duplicate_counts is not None
        return {k: int(v or 0) for k, v in self.duplicate_counts.get.items()}


def _raw_columns(raw_columns: list[str]) -> list[Column]:
    return [F.col(f"_raw.`{c}`").alias(c) for c in raw_columns]


def clean_batch(batch: DataFrame, spec: LineSpec, raw_columns: list[str]) -> Cleaned:
    """Apply the spec's rules; the result's frames are lazy."""
    fields = list(enumerate(spec.schema.fields))
    provenance_raw, provenance_checks = _provenance(spec, raw_columns) if spec.labelling is not None else ([], [])
    # Each field's raw value and parsed value are computed once, below the
    # checks, and read by all of them (Spark keeps a projection apart when its
    # costly columns are read more than once). Inlined, every check repeated
    # them: the generated code grew beyond 64 KB, whole-stage code generation
    # was abandoned and every row was evaluated interpreted.
    values = batch.select(
        F.col(ROW),
        F.col(CORRUPT),
        F.struct(*[F.col(f"`{c}`") for c in raw_columns]).alias("_raw"),
        *[_raw(f.name).alias(_value(i)) for i, f in fields],
        *provenance_raw,
    )
    parsed = [(i, col) for i, f in fields if (col := prepare_field(i, f)) is not None]
    values = values.select("*", *[col.alias(_parsed(i)) for i, col in parsed])
    checks = [check_field(i, f) for i, f in fields] + provenance_checks
    reasons = [r for c in checks for r in c.reasons]
    # A malformed line's fields are shifted or missing: its field checks say
    # nothing, so it carries the one reason that does. (The reasons are a
    # concatenation of one-element arrays because that compiles; filtering the
    # nulls out of one array with a lambda is evaluated interpreted, row by row.)
    reason_array = F.when(F.col(CORRUPT).isNotNull(), F.array(F.lit("malformed_record"))).otherwise(
        F.concat(*reasons) if reasons else F.array().cast("array<string>")
    )
    repair_names = [name for c in checks for name in c.repairs]
    repair_cols = [F.coalesce(cond, F.lit(False)).alias(name) for c in checks for name, cond in c.repairs.items()]

    checked = values.select(
        F.col(ROW),
        F.col(CORRUPT),
        F.col("_raw"),
        reason_array.alias(REASONS),
        F.struct(*[c.value for c in checks]).alias("_typed"),
        *repair_cols,
    )
    # Only a quarantined row needs its raw values: without them for the others,
    # the cached batch is about half the size.
    checked = checked.withColumn("_raw", F.when(F.size(REASONS) > 0, F.col("_raw")))
    names, key = output_columns(spec), spec.schema.key
    rows = checked.filter(F.size(REASONS) == 0).select(F.col(ROW), *[F.col(f"_typed.`{n}`").alias(n) for n in names])

    # Exact duplicates: identical typed rows; the last copy in file order stays.
    # Key duplicates: distinct rows sharing a key; the last one in file order is
    # taken as the correction (keep_last) or all are quarantined (quarantine).
    # Both windows are clustered on the key, so Spark shuffles once.
    exact_rank = F.row_number().over(Window.partitionBy(*names).orderBy(F.col(ROW).desc()))
    rows = rows.repartition(*key).withColumn("_exact_rank", exact_rank)
    is_exact = (F.col("_exact_rank") > 1) & F.lit(spec.cleaning.exact_duplicates == "remove")
    by_key = Window.partitionBy(*key)
    key_rank = F.row_number().over(by_key.orderBy(is_exact.asc(), F.col(ROW).desc()))
    versions = F.sum(F.when(is_exact, 0).otherwise(1)).over(by_key)
    if spec.cleaning.key_duplicates == "keep_last":
        dup = F.when(is_exact, F.lit("exact")).when(key_rank > 1, F.lit("key"))
    else:
        dup = F.when(is_exact, F.lit("exact")).when(versions > 1, F.lit("key_conflict"))
    unobserved = rows.withColumn(DUP, dup).drop("_exact_rank")
    # Counted as the rows stream past, so the report needs no pass of its own.
    duplicate_counts = Observation("duplicates")
    kinds = ("exact", "key", "key_conflict")
    flagged = unobserved.observe(duplicate_counts, *[F.count_if(F.col(DUP) == k).alias(k) for k in kinds])

    quarantine = checked.filter(F.size(REASONS) > 0).select(
        *_raw_columns(raw_columns),
        F.array_join(REASONS, "; ").alias(REASON),
        F.col(REASONS),
        F.col(CORRUPT).alias("_raw_record"),
        F.col(ROW),
    )
    if spec.cleaning.key_duplicates == "quarantine":
        conflict = f"key_conflict:{','.join(key)}"
        conflicts = unobserved.filter(F.col(DUP) == "key_conflict").select(ROW)
        quarantine = quarantine.unionByName(
            checked.join(conflicts, on=ROW).select(
                *_raw_columns(raw_columns),
                F.lit(conflict).alias(REASON),
                F.array(F.lit(conflict)).alias(REASONS),
                F.col(CORRUPT).alias("_raw_record"),
                F.col(ROW),
            )
        )
    return Cleaned(checked, flagged, quarantine, repair_names, duplicate_counts)
