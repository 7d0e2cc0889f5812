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

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

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


def check_columns(columns: list[str], spec: LineSpec) -> list[str]:
    """Compare a batch's header with the spec; return the extra columns allowed through."""
    expected = spec.schema.names
    missing = [c for c in expected if c not in columns]
    extra = [c for c in columns if c not in expected]
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
    return F.when(cond, F.lit(text))


def _lookup(categories: list, aliases: dict) -> Column:
    """A case-insensitive map from raw tokens to canonical categories."""
    pairs: dict[str, str] = {str(c).lower(): str(c) for c in categories}
    pairs.update({str(k).lower(): str(v) for k, v in aliases.items()})
    return F.create_map(*[F.lit(x) for kv in pairs.items() for x in kv])


def check_field(f: FieldSpec) -> Checked:
    raw = _raw(f.name)
    n = f.name
    reasons: list[Column] = []
    repairs: dict[str, Column] = {}

    if f.type in ("integer", "double"):
        parsed = raw.try_cast("double")
        reasons.append(_reason(raw.isNotNull() & parsed.isNull(), f"unparseable:{n}"))
        if f.type == "integer":
            reasons.append(_reason(parsed.isNotNull() & (parsed != F.floor(parsed)), f"not_an_integer:{n}"))
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
            if low is not None:
                value = F.greatest(value, low)
            if high is not None:
                value = F.least(value, high)
        else:
            reasons.append(_reason(outside, f"out_of_range:{n}"))
        value = value.cast(SPARK_TYPES[f.type])
    elif f.type == "string":
        value = raw
        if f.categories is not None:
            mapped = F.try_element_at(_lookup(f.categories, f.aliases), F.lower(raw))
            unknown = raw.isNotNull() & mapped.isNull()
            if f.unknown_category == "map":
                repairs[f"mapped_unknown:{n}"] = unknown
                mapped = F.when(unknown, F.lit(str(f.unknown_value))).otherwise(mapped)
            else:
                reasons.append(_reason(unknown, f"unknown_category:{n}"))
            value = mapped
    elif f.type == "boolean":
        low_raw = F.lower(raw)
        value = F.when(low_raw.isin(*TRUE_TOKENS), F.lit(True)).when(low_raw.isin(*FALSE_TOKENS), F.lit(False))
        reasons.append(_reason(raw.isNotNull() & value.isNull(), f"unparseable:{n}"))
    else:  # image fields are handled by the image cleaner, never here
        raise BatchSchemaError(f"field {n}: type {f.type} is not a tabular type")

    if f.missing == "quarantine":
        reasons.append(_reason(raw.isNull(), f"missing:{n}"))
    elif f.missing == "fill":
        repairs[f"filled:{n}"] = raw.isNull()
        value = F.coalesce(value, F.lit(f.fill_value).cast(SPARK_TYPES[f.type]))
    return Checked(value.cast(SPARK_TYPES[f.type]).alias(n), reasons, repairs)


@dataclass
class Cleaned:
    checked: DataFrame  # every row with its reasons (cache it: three outputs read it)
    flagged: DataFrame  # rows without reasons, typed, with _duplicate set for removed ones
    quarantine: DataFrame  # raw columns + _reason, _reasons, _raw_record, _row
    repair_names: list[str]

    def clean(self, names: list[str]) -> DataFrame:
        return self.flagged.filter(F.col(DUP).isNull()).select(*names)


def _raw_columns(raw_columns: list[str]) -> list[Column]:
    return [F.col(f"_raw.`{c}`").alias(c) for c in raw_columns]


def clean_batch(batch: DataFrame, spec: LineSpec, raw_columns: list[str]) -> Cleaned:
    """Apply the spec's rules; the result's frames are lazy."""
    checks = [check_field(f) for f in spec.schema.fields]
    reasons = [r for c in checks for r in c.reasons]
    # A malformed line's fields are shifted or missing: its field checks say
    # nothing, so it carries the one reason that does.
    reason_array = F.when(F.col(CORRUPT).isNotNull(), F.array(F.lit("malformed_record"))).otherwise(
        F.filter(F.array(*reasons), lambda x: x.isNotNull())
    )
    repair_names = [name for c in checks for name in c.repairs]
    repair_cols = [F.coalesce(cond, F.lit(False)).alias(name) for c in checks for name, cond in c.repairs.items()]

    checked = batch.select(
        F.col(ROW),
        F.col(CORRUPT),
        F.struct(*[F.col(f"`{c}`") for c in raw_columns]).alias("_raw"),
        reason_array.alias(REASONS),
        F.struct(*[c.value for c in checks]).alias("_typed"),
        *repair_cols,
    )
    names, key = spec.schema.names, spec.schema.key
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
    flagged = rows.withColumn(DUP, dup).drop("_exact_rank")

    quarantine = checked.filter(F.size(REASONS) > 0).select(
        *_raw_columns(raw_columns),
        F.array_join(REASONS, "; ").alias(REASON),
        F.col(REASONS),
        F.col(CORRUPT).alias("_raw_record"),
        F.col(ROW),
    )
    if spec.cleaning.key_duplicates == "quarantine":
        conflict = f"key_conflict:{','.join(key)}"
        conflicts = flagged.filter(F.col(DUP) == "key_conflict").select(ROW)
        quarantine = quarantine.unionByName(
            checked.join(conflicts, on=ROW).select(
                *_raw_columns(raw_columns),
                F.lit(conflict).alias(REASON),
                F.array(F.lit(conflict)).alias(REASONS),
                F.col(CORRUPT).alias("_raw_record"),
                F.col(ROW),
            )
        )
    return Cleaned(checked=checked, flagged=flagged, quarantine=quarantine, repair_names=repair_names)
