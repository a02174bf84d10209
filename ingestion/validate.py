"""Row rules in one Spark pass: typing, required fields, allowed values, patterns and the
contract's rules. Every row leaves with `_rules` (names of the rules it breaks, empty when
valid) and `_reason` (readable), plus typed columns and the `month` partition value."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from pyspark.sql import Column
from pyspark.sql import functions as F

from ingestion.codes import code_set
from ingestion.defects import MALFORMED_LINE, REQUIRED_MISSING, TYPE_INVALID
from ingestion.identity_spark import resident_id_mismatch_col, resident_id_problem_col
from lakehouse.contracts import Column as ContractColumn
from lakehouse.contracts import Contract, Rule

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

VALUE_NOT_ALLOWED = "value_not_allowed"
PATTERN_MISMATCH = "pattern_mismatch"
HOSPITAL_NOT_IN_CITY = "hospital_not_in_city"
# A hospital's export carries its own rows only: one it did not make could claim a care
# relationship (an encounter) that opens another patient's history to somebody (docs/security.md).
HOSPITAL_NOT_SENDER = "hospital_not_sender"
# Hospital exports carry local wall-clock time in China Standard Time.
SOURCE_TIME_ZONE = "Asia/Shanghai"

SPARK_TYPES = {
    "string": "string",
    "int": "int",
    "long": "bigint",
    "double": "double",
    "date": "date",
    "timestamp": "timestamp",
    "bool": "boolean",
}


def raw(name: str) -> Column:
    return F.col(f"`{name}`")


def local_value(column: ContractColumn) -> Column:
    """The typed value as written in the export (timestamps still in local time)."""
    value = F.trim(raw(column.name))
    if column.type == "date":
        # Strict format: try_cast would also accept '2025-1-5' or a timestamp.
        return F.when(
            value.rlike(r"^\d{4}-\d{2}-\d{2}$"), F.try_to_timestamp(value, F.lit("yyyy-MM-dd"))
        ).cast("date")
    if column.type == "timestamp":
        return F.when(
            value.rlike(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?$"),
            F.try_to_timestamp(F.regexp_replace(value, " ", "T"), F.lit("yyyy-MM-dd'T'HH:mm[:ss][.SSSSSS]")),
        )
    if column.type == "string":
        return raw(column.name)
    return value.try_cast(SPARK_TYPES[column.type])


def _failures(
    contract: Contract,
    *,
    city_hospitals: list[str],
    all_hospitals: list[str],
    now_local: dt.datetime,
    sender: Column | None = None,
) -> list[tuple[str, Column, Column]]:
    """(rule name, broken?, reason) for every rule, built-in ones first; `sender` is the hospital
    whose landing folder the row came from."""
    typed = {c.name: F.col(f"`__typed_{c.name}`") for c in contract.columns}
    out: list[tuple[str, Column, Column]] = []
    missing = [c.name for c in contract.columns if c.required]
    if missing:
        names = [F.when(raw(n).isNull() | (F.trim(raw(n)) == ""), F.lit(n)) for n in missing]
        out.append(
            (
                REQUIRED_MISSING,
                F.size(F.array_compact(F.array(*names))) > 0,
                F.concat(F.lit("missing required: "), F.concat_ws(", ", *names)),
            )
        )
    for c in contract.columns:
        if c.type != "string":
            broken = raw(c.name).isNotNull() & (F.trim(raw(c.name)) != "") & typed[c.name].isNull()
            out.append(
                (
                    TYPE_INVALID,
                    broken,
                    F.format_string(f"{c.name}: '%s' is not a valid {c.type}", raw(c.name)),
                )
            )
    for c in contract.columns:
        if c.allowed:
            broken = raw(c.name).isNotNull() & ~raw(c.name).isin(*c.allowed)
            out.append(
                (
                    VALUE_NOT_ALLOWED,
                    broken,
                    F.format_string(f"{c.name}: '%s' is not one of {', '.join(c.allowed)}", raw(c.name)),
                )
            )
        if c.pattern:
            broken = raw(c.name).isNotNull() & ~raw(c.name).rlike(c.pattern)
            out.append(
                (
                    PATTERN_MISMATCH,
                    broken,
                    F.format_string(f"{c.name}: '%s' does not match {c.pattern}", raw(c.name)),
                )
            )
    hospital = contract.partition_by.hospital
    out.append(
        (
            HOSPITAL_NOT_IN_CITY,
            raw(hospital).isNotNull() & ~raw(hospital).isin(*city_hospitals),
            F.format_string(f"{hospital}: '%s' is not a hospital of this city", raw(hospital)),
        )
    )
    if sender is not None:
        out.append(
            (
                HOSPITAL_NOT_SENDER,
                raw(hospital).isNotNull() & (raw(hospital) != sender),
                F.format_string(f"{hospital}: '%s' in an export of %s", raw(hospital), sender),
            )
        )
    out += [_rule(r, typed, all_hospitals=all_hospitals, now_local=now_local) for r in contract.rules]
    return out


def _rule(
    rule: Rule, typed: dict[str, Column], *, all_hospitals: list[str], now_local: dt.datetime
) -> tuple[str, Column, Column]:
    col = rule.column or ""
    if rule.kind == "resident_id":
        problem = resident_id_problem_col(raw(col), now_local.date())
        return (
            rule.name,
            raw(col).isNotNull() & problem.isNotNull(),
            F.concat(F.lit(f"{col}: "), problem),
        )
    if rule.kind == "resident_id_matches":
        assert rule.birth_date and rule.sex
        problem = resident_id_mismatch_col(raw(col), typed[rule.birth_date], raw(rule.sex))
        return rule.name, problem.isNotNull(), problem
    if rule.kind == "not_future":
        limit = F.lit(now_local.strftime("%Y-%m-%d %H:%M:%S")).cast("timestamp")
        return (
            rule.name,
            typed[col].cast("timestamp") > limit,
            F.format_string(f"{col}: %s is in the future", raw(col)),
        )
    if rule.kind == "date_range":
        assert rule.min
        return (
            rule.name,
            typed[col].cast("date") < F.lit(rule.min).cast("date"),
            F.format_string(f"{col}: %s is before {rule.min}", raw(col)),
        )
    if rule.kind == "ordered":
        assert rule.columns
        first, second = rule.columns
        return (
            rule.name,
            typed[first] > typed[second],
            F.format_string(f"{second}: %s is before {first} %s", raw(second), raw(first)),
        )
    if rule.kind == "code_in":
        assert rule.code_list
        codes = sorted(code_set(rule.code_list))
        return (
            rule.name,
            raw(col).isNotNull() & ~raw(col).isin(*codes),
            F.format_string(f"{col}: '%s' is not in the {rule.code_list} code list", raw(col)),
        )
    if rule.kind == "hospital_known":
        return (
            rule.name,
            raw(col).isNotNull() & ~raw(col).isin(*all_hospitals),
            F.format_string(f"{col}: '%s' is not a hospital of the province", raw(col)),
        )
    raise ValueError(f"unsupported rule kind {rule.kind!r}")


def validate(
    df: DataFrame,
    contract: Contract,
    *,
    city_hospitals: list[str],
    all_hospitals: list[str],
    now_local: dt.datetime,
) -> DataFrame:
    """Adds `__typed_<col>`, `_rules`, `_reason` and `_month` to a DataFrame of raw string columns
    (plus `_error` for malformed lines)."""
    typed = df.select("*", *[local_value(c).alias(f"__typed_{c.name}") for c in contract.columns])
    # The landing layout is <hospital>/<dataset|fhir|dicom>/<file>.
    sender = F.split(F.col("_source"), "/").getItem(0) if "_source" in df.columns else None
    checks = _failures(
        contract,
        city_hospitals=city_hospitals,
        all_hospitals=all_hospitals,
        now_local=now_local,
        sender=sender,
    )
    malformed = F.col("_error").isNotNull()
    rules = F.when(malformed, F.array(F.lit(MALFORMED_LINE))).otherwise(
        F.array_distinct(
            F.array_compact(F.array(*[F.when(broken, F.lit(name)) for name, broken, _ in checks]))
        )
    )
    reasons = F.when(malformed, F.col("_error")).otherwise(
        F.concat_ws("; ", *[F.when(broken, reason) for _, broken, reason in checks])
    )
    month_col = contract.partition_by.month
    return typed.select(
        "*",
        rules.alias("_rules"),
        reasons.alias("_reason"),
        F.date_format(F.col(f"`__typed_{month_col}`"), "yyyy-MM").alias("_month"),
    )


def typed_columns(contract: Contract) -> list[Column]:
    """The curated projection: typed values under the contract's names; timestamps converted
    from the exports' local time to UTC instants."""
    cols = []
    for c in contract.columns:
        value = F.col(f"`__typed_{c.name}`")
        if c.type == "timestamp":
            value = F.to_utc_timestamp(value, SOURCE_TIME_ZONE)
        cols.append(value.cast(SPARK_TYPES[c.type]).alias(c.name))
    return cols
