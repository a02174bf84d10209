"""The Spark column pseudonyms equal the Python ones."""

from __future__ import annotations

import random

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from ingestion.pseudonymise_spark import hex120_to_decimal_col, person_key_col, pseudo_uid_col
from lakehouse.pseudonyms import ProvinceKey, person_key, pseudo_uid
from tests.unit.test_pseudonymise import RFC4231

KEYS = [
    ProvinceKey(secret=b"k", version=1),
    ProvinceKey(secret=b"medshare-dev-province-key", version=1),
    ProvinceKey(secret=b"\x00" * 63 + b"\xff", version=2),  # exactly one block
    ProvinceKey(secret=bytes(range(65)), version=3),  # one byte over a block: hashed first
    # Non-ASCII, longer than a block.
    ProvinceKey(secret="河南省卫生健康委员会数据共享平台密钥".encode() * 3, version=4),
]


def _values() -> list[str | None]:
    rng = random.Random(41)
    values: list[str | None] = [None, "", " ", "张三", "ä\u0301😀", "x" * 200]
    while len(values) < 1200:
        kind = rng.randrange(3)
        if kind == 0:
            digits = "".join(rng.choice("0123456789") for _ in range(17))
            values.append(digits + rng.choice("0123456789X"))
        elif kind == 1:
            values.append(
                "1.2.840."
                + ".".join(str(rng.randrange(10 ** rng.randrange(1, 10))) for _ in range(rng.randrange(1, 8)))
            )
        else:
            # Printable ASCII mixed with CJK ideographs.
            chars = [
                chr(rng.choice([rng.randrange(32, 127), rng.randrange(0x4E00, 0x9FFF)]))
                for _ in range(rng.randrange(1, 30))
            ]
            values.append("".join(chars))
    return values


def test_rfc4231_vectors_in_spark(local_spark: SparkSession) -> None:
    for secret, data, expected in RFC4231:
        df = local_spark.createDataFrame([(data,)], "v string")
        got = df.select(person_key_col(ProvinceKey(secret=secret, version=1), F.col("v"))).first()
        assert got is not None and got[0] == expected


@pytest.mark.parametrize("key", KEYS, ids=lambda k: f"v{k.version}-{len(k.secret)}B")
def test_spark_pseudonyms_equal_python(local_spark: SparkSession, key: ProvinceKey) -> None:
    values = _values()
    df = local_spark.createDataFrame(list(enumerate(values)), "i int, v string")
    rows = df.select(
        "i",
        person_key_col(key, F.col("v")).alias("pk"),
        pseudo_uid_col(key, F.col("v")).alias("uid"),
    ).collect()
    assert len(rows) >= 1000
    by_index = {r["i"]: (r["pk"], r["uid"]) for r in rows}
    wrong = []
    for i, v in enumerate(values):
        expected = (None, None) if v is None else (person_key(key, v), pseudo_uid(key, v))
        if by_index[i] != expected:
            wrong.append((v, expected, by_index[i]))
    assert wrong == []


def test_hex120_to_decimal(local_spark: SparkSession) -> None:
    rng = random.Random(120)
    hexes = [
        "0" * 30,
        "f" * 30,
        "0" * 29 + "1",
        "0" * 13 + "1" + "0" * 16,
        "0" * 14 + "f" * 16,
        "f" * 14 + "0" * 16,
        "8" + "0" * 29,
        "00000000000000ffffffffffffffff",
        "0123456789abcdef0123456789abcd",
    ]
    hexes += [f"{rng.getrandbits(rng.randrange(1, 121)):030x}" for _ in range(300)]
    df = local_spark.createDataFrame([(h,) for h in hexes], "h string")
    rows = df.select("h", hex120_to_decimal_col(F.col("h")).alias("d")).collect()
    got = {r["h"]: r["d"] for r in rows}
    assert {h: got[h] for h in hexes} == {h: str(int(h, 16)) for h in hexes}
    assert got["f" * 30] == "1329227995784915872903807060280344575"  # 2^120 - 1, 37 digits
