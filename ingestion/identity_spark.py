"""The resident-ID checks of `ingestion.identity` as Spark column expressions.

Pure Spark SQL (no Python UDF), so the checks run in the JVM next to the data. Every step uses
`try_*` functions or is guarded, because Spark 4 runs with ANSI mode on, where a failing cast
raises instead of returning null and would stop a whole ingestion job over one bad row.
The reason texts equal the Python ones; tests/unit/test_identity_spark.py holds them together.
"""

from __future__ import annotations

from datetime import date

from pyspark.sql import Column
from pyspark.sql import functions as F

from lakehouse.identity import (
    BAD_CHECK,
    BAD_CHECK_FORMAT,
    CHECK_CHARACTERS,
    EARLIEST_BIRTH_DATE,
    EARLY_BIRTH_DATE,
    FUTURE_BIRTH_DATE,
    IMPOSSIBLE_BIRTH_DATE,
    LENGTH,
    LOWER_CASE_X,
    MISSING,
    NON_DIGIT,
    PROVINCE_CODES,
    UNKNOWN_PROVINCE,
    WEIGHTS,
    WRONG_LENGTH,
)


def _date_lit(value: date) -> Column:
    return F.lit(value.isoformat()).cast("date")


def _readable(col: Column) -> Column:
    """True when the ID has 18 characters, the first 17 ASCII digits (Java's [0-9] is ASCII)."""
    return (F.length(col) == LENGTH) & F.substring(col, 1, 17).rlike("^[0-9]{17}$")


def _birth_date(col: Column) -> Column:
    """The encoded birth date, null when impossible.

    Spark's strict parser rejects 19900230 like Python does, but accepts year 0000, which
    Python's `date` cannot hold; null it so both sides call it impossible.
    """
    digits = F.substring(col, 7, 8)
    parsed = F.try_to_date(digits, "yyyyMMdd")
    return F.when(F.substring(col, 7, 4) != "0000", parsed)


def _expected_check(col: Column) -> Column:
    """The MOD 11-2 check character of the first 17 characters (null unless all are digits)."""
    total = F.lit(0)
    for i, weight in enumerate(WEIGHTS):
        total = total + F.substring(col, i + 1, 1).try_cast("int") * F.lit(weight)
    table = F.array(*[F.lit(c) for c in CHECK_CHARACTERS])
    return F.element_at(table, F.pmod(total, F.lit(11)) + 1)


def _valid_fast(col: Column, today: date) -> Column:
    """True for an ID that passes every check — most IDs — by cheap means: characters mapped
    away instead of a regular expression, digits read as character codes instead of casts, the
    birth date compared as text (a day up to 28 needs no calendar). Never true for an invalid
    ID; false sends the value to the full check, which names the problem. (`&` stops at the first
    false part, so the sum is only computed for 17 digits.)"""
    first17 = F.substring(col, 1, 17)
    total = F.lit(0)
    for i, weight in enumerate(WEIGHTS):
        total = total + (F.ascii(F.substring(col, i + 1, 1)) - F.lit(48)) * F.lit(weight)
    expected = F.element_at(F.array(*[F.lit(c) for c in CHECK_CHARACTERS]), F.pmod(total, F.lit(11)) + 1)
    ymd = F.substring(col, 7, 8)
    month, day = F.substring(col, 11, 2), F.substring(col, 13, 2)
    plausible_day = (month >= "01") & (month <= "12") & (day >= "01") & (day <= "28")
    return (
        (F.length(col) == LENGTH)
        & (F.translate(first17, "0123456789", "") == "")
        & F.substring(col, 1, 2).isin(*sorted(PROVINCE_CODES))
        & (ymd >= F.lit(EARLIEST_BIRTH_DATE.strftime("%Y%m%d")))
        & (ymd <= F.lit(f"{today.year:04d}{today.month:02d}{today.day:02d}"))
        & (plausible_day | F.try_to_date(ymd, "yyyyMMdd").isNotNull())
        & (F.substring(col, 18, 1) == expected)
    )


def resident_id_problem_col(col: Column, today: date) -> Column:
    """Null when `col` holds a valid resident ID, else the same reason as `resident_id_problem`."""
    return F.when(_valid_fast(col, today), F.lit(None).cast("string")).otherwise(_problem(col, today))


def _problem(col: Column, today: date) -> Column:
    last = F.substring(col, 18, 1)
    birth = _birth_date(col)
    expected = _expected_check(col)
    return (
        F.when(col.isNull(), F.lit(MISSING))
        .when(
            F.length(col) != LENGTH,
            F.format_string(f"{WRONG_LENGTH}: %d characters, expected {LENGTH}", F.length(col)),
        )
        .when(
            ~F.substring(col, 1, 17).rlike("^[0-9]{17}$"),
            F.lit(f"{NON_DIGIT} in the first 17 positions"),
        )
        .when(last == "x", F.lit(f"{LOWER_CASE_X} as check character, expected upper-case X"))
        .when(
            ~last.isin(*"0123456789X"),
            F.format_string(f"{BAD_CHECK_FORMAT}: '%s' is not a digit or X", last),
        )
        .when(
            ~F.substring(col, 1, 2).isin(*sorted(PROVINCE_CODES)),
            F.format_string(f"{UNKNOWN_PROVINCE} '%s'", F.substring(col, 1, 2)),
        )
        .when(birth.isNull(), F.format_string(f"{IMPOSSIBLE_BIRTH_DATE} '%s'", F.substring(col, 7, 8)))
        .when(
            birth > _date_lit(today),
            F.format_string(f"{FUTURE_BIRTH_DATE}: %s", birth.cast("string")),
        )
        .when(
            birth < _date_lit(EARLIEST_BIRTH_DATE),
            F.format_string(f"{EARLY_BIRTH_DATE}: %s", birth.cast("string")),
        )
        .when(last != expected, F.format_string(f"{BAD_CHECK}: expected %s, found %s", expected, last))
    )


def resident_id_mismatch_col(id_col: Column, birth_date_col: Column, sex_col: Column) -> Column:
    """Null unless the ID disagrees with the recorded birth date (a date column) or sex.

    Same semantics as `resident_id_mismatch`: an unreadable ID or a null recorded value is no
    mismatch, so each defect is reported under one rule only.
    """
    id_birth = _birth_date(id_col)
    id_sex = F.when(F.substring(id_col, 15, 3).try_cast("int") % 2 == 1, F.lit("M")).otherwise("F")
    birth_problem = F.when(
        id_birth != birth_date_col,
        F.format_string(
            "birth date %s in the resident ID differs from the recorded %s",
            id_birth.cast("string"),
            birth_date_col.cast("string"),
        ),
    )
    sex_problem = F.when(
        id_sex != sex_col,
        F.format_string("sex %s in the resident ID differs from the recorded %s", id_sex, sex_col),
    )
    # concat_ws skips nulls; an empty result means neither part disagreed.
    joined = F.concat_ws("; ", birth_problem, sex_problem)
    return F.when(_readable(id_col) & (joined != ""), joined)
