"""Row rules in one Spark pass: typing, required fields, allowed values, patterns and the
contract's rules. Every row leaves with `_rules` (names of the rules it breaks, empty when
valid) and `_reason` (readable), plus typed columns and the `month` partition value."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from pyspark.sql import Column
from pyspark.sql import functions as F

from ingestion.codes import code_set
from ingestion.defects import REQUIRED_MISSING, TYPE_INVALID
from ingestion.identity_spark import resident_id_mismatch_col, resident_id_problem_col
from ingestion.profiles import DEFAULT, Profile, default_profile, pattern_regex
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


# Formats whose every match Spark's own string cast reads the same way (ISO 8601 layouts): the
# cast is several times cheaper than a pattern formatter, and the regular expression has already
# made sure of the shape (the cast alone would also take '2025-1-5').
_ISO = re.compile(r"^yyyy-MM-dd(('T'| )HH:mm(\[:ss\]|:ss)?(\[\.S{1,9}\]|\.S{1,9})?)?$")


def _parse_one(value: Column, fmt: str, column_type: str) -> Column:
    if _ISO.match(fmt):
        parsed = value.try_cast("date" if column_type == "date" else "timestamp")
    else:
        parsed = F.try_to_timestamp(value, F.lit(fmt))
    return F.when(value.rlike(pattern_regex(fmt)), parsed)


def _parse_time(value: Column, formats: Sequence[str], column_type: str) -> Column:
    """The first of `formats` that the whole value matches (checked by a regular expression
    first: Spark's parser alone would also take '2025-1-5', or a timestamp for a date)."""
    parsed = [_parse_one(value, fmt, column_type) for fmt in formats]
    out = parsed[0] if len(parsed) == 1 else F.coalesce(*parsed)
    return out.cast("date") if column_type == "date" else out


def local_value(column: ContractColumn, profiles: Mapping[str, Profile] | None = None) -> Column:
    """The typed value as written in the export (timestamps still in local time), read with the
    date and time formats of the profile each row's file was read with (`_profile`)."""
    value = F.trim(raw(column.name))
    if column.type in ("date", "timestamp"):
        used = profiles or {DEFAULT: default_profile()}
        formats = {
            name: p.date_formats if column.type == "date" else p.timestamp_formats for name, p in used.items()
        }
        distinct = set(formats.values())
        if len(distinct) == 1:
            return _parse_time(value, next(iter(distinct)), column.type)
        return F.coalesce(
            *[
                F.when(F.col("_profile") == name, _parse_time(value, fmts, column.type))
                for name, fmts in formats.items()
            ]
        )
    if column.type == "string":
        return raw(column.name)
    return value.try_cast(SPARK_TYPES[column.type])


def conform(df: DataFrame, contract: Contract, profiles: Mapping[str, Profile]) -> DataFrame:
    """Values spelled the way a hospital writes them (男, 门诊) replaced by the contract's (M,
    outpatient), by the spellings of each row's profile; anything else is left as written."""
    replaced = {}
    for column in contract.column_names:
        spellings = {name: p.values[column] for name, p in profiles.items() if p.values.get(column)}
        if not spellings:
            continue
        value = F.trim(raw(column))
        cases = [
            F.when(
                F.col("_profile") == name,
                F.try_element_at(F.create_map(*[F.lit(x) for kv in sorted(m.items()) for x in kv]), value),
            )
            for name, m in spellings.items()
        ]
        replaced[column] = F.coalesce(*cases, raw(column))
    return df.withColumns(replaced) if replaced else df


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
    profiles: Mapping[str, Profile] | None = None,
) -> DataFrame:
    """Adds `__typed_<col>`, `_rules`, `_reason` and `_month` to a DataFrame of raw string columns.
    A row the reader could not map (`_rule` set, `_error` saying why) breaks that rule alone.
    `profiles`: the source profiles named in `_profile` (their date and time formats)."""
    typed = df.select("*", *[local_value(c, profiles).alias(f"__typed_{c.name}") for c in contract.columns])
    # The landing layout is <hospital>/<dataset|fhir|dicom>/<file>.
    sender = F.split(F.col("_source"), "/").getItem(0) if "_source" in df.columns else None
    checks = _failures(
        contract,
        city_hospitals=city_hospitals,
        all_hospitals=all_hospitals,
        now_local=now_local,
        sender=sender,
    )
    unread = F.col("_rule").isNotNull()
    rules = F.when(unread, F.array(F.col("_rule"))).otherwise(
        F.array_distinct(
            F.array_compact(F.array(*[F.when(broken, F.lit(name)) for name, broken, _ in checks]))
        )
    )
    reasons = F.when(unread, F.col("_error")).otherwise(
        F.concat_ws("; ", *[F.when(broken, reason) for _, broken, reason in checks])
    )
    month_col = contract.partition_by.month
    return typed.select(
        "*",
        rules.alias("_rules"),
        reasons.alias("_reason"),
        F.date_format(F.col(f"`__typed_{month_col}`"), "yyyy-MM").alias("_month"),
    )


def rule_names(contract: Contract) -> tuple[str, ...]:
    """Every rule a row of `contract` can be quarantined under: the readers' (a record they could
    not read), the built-in ones, the contract's own."""
    from ingestion.sources.fhir import FHIR_ENTRY_INVALID
    from ingestion.sources.tabular import MALFORMED, UNDECODABLE

    built_in = (REQUIRED_MISSING, TYPE_INVALID, VALUE_NOT_ALLOWED, PATTERN_MISMATCH)
    located = (HOSPITAL_NOT_IN_CITY, HOSPITAL_NOT_SENDER)
    names = (
        MALFORMED,
        UNDECODABLE,
        FHIR_ENTRY_INVALID,
        *built_in,
        *located,
        *(r.name for r in contract.rules),
    )
    return tuple(dict.fromkeys(names))


def typed_values(contract: Contract, profiles: Mapping[str, Profile] | None = None) -> list[Column]:
    """The curated projection, from the raw (already conformed) columns: typed values under the
    contract's names; timestamps converted from the exports' local time to UTC instants."""
    cols = []
    for c in contract.columns:
        value = local_value(c, profiles)
        if c.type == "timestamp":
            value = F.to_utc_timestamp(value, SOURCE_TIME_ZONE)
        cols.append(value.cast(SPARK_TYPES[c.type]).alias(c.name))
    return cols
