"""The Spark column versions of the resident-ID checks agree with the Python ones."""

from __future__ import annotations

import random
from collections import Counter
from datetime import date, timedelta

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from ingestion.identity_spark import resident_id_mismatch_col, resident_id_problem_col
from lakehouse.identity import (
    PROVINCE_CODES,
    check_character,
    resident_id_mismatch,
    resident_id_problem,
)

TODAY = date(2026, 6, 30)
PER_KIND = 250


def _valid(rng: random.Random, *, birth: date | None = None, province: str | None = None) -> str:
    province = province or rng.choice(sorted(PROVINCE_CODES))
    if birth is None:
        span = (TODAY - date(1900, 1, 1)).days
        birth = date(1900, 1, 1) + timedelta(days=rng.randrange(span + 1))
    # Explicit padding: strftime("%Y") does not pad years below 1000 on every platform.
    ymd = f"{birth.year:04d}{birth.month:02d}{birth.day:02d}"
    first17 = f"{province}{rng.randrange(10000):04d}{ymd}{rng.randrange(1000):03d}"
    return first17 + check_character(first17)


def _with_check(first17: str) -> str:
    return first17 + check_character(first17)


def _cases(rng: random.Random) -> dict[str, list[str | None]]:
    """Generated IDs by the kind of defect they were built to have."""
    kinds: dict[str, list[str | None]] = {
        k: []
        for k in (
            "valid",
            "bad_check",
            "wrong_length",
            "letters",
            "bad_date",
            "future_date",
            "before_1900",
            "bad_province",
            "lower_x",
            "bad_check_format",
            "missing",
        )
    }
    for _ in range(PER_KIND):
        good = _valid(rng)
        kinds["valid"].append(good)
        wrong = rng.choice([c for c in "0123456789X" if c != good[17]])
        kinds["bad_check"].append(good[:17] + wrong)
        cut = rng.choice([0, 1, 15, 17, 19, 20, 25])
        kinds["wrong_length"].append((good * 2)[:cut])
        pos = rng.randrange(17)
        kinds["letters"].append(good[:pos] + rng.choice("AbZ x-.１٣中") + good[pos + 1 :])
        y, m, d = rng.choice(
            [
                ("1990", "02", "30"),
                ("1991", "02", "29"),
                ("1900", "02", "29"),
                ("1985", "13", "01"),
                ("1985", "00", "10"),
                ("1985", "04", "31"),
                ("1985", "06", "00"),
                ("0000", "01", "01"),
                ("1985", "12", "32"),
            ]
        )
        kinds["bad_date"].append(_with_check(f"{good[:6]}{y}{m}{d}{good[14:17]}"))
        future = TODAY + timedelta(days=rng.randrange(1, 40000))
        kinds["future_date"].append(_valid(rng, birth=future))
        early = date(rng.randrange(1, 1900), rng.randrange(1, 13), rng.randrange(1, 29))
        kinds["before_1900"].append(_valid(rng, birth=early))
        bad_province = rng.choice([p for p in (f"{n:02d}" for n in range(100)) if p not in PROVINCE_CODES])
        kinds["bad_province"].append(_valid(rng, province=bad_province))
        while not (with_x := _valid(rng)).endswith("X"):
            pass
        kinds["lower_x"].append(with_x[:17] + "x")
        kinds["bad_check_format"].append(good[:17] + rng.choice("YAa*/ 中"))
        kinds["missing"].append(None)
    return kinds


def test_problem_col_agrees_with_python(local_spark: SparkSession) -> None:
    rng = random.Random(20260630)
    cases = _cases(rng)
    values = [v for vs in cases.values() for v in vs]
    assert len(values) >= 2000
    df = local_spark.createDataFrame([(i, v) for i, v in enumerate(values)], "i int, id string")
    rows = df.select("i", resident_id_problem_col(F.col("id"), TODAY).alias("p")).collect()
    spark_reasons = {r["i"]: r["p"] for r in rows}
    disagreements = [
        (v, resident_id_problem(v, today=TODAY), spark_reasons[i])
        for i, v in enumerate(values)
        if resident_id_problem(v, today=TODAY) != spark_reasons[i]
    ]
    assert disagreements == []
    # Each kind of defect was generated, and the Python check names it as intended.
    expected_prefix = {
        "valid": None,
        "bad_check": "bad check character:",
        "wrong_length": "wrong length",
        "letters": "non-digit characters",
        "bad_date": "impossible birth date",
        "future_date": "birth date in the future",
        "before_1900": "birth date before 1900",
        "bad_province": "unknown province code",
        "lower_x": "lower-case x",
        "bad_check_format": "bad check character format",
        "missing": "missing",
    }
    for kind, vs in cases.items():
        prefix = expected_prefix[kind]
        reasons = Counter(resident_id_problem(v, today=TODAY) for v in vs)
        if prefix is None:
            assert reasons == Counter({None: len(vs)})
        else:
            assert all(r is not None and r.startswith(prefix) for r in reasons), (kind, reasons)


def test_mismatch_col_agrees_with_python(local_spark: SparkSession) -> None:
    rng = random.Random(4101)
    rows: list[tuple[int, str | None, date | None, str | None]] = []
    for i in range(2000):
        birth = date(1900, 1, 1) + timedelta(days=rng.randrange(45000))
        rid: str | None = _valid(rng, birth=birth)
        assert rid is not None
        id_sex = "M" if int(rid[14:17]) % 2 else "F"
        kind = rng.randrange(8)
        recorded_birth: date | None = birth
        recorded_sex: str | None = id_sex
        if kind == 1:
            recorded_birth = birth + timedelta(days=rng.choice([-400, -1, 1, 30]))
        elif kind == 2:
            recorded_sex = "F" if id_sex == "M" else "M"
        elif kind == 3:
            recorded_birth = birth - timedelta(days=1)
            recorded_sex = rng.choice(["F" if id_sex == "M" else "M", "m", "U"])
        elif kind == 4:
            recorded_birth, recorded_sex = rng.choice([(None, id_sex), (birth, None), (None, None)])
        elif kind == 5:
            rid = rng.choice([None, rid[:10], rid[:5] + "A" + rid[6:], rid + "1"])
        elif kind == 6:
            # Impossible date in the ID: only the sex can be compared.
            rid = _with_check(f"{rid[:6]}19850230{rid[14:17]}")
            recorded_sex = rng.choice(["M", "F"])
        elif kind == 7:
            rid = rid[:17] + ("0" if rid[17] != "0" else "1")  # bad check, still readable
        rows.append((i, rid, recorded_birth, recorded_sex))
    df = local_spark.createDataFrame(rows, "i int, id string, birth date, sex string")
    out = df.select(
        "i", resident_id_mismatch_col(F.col("id"), F.col("birth"), F.col("sex")).alias("m")
    ).collect()
    spark_reasons = {r["i"]: r["m"] for r in out}
    disagreements = []
    for i, rid, recorded_birth, recorded_sex in rows:
        python = resident_id_mismatch(rid, birth_date=recorded_birth, sex=recorded_sex)
        if python != spark_reasons[i]:
            disagreements.append((rid, recorded_birth, recorded_sex, python, spark_reasons[i]))
    assert disagreements == []
    found = [r for r in spark_reasons.values() if r is not None]
    assert any("birth date" in r for r in found) and any(r.startswith("sex") for r in found)
    assert any(r.count("differs") == 2 for r in found)


def test_problem_col_does_not_fail_under_ansi_mode(local_spark: SparkSession) -> None:
    # Spark 4 runs ANSI mode by default, where a failing cast raises; the checks must not.
    assert local_spark.conf.get("spark.sql.ansi.enabled") == "true"
    df = local_spark.createDataFrame([("ABCDEFGHIJKLMNOPQR",), ("41010219901301001X",)], "id string")
    reasons = [r[0] for r in df.select(resident_id_problem_col(F.col("id"), TODAY)).collect()]
    assert reasons == [
        "non-digit characters in the first 17 positions",
        "impossible birth date '19901301'",
    ]
